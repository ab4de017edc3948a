//! Rate limits (`authority.rateLimits`): each limit refuses with
//! `rateLimited` (HTTP 429), `Retry-After` and a detail naming the limit;
//! `0` turns a limit off; the admin CLI shows and resets an account's
//! buckets; refusals are counted by limit name; validations beyond the
//! concurrency cap wait instead of failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use kit::run_cli as cli;

use std::time::{Duration, Instant};

use kit::raw::{Key, Raw, dns, ip};
use kit::{Options, TestServer};
use serde_json::{Value, json};

/// A server with `rateLimits` (and softcas, one provisioner).
async fn server(limits: Value) -> (TestServer, Raw) {
    server_with(limits, false).await
}

async fn server_with(limits: Value, metrics: bool) -> (TestServer, Raw) {
    let ts = TestServer::start_with(Options {
        authority: Some(json!({
            "type": "softcas",
            "provisioners": [{}],
            "rateLimits": limits,
        })),
        metrics,
        ..Options::default()
    })
    .await;
    let raw = Raw::new(&ts).await;
    (ts, raw)
}

fn detail(doc: &Value) -> String {
    doc["detail"].as_str().unwrap_or_default().to_owned()
}

/// The Retry-After of a 429, in seconds.
fn retry_after(r: &kit::raw::Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("a 429 without Retry-After: {:?}", r.headers))
        .parse()
        .unwrap()
}

/// Let's Encrypt's default: 300 newOrders per account per 3 hours. The
/// 301st is refused with 429, Retry-After and the limit's name; another
/// account is not affected.
#[tokio::test(flavor = "multi_thread")]
async fn new_orders_per_account_300_then_429() {
    // Only the per-IP request limit is lifted (this test sends ~620
    // requests in a few seconds from one address).
    let (_ts, raw) = server(json!({"requestsPerIp": 0})).await;
    let acct = raw.register(Key::es256()).await;
    let url = raw.url("newOrder");
    let mut created = 0;
    let mut refused = Vec::new();
    for i in 0..310 {
        let r = raw
            .post_kid(
                &acct,
                &url,
                Some(&json!({"identifiers": [dns(&format!("o{i}.test"))]})),
            )
            .await;
        match r.status {
            201 => {
                assert!(refused.is_empty(), "a 201 after a 429 (order {i})");
                created += 1;
            }
            429 => refused.push(r),
            s => panic!(
                "order {i}: status {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert_eq!(created, 300);
    assert_eq!(refused.len(), 10);
    for r in &refused {
        let doc = r.problem(429, "rateLimited");
        let d = detail(&doc);
        assert!(d.contains("newOrdersPerAccount"), "{d}");
        assert!(d.contains("300 per 3h"), "{d}");
        assert!(d.contains("retry after"), "{d}");
        // One token every 36 s.
        let secs = retry_after(r);
        assert!((1..=36).contains(&secs), "Retry-After {secs}");
    }
    // Another account is served.
    let other = raw.register(Key::es256()).await;
    raw.new_order(&other, &[dns("other.test")]).await;
}

/// 5 failed validations per account and identifier per hour: the sixth
/// newOrder for that identifier is refused; other identifiers and accounts
/// are not.
#[tokio::test(flavor = "multi_thread")]
async fn failed_validations_per_account_and_identifier() {
    let (ts, raw) = server(json!({})).await;
    let acct = raw.register(Key::es256()).await;
    for round in 0..5 {
        let (_, order) = raw.new_order(&acct, &[dns("fail.test")]).await;
        let authz_url = order["authorizations"][0].as_str().unwrap();
        let authz = raw.fetch(&acct, authz_url).await;
        let ch = Raw::challenge(&authz, "http-01");
        ts.responders
            .set_http01(ch["token"].as_str().unwrap(), "not-the-key-auth");
        raw.answer(&acct, &ch).await.ok(200);
        let done = raw
            .poll(&acct, authz_url, |a| a["status"] != "pending")
            .await;
        assert_eq!(done["status"], "invalid", "round {round}: {done}");
    }
    let r = raw
        .post_kid(
            &acct,
            &raw.url("newOrder"),
            Some(&json!({"identifiers": [dns("fail.test")]})),
        )
        .await;
    let doc = r.problem(429, "rateLimited");
    assert!(
        detail(&doc).contains("failedValidationsPerAccountAndIdentifier"),
        "{doc}"
    );
    // One token every 12 minutes.
    assert!((1..=720).contains(&retry_after(&r)));
    raw.new_order(&acct, &[dns("fine.test")]).await;
    let other = raw.register(Key::es256()).await;
    raw.new_order(&other, &[dns("fail.test")]).await;
}

/// newAccountsPerIp counts accounts created, not lookups of existing ones.
#[tokio::test(flavor = "multi_thread")]
async fn new_accounts_per_ip() {
    let (_ts, raw) = server(json!({"newAccountsPerIp": {"count": 3, "period": "1h"}})).await;
    let first = Key::es256();
    raw.new_account(&first, &json!({"termsOfServiceAgreed": true}))
        .await
        .ok(201);
    raw.register(Key::es256()).await;
    raw.register(Key::es256()).await;
    let r = raw
        .new_account(&Key::es256(), &json!({"termsOfServiceAgreed": true}))
        .await;
    let doc = r.problem(429, "rateLimited");
    assert!(detail(&doc).contains("newAccountsPerIp"), "{doc}");
    assert!(detail(&doc).contains("3 per 1h"), "{doc}");
    // One token every 20 minutes.
    assert!((1..=1200).contains(&retry_after(&r)));
    // Finding an existing account is not limited.
    raw.new_account(&first, &json!({"onlyReturnExisting": true}))
        .await
        .ok(200);
    raw.new_account(&first, &json!({"termsOfServiceAgreed": true}))
        .await
        .ok(200);
}

/// `0` turns a limit off: 60 accounts from one address where the default
/// (50 per 3 h) refuses the 51st.
#[tokio::test(flavor = "multi_thread")]
async fn zero_turns_a_limit_off() {
    let (_ts, raw) = server(json!({"newAccountsPerIp": 0})).await;
    for _ in 0..60 {
        raw.register(Key::es256()).await;
    }
    // And the default does refuse the 51st.
    let (_ts, raw) = server(json!({})).await;
    for _ in 0..50 {
        raw.register(Key::es256()).await;
    }
    raw.new_account(&Key::es256(), &json!({"termsOfServiceAgreed": true}))
        .await
        .problem(429, "rateLimited");
}

/// requestsPerIp covers every request; a refused POST still carries a
/// Replay-Nonce.
#[tokio::test(flavor = "multi_thread")]
async fn requests_per_ip() {
    let (ts, raw) = server(json!({"requestsPerIp": {"count": 6, "period": "1h"}})).await;
    // Raw::new spent one request on the directory.
    for _ in 0..5 {
        assert_eq!(raw.get(&ts.directory_url()).await.status, 200);
    }
    let r = raw.get(&ts.directory_url()).await;
    let doc = r.problem(429, "rateLimited");
    assert!(detail(&doc).contains("requestsPerIp"), "{doc}");
    assert!(retry_after(&r) >= 1);
    let r = raw
        .post_raw(
            &raw.url("newAccount"),
            "application/jose+json",
            b"{}".to_vec(),
        )
        .await;
    r.problem(429, "rateLimited");
    assert!(r.header("replay-nonce").is_some());
}

/// `acmeproxy accounts limits` shows the buckets an account used up, and
/// `acmeproxy accounts reset-limits` restores service at once.
#[tokio::test(flavor = "multi_thread")]
async fn admin_shows_and_resets_an_accounts_buckets() {
    let (ts, raw) = server(json!({"newOrdersPerAccount": {"count": 2, "period": "3h"}})).await;
    let cfg = ts.dir.path().join("admin-ca.json");
    kit::CaJson::new(&ts.data_dir).port(1).write(&cfg).unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let acct = raw.register(Key::es256()).await;
    let id = acct.kid.rsplit('/').next().unwrap().to_owned();
    let (ok, out, err) = cli(&["accounts", "limits", &cfg, &id]);
    assert!(ok, "{err}");
    assert!(out.contains("served in full"), "{out}");

    raw.new_order(&acct, &[ip("127.0.0.1")]).await;
    raw.new_order(&acct, &[ip("127.0.0.1")]).await;
    let order = json!({"identifiers": [ip("127.0.0.1")]});
    raw.post_kid(&acct, &raw.url("newOrder"), Some(&order))
        .await
        .problem(429, "rateLimited");

    let (ok, out, err) = cli(&["accounts", "limits", &cfg, &id, "--json"]);
    assert!(ok, "{err}");
    let buckets: Value = serde_json::from_str(&out).unwrap();
    let b = buckets
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["limit"] == "newOrdersPerAccount")
        .unwrap_or_else(|| panic!("{buckets}"));
    assert_eq!(b["key"], id.as_str());
    assert!(b["tokens"].as_f64().unwrap() < 1.0, "{b}");
    assert!(b["retry_after_secs"].as_u64().unwrap() > 0, "{b}");
    let (ok, out, _) = cli(&["accounts", "limits", &cfg, &id]);
    assert!(ok && out.contains("newOrdersPerAccount"), "{out}");

    let (ok, out, err) = cli(&["accounts", "reset-limits", &cfg, &id]);
    assert!(ok, "{err}");
    assert!(out.contains("emptied"), "{out}");
    raw.new_order(&acct, &[ip("127.0.0.1")]).await;

    let (ok, _, err) = cli(&["accounts", "reset-limits", &cfg, "nosuchaccount"]);
    assert!(!ok && err.contains("nosuchaccount"), "{err}");
}

/// Refusals are counted by limit name, with no account or address label.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_by_limit() {
    let (ts, raw) = server_with(
        json!({"newAccountsPerIp": {"count": 1, "period": "1h"}}),
        true,
    )
    .await;
    raw.register(Key::es256()).await;
    for _ in 0..3 {
        raw.new_account(&Key::es256(), &json!({"termsOfServiceAgreed": true}))
            .await
            .problem(429, "rateLimited");
    }
    let addr = ts.server.as_ref().unwrap().metrics_addr.unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("acmeproxy_rate_limited_total{"))
        .unwrap_or_else(|| panic!("no rate_limited sample in:\n{text}"));
    let sample = text
        .lines()
        .find(|l| l.starts_with(r#"acmeproxy_rate_limited_total{limit="newAccountsPerIp"}"#))
        .unwrap_or_else(|| panic!("{line}"));
    let n: f64 = sample.rsplit(' ').next().unwrap().parse().unwrap();
    // Other tests of this binary may have added their own refusals.
    assert!(n >= 3.0, "{sample}");
    for l in text
        .lines()
        .filter(|l| l.starts_with("acmeproxy_rate_limited_total{"))
    {
        assert!(!l.contains("127.0.0.1") && !l.contains("acct"), "{l}");
    }
}

/// With `concurrentValidations: 1`, three slow validations answered at once
/// run one after another: all end valid (waiting is not an error), and they
/// take at least three times one validation.
#[tokio::test(flavor = "multi_thread")]
async fn validations_beyond_the_cap_wait_their_turn() {
    let (ts, raw) = server(json!({"concurrentValidations": 1})).await;
    let acct = raw.register(Key::es256()).await;
    let delay = Duration::from_millis(600);
    let mut pending = Vec::new();
    for i in 0..3 {
        let (_, order) = raw.new_order(&acct, &[dns(&format!("slow{i}.test"))]).await;
        let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
        let authz = raw.fetch(&acct, &authz_url).await;
        let ch = Raw::challenge(&authz, "http-01");
        let token = ch["token"].as_str().unwrap();
        let ka = kit::raw::key_authorization(token, &acct.key);
        ts.responders.set_http01_slow(token, &ka, delay);
        pending.push((authz_url, ch));
    }
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        raw.answer(&acct, &pending[0].1),
        raw.answer(&acct, &pending[1].1),
        raw.answer(&acct, &pending[2].1),
    );
    for r in [a, b, c] {
        assert_eq!(r.status, 200);
    }
    for (url, _) in &pending {
        let a = raw.poll(&acct, url, |a| a["status"] != "pending").await;
        assert_eq!(a["status"], "valid", "{a}");
    }
    assert!(
        started.elapsed() >= delay * 3,
        "three validations with one place took only {:?}",
        started.elapsed()
    );
}
