//! externalcas in front of a CA that validates every name itself: Pebble
//! with validation on (not PEBBLE_VA_ALWAYS_VALID), resolving through a real
//! BIND 9 on loopback (`-dnsserver`). The RA validates its clients inside
//! (http-01 or dns-01 at a mock DNS) and proves the names to Pebble with
//! dns-01, writing the TXT records into BIND by RFC 2136 UPDATE signed with
//! TSIG, or through an exec script calling `nsupdate`.
//!
//! Each scenario checks the records are gone from BIND afterwards, asked of
//! BIND directly. The RA's own HTTPS certificate comes from a test CA
//! (`tls.certFile`): a validating CA cannot prove `localhost`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acmeproxy::upstream::{
    CertificateAuthorityService, Checkpoint, IssuedChain, SignRequest, UpstreamError,
};
use async_trait::async_trait;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use kit::bind::Bind;
use kit::clients::{Challenge, Client, Ports, run_client, verify_issued_and_renewed};
use kit::pebble::{Pebble, PebbleOptions};
use kit::upstream::Hook;
use kit::{ChildGuard, MockDns, free_ports, tail};
use serde_json::json;

/// The zone BIND serves and Pebble validates in.
const ZONE: &str = "example.test.";
/// Bounds the waits of the tests.
const WAIT: Duration = Duration::from_secs(90);

const ENV_CONFIG: &str = "ACMEPROXY_DNS01_CRASH_CONFIG";
const ENV_MARKER: &str = "ACMEPROXY_DNS01_CRASH_MARKER";

/// BIND, Pebble validating against it, and the pieces of an RA config.
struct Chain {
    bind: Bind,
    pebble: Pebble,
    /// The RA's clients' DNS (http-01 names resolve to 127.0.0.1; dns-01
    /// TXT records set by the test).
    dns: MockDns,
    records: PathBuf,
    tmp: tempfile::TempDir,
    /// The CA of the RA's HTTPS certificate.
    tls_ca: PathBuf,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    /// Pebble's issuing root.
    root: PathBuf,
}

/// None (and a printed reason) when a tool is missing outside CI.
async fn chain(prefix: &str, extra_records: &[&str]) -> Option<Chain> {
    let missing = Bind::missing()
        .or_else(|| (!Pebble::available()).then(|| "`pebble` is not installed".to_owned()))
        .or_else(|| {
            kit::find_in_path("openssl")
                .is_none()
                .then(|| "`openssl` is not installed".to_owned())
        });
    if kit::skip_when_missing(prefix, missing) {
        return None;
    }
    let bind = Bind::start(ZONE, extra_records).unwrap();
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(bind.addr),
        ..PebbleOptions::default()
    })
    .await;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("acmeproxy-{prefix}-"))
        .tempdir()
        .unwrap();
    let (tls_ca, tls_cert, tls_key) = kit::loopback_tls(tmp.path());
    let root = tmp.path().join("pebble-root.pem");
    fs::write(&root, pebble.root_pem().await).unwrap();
    let records = tmp.path().join("dns-records");
    fs::create_dir_all(&records).unwrap();
    let dns = MockDns::start(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    dns.set_records_dir(Some(records.clone()));
    Some(Chain {
        bind,
        pebble,
        dns,
        records,
        tmp,
        tls_ca,
        tls_cert,
        tls_key,
        root,
    })
}

impl Chain {
    /// ca.json for the RA on `port`, with `upstream_challenge`, written to
    /// the temp dir; its path.
    fn write_config(&self, port: u16, http01: u16, challenge: serde_json::Value) -> PathBuf {
        let mut authority = self.pebble.authority_json();
        authority["config"]["upstream_challenge"] = challenge;
        authority["config"]["cert_obtain_timeout"] = json!(60);
        let mut ca = kit::CaJson::new(self.tmp.path().join("data"))
            .port(port)
            .db(Some("sled"))
            .authority(authority)
            .validation(http01, 1, self.dns.addr(), 10);
        ca.extra["root"] = json!(self.root);
        ca.extra["tls"] = json!({"certFile": self.tls_cert, "keyFile": self.tls_key});
        let path = self.tmp.path().join("ca.json");
        ca.write(&path).unwrap();
        path
    }

    /// The acmeproxy binary on `config`, ready.
    async fn serve(&self, config: &Path, port: u16, env: &[(&str, String)]) -> ChildGuard {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
        cmd.arg("serve").arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child =
            ChildGuard::spawn("acmeproxy", &mut cmd, &self.tmp.path().join("server.log")).unwrap();
        kit::wait_https(&directory_url(port), &self.tls_ca, 200, WAIT, || {
            child.check_running()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.server_log()));
        child
    }

    async fn account(&self, port: u16) -> Account {
        Account::builder_with_root(&self.tls_ca)
            .unwrap()
            .create(
                &NewAccount {
                    contact: &["mailto:dns01@example.org"],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory_url(port),
                None,
            )
            .await
            .unwrap()
            .0
    }

    /// An order for `names` through the RA: the RA validates the client
    /// with dns-01 at the mock DNS; finalized. Returns the order.
    async fn order(&self, account: &Account, names: &[&str]) -> instant_acme::Order {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns((*n).into())).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
        let mut authzs = order.authorizations();
        let mut txt: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        while let Some(a) = authzs.next().await {
            let mut a = a.unwrap();
            assert_eq!(a.status, AuthorizationStatus::Pending);
            let base = match a.identifier().identifier {
                Identifier::Dns(n) => n.clone(),
                other => panic!("{other:?}"),
            };
            let mut ch = a.challenge(ChallengeType::Dns01).unwrap();
            let name = format!("_acme-challenge.{base}");
            let values = txt.entry(name.clone()).or_default();
            values.push(ch.key_authorization().dns_value());
            self.dns.set_txt(&name, values.clone());
            ch.set_ready().await.unwrap();
        }
        let status = order
            .poll_ready(&RetryPolicy::new().timeout(WAIT))
            .await
            .unwrap();
        assert_eq!(status, OrderStatus::Ready);
        order.finalize().await.unwrap();
        order
    }

    fn server_log(&self) -> String {
        tail(&self.tmp.path().join("server.log"), 150)
    }

    /// The dns-01 records of `names` are gone from BIND (asked directly).
    fn assert_records_gone(&self, names: &[&str]) {
        for n in names {
            let base = n.trim_start_matches("*.");
            let left = self.bind.txt(&format!("_acme-challenge.{base}"));
            assert!(
                left.is_empty(),
                "TXT left at _acme-challenge.{base}: {left:?}"
            );
        }
    }
}

fn directory_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/acme/acme/directory")
}

/// Polls `order` until it leaves `processing`; the chain when it is valid.
async fn settle(order: &mut instant_acme::Order) -> Result<String, String> {
    let deadline = Instant::now() + WAIT;
    let mut last = String::from("not polled");
    while Instant::now() < deadline {
        match order.refresh().await {
            Ok(state) if state.status == OrderStatus::Valid => {
                return order
                    .certificate()
                    .await
                    .map_err(|e| format!("download: {e}"))?
                    .ok_or_else(|| "no certificate for a valid order".to_owned());
            }
            Ok(state) if state.status == OrderStatus::Processing => last = "processing".into(),
            Ok(state) => {
                return Err(format!(
                    "order is {:?}: {}",
                    state.status,
                    state
                        .error
                        .as_ref()
                        .and_then(|p| p.detail.clone())
                        .unwrap_or_default()
                ));
            }
            // A stale connection to a killed server.
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("the order did not settle in {WAIT:?}: {last}"))
}

/// The `field=N` values the server logged (ms), in order.
fn logged_ms(log: &str, field: &str) -> Vec<u64> {
    let pat = format!("{field}=");
    log.lines()
        .filter_map(|l| l.split_once(&pat))
        .filter_map(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// certbot → acmeproxy (http-01 inside) → Pebble (dns-01 at BIND, RFC 2136
/// with TSIG): issue, renew, revoke; the records are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_through_rfc2136_at_bind() {
    let Some(c) = chain("dns01-certbot", &[]).await else {
        return;
    };
    if kit::skip_when_missing("dns01 certbot", Client::Certbot.missing_prerequisite()) {
        return;
    }
    let [port, http01] = free_ports().unwrap();
    let config = c.write_config(port, http01, c.bind.rfc2136_json());
    let _server = c.serve(&config, port, &[]).await;
    let name = "www.example.test";
    let ports = Ports {
        http01,
        tls_alpn01: 1,
        dns: c.dns.addr(),
        dns_records: c.records.clone(),
    };
    let url = directory_url(port);
    let (ca, workdir) = (c.tls_ca.clone(), c.tmp.path().join("clients"));
    let outcome = tokio::task::spawn_blocking(move || {
        run_client(
            Client::Certbot,
            &url,
            &ca,
            name,
            Challenge::Http01,
            &ports,
            &workdir,
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.server_log(), c.pebble.log()));
    let (first, second) = verify_issued_and_renewed(&outcome, name, &c.root).unwrap();
    assert_eq!(c.pebble.issued_count(), 2, "issue and renew, nothing else");
    assert_eq!(
        c.pebble
            .cert_status(&second.serial.to_ascii_lowercase())
            .await,
        "Revoked"
    );
    assert_eq!(
        c.pebble
            .cert_status(&first.serial.to_ascii_lowercase())
            .await,
        "Valid"
    );
    c.assert_records_gone(&[name]);
    let log = fs::read_to_string(c.tmp.path().join("server.log")).unwrap_or_default();
    let (publish, propagation, validation, cleanup) = (
        logged_ms(&log, "publish_ms"),
        logged_ms(&log, "propagation_ms"),
        logged_ms(&log, "validation_ms"),
        logged_ms(&log, "cleanup_ms"),
    );
    assert_eq!(
        validation.len(),
        2,
        "two upstream dns-01 validations:\n{log}"
    );
    println!(
        "dns-01 via BIND: certbot issue {:.2}s, renew {:.2}s, revoke {:.2}s; per upstream \
         validation (issue, renew): publish {publish:?} ms, propagation wait {propagation:?} ms, \
         Pebble's validation and the RA's polling {validation:?} ms, clean-up {cleanup:?} ms",
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64(),
    );
    println!(
        "first issuance, as the server logged it:\n{}",
        timeline(&log)
    );
}

/// The server's steps of the first issuance, each with the time since the
/// one before: from the RA's own validation of certbot to the certificate.
fn timeline(log: &str) -> String {
    let steps = [
        ("challenge valid", "the RA validated certbot's http-01"),
        (
            "created the upstream order",
            "certbot polled, finalized; the job created the upstream order",
        ),
        (
            "action=\"present\"",
            "TXT record added at BIND (UPDATE + TSIG)",
        ),
        (
            "asking the upstream to validate",
            "every authoritative server answers it",
        ),
        (
            "the upstream validated dns-01",
            "Pebble validated; the RA polled the order",
        ),
        ("dns-01 records removed", "TXT record deleted"),
        (
            "certificate issued",
            "upstream finalize, certificate downloaded and stored",
        ),
    ];
    let mut out = Vec::new();
    let mut prev: Option<time::OffsetDateTime> = None;
    for (pattern, what) in steps {
        let Some(line) = log.lines().find(|l| l.contains(pattern)) else {
            out.push(format!("  (no line with {pattern:?})"));
            continue;
        };
        let Some(at) = line.split_whitespace().next().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) else {
            continue;
        };
        let delta = prev.map_or(0.0, |p| (at - p).as_seconds_f64());
        out.push(format!("  +{delta:>6.3}s  {what}"));
        prev = Some(at);
    }
    out.join("\n")
}

/// A wildcard and its base name (two values at one `_acme-challenge`),
/// and a name whose `_acme-challenge` is a CNAME into a delegated label:
/// the record goes to the CNAME's target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_cname_through_rfc2136() {
    let cname = "_acme-challenge.alias IN CNAME alias.dnsauth.example.test.";
    let Some(c) = chain("dns01-wildcard", &[cname]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let config = c.write_config(port, http01, c.bind.rfc2136_json());
    let _server = c.serve(&config, port, &[]).await;
    let account = c.account(port).await;
    let names = [
        "*.wild.example.test",
        "wild.example.test",
        "alias.example.test",
    ];
    let mut order = c.order(&account, &names).await;
    let chain = settle(&mut order)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.server_log(), c.pebble.log()));
    let leaf = pem::parse_many(&chain).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    for n in names {
        assert!(sans.iter().any(|s| s.contains(n)), "{n} not in {sans:?}");
    }
    let log = fs::read_to_string(c.tmp.path().join("server.log")).unwrap_or_default();
    assert!(
        log.contains("alias.dnsauth.example.test"),
        "the CNAME was not followed:\n{log}"
    );
    c.assert_records_gone(&names);
    assert!(c.bind.txt("alias.dnsauth.example.test").is_empty());
    assert_eq!(c.pebble.orders_created(), 1);
}

/// A TSIG secret BIND does not know: the order ends `invalid` with BIND's
/// refusal in its problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tsig_secret_makes_the_order_invalid() {
    let Some(c) = chain("dns01-badsig", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let mut challenge = c.bind.rfc2136_json();
    challenge
        .as_object_mut()
        .unwrap()
        .remove("tsig_secret_file");
    // 32 bytes, base64, not the key BIND has.
    challenge["tsig_secret"] = json!("d3JvbmctYnV0LXdlbGwtZm9ybWVkLXNlY3JldC0zMmI=");
    let config = c.write_config(port, http01, challenge);
    let _server = c.serve(&config, port, &[]).await;
    let account = c.account(port).await;
    let mut order = c.order(&account, &["badsig.example.test"]).await;
    let e = settle(&mut order).await.unwrap_err();
    assert!(e.contains("Invalid"), "{e}");
    assert!(
        e.contains("NOTAUTH") && e.contains("BADSIG"),
        "the problem does not name BIND's TSIG refusal: {e}"
    );
    assert!(e.contains("example.test"), "the zone is not named: {e}");
    let log = fs::read_to_string(c.tmp.path().join("server.log")).unwrap_or_default();
    assert!(
        log.contains("zone=example.test.") && log.contains("BADSIG"),
        "the refusal is not logged with the zone"
    );
    assert!(
        !log.contains("d3JvbmctYnV0"),
        "the TSIG secret reached the log"
    );
    assert_eq!(c.pebble.issued_count(), 0);
    println!("wrong TSIG secret: {e}");
}

/// The exec provider: a script with lego's contract writes into BIND with
/// `nsupdate -y`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_provider_with_nsupdate() {
    let Some(c) = chain("dns01-exec", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/dns01-exec-hook.sh");
    let challenge = json!({
        "type": "dns-01",
        "provider": "exec",
        "command": hook,
        // Where the zone's name servers are looked up.
        "nameserver": c.bind.addr.to_string(),
        "zone": ZONE,
        "propagation_timeout": "20s",
        "polling_interval": "200ms"
    });
    let config = c.write_config(port, http01, challenge);
    let hook_log = c.tmp.path().join("hook.log");
    let env = [
        ("DNS01_NSUPDATE_KEY", c.bind.nsupdate_key()),
        ("DNS01_SERVER", c.bind.addr.ip().to_string()),
        ("DNS01_PORT", c.bind.addr.port().to_string()),
        ("DNS01_HOOK_LOG", hook_log.display().to_string()),
    ];
    let _server = c.serve(&config, port, &env).await;
    let account = c.account(port).await;
    let name = "exec.example.test";
    let mut order = c.order(&account, &[name]).await;
    settle(&mut order)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.server_log(), c.pebble.log()));
    let calls = fs::read_to_string(&hook_log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "{calls}");
    assert!(
        lines[0].starts_with("present _acme-challenge.exec.example.test. "),
        "{calls}"
    );
    assert!(
        lines[1].starts_with("cleanup _acme-challenge.exec.example.test. "),
        "{calls}"
    );
    c.assert_records_gone(&[name]);
    assert_eq!(c.pebble.issued_count(), 1);
}

/// A record that never appears on the name servers (the exec script
/// succeeds without writing anything): the order ends `invalid` naming the
/// propagation timeout and what BIND answered; Pebble is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_never_propagates_times_out() {
    let Some(c) = chain("dns01-timeout", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let noop = kit::find_in_path("true").expect("true(1)");
    let challenge = json!({
        "type": "dns-01",
        "provider": "exec",
        "command": noop,
        "nameserver": c.bind.addr.to_string(),
        "zone": ZONE,
        "propagation_timeout": "2s",
        "polling_interval": "200ms"
    });
    let config = c.write_config(port, http01, challenge);
    let _server = c.serve(&config, port, &[]).await;
    let account = c.account(port).await;
    let t = Instant::now();
    let mut order = c.order(&account, &["never.example.test"]).await;
    let e = settle(&mut order).await.unwrap_err();
    assert!(e.contains("Invalid"), "{e}");
    assert!(
        e.contains(
            "timed out after 2s waiting for the TXT record _acme-challenge.never.example.test."
        ) && e.contains(&format!("{} answered []", c.bind.addr)),
        "the problem does not name the propagation timeout: {e}"
    );
    assert_eq!(c.pebble.issued_count(), 0);
    println!(
        "propagation timeout: order invalid after {:.2}s: {e}",
        t.elapsed().as_secs_f64()
    );
}

/// Every authoritative server is asked, not only the one updated: the zone
/// has a second NS (127.0.0.2, where nothing answers), so the record never
/// shows there and the order times out naming that server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authoritative_server_must_answer() {
    let ns2 = ["@ IN NS ns2.example.test.", "ns2 IN A 127.0.0.2"];
    let Some(c) = chain("dns01-ns2", &ns2).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let mut challenge = c.bind.rfc2136_json();
    challenge["propagation_timeout"] = json!("2s");
    let config = c.write_config(port, http01, challenge);
    let _server = c.serve(&config, port, &[]).await;
    let account = c.account(port).await;
    let name = "ns2.example.test";
    let mut order = c.order(&account, &[name]).await;
    let e = settle(&mut order).await.unwrap_err();
    assert!(
        e.contains("timed out after 2s") && e.contains("127.0.0.2:53"),
        "{e}"
    );
    assert!(
        !e.contains(&format!("{} answered", c.bind.addr)),
        "BIND itself had the record: {e}"
    );
    assert_eq!(c.pebble.issued_count(), 0);
    c.assert_records_gone(&[name]);
}

/// The RA's own HTTPS certificate, for a name in the zone, comes from the
/// validating CA through the same dns-01 solver (no `tls` files): the
/// server answers under that name with a chain to Pebble's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ras_own_certificate_through_dns01() {
    let Some(c) = chain("dns01-own", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let mut authority = c.pebble.authority_json();
    authority["config"]["upstream_challenge"] = c.bind.rfc2136_json();
    let mut ca = kit::CaJson::new(c.tmp.path().join("data"))
        .port(port)
        .db(Some("sled"))
        .authority(authority)
        .validation(http01, 1, c.dns.addr(), 10);
    ca.extra["root"] = json!(c.root);
    ca.extra["dnsNames"] = json!(["ra.example.test"]);
    let config = c.tmp.path().join("ca.json");
    ca.write(&config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    cmd.arg("serve").arg(&config);
    let mut server =
        ChildGuard::spawn("acmeproxy", &mut cmd, &c.tmp.path().join("server.log")).unwrap();
    let root = reqwest::Certificate::from_pem(&fs::read(&c.root).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("ra.example.test", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://ra.example.test:{port}/acme/acme/directory");
    let deadline = Instant::now() + WAIT;
    loop {
        server.check_running().unwrap();
        if let Ok(r) = http.get(&url).send().await {
            assert!(r.status().is_success(), "{}", r.status());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the RA never served its own certificate:\n{}",
            c.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.pebble.issued_count(), 1);
    c.assert_records_gone(&["ra.example.test"]);
}

/// Among several upstreams (`authority.upstreams`): public names route to
/// the validating CA, whose dns-01 solver runs as the second upstream (its
/// state under `upstream/public/`); other names go to softcas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_to_the_validating_upstream() {
    let Some(c) = chain("dns01-routed", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let mut public = c.pebble.authority_json()["config"].clone();
    public["upstream_challenge"] = c.bind.rfc2136_json();
    let authority = json!({
        "upstreams": [
            {"name": "internal", "type": "softcas"},
            {"name": "public", "type": "externalcas", "config": public}
        ],
        "routes": [
            {"name": "public names", "match": {"dns": ["*.example.test"]}, "upstreams": ["public"]},
            {"name": "the rest", "upstreams": ["internal"]}
        ],
        "provisioners": [{"type": "ACME", "name": "acme"}]
    });
    let mut ca = kit::CaJson::new(c.tmp.path().join("data"))
        .port(port)
        .db(Some("sled"))
        .authority(authority)
        .validation(http01, 1, c.dns.addr(), 10);
    ca.extra["tls"] = json!({"certFile": c.tls_cert, "keyFile": c.tls_key});
    let config = c.tmp.path().join("ca.json");
    ca.write(&config).unwrap();
    let _server = c.serve(&config, port, &[]).await;
    let account = c.account(port).await;

    let name = "www.routed.example.test";
    let mut order = c.order(&account, &[name]).await;
    let chain = settle(&mut order)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.server_log(), c.pebble.log()));
    assert_eq!(c.pebble.issued_count(), 1, "the public name went to Pebble");
    assert!(!chain.is_empty());
    c.assert_records_gone(&[name]);

    // An internal name never reaches Pebble nor BIND.
    let mut order = c.order(&account, &["host.internal.test"]).await;
    settle(&mut order)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.server_log()));
    assert_eq!(c.pebble.issued_count(), 1);
    assert_eq!(c.pebble.orders_created(), 1);
}

/// SIGKILL after the record is published and before the upstream is told
/// to validate: after a restart on the same data the order completes with
/// the same (one) upstream order, and the record is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_publishing_and_validating() {
    let Some(c) = chain("dns01-crash", &[]).await else {
        return;
    };
    let [port, http01] = free_ports().unwrap();
    let config = c.write_config(port, http01, c.bind.rfc2136_json());
    let marker = c.tmp.path().join("published");

    // The first server: this test binary as a child, frozen once the
    // records answer on BIND (the checkpoint says `published`).
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        &kit::test_name(module_path!(), "dns01_crash_child"),
    ])
    .args(["--ignored", "--nocapture"])
    .env(ENV_CONFIG, &config)
    .env(ENV_MARKER, &marker);
    let mut child =
        ChildGuard::spawn("the crash child", &mut cmd, &c.tmp.path().join("child.log")).unwrap();
    kit::wait_https(&directory_url(port), &c.tls_ca, 200, WAIT, || {
        child.check_running()
    })
    .await
    .unwrap();
    let account = c.account(port).await;
    let name = "crash.example.test";
    let mut order = c.order(&account, &[name]).await;
    let deadline = Instant::now() + WAIT;
    while !marker.exists() {
        child.check_running().unwrap();
        assert!(
            Instant::now() < deadline,
            "the child never published:\n{}",
            tail(&c.tmp.path().join("child.log"), 80)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&marker).unwrap()).unwrap();
    let value = saved["dns01"][0]["value"].as_str().unwrap().to_owned();
    assert_eq!(saved["published"], json!(true));
    assert_eq!(
        c.bind.txt("_acme-challenge.crash.example.test"),
        vec![value.clone()],
        "the record is in BIND in the crash window"
    );
    assert_eq!(c.pebble.orders_created(), 1);
    child.sigkill();

    // The real binary on the same data directory and port.
    let t = Instant::now();
    let _server = c.serve(&config, port, &[]).await;
    settle(&mut order)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.server_log(), c.pebble.log()));
    let after_restart = t.elapsed();
    assert_eq!(c.pebble.orders_created(), 1, "a second upstream order");
    assert_eq!(c.pebble.issued_count(), 1);
    let log = fs::read_to_string(c.tmp.path().join("server.log")).unwrap_or_default();
    assert!(log.contains("resuming the upstream order"), "{log}");
    c.assert_records_gone(&[name]);
    println!(
        "dns-01 crash between publishing and validating: order valid {:.2}s after the restart, \
         one upstream order",
        after_restart.as_secs_f64()
    );
}

/// The first server of the crash test, run by it as a child process.
#[test]
#[ignore = "child process of sigkill_between_publishing_and_validating"]
fn dns01_crash_child() {
    let (Some(config), Some(marker)) = (std::env::var_os(ENV_CONFIG), std::env::var_os(ENV_MARKER))
    else {
        eprintln!("dns01_crash_child runs only as a child of the crash test");
        return;
    };
    super::crash::serve_hooked(
        Path::new(&config),
        FreezeWhenPublished {
            marker: PathBuf::from(marker),
        },
    );
}

/// Freezes the upstream call at the checkpoint saved once the records
/// answer on every authoritative server.
struct FreezeWhenPublished {
    marker: PathBuf,
}

#[async_trait]
impl Hook for FreezeWhenPublished {
    async fn create_certificate(
        &self,
        inner: &dyn CertificateAuthorityService,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let freezing = Freezing {
            real: checkpoint,
            marker: &self.marker,
        };
        inner.create_certificate(req, &freezing).await
    }
}

struct Freezing<'a> {
    real: &'a dyn Checkpoint,
    marker: &'a Path,
}

#[async_trait]
impl Checkpoint for Freezing<'_> {
    async fn save(&self, state: &str) -> Result<(), UpstreamError> {
        self.real.save(state).await?;
        if state.contains("\"published\":true") {
            let tmp = self.marker.with_extension("tmp");
            fs::write(&tmp, state).unwrap();
            fs::rename(&tmp, self.marker).unwrap();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}
