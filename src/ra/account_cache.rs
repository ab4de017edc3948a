//! Accounts read by `kid`, kept a moment in memory: every signed request
//! reads its account, and decoding it from the store (a round trip on
//! PostgreSQL) is a cost every request pays.
//!
//! This process's own account changes drop the kept entry at once, and a read
//! that overlapped a change does not keep what it read (the cache's epoch
//! tells), so with a store only this process writes (sled, memory) a kept
//! account is always the stored one. With replicas (as Boulder's WFE keeps
//! them), a change made on another replica (a deactivation, a key change) is
//! seen here within the time to live. A signature that fails against a kept
//! key is checked again against the stored account, so a client that rolled
//! its key over on another replica is not refused meanwhile
//! (`http::extract`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::AccountRecord;

/// Accounts kept at most; when full, the expired ones go, and if none
/// had, all of them.
const MAX_ENTRIES: usize = 10_000;

/// The kept accounts, by id.
#[derive(Debug)]
pub(super) struct AccountCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (AccountRecord, Instant)>,
    /// Counts this process's account changes: a read that began before a
    /// change may have read the old account, and is not kept.
    epoch: u64,
}

impl AccountCache {
    /// A cache keeping accounts for `ttl`; zero keeps none.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account `id` if kept and younger than the time to live.
    pub(super) fn get(&self, id: &str) -> Option<AccountRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        self.lock()
            .entries
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(a, _)| a.clone())
    }

    /// Take this before reading an account from the store, and hand it to
    /// [`put_read`](Self::put_read) with what was read.
    pub(super) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps `account` as read from the store, unless an account changed in
    /// this process since `epoch` was taken (the read may predate it).
    pub(super) fn put_read(&self, account: &AccountRecord, epoch: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(account.id.as_str()) {
            inner.entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if inner.entries.len() >= MAX_ENTRIES {
                inner.entries.clear();
            }
        }
        inner
            .entries
            .insert(account.id.to_string(), (account.clone(), Instant::now()));
    }

    /// Forgets account `id`: it changed in this process (call it after the
    /// change is committed), or its kept key did not verify.
    pub(super) fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.entries.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str) -> AccountRecord {
        let mut a = crate::ra::test_support::account(time::OffsetDateTime::UNIX_EPOCH);
        a.id = crate::model::AccountId::parse(id).unwrap();
        a
    }

    #[test]
    fn keeps_for_the_ttl_forgets_on_change_and_stays_bounded() {
        let cache = AccountCache::new(Duration::from_millis(200));
        let a = account("AAAAAAAAAAAAAAAAAAAAAA");
        assert!(cache.get(a.id.as_str()).is_none());
        cache.put_read(&a, cache.epoch());
        assert_eq!(cache.get(a.id.as_str()), Some(a.clone()));
        cache.forget(a.id.as_str());
        assert!(cache.get(a.id.as_str()).is_none());
        cache.put_read(&a, cache.epoch());
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(a.id.as_str()).is_none(), "kept past its ttl");

        for i in 0..MAX_ENTRIES + 10 {
            cache.put_read(&account(&format!("{i:0>22}")), cache.epoch());
        }
        assert!(cache.lock().entries.len() <= MAX_ENTRIES);
    }

    /// A read that began before a change committed in this process may hold
    /// the old account: it is not kept, so the next request reads the store.
    #[test]
    fn a_read_overlapping_a_change_is_not_kept() {
        let cache = AccountCache::new(Duration::from_secs(60));
        let a = account("AAAAAAAAAAAAAAAAAAAAAA");
        let before = cache.epoch();
        // ... the store read happens here; meanwhile the account changes
        // (deactivated, say) and the change forgets it ...
        cache.forget(a.id.as_str());
        cache.put_read(&a, before);
        assert!(
            cache.get(a.id.as_str()).is_none(),
            "kept a read older than a change"
        );
        cache.put_read(&a, cache.epoch());
        assert_eq!(cache.get(a.id.as_str()), Some(a));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = AccountCache::new(Duration::ZERO);
        let a = account("AAAAAAAAAAAAAAAAAAAAAA");
        cache.put_read(&a, cache.epoch());
        assert!(cache.get(a.id.as_str()).is_none());
    }
}
