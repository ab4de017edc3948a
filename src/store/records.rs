//! The typed layer over [`Store`]: records as JSON values, their indexes, and
//! atomic batches with compare-and-swap on what was read.

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

impl Record for AccountRecord {
    const TABLE: Table = Table::Accounts;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for OrderRecord {
    const TABLE: Table = Table::Orders;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for AuthzRecord {
    const TABLE: Table = Table::Authzs;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for CertificateRecord {
    const TABLE: Table = Table::Certs;
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for FinalizeJob {
    const TABLE: Table = Table::Jobs;
    fn key(&self) -> String {
        self.order_id.to_string()
    }
}

impl Record for EabKeyRecord {
    const TABLE: Table = Table::EabKeys;
    fn key(&self) -> String {
        self.kid.clone()
    }
}

/// A record together with the exact bytes it was read from, so that an update
/// can be made conditional on nobody having changed it since.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    raw: Vec<u8>,
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

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Reads one record by key.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        match self.store.get(T::TABLE, key).await? {
            None => Ok(None),
            Some(raw) => decode::<T>(key, raw).map(Some),
        }
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

    /// Waits until every batch committed so far is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.store.sync().await
    }

    /// Creates an account and its key index entry. `Conflict` on the
    /// `AccountKeys` table means another account has this key already.
    pub fn account_insert_ops(batch: Batch, account: &AccountRecord) -> Batch {
        batch.insert(account).op(Op::put(
            Table::AccountKeys,
            account.thumbprint.clone(),
            account.id.as_str().as_bytes().to_vec(),
            Expect::Absent,
        ))
    }

    /// The account holding the key with this RFC 7638 thumbprint.
    pub async fn account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        let Some(id) = self.store.get(Table::AccountKeys, thumbprint).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        self.get::<AccountRecord>(&id).await
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
        batch.insert(cert).op(Op::put(
            Table::CertSerials,
            cert.serial_hex.clone(),
            cert.id.as_str().as_bytes().to_vec(),
            Expect::Absent,
        ))
    }

    /// The certificate with this serial (lower-case hex).
    pub async fn cert_by_serial(
        &self,
        serial_hex: &str,
    ) -> Result<Option<Versioned<CertificateRecord>>, StoreError> {
        let Some(id) = self.store.get(Table::CertSerials, serial_hex).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        self.get::<CertificateRecord>(&id).await
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
