//! ACME problem types and problem documents (RFC 7807 as used by RFC 8555 §6.7).
//! This is the only place where `urn:ietf:params:acme:error:*` strings live.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>

use serde::{Deserialize, Serialize};

use super::types::Identifier;

const URN_PREFIX: &str = "urn:ietf:params:acme:error:";

/// The error types of RFC 8555 §6.7 (and RFC 8738 / RFC 9773 where they add
/// none), with draft-ietf-acme-profiles' `invalidProfile`.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemType {
    AccountDoesNotExist,
    AlreadyRevoked,
    BadCsr,
    BadNonce,
    BadPublicKey,
    BadRevocationReason,
    BadSignatureAlgorithm,
    Caa,
    Compound,
    Connection,
    Dns,
    ExternalAccountRequired,
    IncorrectResponse,
    InvalidContact,
    /// draft-ietf-acme-profiles: a profile the server does not offer.
    InvalidProfile,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    ServerInternal,
    Tls,
    Unauthorized,
    UnsupportedContact,
    UnsupportedIdentifier,
    UserActionRequired,
}

impl ProblemType {
    /// Every problem type, for tests and documentation.
    pub const ALL: [Self; 25] = [
        Self::AccountDoesNotExist,
        Self::AlreadyRevoked,
        Self::BadCsr,
        Self::BadNonce,
        Self::BadPublicKey,
        Self::BadRevocationReason,
        Self::BadSignatureAlgorithm,
        Self::Caa,
        Self::Compound,
        Self::Connection,
        Self::Dns,
        Self::ExternalAccountRequired,
        Self::IncorrectResponse,
        Self::InvalidContact,
        Self::InvalidProfile,
        Self::Malformed,
        Self::OrderNotReady,
        Self::RateLimited,
        Self::RejectedIdentifier,
        Self::ServerInternal,
        Self::Tls,
        Self::Unauthorized,
        Self::UnsupportedContact,
        Self::UnsupportedIdentifier,
        Self::UserActionRequired,
    ];

    /// The last part of the urn, as RFC 8555 §6.7 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::AccountDoesNotExist => "accountDoesNotExist",
            Self::AlreadyRevoked => "alreadyRevoked",
            Self::BadCsr => "badCSR",
            Self::BadNonce => "badNonce",
            Self::BadPublicKey => "badPublicKey",
            Self::BadRevocationReason => "badRevocationReason",
            Self::BadSignatureAlgorithm => "badSignatureAlgorithm",
            Self::Caa => "caa",
            Self::Compound => "compound",
            Self::Connection => "connection",
            Self::Dns => "dns",
            Self::ExternalAccountRequired => "externalAccountRequired",
            Self::IncorrectResponse => "incorrectResponse",
            Self::InvalidContact => "invalidContact",
            Self::InvalidProfile => "invalidProfile",
            Self::Malformed => "malformed",
            Self::OrderNotReady => "orderNotReady",
            Self::RateLimited => "rateLimited",
            Self::RejectedIdentifier => "rejectedIdentifier",
            Self::ServerInternal => "serverInternal",
            Self::Tls => "tls",
            Self::Unauthorized => "unauthorized",
            Self::UnsupportedContact => "unsupportedContact",
            Self::UnsupportedIdentifier => "unsupportedIdentifier",
            Self::UserActionRequired => "userActionRequired",
        }
    }

    /// The full `urn:ietf:params:acme:error:*` string.
    pub fn urn(self) -> String {
        format!("{URN_PREFIX}{}", self.name())
    }

    /// Parses a urn (or the bare name) back into a type.
    pub fn from_urn(urn: &str) -> Option<Self> {
        let name = urn.strip_prefix(URN_PREFIX).unwrap_or(urn);
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The HTTP status a response carrying this problem gets by default.
    pub fn default_status(self) -> u16 {
        match self {
            Self::AccountDoesNotExist => 400,
            Self::BadNonce
            | Self::BadCsr
            | Self::BadPublicKey
            | Self::BadRevocationReason
            | Self::BadSignatureAlgorithm
            | Self::AlreadyRevoked
            | Self::Caa
            | Self::Compound
            | Self::Connection
            | Self::Dns
            | Self::IncorrectResponse
            | Self::InvalidContact
            | Self::InvalidProfile
            | Self::Malformed
            | Self::RejectedIdentifier
            | Self::Tls
            | Self::UnsupportedContact
            | Self::UnsupportedIdentifier => 400,
            Self::Unauthorized | Self::ExternalAccountRequired | Self::UserActionRequired => 403,
            Self::OrderNotReady => 403,
            Self::RateLimited => 429,
            Self::ServerInternal => 500,
        }
    }
}

/// A problem document (`application/problem+json`), RFC 8555 §6.7.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Self>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// For badSignatureAlgorithm: the algorithms the server accepts (RFC 8555 §6.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
}

impl Problem {
    /// A problem of `kind` with a detail a person can act on.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.urn(),
            detail: detail.into(),
            status: Some(kind.default_status()),
            subproblems: Vec::new(),
            identifier: None,
            algorithms: None,
        }
    }

    /// The same problem, about one identifier (RFC 8555 §6.7.1).
    pub fn with_identifier(mut self, identifier: Identifier) -> Self {
        self.identifier = Some(identifier);
        self
    }

    /// The same problem with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The problem type, if it is one of ACME's.
    pub fn problem_type(&self) -> Option<ProblemType> {
        ProblemType::from_urn(&self.kind)
    }

    /// The HTTP status to send with this document.
    pub fn http_status(&self) -> u16 {
        self.status
            .or_else(|| self.problem_type().map(ProblemType::default_status))
            .unwrap_or(400)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns_round_trip() {
        for t in ProblemType::ALL {
            assert_eq!(ProblemType::from_urn(&t.urn()), Some(t));
            assert!(t.urn().starts_with("urn:ietf:params:acme:error:"));
        }
        assert_eq!(
            ProblemType::BadCsr.urn(),
            "urn:ietf:params:acme:error:badCSR"
        );
        assert_eq!(
            ProblemType::from_urn("urn:ietf:params:acme:error:invalidProfile"),
            Some(ProblemType::InvalidProfile)
        );
        assert_eq!(ProblemType::InvalidProfile.default_status(), 400);
    }

    #[test]
    fn problem_serializes_as_rfc7807() {
        let p = Problem::new(ProblemType::BadNonce, "stale nonce");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:ietf:params:acme:error:badNonce");
        assert_eq!(v["status"], 400);
        assert_eq!(v["detail"], "stale nonce");
        assert!(v.get("subproblems").is_none());
    }
}
