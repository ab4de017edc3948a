//! Tests for the flattened JWS and JWK layer, and test keys shared with the
//! EAB and CSR tests.

use acmeproxy_testkit::raw::{Key, jws};
use serde_json::{Value, json};

use super::*;

/// The test kit's 2048-bit RSA key (PKCS#8): ring cannot generate RSA keys.
pub(crate) use acmeproxy_testkit::raw::RSA_2048_PKCS8_PEM;

/// A signing key for tests: the test kit's raw-client key, whose JWK is
/// built from ring's raw public key, not through our SPKI code.
pub(crate) struct TestKey(Key);

impl TestKey {
    pub(crate) fn p256() -> Self {
        Self(Key::es256())
    }

    pub(crate) fn p384() -> Self {
        Self(Key::es384())
    }

    pub(crate) fn ed25519() -> Self {
        Self(Key::ed25519())
    }

    pub(crate) fn rsa() -> Self {
        Self(Key::rsa())
    }

    pub(crate) fn alg(&self) -> &'static str {
        self.0.alg()
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        self.0.pkcs8()
    }

    /// The public JWK as JSON.
    pub(crate) fn jwk_json(&self) -> Value {
        self.0.jwk()
    }

    pub(crate) fn jwk(&self) -> PublicJwk {
        PublicJwk::from_json(&self.jwk_json()).unwrap()
    }

    /// A flattened JWS over `header` and `payload`, signed with this key.
    pub(crate) fn jws(&self, header: &Value, payload: &[u8]) -> Value {
        jws(header, payload, &self.0)
    }
}

fn header(key: &TestKey) -> Value {
    json!({
        "alg": key.alg(),
        "nonce": "n0nce",
        "url": "https://ca.example/acme/new-order",
        "jwk": key.jwk_json(),
    })
}

fn all_keys() -> Vec<TestKey> {
    vec![
        TestKey::p256(),
        TestKey::p384(),
        TestKey::ed25519(),
        TestKey::rsa(),
    ]
}

fn malformed(r: Result<FlattenedJws, JwsError>, needle: &str) {
    match r {
        Err(JwsError::Malformed(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Malformed containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn every_algorithm_verifies() {
    for key in all_keys() {
        let body = key.jws(&header(&key), br#"{"identifiers":[]}"#).to_string();
        let jws = FlattenedJws::parse(body.as_bytes()).unwrap();
        assert_eq!(jws.header.alg, key.alg());
        assert_eq!(jws.header.nonce.as_deref(), Some("n0nce"));
        assert_eq!(
            jws.header.url.as_deref(),
            Some("https://ca.example/acme/new-order")
        );
        assert!(jws.header.kid.is_none());
        let jwk = PublicJwk::from_json(jws.header.jwk.as_ref().unwrap()).unwrap();
        assert_eq!(jwk, key.jwk());
        jws.verify(&jwk).unwrap();
        let payload: Value = jws.payload_json().unwrap();
        assert_eq!(payload, json!({ "identifiers": [] }));
        assert!(!jws.is_post_as_get());
    }
}

#[test]
fn tampered_payload_and_wrong_key_fail() {
    for key in all_keys() {
        let mut v = key.jws(&header(&key), b"{}");
        v["payload"] = json!(b64(b"{\"x\":1}"));
        let jws = FlattenedJws::parse_value(&v).unwrap();
        assert!(matches!(
            jws.verify(&key.jwk()),
            Err(JwsError::BadSignature)
        ));
    }
    let (signer, other) = (TestKey::p256(), TestKey::p256());
    let jws = FlattenedJws::parse_value(&signer.jws(&header(&signer), b"{}")).unwrap();
    assert!(matches!(
        jws.verify(&other.jwk()),
        Err(JwsError::BadSignature)
    ));
}

#[test]
fn post_as_get_has_empty_payload() {
    let key = TestKey::ed25519();
    let mut h = header(&key);
    h.as_object_mut().unwrap().remove("jwk");
    h["kid"] = json!("https://ca.example/acme/acct/1");
    let jws = FlattenedJws::parse_value(&key.jws(&h, b"")).unwrap();
    assert!(jws.is_post_as_get());
    assert_eq!(
        jws.header.kid.as_deref(),
        Some("https://ca.example/acme/acct/1")
    );
    jws.verify(&key.jwk()).unwrap();
}

#[test]
fn alg_must_fit_the_key() {
    let p256 = TestKey::p256();
    let mut h = header(&p256);
    h["alg"] = json!("ES384");
    let jws = FlattenedJws::parse_value(&p256.jws(&h, b"{}")).unwrap();
    match jws.verify(&p256.jwk()) {
        Err(JwsError::BadSignatureAlgorithm(m)) => assert!(m.contains("ES256"), "{m}"),
        other => panic!("{other:?}"),
    }
    let rsa = TestKey::rsa();
    for alg in ["ES256", "EdDSA"] {
        assert!(matches!(
            rsa.jwk().verify(alg, b"x", b"y"),
            Err(JwsError::BadSignatureAlgorithm(_))
        ));
    }
    assert!(matches!(
        TestKey::ed25519().jwk().verify("RS256", b"x", b"y"),
        Err(JwsError::BadSignatureAlgorithm(_))
    ));
}

#[test]
fn refuses_none_mac_and_unknown_algs() {
    let key = TestKey::p256();
    for alg in ["none", "HS256", "HS512", "PS256", "ES512"] {
        let mut h = header(&key);
        h["alg"] = json!(alg);
        match FlattenedJws::parse_value(&key.jws(&h, b"{}")) {
            Err(JwsError::BadSignatureAlgorithm(m)) => {
                assert!(m.contains("RS256, ES256, ES384, EdDSA"), "{m}");
            }
            other => panic!("{alg}: {other:?}"),
        }
        assert!(matches!(
            key.jwk().verify(alg, b"x", b"y"),
            Err(JwsError::BadSignatureAlgorithm(_))
        ));
    }
}

#[test]
fn refuses_malformed_envelopes() {
    let key = TestKey::p256();
    let good = key.jws(&header(&key), b"{}");

    let mut both = header(&key);
    both["kid"] = json!("https://ca.example/acme/acct/1");
    malformed(
        FlattenedJws::parse_value(&key.jws(&both, b"{}")),
        "not both",
    );

    let general = json!({ "payload": good["payload"], "signatures": [
        { "protected": good["protected"], "signature": good["signature"] }
    ]});
    malformed(FlattenedJws::parse_value(&general), "general serialization");

    let mut unprotected = good.clone();
    unprotected["header"] = json!({ "kid": "x" });
    malformed(FlattenedJws::parse_value(&unprotected), "unprotected");

    let mut extra = good.clone();
    extra["extra"] = json!(1);
    malformed(FlattenedJws::parse_value(&extra), "\"extra\"");

    let compact = format!(
        "{}.{}.{}",
        good["protected"].as_str().unwrap(),
        good["payload"].as_str().unwrap(),
        good["signature"].as_str().unwrap()
    );
    malformed(FlattenedJws::parse(compact.as_bytes()), "compact");
    malformed(FlattenedJws::parse(b"{not json"), "not JSON");
    malformed(FlattenedJws::parse_value(&json!([1])), "flattened");

    let mut padded = good.clone();
    padded["payload"] = json!("e30=");
    malformed(FlattenedJws::parse_value(&padded), "base64url");
    let mut std_b64 = good.clone();
    std_b64["signature"] = json!("ab+/");
    malformed(FlattenedJws::parse_value(&std_b64), "base64url");

    let mut not_object = good.clone();
    not_object["protected"] = json!(b64(b"[1,2]"));
    malformed(FlattenedJws::parse_value(&not_object), "not a JSON object");

    let mut detached = good.clone();
    detached.as_object_mut().unwrap().remove("payload");
    malformed(FlattenedJws::parse_value(&detached), "\"payload\"");

    let mut no_alg = header(&key);
    no_alg.as_object_mut().unwrap().remove("alg");
    malformed(
        FlattenedJws::parse_value(&key.jws(&no_alg, b"{}")),
        "\"alg\"",
    );

    let mut bad_type = header(&key);
    bad_type["nonce"] = json!(5);
    malformed(
        FlattenedJws::parse_value(&key.jws(&bad_type, b"{}")),
        "\"nonce\"",
    );

    let mut crit = header(&key);
    crit["crit"] = json!(["b64"]);
    crit["b64"] = json!(false);
    malformed(FlattenedJws::parse_value(&key.jws(&crit, b"{}")), "crit");
}

#[test]
fn rfc7638_thumbprint_example() {
    // RFC 7638 §3.1, with its optional members.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    let key = PublicJwk::from_json(&jwk).unwrap();
    assert_eq!(
        key.thumbprint(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    assert_eq!(
        key_authorization("tok", &key),
        "tok.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    // to_json drops the optional members and round-trips.
    let public = key.to_json();
    assert_eq!(public.as_object().unwrap().len(), 3);
    assert_eq!(PublicJwk::from_json(&public).unwrap(), key);
}

#[test]
fn thumbprints_are_canonical_for_ec_and_okp() {
    // Thumbprint of the exact RFC 7638 member order, computed independently.
    for key in [TestKey::p256(), TestKey::ed25519()] {
        let j = key.jwk_json();
        let canonical = match j["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                j["crv"].as_str().unwrap(),
                j["x"].as_str().unwrap(),
                j["y"].as_str().unwrap()
            ),
            _ => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                j["x"].as_str().unwrap()
            ),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        assert_eq!(key.jwk().thumbprint(), b64(digest.as_ref()));
    }
}

#[test]
fn leading_zeros_and_extra_members_do_not_change_the_key() {
    let key = TestKey::rsa();
    let mut j = key.jwk_json();
    let mut n = URL_SAFE_NO_PAD.decode(j["n"].as_str().unwrap()).unwrap();
    n.insert(0, 0);
    j["n"] = json!(b64(&n));
    j["use"] = json!("sig");
    let padded = PublicJwk::from_json(&j).unwrap();
    assert_eq!(padded, key.jwk());
    assert_eq!(padded.thumbprint(), key.jwk().thumbprint());
    assert_ne!(TestKey::p256().jwk(), TestKey::p256().jwk());
}

#[test]
fn spki_der_matches_jwk() {
    for key in all_keys() {
        let pair = rcgen::KeyPair::try_from(key.pkcs8()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
        let from_spki = PublicJwk::from_spki_der(&spki).unwrap();
        assert_eq!(from_spki, key.jwk(), "{}", key.alg());
        assert_eq!(from_spki.to_json(), key.jwk_json());
    }
    assert!(matches!(
        PublicJwk::from_spki_der(b"\x30\x03junk"),
        Err(JwsError::Malformed(_))
    ));
}

#[test]
fn refuses_bad_jwks() {
    let bad_key = |v: Value, needle: &str| match PublicJwk::from_json(&v) {
        Err(JwsError::BadPublicKey(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected BadPublicKey {needle:?}, got {other:?}"),
    };
    let mut private = TestKey::p256().jwk_json();
    private["d"] = json!(b64(&[1; 32]));
    bad_key(private, "private key material");

    let mut weak = vec![0x80u8];
    weak.extend_from_slice(&[0x11; 127]);
    bad_key(
        json!({ "kty": "RSA", "n": b64(&weak), "e": "AQAB" }),
        "1024 bits",
    );
    let mut rsa = TestKey::rsa().jwk_json();
    rsa["e"] = json!(b64(&[2]));
    bad_key(rsa, "exponent");

    bad_key(json!({ "kty": "oct", "kk": "AAAA" }), "\"oct\"");
    bad_key(
        json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }),
        "P-521",
    );
    bad_key(json!({ "kty": "OKP", "crv": "Ed448", "x": "AA" }), "Ed448");
    let mut short = TestKey::p256().jwk_json();
    short["x"] = json!(b64(&[1; 31]));
    bad_key(short, "32 bytes");
    bad_key(
        json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31]) }),
        "32 bytes",
    );

    for v in [
        json!("RSA"),
        json!({ "n": "AQAB" }),
        json!({ "kty": "EC", "crv": "P-256" }),
    ] {
        assert!(
            matches!(PublicJwk::from_json(&v), Err(JwsError::Malformed(_))),
            "{v}"
        );
    }
}
