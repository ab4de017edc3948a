//! The PostgreSQL store (`db.type: "postgresql"`), for replicas that share
//! one database: tokio-postgres connections in a deadpool pool.
//!
//! # Schema
//!
//! One table holds every [`Table`] (`migrations/postgres/0001_records.sql`):
//!
//! ```text
//! records (tbl text, key bytea, value bytea, PRIMARY KEY (tbl, key))
//! ```
//!
//! `tbl` is [`Table::name`]; `key` is the key's UTF-8 bytes. bytea sorts
//! byte by byte, the order the memory and sled stores scan in, so scans page
//! alike on every backend whatever the database's locale (a `text` column
//! would need `COLLATE "C"`, and could not hold a key with a NUL). Values are the bytes given to [`Store::commit`],
//! unchanged. The schema is versioned: `schema_migrations` lists the
//! migrations applied, and [`PgStore::open`] applies the missing ones in one
//! transaction under an advisory lock, so replicas starting together take
//! turns (module `schema`). The database itself is created at start-up when
//! it does not exist.
//!
//! # Commits
//!
//! A batch of one operation, or of inserts of absent keys only, is one
//! statement (module `single`): the precondition is in its `WHERE`, or it
//! is a plain `INSERT` that a racing insert makes fail. Any other batch is
//! one READ COMMITTED transaction. It first locks the rows of
//! every key it touches with `SELECT … ORDER BY tbl, key FOR UPDATE`, in
//! that fixed order so two batches cannot wait on each other in a cycle;
//! then it checks the preconditions in batch order against those rows with
//! the batch's own earlier writes laid over them (as the memory store
//! does), then writes with one `INSERT … ON CONFLICT DO UPDATE` and one
//! `DELETE`. A key that was absent and had to stay so (`Expect::Absent`)
//! is written with a plain `INSERT`: a batch that inserted it meanwhile
//! makes ours fail with a unique violation, and ours is then run again from
//! the start, when the row exists to be locked and checked. Serialization
//! failures and deadlocks are run again too, a few times. A commit returns
//! once PostgreSQL has it on disk (the connections set
//! `synchronous_commit=on`).
//!
//! # Snapshots
//!
//! [`Store::snapshot`] reads every row in one REPEATABLE READ, READ ONLY
//! transaction: PostgreSQL's snapshot is a consistent cut, and writers are
//! not held back.
//!
//! # Failures
//!
//! While PostgreSQL is unreachable every call fails with
//! [`StoreError::Backend`] naming the server (never the password), and
//! `/ready` answers 503 ([`Store::check_writable`] writes the key
//! `__ready` in [`Table::Meta`]). The pool drops the connections that broke
//! and opens new ones once the server is back, so the store recovers by
//! itself: [`Store::failure`] stays `None`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

mod options;
mod schema;
mod single;

pub use options::PgOptions;
use options::{Target, Tls};

use super::{Expect, Op, Snapshot, SnapshotRecord, Store, StoreError, Table};

/// How long a caller waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// How long opening or checking a pooled connection may take.
const POOL_CREATE: Duration = Duration::from_secs(10);
/// How often a batch runs when it meets a deadlock, a serialization
/// failure or a racing insert.
const MAX_ATTEMPTS: usize = 5;

/// The PostgreSQL store: a pool of connections to one database.
pub struct PgStore {
    pool: Pool,
    target: Target,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Why one run of a batch did not commit.
enum Attempt {
    /// Run the batch again (deadlock, serialization failure, racing insert).
    Again(tokio_postgres::Error),
    Failed(StoreError),
}

impl PgStore {
    /// Connects, creates the database if it does not exist, brings its
    /// schema up to date, and opens the pool.
    pub async fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let c = options.connect()?;
        let mut client = schema::open_database(&c).await?;
        let applied = schema::migrate(&mut client).await?;
        if !applied.is_empty() {
            tracing::info!(target = %c.target, versions = ?applied, "migrated the PostgreSQL schema");
        }
        drop(client);
        let config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &c.tls {
            Tls::Off => Manager::from_config(c.config.clone(), tokio_postgres::NoTls, config),
            Tls::VerifyFull(make) => Manager::from_config(c.config.clone(), make.clone(), config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_CREATE))
            .recycle_timeout(Some(POOL_CREATE))
            .build()
            .map_err(|e| StoreError::backend("building the PostgreSQL connection pool", e))?;
        Ok(Self {
            pool,
            target: c.target,
        })
    }

    fn fail(&self, what: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + use<'_> {
        let context = format!("{what} (PostgreSQL at {})", self.target);
        move |e| StoreError::backend(context, e)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::backend(format!("no connection to PostgreSQL at {}", self.target), e)
        })
    }

    /// One run of a batch whose keys are distinct: one call of the
    /// `acmeproxy_commit` function (migration 2), one round trip.
    async fn try_commit_call(&self, ops: &[Op]) -> Result<(), Attempt> {
        let client = self.client().await.map_err(Attempt::Failed)?;
        let st = client
            .prepare_cached("SELECT acmeproxy_commit($1, $2, $3, $4, $5)")
            .await
            .map_err(|e| retry_or(e, self.fail("preparing a batch")))?;
        let tbls: Vec<&str> = ops.iter().map(|o| o.table.name()).collect();
        let keys: Vec<&[u8]> = ops.iter().map(|o| o.key.as_bytes()).collect();
        let vals: Vec<Option<&[u8]>> = ops.iter().map(|o| o.value.as_deref()).collect();
        let kinds: Vec<i16> = ops
            .iter()
            .map(|o| match o.expect {
                Expect::Any => 0,
                Expect::Absent => 1,
                Expect::Present => 2,
                Expect::Value(_) => 3,
            })
            .collect();
        let expected: Vec<Option<&[u8]>> = ops
            .iter()
            .map(|o| match &o.expect {
                Expect::Value(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect();
        let row = client
            .query_one(&st, &[&tbls, &keys, &vals, &kinds, &expected])
            .await
            .map_err(|e| retry_or(e, self.fail("committing a batch")))?;
        let failed: i32 = row.get(0);
        match usize::try_from(failed).ok().and_then(|i| i.checked_sub(1)) {
            None => Ok(()),
            Some(i) => {
                let op = ops.get(i).ok_or_else(|| {
                    Attempt::Failed(StoreError::backend(
                        "committing a batch",
                        format!("acmeproxy_commit named op {failed} of {}", ops.len()),
                    ))
                })?;
                Err(Attempt::Failed(StoreError::Conflict {
                    table: op.table,
                    key: op.key.clone(),
                }))
            }
        }
    }

    /// One run of a batch, in one transaction.
    async fn try_commit(&self, ops: &[Op]) -> Result<(), Attempt> {
        let mut client = self.client().await.map_err(Attempt::Failed)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Attempt::Failed(self.fail("starting a transaction")(e)))?;
        let touched: BTreeSet<(&str, &[u8])> = ops
            .iter()
            .map(|o| (o.table.name(), o.key.as_bytes()))
            .collect();
        let checks = ops.iter().any(|o| o.expect != Expect::Any);
        // The rows there are, locked in (tbl, key) order.
        let mut found: BTreeMap<(Table, String), Vec<u8>> = BTreeMap::new();
        if checks {
            let (tbls, keys): (Vec<&str>, Vec<&[u8]>) = touched.iter().copied().unzip();
            let lock = tx
                .prepare_cached(
                    "SELECT r.tbl, r.key, r.value FROM records r \
                     WHERE (r.tbl, r.key) IN (SELECT * FROM unnest($1::text[], $2::bytea[])) \
                     ORDER BY r.tbl, r.key FOR UPDATE",
                )
                .await
                .map_err(|e| retry_or(e, self.fail("preparing a lock")))?;
            for row in tx
                .query(&lock, &[&tbls, &keys])
                .await
                .map_err(|e| retry_or(e, self.fail("locking a batch's records")))?
            {
                let table = table_of(row.get(0)).map_err(Attempt::Failed)?;
                let key = key_of(table, row.get(1)).map_err(Attempt::Failed)?;
                found.insert((table, key), row.get(2));
            }
        }
        // Preconditions in batch order, later ops seeing earlier writes.
        let mut staged: BTreeMap<(Table, &str), Option<&[u8]>> = BTreeMap::new();
        let mut must_be_new: BTreeSet<(Table, &str)> = BTreeSet::new();
        for op in ops {
            let k = (op.table, op.key.as_str());
            let current: Option<&[u8]> = match staged.get(&k) {
                Some(v) => *v,
                None => found.get(&(op.table, op.key.clone())).map(Vec::as_slice),
            };
            let ok = match &op.expect {
                Expect::Any => true,
                Expect::Absent => current.is_none(),
                Expect::Present => current.is_some(),
                Expect::Value(v) => current == Some(v.as_slice()),
            };
            if !ok {
                return Err(Attempt::Failed(StoreError::Conflict {
                    table: op.table,
                    key: op.key.clone(),
                }));
            }
            if op.expect == Expect::Absent && !staged.contains_key(&k) {
                must_be_new.insert(k);
            }
            staged.insert(k, op.value.as_deref());
        }
        // The writes, in key order.
        let mut upsert: (Vec<&str>, Vec<&[u8]>, Vec<&[u8]>) = Default::default();
        let mut insert: (Vec<&str>, Vec<&[u8]>, Vec<&[u8]>) = Default::default();
        let mut delete: (Vec<&str>, Vec<&[u8]>) = Default::default();
        for ((table, key), value) in &staged {
            let existed = found.contains_key(&(*table, (*key).to_owned()));
            match value {
                Some(v) if !existed && must_be_new.contains(&(*table, *key)) => {
                    insert.0.push(table.name());
                    insert.1.push(key.as_bytes());
                    insert.2.push(v);
                }
                Some(v) => {
                    upsert.0.push(table.name());
                    upsert.1.push(key.as_bytes());
                    upsert.2.push(v);
                }
                // A key that was not there when the batch locked its rows
                // stays away: deleting one a racing batch inserted since
                // would undo a write that came after ours.
                None if existed || !checks => {
                    delete.0.push(table.name());
                    delete.1.push(key.as_bytes());
                }
                None => {}
            }
        }
        if !insert.0.is_empty() {
            let st = tx
                .prepare_cached(
                    "INSERT INTO records (tbl, key, value) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
                )
                .await
                .map_err(|e| retry_or(e, self.fail("preparing an insert")))?;
            tx.execute(&st, &[&insert.0, &insert.1, &insert.2])
                .await
                .map_err(|e| retry_or(e, self.fail("inserting records")))?;
        }
        if !upsert.0.is_empty() {
            let st = tx
                .prepare_cached(
                    "INSERT INTO records (tbl, key, value) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                     ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await
                .map_err(|e| retry_or(e, self.fail("preparing a write")))?;
            tx.execute(&st, &[&upsert.0, &upsert.1, &upsert.2])
                .await
                .map_err(|e| retry_or(e, self.fail("writing records")))?;
        }
        if !delete.0.is_empty() {
            let st = tx
                .prepare_cached(
                    "DELETE FROM records \
                     WHERE (tbl, key) IN (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                )
                .await
                .map_err(|e| retry_or(e, self.fail("preparing a delete")))?;
            tx.execute(&st, &[&delete.0, &delete.1])
                .await
                .map_err(|e| retry_or(e, self.fail("deleting records")))?;
        }
        tx.commit()
            .await
            .map_err(|e| retry_or(e, self.fail("committing a batch")))
    }
}

/// A deadlock, a serialization failure or a racing insert runs the batch
/// again; anything else fails it.
fn retry_or(
    e: tokio_postgres::Error,
    fail: impl FnOnce(tokio_postgres::Error) -> StoreError,
) -> Attempt {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::UNIQUE_VIOLATION =>
        {
            Attempt::Again(e)
        }
        _ => Attempt::Failed(fail(e)),
    }
}

/// The [`Table`] a `tbl` column names.
fn table_of(name: &str) -> Result<Table, StoreError> {
    Table::from_name(name).ok_or_else(|| {
        StoreError::backend(
            "reading the PostgreSQL store",
            format!("a record names an unknown table {name:?}"),
        )
    })
}

/// A key read back: the UTF-8 it was written as.
fn key_of(table: Table, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| {
        StoreError::backend(
            format!("reading the PostgreSQL store: a key of {table:?} is not UTF-8"),
            e,
        )
    })
}

/// The first byte string after every one that starts with `prefix`
/// (`None`: there is none, or the prefix is empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[async_trait]
impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgresql"
    }

    /// Several servers may use one database: they are replicas
    /// (docs/ha.md).
    fn is_shared(&self) -> bool {
        true
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let status = self.pool.status();
        Some(super::PoolStatus {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        })
    }

    async fn insert_new(&self, table: Table, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "INSERT INTO records (tbl, key, value) \
                 SELECT $1, k, ''::bytea FROM unnest($2::bytea[]) AS k \
                 ON CONFLICT (tbl, key) DO NOTHING RETURNING key",
            )
            .await
            .map_err(self.fail("preparing an insert"))?;
        let bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let rows = client
            .query(&st, &[&table.name(), &bytes])
            .await
            .map_err(self.fail("inserting records"))?;
        let mut new: BTreeSet<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        // The first of a key twice in `keys` takes the insert.
        Ok(keys.iter().map(|k| new.remove(k.as_bytes())).collect())
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("SELECT value FROM records WHERE tbl = $1 AND key = $2")
            .await
            .map_err(self.fail("preparing a read"))?;
        let row = client
            .query_opt(&st, &[&table.name(), &key.as_bytes()])
            .await
            .map_err(self.fail("reading a record"))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        if let single::Single::Done = self.commit_single(&ops).await? {
            return Ok(());
        }
        // A key twice in one batch needs the staged checks of the
        // transaction; other batches are one call.
        let distinct = ops
            .iter()
            .map(|o| (o.table, o.key.as_str()))
            .collect::<BTreeSet<_>>()
            .len()
            == ops.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tried = if distinct {
                self.try_commit_call(&ops).await
            } else {
                self.try_commit(&ops).await
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Again(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "running a PostgreSQL batch again");
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                Err(Attempt::Again(e)) => {
                    // A racing insert every time: the first key that had to
                    // be absent is the one that is not.
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        if let Some(op) = ops.iter().find(|o| o.expect == Expect::Absent) {
                            return Err(StoreError::Conflict {
                                table: op.table,
                                key: op.key.clone(),
                            });
                        }
                    }
                    let (table, key) = ops
                        .first()
                        .map(|o| (o.table, o.key.clone()))
                        .unwrap_or((Table::Meta, String::new()));
                    return Err(StoreError::Contended {
                        table,
                        key,
                        attempts: attempt,
                    });
                }
            }
        }
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let end = prefix_end(prefix.as_bytes());
        let prefix = prefix.as_bytes();
        let after = after.map(str::as_bytes);
        // Four statements rather than NULL tests, so that every bound is an
        // index bound.
        let mut sql = String::from("SELECT key, value FROM records WHERE tbl = $1 AND key >= $2");
        let name = table.name();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&name, &prefix, &limit];
        if let Some(end) = &end {
            params.push(end);
            sql.push_str(&format!(" AND key < ${}", params.len()));
        }
        if let Some(after) = &after {
            params.push(after);
            sql.push_str(&format!(" AND key > ${}", params.len()));
        }
        sql.push_str(" ORDER BY key LIMIT $3");
        let client = self.client().await?;
        let st = client
            .prepare_cached(&sql)
            .await
            .map_err(self.fail("preparing a scan"))?;
        let rows = client
            .query(&st, &params)
            .await
            .map_err(self.fail("scanning records"))?;
        rows.into_iter()
            .map(|r| Ok((key_of(table, r.get(0))?, r.get(1))))
            .collect()
    }

    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("SELECT count(*) FROM records WHERE tbl = $1")
            .await
            .map_err(self.fail("preparing a count"))?;
        let n: i64 = client
            .query_one(&st, &[&table.name()])
            .await
            .map_err(self.fail("counting records"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.fail("starting a snapshot"))?;
        let rows = tx
            .query("SELECT tbl, key, value FROM records", &[])
            .await
            .map_err(self.fail("reading a snapshot"))?;
        tx.commit().await.map_err(self.fail("ending a snapshot"))?;
        let mut records = rows
            .into_iter()
            .map(|r| {
                let table = table_of(r.get(0))?;
                Ok(SnapshotRecord {
                    table,
                    key: key_of(table, r.get(1))?,
                    value: r.get(2),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        records.sort_by(|a, b| (a.table, &a.key).cmp(&(b.table, &b.key)));
        Ok(Snapshot { records })
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "INSERT INTO records (tbl, key, value) VALUES ($1, $2, '') \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await
            .map_err(self.fail("preparing the readiness write"))?;
        client
            .execute(&st, &[&Table::Meta.name(), &&b"__ready"[..]])
            .await
            .map_err(self.fail("writing the readiness key"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_byte_string() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"ab").as_deref(), Some(&b"ac"[..]));
        assert_eq!(prefix_end(b"a/").as_deref(), Some(&b"a0"[..]));
        assert_eq!(prefix_end(b"a\xff\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_end(b"\xff"), None);
        let end = prefix_end("x\u{10FFFF}".as_bytes()).unwrap();
        assert!(end.as_slice() > "x\u{10FFFF}\u{10FFFF}".as_bytes());
    }
}
