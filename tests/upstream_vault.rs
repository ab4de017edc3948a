//! The Vault PKI upstream (`authority.type: "vaultcas"`) against a stand-in
//! that follows Vault's documented HTTP API (tests/common/vault_standin.rs),
//! not a real Vault: the PKI role per CSR key type, revocation by serial,
//! the token kept alive across short TTLs and its max TTL, a fresh login
//! after a refused token, wrapped and Kubernetes logins, and start-up errors
//! that name their cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::vault_standin::{StandinOptions, VaultStandin};
use common::{Options, TestServer};
use instant_acme::{
    Account, ChallengeType, Error, Identifier, NewOrder, OrderStatus, RetryPolicy,
    RevocationReason, RevocationRequest,
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SignatureAlgorithm};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::prelude::*;

fn approle(standin_opts: &StandinOptions) -> Value {
    json!({
        "PKIMountPath": "pki",
        "pkiRoleEC": "ec",
        "pkiRoleEd25519": "ed25519",
        "pkiRoleRSA": "rsa",
        "AuthType": "approle",
        "AuthOptions": {"RoleID": standin_opts.role_id, "SecretID": standin_opts.secret_id}
    })
}

async fn ra_for(standin: &VaultStandin, config: Value) -> TestServer {
    TestServer::start_with(Options {
        authority: Some(standin.authority_json(config)),
        ..Options::default()
    })
    .await
}

/// One order for `name` with http-01 and a CSR for `alg`; the chain PEM or
/// the ACME error.
async fn try_issue(
    ts: &TestServer,
    account: &Account,
    name: &str,
    alg: &'static SignatureAlgorithm,
) -> Result<String, Error> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        let mut ch = a.challenge(ChallengeType::Http01).unwrap();
        ts.responders
            .set_http01(&ch.token, ch.key_authorization().as_str());
        ch.set_ready().await?;
    }
    assert_eq!(
        order.poll_ready(&RetryPolicy::default()).await?,
        OrderStatus::Ready
    );
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    order.finalize_csr(csr.der()).await?;
    order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(30)))
        .await
}

async fn issue(
    ts: &TestServer,
    account: &Account,
    name: &str,
    alg: &'static SignatureAlgorithm,
) -> String {
    try_issue(ts, account, name, alg).await.unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect()
}

/// Each certificate is signed by the next, the last by `root`.
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

/// The leaf's serial as Vault writes it (`aa:bb:…`), computed here.
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

fn roles_for(standin: &VaultStandin, name: &str) -> Vec<String> {
    standin
        .signed()
        .into_iter()
        .filter(|s| s.common_name.as_deref() == Some(name))
        .map(|s| s.role)
        .collect()
}

#[tokio::test]
async fn ec_and_ed25519_keys_use_their_roles_and_revocation_reaches_vault() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let ts = ra_for(&standin, approle(&opts)).await;
    // /roots.pem is Vault's PKI root, read from pki/cert/ca_chain.
    assert_eq!(
        ders(&ts.server.as_ref().unwrap().roots_pem),
        vec![standin.pki_root_der()]
    );
    let (account, _) = ts.account().await;

    let ec = issue(&ts, &account, "ec.vault.test", &PKCS_ECDSA_P256_SHA256).await;
    assert_chains_to(&ec, &standin.pki_root_der());
    assert_eq!(roles_for(&standin, "ec.vault.test"), ["ec"]);
    let ed = issue(&ts, &account, "ed.vault.test", &PKCS_ED25519).await;
    assert_chains_to(&ed, &standin.pki_root_der());
    assert_eq!(roles_for(&standin, "ed.vault.test"), ["ed25519"]);

    let signed = standin.signed();
    let ec_sign = signed
        .iter()
        .find(|s| s.common_name.as_deref() == Some("ec.vault.test"))
        .unwrap();
    assert_eq!(ec_sign.alt_names, ["ec.vault.test"]);
    assert!(ec_sign.ip_sans.is_empty());
    let ttl: u64 = ec_sign
        .ttl
        .as_deref()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(ttl > 3600, "ttl {ttl}s comes from the order's notAfter");
    // The RA's own HTTPS certificate came from Vault too, with its IP.
    assert!(
        signed.iter().any(|s| s.ip_sans == ["127.0.0.1"]),
        "{signed:?}"
    );

    let serial = colon_serial(&ec);
    assert_eq!(ec_sign.serial, serial);
    account
        .revoke(&RevocationRequest {
            certificate: &CertificateDer::from(ders(&ec).remove(0)),
            reason: Some(RevocationReason::KeyCompromise),
        })
        .await
        .unwrap();
    assert_eq!(standin.revoked(), [serial]);

    let upstream = ts.server.as_ref().unwrap().authority().upstream();
    upstream.health().await.unwrap();
    standin.set_sealed(true);
    let e = upstream.health().await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("sealed"), "{e}");
    let c = standin.counters();
    assert_eq!((c.total_logins(), c.denied), (1, 0), "{c:?}");
}

#[tokio::test]
async fn names_vault_refuses_fail_the_order_with_rejected_identifier() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let ts = ra_for(&standin, approle(&opts)).await;
    let (account, _) = ts.account().await;
    let e = try_issue(&ts, &account, "x.forbidden.test", &PKCS_ECDSA_P256_SHA256)
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
    assert!(problem.detail.unwrap().contains("not allowed by this role"));
}

/// Issues once a second for `seconds`; every issuance must succeed.
async fn issue_every_second(ts: &TestServer, seconds: u64) -> usize {
    let (account, _) = ts.account().await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let tick = Instant::now();
        issue(
            ts,
            &account,
            &format!("t{n}.vault.test"),
            &PKCS_ECDSA_P256_SHA256,
        )
        .await;
        n += 1;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    n
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_and_replaced_at_its_max_ttl() {
    // Vault's documented behaviour: renewals are capped at the max TTL.
    let opts = StandinOptions {
        token_ttl: Duration::from_secs(2),
        token_max_ttl: Duration::from_secs(5),
        ..StandinOptions::default()
    };
    let standin = VaultStandin::start(opts.clone()).await;
    let ts = ra_for(&standin, approle(&opts)).await;
    let n = issue_every_second(&ts, 8).await;
    let c = standin.counters();
    eprintln!("{n} issuances in 8 s: {c:?}");
    assert!(n >= 6, "{n}");
    assert!(c.renewals >= 3, "{c:?}");
    assert!(
        c.total_logins() >= 2,
        "a fresh login near the max TTL: {c:?}"
    );
    assert_eq!(
        c.denied, 0,
        "no signing request met an expired token: {c:?}"
    );
    assert!(c.lookups >= c.total_logins(), "{c:?}");
}

#[tokio::test]
async fn a_refused_renewal_leads_to_a_fresh_login() {
    let opts = StandinOptions {
        token_ttl: Duration::from_secs(2),
        token_max_ttl: Duration::from_secs(4),
        cap_at_max_ttl: false,
        ..StandinOptions::default()
    };
    let standin = VaultStandin::start(opts.clone()).await;
    let ts = ra_for(&standin, approle(&opts)).await;
    let n = issue_every_second(&ts, 8).await;
    let c = standin.counters();
    eprintln!("{n} issuances in 8 s: {c:?}");
    assert!(c.refused_renewals >= 1, "{c:?}");
    assert!(c.renewals >= 1, "{c:?}");
    assert!(c.total_logins() >= 3, "{c:?}");
    assert_eq!(c.denied, 0, "{c:?}");
}

#[tokio::test]
async fn a_revoked_token_is_replaced_at_the_next_signing() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let ts = ra_for(&standin, approle(&opts)).await;
    let (account, _) = ts.account().await;
    standin.revoke_all_tokens();
    issue(&ts, &account, "after-revoke.vault.test", &PKCS_ED25519).await;
    let c = standin.counters();
    assert_eq!((c.denied, c.total_logins()), (1, 2), "{c:?}");
}

#[tokio::test]
async fn a_wrapped_secret_id_is_unwrapped_once_and_serves_every_login() {
    let opts = StandinOptions {
        token_ttl: Duration::from_secs(2),
        token_max_ttl: Duration::from_secs(2),
        renewable: false,
        ..StandinOptions::default()
    };
    let standin = VaultStandin::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrapped-secret-id");
    std::fs::write(&file, format!("{}\n", standin.wrap_secret_id())).unwrap();
    let config = json!({
        "authType": "approle",
        "authMountPath": "approle",
        "authOptions": {"roleID": opts.role_id, "secretIDFile": file, "isWrappingToken": true}
    });
    let ts = ra_for(&standin, config).await;
    let n = issue_every_second(&ts, 4).await;
    let c = standin.counters();
    assert_eq!(c.unwraps, 1, "{c:?}");
    assert!(
        c.total_logins() >= 2,
        "logins after the first reuse the unwrapped ID: {c:?}"
    );
    assert_eq!((c.failed_logins, c.denied), (0, 0), "{c:?}");
    assert!(n >= 3);
}

#[tokio::test]
async fn kubernetes_login_sends_the_service_account_token() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, &opts.kubernetes_jwt).unwrap();
    let config = json!({
        "pkiRoleDefault": "default",
        "authType": "kubernetes",
        "authOptions": {"role": opts.kubernetes_role, "tokenPath": jwt}
    });
    let ts = ra_for(&standin, config).await;
    let (account, _) = ts.account().await;
    issue(&ts, &account, "k8s.vault.test", &PKCS_ED25519).await;
    assert_eq!(roles_for(&standin, "k8s.vault.test"), ["default"]);
    assert_eq!(standin.counters().logins.get("kubernetes"), Some(&1));
}

/// Starts acmeproxy with `authority` and returns the start-up error.
async fn start_error(authority: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({
        "address": "127.0.0.1:0",
        "dnsNames": ["localhost"],
        "dataDir": dir.path().join("data"),
        "db": {"type": "memory"},
        "metrics": {"enabled": false},
        "authority": authority,
    });
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
async fn a_wrong_secret_id_is_a_start_up_error_naming_the_cause() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let wrong = StandinOptions {
        secret_id: "not-the-secret".into(),
        ..opts.clone()
    };
    let e = start_error(standin.authority_json(approle(&wrong))).await;
    eprintln!("{e}");
    assert!(e.contains("invalid role or secret ID"), "{e}");
    assert!(e.contains("AppRole login at auth/approle/login"), "{e}");
    assert!(
        !e.contains("not-the-secret"),
        "the secret stays out of errors: {e}"
    );
    assert_eq!(standin.counters().failed_logins, 1);
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_before_any_login() {
    let opts = StandinOptions::default();
    let standin = VaultStandin::start(opts.clone()).await;
    let mut authority = standin.authority_json(approle(&opts));
    authority["certificateAuthorityFingerprint"] = "ab".repeat(32).into();
    let e = start_error(authority).await;
    assert!(e.contains("certificateAuthorityFingerprint"), "{e}");
    assert!(
        e.contains(&standin.tls_fingerprint()),
        "lists what Vault presents: {e}"
    );
    assert_eq!(
        standin.counters().total_logins() + standin.counters().failed_logins,
        0
    );
}
