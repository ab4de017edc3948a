//! In-memory reference implementation of [`Store`], used by tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Expect, Op, Snapshot, SnapshotRecord, Store, StoreError, Table};

/// Checks every precondition of a batch against a lookup function; returns the
/// first failing op as a conflict.
pub(crate) fn check_preconditions<F>(ops: &[Op], mut current: F) -> Result<(), StoreError>
where
    F: FnMut(Table, &str) -> Result<Option<Vec<u8>>, StoreError>,
{
    for op in ops {
        let ok = match &op.expect {
            Expect::Any => true,
            Expect::Absent => current(op.table, &op.key)?.is_none(),
            Expect::Present => current(op.table, &op.key)?.is_some(),
            Expect::Value(v) => current(op.table, &op.key)?.as_deref() == Some(v.as_slice()),
        };
        if !ok {
            return Err(StoreError::Conflict {
                table: op.table,
                key: op.key.clone(),
            });
        }
    }
    Ok(())
}

/// Every record, by table and key.
type Tables = BTreeMap<(Table, String), Vec<u8>>;

/// A store that lives in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// Reports itself [shared](Store::is_shared), so that several servers in
    /// one test process behave as replicas on one database.
    shared: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that says it is [shared](Store::is_shared): servers
    /// started on one such store act as replicas of one database (tests).
    pub fn new_shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StoreError> {
        self.tables
            .lock()
            .map_err(|_| StoreError::backend("memory store", "lock poisoned"))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&(table, key.to_owned())).cloned())
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut tables = self.lock()?;
        // Preconditions see the batch's own earlier writes, as in a transaction.
        let mut staged: BTreeMap<(Table, String), Option<Vec<u8>>> = BTreeMap::new();
        for op in &ops {
            check_preconditions(std::slice::from_ref(op), |t, k| {
                let key = (t, k.to_owned());
                Ok(match staged.get(&key) {
                    Some(v) => v.clone(),
                    None => tables.get(&key).cloned(),
                })
            })?;
            staged.insert((op.table, op.key.clone()), op.value.clone());
        }
        for (key, value) in staged {
            match value {
                Some(v) => tables.insert(key, v),
                None => tables.remove(&key),
            };
        }
        Ok(())
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tables = self.lock()?;
        // Start at the prefix, or at `after` when that is further on (an
        // `after` before the prefix must not stop the scan at foreign keys).
        let from = after.filter(|a| *a > prefix).unwrap_or(prefix);
        let start = (table, from.to_owned());
        Ok(tables
            .range(start..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .filter(|((_, k), _)| Some(k.as_str()) != after)
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        Ok(self.lock()?.keys().filter(|(t, _)| *t == table).count() as u64)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    /// Copies every record under the lock that every commit takes, so no
    /// batch is half in it.
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let tables = self.lock()?;
        Ok(Snapshot {
            records: tables
                .iter()
                .map(|((table, key), value)| SnapshotRecord {
                    table: *table,
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        })
    }
}
