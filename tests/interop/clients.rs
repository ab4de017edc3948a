//! Interop: real ACME (RFC 8555) clients from Debian — certbot, lego, uacme
//! and dehydrated — and today's certbot from PyPI against the built
//! `acmeproxy` binary. Each scenario
//! starts its own server (softcas, fresh temp dir and ports), lets the client
//! register, issue, renew (forced) and revoke, and checks the certificates
//! with openssl against the softcas root.
//!
//! Needs the clients installed (`tests/interop/install-clients.sh`, root). A
//! missing client skips its scenario with a message, or fails it when `CI`
//! is set. uacme also needs root (a private mount namespace for its CA bundle).

use acmeproxy_testkit as kit;

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acmeproxy_testkit::MockDns;
use serde_json::json;

use kit::clients::{Challenge, Client, Ports, run_client, verify_issued_and_renewed};
use kit::{ChildGuard, fetch_roots_pem, free_ports, tail};

/// How long the server may take to answer its directory (it creates its CA at first start).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn certbot_http01() {
    scenario(Client::Certbot, Challenge::Http01, "certbot-http.test");
}

/// Today's certbot (PyPI, certbot 5): its Python `cryptography` reads
/// certificates strictly (no encoded DEFAULT values) and it asks renewalInfo.
#[test]
fn certbot_pypi_http01() {
    scenario(
        Client::CertbotPypi,
        Challenge::Http01,
        "certbot-pypi-http.test",
    );
}

#[test]
fn dehydrated_http01() {
    scenario(
        Client::Dehydrated,
        Challenge::Http01,
        "dehydrated-http.test",
    );
}

#[test]
fn lego_dns01() {
    scenario(Client::Lego, Challenge::Dns01, "lego-dns.test");
}

#[test]
fn lego_http01() {
    scenario(Client::Lego, Challenge::Http01, "lego-http.test");
}

#[test]
fn lego_tls_alpn01() {
    scenario(Client::Lego, Challenge::TlsAlpn01, "lego-tls-alpn.test");
}

#[test]
fn uacme_http01() {
    scenario(Client::Uacme, Challenge::Http01, "uacme-http.test");
}

/// Runs one client scenario against a fresh server; skips (or, under CI,
/// fails) when the client is not installed. On failure the temp dir is kept
/// and the server's log is printed.
fn scenario(client: Client, challenge: Challenge, name: &str) {
    if let Some(why) = client.missing_prerequisite() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{client} {challenge}: {why} (CI is set, so this is a failure)"
        );
        eprintln!("SKIPPED interop {client} {challenge}: {why}");
        return;
    }
    let tmp = match tempfile::Builder::new()
        .prefix("acmeproxy-interop-")
        .tempdir()
    {
        Ok(tmp) => tmp,
        Err(e) => panic!("cannot create a temp dir: {e}"),
    };
    let server_log = tmp.path().join("server.log");
    let result = attempt(client, challenge, name, tmp.path());
    if let Err(failure) = result {
        let kept = tmp.keep();
        eprintln!("{}", tail(&server_log, 300));
        panic!(
            "interop {client} {challenge} failed: {failure}\n(state kept in {})",
            kept.display()
        );
    }
}

fn attempt(client: Client, challenge: Challenge, name: &str, tmp: &Path) -> Result<(), String> {
    attempt_with(client, challenge, name, tmp, false)
}

/// The top-level `ca.json` (the embedded default: softcas, sled, data under
/// `run/`) serves a real client.
#[test]
fn top_level_ca_json_serves_certbot() {
    let client = Client::Certbot;
    if let Some(why) = client.missing_prerequisite() {
        assert!(std::env::var_os("CI").is_none(), "{why} (CI is set)");
        eprintln!("SKIPPED top-level ca.json: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-top-level-")
        .tempdir()
        .unwrap();
    if let Err(e) = attempt_with(
        client,
        Challenge::Http01,
        "top-level.test",
        tmp.path(),
        true,
    ) {
        let kept = tmp.keep();
        eprintln!("{}", tail(&kept.join("server.log"), 200));
        panic!("top-level ca.json: {e} (state kept in {})", kept.display());
    }
    assert!(
        tmp.path().join("run/data/softcas/root.crt").is_file(),
        "the relative dataDir is taken beside ca.json"
    );
    // The log an operator reads: plain text (stderr is a file), one line for
    // what was loaded, and one per account, issuance and revocation.
    let log = fs::read_to_string(tmp.path().join("server.log")).unwrap();
    assert!(!log.contains('\x1b'), "no colour codes in a log file");
    for needle in [
        "loaded: ACME on https://127.0.0.1:",
        "upstream softcas in",
        "store sled in",
        "account created",
        "certificate issued",
        "names=dns:top-level.test ",
        "certificate revoked",
    ] {
        assert!(
            log.contains(needle),
            "no {needle:?} in the server log:\n{log}"
        );
    }
    assert!(
        !log.contains("Some("),
        "Debug text in the server log:\n{log}"
    );
}

fn attempt_with(
    client: Client,
    challenge: Challenge,
    name: &str,
    tmp: &Path,
    top_level: bool,
) -> Result<(), String> {
    let records = tmp.join("dns-records");
    fs::create_dir_all(&records).map_err(|e| format!("{}: {e}", records.display()))?;
    let dns = start_dns(&records).map_err(|e| format!("mock DNS: {e}"))?;
    let [acme, http01, tls_alpn01] = free_ports().map_err(|e| format!("free ports: {e}"))?;
    let ports = Ports {
        http01,
        tls_alpn01,
        dns: dns.addr(),
        dns_records: records,
    };
    let server = if top_level {
        Server::start_top_level(tmp, acme, &ports)?
    } else {
        Server::start(tmp, acme, &ports)?
    };

    let outcome = run_client(
        client,
        &server.directory_url,
        &server.root,
        name,
        challenge,
        &ports,
        &tmp.join("clients"),
    )?;
    let (first, second) = verify_issued_and_renewed(&outcome, name, &server.root)?;
    println!(
        "interop {client} {challenge} {name}: issued serial {} (chain of {}), renewed serial {}, \
         revoked; wall time issue {:.2}s, renew {:.2}s, revoke {:.2}s; logs in {}",
        first.serial,
        first.chain_len,
        second.serial,
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64(),
        outcome.logs.display(),
    );
    if let Some(plain) = &outcome.plain_renew {
        println!(
            "{client}: plain `certbot renew` right after issue: asked renewalInfo (ARI): {}, renewed: {}",
            plain.asked_ari, plain.renewed
        );
        // A certificate a minute old is not due, whether or not the client
        // reads ARI: the window starts two thirds into its lifetime.
        if client == Client::CertbotPypi && !plain.asked_ari {
            return Err(format!(
                "{client}: a plain renew did not ask the server's renewalInfo (ARI)"
            ));
        }
        if plain.renewed {
            return Err(format!(
                "{client}: a plain renew replaced a fresh certificate"
            ));
        }
    }
    Ok(())
}

/// The DNS server the validator resolves names through, with dns-01 TXT
/// records read from `records`.
fn start_dns(records: &Path) -> io::Result<MockDns> {
    let dns = MockDns::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    dns.set_records_dir(Some(records.to_owned()));
    Ok(dns)
}

/// The acmeproxy binary serving ACME with the soft CA; killed on drop.
struct Server {
    _child: ChildGuard,
    directory_url: String,
    /// What /roots.pem served (the softcas root): the clients' only trust
    /// anchor, for the HTTPS endpoint and the issued chains.
    root: PathBuf,
}

impl Server {
    /// Writes `ca.json`, starts `acmeproxy serve`, and waits for the directory.
    fn start(tmp: &Path, port: u16, ports: &Ports) -> Result<Self, String> {
        let data = tmp.join("data");
        let config = kit::CaJson::new(&data)
            .port(port)
            .db(None)
            .validation(ports.http01, ports.tls_alpn01, ports.dns, 10)
            .to_json();
        Self::spawn(tmp, port, &config, &data)
    }

    /// The repository's top-level `ca.json` as it is, but for the ports and
    /// the DNS server the test machine gives it; its relative `dataDir`
    /// lands beside the copy, whatever the working directory.
    fn start_top_level(tmp: &Path, port: u16, ports: &Ports) -> Result<Self, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ca.json");
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config["address"] = json!(format!("127.0.0.1:{port}"));
        config["metrics"] = json!({"enabled": false});
        config["validation"]["httpPort"] = json!(ports.http01);
        config["validation"]["tlsAlpnPort"] = json!(ports.tls_alpn01);
        config["validation"]["resolvers"] = json!([ports.dns.to_string()]);
        let data = tmp.join(config["dataDir"].as_str().ok_or("ca.json has no dataDir")?);
        Self::spawn(tmp, port, &config, &data)
    }

    /// Writes `config` to `<tmp>/ca.json`, starts `acmeproxy serve` on it
    /// from `/`, and waits for the directory.
    fn spawn(
        tmp: &Path,
        port: u16,
        config: &serde_json::Value,
        data: &Path,
    ) -> Result<Self, String> {
        let config_path = tmp.join("ca.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        fs::write(&config_path, text).map_err(|e| format!("{}: {e}", config_path.display()))?;

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
        cmd.arg("serve").arg(&config_path).current_dir("/");
        let mut child = ChildGuard::spawn("acmeproxy", &mut cmd, &tmp.join("server.log"))?;
        let directory_url = format!("https://127.0.0.1:{port}/acme/acme/directory");
        kit::wait_https_blocking(
            &directory_url,
            &data.join("softcas/root.crt"),
            200,
            READY_TIMEOUT,
            || child.check_running(),
        )?;
        // Clients trust only what /roots.pem serves, as the README says.
        let root = tmp.join("roots.pem");
        let served = fetch_roots_pem(port, &root)?;
        let softcas_root = fs::read(data.join("softcas/root.crt")).map_err(|e| e.to_string())?;
        if pem::parse_many(&served).map_err(|e| e.to_string())?
            != pem::parse_many(&softcas_root).map_err(|e| e.to_string())?
        {
            return Err("/roots.pem does not serve the softcas root".into());
        }
        Ok(Self {
            _child: child,
            directory_url,
            root,
        })
    }
}
