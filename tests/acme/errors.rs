//! Every RFC 8555 §6.7 error type the server emits, provoked with the raw
//! client: each answer is checked for its problem type, HTTP status,
//! `Content-Type: application/problem+json`, a `Replay-Nonce` and a detail a
//! person can act on. Validation problems, which travel inside challenge and
//! order objects, are checked for type, `status` member and detail.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use acmeproxy::acme::types::ChallengeType;
use acmeproxy::http::{AppState, router};
use acmeproxy::model::{Clock, SystemClock};
use acmeproxy::nonce::NonceService;
use acmeproxy::ra::{Authority, AuthorityOptions, Provisioner};
use acmeproxy::store::memory::MemoryStore;
use acmeproxy::store::{Op, Records, Store, StoreError, Table};
use acmeproxy::upstream::CertificateAuthorityService;
use acmeproxy::upstream::softcas::{SoftCas, SoftCasOptions};
use acmeproxy::validate::{HickoryResolver, ValidationSettings, Validator};
use kit::raw::{
    Account, Key, Raw, assert_problem_doc, b64, csr, dns, eab, ip, jws, jws_bytes, jws_parts,
};
use kit::{Options, TestServer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

async fn server() -> (TestServer, Raw) {
    let ts = TestServer::start().await;
    let raw = Raw::new(&ts).await;
    (ts, raw)
}

fn detail(doc: &Value) -> String {
    doc["detail"].as_str().unwrap().to_owned()
}

/// Nonces go only where RFC 8555 asks (§7.2 newNonce, §6.5 every answer
/// to a POST, errors included); a GET of anything else mints none.
#[tokio::test]
async fn nonces_only_on_new_nonce_and_post_answers() {
    let (ts, raw) = server().await;
    for url in [
        raw.url("newAccount"),
        ts.directory_url(),
        ts.url("/acme/acme/no-such-thing"),
        ts.url("/acme/nope/directory"),
    ] {
        let r = raw.get(&url).await;
        assert!(
            r.header("replay-nonce").is_none(),
            "GET {url}: {}",
            r.status
        );
    }
    // A POST to a GET resource, or to nothing at all: still a nonce.
    for url in [ts.directory_url(), ts.url("/acme/acme/no-such-thing")] {
        let r = raw
            .post_raw(&url, "application/jose+json", b"{}".to_vec())
            .await;
        assert!(r.status >= 400, "POST {url}: {}", r.status);
        assert!(r.header("replay-nonce").is_some(), "POST {url}");
    }
    assert!(!raw.new_nonce().await.is_empty());
}

#[tokio::test]
async fn bad_nonce_missing_unknown_and_reused() {
    let (_ts, raw) = server().await;
    let url = raw.url("newAccount");
    let key = Key::es256();
    let payload = json!({"termsOfServiceAgreed": true}).to_string();

    let missing = json!({"alg": "ES256", "url": url, "jwk": key.jwk()});
    let r = raw.post(&url, &missing, payload.as_bytes(), &key).await;
    let doc = r.problem(400, "badNonce");
    assert!(detail(&doc).contains("newNonce"), "{doc}");

    let unknown = json!({"alg": "ES256", "nonce": "bm90LWEtbm9uY2U", "url": url, "jwk": key.jwk()});
    let r = raw.post(&url, &unknown, payload.as_bytes(), &key).await;
    r.problem(400, "badNonce");

    // The Replay-Nonce of an error answer is good for the retry (RFC 8555 §6.5).
    let retry = r.header("replay-nonce").unwrap().to_owned();
    let header = json!({"alg": "ES256", "nonce": retry, "url": url, "jwk": key.jwk()});
    raw.post(&url, &header, payload.as_bytes(), &key)
        .await
        .ok(201);
    // The same nonce a second time is refused.
    let other = Key::es256();
    let header = json!({"alg": "ES256", "nonce": retry, "url": url, "jwk": other.jwk()});
    let doc = raw
        .post(&url, &header, payload.as_bytes(), &other)
        .await
        .problem(400, "badNonce");
    assert!(detail(&doc).contains("already used"), "{doc}");
}

#[tokio::test]
async fn bad_signature_algorithm_lists_the_accepted_ones() {
    let (_ts, raw) = server().await;
    let url = raw.url("newAccount");
    let key = Key::es256();
    let payload = b"{}";
    for alg in ["none", "HS256", "PS256", "ES384"] {
        let header =
            json!({"alg": alg, "nonce": raw.new_nonce().await, "url": url, "jwk": key.jwk()});
        let body = if alg == "none" {
            let protected = b64(header.to_string().as_bytes());
            jws_parts(&protected, &b64(payload), b"")
        } else {
            // Signed with the P-256 key whatever the header claims.
            jws(&header, payload, &key)
        };
        let doc = raw
            .post_jws(&url, &body)
            .await
            .problem(400, "badSignatureAlgorithm");
        let algs: Vec<&str> = doc["algorithms"]
            .as_array()
            .unwrap_or_else(|| panic!("{alg}: no algorithms array in {doc}"))
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for expected in ["RS256", "ES256", "ES384", "EdDSA"] {
            assert!(algs.contains(&expected), "{alg}: {algs:?}");
        }
        assert!(detail(&doc).contains(alg), "{alg}: {doc}");
    }
}

#[tokio::test]
async fn bad_public_key_weak_rsa_unknown_kty_private_members() {
    let (_ts, raw) = server().await;
    let url = raw.url("newAccount");
    let key = Key::es256();
    let mut n = vec![0xC7u8; 128];
    n[127] = 0x01;
    let mut with_d = key.jwk();
    with_d["d"] = json!(b64(&[7u8; 32]));
    let cases = [
        (
            "RS256",
            json!({"kty": "RSA", "n": b64(&n), "e": "AQAB"}),
            "2048",
        ),
        ("ES256", json!({"kty": "XYZ"}), "XYZ"),
        ("ES256", with_d, "private"),
        (
            "ES256",
            json!({"kty": "oct", "k": b64(b"shared secret")}),
            "private",
        ),
        (
            "ES256",
            json!({"kty": "EC", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[2; 66])}),
            "P-521",
        ),
    ];
    for (alg, jwk, needle) in cases {
        let header = json!({"alg": alg, "nonce": raw.new_nonce().await, "url": url, "jwk": jwk});
        let doc = raw
            .post(&url, &header, b"{}", &key)
            .await
            .problem(400, "badPublicKey");
        assert!(detail(&doc).contains(needle), "{needle}: {doc}");
    }
}

#[tokio::test]
async fn malformed_jws_envelopes() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let new_account = raw.url("newAccount");
    let new_order = raw.url("newOrder");
    let order_payload = json!({"identifiers": [dns("m.test")]}).to_string();

    // Not JSON, and the compact serialization.
    let r = raw
        .post_raw(&new_account, "application/jose+json", b"not json".to_vec())
        .await;
    assert!(detail(&r.problem(400, "malformed")).contains("not JSON"));
    let r = raw
        .post_raw(
            &new_account,
            "application/jose+json",
            b"e30.e30.AAAA".to_vec(),
        )
        .await;
    assert!(detail(&r.problem(400, "malformed")).contains("flattened"));

    // Both jwk and kid.
    let mut h = raw.header_kid(&acct, &new_order).await;
    h["jwk"] = acct.key.jwk();
    let doc = raw
        .post(&new_order, &h, order_payload.as_bytes(), &acct.key)
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("\"kid\""), "{doc}");

    // kid on newAccount.
    let h = raw.header_kid(&acct, &new_account).await;
    let doc = raw
        .post(&new_account, &h, b"{}", &acct.key)
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("jwk"), "{doc}");

    // jwk on newOrder.
    let h = raw.header_jwk(&acct.key, &new_order).await;
    let doc = raw
        .post(&new_order, &h, order_payload.as_bytes(), &acct.key)
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("kid"), "{doc}");

    // No url.
    let mut h = raw.header_kid(&acct, &new_order).await;
    h.as_object_mut().unwrap().remove("url");
    raw.post(&new_order, &h, order_payload.as_bytes(), &acct.key)
        .await
        .problem(400, "malformed");

    // Protected header that is not JSON.
    let r = raw
        .post_jws(&new_order, &jws_bytes(b"{nope", b"{}", &acct.key))
        .await;
    r.problem(400, "malformed");

    // Signed with one key, claiming another.
    let other = Key::es256();
    let h = raw.header_jwk(&other, &new_account).await;
    let doc = raw
        .post(&new_account, &h, b"{}", &acct.key)
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("signature"), "{doc}");
}

#[tokio::test]
async fn malformed_payloads() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let (order_url, order) = raw.new_order(&acct, &[dns("payload.test")]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();

    // A payload on a POST-as-GET resource.
    let doc = raw
        .post_kid(&acct, &order_url, Some(&json!({})))
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("POST-as-GET"), "{doc}");

    // POST-as-GET where a payload is required.
    let doc = raw
        .post_kid(&acct, &raw.url("newOrder"), None)
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("payload"), "{doc}");

    // A payload that is not the expected object; an order with no identifiers.
    raw.post_kid(
        &acct,
        &raw.url("newOrder"),
        Some(&json!({"identifiers": "x"})),
    )
    .await
    .problem(400, "malformed");
    raw.post_kid(
        &acct,
        &raw.url("newOrder"),
        Some(&json!({"identifiers": []})),
    )
    .await
    .problem(400, "malformed");
    raw.post_kid(
        &acct,
        &raw.url("newOrder"),
        Some(&json!({"identifiers": [dns("t.test")], "notAfter": "tomorrow"})),
    )
    .await
    .problem(400, "malformed");

    // An unknown challenge type.
    let bogus = authz_url.replace("/authz/", "/chall/") + "/http-02";
    let doc = raw
        .post_kid(&acct, &bogus, Some(&json!({})))
        .await
        .problem(404, "malformed");
    assert!(detail(&doc).contains("http-02"), "{doc}");

    // An authorization can only be deactivated.
    raw.post_kid(&acct, &authz_url, Some(&json!({"status": "valid"})))
        .await
        .problem(400, "malformed");

    // Bad base64 in the CSR (the order is ready, so only the encoding is wrong).
    let order = raw
        .make_ready(&ts.responders, &acct, &order_url, "http-01")
        .await;
    let doc = raw
        .post_kid(
            &acct,
            order["finalize"].as_str().unwrap(),
            Some(&json!({"csr": "not*base64!"})),
        )
        .await
        .problem(400, "malformed");
    assert!(detail(&doc).contains("base64url"), "{doc}");
}

#[tokio::test]
async fn transport_errors_are_problems() {
    let (ts, raw) = server().await;
    let key = Key::es256();
    let url = raw.url("newAccount");

    // Content-Type other than application/jose+json: 415.
    let h = raw.header_jwk(&key, &url).await;
    let body = jws(&h, b"{}", &key).to_string().into_bytes();
    let doc = raw
        .post_raw(&url, "application/json", body)
        .await
        .problem(415, "malformed");
    assert!(detail(&doc).contains("application/jose+json"), "{doc}");

    // More than 64 KiB: 413.
    let big = vec![b'a'; 70 * 1024];
    let doc = raw
        .post_raw(&url, "application/jose+json", big)
        .await
        .problem(413, "malformed");
    assert!(detail(&doc).contains("larger"), "{doc}");

    // GET on a POST resource: 405 with Allow.
    for name in ["newAccount", "newOrder", "revokeCert", "keyChange"] {
        let r = raw.get(&raw.url(name)).await;
        r.problem(405, "malformed");
        assert!(
            r.header("allow").unwrap_or_default().contains("POST"),
            "{name}"
        );
    }

    // Unknown provisioner: 404 on POST and GET, and an unknown resource.
    let other = url.replace("/acme/acme/", "/acme/nope/");
    let h = raw.header_jwk(&key, &other).await;
    let doc = raw
        .post(&other, &h, b"{}", &key)
        .await
        .problem(404, "malformed");
    assert!(detail(&doc).contains("nope"), "{doc}");
    raw.get(&ts.url("/acme/nope/directory"))
        .await
        .problem(404, "malformed");
    raw.get(&ts.url("/acme/nope/new-nonce"))
        .await
        .problem(404, "malformed");
    raw.get(&ts.url("/acme/acme/no-such-thing"))
        .await
        .problem(404, "malformed");
}

#[tokio::test]
async fn unauthorized_url_foreign_resources_and_deactivated_account() {
    let (ts, raw) = server().await;
    let alice = raw.register(Key::es256()).await;
    let bob = raw.register(Key::es256()).await;

    // The JWS url is not the URL requested.
    let new_order = raw.url("newOrder");
    let h = raw.header_kid(&alice, &raw.url("newAccount")).await;
    let payload = json!({"identifiers": [dns("u.test")]}).to_string();
    let doc = raw
        .post(&new_order, &h, payload.as_bytes(), &alice.key)
        .await
        .problem(403, "unauthorized");
    assert!(detail(&doc).contains("url"), "{doc}");

    // Alice's resources are 404 to Bob (not even their existence leaks).
    let issued = raw.issue(&ts.responders, &alice, &["alice.test"]).await;
    let authz_url = issued.order["authorizations"][0].as_str().unwrap();
    let authz = raw.fetch(&alice, authz_url).await;
    let chall_url = authz["challenges"][0]["url"].as_str().unwrap();
    for url in [
        issued.order_url.as_str(),
        authz_url,
        chall_url,
        issued.cert_url.as_str(),
    ] {
        let doc = raw
            .post_kid(&bob, url, None)
            .await
            .problem(404, "malformed");
        assert!(detail(&doc).contains("no such"), "{url}: {doc}");
    }
    raw.post_kid(&bob, authz_url, Some(&json!({"status": "deactivated"})))
        .await
        .problem(404, "malformed");
    let key = rcgen::KeyPair::generate().unwrap();
    raw.finalize(&bob, &issued.order, &csr(&["alice.test"], &key))
        .await
        .problem(404, "malformed");

    // Bob cannot read or change Alice's account, nor list her orders.
    raw.post_kid(&bob, &alice.kid, None)
        .await
        .problem(403, "unauthorized");
    raw.post_kid(&bob, &format!("{}/orders", alice.kid), None)
        .await
        .problem(403, "unauthorized");

    // Bob cannot revoke Alice's certificate.
    let doc = raw
        .revoke_kid(&bob, &issued.leaf_der, None)
        .await
        .problem(403, "unauthorized");
    assert!(detail(&doc).contains("neither ordered"), "{doc}");
    // ... until Bob holds valid authorizations for all its names (RFC 8555 §7.6).
    raw.issue(&ts.responders, &bob, &["alice.test"]).await;
    let revoked = raw.revoke_kid(&bob, &issued.leaf_der, Some(4)).await;
    assert_eq!(
        revoked.status, 200,
        "a holder of valid authorizations may revoke"
    );

    // A deactivated account can no longer sign anything: 401 (RFC 8555 §7.3.6).
    raw.post_kid(&bob, &bob.kid, Some(&json!({"status": "deactivated"})))
        .await
        .ok(200);
    let doc = raw
        .post_kid(
            &bob,
            &new_order,
            Some(&json!({"identifiers": [dns("b.test")]})),
        )
        .await
        .problem(401, "unauthorized");
    assert!(detail(&doc).contains("deactivated"), "{doc}");
}

#[tokio::test]
async fn account_does_not_exist() {
    let (_ts, raw) = server().await;
    let doc = raw
        .new_account(&Key::es256(), &json!({"onlyReturnExisting": true}))
        .await
        .problem(400, "accountDoesNotExist");
    assert!(detail(&doc).contains("onlyReturnExisting"), "{doc}");

    let ghost = Account {
        key: Key::es256(),
        kid: raw
            .url("newAccount")
            .replace("/new-account", "/account/AAAAAAAAAAAAAAAAAAAAAA"),
    };
    let doc = raw
        .post_kid(
            &ghost,
            &raw.url("newOrder"),
            Some(&json!({"identifiers": [dns("g.test")]})),
        )
        .await
        .problem(400, "accountDoesNotExist");
    assert!(detail(&doc).contains("AAAAAAAAAAAAAAAAAAAAAA"), "{doc}");

    let elsewhere = Account {
        key: Key::es256(),
        kid: "https://elsewhere.test/acme/acme/account/1".to_owned(),
    };
    raw.post_kid(
        &elsewhere,
        &raw.url("newOrder"),
        Some(&json!({"identifiers": [dns("g.test")]})),
    )
    .await
    .problem(400, "accountDoesNotExist");
}

#[tokio::test]
async fn external_account_binding() {
    let ts = TestServer::start_with(Options {
        require_eab: true,
        ..Options::default()
    })
    .await;
    let raw = Raw::new(&ts).await;
    assert_eq!(raw.dir["meta"]["externalAccountRequired"], true);
    let authority = ts.server.as_ref().unwrap().authority();
    let record = authority.create_eab_key("acme", None, None).await.unwrap();
    let url = raw.url("newAccount");

    // No binding.
    let key = Key::es256();
    let doc = raw
        .new_account(&key, &json!({"termsOfServiceAgreed": true}))
        .await
        .problem(403, "externalAccountRequired");
    assert!(detail(&doc).contains("External Account Binding"), "{doc}");

    // Unknown kid, wrong MAC.
    let unknown = eab("no-such-kid", &record.hmac_key, &key.jwk(), &url);
    raw.new_account(&key, &json!({"externalAccountBinding": unknown}))
        .await
        .problem(403, "unauthorized");
    let wrong = eab(&record.kid, &[0u8; 32], &key.jwk(), &url);
    let doc = raw
        .new_account(&key, &json!({"externalAccountBinding": wrong}))
        .await
        .problem(403, "unauthorized");
    assert!(detail(&doc).contains("MAC"), "{doc}");

    // A binding for another URL, or over another key, is malformed.
    let bad_url = eab(&record.kid, &record.hmac_key, &key.jwk(), "https://x.test/");
    raw.new_account(&key, &json!({"externalAccountBinding": bad_url}))
        .await
        .problem(400, "malformed");
    let bad_key = eab(&record.kid, &record.hmac_key, &Key::es256().jwk(), &url);
    raw.new_account(&key, &json!({"externalAccountBinding": bad_key}))
        .await
        .problem(400, "malformed");

    // The right binding registers, and the account echoes it.
    let good = eab(&record.kid, &record.hmac_key, &key.jwk(), &url);
    let body = raw
        .new_account(&key, &json!({"externalAccountBinding": good}))
        .await
        .ok(201);
    assert_eq!(body["externalAccountBinding"], good);

    // The same EAB key cannot register a second account.
    let second = Key::es256();
    let again = eab(&record.kid, &record.hmac_key, &second.jwk(), &url);
    let doc = raw
        .new_account(&second, &json!({"externalAccountBinding": again}))
        .await
        .problem(403, "unauthorized");
    assert!(detail(&doc).contains("already bound"), "{doc}");
}

#[tokio::test]
async fn user_action_required_until_the_terms_are_agreed() {
    let tos = "https://example.test/terms";
    let ts = TestServer::start_with(Options {
        provisioner_extra: json!({"termsOfService": tos}),
        ..Options::default()
    })
    .await;
    let raw = Raw::new(&ts).await;
    assert_eq!(raw.dir["meta"]["termsOfService"], tos);
    let key = Key::es256();
    for payload in [json!({}), json!({"termsOfServiceAgreed": false})] {
        let doc = raw
            .new_account(&key, &payload)
            .await
            .problem(403, "userActionRequired");
        assert!(detail(&doc).contains("termsOfServiceAgreed"), "{doc}");
    }
    let body = raw
        .new_account(&key, &json!({"termsOfServiceAgreed": true}))
        .await
        .ok(201);
    assert_eq!(body["termsOfServiceAgreed"], true);
}

#[tokio::test]
async fn rejected_and_unsupported_identifiers() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let url = raw.url("newOrder");
    for (name, needle) in [
        ("exa mple.test", "characters"),
        ("-dash.test", "'-'"),
        ("empty..test", "empty label"),
        ("under_score.test", "characters"),
        ("dot.test.", "dot"),
        ("10.0.0.1", "IP address"),
        ("a.*.test", "wildcard"),
        ("*.test", "wildcard"),
    ] {
        let doc = raw
            .post_kid(&acct, &url, Some(&json!({"identifiers": [dns(name)]})))
            .await
            .problem(400, "rejectedIdentifier");
        assert!(detail(&doc).contains(needle), "{name}: {doc}");
        assert_eq!(doc["identifier"]["type"], "dns", "{doc}");
    }
    // Several at once: one problem with a subproblem each.
    let doc = raw
        .post_kid(
            &acct,
            &url,
            Some(&json!({"identifiers": [dns("ok.test"), dns("a..b"), dns("x.*.y")]})),
        )
        .await
        .problem(400, "rejectedIdentifier");
    let subs = doc["subproblems"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{doc}");
    for s in subs {
        assert_problem_doc(s, 400, "rejectedIdentifier");
    }
    // An IP that can never be certified.
    raw.post_kid(&acct, &url, Some(&json!({"identifiers": [ip("0.0.0.0")]})))
        .await
        .problem(400, "rejectedIdentifier");

    let doc = raw
        .post_kid(
            &acct,
            &url,
            Some(&json!({"identifiers": [{"type": "email", "value": "a@b.test"}]})),
        )
        .await
        .problem(400, "unsupportedIdentifier");
    assert!(detail(&doc).contains("email"), "{doc}");
}

#[tokio::test]
async fn bad_csr_and_order_not_ready() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let (order_url, order) = raw.new_order(&acct, &[dns("csr.test")]).await;
    let key = rcgen::KeyPair::generate().unwrap();

    let doc = raw
        .finalize(&acct, &order, &csr(&["csr.test"], &key))
        .await
        .problem(403, "orderNotReady");
    assert!(detail(&doc).contains("pending"), "{doc}");

    let order = raw
        .make_ready(&ts.responders, &acct, &order_url, "http-01")
        .await;
    let cases: [(Vec<u8>, &str); 4] = [
        (csr(&["other.test"], &key), "other.test"),
        (csr(&["csr.test", "extra.test"], &key), "extra.test"),
        (csr(&["csr.test"], &acct.key.rcgen()), "account key"),
        (b"\x30\x03\x02\x01\x00garbage".to_vec(), "DER"),
    ];
    for (der, needle) in cases {
        let doc = raw
            .finalize(&acct, &order, &der)
            .await
            .problem(400, "badCSR");
        assert!(detail(&doc).contains(needle), "{needle}: {doc}");
    }
    // The order is still ready after refused CSRs, and a good one finalizes.
    assert_eq!(raw.fetch(&acct, &order_url).await["status"], "ready");
    raw.finalize(&acct, &order, &csr(&["csr.test"], &key))
        .await
        .ok(200);
    let done = raw
        .poll(&acct, &order_url, |v| v["status"] == "valid")
        .await;
    // The same finalize again (its answer lost on the way) answers the
    // valid order; a CSR for another key is refused as not ready.
    let again = raw
        .finalize(&acct, &done, &csr(&["csr.test"], &key))
        .await
        .ok(200);
    assert_eq!(again["status"], "valid", "{again}");
    assert_eq!(again["certificate"], done["certificate"], "{again}");
    let other = rcgen::KeyPair::generate().unwrap();
    let doc = raw
        .finalize(&acct, &done, &csr(&["csr.test"], &other))
        .await
        .problem(403, "orderNotReady");
    assert!(detail(&doc).contains("valid"), "{doc}");
}

#[tokio::test]
async fn revocation_reason_and_already_revoked() {
    let (ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let issued = raw.issue(&ts.responders, &acct, &["revoke.test"]).await;
    for reason in [7, 100, -1] {
        let doc = raw
            .revoke_kid(&acct, &issued.leaf_der, Some(reason))
            .await
            .problem(400, "badRevocationReason");
        assert!(detail(&doc).contains(&reason.to_string()), "{doc}");
    }
    let r = raw.revoke_kid(&acct, &issued.leaf_der, Some(4)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let doc = raw
        .revoke_kid(&acct, &issued.leaf_der, None)
        .await
        .problem(400, "alreadyRevoked");
    assert!(detail(&doc).contains("already revoked"), "{doc}");
    // Something that is not a certificate of this server.
    raw.revoke_kid(&acct, b"\x30\x00", None)
        .await
        .problem(400, "malformed");
}

/// What the client publishes before answering a challenge.
#[derive(Clone, Copy, Debug)]
enum Publish {
    /// Nothing at all.
    Nothing,
    /// The correct http-01 answer (for a name whose address is closed).
    Correct,
    /// A wrong http-01 body.
    Wrong,
}

/// Validation problems travel inside the challenge and the order (RFC 8555
/// §7.1.3, §7.1.6): for each, order one identifier, answer the challenge and
/// check the problem on the challenge and on the order.
#[tokio::test]
async fn validation_problems_on_challenge_and_order() {
    let (ts, raw) = server().await;
    // closed.test resolves to 127.0.0.2, where nothing listens on the http-01
    // port: the validator must connect to the address it resolved.
    let closed: IpAddr = "127.0.0.2".parse().unwrap();
    ts.responders.dns.set_a("closed.test", vec![closed]);
    let closed_addr = format!("127.0.0.2:{}", ts.responders.http_port());
    let cases = [
        (
            dns("closed.test"),
            "http-01",
            Publish::Correct,
            400,
            "connection",
            closed_addr.as_str(),
        ),
        (
            dns("notxt.test"),
            "dns-01",
            Publish::Nothing,
            400,
            "dns",
            "_acme-challenge.notxt.test",
        ),
        (
            dns("wrong.test"),
            "http-01",
            Publish::Wrong,
            400,
            "incorrectResponse",
            // The body itself is never shown (issue 11): its length is.
            "a body of 16 bytes",
        ),
        (
            dns("nocert.test"),
            "tls-alpn-01",
            Publish::Nothing,
            400,
            "tls",
            "acme-tls/1",
        ),
        (
            ip("127.0.0.1"),
            "http-01",
            Publish::Nothing,
            403,
            "unauthorized",
            "404",
        ),
    ];
    for (identifier, kind, publish, status, problem, needle) in cases {
        let acct = raw.register(Key::es256()).await;
        let (order_url, order) = raw.new_order(&acct, &[identifier]).await;
        let authz_url = order["authorizations"][0].as_str().unwrap();
        let authz = raw.fetch(&acct, authz_url).await;
        let ch = Raw::challenge(&authz, kind);
        let token = ch["token"].as_str().unwrap();
        match publish {
            Publish::Nothing => {}
            Publish::Correct => Raw::publish(&ts.responders, &acct, &authz, &ch),
            Publish::Wrong => ts.responders.set_http01(token, "not-the-key-auth"),
        }
        raw.answer(&acct, &ch).await.ok(200);
        let authz = raw
            .poll(&acct, authz_url, |v| v["status"] != "pending")
            .await;
        assert_eq!(authz["status"], "invalid", "{problem}: {authz}");
        let ch = raw.fetch(&acct, ch["url"].as_str().unwrap()).await;
        assert_eq!(ch["status"], "invalid", "{ch}");
        assert_problem_doc(&ch["error"], status, problem);
        assert!(detail(&ch["error"]).contains(needle), "{needle}: {ch}");
        let order = raw.fetch(&acct, &order_url).await;
        assert_eq!(order["status"], "invalid", "{order}");
        assert_problem_doc(&order["error"], status, problem);
        assert_eq!(order["error"]["identifier"], authz["identifier"]);
    }
}

/// A store that fails every write to the accounts table, with a message the
/// client must never see.
struct FailingAccounts(MemoryStore);

const SECRET: &str = "sled I/O error on /var/secret/db";

#[async_trait::async_trait]
impl Store for FailingAccounts {
    fn backend_name(&self) -> &'static str {
        "failing"
    }
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key).await
    }
    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.iter().any(|o| o.table == Table::Accounts) {
            return Err(StoreError::backend(
                SECRET,
                std::io::Error::other("disk on fire"),
            ));
        }
        self.0.commit(ops).await
    }
    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.0.scan(table, prefix, after, limit).await
    }
    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        self.0.count(table).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.0.check_writable().await
    }
}

#[tokio::test]
async fn server_internal_hides_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let upstream: Arc<dyn CertificateAuthorityService> = Arc::new(
        SoftCas::open(SoftCasOptions {
            dir: dir.path().join("softcas"),
            name: "errors".to_owned(),
            default_lifetime: Duration::from_secs(86_400),
            sign_delay: Duration::ZERO,
        })
        .unwrap(),
    );
    let resolver =
        HickoryResolver::new(&["127.0.0.1:9".parse().unwrap()], Duration::from_secs(1)).unwrap();
    let validator = Validator::new(ValidationSettings {
        http_port: 80,
        tls_alpn_port: 443,
        timeout: Duration::from_secs(1),
        resolver: Arc::new(resolver),
        egress: Default::default(),
    });
    let store: Arc<dyn Store> = Arc::new(FailingAccounts(MemoryStore::new()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ra = Authority::new(
        Records::new(Arc::clone(&store)),
        Arc::clone(&clock),
        validator,
        upstream,
        vec![Provisioner {
            name: "acme".to_owned(),
            challenges: vec![ChallengeType::Http01],
            require_eab: false,
            policies: Vec::new(),
            default_lifetime: Some(time::Duration::days(1)),
            min_lifetime: time::Duration::minutes(5),
            max_lifetime: time::Duration::days(10),
            terms_of_service: None,
            website: None,
            caa_identities: Vec::new(),
            profiles: Default::default(),
        }],
        AuthorityOptions::default(),
        CancellationToken::new(),
    );
    let nonces = NonceService::new(clock, time::Duration::minutes(5));
    let app = router(AppState { ra, nonces });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let raw = Raw::connect(
        &format!("http://{addr}/acme/acme/directory"),
        reqwest::Client::new(),
    )
    .await;
    // The server builds https URLs; the JWS must name them.
    assert!(
        raw.url("newAccount")
            .starts_with(&format!("https://{addr}/"))
    );
    let doc = raw
        .new_account(&Key::es256(), &json!({"termsOfServiceAgreed": true}))
        .await
        .problem(500, "serverInternal");
    let d = detail(&doc);
    assert!(
        !d.contains("sled") && !d.contains("secret") && !d.contains("fire"),
        "{d}"
    );
    assert!(d.contains("log"), "{d}");
}

/// Client-chosen notBefore/notAfter lie within [now - 1 h, now + the
/// provisioner's maximum lifetime]; anything else is `malformed` at newOrder,
/// naming the field (a far-future notBefore used to pass and then panic the
/// finalize worker on every start).
#[tokio::test]
async fn order_times_out_of_range_are_malformed_at_new_order() {
    let (_ts, raw) = server().await;
    let acct = raw.register(Key::es256()).await;
    let now = OffsetDateTime::now_utc();
    let at = |d: time::Duration| {
        (now + d)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    for (field, value) in [
        ("notBefore", "9999-12-31T00:00:00Z".to_owned()),
        ("notAfter", "9999-12-31T00:00:00Z".to_owned()),
        ("notBefore", at(-time::Duration::hours(2))),
        ("notBefore", "0001-01-01T00:00:00Z".to_owned()),
    ] {
        let doc = raw
            .post_kid(
                &acct,
                &raw.url("newOrder"),
                Some(&json!({"identifiers": [dns("t.test")], field: value})),
            )
            .await
            .problem(400, "malformed");
        let d = detail(&doc);
        assert!(
            d.contains(field) && d.contains("out of range") && d.contains("maximum lifetime"),
            "{field} {value}: {d}"
        );
    }
    // Inside the range: accepted.
    raw.post_kid(
        &acct,
        &raw.url("newOrder"),
        Some(&json!({"identifiers": [dns("t.test")],
            "notBefore": at(time::Duration::minutes(-30)), "notAfter": at(time::Duration::days(30))})),
    )
    .await
    .ok(201);
}

/// Panics when asked to sign for `panic.test`; signs everything else with
/// softcas (the RA's own certificate included).
struct PanickingUpstream(SoftCas);

#[async_trait::async_trait]
impl CertificateAuthorityService for PanickingUpstream {
    fn name(&self) -> &'static str {
        "panicking"
    }

    async fn create_certificate(
        &self,
        req: &acmeproxy::upstream::SignRequest,
        checkpoint: &dyn acmeproxy::upstream::Checkpoint,
    ) -> Result<acmeproxy::upstream::IssuedChain, acmeproxy::upstream::UpstreamError> {
        if req
            .identifiers
            .iter()
            .any(|i| i.to_string().contains("panic.test"))
        {
            panic!("a bug in the upstream adapter");
        }
        self.0.create_certificate(req, checkpoint).await
    }

    async fn revoke_certificate(
        &self,
        req: &acmeproxy::upstream::RevokeRequest,
    ) -> Result<(), acmeproxy::upstream::UpstreamError> {
        self.0.revoke_certificate(req).await
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        self.0.roots()
    }
}

/// A finalize job that panics ends its order `invalid` with
/// `serverInternal`, once: it is not retried, and the worker goes on.
#[tokio::test]
async fn a_panicking_finalize_job_ends_its_order_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let softcas = SoftCas::open(SoftCasOptions {
        dir: dir.path().join("softcas"),
        name: "panics".to_owned(),
        default_lifetime: Duration::from_secs(86_400),
        sign_delay: Duration::ZERO,
    })
    .unwrap();
    let ts =
        TestServer::start_with_upstream(Options::default(), Arc::new(PanickingUpstream(softcas)))
            .await;
    let raw = Raw::new(&ts).await;
    let acct = raw.register(Key::es256()).await;
    for (name, want) in [("panic.test", "invalid"), ("fine.test", "valid")] {
        let (order_url, order) = raw.new_order(&acct, &[dns(name)]).await;
        let authz_url = order["authorizations"][0].as_str().unwrap();
        let authz = raw.fetch(&acct, authz_url).await;
        let ch = Raw::challenge(&authz, "http-01");
        Raw::publish(&ts.responders, &acct, &authz, &ch);
        raw.answer(&acct, &ch).await.ok(200);
        raw.poll(&acct, &order_url, |o| o["status"] == "ready")
            .await;
        let key = rcgen::KeyPair::generate().unwrap();
        let resp = raw
            .post_kid(
                &acct,
                order["finalize"].as_str().unwrap(),
                Some(&json!({"csr": b64(&csr(&[name], &key))})),
            )
            .await;
        assert!(resp.status == 200, "finalize: {}", resp.status);
        let done = raw
            .poll(&acct, &order_url, |o| {
                o["status"] == "valid" || o["status"] == "invalid"
            })
            .await;
        assert_eq!(done["status"], want, "{name}: {done}");
        if want == "invalid" {
            assert_eq!(
                done["error"]["type"],
                "urn:ietf:params:acme:error:serverInternal"
            );
            assert!(
                !done["error"]["detail"]
                    .as_str()
                    .unwrap()
                    .contains("adapter"),
                "the panic message stays in the log: {done}"
            );
        }
    }
}

/// The name policy of an EAB key stays with the account bound with it when
/// the key is removed, and the key's MAC key is erased once it is bound.
#[tokio::test]
async fn eab_policy_survives_key_removal_and_the_mac_key_is_erased() {
    let ts = TestServer::start_with(Options {
        require_eab: true,
        ..Options::default()
    })
    .await;
    let raw = Raw::new(&ts).await;
    let ra = ts.server.as_ref().unwrap().authority();
    let policy = acmeproxy::model::EabPolicy {
        allow_dns: vec![".team.test".into()],
        ..Default::default()
    };
    let record = ra
        .create_eab_key("acme", Some("team".into()), Some(policy))
        .await
        .unwrap();
    let key = Key::es256();
    let binding = eab(
        &record.kid,
        &record.hmac_key,
        &key.jwk(),
        &raw.url("newAccount"),
    );
    let resp = raw
        .new_account(
            &key,
            &json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding}),
        )
        .await;
    resp.ok(201);
    let acct = Account {
        key,
        kid: resp.location(),
    };
    let stored = ra.eab_keys().await.unwrap();
    assert!(stored[0].bound_account.is_some());
    assert!(
        stored[0].hmac_key.is_empty(),
        "the bound key's MAC key is erased"
    );

    ra.remove_eab_key("team").await.unwrap();
    let doc = raw
        .post_kid(
            &acct,
            &raw.url("newOrder"),
            Some(&json!({"identifiers": [dns("www.other.test")]})),
        )
        .await
        .problem(400, "rejectedIdentifier");
    assert!(detail(&doc).contains("team"), "{doc}");
    raw.new_order(&acct, &[dns("www.team.test")]).await;
}

/// Over HTTP/2, a POST with a body to an unknown resource (or with a method
/// the resource does not take) gets its problem document every time: the
/// server drains the body before answering, so the stream ends cleanly
/// (it used to end in a reset, `curl: (92)`, in most tries).
#[tokio::test]
async fn early_errors_over_http2_end_their_streams_cleanly() {
    let Some(curl) = kit::find_in_path("curl") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is not installed (CI is set)"
        );
        eprintln!("SKIPPED: curl is not installed");
        return;
    };
    let (ts, _raw) = server().await;
    let body = ts.dir.path().join("body");
    std::fs::write(&body, "x".repeat(20_000)).unwrap();
    for (method, path, status) in [
        ("POST", "/acme/acme/no-such-resource", "404"),
        ("PUT", "/acme/acme/directory", "405"),
    ] {
        let mut cmd = std::process::Command::new(&curl);
        cmd.args(["--http2", "-s", "--cacert"])
            .arg(&ts.root_file)
            .args(["-X", method, "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "%{http_version} %{http_code} %{content_type}\\n"]);
        for _ in 0..100 {
            cmd.args(["-o", "/dev/null", &ts.url(path)]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("2 {status} application/problem+json");
        let good = text.lines().filter(|l| *l == want).count();
        assert_eq!(
            good,
            100,
            "{method} {path}: {good} of 100 answered {want:?}; curl said:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
