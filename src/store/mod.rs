//! Persistence (Boulder's SA). The [`Store`] trait is a small transactional
//! key-value seam: named tables, point reads, prefix scans and atomic batches
//! whose operations carry compare-and-swap preconditions. Every backend
//! (memory, sled, PostgreSQL) implements only that; the typed layer in
//! [`records`] builds accounts, orders, jobs and their indexes on top, once.
//!
//! Writes are durable before `commit` returns: nothing a client was told
//! succeeded is lost in a crash.

pub mod lease;
pub mod memory;
pub mod postgres;
pub mod records;
pub mod sled;

use async_trait::async_trait;

pub use records::Records;

/// The tables the typed layer uses. Keys within a table are plain strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `account id` → AccountRecord
    Accounts,
    /// `jwk thumbprint` → account id
    AccountKeys,
    /// `account id/order id` → empty (the account's orders list)
    AccountOrders,
    /// `authz id` → AuthzRecord
    Authzs,
    /// `cert id` → CertificateRecord
    Certs,
    /// `serial hex` → cert id
    CertSerials,
    /// `kid` → EabKeyRecord
    EabKeys,
    /// `order id` → FinalizeJob
    Jobs,
    /// free-form settings the server keeps (`key` → bytes)
    Meta,
    /// `order id` → OrderRecord
    Orders,
}

impl Table {
    /// Every table.
    pub const ALL: [Self; 10] = [
        Self::Accounts,
        Self::AccountKeys,
        Self::AccountOrders,
        Self::Authzs,
        Self::Certs,
        Self::CertSerials,
        Self::EabKeys,
        Self::Jobs,
        Self::Meta,
        Self::Orders,
    ];

    /// A short stable name, used as a key prefix or a column value by backends.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accounts => "accounts",
            Self::AccountKeys => "account_keys",
            Self::AccountOrders => "account_orders",
            Self::Authzs => "authzs",
            Self::Certs => "certs",
            Self::CertSerials => "cert_serials",
            Self::EabKeys => "eab_keys",
            Self::Jobs => "jobs",
            Self::Meta => "meta",
            Self::Orders => "orders",
        }
    }

    /// The table whose [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// What must hold for an operation to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: a blind write or delete.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist (any value).
    Present,
    /// The key must hold exactly these bytes (compare-and-swap).
    Value(Vec<u8>),
}

/// One write in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub table: Table,
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    pub expect: Expect,
}

impl Op {
    /// Writes `value` at `key` if `expect` holds.
    pub fn put(table: Table, key: impl Into<String>, value: Vec<u8>, expect: Expect) -> Self {
        Self {
            table,
            key: key.into(),
            value: Some(value),
            expect,
        }
    }

    /// Deletes `key` if `expect` holds.
    pub fn delete(table: Table, key: impl Into<String>, expect: Expect) -> Self {
        Self {
            table,
            key: key.into(),
            value: None,
            expect,
        }
    }
}

/// Every record of every [`Table`] as it was at one moment between two
/// committed batches: each batch is in it entirely or not at all
/// ([`Store::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// By table (in [`Table::ALL`] order), then by key.
    pub records: Vec<SnapshotRecord>,
}

/// One record of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub table: Table,
    pub key: String,
    pub value: Vec<u8>,
}

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of a batch did not hold; nothing was written.
    #[error("conflict on {table:?} key {key:?}: the record changed or already exists")]
    Conflict { table: Table, key: String },
    /// An update ([`Records::update`]) met a conflict on every attempt:
    /// other writers kept changing the record.
    #[error("{table:?} key {key:?} changed concurrently on each of {attempts} attempts")]
    Contended {
        table: Table,
        key: String,
        attempts: usize,
    },
    /// A record could not be decoded.
    #[error("corrupt record in {table:?} key {key:?}")]
    Corrupt {
        table: Table,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed (I/O, connection, …).
    #[error("store backend failed: {context}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A backend error with context.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Writes `value` at `key` unless the key exists, and returns what the key
/// holds then: `value`, or what another writer (another replica) put there
/// first.
pub async fn put_once(
    store: &dyn Store,
    table: Table,
    key: &str,
    value: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    match store
        .commit(vec![Op::put(table, key, value.clone(), Expect::Absent)])
        .await
    {
        Ok(()) => Ok(value),
        // Someone else's write won; it is gone only if removed meanwhile.
        Err(StoreError::Conflict { .. }) => {
            store
                .get(table, key)
                .await?
                .ok_or_else(|| StoreError::Conflict {
                    table,
                    key: key.to_owned(),
                })
        }
        Err(e) => Err(e),
    }
}

/// Connection-pool figures of a backend that keeps a pool (PostgreSQL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max: usize,
    /// Connections open now (in use or idle).
    pub open: usize,
    /// Open connections no request uses now.
    pub idle: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

/// The persistence seam.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name, for logs (`memory`, `sled`, `postgresql`).
    fn backend_name(&self) -> &'static str;

    /// Reads one key.
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every op or none. If any precondition fails, returns
    /// [`StoreError::Conflict`] naming the first failing key and writes nothing.
    /// On `Ok`, the batch is durable.
    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError>;

    /// Like [`commit`](Store::commit), atomic and with the same
    /// preconditions, but it may return before the batch is durable: a later
    /// [`sync`](Store::sync) or durable commit makes it so. For writes no client
    /// is told about until a later durable write. Backends whose
    /// commits are always durable need not override it.
    async fn commit_deferred(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit(ops).await
    }

    /// Returns once every batch committed before the call (deferred ones
    /// included) is durable.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Inserts each of `keys` with an empty value where it is absent, each
    /// durable on return; per key, whether this call inserted it (false:
    /// it was there already, or is twice in `keys` and this is the second).
    /// Not atomic as a whole: for many independent claims at once (the
    /// shared nonce replay set). The default commits them one by one.
    async fn insert_new(&self, table: Table, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(keys.len());
        for key in keys {
            inserted.push(
                match self
                    .commit(vec![Op::put(
                        table,
                        key.as_str(),
                        Vec::new(),
                        Expect::Absent,
                    )])
                    .await
                {
                    Ok(()) => true,
                    Err(StoreError::Conflict { .. }) => false,
                    Err(e) => return Err(e),
                },
            );
        }
        Ok(inserted)
    }

    /// Keys and values of `table` whose key starts with `prefix`, in key order,
    /// starting after `after` (exclusive) when given, at most `limit` entries.
    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Number of keys in `table`.
    async fn count(&self, table: Table) -> Result<u64, StoreError>;

    /// Every record of every table, as a consistent cut: no batch is in it
    /// half-applied (for online backups). The whole content is read into
    /// memory, and a backend may hold its writes back while it reads.
    ///
    /// The default refuses: a backend without a way to read at one moment
    /// (a scan table by table would not be one) must not pretend.
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Err(StoreError::backend(
            "taking a snapshot",
            format!("the {} store cannot take snapshots", self.backend_name()),
        ))
    }

    /// The backend's connection pool, if it has one (for metrics).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Whether several processes (replicas) use this store at once, so that
    /// state kept in one process's memory (the nonce replay window, the
    /// finalize jobs it runs, its own TLS certificate) must go through the
    /// store instead (docs/ha.md). Embedded stores (memory, sled) serve one
    /// process.
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether a write can be made durable now (for `/ready`).
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Why the store has stopped serving, once it has hit an error this
    /// process cannot recover from (sled: an I/O error such as a full disk
    /// poisons the open database). From then on every call fails; the
    /// process should exit once [`writable_again`](Store::writable_again)
    /// says a restart would succeed, so that its supervisor restarts it.
    fn failure(&self) -> Option<String> {
        None
    }

    /// After a [`failure`](Store::failure): whether the storage takes writes
    /// again (for sled, whether its directory has room), so that a restart
    /// would succeed.
    async fn writable_again(&self) -> bool {
        true
    }
}
