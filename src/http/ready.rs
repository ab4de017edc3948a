//! GET /ready: whether the store takes writes and the upstream answers, as
//! [`Authority::readiness`] finds; this module caches and renders it.
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

use crate::ra::{Authority, Readiness};

/// How long a check result is served before the next request refreshes it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The longest a refresh (store write and upstream request together) may
/// take; below the 5 s probe timeout of the Helm chart.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

/// The `/ready` answer for a readiness state.
fn response(state: Readiness) -> Response {
    let (status, text) = match state {
        Readiness::StoreFailed(cause) => {
            let text = format!(
                "store failed: {cause}; acmeproxy restarts once the data directory takes writes again\n"
            );
            return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
        }
        Readiness::Ready => (StatusCode::OK, "ready\n"),
        Readiness::StoreNotWritable => (StatusCode::SERVICE_UNAVAILABLE, "store not writable\n"),
        Readiness::StoreTimedOut => (StatusCode::SERVICE_UNAVAILABLE, "store check timed out\n"),
        Readiness::UpstreamUnreachable => {
            (StatusCode::SERVICE_UNAVAILABLE, "upstream CA unreachable\n")
        }
        Readiness::UpstreamTimedOut => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream CA check timed out\n",
        ),
    };
    (status, text).into_response()
}

type Probe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// The cached readiness of one server.
pub struct CachedReadiness {
    probe: Probe,
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl CachedReadiness {
    /// Readiness from `probe`, a full check (tests give their own).
    pub fn new<F, Fut>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Readiness> + Send + 'static,
    {
        Self {
            probe: Box::new(move || Box::pin(probe())),
            last: Mutex::new(None),
        }
    }

    /// Readiness of `ra`: its store takes a write, its upstream answers.
    /// Keeps the `upstream_up` metric current.
    pub fn for_authority(ra: Arc<Authority>) -> Self {
        Self::new(move || {
            let ra = Arc::clone(&ra);
            async move { ra.readiness(CHECK_TIMEOUT).await }
        })
    }

    /// The current state: the cached one while fresh, else one refresh
    /// shared by every request that waits for it.
    pub async fn state(&self) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, state)) = &*last {
            if at.elapsed() < MAX_AGE {
                return state.clone();
            }
        }
        let state = (self.probe)().await;
        *last = Some((Instant::now(), state.clone()));
        state
    }

    /// The `/ready` answer.
    pub async fn response(&self) -> Response {
        response(self.state().await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(delay: Duration) -> (Arc<AtomicUsize>, CachedReadiness) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let r = CachedReadiness::new(move || {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Readiness::Ready
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
                assert_eq!(b.await.unwrap(), Readiness::Ready);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((2..=3).contains(&n), "{n} refreshes in 2.5 s");
    }
}
