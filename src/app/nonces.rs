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
use tokio::sync::{Semaphore, mpsc, oneshot};
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
    let set = Arc::new(StoreReplaySet::new(Arc::clone(store)));
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

/// Redemptions sent to the store at once, at most.
const REDEEM_BATCH: usize = 512;
/// Batches of redemptions in flight at once; while they all are, new
/// redemptions gather into the next batch.
const REDEEM_IN_FLIGHT: usize = 2;

/// A redemption waiting for its batch: the replay-set key and where its
/// answer goes.
/// The answer is `None` when the store failed (logged once per batch).
type Redemption = (String, oneshot::Sender<Option<bool>>);

/// The replay set in the store's `Meta` table: redeeming inserts the
/// nonce's key; finding it there means another request (on any replica)
/// redeemed the nonce first. The redemptions of concurrent requests go to
/// the store together, one `insert_new` per batch (with PostgreSQL one
/// statement and one commit for many requests instead of one each).
pub(super) struct StoreReplaySet {
    store: Arc<dyn Store>,
    batches: mpsc::UnboundedSender<Redemption>,
}

impl StoreReplaySet {
    /// The set over `store`, its batching task spawned (it ends when the
    /// set is dropped).
    fn new(store: Arc<dyn Store>) -> Self {
        let (batches, queue) = mpsc::unbounded_channel();
        tokio::spawn(redeem_batches(Arc::clone(&store), queue));
        Self { store, batches }
    }

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
        let (answer, answered) = oneshot::channel();
        if self.batches.send((key, answer)).is_err() {
            tracing::error!("the nonce redemption task has stopped");
            return Err(NonceError::Unavailable);
        }
        match answered.await {
            Ok(Some(new)) => Ok(new),
            Ok(None) => Err(NonceError::Unavailable),
            Err(_) => {
                tracing::error!("the nonce redemption task dropped a redemption");
                Err(NonceError::Unavailable)
            }
        }
    }
}

/// Sends the queued redemptions to the store in batches: a batch takes
/// what is queued once one of [`REDEEM_IN_FLIGHT`] slots is free, so one
/// request alone waits for one insert, and many at once share them.
async fn redeem_batches(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<Redemption>) {
    let slots = Arc::new(Semaphore::new(REDEEM_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < REDEEM_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (keys, answers): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
            match store.insert_new(Table::Meta, &keys).await {
                Ok(new) => {
                    for (answer, new) in answers.into_iter().zip(new) {
                        let _ = answer.send(Some(new));
                    }
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        source = ?std::error::Error::source(&e),
                        nonces = answers.len(),
                        "cannot record redeemed nonces in the store"
                    );
                    for answer in answers {
                        let _ = answer.send(None);
                    }
                }
            }
            drop(slot);
        });
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
        let set = StoreReplaySet::new(Arc::clone(&store));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_redemptions_in_batches_accept_each_nonce_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new_shared());
        let clock = Arc::new(FakeClock::new(time::OffsetDateTime::now_utc()));
        let age = Duration::minutes(5);
        let token = CancellationToken::new();
        let a = Arc::new(
            service(&store, clock.clone(), age, token.clone())
                .await
                .unwrap(),
        );
        let b = Arc::new(
            service(&store, clock.clone(), age, token.clone())
                .await
                .unwrap(),
        );
        let nonces: Vec<String> = (0..300).map(|_| a.issue()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for n in &nonces {
            // Each nonce three times, on both replicas, all at once.
            for svc in [&a, &b, &a] {
                let (svc, n) = (Arc::clone(svc), n.clone());
                tasks.spawn(async move { svc.redeem(&n).await });
            }
        }
        let (mut ok, mut replayed) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(()) => ok += 1,
                Err(NonceError::Replayed) => replayed += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((ok, replayed), (300, 600));
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
