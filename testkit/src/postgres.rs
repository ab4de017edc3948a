//! A throw-away PostgreSQL server for the PostgreSQL store's tests, from
//! Debian's binaries (`tests/store/install-postgresql.sh`, run by
//! `make test-deps`, installs them).
//!
//! [`PgServer::start`] runs `initdb` and `pg_ctl start` as the `postgres`
//! user (initdb refuses root) in a temporary directory it owns: TCP on
//! 127.0.0.1 and a free port, with password (SCRAM) authentication for the
//! superuser `postgres`; the Unix socket in the directory, trusted, for
//! [`PgServer::psql`]. The server is stopped with `pg_ctl stop -m fast`
//! (by its data directory, so by its own postmaster pid) when the guard
//! drops. A watchdog child holding a pipe from the test process stops it
//! too, and removes the directory, when the test process ends without
//! dropping the guard (the one server [`PgServer::shared`] hands out, which
//! lives in a static).
//!
//! [`PgServer::start_tls`] adds TLS: a certificate for 127.0.0.1 and
//! `localhost` from a throw-away CA, whose PEM file is
//! [`PgServer::tls_ca`].
//!
//! Tests share that one server and each opens its own database
//! ([`unique_database`]); a test that stops and restarts PostgreSQL starts
//! its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{ChildGuard, free_ports, is_root, tail};

/// The directory of `initdb`, `pg_ctl` and `psql`: `$ACMEPROXY_PG_BIN`, else
/// the newest `/usr/lib/postgresql/*/bin` that has them.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ACMEPROXY_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Why PostgreSQL tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    match bin_dir() {
        Some(bin) if bin.join("initdb").is_file() && bin.join("pg_ctl").is_file() => None,
        _ => Some(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed (run \
             tests/store/install-postgresql.sh, or `make test-deps`)"
                .to_owned(),
        ),
    }
}

/// `true` (after a message) when `what` must be skipped because PostgreSQL
/// is missing; under `CI` a missing PostgreSQL is a failure.
pub fn skip(what: &str) -> bool {
    crate::procs::skip_when_missing(what, missing())
}

/// A throw-away server for `what`, started off the async threads; `None`
/// (after a message) when PostgreSQL is missing outside CI.
pub async fn start_or_skip(what: &str) -> Option<PgServer> {
    if skip(what) {
        return None;
    }
    Some(
        tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .unwrap(),
    )
}

/// A database name no other test of this process uses.
pub fn unique_database(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running PostgreSQL server in a directory of its own.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    password: String,
    /// The CA of the server's TLS certificate (PEM), with [`start_tls`](Self::start_tls).
    pub tls_ca: Option<PathBuf>,
    /// Further `postgres` options (TLS).
    options: String,
    _watchdog: ChildGuard,
}

impl PgServer {
    /// Creates and starts a server; fails with PostgreSQL's log.
    pub fn start() -> Result<Self, String> {
        Self::create(false)
    }

    /// Like [`start`](Self::start), with TLS on (see [`tls_ca`](Self::tls_ca)).
    pub fn start_tls() -> Result<Self, String> {
        Self::create(true)
    }

    fn create(tls: bool) -> Result<Self, String> {
        let bin = bin_dir().ok_or_else(|| missing().unwrap_or_default())?;
        let dir = tempfile::Builder::new()
            .prefix("acmeproxy-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let [port] = free_ports().map_err(|e| format!("free port: {e}"))?;
        let password = format!("pg-{}-{port}", std::process::id());
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, &password).map_err(|e| format!("{}: {e}", pwfile.display()))?;
        if is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        run(as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"])
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display())))?;
        // The watchdog: when the test process goes away (its pipe closes),
        // stop this server and remove its directory.
        let watchdog = ChildGuard::spawn_holding_stdin(
            "postgres watchdog",
            Command::new("sh").arg("-c").arg(format!(
                "cat >/dev/null; {} {} -D '{}' stop -m fast; rm -rf '{}'",
                if is_root() {
                    "runuser -u postgres --"
                } else {
                    ""
                },
                bin.join("pg_ctl").display(),
                data.display(),
                dir.path().display()
            )),
            &dir.path().join("watchdog.log"),
        )?;
        let (tls_ca, options) = if tls {
            let (ca, options) = tls_files(dir.path(), &data)?;
            (Some(ca), options)
        } else {
            (None, String::new())
        };
        let server = Self {
            dir,
            bin,
            port,
            password,
            tls_ca,
            options,
            _watchdog: watchdog,
        };
        server.start_again()?;
        Ok(server)
    }

    /// The one server the tests of this process share, started at first use.
    pub fn shared() -> Result<&'static Self, String> {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(Self::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgresql://postgres@127.0.0.1:PORT/`, without a password.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/", self.port)
    }

    /// [`url`](Self::url) with the superuser's password in it.
    pub fn url_with_password(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/",
            self.password, self.port
        )
    }

    /// PostgreSQL's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server (again, after [`stop`](Self::stop)); returns once
    /// it takes connections.
    pub fn start_again(&self) -> Result<(), String> {
        run(as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300{}",
                self.port,
                self.dir.path().display(),
                self.options
            ))
            .arg("start"))
        .map_err(|e| format!("{e}\n{}", tail(&self.log(), 40)))
    }

    /// Stops the server (`pg_ctl stop -m fast`: connections are closed).
    pub fn stop(&self) -> Result<(), String> {
        run(as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "-m", "fast", "stop"]))
    }

    /// Runs `sql` in `database` through `psql` on the Unix socket; returns
    /// its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = as_postgres(&self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        if pid_file.exists() && self.stop().is_err() {
            // The postmaster's own pid, from its pid file: never a search by name.
            if let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
            {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        if std::thread::panicking() {
            eprintln!("postgres log:\n{}", tail(&self.log(), 60));
        }
    }
}

/// A CA (its PEM in `dir/tls-ca.pem`) and a certificate for 127.0.0.1 and
/// `localhost` with its key in the data directory; returns the CA file and
/// the `postgres` options that turn TLS on.
fn tls_files(dir: &Path, data: &Path) -> Result<(PathBuf, String), String> {
    let fail = |e: rcgen::Error| format!("TLS certificate: {e}");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "acmeproxy test PostgreSQL CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(fail)?
        .signed_by(&key, &ca)
        .map_err(fail)?;
    let ca_file = dir.join("tls-ca.pem");
    let write = |path: &Path, text: String| {
        fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&ca_file, ca.pem())?;
    write(&data.join("server.crt"), leaf.pem())?;
    write(&data.join("server.key"), key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("server.key: {e}"))?;
    }
    if is_root() {
        run(Command::new("chown")
            .arg("postgres:")
            .arg(data.join("server.crt"))
            .arg(data.join("server.key")))?;
    }
    Ok((
        ca_file,
        " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".to_owned(),
    ))
}

/// `program` run as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
