//! What the PostgreSQL store connects with: the data source (a libpq URL or
//! key-value string) read into a [`tokio_postgres::Config`], the password
//! put in, and the TLS mode. Nothing here ever formats the data source or
//! the password: errors and logs name the server by [`Target`] only.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::StoreError;

/// How long one connection attempt may take (when the data source sets no
/// `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the PostgreSQL store is reached. `Debug` hides the data source and
/// the password.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq connection URL (`postgresql://user@host:5432/`) or key-value
    /// string (`host=… user=…`). It may hold a password.
    pub data_source: String,
    /// The database, created at start-up when missing. It replaces any
    /// database named in the data source.
    pub database: String,
    /// The password, when it is not in the data source (from
    /// `passwordFile` or `ACMEPROXY_DB_PASSWORD`); it wins over one there.
    pub password: Option<String>,
    /// Connections in the pool, at most.
    pub max_connections: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("data_source", &"***")
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The TLS the connections use.
#[derive(Clone)]
pub(super) enum Tls {
    /// `sslmode=disable` (the default towards loopback and Unix sockets).
    Off,
    /// `sslmode=verify-full`: TLS, the server's certificate checked against
    /// the system's roots or `sslrootcert`, host name included.
    VerifyFull(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "Off",
            Self::VerifyFull(_) => "VerifyFull",
        })
    }
}

/// The parsed options: what to connect with, and the TLS.
#[derive(Clone, Debug)]
pub(super) struct Connect {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
    pub(super) target: Target,
}

/// The server and database, for messages: `host:port/database`, never
/// the user's password.
#[derive(Clone, Debug)]
pub(super) struct Target(String);

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PgOptions {
    /// Reads the data source. Its `sslmode` and `sslrootcert` are taken
    /// out here (tokio-postgres knows neither `verify-full` nor
    /// `sslrootcert`); every other parameter is tokio-postgres's.
    pub(super) fn connect(&self) -> Result<Connect, StoreError> {
        let (rest, ssl) = take_ssl_params(&self.data_source);
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // The error names the offending parameter, never the value.
            StoreError::backend("db.dataSource is not a PostgreSQL connection string", e)
        })?;
        config.dbname(&self.database);
        if let Some(password) = &self.password {
            config.password(password.as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A commit is acknowledged only once it is on disk, whatever the
        // server's default (DESIGN: nothing acknowledged is lost).
        let options = match config.get_options() {
            Some(o) => format!("{o} -c synchronous_commit=on"),
            None => "-c synchronous_commit=on".to_owned(),
        };
        config.options(&options);
        config.application_name("acmeproxy");
        let target = target(&config, &self.database);
        let tls = match ssl.mode.as_deref() {
            Some("disable") => Tls::Off,
            None if is_local(&config) => Tls::Off,
            None | Some("verify-full") => Tls::VerifyFull(rustls_connector(ssl.root_cert)?),
            Some(other) => {
                return Err(StoreError::backend(
                    "db.dataSource",
                    format!(
                        "sslmode={other} is not supported: use sslmode=verify-full (TLS with the \
                         server's certificate and name checked, against the system's roots or \
                         sslrootcert=FILE) or sslmode=disable"
                    ),
                ));
            }
        };
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::VerifyFull(_) => SslMode::Require,
        });
        Ok(Connect {
            config,
            tls,
            target,
        })
    }
}

/// `sslmode` and `sslrootcert` of a data source.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
}

/// The data source without its `sslmode` and `sslrootcert` parameters, and
/// their values. Works on both forms: the URL's query (`?sslmode=…&…`)
/// and the key-value form (`sslmode=… host=…`).
fn take_ssl_params(source: &str) -> (String, SslParams) {
    let mut ssl = SslParams::default();
    let mut keep = |param: &str| -> bool {
        match param.split_once('=') {
            Some(("sslmode", v)) => {
                ssl.mode = Some(v.trim_matches('\'').to_owned());
                false
            }
            Some(("sslrootcert", v)) => {
                ssl.root_cert = Some(PathBuf::from(v.trim_matches('\'')));
                false
            }
            _ => true,
        }
    };
    let rest = if source.starts_with("postgres://") || source.starts_with("postgresql://") {
        match source.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|p| keep(p)).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => source.to_owned(),
        }
    } else {
        source
            .split_whitespace()
            .filter(|p| keep(p))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, ssl)
}

/// Whether every host is a Unix socket or a loopback address (where TLS
/// is off unless `sslmode` asks for it).
fn is_local(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    })
}

fn target(config: &tokio_postgres::Config, database: &str) -> Target {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    Target(format!("{hosts}/{database}"))
}

/// TLS that checks the server's certificate and name against `root_cert`
/// (a PEM file) or the system's roots.
fn rustls_connector(root_cert: Option<PathBuf>) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                StoreError::backend(format!("reading sslrootcert {}", path.display()), e)
            })?;
            let certs = pem::parse_many(&pem).map_err(|e| {
                StoreError::backend(format!("reading sslrootcert {}", path.display()), e)
            })?;
            for cert in certs.iter().filter(|p| p.tag() == "CERTIFICATE") {
                roots.add(cert.contents().to_vec().into()).map_err(|e| {
                    StoreError::backend(format!("sslrootcert {}", path.display()), e)
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::backend(
                    format!("sslrootcert {}", path.display()),
                    "the file holds no PEM certificate",
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A broken system certificate is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend("PostgreSQL TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(source: &str) -> PgOptions {
        PgOptions {
            data_source: source.to_owned(),
            database: "acmeproxy".to_owned(),
            password: None,
            max_connections: 4,
        }
    }

    #[test]
    fn ssl_params_come_out_of_both_forms() {
        let (rest, ssl) =
            take_ssl_params("postgresql://ra:pw@db:5432/x?sslmode=verify-full&sslrootcert=/ca.pem");
        assert_eq!(rest, "postgresql://ra:pw@db:5432/x");
        assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
        assert_eq!(ssl.root_cert, Some(PathBuf::from("/ca.pem")));
        let (rest, ssl) = take_ssl_params("postgresql://ra@db/?connect_timeout=3&sslmode=disable");
        assert_eq!(rest, "postgresql://ra@db/?connect_timeout=3");
        assert_eq!(ssl.mode.as_deref(), Some("disable"));
        let (rest, ssl) = take_ssl_params("host=db user=ra sslmode=verify-full port=5433");
        assert_eq!(rest, "host=db user=ra port=5433");
        assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
    }

    #[test]
    fn loopback_defaults_to_plain_and_other_hosts_to_verified_tls() {
        let c = options("postgresql://ra@127.0.0.1:5432/")
            .connect()
            .unwrap();
        assert!(matches!(c.tls, Tls::Off));
        assert_eq!(c.target.to_string(), "127.0.0.1:5432/acmeproxy");
        assert_eq!(c.config.get_dbname(), Some("acmeproxy"));
        let c = options("host=/run/postgresql user=ra").connect().unwrap();
        assert!(matches!(c.tls, Tls::Off));
        let c = options("postgresql://ra@db.example:5432/")
            .connect()
            .unwrap();
        assert!(matches!(c.tls, Tls::VerifyFull(_)));
        let c = options("postgresql://ra@db.example/?sslmode=disable")
            .connect()
            .unwrap();
        assert!(matches!(c.tls, Tls::Off));
    }

    #[test]
    fn unsupported_modes_are_refused_without_the_password() {
        for mode in ["require", "prefer", "verify-ca", "allow"] {
            let e = options(&format!("postgresql://ra:hunter2@db/?sslmode={mode}"))
                .connect()
                .unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(shown.contains("verify-full"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let e = options("postgresql://ra:hunter2@db/?nonsense=1")
            .connect()
            .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn debug_hides_the_secrets() {
        let mut o = options("postgresql://ra:hunter2@db/");
        o.password = Some("swordfish".to_owned());
        let shown = format!("{o:?} {:?}", o.connect().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("swordfish"), "{shown}");
    }
}
