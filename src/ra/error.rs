//! The Authority's error: an ACME problem the client may see, plus the
//! internal cause for the log. 5xx details never reach the client.

use std::error::Error as StdError;

use crate::acme::{Problem, ProblemType};
use crate::store::{StoreError, Table};
use crate::upstream::UpstreamError;

/// An error from the Authority.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct RaError {
    /// What the client is told.
    pub problem: Box<Problem>,
    /// The internal cause, logged only.
    #[source]
    pub source: Option<Box<dyn StdError + Send + Sync>>,
    /// For a keyChange conflict: the account that holds the key (its URL goes
    /// in the Location header, RFC 8555 §7.3.5).
    pub conflicting_account: Option<crate::model::AccountId>,
    /// Seconds the client should wait (`Retry-After`, a `rateLimited` refusal).
    pub retry_after: Option<u64>,
}

impl RaError {
    /// A client-facing problem.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            problem: Box::new(Problem::new(kind, detail)),
            source: None,
            conflicting_account: None,
            retry_after: None,
        }
    }

    /// A problem document as is.
    pub fn from_problem(problem: impl Into<Box<Problem>>) -> Self {
        Self {
            problem: problem.into(),
            source: None,
            conflicting_account: None,
            retry_after: None,
        }
    }

    /// An internal failure: the client sees a generic serverInternal, the log
    /// sees `context` and the source.
    pub fn internal(context: &str, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            problem: Box::new(Problem::new(
                ProblemType::ServerInternal,
                format!("internal error while {context}; the server log has the details"),
            )),
            source: Some(source.into()),
            conflicting_account: None,
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After` of `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Whether this is a server-side failure (logged at error level).
    pub fn is_internal(&self) -> bool {
        self.problem.http_status() >= 500
    }
}

/// `Retry-After` of a request the store failed: long enough for a restart
/// after a full disk, short enough for a client that honours it.
pub const STORE_RETRY_AFTER_SECS: u64 = 30;

impl From<StoreError> for RaError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Contended { table, .. } => {
                let what = match table {
                    Table::Accounts | Table::AccountKeys => "account",
                    Table::Authzs => "authorization",
                    Table::Certs | Table::CertSerials => "certificate",
                    Table::EabKeys => "External Account Binding key",
                    Table::Jobs => "finalize job",
                    Table::Orders | Table::AccountOrders => "order",
                    Table::Meta => "server setting",
                };
                let mut out = Self::new(
                    ProblemType::ServerInternal,
                    format!("the {what} changed concurrently too often; try again"),
                );
                out.source = Some(Box::new(e));
                out
            }
            _ => Self::internal("accessing the store", e).with_retry_after(STORE_RETRY_AFTER_SECS),
        }
    }
}

impl From<UpstreamError> for RaError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Rejected { kind, detail } => {
                Self::new(kind, format!("the upstream CA refused: {detail}"))
            }
            other => Self::internal("calling the upstream CA", other),
        }
    }
}

/// Shorthand for a problem result.
pub(crate) fn problem<T>(kind: ProblemType, detail: impl Into<String>) -> Result<T, RaError> {
    Err(RaError::new(kind, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed store (a full disk) tells the client when to come back.
    #[test]
    fn store_failures_are_server_internal_with_retry_after() {
        let e = RaError::from(StoreError::backend("sled flush", "No space left on device"));
        assert_eq!(e.problem.kind, "urn:ietf:params:acme:error:serverInternal");
        assert_eq!(e.retry_after, Some(STORE_RETRY_AFTER_SECS));
        assert!(
            !e.problem.detail.contains("No space"),
            "the cause goes to the log, not to the client: {}",
            e.problem.detail
        );
    }
}
