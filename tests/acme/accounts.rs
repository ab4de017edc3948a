//! Account-level flows that instant-acme cannot drive, with the raw client:
//! every JWS algorithm, account read/update/deactivation (RFC 8555 §7.3.2,
//! §7.3.6), keyChange (§7.3.5), the orders list and its paging (§7.1.2.1),
//! authorization deactivation (§7.5.2), revocation with the certificate key
//! (§7.6), notBefore/notAfter (§7.4) and which challenges an authorization
//! offers (§7.1.3, RFC 8738 §7).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::collections::BTreeSet;

use kit::TestServer;
use kit::raw::{Account, Key, Raw, dns, ip, jws};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, X509Certificate};

async fn server() -> (TestServer, Raw) {
    let ts = TestServer::start().await;
    let raw = Raw::new(&ts).await;
    (ts, raw)
}

fn kinds(authz: &Value) -> BTreeSet<String> {
    authz["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_algorithm_registers_signs_and_validates() {
    let (ts, raw) = server().await;
    for key in [Key::es256(), Key::es384(), Key::rsa(), Key::ed25519()] {
        let alg = key.alg();
        let acct = raw.register(key).await;
        let body = raw.fetch(&acct, &acct.kid).await;
        assert_eq!(body["status"], "valid", "{alg}");
        // http-01 succeeds only if our RFC 7638 thumbprint matches the server's.
        let name = format!("{}.alg.test", alg.to_lowercase());
        let (order_url, _) = raw.new_order(&acct, &[dns(&name)]).await;
        let order = raw
            .make_ready(&ts.responders, &acct, &order_url, "http-01")
            .await;
        assert_eq!(order["status"], "ready", "{alg}");
    }
}

#[tokio::test]
async fn new_account_with_an_existing_key_returns_it() {
    let (_ts, raw) = server().await;
    let key = Key::es256();
    let first = raw
        .new_account(&key, &json!({"termsOfServiceAgreed": true}))
        .await;
    first.ok(201);
    let again = raw
        .new_account(&key, &json!({"termsOfServiceAgreed": true}))
        .await;
    assert_eq!(again.ok(200)["status"], "valid");
    assert_eq!(again.location(), first.location());
    let existing = raw
        .new_account(&key, &json!({"onlyReturnExisting": true}))
        .await;
    existing.ok(200);
    assert_eq!(existing.location(), first.location());
}

#[tokio::test]
async fn account_read_update_and_contacts() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let body = raw.fetch(&acct, &acct.kid).await;
    assert_eq!(body["contact"], json!(["mailto:raw@example.org"]));
    assert_eq!(body["termsOfServiceAgreed"], true);
    assert!(body["orders"].as_str().unwrap().starts_with(&acct.kid));

    let new_contact = json!({"contact": ["mailto:ops@example.org", "mailto:sec@example.org"]});
    let r = raw.post_kid(&acct, &acct.kid, Some(&new_contact)).await;
    assert_eq!(r.ok(200)["contact"], new_contact["contact"]);
    assert_eq!(r.location(), acct.kid);
    assert_eq!(
        raw.fetch(&acct, &acct.kid).await["contact"],
        new_contact["contact"]
    );

    for (contact, status, kind) in [
        ("tel:+15555550100", 400, "unsupportedContact"),
        ("mailto:nobody", 400, "invalidContact"),
        ("mailto:a@b.test?subject=hi", 400, "invalidContact"),
    ] {
        let doc = raw
            .post_kid(&acct, &acct.kid, Some(&json!({"contact": [contact]})))
            .await
            .problem(status, kind);
        assert!(doc["detail"].as_str().unwrap().contains(contact), "{doc}");
        let doc = raw
            .new_account(&Key::es256(), &json!({"contact": [contact]}))
            .await
            .problem(status, kind);
        assert!(doc["detail"].as_str().unwrap().contains(contact), "{doc}");
    }
    // Refused updates changed nothing.
    assert_eq!(
        raw.fetch(&acct, &acct.kid).await["contact"],
        new_contact["contact"]
    );
}

#[tokio::test]
async fn deactivated_account_is_refused_everywhere() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let issued = raw.issue(&ts.responders, &acct, &["deact.test"]).await;
    let (pending_url, pending) = raw.new_order(&acct, &[dns("pending.test")]).await;
    let authz_url = pending["authorizations"][0].as_str().unwrap().to_owned();
    let authz = raw.fetch(&acct, &authz_url).await;
    let chall_url = authz["challenges"][0]["url"].as_str().unwrap().to_owned();

    let r = raw
        .post_kid(&acct, &acct.kid, Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.ok(200)["status"], "deactivated");

    let orders = format!("{}/orders", acct.kid);
    let empty = json!({});
    let ids = json!({"identifiers": [dns("more.test")]});
    let reactivate = json!({"status": "valid"});
    let requests: [(&str, Option<&Value>); 9] = [
        (&acct.kid, None),
        (&acct.kid, Some(&reactivate)),
        (&orders, None),
        (&raw.url("newOrder"), Some(&ids)),
        (&pending_url, None),
        (&authz_url, None),
        (&chall_url, Some(&empty)),
        (&issued.cert_url, None),
        (&raw.url("keyChange"), Some(&empty)),
    ];
    // RFC 8555 §7.3.6: 401 unauthorized for anything a deactivated account signs.
    for (url, payload) in requests {
        let doc = raw
            .post_kid(&acct, url, payload)
            .await
            .problem(401, "unauthorized");
        assert!(
            doc["detail"].as_str().unwrap().contains("deactivated"),
            "{url}: {doc}"
        );
    }
    raw.revoke_kid(&acct, &issued.leaf_der, None)
        .await
        .problem(401, "unauthorized");
    // The key cannot come back through newAccount either.
    raw.new_account(&acct.key, &json!({"termsOfServiceAgreed": true}))
        .await
        .problem(401, "unauthorized");
}

#[tokio::test]
async fn key_change_rolls_the_account_key() {
    let (_ts, raw) = server().await;
    let old = raw.register(Key::es256()).await;
    let new = Key::ed25519();
    let url = raw.url("keyChange");

    // Refused: inner signed by another key than its jwk, or for another URL.
    let mut bad = raw.key_change_inner(&old.kid, &old.key, &new);
    bad["signature"] =
        raw.key_change_inner(&old.kid, &old.key, &Key::ed25519())["signature"].clone();
    raw.post_kid(&old, &url, Some(&bad))
        .await
        .problem(400, "malformed");
    let wrong_url = jws(
        &json!({"alg": new.alg(), "jwk": new.jwk(), "url": raw.url("newOrder")}),
        json!({"account": old.kid, "oldKey": old.key.jwk()})
            .to_string()
            .as_bytes(),
        &new,
    );
    raw.post_kid(&old, &url, Some(&wrong_url))
        .await
        .problem(400, "malformed");

    let inner = raw.key_change_inner(&old.kid, &old.key, &new);
    let r = raw.post_kid(&old, &url, Some(&inner)).await;
    assert_eq!(r.ok(200)["status"], "valid");
    assert_eq!(r.location(), old.kid);

    // The old key no longer signs for the account: its alg no longer fits
    // the account key, and claiming the new alg, the signature fails.
    let doc = raw
        .post_kid(&old, &old.kid, None)
        .await
        .problem(400, "badSignatureAlgorithm");
    assert!(doc["detail"].as_str().unwrap().contains("EdDSA"), "{doc}");
    let mut h = raw.header_kid(&old, &old.kid).await;
    h["alg"] = json!("EdDSA");
    let doc = raw
        .post(&old.kid, &h, b"", &old.key)
        .await
        .problem(400, "malformed");
    assert!(
        doc["detail"].as_str().unwrap().contains("signature"),
        "{doc}"
    );
    // The new one does.
    let rolled = Account {
        key: new,
        kid: old.kid.clone(),
    };
    assert_eq!(raw.fetch(&rolled, &rolled.kid).await["status"], "valid");
    let found = raw
        .new_account(&rolled.key, &json!({"onlyReturnExisting": true}))
        .await;
    found.ok(200);
    assert_eq!(found.location(), rolled.kid);
    raw.new_account(&old.key, &json!({"onlyReturnExisting": true}))
        .await
        .problem(400, "accountDoesNotExist");

    // Rolling to a key another account holds: 409 naming that account.
    let other = raw.register(Key::rsa()).await;
    let inner = raw.key_change_inner(&rolled.kid, &rolled.key, &other.key);
    let r = raw.post_kid(&rolled, &url, Some(&inner)).await;
    r.problem(409, "malformed");
    assert_eq!(r.location(), other.kid);
    assert_eq!(raw.fetch(&rolled, &rolled.kid).await["status"], "valid");
}

/// Every order URL of the orders list at `url`, following `Link: rel="next"`;
/// also returns the number of pages.
async fn list_orders(raw: &Raw, acct: &Account, url: &str) -> (Vec<String>, Vec<usize>) {
    let mut next = Some(url.to_owned());
    let mut all = Vec::new();
    let mut pages = Vec::new();
    while let Some(url) = next.take() {
        let r = raw.post_kid(acct, &url, None).await;
        let page: Vec<String> = r.ok(200)["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_owned())
            .collect();
        pages.push(page.len());
        all.extend(page);
        for link in r.headers.get_all("link") {
            let link = link.to_str().unwrap();
            if link.contains("rel=\"next\"") {
                let target = &link[link.find('<').unwrap() + 1..link.find('>').unwrap()];
                assert!(target.contains("?cursor="), "{link}");
                next = Some(target.to_owned());
            }
        }
        assert!(pages.len() < 5, "paging does not end");
    }
    (all, pages)
}

#[tokio::test]
async fn orders_list_and_paging() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let orders_url = raw.fetch(&acct, &acct.kid).await["orders"]
        .as_str()
        .unwrap()
        .to_owned();
    let (empty, _) = list_orders(&raw, &acct, &orders_url).await;
    assert!(empty.is_empty());

    let mut created = BTreeSet::new();
    for i in 0..3 {
        let (url, _) = raw
            .new_order(&acct, &[dns(&format!("o{i}.list.test"))])
            .await;
        created.insert(url);
    }
    let (listed, pages) = list_orders(&raw, &acct, &orders_url).await;
    assert_eq!(pages, vec![3]);
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), created);

    // The list is a POST-as-GET resource.
    raw.post_kid(&acct, &orders_url, Some(&json!({})))
        .await
        .problem(400, "malformed");

    for i in 3..101 {
        let (url, _) = raw
            .new_order(&acct, &[dns(&format!("o{i}.list.test"))])
            .await;
        created.insert(url);
    }
    let (listed, pages) = list_orders(&raw, &acct, &orders_url).await;
    assert_eq!(pages, vec![100, 1]);
    assert_eq!(listed.len(), 101, "no order listed twice");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), created);
}

#[tokio::test]
async fn authz_deactivation_invalidates_the_order() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let (order_url, order) = raw
        .new_order(&acct, &[dns("a.deact.test"), dns("b.deact.test")])
        .await;
    let authz_url = order["authorizations"][0].as_str().unwrap();
    let deactivate = json!({"status": "deactivated"});
    let r = raw.post_kid(&acct, authz_url, Some(&deactivate)).await;
    assert_eq!(r.ok(200)["status"], "deactivated");
    let order = raw.fetch(&acct, &order_url).await;
    assert_eq!(order["status"], "invalid", "{order}");
    assert!(
        order["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("deactivated"),
        "{order}"
    );
    // Once deactivated, it stays so.
    raw.post_kid(&acct, authz_url, Some(&deactivate))
        .await
        .problem(400, "malformed");
}

#[tokio::test]
async fn revocation_with_the_certificate_key() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let issued = raw.issue(&ts.responders, &acct, &["certkey.test"]).await;
    let doc = raw
        .revoke_jwk(&Key::es256(), &issued.leaf_der, Some(1))
        .await
        .problem(403, "unauthorized");
    assert!(doc["detail"].as_str().unwrap().contains("key"), "{doc}");
    let cert_key = Key::from_rcgen_p256(&issued.cert_key);
    let r = raw.revoke_jwk(&cert_key, &issued.leaf_der, Some(1)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("replay-nonce").is_some());
    raw.revoke_jwk(&cert_key, &issued.leaf_der, Some(1))
        .await
        .problem(400, "alreadyRevoked");
}

#[tokio::test]
async fn not_before_and_not_after_reach_the_certificate() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let nb = now + time::Duration::hours(1);
    let na = now + time::Duration::days(3);
    let payload = json!({
        "identifiers": [dns("validity.test")],
        "notBefore": nb.format(&Rfc3339).unwrap(),
        "notAfter": na.format(&Rfc3339).unwrap(),
    });
    let r = raw
        .post_kid(&acct, &raw.url("newOrder"), Some(&payload))
        .await;
    let order = r.ok(201);
    let parse = |v: &Value| OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(parse(&order["notBefore"]), nb);
    assert_eq!(parse(&order["notAfter"]), na);

    let issued = raw
        .issue_order(&ts.responders, &acct, &r.location(), &["validity.test"])
        .await;
    assert_eq!(parse(&issued.order["notBefore"]), nb);
    assert_eq!(parse(&issued.order["notAfter"]), na);
    let (_, cert) = X509Certificate::from_der(&issued.leaf_der).unwrap();
    assert_eq!(cert.validity().not_before.to_datetime(), nb);
    assert_eq!(cert.validity().not_after.to_datetime(), na);
}

#[tokio::test]
async fn challenges_offered_for_wildcards_and_ips() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let (_, order) = raw
        .new_order(
            &acct,
            &[dns("*.offer.test"), dns("offer.test"), ip("127.0.0.1")],
        )
        .await;
    let mut seen = 0;
    for a in order["authorizations"].as_array().unwrap() {
        let authz = raw.fetch(&acct, a.as_str().unwrap()).await;
        let got = kinds(&authz);
        let all: BTreeSet<String> = ["dns-01", "http-01", "tls-alpn-01"]
            .map(str::to_owned)
            .into();
        match (
            authz["identifier"]["type"].as_str().unwrap(),
            authz["wildcard"] == true,
        ) {
            ("dns", true) => {
                assert_eq!(authz["identifier"]["value"], "offer.test");
                assert_eq!(got, BTreeSet::from(["dns-01".to_owned()]));
            }
            ("dns", false) => assert_eq!(got, all),
            ("ip", false) => {
                assert!(!got.contains("dns-01"), "{authz}");
                assert!(got.contains("http-01") && got.contains("tls-alpn-01"));
            }
            other => panic!("unexpected authorization {other:?}: {authz}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 3);
}
