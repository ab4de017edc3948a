//! The Vault PKI upstream (`authority.type: "vaultcas"`) against a real Vault
//! API server: OpenBao, from `tests/interop/install-openbao.sh`, run as
//! `bao server -dev` on loopback and set up by testkit/src/openbao.rs with
//! a root CA in `pki`, an intermediate in `pki_int` signed by it, PKI roles
//! per key type (Vault's defaults: `require_cn`, `use_csr_common_name`,
//! `use_csr_sans`) and an AppRole.
//!
//! In process (instant-acme): DNS and IP identifiers, the role by CSR key
//! type, a name the role refuses, `/roots.pem` = the `pki` root, revocation
//! reaching `pki_int/certs/revoked`, the certificate lifetime, the token
//! renewed and replaced at its max TTL, a revoked token replaced by a fresh
//! login, a wrapped secret ID, and start-up errors. Against the built
//! binary: certbot (trusting only the bytes of `/roots.pem`) and lego issue,
//! renew and revoke; every chain verifies with openssl to the `pki` root.
//!
//! Without the `bao` binary the tests skip with a message, or fail when
//! `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use instant_acme::{Error, Identifier, RevocationReason, RevocationRequest};
use kit::clients::{Challenge, Client, Ports, run_client, verify_cert};
use kit::openbao::{
    self, OpenBao, OpenBaoOptions, ROLE_ANY, ROLE_EC, ROLE_MAX_TTL, ROLE_NO_CN, ROLE_TTL,
};
use kit::{ChildGuard, Options, TestServer, issue_http01 as try_issue, tail};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ED25519};
use reqwest::Method;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::prelude::*;

/// The RA in process, in front of `bao` with `config` (and `extra` merged
/// into the authority block).
async fn ra_for(bao: &OpenBao, config: Value, extra: Value) -> TestServer {
    let mut authority = bao.authority_json(config);
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            authority[k] = v.clone();
        }
    }
    TestServer::start_with(Options {
        authority: Some(authority),
        ..Options::default()
    })
    .await
}

fn dns(name: &str) -> Identifier {
    Identifier::Dns(name.to_owned())
}

fn ip(addr: &str) -> Identifier {
    Identifier::Ip(addr.parse().unwrap())
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect()
}

/// Each certificate is signed by the next, the last by `root`, which is
/// not served itself.
fn assert_chains_to(chain: &str, root: &[u8]) {
    let mut certs = ders(chain);
    assert!(certs.len() >= 2, "leaf and issuing CA expected");
    assert!(
        !certs.contains(&root.to_vec()),
        "the root is not served in the chain"
    );
    certs.push(root.to_vec());
    for pair in certs.windows(2) {
        let (_, child) = X509Certificate::from_der(&pair[0]).unwrap();
        let (_, parent) = X509Certificate::from_der(&pair[1]).unwrap();
        assert_eq!(child.issuer(), parent.subject());
        child.verify_signature(Some(parent.public_key())).unwrap();
    }
}

/// The leaf's subject alternative names, `DNS:…` / `IP:…`.
fn leaf_sans(chain: &str) -> Vec<String> {
    let der = ders(chain).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => {
                let addr: std::net::IpAddr = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).unwrap().into(),
                    _ => <[u8; 16]>::try_from(*b).unwrap().into(),
                };
                format!("IP:{addr}")
            }
            other => format!("{other:?}"),
        })
        .collect()
}

/// The leaf's subject common name, if any.
fn leaf_cn(chain: &str) -> Option<String> {
    let der = ders(chain).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str().unwrap().to_owned())
}

/// The leaf's lifetime.
fn leaf_lifetime(chain: &str) -> Duration {
    let der = ders(chain).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let v = cert.validity();
    Duration::from_secs(
        u64::try_from((v.not_after.to_datetime() - v.not_before.to_datetime()).whole_seconds())
            .unwrap(),
    )
}

/// The leaf's serial as Vault writes it (`aa:bb:…`).
fn colon_serial(chain: &str) -> String {
    let der = ders(chain).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The paths of the signing requests OpenBao answered with a certificate,
/// from its audit log (`pki_int/sign/<role>`).
fn sign_paths(bao: &OpenBao) -> Vec<String> {
    bao.audit_responses()
        .into_iter()
        .filter(|(p, e)| p.starts_with("pki_int/sign/") && e.is_empty())
        .map(|(p, _)| p)
        .collect()
}

#[tokio::test]
async fn dns_orders_chain_to_the_openbao_root_and_revocation_reaches_it() {
    if openbao::skip("DNS orders via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions::default()).await;
    let ts = ra_for(&bao, bao.approle_config(), json!({})).await;
    // /roots.pem is the self-signed root of `pki`, not pki_int's intermediate.
    assert_eq!(
        ders(&ts.server.as_ref().unwrap().roots_pem),
        vec![bao.root_der.clone()]
    );
    let (account, _) = ts.account().await;

    let t0 = Instant::now();
    let ec = try_issue(
        &ts,
        &account,
        &[dns("ec.bao.test")],
        &PKCS_ECDSA_P256_SHA256,
    )
    .await
    .unwrap();
    let issue_time = t0.elapsed();
    assert_chains_to(&ec, &bao.root_der);
    assert_eq!(ders(&ec)[1], bao.intermediate_der);
    assert_eq!(leaf_sans(&ec), ["DNS:ec.bao.test"]);
    let ed = try_issue(&ts, &account, &[dns("ed.bao.test")], &PKCS_ED25519)
        .await
        .unwrap();
    assert_chains_to(&ed, &bao.root_der);
    // The role follows the CSR's key type (OpenBao refuses a key type
    // its role does not allow, so a wrong choice would fail the order).
    let paths = sign_paths(&bao);
    assert!(
        paths.iter().any(|p| p == "pki_int/sign/acme-ec")
            && paths.iter().any(|p| p == "pki_int/sign/acme-ed25519"),
        "{paths:?}"
    );

    // A name outside the role's allowed_domains.
    let e = try_issue(&ts, &account, &[dns("www.example.org")], &PKCS_ED25519)
        .await
        .unwrap_err();
    let Error::Api(problem) = e else {
        panic!("{e}")
    };
    assert_eq!(
        problem.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:rejectedIdentifier"),
        "{problem:?}"
    );
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains("www.example.org"), "{detail}");

    let serial = colon_serial(&ec);
    assert!(!bao.revoked_serials().await.contains(&serial));
    account
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(ders(&ec).remove(0)),
            reason: Some(RevocationReason::KeyCompromise),
        })
        .await
        .unwrap();
    assert!(
        bao.revoked_serials().await.contains(&serial),
        "{serial} in pki_int/certs/revoked"
    );

    let ra = ts.server.as_ref().unwrap().authority();
    ra.upstream_health().await.unwrap();
    bao.ok(Method::POST, "sys/seal", Value::Null).await;
    let e = ra.upstream_health().await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("sealed"), "{e}");
    assert_eq!(
        bao.audit_count("auth/approle/login"),
        (1, 0),
        "one login for the whole run"
    );
    println!(
        "vaultcas+OpenBao DNS: EC and Ed25519 orders issued (first in {:.2}s), revoked serial \
         {serial} listed in pki_int/certs/revoked; www.example.org refused: {detail}",
        issue_time.as_secs_f64()
    );
}

/// A `pki_int` that holds its intermediate but not the root (signed with
/// `format=pem`): `/roots.pem` stays empty rather than serving the
/// intermediate, which no client can use as a trust anchor; issuance works.
#[tokio::test]
async fn without_the_root_in_vault_roots_pem_serves_no_intermediate() {
    if openbao::skip("intermediate-only OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions {
        intermediate_only: true,
        ..OpenBaoOptions::default()
    })
    .await;
    let ts = ra_for(&bao, bao.approle_config(), json!({})).await;
    assert_eq!(ts.server.as_ref().unwrap().roots_pem, "");
    // The test's client trusts OpenBao's root, known out of band.
    std::fs::copy(&bao.root_file, &ts.root_file).unwrap();
    let (account, _) = ts.account().await;
    let chain = try_issue(&ts, &account, &[dns("noroot.bao.test")], &PKCS_ED25519)
        .await
        .unwrap();
    assert_chains_to(&chain, &bao.root_der);
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&bao.root_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let roots = http
        .get(ts.url("/roots.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !ders(&roots).contains(&bao.intermediate_der),
        "/roots.pem after an issuance: {roots}"
    );
}

/// IP identifiers against three roles: one that takes any name (the address
/// goes as common_name, after Vault asked for one), one with
/// `require_cn=false` (no common name), and one limited to DNS domains with
/// Vault's default `require_cn=true`, whose refusal names the role settings.
#[tokio::test]
async fn ip_orders_issue_with_a_default_role() {
    if openbao::skip("IP orders via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions::default()).await;

    let any = ra_for(&bao, bao.approle_config_one_role(ROLE_ANY), json!({})).await;
    let (account, _) = any.account().await;
    let only_ip = try_issue(&any, &account, &[ip("127.0.0.1")], &PKCS_ECDSA_P256_SHA256)
        .await
        .unwrap();
    assert_chains_to(&only_ip, &bao.root_der);
    assert_eq!(
        leaf_sans(&only_ip),
        ["IP:127.0.0.1"],
        "no DNS name 127.0.0.1"
    );
    assert_eq!(leaf_cn(&only_ip).as_deref(), Some("127.0.0.1"));
    let both = try_issue(
        &any,
        &account,
        &[dns("mixed.bao.test"), ip("127.0.0.1")],
        &PKCS_ED25519,
    )
    .await
    .unwrap();
    let mut sans = leaf_sans(&both);
    sans.sort();
    assert_eq!(sans, ["DNS:mixed.bao.test", "IP:127.0.0.1"]);
    assert_eq!(leaf_cn(&both).as_deref(), Some("mixed.bao.test"));

    let no_cn = ra_for(&bao, bao.approle_config_one_role(ROLE_NO_CN), json!({})).await;
    let (account, _) = no_cn.account().await;
    let before = bao.audit_count("pki_int/sign/acme-nocn");
    let chain = try_issue(
        &no_cn,
        &account,
        &[ip("127.0.0.1")],
        &PKCS_ECDSA_P256_SHA256,
    )
    .await
    .unwrap();
    assert_eq!(leaf_sans(&chain), ["IP:127.0.0.1"]);
    assert_eq!(leaf_cn(&chain), None);
    let after = bao.audit_count("pki_int/sign/acme-nocn");
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "one signing request, without a common name"
    );

    let dns_only = ra_for(&bao, bao.approle_config_one_role(ROLE_EC), json!({})).await;
    let (account, _) = dns_only.account().await;
    let e = try_issue(
        &dns_only,
        &account,
        &[ip("127.0.0.1")],
        &PKCS_ECDSA_P256_SHA256,
    )
    .await
    .unwrap_err();
    let Error::Api(problem) = e else {
        panic!("{e}")
    };
    let detail = problem.detail.unwrap_or_default();
    assert_eq!(
        problem.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:rejectedIdentifier"),
        "{detail}"
    );
    assert!(
        detail.contains("require_cn=false") && detail.contains("allow_any_name"),
        "{detail}"
    );
    println!(
        "vaultcas+OpenBao IP: any-name role and require_cn=false role issue; DNS-only role: {detail}"
    );
}

/// The leaf lifetime with `claims` (or none) in the authority block.
async fn lifetime_with(claims: Option<Value>) -> Duration {
    let bao = OpenBao::start(OpenBaoOptions::default()).await;
    let extra = claims.map_or_else(|| json!({}), |c| json!({ "claims": c }));
    let ts = ra_for(&bao, bao.approle_config(), extra).await;
    let (account, _) = ts.account().await;
    let chain = try_issue(
        &ts,
        &account,
        &[dns("life.bao.test")],
        &PKCS_ECDSA_P256_SHA256,
    )
    .await
    .unwrap();
    leaf_lifetime(&chain)
}

/// Vault backdates notBefore by 30 s; allow for that and a slow run.
fn assert_about(lifetime: Duration, want: Duration) {
    let diff = lifetime.abs_diff(want);
    assert!(
        diff <= Duration::from_secs(120),
        "lifetime {lifetime:?}, want about {want:?}"
    );
}

#[tokio::test]
async fn a_configured_lifetime_is_sent_as_the_ttl() {
    if openbao::skip("configured lifetime via OpenBao") {
        return;
    }
    let lifetime = lifetime_with(Some(json!({"defaultTLSCertDuration": "24h"}))).await;
    assert_about(lifetime, Duration::from_secs(24 * 3600));
}

/// ca.json sets no lifetime: the RA must send no `ttl`, so that the role's
/// default (72 h here; its max_ttl is 720 h) applies.
#[tokio::test]
async fn without_a_configured_lifetime_the_roles_ttl_applies() {
    if openbao::skip("role default lifetime via OpenBao") {
        return;
    }
    let lifetime = lifetime_with(None).await;
    assert!(
        lifetime < ROLE_MAX_TTL - Duration::from_secs(3600),
        "{lifetime:?}"
    );
    assert_about(lifetime, ROLE_TTL);
}

/// Issues one certificate about every second for `seconds`; each must succeed.
async fn issue_every_second(ts: &TestServer, seconds: u64) -> usize {
    let (account, _) = ts.account().await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let tick = Instant::now();
        try_issue(
            ts,
            &account,
            &[dns(&format!("t{n}.bao.test"))],
            &PKCS_ECDSA_P256_SHA256,
        )
        .await
        .unwrap_or_else(|e| panic!("issuance {n} at {:?}: {e}", started.elapsed()));
        n += 1;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    n
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_then_replaced_at_its_max_ttl() {
    if openbao::skip("token renewal via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions {
        token_ttl: Some(Duration::from_secs(3)),
        token_max_ttl: Some(Duration::from_secs(8)),
        ..OpenBaoOptions::default()
    })
    .await;
    let ts = ra_for(&bao, bao.approle_config(), json!({})).await;
    let n = issue_every_second(&ts, 14).await;
    let logins = bao.audit_count("auth/approle/login");
    let renewals = bao.audit_count("auth/token/renew-self");
    let denied: usize = bao
        .audit_responses()
        .iter()
        .filter(|(p, e)| p.starts_with("pki_int/sign/") && !e.is_empty())
        .count();
    println!(
        "vaultcas+OpenBao token ttl 3s, max 8s: {n} issuances in 14s; logins {logins:?}, \
         renew-self {renewals:?} (ok, failed), signing requests refused {denied}"
    );
    assert!(n >= 5, "{n}");
    assert_eq!(logins.1, 0, "no failed login");
    assert!(renewals.0 >= 1, "the token was renewed: {renewals:?}");
    assert!(
        logins.0 >= 2,
        "a fresh login once the max TTL came near: {logins:?}"
    );
}

#[tokio::test]
async fn a_revoked_token_is_replaced_by_a_fresh_login() {
    if openbao::skip("revoked token via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions::default()).await;
    let ts = ra_for(&bao, bao.approle_config(), json!({})).await;
    let (account, _) = ts.account().await;
    try_issue(&ts, &account, &[dns("before.bao.test")], &PKCS_ED25519)
        .await
        .unwrap();
    let old = bao.approle_token_accessors().await;
    assert_eq!(old.len(), 1, "the RA's one token: {old:?}");
    assert_eq!(bao.revoke_approle_tokens().await, 1);
    try_issue(&ts, &account, &[dns("after.bao.test")], &PKCS_ED25519)
        .await
        .unwrap();
    let now = bao.approle_token_accessors().await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, old, "a new token");
    assert_eq!(bao.audit_count("auth/approle/login"), (2, 0));
    let refused: Vec<(String, String)> = bao
        .audit_responses()
        .into_iter()
        .filter(|(p, e)| p.starts_with("pki_int/sign/") && !e.is_empty())
        .collect();
    assert_eq!(refused.len(), 1, "one refused signing request: {refused:?}");
    assert!(refused[0].1.contains("permission denied"), "{refused:?}");
}

#[tokio::test]
async fn a_wrapped_secret_id_is_unwrapped_once_and_serves_every_login() {
    if openbao::skip("wrapped secret ID via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions {
        token_ttl: Some(Duration::from_secs(2)),
        token_max_ttl: Some(Duration::from_secs(2)),
        ..OpenBaoOptions::default()
    })
    .await;
    let file = bao.path().join("wrapped-secret-id");
    std::fs::write(&file, format!("{}\n", bao.wrapped_secret_id().await)).unwrap();
    let mut config = bao.approle_config();
    config["authOptions"] =
        json!({"roleID": bao.role_id, "secretIDFile": file, "isWrappingToken": true});
    let ts = ra_for(&bao, config, json!({})).await;
    let n = issue_every_second(&ts, 5).await;
    assert!(n >= 3, "{n}");
    assert_eq!(bao.audit_count("sys/wrapping/unwrap"), (1, 0));
    let logins = bao.audit_count("auth/approle/login");
    assert_eq!(logins.1, 0, "{logins:?}");
    assert!(
        logins.0 >= 2,
        "logins after the first reuse the unwrapped ID: {logins:?}"
    );
}

/// Starts acmeproxy in process with `authority` and returns the start-up error.
async fn start_error(authority: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let doc = kit::CaJson::new(dir.path().join("data"))
        .authority(authority)
        .to_json();
    let (config, _) = acmeproxy::config::Config::parse(&doc.to_string()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    match acmeproxy::app::start(config, listener, shutdown.clone()).await {
        Ok(_) => {
            shutdown.cancel();
            panic!("acmeproxy started")
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_wrong_secret_id_or_fingerprint_is_a_start_up_error_naming_the_cause() {
    if openbao::skip("start-up errors via OpenBao") {
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions::default()).await;
    let mut config = bao.approle_config();
    config["authOptions"]["secretID"] = "not-the-secret".into();
    let wrong_secret = start_error(bao.authority_json(config)).await;
    let e = &wrong_secret;
    assert!(e.contains("AppRole login at auth/approle/login"), "{e}");
    assert!(e.contains("invalid"), "OpenBao's reason: {e}");
    assert!(!e.contains("not-the-secret"), "the secret stays out: {e}");
    assert_eq!(bao.audit_count("auth/approle/login").0, 0);

    let mut authority = bao.authority_json(bao.approle_config());
    authority["certificateAuthorityFingerprint"] = "ab".repeat(32).into();
    let e = start_error(authority).await;
    assert!(e.contains("certificateAuthorityFingerprint"), "{e}");
    assert!(
        e.contains(&bao.tls_ca_fingerprint),
        "lists what OpenBao presents: {e}"
    );
    assert_eq!(bao.audit_count("auth/approle/login"), (0, 1));
    println!("vaultcas+OpenBao start-up errors: wrong secret ID: {wrong_secret}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_trusting_only_roots_pem_via_openbao() {
    client_scenario(Client::Certbot, "certbot.bao.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_via_openbao() {
    client_scenario(Client::Lego, "lego.bao.test").await;
}

/// The built binary in front of a fresh OpenBao: `client` registers,
/// issues, renews (forced) and revokes for `name`, trusting only the bytes
/// the RA serves at `/roots.pem`.
async fn client_scenario(client: Client, name: &str) {
    let what = format!("{client} via vaultcas and OpenBao");
    if openbao::skip(&what) {
        return;
    }
    if let Some(why) = client.missing_prerequisite() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what}: {why} (CI is set, so this is a failure)"
        );
        eprintln!("SKIPPED {what}: {why}");
        return;
    }
    let bao = OpenBao::start(OpenBaoOptions::default()).await;
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-openbao-client-")
        .tempdir()
        .unwrap();
    let result = run_scenario(&bao, client, name, tmp.path()).await;
    if let Err(failure) = result {
        let path = tmp.keep();
        eprintln!("{}", tail(&path.join("server.log"), 120));
        eprintln!("{}", bao.log_tail(40));
        panic!(
            "{what} failed: {failure}\n(state kept in {})",
            path.display()
        );
    }
}

async fn run_scenario(bao: &OpenBao, client: Client, name: &str, tmp: &Path) -> Result<(), String> {
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp)?;
    // No lifetime in ca.json.
    let cfg = kit::CaJson::new(tmp.join("data"))
        .port(acme)
        .db(None)
        .authority(bao.authority_json(bao.approle_config()))
        .validation(ports.http01, ports.tls_alpn01, ports.dns, 10)
        .to_json();
    let config_path = tmp.join("ca.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&cfg).unwrap())
        .map_err(|e| e.to_string())?;
    let server_log = tmp.join("server.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    cmd.arg("serve").arg(&config_path);
    let started = Instant::now();
    let mut server = ChildGuard::spawn("acmeproxy", &mut cmd, &server_log)?;

    // The RA's HTTPS certificate comes from OpenBao too: OpenBao's root is
    // all that is trusted to reach it.
    let root = reqwest::Certificate::from_pem(&std::fs::read(&bao.root_file).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{acme}");
    let directory = format!("{base}/acme/acme/directory");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_running()?;
        let last = match http.get(&directory).send().await {
            Ok(r) if r.status() == 200 => break,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => format!("{e:?}"),
        };
        if Instant::now() > deadline {
            return Err(format!("{directory} not ready: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = started.elapsed();

    // /roots.pem: exactly OpenBao's self-signed `pki` root.
    let roots = http
        .get(format!("{base}/roots.pem"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    if ders(&roots) != vec![bao.root_der.clone()] {
        return Err(format!("/roots.pem is not OpenBao's pki root:\n{roots}"));
    }
    let roots_file = tmp.join("roots.pem");
    std::fs::write(&roots_file, &roots).map_err(|e| e.to_string())?;

    let clients_dir = tmp.join("clients");
    let (directory2, roots2, name2, ports2) = (
        directory.clone(),
        roots_file.clone(),
        name.to_owned(),
        ports.clone(),
    );
    let outcome = tokio::task::spawn_blocking(move || {
        run_client(
            client,
            &directory2,
            &roots2,
            &name2,
            Challenge::Http01,
            &ports2,
            &clients_dir,
        )
    })
    .await
    .map_err(|e| e.to_string())??;
    let first = verify_cert(&outcome.issued, name, &bao.root_file)
        .map_err(|e| format!("issued certificate: {e}"))?;
    let second = verify_cert(&outcome.renewed, name, &bao.root_file)
        .map_err(|e| format!("renewed certificate: {e}"))?;
    if first.serial == second.serial {
        return Err(format!(
            "renewal returned the same certificate ({})",
            first.serial
        ));
    }
    let renewed = std::fs::read_to_string(&outcome.renewed.fullchain).map_err(|e| e.to_string())?;
    let issued = std::fs::read_to_string(&outcome.issued.fullchain).map_err(|e| e.to_string())?;
    let revoked = bao.revoked_serials().await;
    if !revoked.contains(&colon_serial(&renewed)) || revoked.contains(&colon_serial(&issued)) {
        return Err(format!(
            "pki_int/certs/revoked holds {revoked:?}; want the renewed {} and not the first {}",
            colon_serial(&renewed),
            colon_serial(&issued)
        ));
    }
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    if log.contains(&bao.secret_id) {
        return Err("the server log contains the AppRole secret ID".into());
    }
    println!(
        "vaultcas+OpenBao {client} {name}: server ready in {:.2}s; issued serial {} (chain of {}), \
         renewed serial {} revoked in pki_int; lifetime {:?}; wall time issue {:.2}s, renew {:.2}s, \
         revoke {:.2}s",
        ready.as_secs_f64(),
        first.serial,
        first.chain_len,
        second.serial,
        leaf_lifetime(&issued),
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64(),
    );
    Ok(())
}
