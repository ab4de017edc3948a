//! The command line (clap derive): `acmeproxy ca.json`, `serve`,
//! `check-config`, `init`, `eab`, `accounts`, `orders`, `certs`, `admin`,
//! `restore`, `version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// An ACME (RFC 8555) Registration Authority: validates challenges inside
/// your network and has an upstream CA sign.
#[derive(Debug, Parser)]
#[command(name = "acmeproxy", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// The configuration file (same as `acmeproxy serve CONFIG`).
    pub config: Option<PathBuf>,
    /// As `serve --issuer-password-file`.
    #[arg(long, value_name = "FILE")]
    pub issuer_password_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server.
    Serve {
        /// The ca.json file.
        config: PathBuf,
        /// stepcas: the file holding the password of the issuer key (the
        /// JWK provisioner key, or the x5c key); wins over
        /// `certificateIssuer.password` (step-ca's flag of the same name).
        #[arg(long, value_name = "FILE")]
        issuer_password_file: Option<PathBuf>,
    },
    /// Validates a configuration exactly as start-up does, and exits.
    CheckConfig {
        /// The ca.json file.
        config: PathBuf,
    },
    /// Writes a starter ca.json (softcas + sled on localhost) into a directory.
    Init {
        /// Where to write ca.json; its data directory goes to DIR/data.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Listen address of the ACME server.
        #[arg(long, default_value = "127.0.0.1:8443")]
        address: String,
        /// Port the metrics listener binds on 127.0.0.1.
        #[arg(long, default_value_t = 9123)]
        metrics_port: u16,
    },
    /// Manages External Account Binding keys (through the running server's
    /// admin socket, or directly in the store when the server is stopped).
    Eab {
        #[command(subcommand)]
        command: EabCommand,
    },
    /// Lists, shows and deactivates accounts (the server must be running).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Lists orders (the server must be running).
    Orders {
        #[command(subcommand)]
        command: OrdersCommand,
    },
    /// Lists, shows and revokes certificates (the server must be running).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Operator tasks on the server's data: `admin backup`.
    Admin {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Rebuilds a data directory from a backup (`admin backup`), offline.
    ///
    /// The backup is verified whole (format version, SHA-256, counts) before
    /// anything is written. The store is written as a normal sled store in
    /// DIR/db, the CA and TLS files with their modes (directories 0700, keys
    /// 0600). DIR must hold no store and none of the files yet, and no
    /// server may run on it. Run it as the service user, or chown DIR after.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to rebuild (ca.json's `dataDir`); its store
        /// goes to DIR/db.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the sled store goes instead of DIR/db (`db.dataSource`).
        #[arg(long, value_name = "DIR")]
        db: Option<PathBuf>,
    },
    /// Copies every record of one configuration's store into another's,
    /// offline: for example from sled to PostgreSQL before running replicas.
    ///
    /// Stop the server first. The source is read as one consistent
    /// snapshot; the target must be empty, and is counted table by table
    /// after the copy. The files of the data directory (softcas's CA, the TLS
    /// key) are not copied: point both configurations at the same dataDir,
    /// or copy it.
    Migrate {
        /// The ca.json whose store is read.
        #[arg(long, value_name = "CA_JSON")]
        from: PathBuf,
        /// The ca.json whose (empty) store is written.
        #[arg(long, value_name = "CA_JSON")]
        to: PathBuf,
    },
    /// Prints the version.
    Version,
}

/// `acmeproxy admin …`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Writes a consistent backup of the data directory to FILE, while the
    /// server runs.
    ///
    /// FILE (mode 0600) holds the store (every account, order, certificate,
    /// EAB key and job at one moment), the softcas CA files and the server's
    /// obtained TLS certificate and key: private keys, so keep it as private
    /// as the server. Not in it: ca.json and the files it names. The server
    /// streams the backup through its admin socket and this command writes
    /// it, verifies it, then renames it over FILE. With the server stopped,
    /// it reads the store directly. Restore with `acmeproxy restore FILE
    /// --dir DIR`.
    Backup {
        /// The ca.json file.
        config: PathBuf,
        /// Where to write the backup (replaced if it exists).
        file: PathBuf,
    },
}

/// `acmeproxy eab …`
#[derive(Debug, Subcommand)]
pub enum EabCommand {
    /// Creates a key for a provisioner and prints its kid and MAC key.
    Add {
        /// The ca.json file.
        config: PathBuf,
        /// The provisioner the key registers accounts with.
        #[arg(long, default_value = "acme")]
        provisioner: String,
        /// A key id of your choice (default: random).
        #[arg(long)]
        kid: Option<String>,
        /// Limit the account to these DNS names (`example.com`, `*.example.com`
        /// one level below, `.example.com` any depth); repeatable.
        #[arg(long = "allow-dns")]
        allow_dns: Vec<String>,
        /// Limit the account to these IP addresses or CIDR networks; repeatable.
        #[arg(long = "allow-ip")]
        allow_ip: Vec<String>,
        /// Refuse these DNS names even when allowed; repeatable.
        #[arg(long = "deny-dns")]
        deny_dns: Vec<String>,
        /// Refuse these IP networks even when allowed; repeatable.
        #[arg(long = "deny-ip")]
        deny_ip: Vec<String>,
        /// Allow wildcard names (with a policy they are refused by default).
        #[arg(long)]
        allow_wildcards: bool,
        /// Trust the bound account for the allowed names without challenges
        /// (a downstream acmeproxy that validates its own clients).
        #[arg(long)]
        prevalidated: bool,
    },
    /// Lists the keys (never the MAC keys).
    List {
        /// The ca.json file.
        config: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Removes a key; accounts already bound with it keep working.
    Remove {
        /// The ca.json file.
        config: PathBuf,
        /// The key id.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

/// `acmeproxy accounts …`
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Lists every account.
    List {
        /// The ca.json file.
        config: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one account.
    Show {
        /// The ca.json file.
        config: PathBuf,
        /// The account id (the last segment of its URL).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deactivates an account: it can no longer sign requests.
    Deactivate {
        /// The ca.json file.
        config: PathBuf,
        /// The account id.
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Shows an account's rate-limit buckets (`authority.rateLimits`): its
    /// newOrder and pending-authorization buckets, its failed validations
    /// per identifier, and its EAB key's newOrder bucket.
    Limits {
        /// The ca.json file.
        config: PathBuf,
        /// The account id.
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Empties an account's rate-limit buckets (those `limits` shows): the
    /// account is served in full at once.
    ResetLimits {
        /// The ca.json file.
        config: PathBuf,
        /// The account id.
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

/// `acmeproxy orders …`
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Lists orders.
    List {
        /// The ca.json file.
        config: PathBuf,
        /// Only this account's orders.
        #[arg(long, allow_hyphen_values = true)]
        account: Option<String>,
        /// Only orders in this status (pending, ready, processing, valid, invalid).
        #[arg(long)]
        status: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `acmeproxy certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Lists certificates.
    List {
        /// The ca.json file.
        config: PathBuf,
        /// Only this account's certificates.
        #[arg(long, allow_hyphen_values = true)]
        account: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows a certificate, with its chain, by id or serial (hex).
    Show {
        /// The ca.json file.
        config: PathBuf,
        /// Certificate id or serial number in hex.
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a certificate at the upstream and records it.
    Revoke {
        /// The ca.json file.
        config: PathBuf,
        /// Certificate id or serial number in hex.
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded, 5 cessationOfOperation …).
        #[arg(long, default_value_t = 0)]
        reason: u8,
    },
}

/// Any of the admin commands, for the code that runs them.
#[derive(Debug)]
pub enum AdminCommand {
    Eab(EabCommand),
    Accounts(AccountsCommand),
    Orders(OrdersCommand),
    Certs(CertsCommand),
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// Ids are random base64url and may begin with '-'; they are values,
    /// never taken for flags.
    #[test]
    fn ids_that_begin_with_a_hyphen_are_values() {
        for args in [
            &[
                "acmeproxy",
                "certs",
                "list",
                "c.json",
                "--account",
                "-Q64hC6",
            ][..],
            &["acmeproxy", "accounts", "show", "c.json", "-Q64hC6"],
            &["acmeproxy", "accounts", "deactivate", "c.json", "-x"],
            &[
                "acmeproxy",
                "certs",
                "revoke",
                "c.json",
                "-Ab",
                "--reason",
                "4",
            ],
            &["acmeproxy", "eab", "remove", "c.json", "-kid"],
            &["acmeproxy", "orders", "list", "c.json", "--account", "-a"],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
