//! The external ACME upstream (`authority.type: "externalcas"`) against a
//! real Pebble that requires External Account Binding: issuance through the
//! RA, chains to Pebble's root, revocation forwarded, badNonce retries,
//! an upstream outage during finalize, and one upstream account reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::time::{Duration, Instant};

use instant_acme::{
    Account, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy, RevocationReason,
    RevocationRequest,
};
use kit::pebble::{Pebble, PebbleOptions};
use kit::{Options, TestServer};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

pub(crate) fn pebble_or_skip() -> bool {
    !kit::skip_when_missing(
        "this Pebble test",
        (!Pebble::available()).then(|| {
            "pebble is not installed (tests/interop/install-clients.sh installs it)".into()
        }),
    )
}

async fn ra_for(pebble: &Pebble) -> TestServer {
    TestServer::start_with(Options {
        db: "sled",
        root: Some(pebble.root_file().await),
        authority: Some(pebble.authority_json()),
        ..Options::default()
    })
    .await
}

/// One order through the RA with http-01; returns the chain PEM.
pub(crate) async fn issue(ts: &TestServer, account: &Account, name: &str) -> String {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.unwrap();
        let mut ch = a.challenge(ChallengeType::Http01).unwrap();
        ts.responders
            .set_http01(&ch.token, ch.key_authorization().as_str());
        ch.set_ready().await.unwrap();
    }
    let status = order.poll_ready(&RetryPolicy::default()).await.unwrap();
    assert_eq!(status, OrderStatus::Ready);
    order.finalize().await.unwrap();
    order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(120)))
        .await
        .unwrap()
}

pub(crate) fn ders(pem: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect()
}

/// Every link of `chain` is signed by the next, and the last by `root`.
pub(crate) fn assert_chains_to(chain: &str, root_pem: &str) {
    let mut certs = ders(chain);
    certs.push(ders(root_pem).remove(0));
    for pair in certs.windows(2) {
        let (_, child) = X509Certificate::from_der(&pair[0]).unwrap();
        let (_, parent) = X509Certificate::from_der(&pair[1]).unwrap();
        if child.subject() == parent.subject() && pair[0] == pair[1] {
            continue;
        }
        assert_eq!(child.issuer(), parent.subject());
        child.verify_signature(Some(parent.public_key())).unwrap();
    }
}

/// Revokes the leaf of `chain` through the RA (reason superseded).
pub(crate) async fn revoke(account: &Account, chain: &str) {
    let cert = CertificateDer::from(ders(chain).remove(0));
    account
        .revoke(&RevocationRequest {
            certificate: &cert,
            reason: Some(RevocationReason::Superseded),
        })
        .await
        .unwrap();
}

pub(crate) fn serial_hex(chain: &str) -> String {
    let der = ders(chain).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn issues_through_pebble_with_eab_and_forwards_revocation() {
    if !pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let ts = ra_for(&pebble).await;
    let (account, _) = ts.account().await;
    let chain = issue(&ts, &account, "upstream.test").await;
    let root = pebble.root_pem().await;
    assert_chains_to(&chain, &root);
    // /roots.pem serves the configured root, not Pebble's intermediate.
    assert_eq!(ders(&ts.server.as_ref().unwrap().roots_pem), ders(&root));
    // The RA's own HTTPS certificate came from Pebble too (one issuance at start).
    let serial = serial_hex(&chain);
    assert_eq!(pebble.cert_status(&serial).await, "Valid");

    revoke(&account, &chain).await;
    assert_eq!(pebble.cert_status(&serial).await, "Revoked");
}

#[tokio::test]
async fn fifty_issuances_with_five_percent_bad_nonces() {
    if !pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject: 5,
        ..PebbleOptions::default()
    })
    .await;
    let ts = std::sync::Arc::new(ra_for(&pebble).await);
    let (account, _) = ts.account().await;
    let started = Instant::now();
    // Five clients at a time, ten rounds: 50 issuances in a row, each through
    // an upstream that refuses 5% of good nonces.
    for round in 0..10 {
        let mut set = tokio::task::JoinSet::new();
        for j in 0..5 {
            let (ts, account) = (std::sync::Arc::clone(&ts), account.clone());
            set.spawn(
                async move { issue(&ts, &account, &format!("n{round}-{j}.nonce.test")).await },
            );
        }
        while let Some(chain) = set.join_next().await {
            assert!(chain.unwrap().contains("BEGIN CERTIFICATE"));
        }
    }
    eprintln!(
        "50 issuances through Pebble (5% bad nonces) in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn orders_complete_after_an_upstream_outage_during_finalize() {
    if !pebble_or_skip() {
        return;
    }
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let ts = ra_for(&pebble).await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("outage.test".to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    ts.answer_http01(&mut order).await.unwrap();
    // The upstream goes away before the RA can finalize.
    pebble.stop();
    order.finalize().await.unwrap();
    let state = order.refresh().await.unwrap();
    assert_eq!(state.status, OrderStatus::Processing);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Pebble comes back empty (it forgets its accounts): the RA registers again.
    pebble.restart().await;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_chains_to(&chain, &pebble.root_pem().await);
}

#[tokio::test]
async fn an_upstream_refusal_makes_the_order_invalid_with_its_reason() {
    if !pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions {
        blocklist: &["blocked.test"],
        ..PebbleOptions::default()
    })
    .await;
    let ts = ra_for(&pebble).await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("www.blocked.test".to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    ts.answer_http01(&mut order).await.unwrap();
    order.finalize().await.unwrap();
    let err = order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
        .await
        .expect_err("the upstream refuses the name");
    let instant_acme::Error::Api(p) = err else {
        panic!("expected the order's problem, got {err}");
    };
    assert_eq!(
        p.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:rejectedIdentifier")
    );
    let detail = p.detail.unwrap_or_default();
    assert!(
        detail.contains("upstream CA refused") && detail.contains("blocked.test"),
        "{detail}"
    );
    assert_eq!(order.state().status, OrderStatus::Invalid);
}

/// Without ca.json's `root`, an RA in front of Pebble (which sends no root
/// and whose root is in no trust store) knows no root: /roots.pem answers a
/// 404 problem that says how to configure one, and never the intermediate.
#[tokio::test]
async fn roots_pem_without_a_known_root_is_a_404_problem() {
    if !pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let ts = TestServer::start_with(Options {
        authority: Some(pebble.authority_json()),
        ..Options::default()
    })
    .await;
    assert_eq!(ts.server.as_ref().unwrap().roots_pem, "");
    let root = reqwest::Certificate::from_pem(pebble.root_pem().await.as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let rsp = http.get(ts.url("/roots.pem")).send().await.unwrap();
    assert_eq!(rsp.status(), 404);
    assert_eq!(rsp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = rsp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("\"root\""), "{detail}");
}
