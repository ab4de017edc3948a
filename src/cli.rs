//! The command line (clap derive): `acmeproxy ca.json`, `serve`,
//! `check-config`, `init`, `eab`, `version`.

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
    /// Manages External Account Binding keys (the server must be stopped).
    Eab {
        #[command(subcommand)]
        command: EabCommand,
    },
    /// Prints the version.
    Version,
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
    },
    /// Lists the keys (never the MAC keys).
    List {
        /// The ca.json file.
        config: PathBuf,
    },
    /// Removes a key that no account is bound to.
    Remove {
        /// The ca.json file.
        config: PathBuf,
        /// The key id.
        kid: String,
    },
}
