//! Pebble (Let's Encrypt's test CA, Debian package `pebble`) as an
//! EAB-requiring upstream: every challenge treated as valid, like a
//! commercial CA with the organisation's domains pre-validated, or (with
//! [`PebbleOptions::dns_server`]) validating for real, as public CAs do. Started on
//! free loopback ports with its own TLS certificate; killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A running Pebble.
pub struct Pebble {
    child: Child,
    pub dir: tempfile::TempDir,
    pub acme_port: u16,
    pub mgmt_port: u16,
    /// PEM of the CA that signed Pebble's HTTPS certificate.
    pub tls_ca_file: PathBuf,
    pub eab_kid: String,
    /// base64url MAC key.
    pub eab_hmac: String,
    nonce_reject: u8,
    blocklist: Vec<String>,
    dns_server: Option<std::net::SocketAddr>,
}

/// Options for Pebble.
#[derive(Clone, Copy, Debug, Default)]
pub struct PebbleOptions {
    /// Percentage of good nonces Pebble rejects (PEBBLE_WFE_NONCEREJECT).
    pub nonce_reject: u8,
    /// Domains Pebble refuses to issue for (rejectedIdentifier).
    pub blocklist: &'static [&'static str],
    /// Validate for real (no PEBBLE_VA_ALWAYS_VALID), resolving through
    /// this DNS server (`-dnsserver`): dns-01 is checked there.
    pub dns_server: Option<std::net::SocketAddr>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    /// Whether the pebble binary is installed.
    pub fn available() -> bool {
        Command::new("pebble")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts Pebble and waits until its directory answers.
    pub async fn start(opts: PebbleOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's HTTPS certificate (tls-cert.pem, tls-key.pem), from a
        // throw-away CA (tls-ca.pem).
        let (tls_ca_file, _, _) = crate::loopback_tls(dir.path());

        let eab_kid = "kid-1".to_owned();
        let eab_hmac = URL_SAFE_NO_PAD.encode(acmeproxy::model::random_token(32).as_bytes());
        let acme_port = free_port();
        let mgmt_port = free_port();
        let mut pebble = Self {
            child: Command::new("true").spawn().unwrap(),
            dir,
            acme_port,
            mgmt_port,
            tls_ca_file,
            eab_kid,
            eab_hmac,
            nonce_reject: opts.nonce_reject,
            blocklist: opts.blocklist.iter().map(|d| (*d).to_owned()).collect(),
            dns_server: opts.dns_server,
        };
        pebble.spawn().await;
        pebble
    }

    async fn spawn(&mut self) {
        let cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.acme_port),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt_port),
            "certificate": self.dir.path().join("tls-cert.pem"),
            "privateKey": self.dir.path().join("tls-key.pem"),
            "httpPort": 5002,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": true,
            "externalAccountMACKeys": {self.eab_kid.clone(): self.eab_hmac.clone()},
            "domainBlocklist": self.blocklist,
        }});
        let cfg_path = self.dir.path().join("pebble-config.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pebble.log"))
            .unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config").arg(&cfg_path).arg("-strict=false");
        match self.dns_server {
            Some(dns) => {
                cmd.arg("-dnsserver").arg(dns.to_string());
            }
            None => {
                cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
            }
        }
        self.child = cmd
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", self.nonce_reject.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = self.http();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The management interface (roots, certificate status) starts on
        // its own; wait for both.
        let roots = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        loop {
            let mut up = 0;
            for url in [self.directory_url(), roots.clone()] {
                if let Ok(r) = http.get(url).send().await {
                    up += usize::from(r.status().is_success());
                }
            }
            if up == 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops Pebble (it forgets every account and order).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Pebble again on the same ports.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// A client trusting Pebble's HTTPS CA.
    pub fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.tls_ca_file).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    /// Pebble's issuing root, written to a file in Pebble's directory (for
    /// ca.json's `root`).
    pub async fn root_file(&self) -> PathBuf {
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, self.root_pem().await).unwrap();
        path
    }

    /// Pebble's issuing root (PEM), from the management interface.
    pub async fn root_pem(&self) -> String {
        self.http()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Pebble's view of a certificate's status ("Valid", "Revoked"), by hex serial.
    pub async fn cert_status(&self, serial_hex: &str) -> String {
        let v: serde_json::Value = self
            .http()
            .get(format!(
                "https://127.0.0.1:{}/cert-status-by-serial/{serial_hex}",
                self.mgmt_port
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        v["Status"].as_str().unwrap_or("unknown").to_owned()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many certificates Pebble issued (counted in its log).
    pub fn issued_count(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// `(serial, order id)` of every certificate Pebble issued, in order,
    /// from its log lines `Issued certificate serial S for order O`.
    pub fn issued(&self) -> Vec<(String, String)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once("Issued certificate serial ")?.1;
                let (serial, order) = rest.split_once(" for order ")?;
                Some((
                    serial.trim().to_owned(),
                    order.trim().trim_matches('"').to_owned(),
                ))
            })
            .collect()
    }

    /// How many orders Pebble created (log lines `Added order "ID" to the db`).
    pub fn orders_created(&self) -> usize {
        self.log().matches("Added order ").count()
    }

    /// The ACME listener's address.
    pub fn acme_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.acme_port))
    }

    /// The `authority` block of an acmeproxy ca.json using this Pebble.
    pub fn authority_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "externalcas",
            "config": {
                "ca_url": self.directory_url(),
                "account_email": "ra@example.org",
                "eab_kid": self.eab_kid,
                "eab_hmac_key": self.eab_hmac,
                "ca_bundle": self.tls_ca_file,
                "cert_obtain_timeout": 20,
                "certlifetime": 30
            },
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
