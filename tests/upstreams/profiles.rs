//! The upstream profile (draft-ietf-acme-profiles) through the externalcas
//! upstream. The Debian Pebble (2.4) predates profiles, so the upstream
//! that offers them is another acmeproxy: the outer RA's profile `short`
//! asks the inner RA for its `shortlived` profile, whose 7-day lifetime
//! shows in the certificate (the inner RA's default is 90 days). An
//! upstream profile the upstream does not advertise (Pebble's directory
//! has no profiles) fails the order with `invalidProfile`, naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use instant_acme::{Account, Identifier, NewOrder, OrderStatus, RetryPolicy};
use kit::pebble::{Pebble, PebbleOptions};
use kit::{Options, TestServer};
use serde_json::{Value, json};
use x509_parser::prelude::*;

/// The outer RA's profiles: `short` asks for the upstream's `shortlived`,
/// `unoffered` for a profile no upstream here offers.
fn outer_profiles() -> Value {
    json!({
        "short": {"upstreamProfile": "shortlived"},
        "unoffered": {"upstreamProfile": "tlsserver"}
    })
}

/// The inner RA: softcas (90-day certificates) with a `shortlived` profile
/// of 7 days; accounts need EAB.
async fn inner_ra() -> TestServer {
    TestServer::start_with(Options {
        require_eab: true,
        authority: Some(json!({
            "type": "softcas",
            "profiles": {"shortlived": {"defaultTLSCertDuration": "168h"}},
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })),
        ..Options::default()
    })
    .await
}

/// The outer RA, with the inner one as its externalcas upstream through a
/// pre-validated EAB key (as a commercial CA pre-validates an
/// organisation's names).
async fn outer_ra(inner: &TestServer) -> TestServer {
    let key = inner
        .server
        .as_ref()
        .unwrap()
        .authority()
        .create_eab_key(
            "acme",
            Some("outer-ra".into()),
            Some(acmeproxy::model::EabPolicy {
                allow_dns: vec![".profiles.test".into(), "localhost".into()],
                allow_ip: vec!["127.0.0.1".into()],
                prevalidated: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    TestServer::start_with(Options {
        root: Some(inner.root_file.clone()),
        authority: Some(json!({
            "type": "externalcas",
            "config": {
                "ca_url": inner.directory_url(),
                "account_email": "outer-ra@example.org",
                "eab_kid": key.kid,
                "eab_hmac_key": URL_SAFE_NO_PAD.encode(&key.hmac_key),
                "ca_bundle": inner.root_file,
                "cert_obtain_timeout": 20
            },
            "profiles": outer_profiles(),
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })),
        ..Options::default()
    })
    .await
}

/// An order for `name` under `profile` (or none), answered and finalized; the chain
/// or the order's problem.
async fn order(
    ts: &TestServer,
    account: &Account,
    name: &str,
    profile: Option<&str>,
) -> Result<String, instant_acme::Problem> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut new_order = NewOrder::new(&ids);
    if let Some(p) = profile {
        new_order = new_order.profile(p);
    }
    let mut order = account.new_order(&new_order).await.unwrap();
    assert_eq!(order.state().profile.as_deref(), profile);
    assert_eq!(
        ts.answer_http01(&mut order).await.unwrap(),
        OrderStatus::Ready
    );
    order.finalize().await.unwrap();
    match order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
        .await
    {
        Ok(chain) => Ok(chain),
        Err(instant_acme::Error::Api(p)) => {
            assert_eq!(order.state().status, OrderStatus::Invalid);
            Err(p)
        }
        Err(e) => panic!("{name} under {profile:?}: {e}"),
    }
}

fn lifetime(chain: &str) -> ::time::Duration {
    let leaf = ::pem::parse_many(chain).unwrap().remove(0);
    let (_, cert) = X509Certificate::from_der(leaf.contents()).unwrap();
    let v = cert.validity();
    v.not_after.to_datetime() - v.not_before.to_datetime()
}

fn assert_invalid_profile(p: &instant_acme::Problem, upstream_profile: &str) {
    assert_eq!(
        p.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:invalidProfile"),
        "{p:?}"
    );
    let detail = p.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("upstream CA") && detail.contains(&format!("{upstream_profile:?}")),
        "{detail}"
    );
}

#[tokio::test]
async fn the_upstream_profile_reaches_an_acme_upstream_that_offers_it() {
    let inner = inner_ra().await;
    let outer = outer_ra(&inner).await;
    let (account, _) = outer.account().await;

    let days = |n| ::time::Duration::days(n);
    let chain = order(&outer, &account, "www.profiles.test", Some("short"))
        .await
        .unwrap();
    let life = lifetime(&chain);
    assert!(
        life >= days(7) && life <= days(7) + ::time::Duration::minutes(3),
        "the inner RA's shortlived profile gives 7 days, not {life}"
    );
    // Without a profile, nothing is asked of the upstream: its 90 days.
    let chain = order(&outer, &account, "plain.profiles.test", None)
        .await
        .unwrap();
    let life = lifetime(&chain);
    assert!(
        life >= days(90) && life <= days(90) + ::time::Duration::minutes(3),
        "the inner RA's default is 90 days, not {life}"
    );

    // A profile the upstream does not advertise is not asked for blindly.
    let p = order(&outer, &account, "other.profiles.test", Some("unoffered"))
        .await
        .unwrap_err();
    assert_invalid_profile(&p, "tlsserver");
    assert!(
        p.detail.unwrap_or_default().contains("\"shortlived\""),
        "the detail names what the upstream offers"
    );
}

#[tokio::test]
async fn an_upstream_without_profiles_is_not_asked_for_one() {
    if !super::pebble::pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let mut authority = pebble.authority_json();
    authority["profiles"] = outer_profiles();
    let ts = TestServer::start_with(Options {
        db: "sled",
        root: Some(pebble.root_file().await),
        authority: Some(authority),
        ..Options::default()
    })
    .await;
    let (account, _) = ts.account().await;
    let p = order(&ts, &account, "www.pebble-profiles.test", Some("short"))
        .await
        .unwrap_err();
    assert_invalid_profile(&p, "shortlived");
    assert!(
        p.detail.unwrap_or_default().contains("offers no profiles"),
        "the detail says the upstream offers none"
    );
}
