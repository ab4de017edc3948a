//! Flattened JWS (RFC 7515 §7.2.2) as RFC 8555 §6.2 uses it: parsing, the
//! public JWK (RFC 7517) with its RFC 7638 thumbprint, and signature checks
//! for RS256, ES256, ES384 and EdDSA (Ed25519).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
//! STUB: signatures fixed, bodies being written.

use serde::de::DeserializeOwned;

/// Why a JWS or JWK was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    /// Not a well-formed flattened JWS / JWK.
    #[error("{0}")]
    Malformed(String),
    /// `alg` is not one the server accepts, or does not fit the key.
    #[error("{0}")]
    BadSignatureAlgorithm(String),
    /// The key is of an unsupported type or too weak.
    #[error("{0}")]
    BadPublicKey(String),
    /// The signature does not verify.
    #[error("JWS signature does not verify with the key")]
    BadSignature,
}

/// A public key as a JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicJwk {
    json: serde_json::Value,
}

impl PublicJwk {
    /// Parses a JWK object, public members only.
    pub fn from_json(_v: &serde_json::Value) -> Result<Self, JwsError> {
        Err(JwsError::Malformed("not implemented".into()))
    }
    /// Converts a SubjectPublicKeyInfo (DER) to a JWK.
    pub fn from_spki_der(_der: &[u8]) -> Result<Self, JwsError> {
        Err(JwsError::Malformed("not implemented".into()))
    }
    /// The JWK, public members only.
    pub fn to_json(&self) -> serde_json::Value {
        self.json.clone()
    }
    /// RFC 7638 thumbprint, SHA-256, base64url.
    pub fn thumbprint(&self) -> String {
        String::new()
    }
    /// Verifies `signature` over `signing_input` with `alg`.
    pub fn verify(&self, _alg: &str, _signing_input: &[u8], _signature: &[u8]) -> Result<(), JwsError> {
        Err(JwsError::BadSignature)
    }
}

/// The protected header of an ACME JWS.
#[derive(Clone, Debug)]
pub struct ProtectedHeader {
    pub alg: String,
    pub nonce: Option<String>,
    pub url: Option<String>,
    pub jwk: Option<serde_json::Value>,
    pub kid: Option<String>,
}

/// A parsed flattened JWS.
#[derive(Clone, Debug)]
pub struct FlattenedJws {
    pub header: ProtectedHeader,
    pub payload: Vec<u8>,
}

impl FlattenedJws {
    /// Parses a request body.
    pub fn parse(_body: &[u8]) -> Result<Self, JwsError> {
        Err(JwsError::Malformed("not implemented".into()))
    }
    /// Parses an inner JWS given as a JSON value.
    pub fn parse_value(_v: &serde_json::Value) -> Result<Self, JwsError> {
        Err(JwsError::Malformed("not implemented".into()))
    }
    /// Verifies the signature with `key`.
    pub fn verify(&self, _key: &PublicJwk) -> Result<(), JwsError> {
        Err(JwsError::BadSignature)
    }
    /// POST-as-GET: empty payload.
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }
    /// Decodes the payload as JSON.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, JwsError> {
        serde_json::from_slice(&self.payload).map_err(|e| JwsError::Malformed(e.to_string()))
    }
}

/// The key authorization `token || '.' || thumbprint` (RFC 8555 §8.1).
pub fn key_authorization(token: &str, jwk: &PublicJwk) -> String {
    format!("{token}.{}", jwk.thumbprint())
}
