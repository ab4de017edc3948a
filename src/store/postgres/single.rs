//! Batches that one statement can apply, without a transaction around it:
//! one operation (its precondition in the statement's `WHERE`, or a plain
//! `INSERT` for `Expect::Absent`), or inserts of absent keys only (one
//! multi-row `INSERT`, atomic as every statement is). They cost one round
//! trip instead of four (`BEGIN`, the lock, the write, `COMMIT`); most of
//! the server's batches are of these kinds.

use tokio_postgres::error::SqlState;

use super::super::{Expect, Op, Store, StoreError};
use super::PgStore;

/// What the single statement did.
pub(super) enum Single {
    /// The batch is committed.
    Done,
    /// Run the batch as a transaction: it is of another kind, or its
    /// statement met a racing insert or a deadlock, where the transaction
    /// finds the right key to name.
    Transaction,
}

impl PgStore {
    /// Applies `ops` with one statement when it can.
    pub(super) async fn commit_single(&self, ops: &[Op]) -> Result<Single, StoreError> {
        match ops {
            [op] => self.one(op).await,
            _ if ops
                .iter()
                .all(|o| o.expect == Expect::Absent && o.value.is_some()) =>
            {
                self.inserts(ops).await
            }
            _ => Ok(Single::Transaction),
        }
    }

    async fn one(&self, op: &Op) -> Result<Single, StoreError> {
        let conflict = || StoreError::Conflict {
            table: op.table,
            key: op.key.clone(),
        };
        let (tbl, key) = (op.table.name(), op.key.as_bytes());
        let (sql, applied) = match (&op.value, &op.expect) {
            (Some(_), Expect::Absent) => (
                "INSERT INTO records (tbl, key, value) VALUES ($1, $2, $3)",
                1,
            ),
            (Some(_), Expect::Any) => (
                "INSERT INTO records (tbl, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                1,
            ),
            (Some(_), Expect::Present) => (
                "UPDATE records SET value = $3 WHERE tbl = $1 AND key = $2",
                1,
            ),
            (Some(_), Expect::Value(_)) => (
                "UPDATE records SET value = $3 WHERE tbl = $1 AND key = $2 AND value = $4",
                1,
            ),
            (None, Expect::Any) => ("DELETE FROM records WHERE tbl = $1 AND key = $2", 0),
            (None, Expect::Present) => ("DELETE FROM records WHERE tbl = $1 AND key = $2", 1),
            (None, Expect::Value(_)) => (
                "DELETE FROM records WHERE tbl = $1 AND key = $2 AND value = $3",
                1,
            ),
            // Deleting a key that must be absent writes nothing.
            (None, Expect::Absent) => {
                return match self.get(op.table, &op.key).await? {
                    Some(_) => Err(conflict()),
                    None => Ok(Single::Done),
                };
            }
        };
        let client = self.client().await?;
        let st = client
            .prepare_cached(sql)
            .await
            .map_err(self.fail("preparing a write"))?;
        let expected: Option<&[u8]> = match &op.expect {
            Expect::Value(v) => Some(v),
            _ => None,
        };
        let result = match (&op.value, expected) {
            (Some(v), Some(e)) => client.execute(&st, &[&tbl, &key, v, &e]).await,
            (Some(v), None) => client.execute(&st, &[&tbl, &key, v]).await,
            (None, Some(e)) => client.execute(&st, &[&tbl, &key, &e]).await,
            (None, None) => client.execute(&st, &[&tbl, &key]).await,
        };
        match result {
            Ok(n) if n >= applied => Ok(Single::Done),
            Ok(_) => Err(conflict()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(conflict()),
            Err(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => Ok(Single::Transaction),
            Err(e) => Err(self.fail("writing a record")(e)),
        }
    }

    async fn inserts(&self, ops: &[Op]) -> Result<Single, StoreError> {
        let mut rows: Vec<(&str, &[u8], &[u8])> = ops
            .iter()
            .filter_map(|o| Some((o.table.name(), o.key.as_bytes(), o.value.as_deref()?)))
            .collect();
        // In key order, as every writer locks; a key twice in the batch
        // fails its second Absent: the transaction names it.
        rows.sort_unstable();
        if rows
            .windows(2)
            .any(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        {
            return Ok(Single::Transaction);
        }
        let tbls: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.1).collect();
        let values: Vec<&[u8]> = rows.iter().map(|r| r.2).collect();
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "INSERT INTO records (tbl, key, value) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
            )
            .await
            .map_err(self.fail("preparing an insert"))?;
        match client.execute(&st, &[&tbls, &keys, &values]).await {
            Ok(_) => Ok(Single::Done),
            Err(e)
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                Ok(Single::Transaction)
            }
            Err(e) => Err(self.fail("inserting records")(e)),
        }
    }
}
