//! Debian's haproxy in front of acmeproxy replicas, on loopback: HTTP mode,
//! TLS terminated at haproxy and re-encrypted towards the replicas (checked
//! against the replicas' root), round-robin per request, so consecutive
//! requests of one ACME flow land on different replicas. A replica is taken
//! out after two failed `/ready` checks 500 ms apart, and a request whose
//! replica fails (no connection, the connection closed without an answer) is
//! sent again to another one (`retries`, `option redispatch`, `retry-on`):
//! replaying an ACME POST is safe, as its nonce can be redeemed only once.
//!
//! Installed by `make test-deps` (tests/interop/install-clients.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::procs::{ChildGuard, free_ports};

/// The haproxy binary, if installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether a test needing haproxy should be skipped: never under `CI=true`
/// (where a missing haproxy is a failure naming `make test-deps`).
pub fn skip(what: &str) -> bool {
    crate::procs::skip_when_missing(
        what,
        binary()
            .is_none()
            .then(|| "haproxy is not installed: run `make test-deps`".to_owned()),
    )
}

/// A running haproxy.
pub struct Haproxy {
    /// The frontend's port on 127.0.0.1.
    pub port: u16,
    /// Its stats/log directory.
    pub dir: PathBuf,
    child: ChildGuard,
}

impl Haproxy {
    /// Starts haproxy in `dir` (written: `haproxy.cfg`, `front.pem`,
    /// `haproxy.log`) in front of `replicas` (ports on 127.0.0.1, serving
    /// HTTPS with certificates for `localhost` that `root` leads to). Its
    /// frontend presents `cert` + `key` (PEM files), for example a replica's
    /// own certificate.
    pub fn start(
        dir: &Path,
        replicas: &[u16],
        cert: &Path,
        key: &Path,
        root: &Path,
    ) -> Result<Self, String> {
        let bin = binary().ok_or("haproxy is not installed (make test-deps)")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let front = dir.join("front.pem");
        let mut pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        pem.extend(std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?);
        std::fs::write(&front, pem).map_err(|e| e.to_string())?;
        let [port] = free_ports().map_err(|e| e.to_string())?;
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "  server r{i} 127.0.0.1:{p} ssl verify required ca-file {root} sni str(localhost) \
                     verifyhost localhost check inter 500 fall 2 rise 1\n",
                    root = root.display()
                )
            })
            .collect();
        let cfg = format!(
            "global\n  maxconn 4096\n  log stdout format raw local0\n\
             defaults\n  mode http\n  log global\n  option httplog\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  \
             retries 3\n  option redispatch 1\n  option http-keep-alive\n  \
             retry-on conn-failure empty-response junk-response response-timeout\n\
             frontend acme\n  bind 127.0.0.1:{port} ssl crt {front} alpn http/1.1\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  http-reuse safe\n  \
             option httpchk GET /ready\n  http-check expect status 200\n{servers}",
            front = front.display()
        );
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg_path)
            .output()
            .map_err(|e| e.to_string())?;
        if !check.status.success() {
            return Err(format!(
                "haproxy refused its configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let child = ChildGuard::spawn(
            "haproxy",
            Command::new(&bin).arg("-db").arg("-f").arg(&cfg_path),
            &dir.join("haproxy.log"),
        )?;
        // Up once the frontend accepts connections.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("haproxy did not listen within 10 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Self {
            port,
            dir: dir.to_owned(),
            child,
        })
    }

    /// The ACME directory URL through haproxy.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/acme/acme/directory", self.port)
    }

    /// Requests each replica answered so far (`r0`, `r1`, … in the order
    /// given to [`start`](Self::start)), from haproxy's request log.
    pub fn requests_per_replica(&self) -> std::collections::BTreeMap<String, usize> {
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        let mut counts = std::collections::BTreeMap::new();
        for line in log.lines() {
            if let Some(at) = line.find("replicas/") {
                let server: String = line[at + "replicas/".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                *counts.entry(server).or_insert(0) += 1;
            }
        }
        counts
    }

    /// haproxy's pid (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
