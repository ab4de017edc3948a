//! Certificate profiles (draft-ietf-acme-profiles) through ACME:
//! `meta.profiles` in the directory, the `profile` of newOrder checked
//! (unknown → `invalidProfile`), shown in the order, and applied at issuance
//! (the profile's lifetime, `default` for orders that name none).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use instant_acme::{Account, Identifier, NewOrder, OrderStatus, RetryPolicy};
use kit::crash_support::verify_chain;
use kit::{Options, TestServer};
use serde_json::{Value, json};
use x509_parser::prelude::*;

/// A softcas server with the issue's profiles: `default` (30 days) and
/// `shortlived` (7 days).
async fn server_with_profiles() -> TestServer {
    TestServer::start_with(Options {
        authority: Some(json!({
            "type": "softcas",
            "profiles": {
                "default": {"defaultTLSCertDuration": "720h", "upstreamProfile": null},
                "shortlived": {
                    "description": "7-day certificates",
                    "defaultTLSCertDuration": "168h",
                    "upstreamProfile": "shortlived"
                }
            },
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })),
        ..Options::default()
    })
    .await
}

/// An order for `name` under `profile` (none: `None`) answered over
/// http-01 and finalized; the order's `profile` as the server showed it
/// (at newOrder, and once valid) and the leaf's lifetime.
async fn issue(
    ts: &TestServer,
    account: &Account,
    name: &str,
    profile: Option<&str>,
) -> (Option<String>, Option<String>, ::time::Duration) {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut new_order = NewOrder::new(&ids);
    if let Some(p) = profile {
        new_order = new_order.profile(p);
    }
    let mut order = account.new_order(&new_order).await.unwrap();
    let at_creation = order.state().profile.clone();
    assert_eq!(
        ts.answer_http01(&mut order).await.unwrap(),
        OrderStatus::Ready
    );
    order.finalize().await.unwrap();
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(std::time::Duration::from_secs(30)))
        .await
        .unwrap();
    verify_chain(&chain, ts.server.as_ref().unwrap().roots_pem.as_bytes());
    let at_end = order.refresh().await.unwrap().profile.clone();
    assert_eq!(at_creation, at_end, "the order keeps its profile");
    let leaf = ::pem::parse_many(&chain).unwrap().remove(0);
    let (_, cert) = X509Certificate::from_der(leaf.contents()).unwrap();
    let validity = cert.validity();
    let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
    (at_creation, at_end, lifetime)
}

/// The softcas leaf starts a minute early (its backdating); the RA computes
/// notAfter when the job runs, a moment after the order.
fn assert_lifetime(lifetime: ::time::Duration, expected: ::time::Duration) {
    assert!(
        lifetime >= expected && lifetime <= expected + ::time::Duration::minutes(3),
        "lifetime {lifetime} is not {expected} (plus the one-minute backdating)"
    );
}

async fn directory(ts: &TestServer) -> Value {
    ts.http()
        .get(ts.directory_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_directory_lists_the_profiles_with_their_descriptions() {
    let ts = server_with_profiles().await;
    let dir = directory(&ts).await;
    assert_eq!(
        dir["meta"]["profiles"],
        json!({
            "default": "certificates valid for 720h",
            "shortlived": "7-day certificates"
        }),
        "{dir}"
    );
    // Without profiles configured, the directory has none.
    let plain = TestServer::start().await;
    let dir = directory(&plain).await;
    assert!(dir["meta"].get("profiles").is_none(), "{dir}");
}

#[tokio::test]
async fn a_shortlived_order_gives_a_seven_day_certificate() {
    let ts = server_with_profiles().await;
    let (account, _) = ts.account().await;
    let (shown, _, lifetime) =
        issue(&ts, &account, "short.profiles.test", Some("shortlived")).await;
    assert_eq!(shown.as_deref(), Some("shortlived"));
    assert_lifetime(lifetime, ::time::Duration::days(7));
}

#[tokio::test]
async fn an_order_without_a_profile_is_issued_under_default() {
    let ts = server_with_profiles().await;
    let (account, _) = ts.account().await;
    let (shown, _, lifetime) = issue(&ts, &account, "plain.profiles.test", None).await;
    assert_eq!(shown.as_deref(), Some("default"));
    assert_lifetime(lifetime, ::time::Duration::days(30));

    // No profiles configured: no profile shown, the provisioner's lifetime
    // (softcas's 90 days) as before.
    let plain = TestServer::start().await;
    let (account, _) = plain.account().await;
    let (shown, _, lifetime) = issue(&plain, &account, "plain.profiles.test", None).await;
    assert_eq!(shown, None);
    assert_lifetime(lifetime, ::time::Duration::days(90));
}

/// The problem a newOrder for `profile` gets.
async fn refused(account: &Account, profile: &str) -> instant_acme::Problem {
    let ids = [Identifier::Dns("refused.profiles.test".to_owned())];
    match account
        .new_order(&NewOrder::new(&ids).profile(profile))
        .await
    {
        Err(instant_acme::Error::Api(p)) => p,
        Err(e) => panic!("newOrder for profile {profile:?}: not a problem document: {e}"),
        Ok(mut o) => panic!(
            "newOrder for profile {profile:?} was accepted: {:?}",
            o.state()
        ),
    }
}

#[tokio::test]
async fn an_unknown_profile_is_invalid_profile_naming_the_known_ones() {
    let ts = server_with_profiles().await;
    let (account, _) = ts.account().await;
    let p = refused(&account, "longlived").await;
    assert_eq!(
        p.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:invalidProfile")
    );
    assert_eq!(p.status, Some(400));
    let detail = p.detail.unwrap_or_default();
    assert!(detail.contains("\"longlived\""), "{detail}");
    assert!(detail.contains("\"default\", \"shortlived\""), "{detail}");

    // A server without profiles refuses any.
    let plain = TestServer::start().await;
    let (account, _) = plain.account().await;
    let p = refused(&account, "shortlived").await;
    assert_eq!(
        p.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:invalidProfile")
    );
    assert_eq!(p.status, Some(400));
    assert!(
        p.detail
            .unwrap_or_default()
            .contains("offers no certificate profiles")
    );
}
