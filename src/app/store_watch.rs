//! Watching the store for a failure this process cannot recover from: under
//! sled, a full disk or a failing device (store/sled.rs, "Failures"). While the
//! store is failed, `/ready` answers 503 (its store check fails) and requests
//! that touch the store get `serverInternal` with `Retry-After`. Once the
//! storage takes writes again, the server shuts down and the process exits
//! with status [`EXIT_RESTART`], so that its supervisor (systemd's
//! `Restart=on-failure`) starts it anew and opening the store finishes the
//! batches the failure interrupted.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The exit status after a store failure (`EX_TEMPFAIL`): try again.
pub const EXIT_RESTART: u8 = 75;

/// How often the watch looks at the store, and while it is failed, how often
/// it probes whether the storage takes writes again.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The server stopped because its store failed and the storage now takes
/// writes again; `main` exits with [`EXIT_RESTART`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the store failed ({cause}); the data directory takes writes again, so acmeproxy \
     exits (status 75) for its service manager to restart it"
)]
pub struct RestartNeeded {
    /// What made the store fail.
    pub cause: String,
}

/// Starts the watch. It ends with `None` when `shutdown` is cancelled, or
/// cancels `shutdown` itself and ends with the reason to restart.
pub(super) fn spawn(
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> JoinHandle<Option<RestartNeeded>> {
    tokio::spawn(async move {
        let mut reported = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let Some(cause) = store.failure() else {
                continue;
            };
            if !reported {
                reported = true;
                tracing::error!(
                    %cause,
                    "the store failed; acmeproxy is not ready and answers requests that need \
                     the store with serverInternal until the data directory takes writes again \
                     (free disk space), then exits for a restart"
                );
            }
            if store.writable_again().await {
                tracing::warn!(
                    %cause,
                    "the data directory takes writes again; stopping so that the service \
                     manager restarts acmeproxy (exit status {EXIT_RESTART})"
                );
                shutdown.cancel();
                return Some(RestartNeeded { cause });
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::{Op, StoreError, Table};

    /// A store that has failed, and whose storage takes writes again once
    /// `writable` is set.
    #[derive(Default)]
    struct Failed {
        writable: AtomicBool,
    }

    #[async_trait]
    impl Store for Failed {
        fn backend_name(&self) -> &'static str {
            "failed"
        }
        async fn get(&self, _: Table, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::backend("get", "failed"))
        }
        async fn commit(&self, _: Vec<Op>) -> Result<(), StoreError> {
            Err(StoreError::backend("commit", "failed"))
        }
        async fn scan(
            &self,
            _: Table,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            Err(StoreError::backend("scan", "failed"))
        }
        async fn count(&self, _: Table) -> Result<u64, StoreError> {
            Err(StoreError::backend("count", "failed"))
        }
        async fn check_writable(&self) -> Result<(), StoreError> {
            Err(StoreError::backend("check", "failed"))
        }
        fn failure(&self) -> Option<String> {
            Some("No space left on device (os error 28)".to_owned())
        }
        async fn writable_again(&self) -> bool {
            self.writable.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_store_stops_the_server_once_writable_again() {
        let store = Arc::new(Failed::default());
        let shutdown = CancellationToken::new();
        let watch = spawn(store.clone(), shutdown.clone());
        tokio::time::sleep(CHECK_EVERY * 5).await;
        assert!(!shutdown.is_cancelled(), "stopped while still full");
        store.writable.store(true, Ordering::SeqCst);
        let restart = watch.await.unwrap().expect("a restart");
        assert!(shutdown.is_cancelled());
        assert!(restart.cause.contains("No space left"), "{restart}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_store_is_left_alone() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let shutdown = CancellationToken::new();
        let watch = spawn(store, shutdown.clone());
        tokio::time::sleep(CHECK_EVERY * 5).await;
        assert!(!shutdown.is_cancelled());
        shutdown.cancel();
        assert!(watch.await.unwrap().is_none());
    }
}
