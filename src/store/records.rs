//! The typed layer over [`Store`]: records as JSON values, their indexes,
//! atomic batches with compare-and-swap on what was read, and the one
//! read-modify-write loop ([`Records::update`]) that retries them.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::{Expect, Op, Store, StoreError, Table};
use crate::model::{
    AccountId, AccountRecord, AuthzRecord, CertificateRecord, EabKeyRecord, FinalizeJob, OrderId,
    OrderRecord,
};

/// A record kind kept in one table under its own key.
pub trait Record: Serialize + DeserializeOwned + Send + Sync {
    /// Its table.
    const TABLE: Table;
    /// Its key.
    fn key(&self) -> String;
}

/// Implements [`Record`] for each type: its table, and the field that is its
/// key.
macro_rules! records {
    ($($ty:ty => $table:ident by $field:ident),* $(,)?) => {$(
        impl Record for $ty {
            const TABLE: Table = Table::$table;
            fn key(&self) -> String {
                self.$field.to_string()
            }
        }
    )*};
}

records! {
    AccountRecord => Accounts by id,
    OrderRecord => Orders by id,
    AuthzRecord => Authzs by id,
    CertificateRecord => Certs by id,
    FinalizeJob => Jobs by order_id,
    EabKeyRecord => EabKeys by kid,
}

/// Attempts of [`Records::update`] before it gives up with
/// [`StoreError::Contended`].
pub const UPDATE_ATTEMPTS: usize = 8;

/// Attempts of [`Records::update_shared`], whose batches also write a record
/// that concurrent updates of its siblings write too (an authorization's
/// order).
pub const SHARED_UPDATE_ATTEMPTS: usize = 16;

/// What one attempt of an update decided.
#[derive(Debug)]
pub enum Change<R> {
    /// Commit this batch durably; the update then returns the value.
    Commit(Batch, R),
    /// Commit this batch, durable at the next [`sync`](Records::sync) or
    /// durable commit ([`Store::commit_deferred`]); then return the value.
    CommitDeferred(Batch, R),
    /// Write nothing and return the value.
    Keep(R),
}

/// A record together with the exact bytes it was read from, so that an update
/// can be made conditional on nobody having changed it since.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    raw: Vec<u8>,
}

impl<T: Record> Versioned<T> {
    /// `value` as it will read once written by
    /// [`Batch::replace_versioned`], so the writer can go on updating it
    /// without reading it back.
    pub fn encode(value: T) -> Result<Self, StoreError> {
        match serde_json::to_vec(&value) {
            Ok(raw) => Ok(Self { value, raw }),
            Err(source) => Err(StoreError::Corrupt {
                table: T::TABLE,
                key: value.key(),
                source,
            }),
        }
    }
}

impl<T> std::ops::Deref for Versioned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// An atomic set of writes, built from typed records.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    encode_error: Option<StoreError>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn encode<T: Record>(&mut self, record: &T) -> Option<Vec<u8>> {
        match serde_json::to_vec(record) {
            Ok(v) => Some(v),
            Err(source) => {
                self.encode_error.get_or_insert(StoreError::Corrupt {
                    table: T::TABLE,
                    key: record.key(),
                    source,
                });
                None
            }
        }
    }

    /// Inserts a record that must not exist yet.
    pub fn insert<T: Record>(mut self, record: &T) -> Self {
        if let Some(v) = self.encode(record) {
            self.ops
                .push(Op::put(T::TABLE, record.key(), v, Expect::Absent));
        }
        self
    }

    /// Replaces `old` with `new`, only if `old` is still what the store holds.
    pub fn replace<T: Record>(mut self, old: &Versioned<T>, new: &T) -> Self {
        if let Some(v) = self.encode(new) {
            self.ops.push(Op::put(
                T::TABLE,
                new.key(),
                v,
                Expect::Value(old.raw.clone()),
            ));
        }
        self
    }

    /// As [`replace`](Self::replace), writing the bytes `new` was encoded
    /// to.
    pub fn replace_versioned<T: Record>(mut self, old: &Versioned<T>, new: &Versioned<T>) -> Self {
        self.ops.push(Op::put(
            T::TABLE,
            new.value.key(),
            new.raw.clone(),
            Expect::Value(old.raw.clone()),
        ));
        self
    }

    /// Deletes `old`, only if it is still what the store holds.
    pub fn remove<T: Record>(mut self, old: &Versioned<T>) -> Self {
        self.ops.push(Op::delete(
            T::TABLE,
            old.value.key(),
            Expect::Value(old.raw.clone()),
        ));
        self
    }

    /// Adds a raw op (index entries).
    pub fn op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// The ops, or the first record that could not be encoded.
    fn into_ops(self) -> Result<Vec<Op>, StoreError> {
        match self.encode_error {
            Some(e) => Err(e),
            None => Ok(self.ops),
        }
    }
}

/// Typed access to a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
}

impl Records {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The underlying store (for the composition root).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Reads one record by key.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        match self.store.get(T::TABLE, key).await? {
            None => Ok(None),
            Some(raw) => decode::<T>(key, raw).map(Some),
        }
    }

    /// Reads the record at `key` and lets `attempt` decide what to write
    /// (a batch conditional on what was read, or nothing); when the commit
    /// conflicts because someone changed the record meanwhile, reads it again
    /// and repeats. Gives up with [`StoreError::Contended`] after
    /// [`UPDATE_ATTEMPTS`]. Returns the value of the attempt that stood.
    pub async fn update<T, R, E, F, Fut>(&self, key: &str, attempt: F) -> Result<R, E>
    where
        T: Record,
        E: From<StoreError>,
        F: FnMut(Option<Versioned<T>>) -> Fut,
        Fut: Future<Output = Result<Change<R>, E>>,
    {
        self.retry(key, None, UPDATE_ATTEMPTS, attempt).await
    }

    /// As [`update`](Self::update), starting from `current`, already read.
    pub async fn update_from<T, R, E, F, Fut>(
        &self,
        current: Versioned<T>,
        attempt: F,
    ) -> Result<R, E>
    where
        T: Record,
        E: From<StoreError>,
        F: FnMut(Option<Versioned<T>>) -> Fut,
        Fut: Future<Output = Result<Change<R>, E>>,
    {
        let key = current.value.key();
        self.retry(&key, Some(current), UPDATE_ATTEMPTS, attempt)
            .await
    }

    /// As [`update`](Self::update), with [`SHARED_UPDATE_ATTEMPTS`].
    pub async fn update_shared<T, R, E, F, Fut>(&self, key: &str, attempt: F) -> Result<R, E>
    where
        T: Record,
        E: From<StoreError>,
        F: FnMut(Option<Versioned<T>>) -> Fut,
        Fut: Future<Output = Result<Change<R>, E>>,
    {
        self.retry(key, None, SHARED_UPDATE_ATTEMPTS, attempt).await
    }

    /// The loop behind the `update` family.
    async fn retry<T, R, E, F, Fut>(
        &self,
        key: &str,
        mut first: Option<Versioned<T>>,
        attempts: usize,
        mut attempt: F,
    ) -> Result<R, E>
    where
        T: Record,
        E: From<StoreError>,
        F: FnMut(Option<Versioned<T>>) -> Fut,
        Fut: Future<Output = Result<Change<R>, E>>,
    {
        for _ in 0..attempts {
            let current = match first.take() {
                Some(v) => Some(v),
                None => self.get::<T>(key).await?,
            };
            let committed = match attempt(current).await? {
                Change::Keep(value) => return Ok(value),
                Change::Commit(batch, value) => (self.commit(batch).await, value),
                Change::CommitDeferred(batch, value) => (self.commit_deferred(batch).await, value),
            };
            match committed {
                (Ok(()), value) => return Ok(value),
                (Err(StoreError::Conflict { .. }), _) => continue,
                (Err(e), _) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended {
            table: T::TABLE,
            key: key.to_owned(),
            attempts,
        }
        .into())
    }

    /// Applies a batch atomically and durably.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.store.commit(batch.into_ops()?).await
    }

    /// Applies a batch atomically; it may be durable only after the next
    /// [`sync`](Records::sync) or durable commit ([`Store::commit_deferred`]).
    pub async fn commit_deferred(&self, batch: Batch) -> Result<(), StoreError> {
        self.store.commit_deferred(batch.into_ops()?).await
    }

    /// Whether a write can be made durable now (for readiness).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.store.check_writable().await
    }

    /// Why the store stopped serving, once it has ([`Store::failure`]).
    pub fn failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// Waits until every batch committed so far is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.store.sync().await
    }

    /// Creates an account and its key index entry. `Conflict` on the
    /// `AccountKeys` table means another account has this key already.
    pub fn account_insert_ops(batch: Batch, account: &AccountRecord) -> Batch {
        batch.insert(account).op(index_entry(
            Table::AccountKeys,
            &account.thumbprint,
            &account.id,
        ))
    }

    /// The account holding the key with this RFC 7638 thumbprint.
    pub async fn account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        self.by_index(Table::AccountKeys, thumbprint).await
    }

    /// Creates an order with its authorizations and the account's list entry,
    /// in that order: what is pointed to before what points to it.
    pub fn order_insert_ops(
        mut batch: Batch,
        order: &OrderRecord,
        authzs: &[AuthzRecord],
    ) -> Batch {
        for a in authzs {
            batch = batch.insert(a);
        }
        batch.insert(order).op(Op::put(
            Table::AccountOrders,
            format!("{}/{}", order.account_id, order.id),
            Vec::new(),
            Expect::Absent,
        ))
    }

    /// Removes an order and the account's list entry, only if the order is
    /// still what was read and no finalize job exists for it. Its
    /// authorizations are the caller's to remove.
    pub fn order_remove_ops(batch: Batch, order: &Versioned<OrderRecord>) -> Batch {
        batch
            .op(Op::delete(Table::Jobs, order.id.as_str(), Expect::Absent))
            .remove(order)
            .op(Op::delete(
                Table::AccountOrders,
                format!("{}/{}", order.account_id, order.id),
                Expect::Any,
            ))
    }

    /// The ids of an account's orders in id order (ids are random, so not by age), after `after`, at most `limit`.
    pub async fn account_orders(
        &self,
        account: &AccountId,
        after: Option<&OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        let prefix = format!("{account}/");
        let after_key = after.map(|o| format!("{prefix}{o}"));
        let rows = self
            .store
            .scan(Table::AccountOrders, &prefix, after_key.as_deref(), limit)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix).and_then(OrderId::parse))
            .collect())
    }

    /// Index entry for a certificate's serial.
    pub fn cert_insert_ops(batch: Batch, cert: &CertificateRecord) -> Batch {
        batch
            .insert(cert)
            .op(index_entry(Table::CertSerials, &cert.serial_hex, &cert.id))
    }

    /// Removes a certificate, only if it is still what was read, and its
    /// serial's index entry when `indexed` (the entry names this
    /// certificate).
    pub fn cert_remove_ops(
        batch: Batch,
        cert: &Versioned<CertificateRecord>,
        indexed: bool,
    ) -> Batch {
        let batch = batch.remove(cert);
        if !indexed {
            return batch;
        }
        batch.op(Op::delete(
            Table::CertSerials,
            cert.serial_hex.as_str(),
            Expect::Value(cert.id.to_string().into_bytes()),
        ))
    }

    /// The certificate with this serial (lower-case hex).
    pub async fn cert_by_serial(
        &self,
        serial_hex: &str,
    ) -> Result<Option<Versioned<CertificateRecord>>, StoreError> {
        self.by_index(Table::CertSerials, serial_hex).await
    }

    /// The record whose key the index `table` holds at `index_key`.
    async fn by_index<T: Record>(
        &self,
        table: Table,
        index_key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let Some(id) = self.store.get(table, index_key).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        self.get::<T>(&id).await
    }

    /// Every record of a kind, in key order, after `after`, at most `limit`.
    pub async fn list<T: Record>(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        let rows = self.store.scan(T::TABLE, "", after, limit).await?;
        rows.into_iter()
            .map(|(k, raw)| decode::<T>(&k, raw))
            .collect()
    }

    /// Number of records of a kind.
    pub async fn count<T: Record>(&self) -> Result<u64, StoreError> {
        self.store.count(T::TABLE).await
    }

    /// Finalize jobs due at `now`, at most `limit`, oldest first.
    pub async fn due_jobs(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Versioned<FinalizeJob>>, StoreError> {
        let mut due = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list::<FinalizeJob>(after.as_deref(), 512).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.value.key());
            let full = page.len() == 512;
            due.extend(page.into_iter().filter(|j| j.next_attempt_at <= now));
            if !full {
                break;
            }
        }
        due.sort_by_key(|j| j.created_at);
        due.truncate(limit);
        Ok(due)
    }
}

/// A new entry of the index `table`: `index_key` → the record key `id`.
fn index_entry(table: Table, index_key: &str, id: &impl std::fmt::Display) -> Op {
    Op::put(
        table,
        index_key,
        id.to_string().into_bytes(),
        Expect::Absent,
    )
}

fn decode<T: Record>(key: &str, raw: Vec<u8>) -> Result<Versioned<T>, StoreError> {
    match serde_json::from_slice::<T>(&raw) {
        Ok(value) => Ok(Versioned { value, raw }),
        Err(source) => Err(StoreError::Corrupt {
            table: T::TABLE,
            key: key.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::memory::MemoryStore;

    fn key(kid: &str) -> EabKeyRecord {
        EabKeyRecord {
            kid: kid.to_owned(),
            provisioner: "acme".to_owned(),
            hmac_key: vec![1; 32],
            created_at: OffsetDateTime::UNIX_EPOCH,
            bound_account: None,
            policy: None,
        }
    }

    /// Changes the stored record behind the update's back.
    async fn interfere(records: &Records) {
        let current = records.get::<EabKeyRecord>("k").await.unwrap().unwrap();
        let mut other = current.value.clone();
        other.provisioner.push('x');
        records
            .commit(Batch::new().replace(&current, &other))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn update_retries_a_conflict_and_gives_up_after_the_bound() {
        let records = Records::new(Arc::new(MemoryStore::new()));
        records
            .commit(Batch::new().insert(&key("k")))
            .await
            .unwrap();
        let calls = AtomicUsize::new(0);
        let (records, calls) = (&records, &calls);

        // Interfered with once: the second attempt stands.
        let kept = records
            .update("k", |current: Option<Versioned<EabKeyRecord>>| async move {
                let current = current.unwrap();
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    interfere(records).await;
                }
                let mut next = current.value.clone();
                next.provisioner = "updated".to_owned();
                let batch = Batch::new().replace(&current, &next);
                Ok::<_, StoreError>(Change::Commit(batch, next.provisioner))
            })
            .await
            .unwrap();
        assert_eq!(kept, "updated");
        assert_eq!(calls.swap(0, Ordering::SeqCst), 2);

        // Interfered with every time: Contended after UPDATE_ATTEMPTS.
        let e = records
            .update("k", |current: Option<Versioned<EabKeyRecord>>| async move {
                let current = current.unwrap();
                calls.fetch_add(1, Ordering::SeqCst);
                interfere(records).await;
                let batch = Batch::new().replace(&current, &current.value);
                Ok::<_, StoreError>(Change::Commit(batch, ()))
            })
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Contended { table: Table::EabKeys, ref key, attempts }
                if key == "k" && attempts == UPDATE_ATTEMPTS),
            "{e:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), UPDATE_ATTEMPTS);

        // Nothing to write: no commit, the value as is.
        let absent = records
            .update(
                "nope",
                |current: Option<Versioned<EabKeyRecord>>| async move {
                    Ok::<_, StoreError>(Change::Keep(current.is_none()))
                },
            )
            .await
            .unwrap();
        assert!(absent);
    }
}
