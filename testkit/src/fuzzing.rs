//! Fuzz harnesses: one function per fuzz target, taking the raw input bytes.
//!
//! The coverage-guided fuzzer (`fuzz/`, `make fuzz`) calls these functions,
//! and so does `tests/acme/fuzz_corpus.rs`, which replays every file of
//! `fuzz/corpus/<target>/` as an ordinary test. Each harness feeds the input
//! to the code that reads client- or network-controlled data and checks what
//! must hold whatever the input: no panic, and the invariants asserted below.
//! A harness panics only when such an invariant breaks, which is the bug the
//! fuzzer reports.

use serde_json::Value;

use acmeproxy::acme::eab::EabBinding;
use acmeproxy::acme::jws::{FlattenedJws, PublicJwk, key_authorization};
use acmeproxy::acme::types::{
    AccountUpdateRequest, AuthorizationUpdateRequest, FinalizeRequest, KeyChangeInner,
    NewAccountRequest, NewOrderRequest, RawIdentifier, RevocationRequest,
};
use acmeproxy::config::Config;
use acmeproxy::policy::cert::{ari_cert_id, cert_info, pem_chain_to_der};
use acmeproxy::policy::csr::{check_against_order, parse_csr};
use acmeproxy::policy::identifiers::check_identifiers;
use acmeproxy::policy::rules::{NamePolicy, check_all};

/// A harness: takes the fuzzer's input.
pub type Harness = fn(&[u8]);

/// The fuzz targets, by name: the names of `fuzz/fuzz_targets/*.rs` and of
/// the corpus directories.
pub const TARGETS: [(&str, Harness); 7] = [
    ("jws", jws),
    ("csr", csr),
    ("acme_payload", acme_payload),
    ("config", config),
    ("http01_response", http01_response),
    ("tls_alpn01_cert", tls_alpn01_cert),
    ("dns_answer", dns_answer),
];

/// An Ed25519 account key (RFC 8037 §A.2's public key) for harnesses that
/// need one.
fn account_key() -> Option<PublicJwk> {
    let jwk = serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    });
    PublicJwk::from_json(&jwk).ok()
}

/// A name policy with every kind of rule, for the CSR and newOrder harnesses.
fn policy() -> Vec<NamePolicy> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    NamePolicy::new(
        "authority",
        &s(&[".example.com", "*.example.org", "example.net"]),
        &s(&["bad.example.com"]),
        &s(&["10.0.0.0/8", "2001:db8::/32"]),
        &s(&["10.9.0.0/16"]),
        true,
    )
    .map(|p| vec![p])
    .unwrap_or_default()
}

/// The JWS parser and verifier (RFC 8555 §6.2, RFC 7515, RFC 7517): a request
/// body as the server receives it.
pub fn jws(data: &[u8]) {
    // A JWK alone, as in a "jwk" header or a keyChange "oldKey".
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(key) = PublicJwk::from_json(&v) {
            let thumbprint = key.thumbprint();
            assert_eq!(
                thumbprint.len(),
                43,
                "a thumbprint is 32 bytes in base64url"
            );
            // The key's own JSON reads back as the same key.
            let again = PublicJwk::from_json(&key.to_json());
            assert!(
                again.as_ref().is_ok_and(|k| *k == key),
                "a JWK does not survive to_json: {again:?}"
            );
            let _ = key_authorization("token", &key);
        }
    }
    let Ok(parsed) = FlattenedJws::parse(data) else {
        return;
    };
    let _ = parsed.is_post_as_get();
    let _ = parsed.payload_json::<Value>();
    if let Some(key) = account_key() {
        let _ = parsed.verify(&key);
    }
    // A newAccount: the header's key verifies the JWS, and an
    // externalAccountBinding in the payload must bind that key.
    let Some(key) = parsed
        .header
        .jwk
        .as_ref()
        .and_then(|j| PublicJwk::from_json(j).ok())
    else {
        return;
    };
    let _ = parsed.verify(&key);
    if let Ok(req) = parsed.payload_json::<NewAccountRequest>() {
        if let Some(eab) = &req.external_account_binding {
            if let Ok(binding) = EabBinding::parse(eab, "https://ra.test/acme/new-account", &key) {
                let _ = binding.kid();
                let _ = binding.verify_mac(b"a MAC key");
            }
        }
    }
}

/// The CSR parser and its checks at finalize (RFC 8555 §7.4), then the name
/// policy on the names it asks for; also the certificate parsers that read
/// client-sent certificates (revokeCert, ARI).
pub fn csr(data: &[u8]) {
    let _ = cert_info(data);
    let _ = ari_cert_id(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pem_chain_to_der(text);
    }
    let Ok(parsed) = parse_csr(data) else {
        return;
    };
    let raw: Vec<RawIdentifier> = parsed
        .dns_names
        .iter()
        .map(|d| RawIdentifier {
            kind: "dns".to_owned(),
            value: d.clone(),
        })
        .chain(parsed.ips.iter().map(|ip| RawIdentifier {
            kind: "ip".to_owned(),
            value: ip.to_string(),
        }))
        .collect();
    let identifiers = check_identifiers(&raw).unwrap_or_default();
    let _ = check_all(&policy(), &identifiers);
    if let Some(key) = account_key() {
        let _ = check_against_order(&parsed, &identifiers, &key);
    }
    // The CSR's own key is never "another" key than itself.
    let _ = check_against_order(&parsed, &identifiers, &parsed.public_key);
}

/// Every ACME JSON payload a client sends (RFC 8555 §7): the first byte picks
/// the request type, the rest is its JSON payload.
pub fn acme_payload(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<NewAccountRequest>(payload) {
                if let (Some(eab), Some(key)) = (&req.external_account_binding, account_key()) {
                    let _ = EabBinding::parse(eab, "https://ra.test/acme/new-account", &key);
                }
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<NewOrderRequest>(payload) {
                if let Ok(ids) = check_identifiers(&req.identifiers) {
                    assert!(!ids.is_empty(), "an order passed with no identifiers");
                    let _ = check_all(&policy(), &ids);
                    for id in &ids {
                        let _ = id.base();
                        let _ = id.is_wildcard();
                        let _ = id.to_string();
                    }
                }
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<FinalizeRequest>(payload) {
                use base64::Engine;
                let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                if let Ok(der) = engine.decode(req.csr.as_bytes()) {
                    csr(&der);
                }
            }
        }
        3 => {
            // A challenge response: `{}`; anything else is still read.
            let _ = serde_json::from_slice::<Value>(payload);
        }
        4 => {
            if let Ok(req) = serde_json::from_slice::<RevocationRequest>(payload) {
                use base64::Engine;
                let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                if let Ok(der) = engine.decode(req.certificate.as_bytes()) {
                    let _ = cert_info(&der);
                }
            }
        }
        5 => {
            // keyChange: the payload is itself a flattened JWS.
            if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                if let Ok(inner) = FlattenedJws::parse_value(&v) {
                    if let Ok(req) = inner.payload_json::<KeyChangeInner>() {
                        let _ = PublicJwk::from_json(&req.old_key);
                    }
                    if let Some(jwk) = &inner.header.jwk {
                        if let Ok(key) = PublicJwk::from_json(jwk) {
                            let _ = inner.verify(&key);
                        }
                    }
                }
            }
        }
        6 => {
            let _ = serde_json::from_slice::<AccountUpdateRequest>(payload);
        }
        _ => {
            let _ = serde_json::from_slice::<AuthorizationUpdateRequest>(payload);
        }
    }
}

/// `ca.json` parsing and the start-up checks that read it (Config::parse and
/// the provisioners' name policies).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((settings, _warnings)) = Config::parse(text) else {
        return;
    };
    let _ = acmeproxy::app::provisioners(&settings);
}

/// http-01 (RFC 8555 §8.3): a whole HTTP response as a challenge server might
/// send it, read at once and in two pieces, then judged against a key
/// authorization; and a Location header followed from the challenge URL.
pub fn http01_response(data: &[u8]) {
    acmeproxy::validate::http01::fuzz_response(data);
}

/// tls-alpn-01 (RFC 8737 §3): a challenge certificate (DER) as a server might
/// present it.
pub fn tls_alpn01_cert(data: &[u8]) {
    acmeproxy::validate::tls_alpn01::fuzz_certificate(data);
}

/// DNS answers as validation sees them: a TXT set for dns-01 (RFC 8555 §8.4)
/// and A/AAAA addresses checked against `validation.denyNetworks`.
pub fn dns_answer(data: &[u8]) {
    acmeproxy::validate::dns01::fuzz_txt(data);
    acmeproxy::validate::egress::fuzz_addresses(data);
}
