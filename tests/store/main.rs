//! One test battery for every `Store` backend: the same suite runs against the memory reference, sled and PostgreSQL.
//! A backend is added with one line, `store_battery!(name, fixture_expr)`, where
//! `fixture_expr` is evaluated inside each async test returning `Result` (so it
//! may `.await`, use `?`, or `return Ok(())` to skip when, say,
//! `ACMEPROXY_TEST_PG_URL` is unset).
//!
//! Below the battery: sled-only tests (durability across a restart, the
//! directory lock, and a commit-rate measurement that prints its numbers);
//! the PostgreSQL-only tests are in `postgres.rs`. The PostgreSQL battery
//! runs on one throw-away server (`kit::postgres`), each test in a database
//! of its own.

mod postgres;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acmeproxy::acme::jws::PublicJwk;
use acmeproxy::acme::types::{
    AccountStatus, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, OrderStatus,
};
use acmeproxy::model::{
    AccountId, AccountRecord, AuthzId, AuthzRecord, CertId, CertificateRecord, ChallengeRecord,
    FinalizeJob, OrderId, OrderRecord,
};
use acmeproxy::store::memory::MemoryStore;
use acmeproxy::store::postgres::{PgOptions, PgStore};
use acmeproxy::store::records::Batch;
use acmeproxy::store::sled::SledStore;
use acmeproxy::store::{Expect, Op, Records, Snapshot, Store, StoreError, Table};
use acmeproxy_testkit as kit;
use kit::postgres::{PgServer, unique_database};
use time::OffsetDateTime;
use time::macros::datetime;

type TestResult = anyhow::Result<()>;

/// A store under test and whatever must outlive it (a temp dir, a schema).
struct Fixture {
    store: Arc<dyn Store>,
    _guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    fn memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            _guard: None,
        }
    }

    fn sled() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(&dir.path().join("db"))?;
        Ok(Self {
            store: Arc::new(store),
            _guard: Some(Box::new(dir)),
        })
    }

    /// A store in a new database of the shared PostgreSQL server; `None`
    /// (after a note) when PostgreSQL is not installed and `CI` is unset.
    async fn postgres() -> anyhow::Result<Option<Self>> {
        if kit::postgres::skip("the PostgreSQL store battery") {
            return Ok(None);
        }
        let server = PgServer::shared().map_err(anyhow::Error::msg)?;
        let store = PgStore::open(&pg_options(server, &unique_database("battery"))).await?;
        Ok(Some(Self {
            store: Arc::new(store),
            _guard: None,
        }))
    }
}

/// Options for `database` on `server`, the password in the URL.
fn pg_options(server: &PgServer, database: &str) -> PgOptions {
    PgOptions {
        data_source: server.url_with_password(),
        database: database.to_owned(),
        password: None,
        max_connections: 8,
    }
}

macro_rules! store_battery {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;

            battery_tests!(
                $fixture;
                get_put_delete,
                empty_commit_is_ok,
                precondition_absent,
                insert_new_claims_each_absent_key_once,
                precondition_present,
                precondition_value,
                failed_precondition_writes_nothing,
                conflict_names_first_failing_key,
                preconditions_see_earlier_ops,
                scan_prefix_after_limit,
                scan_after_outside_prefix,
                scan_isolates_tables,
                count_per_table,
                check_writable_succeeds,
                snapshot_holds_every_table,
                records_accounts,
                records_replace_is_compare_and_swap,
                records_account_orders_paging,
                records_cert_by_serial,
                records_due_jobs,
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cas_race_counts_exactly() -> TestResult {
                let fixture: Fixture = $fixture;
                super::cas_race_counts_exactly(fixture.store.clone()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn snapshot_is_a_consistent_cut() -> TestResult {
                let fixture: Fixture = $fixture;
                super::snapshot_is_a_consistent_cut(fixture.store.clone()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn absent_race_has_one_winner() -> TestResult {
                let fixture: Fixture = $fixture;
                super::absent_race_has_one_winner(fixture.store.clone()).await
            }
        }
    };
}

macro_rules! battery_tests {
    ($fixture:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() -> TestResult {
                let fixture: Fixture = $fixture;
                super::$test(fixture.store.clone()).await
            }
        )*
    };
}

store_battery!(memory, Fixture::memory());
store_battery!(sled, Fixture::sled()?);
store_battery!(
    postgresql,
    match Fixture::postgres().await? {
        Some(f) => f,
        None => return Ok(()),
    }
);

// ---------------------------------------------------------------------------
// Raw key-value behaviour

fn put(table: Table, key: &str, value: &[u8], expect: Expect) -> Op {
    Op::put(table, key, value.to_vec(), expect)
}

fn assert_conflict(result: Result<(), StoreError>, table: Table, key: &str) {
    match result {
        Err(StoreError::Conflict { table: t, key: k }) => {
            assert_eq!(
                (t, k.as_str()),
                (table, key),
                "conflict names the wrong key"
            );
        }
        other => panic!("expected a conflict on {table:?} {key:?}, got {other:?}"),
    }
}

async fn get_put_delete(s: Arc<dyn Store>) -> TestResult {
    assert_eq!(s.get(Table::Orders, "o1").await?, None);
    s.commit(vec![put(Table::Orders, "o1", b"one", Expect::Any)])
        .await?;
    assert_eq!(s.get(Table::Orders, "o1").await?, Some(b"one".to_vec()));
    s.commit(vec![put(Table::Orders, "o1", b"uno", Expect::Any)])
        .await?;
    assert_eq!(s.get(Table::Orders, "o1").await?, Some(b"uno".to_vec()));
    // The same key in another table is another record.
    assert_eq!(s.get(Table::Authzs, "o1").await?, None);
    // Empty values are values, not deletions.
    s.commit(vec![put(Table::AccountOrders, "a/o", b"", Expect::Absent)])
        .await?;
    assert_eq!(s.get(Table::AccountOrders, "a/o").await?, Some(Vec::new()));
    s.commit(vec![Op::delete(Table::Orders, "o1", Expect::Any)])
        .await?;
    assert_eq!(s.get(Table::Orders, "o1").await?, None);
    // A blind delete of a missing key is fine.
    s.commit(vec![Op::delete(Table::Orders, "nope", Expect::Any)])
        .await?;
    Ok(())
}

async fn empty_commit_is_ok(s: Arc<dyn Store>) -> TestResult {
    s.commit(Vec::new()).await?;
    assert_eq!(s.count(Table::Orders).await?, 0);
    Ok(())
}

async fn precondition_absent(s: Arc<dyn Store>) -> TestResult {
    s.commit(vec![put(Table::Accounts, "a", b"1", Expect::Absent)])
        .await?;
    let again = s
        .commit(vec![put(Table::Accounts, "a", b"2", Expect::Absent)])
        .await;
    assert_conflict(again, Table::Accounts, "a");
    assert_eq!(s.get(Table::Accounts, "a").await?, Some(b"1".to_vec()));
    // Absent again once deleted.
    s.commit(vec![Op::delete(Table::Accounts, "a", Expect::Present)])
        .await?;
    s.commit(vec![put(Table::Accounts, "a", b"3", Expect::Absent)])
        .await?;
    assert_eq!(s.get(Table::Accounts, "a").await?, Some(b"3".to_vec()));
    Ok(())
}

async fn insert_new_claims_each_absent_key_once(s: Arc<dyn Store>) -> TestResult {
    assert!(s.insert_new(Table::Meta, &[]).await?.is_empty());
    s.commit(vec![put(Table::Meta, "n/b", b"held", Expect::Absent)])
        .await?;
    let keys = ["n/a", "n/b", "n/a", "n/c"].map(String::from);
    assert_eq!(
        s.insert_new(Table::Meta, &keys).await?,
        [true, false, false, true]
    );
    // What was there stays; the new keys hold empty values.
    assert_eq!(s.get(Table::Meta, "n/b").await?, Some(b"held".to_vec()));
    assert_eq!(s.get(Table::Meta, "n/a").await?, Some(Vec::new()));
    assert_eq!(s.get(Table::Meta, "n/c").await?, Some(Vec::new()));
    assert_eq!(s.insert_new(Table::Meta, &keys[..1]).await?, [false]);
    // Another table's key of the same name is another record.
    assert_eq!(s.insert_new(Table::Orders, &keys[..1]).await?, [true]);
    Ok(())
}

async fn precondition_present(s: Arc<dyn Store>) -> TestResult {
    let missing = s
        .commit(vec![put(Table::Orders, "o", b"x", Expect::Present)])
        .await;
    assert_conflict(missing, Table::Orders, "o");
    assert_eq!(s.get(Table::Orders, "o").await?, None);
    let missing_delete = s
        .commit(vec![Op::delete(Table::Orders, "o", Expect::Present)])
        .await;
    assert_conflict(missing_delete, Table::Orders, "o");
    s.commit(vec![put(Table::Orders, "o", b"x", Expect::Any)])
        .await?;
    s.commit(vec![put(Table::Orders, "o", b"y", Expect::Present)])
        .await?;
    assert_eq!(s.get(Table::Orders, "o").await?, Some(b"y".to_vec()));
    Ok(())
}

async fn precondition_value(s: Arc<dyn Store>) -> TestResult {
    let on_missing = s
        .commit(vec![put(
            Table::Jobs,
            "j",
            b"2",
            Expect::Value(b"1".to_vec()),
        )])
        .await;
    assert_conflict(on_missing, Table::Jobs, "j");
    s.commit(vec![put(Table::Jobs, "j", b"1", Expect::Absent)])
        .await?;
    let stale = s
        .commit(vec![put(
            Table::Jobs,
            "j",
            b"3",
            Expect::Value(b"0".to_vec()),
        )])
        .await;
    assert_conflict(stale, Table::Jobs, "j");
    // A prefix of the stored value is not the stored value.
    let shorter = s
        .commit(vec![put(Table::Jobs, "j", b"3", Expect::Value(Vec::new()))])
        .await;
    assert_conflict(shorter, Table::Jobs, "j");
    s.commit(vec![put(
        Table::Jobs,
        "j",
        b"2",
        Expect::Value(b"1".to_vec()),
    )])
    .await?;
    assert_eq!(s.get(Table::Jobs, "j").await?, Some(b"2".to_vec()));
    s.commit(vec![Op::delete(
        Table::Jobs,
        "j",
        Expect::Value(b"2".to_vec()),
    )])
    .await?;
    assert_eq!(s.get(Table::Jobs, "j").await?, None);
    Ok(())
}

async fn failed_precondition_writes_nothing(s: Arc<dyn Store>) -> TestResult {
    s.commit(vec![
        put(Table::Orders, "keep", b"old", Expect::Any),
        put(Table::Orders, "taken", b"t", Expect::Any),
    ])
    .await?;
    let result = s
        .commit(vec![
            put(Table::Orders, "new", b"n", Expect::Absent),
            put(Table::Orders, "keep", b"changed", Expect::Any),
            Op::delete(Table::Orders, "taken", Expect::Present),
            put(Table::Authzs, "z", b"z", Expect::Absent),
            // This one fails, after four that would have succeeded.
            put(
                Table::Orders,
                "keep",
                b"cas",
                Expect::Value(b"wrong".to_vec()),
            ),
            put(Table::Certs, "c", b"c", Expect::Any),
        ])
        .await;
    assert_conflict(result, Table::Orders, "keep");
    assert_eq!(s.get(Table::Orders, "new").await?, None);
    assert_eq!(s.get(Table::Orders, "keep").await?, Some(b"old".to_vec()));
    assert_eq!(s.get(Table::Orders, "taken").await?, Some(b"t".to_vec()));
    assert_eq!(s.get(Table::Authzs, "z").await?, None);
    assert_eq!(s.get(Table::Certs, "c").await?, None);
    assert_eq!(s.count(Table::Orders).await?, 2);
    Ok(())
}

async fn conflict_names_first_failing_key(s: Arc<dyn Store>) -> TestResult {
    s.commit(vec![put(Table::Accounts, "b", b"1", Expect::Any)])
        .await?;
    let result = s
        .commit(vec![
            put(Table::Accounts, "a", b"1", Expect::Absent),
            put(Table::AccountKeys, "missing", b"1", Expect::Present),
            put(Table::Accounts, "b", b"1", Expect::Absent),
        ])
        .await;
    assert_conflict(result, Table::AccountKeys, "missing");
    Ok(())
}

async fn preconditions_see_earlier_ops(s: Arc<dyn Store>) -> TestResult {
    // Insert then update in one batch: the update's CAS sees the insert.
    s.commit(vec![
        put(Table::Meta, "k", b"v1", Expect::Absent),
        put(Table::Meta, "k", b"v2", Expect::Value(b"v1".to_vec())),
        put(Table::Meta, "k", b"v3", Expect::Present),
    ])
    .await?;
    assert_eq!(s.get(Table::Meta, "k").await?, Some(b"v3".to_vec()));
    // Delete then re-create: Absent sees the delete.
    s.commit(vec![
        Op::delete(Table::Meta, "k", Expect::Value(b"v3".to_vec())),
        put(Table::Meta, "k", b"v4", Expect::Absent),
    ])
    .await?;
    assert_eq!(s.get(Table::Meta, "k").await?, Some(b"v4".to_vec()));
    // Two inserts of the same key in one batch: the second conflicts, and the
    // first is not written either.
    let twice = s
        .commit(vec![
            put(Table::Meta, "dup", b"1", Expect::Absent),
            put(Table::Meta, "dup", b"2", Expect::Absent),
        ])
        .await;
    assert_conflict(twice, Table::Meta, "dup");
    assert_eq!(s.get(Table::Meta, "dup").await?, None);
    // A CAS against the pre-batch value fails once an earlier op changed it.
    let stale = s
        .commit(vec![
            put(Table::Meta, "k", b"v5", Expect::Any),
            put(Table::Meta, "k", b"v6", Expect::Value(b"v4".to_vec())),
        ])
        .await;
    assert_conflict(stale, Table::Meta, "k");
    assert_eq!(s.get(Table::Meta, "k").await?, Some(b"v4".to_vec()));
    Ok(())
}

async fn scan_prefix_after_limit(s: Arc<dyn Store>) -> TestResult {
    let keys = ["a/1", "a/2", "a/3", "a/4", "a/5", "ab/1", "b/1", "a"];
    s.commit(
        keys.iter()
            .map(|k| put(Table::AccountOrders, k, k.as_bytes(), Expect::Absent))
            .collect(),
    )
    .await?;
    let names = |rows: Vec<(String, Vec<u8>)>| -> Vec<String> {
        rows.into_iter()
            .map(|(k, v)| {
                assert_eq!(k.as_bytes(), v.as_slice(), "value belongs to its key");
                k
            })
            .collect()
    };
    let all = names(s.scan(Table::AccountOrders, "a/", None, 100).await?);
    assert_eq!(all, ["a/1", "a/2", "a/3", "a/4", "a/5"]);
    let first = names(s.scan(Table::AccountOrders, "a/", None, 2).await?);
    assert_eq!(first, ["a/1", "a/2"]);
    let next = names(s.scan(Table::AccountOrders, "a/", Some("a/2"), 2).await?);
    assert_eq!(next, ["a/3", "a/4"]);
    let last = names(s.scan(Table::AccountOrders, "a/", Some("a/4"), 2).await?);
    assert_eq!(last, ["a/5"]);
    let past = names(s.scan(Table::AccountOrders, "a/", Some("a/5"), 2).await?);
    assert!(past.is_empty());
    // `after` need not be a stored key.
    let between = names(s.scan(Table::AccountOrders, "a/", Some("a/25"), 10).await?);
    assert_eq!(between, ["a/3", "a/4", "a/5"]);
    assert!(
        s.scan(Table::AccountOrders, "a/", None, 0)
            .await?
            .is_empty()
    );
    // The empty prefix is the whole table, in key order.
    let whole = names(s.scan(Table::AccountOrders, "", None, 100).await?);
    let mut sorted = keys.map(str::to_owned).to_vec();
    sorted.sort();
    assert_eq!(whole, sorted);
    assert_eq!(
        names(s.scan(Table::AccountOrders, "a", None, 100).await?),
        ["a", "a/1", "a/2", "a/3", "a/4", "a/5", "ab/1"]
    );
    assert!(
        s.scan(Table::AccountOrders, "c", None, 10)
            .await?
            .is_empty()
    );
    Ok(())
}

async fn scan_after_outside_prefix(s: Arc<dyn Store>) -> TestResult {
    s.commit(vec![
        put(Table::Orders, "a1", b"", Expect::Absent),
        put(Table::Orders, "b1", b"", Expect::Absent),
        put(Table::Orders, "b2", b"", Expect::Absent),
        put(Table::Orders, "c1", b"", Expect::Absent),
    ])
    .await?;
    // `after` sorts before the prefix: every key of the prefix comes back.
    let rows = s.scan(Table::Orders, "b", Some("a"), 10).await?;
    let keys: Vec<_> = rows.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["b1", "b2"]);
    // `after` sorts after the prefix: nothing.
    assert!(s.scan(Table::Orders, "b", Some("c"), 10).await?.is_empty());
    Ok(())
}

async fn scan_isolates_tables(s: Arc<dyn Store>) -> TestResult {
    s.commit(vec![
        put(Table::Accounts, "x1", b"acc", Expect::Absent),
        put(Table::AccountKeys, "x1", b"key", Expect::Absent),
        put(Table::AccountKeys, "x2", b"key", Expect::Absent),
        put(Table::AccountOrders, "x1/o", b"", Expect::Absent),
        put(Table::Authzs, "x0", b"z", Expect::Absent),
    ])
    .await?;
    let rows = s.scan(Table::Accounts, "x", None, 100).await?;
    assert_eq!(rows, vec![("x1".to_owned(), b"acc".to_vec())]);
    let rows = s.scan(Table::Accounts, "", None, 100).await?;
    assert_eq!(rows.len(), 1);
    let rows = s.scan(Table::AccountKeys, "", Some("x1"), 100).await?;
    assert_eq!(rows, vec![("x2".to_owned(), b"key".to_vec())]);
    assert!(s.scan(Table::Certs, "", None, 100).await?.is_empty());
    Ok(())
}

async fn count_per_table(s: Arc<dyn Store>) -> TestResult {
    assert_eq!(s.count(Table::Orders).await?, 0);
    let ops = (0..25)
        .map(|i| put(Table::Orders, &format!("o{i:02}"), b"x", Expect::Absent))
        .chain((0..3).map(|i| put(Table::Authzs, &format!("o{i:02}"), b"x", Expect::Absent)))
        .collect();
    s.commit(ops).await?;
    assert_eq!(s.count(Table::Orders).await?, 25);
    assert_eq!(s.count(Table::Authzs).await?, 3);
    assert_eq!(s.count(Table::Certs).await?, 0);
    s.commit(vec![
        Op::delete(Table::Orders, "o00", Expect::Present),
        Op::delete(Table::Orders, "o01", Expect::Present),
    ])
    .await?;
    assert_eq!(s.count(Table::Orders).await?, 23);
    Ok(())
}

async fn check_writable_succeeds(s: Arc<dyn Store>) -> TestResult {
    s.check_writable().await?;
    s.check_writable().await?;
    assert!(!s.backend_name().is_empty());
    Ok(())
}

/// 16 tasks each add one to a counter with read, CAS and retry on conflict.
async fn cas_race_counts_exactly(s: Arc<dyn Store>) -> TestResult {
    const TASKS: u64 = 16;
    s.commit(vec![put(Table::Meta, "counter", b"0", Expect::Absent)])
        .await?;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            loop {
                let old = s.get(Table::Meta, "counter").await?.unwrap_or_default();
                let n: u64 = std::str::from_utf8(&old)?.parse()?;
                let op = put(
                    Table::Meta,
                    "counter",
                    (n + 1).to_string().as_bytes(),
                    Expect::Value(old),
                );
                match s.commit(vec![op]).await {
                    Ok(()) => return anyhow::Ok(conflicts),
                    Err(StoreError::Conflict { .. }) => {
                        conflicts += 1;
                        tokio::task::yield_now().await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await??;
    }
    let raw = s.get(Table::Meta, "counter").await?.unwrap_or_default();
    assert_eq!(std::str::from_utf8(&raw)?, TASKS.to_string());
    println!(
        "{}: {TASKS} CAS increments, {conflicts} conflicts retried",
        s.backend_name()
    );
    Ok(())
}

/// 8 tasks insert the same key with `Absent` (two accounts with one key):
/// exactly one wins, the others get a conflict on that key.
async fn absent_race_has_one_winner(s: Arc<dyn Store>) -> TestResult {
    let mut handles = Vec::new();
    for i in 0..8u8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let ops = vec![
                put(Table::Accounts, &format!("acct{i}"), &[i], Expect::Absent),
                put(Table::AccountKeys, "same-key", &[i], Expect::Absent),
            ];
            (i, s.commit(ops).await)
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        match h.await? {
            (i, Ok(())) => winners.push(i),
            (_, Err(e)) => assert_conflict(Err(e), Table::AccountKeys, "same-key"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        s.get(Table::AccountKeys, "same-key").await?,
        Some(winners.clone())
    );
    // The losers' account records were not written either.
    assert_eq!(s.count(Table::Accounts).await?, 1);
    Ok(())
}

/// A snapshot holds every record of every table, by table then key.
async fn snapshot_holds_every_table(s: Arc<dyn Store>) -> TestResult {
    assert_eq!(s.snapshot().await?, Snapshot::default());
    s.commit(vec![
        put(Table::Orders, "o2", b"two", Expect::Absent),
        put(Table::Orders, "o1", b"one", Expect::Absent),
        put(Table::Accounts, "a/\0\u{e9}", b"\0\xff", Expect::Absent),
        put(Table::Meta, "m", b"", Expect::Absent),
    ])
    .await?;
    s.commit(vec![Op::delete(Table::Orders, "o2", Expect::Present)])
        .await?;
    let records: Vec<(Table, String, Vec<u8>)> = s
        .snapshot()
        .await?
        .records
        .into_iter()
        .map(|r| (r.table, r.key, r.value))
        .collect();
    assert_eq!(
        records,
        vec![
            (Table::Accounts, "a/\0\u{e9}".to_owned(), b"\0\xff".to_vec()),
            (Table::Meta, "m".to_owned(), Vec::new()),
            (Table::Orders, "o1".to_owned(), b"one".to_vec()),
        ]
    );
    Ok(())
}

/// Snapshots taken while writers commit batches of five keys over four
/// tables (durable and deferred, puts and deletes) among 4,000 other
/// records: every snapshot holds each writer's latest batch entirely, never
/// a mix of two.
async fn snapshot_is_a_consistent_cut(s: Arc<dyn Store>) -> TestResult {
    const WRITERS: usize = 4;
    const ROUNDS: u64 = 150;
    // Records around the ones written, so that reading takes a while.
    for table in [Table::AccountOrders, Table::EabKeys] {
        let filler = (0..2000)
            .map(|i| put(table, &format!("{i:05}"), &[b'f'; 256], Expect::Absent))
            .collect();
        s.commit(filler).await?;
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (s, done) = (s.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            for n in 1..=ROUNDS {
                let v = n.to_string().into_bytes();
                let mut ops = vec![
                    put(Table::Orders, &format!("w{w}"), &v, Expect::Any),
                    put(Table::Jobs, &format!("w{w}"), &v, Expect::Any),
                    put(Table::Authzs, &format!("w{w}"), &v, Expect::Any),
                    put(Table::Certs, &format!("w{w}/{n:04}"), &v, Expect::Absent),
                ];
                if n > 1 {
                    let old = format!("w{w}/{:04}", n - 1);
                    ops.push(Op::delete(Table::Certs, old, Expect::Present));
                }
                if n % 2 == 0 {
                    s.commit(ops).await?;
                } else {
                    s.commit_deferred(ops).await?;
                }
                // Spread the rounds over the snapshots, on a fast backend too.
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            anyhow::Ok(())
        }));
    }
    let (mut taken, mut mid_flight) = (0, 0);
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS;
        let snapshot = s.snapshot().await?;
        taken += 1;
        let by_key: std::collections::HashMap<(Table, &str), &[u8]> = snapshot
            .records
            .iter()
            .map(|r| ((r.table, r.key.as_str()), r.value.as_slice()))
            .collect();
        let value = |table: Table, key: &str| {
            by_key
                .get(&(table, key))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        for w in 0..WRITERS {
            let key = format!("w{w}");
            let order = value(Table::Orders, &key);
            let certs: Vec<(String, String)> = snapshot
                .records
                .iter()
                .filter(|r| r.table == Table::Certs && r.key.starts_with(&format!("{key}/")))
                .map(|r| {
                    (
                        r.key.clone(),
                        String::from_utf8_lossy(&r.value).into_owned(),
                    )
                })
                .collect();
            assert_eq!(value(Table::Jobs, &key), order, "snapshot {taken}, {key}");
            assert_eq!(value(Table::Authzs, &key), order, "snapshot {taken}, {key}");
            match &order {
                None => assert!(certs.is_empty(), "snapshot {taken}: {certs:?}"),
                Some(n) => {
                    let n: u64 = n.parse()?;
                    assert_eq!(
                        certs,
                        vec![(format!("{key}/{n:04}"), n.to_string())],
                        "snapshot {taken}"
                    );
                    if n < ROUNDS {
                        mid_flight += 1;
                    }
                }
            }
        }
        if finished {
            break;
        }
    }
    for w in writers {
        w.await??;
    }
    println!(
        "{}: {taken} snapshots, {mid_flight} writer states caught mid-run",
        s.backend_name()
    );
    assert!(
        mid_flight > 0,
        "no snapshot was taken while the writers ran"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The typed layer

fn at(minutes: i64) -> OffsetDateTime {
    datetime!(2025-06-01 00:00 UTC) + time::Duration::minutes(minutes)
}

fn account(thumbprint: &str) -> AccountRecord {
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let jwk =
        match PublicJwk::from_json(&serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x})) {
            Ok(k) => k,
            Err(e) => panic!("the test key: {e}"),
        };
    AccountRecord {
        eab_policy: None,
        id: AccountId::random(),
        provisioner: "acme".to_owned(),
        jwk,
        thumbprint: thumbprint.to_owned(),
        status: AccountStatus::Valid,
        contact: vec!["mailto:ops@example.com".to_owned()],
        terms_of_service_agreed: true,
        eab_kid: None,
        eab_jws: None,
        created_at: at(0),
    }
}

fn order(account_id: &AccountId, authz_ids: Vec<AuthzId>) -> OrderRecord {
    OrderRecord {
        id: OrderId::random(),
        account_id: account_id.clone(),
        provisioner: "acme".to_owned(),
        status: OrderStatus::Pending,
        identifiers: vec![Identifier::Dns("www.example.com".to_owned())],
        authz_ids,
        not_before: None,
        not_after: None,
        expires: at(60 * 24 * 7),
        created_at: at(0),
        error: None,
        certificate_id: None,
        replaces: None,
        profile: None,
    }
}

fn authz(account_id: &AccountId, order_id: &OrderId) -> AuthzRecord {
    AuthzRecord {
        id: AuthzId::random(),
        account_id: account_id.clone(),
        order_id: order_id.clone(),
        identifier: Identifier::Dns("www.example.com".to_owned()),
        wildcard: false,
        status: AuthorizationStatus::Pending,
        expires: at(60 * 24 * 7),
        challenges: vec![ChallengeRecord {
            kind: ChallengeType::Http01,
            token: "tok".to_owned(),
            status: ChallengeStatus::Pending,
            validated: None,
            error: None,
        }],
    }
}

fn job(order_id: OrderId, next_attempt: i64, created: i64) -> FinalizeJob {
    FinalizeJob {
        order_id,
        csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        attempts: 0,
        next_attempt_at: at(next_attempt),
        created_at: at(created),
        upstream_state: None,
        last_error: None,
    }
}

async fn records_accounts(s: Arc<dyn Store>) -> TestResult {
    let r = Records::new(s.clone());
    let acct = account("thumb-1");
    r.commit(Records::account_insert_ops(Batch::new(), &acct))
        .await?;
    let found = r.account_by_thumbprint("thumb-1").await?;
    assert_eq!(found.map(|v| v.value), Some(acct.clone()));
    assert!(r.account_by_thumbprint("thumb-2").await?.is_none());
    let by_id = r.get::<AccountRecord>(acct.id.as_str()).await?;
    assert_eq!(by_id.map(|v| v.value), Some(acct.clone()));
    // A second account with the same key conflicts on the key index, and
    // leaves no account record behind.
    let dup = account("thumb-1");
    let result = r
        .commit(Records::account_insert_ops(Batch::new(), &dup))
        .await;
    assert_conflict(result, Table::AccountKeys, "thumb-1");
    assert!(r.get::<AccountRecord>(dup.id.as_str()).await?.is_none());
    assert_eq!(s.count(Table::Accounts).await?, 1);
    Ok(())
}

async fn records_replace_is_compare_and_swap(s: Arc<dyn Store>) -> TestResult {
    let r = Records::new(s);
    let acct = account("thumb-cas");
    r.commit(Batch::new().insert(&acct)).await?;
    let read = r
        .get::<AccountRecord>(acct.id.as_str())
        .await?
        .ok_or_else(|| anyhow::anyhow!("account missing"))?;
    let mut deactivated = acct.clone();
    deactivated.status = AccountStatus::Deactivated;
    r.commit(Batch::new().replace(&read, &deactivated)).await?;
    // The same stale read cannot be used twice.
    let mut revoked = acct.clone();
    revoked.status = AccountStatus::Revoked;
    let result = r.commit(Batch::new().replace(&read, &revoked)).await;
    assert_conflict(result, Table::Accounts, acct.id.as_str());
    let now = r.get::<AccountRecord>(acct.id.as_str()).await?;
    assert_eq!(now.map(|v| v.status), Some(AccountStatus::Deactivated));
    // Nor removed with it.
    let result = r.commit(Batch::new().remove(&read)).await;
    assert_conflict(result, Table::Accounts, acct.id.as_str());
    Ok(())
}

async fn records_account_orders_paging(s: Arc<dyn Store>) -> TestResult {
    let r = Records::new(s.clone());
    let alice = account("alice");
    let bob = account("bob");
    let mut alice_orders = Vec::new();
    for _ in 0..7 {
        let mut o = order(&alice.id, Vec::new());
        let z = authz(&alice.id, &o.id);
        o.authz_ids = vec![z.id.clone()];
        r.commit(Records::order_insert_ops(
            Batch::new(),
            &o,
            std::slice::from_ref(&z),
        ))
        .await?;
        let stored = r.get::<AuthzRecord>(z.id.as_str()).await?;
        assert_eq!(stored.map(|v| v.value), Some(z));
        alice_orders.push(o.id);
    }
    for _ in 0..3 {
        let o = order(&bob.id, Vec::new());
        r.commit(Records::order_insert_ops(Batch::new(), &o, &[]))
            .await?;
    }
    // Pages of 3 walk every order of alice's, in key order, and none of bob's.
    let mut seen = Vec::new();
    let mut after: Option<OrderId> = None;
    loop {
        let page = r.account_orders(&alice.id, after.as_ref(), 3).await?;
        assert!(page.len() <= 3);
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        after = Some(last);
    }
    alice_orders.sort();
    assert_eq!(seen, alice_orders);
    assert_eq!(r.account_orders(&bob.id, None, 100).await?.len(), 3);
    assert_eq!(s.count(Table::Orders).await?, 10);
    assert_eq!(s.count(Table::Authzs).await?, 7);
    Ok(())
}

async fn records_cert_by_serial(s: Arc<dyn Store>) -> TestResult {
    let r = Records::new(s);
    let acct = account("certs");
    let cert = CertificateRecord {
        id: CertId::random(),
        account_id: acct.id.clone(),
        order_id: OrderId::random(),
        serial_hex: "1a2b3c".to_owned(),
        chain_pem: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_owned(),
        not_before: at(0),
        not_after: at(60 * 24 * 90),
        upstream: "softcas".to_owned(),
        revocation: None,
    };
    r.commit(Records::cert_insert_ops(Batch::new(), &cert))
        .await?;
    let found = r.cert_by_serial("1a2b3c").await?;
    assert_eq!(found.map(|v| v.value), Some(cert.clone()));
    assert!(r.cert_by_serial("1a2b3d").await?.is_none());
    // A serial is issued once.
    let mut other = cert.clone();
    other.id = CertId::random();
    let result = r
        .commit(Records::cert_insert_ops(Batch::new(), &other))
        .await;
    assert_conflict(result, Table::CertSerials, "1a2b3c");
    Ok(())
}

async fn records_due_jobs(s: Arc<dyn Store>) -> TestResult {
    let r = Records::new(s);
    let now = at(100);
    // 600 jobs (more than one internal page of 512): every third is due.
    let mut batch = Batch::new();
    let mut due_created = Vec::new();
    for i in 0..600i64 {
        let next = if i % 3 == 0 { 100 - (i % 7) } else { 101 + i };
        // Creation times (distinct: 37 is prime to 600) are not in key order.
        let created = (i * 37) % 600;
        if next <= 100 {
            due_created.push(created);
        }
        batch = batch.insert(&job(OrderId::random(), next, created));
    }
    r.commit(batch).await?;
    due_created.sort();
    let due = r.due_jobs(now, 1000).await?;
    assert_eq!(due.len(), 200);
    let got: Vec<i64> = due
        .iter()
        .map(|j| (j.created_at - at(0)).whole_minutes())
        .collect();
    assert_eq!(got, due_created, "oldest first");
    assert!(due.iter().all(|j| j.next_attempt_at <= now));
    let first = r.due_jobs(now, 5).await?;
    assert_eq!(
        first.iter().map(|j| j.order_id.clone()).collect::<Vec<_>>(),
        due.iter()
            .take(5)
            .map(|j| j.order_id.clone())
            .collect::<Vec<_>>()
    );
    assert!(r.due_jobs(at(0), 10).await?.is_empty());
    assert_eq!(r.due_jobs(at(10_000), 1000).await?.len(), 600);
    Ok(())
}

// ---------------------------------------------------------------------------
// sled only

#[tokio::test]
async fn sled_reopen_keeps_every_committed_record() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let acct = account("durable");
    {
        let s: Arc<dyn Store> = Arc::new(SledStore::open(&path)?);
        write_for_reopen(&s, &acct, 50).await?;
        s.check_writable().await?;
    }
    let s: Arc<dyn Store> = Arc::new(SledStore::open(&path)?);
    check_after_reopen(&s, &acct, 50).await?;
    assert_eq!(s.get(Table::Orders, "o49").await?, Some(b"v".to_vec()));
    Ok(())
}

/// For the reopen tests: `acct`, then `orders` orders `o00`, `o01`, … one
/// commit each, then `o00` deleted.
async fn write_for_reopen(s: &Arc<dyn Store>, acct: &AccountRecord, orders: usize) -> TestResult {
    let r = Records::new(s.clone());
    r.commit(Records::account_insert_ops(Batch::new(), acct))
        .await?;
    for i in 0..orders {
        s.commit(vec![put(
            Table::Orders,
            &format!("o{i:02}"),
            b"v",
            Expect::Absent,
        )])
        .await?;
    }
    s.commit(vec![Op::delete(Table::Orders, "o00", Expect::Present)])
        .await?;
    Ok(())
}

/// What [`write_for_reopen`] wrote is there after a reopen.
async fn check_after_reopen(s: &Arc<dyn Store>, acct: &AccountRecord, orders: usize) -> TestResult {
    let r = Records::new(s.clone());
    let found = r.account_by_thumbprint("durable").await?;
    assert_eq!(found.map(|v| v.value).as_ref(), Some(acct));
    assert_eq!(s.count(Table::Orders).await?, orders as u64 - 1);
    assert_eq!(s.get(Table::Orders, "o00").await?, None);
    Ok(())
}

#[tokio::test]
async fn sled_second_open_says_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let first = SledStore::open(&path)?;
    assert_eq!(first.path(), path.as_path());
    let err = match SledStore::open(&path) {
        Ok(_) => anyhow::bail!("a second open of a held store succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    drop(first);
    // Released on drop.
    SledStore::open(&path)?;
    Ok(())
}

#[tokio::test]
async fn sled_open_error_names_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x")?;
    let err = match SledStore::open(&file) {
        Ok(_) => anyhow::bail!("opened a store inside a plain file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(!err.contains("in use"), "{err}");
    Ok(())
}

/// Prints commits/s with 1 and 64 concurrent committers (no timing asserted),
/// next to raw sled (plain inserts, each followed by its own blocking flush):
/// what the store's group commit (one flush for every batch queued while the
/// previous flush ran) gains over a flush per commit. It asserts only that
/// every commit landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_commit_rate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let s: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db"))?);
    for (committers, per_task) in [(1, 200), (64, 20)] {
        let (n, elapsed) = run_committers(s.clone(), committers, per_task).await?;
        assert_eq!(s.count(Table::Jobs).await?, n);
        println!(
            "sled group commit: {committers:>2} committers, {n} commits in {elapsed:?}: {:.0} commits/s",
            n as f64 / elapsed.as_secs_f64()
        );
        s.commit(
            s.scan(Table::Jobs, "", None, usize::MAX)
                .await?
                .into_iter()
                .map(|(k, _)| Op::delete(Table::Jobs, k, Expect::Present))
                .collect(),
        )
        .await?;
    }
    // Baseline: the same 64-way load on raw sled, one fsync per commit. (Not
    // with `flush_async`: 64 of those at once hang sled 0.34, see sled.rs.)
    let db = ::sled::open(dir.path().join("naive"))?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..64 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..20 {
                db.insert(format!("{t}/{i}"), &b"x"[..])?;
                let db = db.clone();
                tokio::task::spawn_blocking(move || db.flush()).await??;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let elapsed = start.elapsed();
    println!(
        "raw sled insert + flush, no transaction: 64 committers, 1280 commits in {elapsed:?}: {:.0} commits/s",
        1280.0 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn run_committers(
    s: Arc<dyn Store>,
    committers: usize,
    per_task: usize,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..committers {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let key = format!("{t:02}/{i:04}");
                s.commit(vec![put(Table::Jobs, &key, b"job", Expect::Absent)])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(((committers * per_task) as u64, start.elapsed()))
}

/// Prints how long a snapshot of 20,000 records of 1 KiB takes on sled and
/// how long a commit submitted meanwhile waits (the writer thread reads the
/// snapshot, so writes queue behind it); asserts only that both complete and
/// the snapshot holds every record. Set `ACMEPROXY_SNAPSHOT_RECORDS` for
/// another size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_snapshot_pause() -> TestResult {
    let records: usize = std::env::var("ACMEPROXY_SNAPSHOT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let s: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db"))?);
    let value = vec![b'x'; 1024];
    for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|i| put(Table::Orders, &format!("{i:08}"), &value, Expect::Any))
            .collect();
        s.commit_deferred(ops).await?;
    }
    s.sync().await?;
    let start = Instant::now();
    let snapshot = tokio::spawn({
        let s = s.clone();
        async move { s.snapshot().await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let commit_start = Instant::now();
    s.commit(vec![put(Table::Meta, "during", b"1", Expect::Any)])
        .await?;
    let commit_wait = commit_start.elapsed();
    let snapshot = snapshot.await??;
    let took = start.elapsed();
    assert!(snapshot.records.len() >= records);
    let us_per_record = took.as_secs_f64() * 1e6 / records as f64;
    println!(
        "sled snapshot: {records} records of 1 KiB in {took:?} ({us_per_record:.2} µs/record); \
         a commit submitted 1 ms in waited {commit_wait:?}"
    );
    Ok(())
}
