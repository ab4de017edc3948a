//! Nonces for replicas on one shared store (docs/ha.md): the HMAC key all
//! replicas use, created once in the `Meta` table, and the shared replay set
//! ([`StoreReplaySet`]), whose entries are purged once their nonce has
//! expired.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>

use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context;
use async_trait::async_trait;
use time::Duration;
use tokio_util::sync::CancellationToken;

use crate::model::Clock;
use crate::nonce::{NonceError, NonceService, ReplaySet};
use crate::store::{Expect, Op, Store, StoreError, Table};

/// The `Meta` key of the nonce HMAC key replicas share.
const KEY_NAME: &str = "nonce_key";
/// The `Meta` key prefix of used nonces: `nonce/<expires, 12 digits>/<id>`,
/// so that a scan meets the expired ones first.
const USED_PREFIX: &str = "nonce/";
/// How often expired entries of the replay set are deleted.
const PURGE_EVERY: StdDuration = StdDuration::from_secs(60);
/// Entries deleted per batch by the purge.
const PURGE_BATCH: usize = 500;

/// The nonce service for `store`: the in-memory window for a store one
/// process uses; the shared key and replay set when the store is shared
/// (then a purge task runs until `shutdown`).
pub(super) async fn service(
    store: &Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    max_age: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<NonceService> {
    if !store.is_shared() {
        return Ok(NonceService::new(clock, max_age));
    }
    let key = shared_key(store.as_ref())
        .await
        .context("reading the shared nonce key")?;
    let set = Arc::new(StoreReplaySet {
        store: Arc::clone(store),
    });
    tokio::spawn(purge_until(Arc::clone(&set), clock.clone(), shutdown));
    Ok(NonceService::shared(clock, max_age, &key, set))
}

/// The key every replica uses: the stored one, or a new one stored with
/// `Expect::Absent` (when two replicas start at once, both read the winner).
async fn shared_key(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    if let Some(key) = store.get(Table::Meta, KEY_NAME).await? {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    crate::nonce::fill_random(&mut key);
    crate::store::put_once(store, Table::Meta, KEY_NAME, key).await
}

/// The replay set in the store's `Meta` table: redeeming is one insert with
/// `Expect::Absent`; a conflict means another request (on any replica)
/// redeemed the nonce first.
pub(super) struct StoreReplaySet {
    store: Arc<dyn Store>,
}

impl StoreReplaySet {
    /// Deletes the entries whose nonce expired before `now` (Unix seconds);
    /// how many.
    async fn purge(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let page = self
                .store
                .scan(Table::Meta, USED_PREFIX, None, PURGE_BATCH)
                .await?;
            let expired: Vec<Op> = page
                .iter()
                .take_while(|(key, _)| expires_of(key).is_some_and(|at| at < now))
                .map(|(key, _)| Op::delete(Table::Meta, key.as_str(), Expect::Any))
                .collect();
            let n = expired.len();
            if n == 0 {
                return Ok(removed);
            }
            self.store.commit(expired).await?;
            removed += n;
            if n < PURGE_BATCH {
                return Ok(removed);
            }
        }
    }
}

/// The expiry written in a replay-set key.
fn expires_of(key: &str) -> Option<i64> {
    key.strip_prefix(USED_PREFIX)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[async_trait]
impl ReplaySet for StoreReplaySet {
    async fn mark_used(&self, id: &str, expires: i64) -> Result<bool, NonceError> {
        let key = format!("{USED_PREFIX}{expires:012}/{id}");
        match self
            .store
            .commit(vec![Op::put(Table::Meta, key, Vec::new(), Expect::Absent)])
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => {
                tracing::error!(error = %e, "cannot record a redeemed nonce in the store");
                Err(NonceError::Unavailable)
            }
        }
    }
}

async fn purge_until(set: Arc<StoreReplaySet>, clock: Arc<dyn Clock>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PURGE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        match set.purge(clock.now().unix_timestamp()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "purged expired nonces"),
            Err(e) => tracing::warn!(error = %e, "purging expired nonces failed; retried later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FakeClock;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn replicas_share_the_key_and_redeem_each_nonce_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new_shared());
        let clock = Arc::new(FakeClock::new(time::OffsetDateTime::now_utc()));
        let age = Duration::minutes(5);
        let token = CancellationToken::new();
        let a = service(&store, clock.clone(), age, token.clone())
            .await
            .unwrap();
        let b = service(&store, clock.clone(), age, token.clone())
            .await
            .unwrap();
        let n = a.issue();
        assert_eq!(b.redeem(&n).await, Ok(()));
        assert_eq!(a.redeem(&n).await, Err(NonceError::Replayed));
        assert_eq!(b.redeem(&n).await, Err(NonceError::Replayed));
        let m = b.issue();
        assert_ne!(m, n);
        assert_eq!(a.redeem(&m).await, Ok(()));

        // Expired entries go; live ones stay.
        let set = StoreReplaySet {
            store: Arc::clone(&store),
        };
        let live = a.issue();
        assert_eq!(b.redeem(&live).await, Ok(()));
        let now = clock.now().unix_timestamp();
        assert_eq!(set.purge(now).await.unwrap(), 0);
        assert_eq!(set.purge(now + 301).await.unwrap(), 3);
        assert!(
            store
                .scan(Table::Meta, USED_PREFIX, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        token.cancel();
    }

    #[tokio::test]
    async fn an_unshared_store_keeps_the_window_and_writes_nothing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(FakeClock::new(time::OffsetDateTime::now_utc()));
        let token = CancellationToken::new();
        let svc = service(&store, clock, Duration::minutes(5), token.clone())
            .await
            .unwrap();
        let n = svc.issue();
        assert_eq!(svc.redeem(&n).await, Ok(()));
        assert_eq!(svc.redeem(&n).await, Err(NonceError::Replayed));
        assert_eq!(store.count(Table::Meta).await.unwrap(), 0);
        token.cancel();
    }
}
