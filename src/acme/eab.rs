//! External Account Binding (RFC 8555 §7.3.4): the HMAC-signed JWS inside a
//! newAccount request that binds the new ACME account to an account the CA
//! already knows.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4>

use ring::hmac;

use super::jws::{JwsError, PublicJwk, RawJws, str_member};

/// Why an externalAccountBinding was refused.
#[derive(Debug, thiserror::Error)]
pub enum EabError {
    /// The binding is not well formed, or binds another key or URL.
    #[error("{0}")]
    Malformed(String),
    /// The MAC does not verify.
    #[error("the externalAccountBinding MAC does not verify with the key for this kid")]
    BadMac,
}

/// A parsed, not yet MAC-checked, externalAccountBinding.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4>
#[derive(Clone, Debug)]
pub struct EabBinding {
    kid: String,
    alg: MacAlg,
    signing_input: Vec<u8>,
    mac: Vec<u8>,
}

impl EabBinding {
    /// Parses and checks everything but the MAC: an HS256/HS384/HS512
    /// flattened JWS with a `kid`, no `nonce`, `url` equal to `expected_url`
    /// (the newAccount URL), and the account's own JWK as payload.
    pub fn parse(
        v: &serde_json::Value,
        expected_url: &str,
        account_jwk: &PublicJwk,
    ) -> Result<Self, EabError> {
        let raw = RawJws::from_value(v).map_err(|e| malformed(&e))?;
        let alg = match str_member(&raw.header, "alg", "externalAccountBinding")
            .map_err(|e| malformed(&e))?
        {
            Some("HS256") => MacAlg::Hs256,
            Some("HS384") => MacAlg::Hs384,
            Some("HS512") => MacAlg::Hs512,
            Some(other) => {
                return Err(EabError::Malformed(format!(
                    "the externalAccountBinding alg \"{other}\" is not accepted; use HS256, HS384 or HS512"
                )));
            }
            None => {
                return Err(EabError::Malformed(
                    "the externalAccountBinding protected header has no \"alg\"".into(),
                ));
            }
        };
        let kid = match str_member(&raw.header, "kid", "externalAccountBinding")
            .map_err(|e| malformed(&e))?
        {
            Some(kid) if !kid.is_empty() => kid.to_owned(),
            _ => {
                return Err(EabError::Malformed(
                    "the externalAccountBinding protected header has no \"kid\"".into(),
                ));
            }
        };
        if raw.header.contains_key("nonce") {
            return Err(EabError::Malformed(
                "the externalAccountBinding protected header must not contain a \"nonce\"".into(),
            ));
        }
        match str_member(&raw.header, "url", "externalAccountBinding").map_err(|e| malformed(&e))? {
            Some(url) if url == expected_url => {}
            Some(url) => {
                return Err(EabError::Malformed(format!(
                    "the externalAccountBinding url \"{url}\" is not the newAccount URL \
                     \"{expected_url}\""
                )));
            }
            None => {
                return Err(EabError::Malformed(
                    "the externalAccountBinding protected header has no \"url\"".into(),
                ));
            }
        }
        let payload: serde_json::Value = serde_json::from_slice(&raw.payload).map_err(|_| {
            EabError::Malformed("the externalAccountBinding payload is not a JWK".into())
        })?;
        let bound = PublicJwk::from_json(&payload).map_err(|e| {
            EabError::Malformed(format!(
                "the externalAccountBinding payload is not a usable JWK: {e}"
            ))
        })?;
        if bound != *account_jwk {
            return Err(EabError::Malformed(
                "the externalAccountBinding payload is not the account's key (the JWS jwk)".into(),
            ));
        }
        Ok(Self {
            kid,
            alg,
            signing_input: raw.signing_input(),
            mac: raw.signature,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the MAC, in constant time, with the key registered for `kid`.
    pub fn verify_mac(&self, hmac_key: &[u8]) -> Result<(), EabError> {
        let key = hmac::Key::new(self.alg.ring(), hmac_key);
        hmac::verify(&key, &self.signing_input, &self.mac).map_err(|_| EabError::BadMac)
    }
}

/// The MAC algorithms RFC 8555 §7.3.4 allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MacAlg {
    Hs256,
    Hs384,
    Hs512,
}

impl MacAlg {
    fn ring(self) -> hmac::Algorithm {
        match self {
            Self::Hs256 => hmac::HMAC_SHA256,
            Self::Hs384 => hmac::HMAC_SHA384,
            Self::Hs512 => hmac::HMAC_SHA512,
        }
    }
}

fn malformed(e: &JwsError) -> EabError {
    EabError::Malformed(format!("externalAccountBinding: {e}"))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    use super::*;
    use crate::acme::jws::tests::TestKey;

    const URL: &str = "https://ca.example/acme/new-account";
    const HMAC_KEY: &[u8] = b"a 32-byte shared secret for EAB!";

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn binding(alg: hmac::Algorithm, header: &Value, payload: &Value) -> Value {
        let protected = b64(header.to_string().as_bytes());
        let payload = b64(payload.to_string().as_bytes());
        let key = hmac::Key::new(alg, HMAC_KEY);
        let tag = hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
        json!({ "protected": protected, "payload": payload, "signature": b64(tag.as_ref()) })
    }

    fn header(alg: &str) -> Value {
        json!({ "alg": alg, "kid": "kid-1", "url": URL })
    }

    fn refused(r: Result<EabBinding, EabError>, needle: &str) {
        match r {
            Err(EabError::Malformed(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected Malformed {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn valid_binding_verifies() {
        let account = TestKey::p256();
        for (name, alg) in [
            ("HS256", hmac::HMAC_SHA256),
            ("HS384", hmac::HMAC_SHA384),
            ("HS512", hmac::HMAC_SHA512),
        ] {
            let v = binding(alg, &header(name), &account.jwk_json());
            let b = EabBinding::parse(&v, URL, &account.jwk()).unwrap();
            assert_eq!(b.kid(), "kid-1");
            b.verify_mac(HMAC_KEY).unwrap();
            assert!(matches!(
                b.verify_mac(b"another secret"),
                Err(EabError::BadMac)
            ));
        }
    }

    #[test]
    fn payload_compared_as_key_not_text() {
        let account = TestKey::rsa();
        let mut decorated = account.jwk_json();
        decorated["kid"] = json!("whatever");
        let v = binding(hmac::HMAC_SHA256, &header("HS256"), &decorated);
        EabBinding::parse(&v, URL, &account.jwk())
            .unwrap()
            .verify_mac(HMAC_KEY)
            .unwrap();
    }

    #[test]
    fn tampered_binding_fails_mac() {
        let account = TestKey::ed25519();
        let mut v = binding(hmac::HMAC_SHA256, &header("HS256"), &account.jwk_json());
        let mut h = header("HS256");
        h["kid"] = json!("kid-2");
        v["protected"] = json!(b64(h.to_string().as_bytes()));
        let b = EabBinding::parse(&v, URL, &account.jwk()).unwrap();
        assert_eq!(b.kid(), "kid-2");
        assert!(matches!(b.verify_mac(HMAC_KEY), Err(EabError::BadMac)));
    }

    #[test]
    fn refuses_bad_bindings() {
        let account = TestKey::p256();
        let jwk = account.jwk();
        let other = TestKey::p256().jwk_json();
        let sign = |h: &Value, p: &Value| binding(hmac::HMAC_SHA256, h, p);
        let good_payload = account.jwk_json();

        refused(
            EabBinding::parse(&sign(&header("HS256"), &other), URL, &jwk),
            "account's key",
        );
        refused(
            EabBinding::parse(
                &sign(&header("HS256"), &good_payload),
                "https://x/new",
                &jwk,
            ),
            "newAccount URL",
        );
        let mut with_nonce = header("HS256");
        with_nonce["nonce"] = json!("abc");
        refused(
            EabBinding::parse(&sign(&with_nonce, &good_payload), URL, &jwk),
            "nonce",
        );
        let mut no_kid = header("HS256");
        no_kid.as_object_mut().unwrap().remove("kid");
        refused(
            EabBinding::parse(&sign(&no_kid, &good_payload), URL, &jwk),
            "kid",
        );
        let mut no_url = header("HS256");
        no_url.as_object_mut().unwrap().remove("url");
        refused(
            EabBinding::parse(&sign(&no_url, &good_payload), URL, &jwk),
            "url",
        );
        for alg in ["ES256", "none", "HS1"] {
            refused(
                EabBinding::parse(&sign(&header(alg), &good_payload), URL, &jwk),
                alg,
            );
        }
        let mut general = sign(&header("HS256"), &good_payload);
        general["header"] = json!({});
        refused(EabBinding::parse(&general, URL, &jwk), "unprotected");
        refused(
            EabBinding::parse(&sign(&header("HS256"), &json!("x")), URL, &jwk),
            "JWK",
        );
    }
}
