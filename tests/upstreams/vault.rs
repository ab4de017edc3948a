//! The Vault PKI upstream (`authority.type: "vaultcas"`) against a stand-in
//! that follows Vault's documented HTTP API (testkit/src/vault_standin.rs),
//! only for what a real Vault (tests/upstreams/openbao.rs runs OpenBao)
//! cannot produce here: a server that refuses a renewal before the max TTL
//! instead of capping it, and a Kubernetes login (OpenBao would need a
//! Kubernetes API server to review the service account token).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::time::{Duration, Instant};

use instant_acme::{Account, Error, Identifier};
use kit::vault_standin::{StandinOptions, VaultStandin};
use kit::{Options, TestServer};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SignatureAlgorithm};
use serde_json::{Value, json};

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
    kit::issue_http01(ts, account, &[Identifier::Dns(name.to_owned())], alg).await
}

async fn issue(
    ts: &TestServer,
    account: &Account,
    name: &str,
    alg: &'static SignatureAlgorithm,
) -> String {
    try_issue(ts, account, name, alg).await.unwrap()
}

fn roles_for(standin: &VaultStandin, name: &str) -> Vec<String> {
    standin
        .signed()
        .into_iter()
        .filter(|s| s.common_name.as_deref() == Some(name))
        .map(|s| s.role)
        .collect()
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
