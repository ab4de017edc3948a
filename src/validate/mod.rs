//! Challenge validation (Boulder's VA): http-01, dns-01 and tls-alpn-01, run
//! from inside the private network. One file per challenge type.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8>

pub mod dns01;
pub mod egress;
pub mod http01;
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
    /// Addresses never connected to (`validation.denyNetworks`).
    pub egress: egress::EgressRules,
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
///
/// The network part of each validation runs on a thread and runtime of the
/// validator's own (`acmeproxy-validate`), not on the runtime that serves
/// requests. A validation is a handful of sequential steps (connect, write,
/// read, …); on a busy request runtime each step waited its turn behind every
/// ready request task, which made validation, and so the challenge POST, the
/// slowest request under load (docs/performance.md).
#[derive(Clone)]
pub struct Validator {
    settings: ValidationSettings,
    /// `None` if the thread could not be started: validations then run on
    /// the caller's runtime.
    io: Option<Arc<IoThread>>,
}

/// The validator's runtime thread; it ends when the last validator is dropped.
struct IoThread {
    handle: tokio::runtime::Handle,
    /// Dropping it ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl IoThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("acmeproxy-validate".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

impl Validator {
    /// A validator with these settings.
    pub fn new(settings: ValidationSettings) -> Self {
        let io = match IoThread::start() {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the validation thread; validating on the request runtime");
                None
            }
        };
        Self { settings, io }
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
        let settings = self.settings.clone();
        let identifier = identifier.clone();
        let (token, key_authorization) = (token.to_owned(), key_authorization.to_owned());
        let attempt = async move {
            validate_bounded(&settings, kind, &identifier, &token, &key_authorization).await
        };
        match &self.io {
            Some(io) => io.handle.spawn(attempt).await.unwrap_or_else(|e| {
                Err(ValidationError::Connection(format!(
                    "the {kind} validation task ended before its result: {e}"
                )))
            }),
            None => attempt.await,
        }
    }
}

/// One validation attempt, bounded by the settings' timeout.
async fn validate_bounded(
    settings: &ValidationSettings,
    kind: ChallengeType,
    identifier: &Identifier,
    token: &str,
    key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    let fut = async {
        match kind {
            ChallengeType::Http01 => {
                http01::validate(settings, identifier, token, key_authorization).await
            }
            ChallengeType::Dns01 => dns01::validate(settings, identifier, key_authorization).await,
            ChallengeType::TlsAlpn01 => {
                tls_alpn01::validate(settings, identifier, key_authorization).await
            }
        }
    };
    match tokio::time::timeout(settings.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ValidationError::Connection(format!(
            "{kind} validation of {} timed out after {:?}",
            identifier.value(),
            settings.timeout
        ))),
    }
}
