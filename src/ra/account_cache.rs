//! Accounts read by `kid`, kept a moment in memory when replicas share the
//! store (as Boulder's WFE keeps them): every signed request reads its
//! account, and on PostgreSQL that is a round trip each. This process's own
//! account changes replace their entry at once; a change made on another
//! replica (a deactivation, a key change) is seen here within the time to
//! live. A signature that fails against a kept key is checked again against
//! the stored account, so a client that rolled its key over on another
//! replica is not refused meanwhile (`http::extract`).

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
    entries: Mutex<HashMap<String, (AccountRecord, Instant)>>,
}

impl AccountCache {
    /// A cache keeping accounts for `ttl`; zero keeps none.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The account `id` if kept and younger than the time to live.
    pub(super) fn get(&self, id: &str) -> Option<AccountRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(a, _)| a.clone())
    }

    /// Keeps `account` as just read or written.
    pub(super) fn put(&self, account: &AccountRecord) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(account.id.as_str()) {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(account.id.to_string(), (account.clone(), Instant::now()));
    }

    /// Forgets account `id` (changed, or its kept key did not verify).
    pub(super) fn forget(&self, id: &str) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::types::AccountStatus;

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
        cache.put(&a);
        assert_eq!(cache.get(a.id.as_str()), Some(a.clone()));
        let mut changed = a.clone();
        changed.status = AccountStatus::Deactivated;
        cache.put(&changed);
        assert_eq!(
            cache.get(a.id.as_str()).map(|x| x.status),
            Some(AccountStatus::Deactivated)
        );
        cache.forget(a.id.as_str());
        assert!(cache.get(a.id.as_str()).is_none());
        cache.put(&a);
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(a.id.as_str()).is_none(), "kept past its ttl");

        for i in 0..MAX_ENTRIES + 10 {
            cache.put(&account(&format!("{i:0>22}")));
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = AccountCache::new(Duration::ZERO);
        let a = account("AAAAAAAAAAAAAAAAAAAAAA");
        cache.put(&a);
        assert!(cache.get(a.id.as_str()).is_none());
    }
}
