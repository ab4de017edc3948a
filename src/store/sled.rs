//! The embedded default store, on sled 0.34: one process, one directory, no
//! server to run (DESIGN.md §2 `db.type: sled`, §5, §6).
//!
//! # Key layout
//!
//! Everything lives in sled's default tree. A record of [`Table`] `t` under key
//! `k` is stored at the byte key
//!
//! ```text
//! <t.name()> 0x00 <k as UTF-8>
//! ```
//!
//! e.g. `orders\0Xk3…` or `account_orders\0<account id>/<order id>`. Table
//! names never contain a NUL byte, so the first NUL ends the table name and two
//! tables can never share a key, whatever bytes the keys hold. Within a table,
//! sled's byte order is the key's UTF-8 byte order, which is the same order as
//! Rust's `str` ordering the memory store uses, so scans page identically on
//! every backend. Values are the bytes given to [`Store::commit`], unchanged.
//!
//! [`SledStore::check_writable`](Store::check_writable) writes the key
//! `__ready` in the [`Table::Meta`] table.
//!
//! # Durability
//!
//! A batch is applied in one sled transaction, so that its preconditions and
//! writes are atomic and later ops see the writes of earlier ops of the same
//! batch. `commit` returns only after a sled flush (which fsyncs) that started
//! after the transaction completed. Concurrent committers share flushes (a
//! group commit): each takes a ticket once its transaction is applied, and one
//! flush covers every ticket handed out before it started. A failed flush is
//! returned as [`StoreError::Backend`]; the batch may then be applied or not,
//! as with any database whose commit acknowledgement is lost.
//!
//! # Nonces
//!
//! Replay-Nonces are kept in memory ([`NonceSet`]), not in sled: a sled
//! directory is locked by one process, so only one replica can use it
//! (DESIGN.md §5) and no other replica could redeem them anyway. Writing each
//! nonce would cost an fsync per request for nothing; after a restart clients
//! get `badNonce` and retry with a fresh one (RFC 8555 §6.5).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use time::OffsetDateTime;

use super::memory::NonceSet;
use super::{Expect, Op, Store, StoreError, Table};

/// The embedded store: a sled database in a directory of its own.
///
/// Only one process can open a directory at a time; a second open fails with
/// an error saying the store is in use.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    flushes: GroupFlush,
    nonces: NonceSet,
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`.
    ///
    /// Fails with a message naming the path, and saying so when another
    /// process (another acmeproxy) holds the directory's lock.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| {
            let context = if is_lock_error(&e) {
                format!(
                    "the store at {} is in use by another process (is acmeproxy already running?)",
                    path.display()
                )
            } else {
                format!("cannot open the sled store at {}", path.display())
            };
            StoreError::backend(context, e)
        })?;
        Ok(Self {
            db,
            path: path.to_owned(),
            flushes: GroupFlush::default(),
            nonces: NonceSet::default(),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `ops` (each with its sled key) in one sled transaction;
    /// [`StoreError::Conflict`] naming the first failing op, and nothing
    /// written, when a precondition does not hold.
    fn apply(db: &sled::Db, ops: &[(Vec<u8>, &Op)]) -> Result<(), StoreError> {
        let result = db.transaction(|tx| {
            for (key, op) in ops {
                // `tx.get` sees the writes of earlier ops in this transaction.
                let holds = match &op.expect {
                    Expect::Any => true,
                    Expect::Absent => tx.get(key)?.is_none(),
                    Expect::Present => tx.get(key)?.is_some(),
                    Expect::Value(want) => tx.get(key)?.is_some_and(|v| v == want.as_slice()),
                };
                if !holds {
                    return Err(ConflictableTransactionError::Abort((
                        op.table,
                        op.key.clone(),
                    )));
                }
                match &op.value {
                    Some(v) => tx.insert(key.as_slice(), v.as_slice())?,
                    None => tx.remove(key.as_slice())?,
                };
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort((table, key))) => Err(StoreError::Conflict { table, key }),
            Err(TransactionError::Storage(e)) => {
                Err(StoreError::backend("sled transaction failed", e))
            }
        }
    }

    /// Runs blocking sled work off the async worker threads.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(sled::Db) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(db))
            .await
            .map_err(|e| StoreError::backend(what, e))?
    }
}

#[async_trait]
impl Store for SledStore {
    fn backend_name(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // A point read is served from sled's page cache in microseconds, so it
        // runs inline rather than paying for a blocking-pool hop.
        self.db
            .get(db_key(table, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::backend(format!("sled read of {table:?} {key:?}"), e))
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.blocking("sled transaction task", move |db| {
            let keyed: Vec<(Vec<u8>, &Op)> = ops
                .iter()
                .map(|op| (db_key(op.table, &op.key), op))
                .collect();
            Self::apply(&db, &keyed)
        })
        .await?;
        self.flushes.wait_durable(&self.db).await
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let full_prefix = db_key(table, prefix);
        // Start at the prefix, or just past `after` when that is further on.
        let start = match after.map(|a| db_key(table, a)) {
            Some(a) if a >= full_prefix => Bound::Excluded(a),
            _ => Bound::Included(full_prefix.clone()),
        };
        self.blocking("sled scan task", move |db| {
            let table_len = table.name().len() + 1;
            let mut rows = Vec::new();
            for item in db.range((start, Bound::Unbounded)) {
                let (k, v) = item.map_err(|e| StoreError::backend("sled scan", e))?;
                if !k.starts_with(&full_prefix) {
                    break;
                }
                let raw = k.get(table_len..).unwrap_or_default();
                let key = String::from_utf8(raw.to_vec())
                    .map_err(|e| StoreError::backend(format!("sled key in {table:?}"), e))?;
                rows.push((key, v.to_vec()));
                if rows.len() >= limit {
                    break;
                }
            }
            Ok(rows)
        })
        .await
    }

    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        self.blocking("sled count task", move |db| {
            let mut n = 0u64;
            for item in db.scan_prefix(db_key(table, "")).keys() {
                item.map_err(|e| StoreError::backend(format!("sled count of {table:?}"), e))?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn insert_nonce(&self, nonce: &str, expires: OffsetDateTime) -> Result<(), StoreError> {
        self.nonces.insert(nonce, expires)
    }

    async fn redeem_nonce(&self, nonce: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.nonces.redeem(nonce, now)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.blocking("sled readiness write task", |db| {
            db.insert(db_key(Table::Meta, READY_KEY), &b"ok"[..])
                .map(|_| ())
                .map_err(|e| StoreError::backend("sled readiness write", e))
        })
        .await?;
        self.flushes.wait_durable(&self.db).await
    }
}

/// The Meta key [`Store::check_writable`] writes.
const READY_KEY: &str = "__ready";

/// Shares fsyncs between concurrent committers (group commit), and keeps to
/// one flush at a time per store.
///
/// A committer takes a ticket after its transaction is applied, then waits its
/// turn for the flush lock. If a flush that began after its ticket was issued
/// has completed meanwhile, its writes are durable and it is done; otherwise
/// it flushes itself, covering every ticket issued so far.
#[derive(Debug, Default)]
struct GroupFlush {
    /// Tickets handed out, one per applied write waiting to be durable.
    issued: AtomicU64,
    /// Every ticket up to and including this one is durable.
    durable: AtomicU64,
    /// One flush at a time; waiters queue in FIFO order.
    lock: tokio::sync::Mutex<()>,
}

impl GroupFlush {
    /// Returns once everything written before this call is on disk.
    async fn wait_durable(&self, db: &sled::Db) -> Result<(), StoreError> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.lock.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to `covers` belongs to a write already applied, so
        // the flush below makes it durable too.
        let covers = self.issued.load(Ordering::SeqCst);
        // Not `flush_async`: it runs the flush on sled's own I/O pool, where a
        // flush waits for a buffer write queued on that same pool; enough
        // concurrent flushes starve the pool and hang forever (sled #1308,
        // unfixed in 0.34.7; reproduced here with 64 concurrent committers).
        // A blocking flush on tokio's blocking pool leaves sled's pool free.
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::backend("sled flush task", e))?
            .map_err(|e| StoreError::backend("sled flush (fsync) failed", e))?;
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

/// `<table name> NUL <key>`; see the module documentation.
fn db_key(table: Table, key: &str) -> Vec<u8> {
    let name = table.name().as_bytes();
    let mut out = Vec::with_capacity(name.len() + 1 + key.len());
    out.extend_from_slice(name);
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// sled reports a held directory lock as an I/O error with this text
/// (sled 0.34 `config.rs`, `try_lock_exclusive`).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_tables_never_collide() {
        assert_eq!(db_key(Table::Orders, "ab"), b"orders\0ab".to_vec());
        for a in Table::ALL {
            for b in Table::ALL {
                if a != b {
                    // Not even a key full of NULs in `b` falls under `a`'s prefix.
                    assert!(!db_key(b, "\0\0x").starts_with(&db_key(a, "")));
                }
            }
        }
    }
}
