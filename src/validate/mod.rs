//! Challenge validation (Boulder's VA): http-01, dns-01 and tls-alpn-01, run
//! from inside the private network. One file per challenge type.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8>

pub mod dns01;
pub mod http01;
pub mod mockdns;
mod net;
pub mod resolver;
#[cfg(test)]
mod testutil;
pub mod tls_alpn01;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::acme::ProblemType;
use crate::acme::types::{ChallengeType, Identifier};

pub use mockdns::MockDns;
pub use resolver::{DnsResolver, HickoryResolver, ResolverError};

/// Where and how validation connects. Real deployments keep the defaults
/// (ports 80 and 443, the system's resolvers); loopback tests change them.
#[derive(Clone)]
pub struct ValidationSettings {
    /// Port for http-01 (RFC 8555 §8.3 says 80).
    pub http_port: u16,
    /// Port for tls-alpn-01 (RFC 8737 says 443).
    pub tls_alpn_port: u16,
    /// Timeout for one whole validation attempt.
    pub timeout: Duration,
    /// Resolver for A/AAAA and TXT lookups.
    pub resolver: Arc<dyn DnsResolver>,
}

/// What a successful validation saw, for logs.
#[derive(Clone, Debug, Default)]
pub struct ValidationRecord {
    /// Addresses that were resolved for the identifier.
    pub addresses_resolved: Vec<std::net::IpAddr>,
    /// The address that answered, if a connection was made.
    pub address_used: Option<SocketAddr>,
    /// URLs fetched (http-01, including redirects).
    pub urls: Vec<String>,
}

/// Why a validation failed; each maps to the ACME problem the client sees.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("{0}")]
    Connection(String),
    #[error("{0}")]
    Dns(String),
    #[error("{0}")]
    IncorrectResponse(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Malformed(String),
}

impl ValidationError {
    /// The RFC 8555 problem type for this failure.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            Self::Connection(_) => ProblemType::Connection,
            Self::Dns(_) => ProblemType::Dns,
            Self::IncorrectResponse(_) => ProblemType::IncorrectResponse,
            Self::Tls(_) => ProblemType::Tls,
            Self::Unauthorized(_) => ProblemType::Unauthorized,
            Self::Malformed(_) => ProblemType::Malformed,
        }
    }
}

/// Runs challenge validations.
#[derive(Clone)]
pub struct Validator {
    settings: ValidationSettings,
}

impl Validator {
    /// A validator with these settings.
    pub fn new(settings: ValidationSettings) -> Self {
        Self { settings }
    }

    /// Validates one challenge for `identifier` (without wildcard label).
    /// `key_authorization` is `token || '.' || base64url(JWK thumbprint)`
    /// (RFC 8555 §8.1). The whole attempt is bounded by the settings' timeout.
    pub async fn validate(
        &self,
        kind: ChallengeType,
        identifier: &Identifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<ValidationRecord, ValidationError> {
        let fut = async {
            match kind {
                ChallengeType::Http01 => {
                    http01::validate(&self.settings, identifier, token, key_authorization).await
                }
                ChallengeType::Dns01 => {
                    dns01::validate(&self.settings, identifier, key_authorization).await
                }
                ChallengeType::TlsAlpn01 => {
                    tls_alpn01::validate(&self.settings, identifier, key_authorization).await
                }
            }
        };
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ValidationError::Connection(format!(
                "{kind} validation of {} timed out after {:?}",
                identifier.value(),
                self.settings.timeout
            ))),
        }
    }
}
