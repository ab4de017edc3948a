//! GET /ready: whether the store takes writes and the upstream answers.
//!
//! `/ready` is unauthenticated, so it must not cost a store write and an
//! upstream request per GET. It answers from the last check while that is
//! less than [`MAX_AGE`] old; an older one is refreshed by the first request
//! that needs it, and requests arriving meanwhile wait for that one refresh.
//! A refresh is bounded by [`CHECK_TIMEOUT`]: a store or upstream that hangs
//! makes `/ready` answer "not ready", not hang.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ra::Authority;

/// How long a check result is served before the next request refreshes it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The longest a refresh (store write and upstream request together) may
/// take; below the 5 s probe timeout of the Helm chart.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyState {
    Ready,
    StoreNotWritable,
    StoreTimedOut,
    UpstreamUnreachable,
    UpstreamTimedOut,
}

impl ReadyState {
    fn response(self) -> Response {
        let (status, text) = match self {
            Self::Ready => (StatusCode::OK, "ready\n"),
            Self::StoreNotWritable => (StatusCode::SERVICE_UNAVAILABLE, "store not writable\n"),
            Self::StoreTimedOut => (StatusCode::SERVICE_UNAVAILABLE, "store check timed out\n"),
            Self::UpstreamUnreachable => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream CA unreachable\n")
            }
            Self::UpstreamTimedOut => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream CA check timed out\n",
            ),
        };
        (status, text).into_response()
    }
}

type Probe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ReadyState> + Send>> + Send + Sync>;

/// The cached readiness of one server.
pub struct Readiness {
    probe: Probe,
    last: Mutex<Option<(Instant, ReadyState)>>,
}

impl Readiness {
    /// Readiness from `probe`, a full check (tests give their own).
    pub fn new<F, Fut>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ReadyState> + Send + 'static,
    {
        Self {
            probe: Box::new(move || Box::pin(probe())),
            last: Mutex::new(None),
        }
    }

    /// Readiness of `ra`: its store takes a write, its upstream answers.
    /// Keeps the `upstream_up` metric current.
    pub fn for_authority(ra: Arc<Authority>) -> Self {
        Self::new(move || check(Arc::clone(&ra), CHECK_TIMEOUT))
    }

    /// The current state: the cached one while fresh, else one refresh
    /// shared by every request that waits for it.
    pub async fn state(&self) -> ReadyState {
        let mut last = self.last.lock().await;
        if let Some((at, state)) = *last {
            if at.elapsed() < MAX_AGE {
                return state;
            }
        }
        let state = (self.probe)().await;
        *last = Some((Instant::now(), state));
        state
    }

    /// The `/ready` answer.
    pub async fn response(&self) -> Response {
        self.state().await.response()
    }
}

/// One full check within `budget`.
async fn check(ra: Arc<Authority>, budget: Duration) -> ReadyState {
    let started = Instant::now();
    match tokio::time::timeout(budget, ra.records().store().check_writable()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: store");
            return ReadyState::StoreNotWritable;
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = budget.as_millis() as u64,
                "not ready: the store write did not finish in time"
            );
            return ReadyState::StoreTimedOut;
        }
    }
    let rest = budget.saturating_sub(started.elapsed());
    let state = match tokio::time::timeout(rest, ra.upstream().health()).await {
        Ok(Ok(())) => ReadyState::Ready,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: upstream");
            ReadyState::UpstreamUnreachable
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = budget.as_millis() as u64,
                "not ready: the upstream did not answer in time"
            );
            ReadyState::UpstreamTimedOut
        }
    };
    crate::metrics::upstream_up(state == ReadyState::Ready);
    state
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(delay: Duration) -> (Arc<AtomicUsize>, Readiness) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let r = Readiness::new(move || {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                ReadyState::Ready
            }
        });
        (calls, r)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_refresh_a_second() {
        let (calls, r) = counting(Duration::from_millis(200));
        let r = Arc::new(r);
        let started = Instant::now();
        // 2.5 s of 100 concurrent requests every 10 ms.
        while started.elapsed() < Duration::from_millis(2500) {
            let batch: Vec<_> = (0..100)
                .map(|_| {
                    let r = Arc::clone(&r);
                    tokio::spawn(async move { r.state().await })
                })
                .collect();
            for b in batch {
                assert_eq!(b.await.unwrap(), ReadyState::Ready);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((2..=3).contains(&n), "{n} refreshes in 2.5 s");
    }
}
