//! Several upstreams (`authority.upstreams`, `routes`, `failover`) with two
//! real Pebbles that require EAB, as "sectigo" and "zerossl": orders go by
//! route, fail over to the second when the first stops, return to the first
//! when it is back, and revocations reach the upstream that issued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use acmeproxy_testkit as kit;
use instant_acme::{Identifier, NewOrder};
use kit::pebble::{Pebble, PebbleOptions};
use kit::{Options, TestServer};
use serde_json::json;

use super::pebble::{assert_chains_to, ders, issue, pebble_or_skip, revoke, serial_hex};

/// An upstream entry for `pebble` named `name`.
fn entry(name: &str, pebble: &Pebble) -> serde_json::Value {
    let mut config = pebble.authority_json()["config"].clone();
    // A stopped Pebble refuses connections at once; keep the RA's own
    // retries short so that failover is what the test measures.
    config["cert_obtain_timeout"] = json!(20);
    json!({"name": name, "type": "externalcas", "config": config})
}

/// The issuing root's subject of a chain (its last certificate's issuer).
fn top_issuer(chain: &str) -> String {
    use x509_parser::prelude::*;
    let certs = ders(chain);
    let (_, last) = X509Certificate::from_der(certs.last().unwrap()).unwrap();
    last.issuer().to_string()
}

fn root_subject(root_pem: &str) -> String {
    use x509_parser::prelude::*;
    let der = ders(root_pem).remove(0);
    let (_, root) = X509Certificate::from_der(&der).unwrap();
    root.subject().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_failover_and_return_between_two_pebbles() {
    if !pebble_or_skip() {
        return;
    }
    let mut sectigo = Pebble::start(PebbleOptions::default()).await;
    let zerossl = Pebble::start(PebbleOptions::default()).await;
    let (root1, root2) = (sectigo.root_pem().await, zerossl.root_pem().await);
    assert_ne!(
        root_subject(&root1),
        root_subject(&root2),
        "two Pebbles, two roots"
    );
    let ts = TestServer::start_with(Options {
        db: "sled",
        root: Some(sectigo.root_file().await),
        authority: Some(json!({
            "upstreams": [entry("sectigo", &sectigo), entry("zerossl", &zerossl)],
            "routes": [
                {"name": "internal", "match": {"dns": ["*.internal.test"]}, "upstreams": ["zerossl"]},
                {"name": "public", "upstreams": ["sectigo", "zerossl"]}
            ],
            "failover": {"downAfter": 2, "probeEvery": "1s"},
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })),
        ..Options::default()
    })
    .await;
    let (account, _) = ts.account().await;

    // By route: internal names to zerossl, the rest to sectigo.
    let internal = issue(&ts, &account, "db.internal.test").await;
    assert_chains_to(&internal, &root2);
    let public = issue(&ts, &account, "www.public.test").await;
    assert_chains_to(&public, &root1);

    // A mixed order is covered by the public route here (it takes every
    // order); an order no route takes is refused at newOrder in the
    // unit and HTTP tests (routes have no catch-all there).

    // Revocation reaches the upstream that issued each certificate.
    for (chain, pebble) in [(&internal, &zerossl), (&public, &sectigo)] {
        revoke(&account, chain).await;
        assert_eq!(pebble.cert_status(&serial_hex(chain)).await, "Revoked");
    }

    // sectigo stops: public orders complete through zerossl.
    sectigo.stop();
    let stopped = Instant::now();
    let failed_over = issue(&ts, &account, "after-stop.public.test").await;
    let failover_time = stopped.elapsed();
    assert_chains_to(&failed_over, &root2);
    for i in 0..3 {
        let chain = issue(&ts, &account, &format!("down{i}.public.test")).await;
        assert_eq!(top_issuer(&chain), top_issuer(&failed_over));
    }
    let metrics = acmeproxy::metrics::render();
    assert!(
        metrics.contains("acmeproxy_upstream_available{upstream=\"sectigo\"} 0"),
        "sectigo should be marked down:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("upstream_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics
            .contains("acmeproxy_upstream_choices_total{reason=\"failover\",upstream=\"zerossl\"}")
    );

    // sectigo is back (a new Pebble on the same ports, a new root): after
    // its next probe, new public orders return to it.
    sectigo.restart().await;
    let root1_again = sectigo.root_pem().await;
    let back = Instant::now();
    loop {
        let chain = issue(
            &ts,
            &account,
            &format!("back{}.public.test", back.elapsed().as_millis()),
        )
        .await;
        if top_issuer(&chain) == root_subject(&root1_again) {
            assert_chains_to(&chain, &root1_again);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "orders never returned to sectigo"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "routes: failover time (sectigo stopped → first order completed via zerossl) {:.2} s; \
         return to sectigo after its restart {:.2} s",
        failover_time.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn an_order_no_route_takes_is_refused_at_new_order() {
    if !pebble_or_skip() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let ts = TestServer::start_with(Options {
        db: "sled",
        root: Some(pebble.root_file().await),
        authority: Some(json!({
            "upstreams": [entry("internal", &pebble)],
            "routes": [
                // The RA's own certificate (localhost, 127.0.0.1) comes
                // from the route that covers its names.
                {"name": "inside", "match": {"dns": ["*.internal.test", "localhost"], "ip": ["127.0.0.0/8"]},
                 "upstreams": ["internal"]}
            ],
            "provisioners": [{"type": "ACME", "name": "acme"}]
        })),
        ..Options::default()
    })
    .await;
    let (account, _) = ts.account().await;
    let ids = [
        Identifier::Dns("a.internal.test".to_owned()),
        Identifier::Dns("www.example.org".to_owned()),
    ];
    let err = account
        .new_order(&NewOrder::new(&ids))
        .await
        .err()
        .expect("a mixed order is refused")
        .to_string();
    assert!(err.contains("rejectedIdentifier"), "{err}");
    assert!(
        err.contains("www.example.org") && err.contains("\"inside\""),
        "{err}"
    );
    // Names of the route alone are fine.
    let ok = issue(&ts, &account, "b.internal.test").await;
    assert_chains_to(&ok, &pebble.root_pem().await);
}
