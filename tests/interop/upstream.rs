//! Interop through an external ACME upstream: real clients from Debian —
//! certbot, lego, uacme and dehydrated — against the built `acmeproxy`
//! binary whose `authority` is `externalcas` pointing at a real Pebble that
//! requires External Account Binding (RFC 8555 section 7.3.4). Each scenario
//! starts its own Pebble and server (sled store), lets the client register,
//! issue, renew (forced) and revoke (RFC 8555 sections 7.3, 7.4, 7.6), and
//! checks that every chain verifies to Pebble's root and that the revocation
//! reached Pebble. The RA's own HTTPS certificate comes from Pebble too, so
//! the clients trust only Pebble's issuing root.
//!
//! A last scenario puts a delaying TCP proxy between acmeproxy and Pebble so
//! that one upstream issuance takes many seconds: certbot must keep polling
//! the `processing` order (RFC 8555 section 7.4) until it is valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use kit::clients::{Challenge, Client, Ports, run_client, verify_cert, verify_issued_and_renewed};
use kit::pebble::{Pebble, PebbleOptions};
use kit::slowproxy::SlowProxy;
use kit::{ChildGuard, fetch_roots_pem, tail};

/// How long the server may take to answer its directory (it gets its own
/// certificate from Pebble first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to each read in each direction between acmeproxy and Pebble.
const UPSTREAM_DELAY: Duration = Duration::from_millis(300);

#[test]
fn certbot_http01_via_pebble() {
    scenario(Client::Certbot, "certbot-up.test", None);
}

#[test]
fn dehydrated_http01_via_pebble() {
    scenario(Client::Dehydrated, "dehydrated-up.test", None);
}

#[test]
fn lego_http01_via_pebble() {
    scenario(Client::Lego, "lego-up.test", None);
}

#[test]
fn uacme_http01_via_pebble() {
    scenario(Client::Uacme, "uacme-up.test", None);
}

/// certbot → acmeproxy → acmeproxy → Pebble. The inner RA trusts the outer
/// one for `.chain.test` through a pre-validated EAB key (as a commercial CA
/// pre-validates an organisation's domains); the outer RA validates certbot.
#[test]
fn certbot_through_a_chain_of_two_ras() {
    let client = Client::Certbot;
    if let Some(why) = client
        .missing_prerequisite()
        .or_else(|| (!Pebble::available()).then(|| "`pebble` is not installed".to_owned()))
    {
        assert!(std::env::var_os("CI").is_none(), "chain: {why} (CI is set)");
        eprintln!("SKIPPED chain of RAs: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-chain-")
        .tempdir()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pebble = runtime.block_on(Pebble::start(PebbleOptions::default()));
    let root = tmp.path().join("pebble-root.pem");
    fs::write(&root, runtime.block_on(pebble.root_pem())).unwrap();

    // The inner RA, in front of Pebble; accounts need EAB.
    let inner = runtime.block_on(kit::TestServer::start_with(kit::Options {
        db: "sled",
        require_eab: true,
        root: Some(root.clone()),
        authority: Some(pebble.authority_json()),
        ..kit::Options::default()
    }));
    let key = runtime
        .block_on(inner.server.as_ref().unwrap().authority().create_eab_key(
            "acme",
            Some("outer-ra".into()),
            Some(acmeproxy::model::EabPolicy {
                // The clients' names, and the outer RA's own HTTPS names.
                allow_dns: vec![".chain.test".into(), "localhost".into()],
                allow_ip: vec!["127.0.0.1".into()],
                prevalidated: true,
                ..Default::default()
            }),
        ))
        .unwrap();

    // The outer RA, as the real binary, with the inner one as its upstream.
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp.path()).unwrap();
    let authority = json!({
        "type": "externalcas",
        "config": {
            "ca_url": inner.directory_url(),
            "account_email": "outer-ra@example.org",
            "eab_kid": key.kid,
            "eab_hmac_key": base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD, &key.hmac_key),
            "ca_bundle": root,
            "cert_obtain_timeout": 30
        },
        "provisioners": [{"type": "ACME", "name": "acme"}]
    });
    // No `root` for the outer RA: it finds Pebble's root in its ca_bundle,
    // as the issuer of the top of its chain.
    let outer = Server::start_with_authority(tmp.path(), acme, &ports, authority, &root, false)
        .unwrap_or_else(|e| {
            panic!(
                "outer RA: {e}\n{}",
                tail(&tmp.path().join("server.log"), 100)
            )
        });

    let name = "www.chain.test";
    let outcome = run_client(
        client,
        &outer.directory_url,
        &outer.roots,
        name,
        Challenge::Http01,
        &ports,
        &tmp.path().join("clients"),
    )
    .unwrap_or_else(|e| {
        panic!(
            "certbot through two RAs: {e}\n{}",
            tail(&tmp.path().join("server.log"), 100)
        )
    });
    let first = verify_cert(&outcome.issued, name, &outer.roots).unwrap();
    let second = verify_cert(&outcome.renewed, name, &outer.roots).unwrap();
    assert_ne!(first.serial, second.serial);
    // Pebble: both RAs' own certificates, the issued and the renewed one.
    expect_issued(&pebble, 4, "through the chain").unwrap();
    let revoked = runtime.block_on(pebble.cert_status(&second.serial.to_ascii_lowercase()));
    assert_eq!(
        revoked, "Revoked",
        "certbot's revocation reached Pebble through both RAs"
    );
    println!(
        "chain certbot → acmeproxy → acmeproxy → pebble: issue {:.2}s, renew {:.2}s, revoke {:.2}s",
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64()
    );
    drop(outer);
}

#[test]
fn certbot_http01_via_slow_pebble() {
    scenario(Client::Certbot, "certbot-slow.test", Some(UPSTREAM_DELAY));
}

/// Runs one client scenario against a fresh Pebble and server; skips (or,
/// under CI, fails) when the client or Pebble is not installed. On failure
/// the temp dir is kept and the server's and Pebble's logs are printed.
fn scenario(client: Client, name: &str, delay: Option<Duration>) {
    let missing = client.missing_prerequisite().or_else(|| {
        (!Pebble::available()).then(|| {
            "`pebble` is not installed (run tests/interop/install-clients.sh as root)".to_owned()
        })
    });
    if kit::skip_when_missing(&format!("interop {client} via pebble"), missing) {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-interop-up-")
        .tempdir()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pebble = runtime.block_on(Pebble::start(PebbleOptions::default()));
    let result = attempt(&runtime, &pebble, client, name, delay, tmp.path());
    if let Err(failure) = result {
        let kept = tmp.keep();
        eprintln!("{}", tail(&kept.join("server.log"), 300));
        let log = pebble.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "    --- last lines of pebble's log ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
        panic!(
            "interop {client} via pebble failed: {failure}\n(state kept in {})",
            kept.display()
        );
    }
}

fn attempt(
    runtime: &tokio::runtime::Runtime,
    pebble: &Pebble,
    client: Client,
    name: &str,
    delay: Option<Duration>,
    tmp: &Path,
) -> Result<(), String> {
    let root = tmp.join("pebble-root.pem");
    fs::write(&root, runtime.block_on(pebble.root_pem())).map_err(|e| e.to_string())?;
    let proxy = match delay {
        Some(d) => Some(SlowProxy::start(pebble.acme_addr(), d).map_err(|e| e.to_string())?),
        None => None,
    };
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp)?;
    let ca_url = match &proxy {
        Some(p) => format!("https://127.0.0.1:{}/dir", p.addr().port()),
        None => pebble.directory_url(),
    };

    let started = Instant::now();
    let server = Server::start(tmp, acme, &ports, pebble, &ca_url, &root)?;
    let ready_time = started.elapsed();
    // Pebble issued the RA's own HTTPS certificate, and nothing else yet.
    expect_issued(pebble, 1, "after the server started")?;

    let outcome = run_client(
        client,
        &server.directory_url,
        &server.roots,
        name,
        Challenge::Http01,
        &ports,
        &tmp.join("clients"),
    )?;
    let (first, second) = verify_issued_and_renewed(&outcome, name, &server.roots)?;
    // The RA's certificate, the issued and the renewed one: no duplicates.
    expect_issued(pebble, 3, "after issue and renew")?;
    for (facts, want) in [(&first, "Valid"), (&second, "Revoked")] {
        let status = runtime.block_on(pebble.cert_status(&facts.serial.to_ascii_lowercase()));
        if status != want {
            return Err(format!(
                "pebble says serial {} is {status:?}, expected {want:?}",
                facts.serial
            ));
        }
    }
    let slow = proxy.as_ref().map_or_else(String::new, |p| {
        format!(
            "; upstream through a proxy adding {} ms per read: {} connections, {} delayed reads",
            delay.unwrap_or_default().as_millis(),
            p.connections(),
            p.delayed_reads()
        )
    });
    println!(
        "interop {client} http-01 {name} via pebble: issued serial {} (chain of {}), renewed \
         serial {} revoked at pebble; server ready {:.2}s, issue {:.2}s, renew {:.2}s, revoke \
         {:.2}s{slow}; logs in {}",
        first.serial,
        first.chain_len,
        second.serial,
        ready_time.as_secs_f64(),
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64(),
        outcome.logs.display(),
    );
    if let Some(p) = &proxy {
        // The upstream traffic really went through the proxy.
        if p.delayed_reads() < 20 {
            return Err(format!(
                "only {} reads went through the slow proxy",
                p.delayed_reads()
            ));
        }
        // ... and the client polled the order while it was `processing`.
        if client == Client::Certbot {
            let log = tmp.join("clients/certbot/logs/certbot/letsencrypt.log");
            let polls = fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("\"status\":\"processing\"")
                .count();
            if polls < 2 {
                return Err(format!(
                    "certbot saw the order processing {polls} times ({})",
                    log.display()
                ));
            }
            println!("certbot saw a processing order {polls} times (issue and renew)");
        }
    }
    drop(server);
    Ok(())
}

/// Several upstreams (`authority.upstreams`, `routes`): two Pebbles that
/// require EAB as "sectigo" and "zerossl". certbot orders an internal name
/// (route "internal" → zerossl), lego a public one (route "public" →
/// sectigo): each issues, renews and revokes, its chains verify to its
/// route's Pebble root only, and the revocation reaches that Pebble.
#[test]
fn certbot_and_lego_by_route_between_two_pebbles() {
    let missing = [Client::Certbot, Client::Lego]
        .into_iter()
        .find_map(Client::missing_prerequisite)
        .or_else(|| (!Pebble::available()).then(|| "`pebble` is not installed".to_owned()));
    if kit::skip_when_missing("routes interop", missing) {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-interop-routes-")
        .tempdir()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sectigo = runtime.block_on(Pebble::start(PebbleOptions::default()));
    let zerossl = runtime.block_on(Pebble::start(PebbleOptions::default()));
    if let Err(failure) = by_route(&runtime, &sectigo, &zerossl, tmp.path()) {
        let kept = tmp.keep();
        eprintln!("{}", tail(&kept.join("server.log"), 200));
        panic!(
            "routes interop failed: {failure}\n(state kept in {})",
            kept.display()
        );
    }
}

fn by_route(
    runtime: &tokio::runtime::Runtime,
    sectigo: &Pebble,
    zerossl: &Pebble,
    tmp: &Path,
) -> Result<(), String> {
    let write = |file: &str, pem: &str| {
        let path = tmp.join(file);
        fs::write(&path, pem)
            .map(|()| path)
            .map_err(|e| e.to_string())
    };
    let (pem1, pem2) =
        runtime.block_on(async { (sectigo.root_pem().await, zerossl.root_pem().await) });
    let root1 = write("sectigo-root.pem", &pem1)?;
    let root2 = write("zerossl-root.pem", &pem2)?;
    let both = write("roots.pem.in", &format!("{pem1}{pem2}"))?;
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp)?;
    let entry = |name: &str, p: &Pebble| json!({"name": name, "type": "externalcas", "config": p.authority_json()["config"]});
    let authority = json!({
        "upstreams": [entry("sectigo", sectigo), entry("zerossl", zerossl)],
        "routes": [
            {"name": "internal", "match": {"dns": ["*.internal.test"]}, "upstreams": ["zerossl"]},
            {"name": "public", "upstreams": ["sectigo", "zerossl"]}
        ],
        "provisioners": [{"type": "ACME", "name": "acme"}]
    });
    let server = Server::start_with_authority(tmp, acme, &ports, authority, &both, true)?;
    for (client, name, root, pebble) in [
        (Client::Certbot, "db.internal.test", &root2, zerossl),
        (Client::Lego, "www.public.test", &root1, sectigo),
    ] {
        let outcome = run_client(
            client,
            &server.directory_url,
            &server.roots,
            name,
            Challenge::Http01,
            &ports,
            &tmp.join(format!("clients-{client}")),
        )?;
        let (first, second) = verify_issued_and_renewed(&outcome, name, root)
            .map_err(|e| format!("{client} {name}: {e}"))?;
        let revoked = runtime.block_on(pebble.cert_status(&second.serial.to_ascii_lowercase()));
        if revoked != "Revoked" {
            return Err(format!(
                "{client} {name}: the upstream says the revoked serial {} is {revoked:?}",
                second.serial
            ));
        }
        println!(
            "routes interop: {client} {name} issued {} and renewed {} through its route's Pebble; \
             revoked there",
            first.serial, second.serial
        );
    }
    Ok(())
}

fn expect_issued(pebble: &Pebble, want: usize, when: &str) -> Result<(), String> {
    let issued = pebble.issued();
    if issued.len() == want {
        Ok(())
    } else {
        Err(format!(
            "pebble issued {} certificates {when}, expected {want}: {issued:?}",
            issued.len()
        ))
    }
}

/// The acmeproxy binary with the externalcas upstream; killed on drop.
struct Server {
    _child: ChildGuard,
    directory_url: String,
    /// What the RA's /roots.pem served (Pebble's root): the clients' only
    /// trust anchor.
    roots: PathBuf,
}

impl Server {
    /// Writes `ca.json`, starts `acmeproxy serve`, and waits until the
    /// directory answers over HTTPS that chains to Pebble's `root`.
    fn start(
        tmp: &Path,
        port: u16,
        ports: &Ports,
        pebble: &Pebble,
        ca_url: &str,
        root: &Path,
    ) -> Result<Self, String> {
        let mut authority = pebble.authority_json();
        authority["config"]["ca_url"] = json!(ca_url);
        // a slow upstream needs more than the default 20 s per attempt
        authority["config"]["cert_obtain_timeout"] = json!(90);
        Self::start_with_authority(tmp, port, ports, authority, root, true)
    }

    /// Like [`Server::start`] with any `authority` block; `root` is the
    /// root the RA's chains lead to, also set as ca.json's `root` when
    /// `configure_root`.
    fn start_with_authority(
        tmp: &Path,
        port: u16,
        ports: &Ports,
        authority: serde_json::Value,
        root: &Path,
        configure_root: bool,
    ) -> Result<Self, String> {
        let mut config = kit::CaJson::new(tmp.join("data"))
            .port(port)
            .db(Some("sled"))
            .authority(authority)
            .validation(ports.http01, ports.tls_alpn01, ports.dns, 10)
            .to_json();
        if configure_root {
            config["root"] = json!(root);
        }
        let config_path = tmp.join("ca.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        fs::write(&config_path, text).map_err(|e| format!("{}: {e}", config_path.display()))?;

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
        cmd.arg("serve").arg(&config_path);
        let mut child = ChildGuard::spawn("acmeproxy", &mut cmd, &tmp.join("server.log"))?;
        let directory_url = format!("https://127.0.0.1:{port}/acme/acme/directory");
        kit::wait_https_blocking(&directory_url, root, 200, READY_TIMEOUT, || {
            child.check_running()
        })?;
        let roots = tmp.join("roots.pem");
        let served = fetch_roots_pem(port, &roots)?;
        let want = fs::read(root).map_err(|e| e.to_string())?;
        if pem::parse_many(&served).map_err(|e| e.to_string())?
            != pem::parse_many(&want).map_err(|e| e.to_string())?
        {
            return Err(format!(
                "/roots.pem serves something other than Pebble's root:\n{}",
                String::from_utf8_lossy(&served)
            ));
        }
        Ok(Self {
            _child: child,
            directory_url,
            roots,
        })
    }
}
