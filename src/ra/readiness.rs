//! Whether the Authority can serve: its store takes a durable write and its
//! upstream CA answers. The HTTP layer caches and renders the answer
//! (`GET /ready`); this module only checks.

use std::time::Duration;

use tokio::time::Instant;

use super::Authority;

/// The outcome of one readiness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The store takes writes and the upstream answers.
    Ready,
    /// The store refused the test write.
    StoreNotWritable,
    /// The store has failed for good in this process (a full disk under
    /// sled), with the cause; the server exits for a restart once the
    /// storage takes writes again (`app::store_watch`).
    StoreFailed(String),
    /// The store did not finish the test write in time.
    StoreTimedOut,
    /// The upstream's health check failed.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimedOut,
}

impl Authority {
    /// Checks, within `budget` for both steps together, that the store takes
    /// a write and then that the upstream answers. Keeps the `store_writable`
    /// and (when the store took the write) `upstream_up` metrics current; the
    /// reason for a failure is logged.
    pub async fn readiness(&self, budget: Duration) -> Readiness {
        let started = Instant::now();
        if let Some(cause) = self.records.failure() {
            crate::metrics::store_writable(false);
            return Readiness::StoreFailed(cause);
        }
        let store = match tokio::time::timeout(budget, self.records.check_writable()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "not ready: store");
                Some(Readiness::StoreNotWritable)
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = budget.as_millis() as u64,
                    "not ready: the store write did not finish in time"
                );
                Some(Readiness::StoreTimedOut)
            }
        };
        crate::metrics::store_writable(store.is_none());
        if let Some(state) = store {
            return state;
        }
        let rest = budget.saturating_sub(started.elapsed());
        let state = match tokio::time::timeout(rest, self.upstream_health()).await {
            Ok(Ok(())) => Readiness::Ready,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "not ready: upstream");
                Readiness::UpstreamUnreachable
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = budget.as_millis() as u64,
                    "not ready: the upstream did not answer in time"
                );
                Readiness::UpstreamTimedOut
            }
        };
        crate::metrics::upstream_up(state == Readiness::Ready);
        state
    }
}
