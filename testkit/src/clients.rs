//! Drives real ACME (RFC 8555) clients from Debian — certbot, lego, uacme
//! and dehydrated — against any ACME directory on loopback: register, issue,
//! renew (forced) and revoke (RFC 8555 sections 7.3, 7.4, 7.6), then check
//! the certificates with openssl. Nothing here knows which server is behind
//! the directory URL.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use super::{HttpResponder, STEP_TIMEOUT, find_in_path, is_root, run_bounded, script};

/// An ACME client program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// Debian's certbot (2.1 on bookworm), on PATH.
    Certbot,
    /// Today's certbot from PyPI, in the virtualenv that
    /// tests/interop/install-clients.sh makes.
    CertbotPypi,
    Dehydrated,
    Lego,
    Uacme,
}

impl Client {
    /// The executable's name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Certbot => "certbot",
            Self::CertbotPypi => "certbot-pypi",
            Self::Dehydrated => "dehydrated",
            Self::Lego => "lego",
            Self::Uacme => "uacme",
        }
    }

    /// The program to run: a name looked up in PATH, or a path.
    pub fn program(self) -> PathBuf {
        match self {
            Self::CertbotPypi => std::env::var_os("ACMEPROXY_CERTBOT_VENV")
                .map_or_else(
                    || PathBuf::from("/var/tmp/acmeproxy-certbot"),
                    PathBuf::from,
                )
                .join("bin/certbot"),
            _ => PathBuf::from(self.binary()),
        }
    }

    /// Why this client cannot run on this machine, if it cannot.
    pub fn missing_prerequisite(self) -> Option<String> {
        if self == Self::CertbotPypi && !self.program().is_file() {
            return Some(format!(
                "{} is not installed (run tests/interop/install-clients.sh as root)",
                self.program().display()
            ));
        }
        let mut needed = vec!["openssl"];
        if self != Self::CertbotPypi {
            needed.push(self.binary());
        }
        if self == Self::Uacme {
            needed.extend(["unshare", "mount"]);
        }
        if let Some(missing) = needed.iter().find(|b| find_in_path(b).is_none()) {
            return Some(format!(
                "`{missing}` is not installed (run tests/interop/install-clients.sh as root)"
            ));
        }
        if self == Self::Uacme && !is_root() {
            return Some(
                "uacme trusts only the system CA bundle; the test bind-mounts one in a \
                 private mount namespace (unshare -m), which needs root"
                    .to_owned(),
            );
        }
        None
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary())
    }
}

/// A challenge type (RFC 8555 section 8, RFC 8737).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    Dns01,
    Http01,
    TlsAlpn01,
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns01 => "dns-01",
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// Where the validator looks for the client's challenge answers.
#[derive(Clone, Debug)]
pub struct Ports {
    /// The validator connects here for http-01; the client's responder listens on 127.0.0.1.
    pub http01: u16,
    /// The validator connects here for tls-alpn-01.
    pub tls_alpn01: u16,
    /// The DNS server the validator resolves through (lego checks dns-01 TXT records there).
    pub dns: SocketAddr,
    /// That DNS server's records directory: a TXT query for name N also returns
    /// the lines of the file `<dns_records>/<N lower case, no trailing dot>`.
    pub dns_records: PathBuf,
}

impl Ports {
    /// A mock DNS server serving the clients' records from
    /// `<tmp>/dns-records`, a free port for the RA, and free challenge
    /// ports: the DNS server (keep it alive), the RA's port and the ports.
    pub fn with_mock_dns(tmp: &Path) -> Result<(super::MockDns, u16, Self), String> {
        let records = tmp.join("dns-records");
        fs::create_dir_all(&records).map_err(|e| format!("{}: {e}", records.display()))?;
        let dns = super::MockDns::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| format!("mock DNS: {e}"))?;
        dns.set_records_dir(Some(records.clone()));
        let [acme, http01, tls_alpn01] =
            super::free_ports().map_err(|e| format!("free ports: {e}"))?;
        let ports = Self {
            http01,
            tls_alpn01,
            dns: dns.addr(),
            dns_records: records,
        };
        Ok((dns, acme, ports))
    }
}

/// A certificate as the client stored it, copied right after the step.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then the chain the server returned.
    pub fullchain: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

/// What one client run produced.
#[derive(Debug)]
pub struct Outcome {
    pub issued: Issued,
    /// What a plain `certbot renew` (no --force-renewal) did right after
    /// issue, for certbot: whether it asked renewalInfo (ARI, RFC 9773) and
    /// whether it renewed.
    pub plain_renew: Option<PlainRenew>,
    pub renewed: Issued,
    /// Wall time of the issuing invocation (account already registered for
    /// certbot, uacme and dehydrated; lego registers in the same run).
    pub issue_time: Duration,
    pub renew_time: Duration,
    pub revoke_time: Duration,
    /// Per-step logs (`register.log`, `issue.log`, ...).
    pub logs: PathBuf,
}

/// What a plain `certbot renew` did.
#[derive(Debug)]
pub struct PlainRenew {
    /// Its log shows a request to the server's renewal-info resource.
    pub asked_ari: bool,
    /// The certificate changed.
    pub renewed: bool,
}

/// Facts read from a verified certificate.
#[derive(Debug)]
pub struct CertFacts {
    /// Serial number, upper-case hex as openssl prints it.
    pub serial: String,
    /// Certificates in the returned chain after the leaf.
    pub chain_len: usize,
}

/// The client invocations for one run.
struct Plan {
    register: Option<Command>,
    issue: Command,
    /// A renewal without force, with the log it writes (certbot).
    plain_renew: Option<(Command, PathBuf)>,
    renew: Command,
    revoke: Command,
    cert: PathBuf,
    key: PathBuf,
    /// Directory served as `/.well-known/acme-challenge/` on the http-01 port.
    webroot: Option<PathBuf>,
}

/// Runs `client` end to end against `directory_url`: registers an account,
/// gets a certificate for `name` with `challenge`, renews it (forced), and
/// revokes the renewed one. `ca_file` is the PEM the client trusts for the
/// server's HTTPS. State and logs go to `workdir/<client>/`.
pub fn run_client(
    client: Client,
    directory_url: &str,
    ca_file: &Path,
    name: &str,
    challenge: Challenge,
    ports: &Ports,
    workdir: &Path,
) -> Result<Outcome, String> {
    check_inputs(client, directory_url, name, challenge, &[ca_file, workdir])?;
    let dir = workdir.join(client.binary());
    let logs = dir.join("logs");
    let out = dir.join("out");
    for d in [&logs, &out] {
        fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let run = Run {
        url: directory_url,
        ca_file,
        name,
        challenge,
        ports,
        dir: &dir,
    };
    let mut plan = match client {
        Client::Certbot | Client::CertbotPypi => run.certbot(&client.program()),
        Client::Dehydrated => run.dehydrated()?,
        Client::Lego => run.lego(),
        Client::Uacme => run.uacme()?,
    };
    let _responder = match &plan.webroot {
        Some(root) => Some(HttpResponder::start(
            ports.http01,
            root,
            &logs.join("http01-responder.log"),
        )?),
        None => None,
    };

    let step = |step: &str, cmd: &mut Command| {
        run_bounded(cmd, STEP_TIMEOUT, &logs.join(format!("{step}.log")))
            .map_err(|e| format!("{client} {step} ({challenge}, {name}) failed: {e}"))
    };
    if let Some(cmd) = &mut plan.register {
        step("register", cmd)?;
    }
    let issue_time = step("issue", &mut plan.issue)?;
    let issued = keep(&plan, &out, "issued")?;
    let plain_renew = match plan.plain_renew.take() {
        Some((mut cmd, log)) => {
            step("renew-plain", &mut cmd)?;
            let after = keep(&plan, &out, "after-plain-renew")?;
            let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            Some(PlainRenew {
                asked_ari: log_text.contains("/renewal-info/"),
                renewed: read(&issued.fullchain)? != read(&after.fullchain)?,
            })
        }
        None => None,
    };
    // dehydrated and uacme name archived files by the second
    thread::sleep(Duration::from_millis(1100));
    let renew_time = step("renew", &mut plan.renew)?;
    let renewed = keep(&plan, &out, "renewed")?;
    let revoke_time = step("revoke", &mut plan.revoke)?;
    Ok(Outcome {
        issued,
        plain_renew,
        renewed,
        issue_time,
        renew_time,
        revoke_time,
        logs,
    })
}

/// [`verify_cert`] on the issued and the renewed certificate of `outcome`,
/// which must be two certificates (two serials).
pub fn verify_issued_and_renewed(
    outcome: &Outcome,
    name: &str,
    root: &Path,
) -> Result<(CertFacts, CertFacts), String> {
    let first =
        verify_cert(&outcome.issued, name, root).map_err(|e| format!("issued certificate: {e}"))?;
    let second = verify_cert(&outcome.renewed, name, root)
        .map_err(|e| format!("renewed certificate: {e}"))?;
    if first.serial == second.serial {
        return Err(format!(
            "renewal returned the same certificate (serial {})",
            first.serial
        ));
    }
    Ok((first, second))
}

/// Checks with openssl that the certificate covers `name`, verifies up to
/// `root` through the chain the server returned, and matches its key.
pub fn verify_cert(cert: &Issued, name: &str, root: &Path) -> Result<CertFacts, String> {
    let pem = fs::read_to_string(&cert.fullchain)
        .map_err(|e| format!("{}: {e}", cert.fullchain.display()))?;
    let blocks = pem_certificates(&pem);
    let Some((leaf, chain)) = blocks.split_first() else {
        return Err(format!("{} holds no certificate", cert.fullchain.display()));
    };
    if chain.is_empty() {
        return Err(format!(
            "{}: the server returned no chain",
            cert.fullchain.display()
        ));
    }
    let leaf_path = cert.fullchain.with_extension("leaf.pem");
    let chain_path = cert.fullchain.with_extension("chain.pem");
    write(&leaf_path, leaf)?;
    write(&chain_path, chain.concat())?;

    let host = openssl(&["x509", "-noout", "-checkhost", name, "-in"], &leaf_path)?;
    if !host.contains(" does match ") {
        return Err(format!("certificate does not cover {name}: {host}"));
    }
    let mut verify = Command::new("openssl");
    verify
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(&chain_path)
        .arg(&leaf_path);
    let out = verify
        .output()
        .map_err(|e| format!("cannot run openssl verify: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "certificate does not verify against {}: {}{}",
            root.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let cert_key = openssl(&["x509", "-noout", "-pubkey", "-in"], &leaf_path)?;
    let own_key = openssl(&["pkey", "-pubout", "-in"], &cert.key)?;
    if cert_key != own_key {
        return Err(format!(
            "certificate does not match the key {}",
            cert.key.display()
        ));
    }
    let serial = openssl(&["x509", "-noout", "-serial", "-in"], &leaf_path)?;
    let serial = serial
        .trim()
        .strip_prefix("serial=")
        .ok_or_else(|| format!("unexpected openssl serial output: {serial}"))?;
    Ok(CertFacts {
        serial: serial.to_owned(),
        chain_len: chain.len(),
    })
}

/// Directory URL, CA file, name and challenge for building client commands.
struct Run<'a> {
    url: &'a str,
    ca_file: &'a Path,
    name: &'a str,
    challenge: Challenge,
    ports: &'a Ports,
    dir: &'a Path,
}

impl Run<'_> {
    fn certbot(&self, program: &Path) -> Plan {
        let dirs = |cmd: &mut Command| {
            cmd.env("REQUESTS_CA_BUNDLE", self.ca_file)
                .arg("--non-interactive")
                .arg("--config-dir")
                .arg(self.dir.join("config"))
                .arg("--work-dir")
                .arg(self.dir.join("work"))
                .arg("--logs-dir")
                .arg(self.dir.join("logs/certbot"));
        };
        let mut register = Command::new(program);
        register.arg("register");
        dirs(&mut register);
        register.args([
            "--server",
            self.url,
            "--agree-tos",
            "--register-unsafely-without-email",
        ]);
        let mut issue = Command::new(program);
        issue.arg("certonly");
        dirs(&mut issue);
        issue
            .args([
                "--server",
                self.url,
                "--cert-name",
                self.name,
                "-d",
                self.name,
            ])
            .args(["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"])
            .args(["--standalone", "--preferred-challenges", "http-01"])
            .args(["--http-01-address", "127.0.0.1", "--http-01-port"])
            .arg(self.ports.http01.to_string());
        // A plain renew decides by itself whether the certificate is due
        // (certbot >= 4.1 asks the server's renewalInfo, RFC 9773).
        let mut plain_renew = Command::new(program);
        plain_renew.arg("renew");
        dirs(&mut plain_renew);
        plain_renew.args(["--cert-name", self.name, "--no-random-sleep-on-renew", "-v"]);
        // renew reads the server and authenticator from the renewal config
        let mut renew = Command::new(program);
        renew.arg("renew");
        dirs(&mut renew);
        renew.args([
            "--cert-name",
            self.name,
            "--force-renewal",
            "--no-random-sleep-on-renew",
        ]);
        let live = self.dir.join("config/live").join(self.name);
        // without --server, revoke looks for an account at Let's Encrypt
        let mut revoke = Command::new(program);
        revoke.arg("revoke");
        dirs(&mut revoke);
        revoke
            .args([
                "--server",
                self.url,
                "--no-delete-after-revoke",
                "--cert-path",
            ])
            .arg(live.join("cert.pem"));
        Plan {
            register: Some(register),
            issue,
            plain_renew: Some((plain_renew, self.dir.join("logs/certbot/letsencrypt.log"))),
            renew,
            revoke,
            cert: live.join("fullchain.pem"),
            key: live.join("privkey.pem"),
            webroot: None,
        }
    }

    fn lego(&self) -> Plan {
        let path = self.dir.join("lego");
        let base = || {
            let mut cmd = Command::new("lego");
            cmd.env("LEGO_CA_CERTIFICATES", self.ca_file)
                .args(["--server", self.url, "--accept-tos", "--key-type", "ec256"])
                // lego refuses to run without an account e-mail
                .args(["--email", "interop@example.org", "--domains", self.name])
                .arg("--path")
                .arg(&path);
            match self.challenge {
                Challenge::Http01 => {
                    cmd.arg("--http")
                        .arg("--http.port")
                        .arg(format!("127.0.0.1:{}", self.ports.http01));
                }
                Challenge::TlsAlpn01 => {
                    cmd.arg("--tls")
                        .arg("--tls.port")
                        .arg(format!("127.0.0.1:{}", self.ports.tls_alpn01));
                }
                Challenge::Dns01 => {
                    cmd.env("EXEC_PATH", script("lego-dns-hook.sh"))
                        .env("INTEROP_DNS_RECORDS", &self.ports.dns_records)
                        .env("EXEC_PROPAGATION_TIMEOUT", "60")
                        .env("EXEC_POLLING_INTERVAL", "1")
                        .env("EXEC_SEQUENCE_INTERVAL", "1")
                        .args(["--dns", "exec", "--dns.disable-cp", "--dns.resolvers"])
                        .arg(self.ports.dns.to_string());
                }
            }
            cmd
        };
        // lego registers the account within `run`
        let mut issue = base();
        issue.arg("run");
        // a renewal window far beyond any validity period forces the renewal
        let mut renew = base();
        renew.args(["renew", "--days", "36500", "--no-random-sleep"]);
        let mut revoke = base();
        revoke.args(["revoke", "--keep"]);
        let certs = path.join("certificates");
        Plan {
            plain_renew: None,
            register: None,
            issue,
            renew,
            revoke,
            cert: certs.join(format!("{}.crt", self.name)),
            key: certs.join(format!("{}.key", self.name)),
            webroot: None,
        }
    }

    fn uacme(&self) -> Result<Plan, String> {
        // uacme has no CA option and its libcurl reads only the system bundle:
        // run it where that bundle (in a private mount namespace) also holds ours
        let system = fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        let ours =
            fs::read(self.ca_file).map_err(|e| format!("{}: {e}", self.ca_file.display()))?;
        let bundle = self.dir.join("ca-bundle.pem");
        write(&bundle, [system, b"\n".to_vec(), ours].concat())?;
        let webroot = self.dir.join("www");
        fs::create_dir_all(&webroot).map_err(|e| format!("{}: {e}", webroot.display()))?;
        let conf = self.dir.join("conf");
        let base = || {
            let mut cmd = Command::new(script("with-ca-bundle.sh"));
            cmd.arg(&bundle)
                .env("INTEROP_WEBROOT", &webroot)
                .args(["uacme", "-v", "-c"])
                .arg(&conf)
                .args(["-a", self.url]);
            cmd
        };
        let mut register = base();
        register.args(["-y", "new"]);
        let hook = script("uacme-hook.sh");
        let mut issue = base();
        issue.args(["-t", "EC", "-b", "256", "-o", "-h"]).arg(&hook);
        issue.args(["issue", self.name]);
        let mut renew = base();
        renew
            .args(["-t", "EC", "-b", "256", "-o", "-f", "-h"])
            .arg(&hook);
        renew.args(["issue", self.name]);
        let cert = conf.join(self.name).join("cert.pem");
        let mut revoke = base();
        revoke.arg("revoke").arg(&cert);
        Ok(Plan {
            plain_renew: None,
            register: Some(register),
            issue,
            renew,
            revoke,
            key: conf.join("private").join(self.name).join("key.pem"),
            cert,
            webroot: Some(webroot),
        })
    }

    fn dehydrated(&self) -> Result<Plan, String> {
        let basedir = self.dir.join("dehydrated");
        let webroot = self.dir.join("www");
        for d in [&basedir, &webroot] {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let config = self.dir.join("dehydrated.conf");
        let text = format!(
            "CA=\"{}\"\nBASEDIR=\"{}\"\nWELLKNOWN=\"{}\"\nCHALLENGETYPE=\"http-01\"\n\
             KEY_ALGO=\"prime256v1\"\nCURL_OPTS=\"--max-time 60\"\n",
            self.url,
            basedir.display(),
            webroot.display()
        );
        write(&config, text.as_bytes())?;
        let base = || {
            let mut cmd = Command::new("dehydrated");
            cmd.env("CURL_CA_BUNDLE", self.ca_file)
                .arg("--config")
                .arg(&config);
            cmd
        };
        let mut register = base();
        register.args(["--register", "--accept-terms"]);
        let mut issue = base();
        issue.args(["--cron", "--domain", self.name]);
        let mut renew = base();
        renew.args(["--cron", "--force", "--domain", self.name]);
        let certs = basedir.join("certs").join(self.name);
        let mut revoke = base();
        revoke.arg("--revoke").arg(certs.join("cert.pem"));
        Ok(Plan {
            plain_renew: None,
            register: Some(register),
            issue,
            renew,
            revoke,
            cert: certs.join("fullchain.pem"),
            key: certs.join("privkey.pem"),
            webroot: Some(webroot),
        })
    }
}

/// Refuses combinations the harness does not drive, names that are not
/// plain DNS names, and paths that would break the clients' config files.
fn check_inputs(
    client: Client,
    url: &str,
    name: &str,
    challenge: Challenge,
    paths: &[&Path],
) -> Result<(), String> {
    let supported = match client {
        Client::Lego => true,
        Client::Certbot | Client::CertbotPypi | Client::Dehydrated | Client::Uacme => {
            challenge == Challenge::Http01
        }
    };
    if !supported {
        return Err(format!("the harness drives {client} only with http-01"));
    }
    if !url.starts_with("https://127.0.0.1:") && !url.starts_with("https://localhost:") {
        return Err(format!("directory URL must be on loopback: {url}"));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if name.is_empty() || !name.chars().all(plain) || name.starts_with(['.', '-']) {
        return Err(format!("not a plain DNS name: {name:?}"));
    }
    for path in paths {
        let text = path.to_string_lossy();
        if text.contains(['"', '\'', '$', '`', '\\', ' ', '\n']) {
            return Err(format!("path unsafe for client configs: {text:?}"));
        }
    }
    Ok(())
}

/// Copies the client's current certificate and key to `out/<label>-*.pem`.
fn keep(plan: &Plan, out: &Path, label: &str) -> Result<Issued, String> {
    let kept = Issued {
        fullchain: out.join(format!("{label}-fullchain.pem")),
        key: out.join(format!("{label}-key.pem")),
    };
    for (from, to) in [(&plan.cert, &kept.fullchain), (&plan.key, &kept.key)] {
        fs::copy(from, to).map_err(|e| {
            format!(
                "the client left no file at {} ({e}) after {label}",
                from.display()
            )
        })?;
    }
    Ok(kept)
}

/// PEM `CERTIFICATE` blocks of `text`, each with its armour lines.
fn pem_certificates(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current = Some(String::new());
        }
        if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----") {
            blocks.extend(current.take());
        }
    }
    blocks
}

/// Runs `openssl ARGS FILE` and returns its stdout.
fn openssl(args: &[&str], file: &Path) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {} {} failed: {}",
            args.join(" "),
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
