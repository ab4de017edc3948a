//! External Account Binding (RFC 8555 §7.3.4). STUB: being written.

use super::jws::PublicJwk;

/// Why an externalAccountBinding was refused.
#[derive(Debug, thiserror::Error)]
pub enum EabError {
    #[error("{0}")]
    Malformed(String),
    #[error("the externalAccountBinding MAC does not verify with the key for this kid")]
    BadMac,
}

/// A parsed, not yet MAC-checked, externalAccountBinding.
#[derive(Clone, Debug)]
pub struct EabBinding {
    kid: String,
}

impl EabBinding {
    /// Parses and checks everything but the MAC.
    pub fn parse(
        _v: &serde_json::Value,
        _expected_url: &str,
        _account_jwk: &PublicJwk,
    ) -> Result<Self, EabError> {
        Err(EabError::Malformed("not implemented".into()))
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// Checks the MAC with the key registered for `kid`.
    pub fn verify_mac(&self, _hmac_key: &[u8]) -> Result<(), EabError> {
        Err(EabError::BadMac)
    }
}
