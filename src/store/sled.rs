//! The embedded default store, on sled 0.34: one process, one directory, no
//! server to run.
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
//! # Writes and durability
//!
//! One thread of the store's own (`acmeproxy-store`) applies every write, in
//! the order the batches arrive: it checks a batch's preconditions (later ops
//! see the writes of earlier ops of the same batch), then applies it with
//! plain sled inserts and removes. Applying on one thread makes
//! check-and-write atomic between writers without sled transactions or
//! `apply_batch`: both take a process-wide lock that waits for any flush in
//! progress and stalls readers, and `apply_batch` writes out sled's I/O
//! buffer twice per batch.
//!
//! A batch of several keys is made crash-atomic by an intent record: the
//! whole batch is first written under `__intent\0<seq>` (outside every
//! table), then applied key by key in the batch's order, then the intent is
//! removed. sled recovers a prefix of its log, so after a crash either the
//! intent survives, and [`SledStore::open`] finishes the batch before anything
//! else runs, or nothing of the batch does. A reader running at the same time
//! may see the first keys of a batch a few microseconds before the last, so
//! batches put a new record before the record that points to it.
//!
//! The same thread then makes the writes durable (group commit): it applies
//! every batch waiting in its queue, then runs one sled flush (which writes
//! the log), then one `fdatasync` of sled's files (module `durable`: sled's own
//! `sync_file_range` survives a process crash but not a power cut), then
//! answers every committer whose batch was in that group. A committer hears
//! `Ok` only after the flush and sync covering its batch. While one flush
//! runs, the next group queues, so under load one flush serves many commits.
//! A failed flush or sync is returned to each committer of its group as
//! [`StoreError::Backend`]; the batch may then be applied or not, as with any
//! database whose commit acknowledgement is lost.
//!
//! # Failures
//!
//! sled 0.34 turns any I/O error (a full disk, a failing device) into an
//! error of the whole open database: every later write fails until the
//! directory is opened again, and its memory may still hold a batch whose
//! committer was told it failed. So the first failed write, flush or sync
//! puts the store in a failed state ([`Store::failure`]): from then on it
//! refuses reads and writes alike, and a read that was running when the
//! failure was set is refused too, so nothing the failed batch half-applied
//! is served. (Outside failures, a concurrent reader may see the first keys
//! of a batch just before the last, as said above.)
//! The server then reports itself unready and exits once
//! [`Store::writable_again`] finds room in the directory again; its
//! supervisor (systemd's `Restart=on-failure`) starts it anew, and opening the
//! store finishes or drops interrupted batches (intents, above).
//!
//! [`Store::commit_deferred`] applies without waiting for a flush, and
//! [`Store::sync`] waits for one that covers every write applied before it.
//! Reads run inline on the caller's thread and see applied writes at once.
//!
//! # Snapshots
//!
//! [`Store::snapshot`] (online backups) must not hold writes back while it
//! reads a whole store, nor see a batch half-applied. So it reads every table
//! off the writer thread while writes go on, and has the writer thread keep
//! a log of every write it applies from just before the read (a job that
//! starts the log) until just after it (a job that ends it, between two
//! batches). The log's writes are then laid over what the read saw: a key
//! written during the read takes its last logged value (or is gone), and a
//! key not written kept one value throughout, which the read saw. The
//! result is the store exactly as it was at the ending job. The log is
//! handed over only after the flush and sync of that job's group, so the
//! snapshot holds nothing that could still be lost. One snapshot runs at a
//! time; what it costs besides the read is the memory of the writes logged
//! meanwhile.
//!
//! # Compaction
//!
//! sled 0.34 does not give back the space of overwritten and removed records
//! at the pace an RA writes them (docs/performance.md measured its directory
//! growing without bound under the retention purge), so the store bounds its
//! own size. The store directory holds generations, each a sled directory
//! (module `generations`: `CURRENT` names the live one). A thread of the
//! store's own (`acmeproxy-compact`, module `compact`) checks the live
//! generation's size every [`SledOptions::compaction_check`]; once it is at
//! least [`SledOptions::compaction_ratio`] times what the last compaction
//! left (and at least [`SledOptions::compaction_min_bytes`]), it
//!
//! 1. checks that the disk has room for a copy (the live generation's size
//!    and 64 MiB), else tries again 10 minutes later;
//! 2. starts the writer thread's write log (as a snapshot does), and copies
//!    every record into a new sled directory `gen-<n+1>` while writes go on;
//! 3. catches up: takes the writes logged so far from the writer thread and
//!    applies them to the new generation, a few rounds, off the writer
//!    thread;
//! 4. has the writer thread, between two batches, apply the last logged
//!    writes, flush and `fsync` the new generation, rename a synced
//!    `CURRENT.tmp` over `CURRENT`, `fsync` the directory, and from then on
//!    apply every batch to the new generation; readers take the new handle
//!    at their next read;
//! 5. removes the old generation once the last reader has let go of it.
//!
//! Writes wait only during step 4 (the last few writes, one flush and two
//! syncs). A crash before the rename leaves the old generation live with
//! every acknowledged write (the new one is removed at the next open); after
//! it, the new one holds every write up to the switch and every later one.
//! So the directory stays within about `ratio` times the live data, plus the
//! copy while a compaction runs.
//!
//! # Nonces
//!
//! Replay-Nonces are not kept in the store at all ([`crate::nonce`]): a sled
//! directory is locked by one process, so only one replica can use it
//! and no other replica could redeem them anyway. Writing each
//! nonce would cost an fsync per request for nothing; after a restart clients
//! get `badNonce` and retry with a fresh one (RFC 8555 §6.5).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, mpsc};
use std::time::Duration;

use async_trait::async_trait;

mod compact;
mod durable;
mod generations;
mod snapshot;

pub use compact::CompactionReport;
use generations::Generation;
use snapshot::{LogGuard, WriteLog, overlay, read_all, record};

use super::{Expect, Op, Snapshot, Store, StoreError, Table};

/// The embedded store: a sled database in a directory of its own.
///
/// Only one process can open a directory at a time; a second open fails with
/// an error saying the store is in use. Dropping the store stops its writer
/// and compaction threads and releases the directory.
#[derive(Debug)]
pub struct SledStore {
    // Dropped first: the compaction thread talks to the writer thread.
    compactor: Option<compact::Compactor>,
    live: Arc<RwLock<Live>>,
    path: PathBuf,
    writer: Writer,
    /// Set once a write, flush or sync failed (see "Failures" above).
    failure: Arc<OnceLock<String>>,
    /// One snapshot or compaction at a time: they share the writer's log.
    exclusive: Arc<tokio::sync::Mutex<()>>,
    // Dropped last: the directory's lock outlives every sled handle.
    _lock: std::fs::File,
}

/// The live generation: readers take `db` from here at the start of each
/// read; the writer thread replaces it when a compaction switches.
#[derive(Debug)]
struct Live {
    db: Arc<sled::Db>,
    generation: Generation,
}

/// Reads the live generation, whatever a panicking holder left.
fn read_live(live: &RwLock<Live>) -> std::sync::RwLockReadGuard<'_, Live> {
    live.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// sled's page cache: enough for the hot records of a busy RA; older records
/// are read back from the log on demand. (sled's default is 1 GiB.)
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// Tuning of [`SledStore`]'s online compaction (see "Compaction" in the
/// module documentation).
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// How often the live generation's size is checked; `None` turns
    /// automatic compaction off ([`SledStore::compact_now`] still works).
    pub compaction_check: Option<Duration>,
    /// No compaction below this size on disk.
    pub compaction_min_bytes: u64,
    /// Compact once the size on disk reaches this many times what the last
    /// compaction left.
    pub compaction_ratio: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            compaction_check: Some(Duration::from_secs(30)),
            compaction_min_bytes: 64 * 1024 * 1024,
            compaction_ratio: 2,
        }
    }
}

/// Opens one generation's sled directory.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY)
        .open()
        .map_err(|e| {
            let context = if is_lock_error(&e) {
                format!(
                    "the store at {} is in use by another process (is acmeproxy already running?)",
                    dir.display()
                )
            } else {
                format!("cannot open the sled store at {}", dir.display())
            };
            StoreError::backend(context, e)
        })
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`, with automatic
    /// compaction as [`SledOptions::default`] sets it.
    ///
    /// Fails with a message naming the path, and saying so when another
    /// process (another acmeproxy) holds the directory's lock.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SledOptions::default())
    }

    /// [`open`](Self::open) with compaction tuned by `options`.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<Self, StoreError> {
        let layout = generations::open(path).map_err(|e| {
            let context = if e.kind() == std::io::ErrorKind::WouldBlock {
                format!(
                    "the store at {} is in use by another process (is acmeproxy already running?)",
                    path.display()
                )
            } else {
                format!("cannot open the sled store at {}", path.display())
            };
            StoreError::backend(context, e)
        })?;
        let dir = layout.current.dir(path);
        let db = open_sled(&dir)?;
        let replayed = replay_intents(&db)?;
        if replayed > 0 {
            tracing::warn!(
                batches = replayed,
                "finished batches a crash had interrupted"
            );
        }
        let files = durable::DataFiles::open(&dir).map_err(|e| {
            StoreError::backend(format!("syncing the sled store at {}", dir.display()), e)
        })?;
        let failure = Arc::new(OnceLock::new());
        let live = Arc::new(RwLock::new(Live {
            db: Arc::new(db),
            generation: layout.current,
        }));
        let writer = Writer::start(live.clone(), files, failure.clone())?;
        let exclusive = Arc::new(tokio::sync::Mutex::new(()));
        let compactor = match writer.queue.clone() {
            Some(queue) => Some(compact::Compactor::start(compact::Context {
                store_dir: path.to_owned(),
                live: live.clone(),
                queue,
                exclusive: exclusive.clone(),
                failure: failure.clone(),
                options,
                baseline: layout.baseline,
            })?),
            None => None,
        };
        Ok(Self {
            compactor,
            live,
            path: path.to_owned(),
            writer,
            failure,
            exclusive,
            _lock: layout.lock,
        })
    }

    /// Whether `path` holds a store (of any generation layout), without
    /// opening it.
    pub fn exists(path: &Path) -> bool {
        path.join("CURRENT").is_file() || path.join("db").is_file()
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Compacts the store now, whatever its size: copies the live records
    /// into a new generation while writes go on, then switches to it.
    pub async fn compact_now(&self) -> Result<CompactionReport, StoreError> {
        self.refuse_if_failed()?;
        match &self.compactor {
            Some(c) => c.compact_now().await,
            None => Err(StoreError::backend(
                "sled compaction",
                "the store is closing",
            )),
        }
    }

    /// The live generation's sled handle.
    fn db(&self) -> Arc<sled::Db> {
        read_live(&self.live).db.clone()
    }

    /// Refuses every read and write once the store has failed: what sled
    /// holds in memory may then include a batch whose committer was told it
    /// failed.
    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match self.failure.get() {
            None => Ok(()),
            Some(cause) => Err(StoreError::backend(
                "the sled store stopped taking reads and writes after an I/O error; \
                 acmeproxy exits once the data directory takes writes again",
                cause.clone(),
            )),
        }
    }

    /// Runs blocking sled work off the async worker threads.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&sled::Db) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db();
        tokio::task::spawn_blocking(move || f(&db))
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
        self.refuse_if_failed()?;
        // A point read is served from sled's page cache in microseconds, so it
        // runs inline rather than paying for a blocking-pool hop.
        let value = self
            .db()
            .get(db_key(table, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::backend(format!("sled read of {table:?} {key:?}"), e))?;
        // A batch that failed while this read ran may have been read in part.
        self.refuse_if_failed()?;
        Ok(value)
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.writer.submit(Job::Apply { ops, durable: true }).await
    }

    async fn commit_deferred(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.writer
            .submit(Job::Apply {
                ops,
                durable: false,
            })
            .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.refuse_if_failed()?;
        self.writer.submit(Job::Sync).await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.refuse_if_failed()?;
        let _one_at_a_time = self.exclusive.lock().await;
        let guard = self.writer.start_log().await?;
        let read = self.blocking("sled snapshot task", read_all).await;
        let log = guard.end().await?;
        Ok(overlay(read?, log))
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.refuse_if_failed()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let full_prefix = db_key(table, prefix);
        // Start at the prefix, or just past `after` when that is further on.
        let start = match after.map(|a| db_key(table, a)) {
            Some(a) if a >= full_prefix => Bound::Excluded(a),
            _ => Bound::Included(full_prefix.clone()),
        };
        let rows = self
            .blocking("sled scan task", move |db| {
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
            .await?;
        // As in `get`: nothing read across a failure is served.
        self.refuse_if_failed()?;
        Ok(rows)
    }

    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        self.refuse_if_failed()?;
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

    fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    async fn writable_again(&self) -> bool {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || durable::probe_space(&path))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.commit(vec![Op::put(
            Table::Meta,
            READY_KEY,
            b"ok".to_vec(),
            Expect::Any,
        )])
        .await
    }
}

/// The Meta key [`Store::check_writable`] writes.
const READY_KEY: &str = "__ready";

/// Batches the writer thread takes at most before it flushes, so that a flood
/// of commits cannot postpone the flush its first committers wait for.
const MAX_GROUP: usize = 1024;

/// A group flush (with its sync) slower than this is logged: every commit
/// of the group waited for it.
const SLOW_FLUSH: Duration = Duration::from_millis(250);

/// Work for the writer thread.
enum Job {
    /// Check and apply a batch; answer after a flush when `durable`.
    Apply { ops: Vec<Op>, durable: bool },
    /// Answer after a flush covering every write applied so far.
    Sync,
    /// Start logging every write applied from now on (for a snapshot).
    StartLog,
    /// Stop logging; hand the log over after the flush of this group, when
    /// someone waits for it (then answer as `Sync`).
    EndLog(Option<LogReply>),
    /// Hand over what has been logged so far at once; the log goes on (a
    /// compaction catching up).
    TakeLog(LogReply),
    /// Apply the rest of the log to a compacted generation, make it durable
    /// and live, and write to it from now on; ends the log.
    Switch(Box<compact::Switch>),
}

type Reply = tokio::sync::oneshot::Sender<Result<(), StoreError>>;
type LogReply = tokio::sync::oneshot::Sender<Result<WriteLog, StoreError>>;

/// The handle of the writer thread (see the module documentation).
#[derive(Debug)]
struct Writer {
    /// `None` once the store is being dropped.
    queue: Option<mpsc::Sender<(Job, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(
        live: Arc<RwLock<Live>>,
        files: durable::DataFiles,
        failure: Arc<OnceLock<String>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("acmeproxy-store".to_owned())
            .spawn(move || write_loop(&live, files, &failure, &rx))
            .map_err(|e| StoreError::backend("starting the store's writer thread", e))?;
        Ok(Self {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Starts the write log of a snapshot; it ends when the guard does.
    async fn start_log(&self) -> Result<LogGuard, StoreError> {
        let queue = self
            .queue
            .clone()
            .ok_or_else(|| StoreError::backend("sled writer", "the store is closing"))?;
        // The guard exists before the log starts, so that a snapshot dropped
        // while waiting for the writer still ends the log (EndLog without a
        // log is a no-op).
        let guard = LogGuard { queue: Some(queue) };
        self.submit(Job::StartLog).await?;
        Ok(guard)
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        let stopped = || StoreError::backend("sled writer", "the store's writer thread stopped");
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue.send((job, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the loop once it has answered what is queued;
        // joining releases the thread's handle on the database (and its lock).
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: apply a group of batches, flush and sync once, answer
/// the group.
fn write_loop(
    live: &RwLock<Live>,
    mut files: durable::DataFiles,
    failure: &OnceLock<String>,
    queue: &mpsc::Receiver<(Job, Reply)>,
) {
    let mut db = read_live(live).db.clone();
    let mut waiting: Vec<Reply> = Vec::new();
    // The write log of the snapshot running, if one is.
    let mut log: Option<WriteLog> = None;
    let mut logs: Vec<(LogReply, WriteLog)> = Vec::new();
    // Intent keys; every intent is gone after `replay_intents` at open.
    let mut seq: u64 = 0;
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some((job, reply)) = next.take() {
            if let Some(cause) = failure.get() {
                let _ = reply.send(Err(StoreError::backend(
                    "the sled store stopped after an I/O error",
                    cause.clone(),
                )));
            } else {
                match job {
                    Job::Apply { ops, durable } => match apply(&db, &ops, &mut seq) {
                        Ok(()) if durable => {
                            record(&mut log, ops);
                            waiting.push(reply);
                        }
                        Ok(()) => {
                            record(&mut log, ops);
                            let _ = reply.send(Ok(()));
                        }
                        Err(e @ StoreError::Backend { .. }) => {
                            fail(failure, &e);
                            let _ = reply.send(Err(e));
                        }
                        result => {
                            let _ = reply.send(result);
                        }
                    },
                    Job::Sync => waiting.push(reply),
                    Job::StartLog => {
                        log = Some(Vec::new());
                        let _ = reply.send(Ok(()));
                    }
                    Job::EndLog(out) => {
                        let taken = log.take().unwrap_or_default();
                        match out {
                            Some(out) => {
                                logs.push((out, taken));
                                waiting.push(reply);
                            }
                            None => {
                                let _ = reply.send(Ok(()));
                            }
                        }
                    }
                    Job::TakeLog(out) => {
                        let _ = out.send(Ok(log.as_mut().map(std::mem::take).unwrap_or_default()));
                        let _ = reply.send(Ok(()));
                    }
                    Job::Switch(switch) => {
                        let result = match log.take() {
                            Some(rest) => {
                                switch_to(live, &mut db, &mut files, *switch, rest, failure)
                            }
                            None => Err(StoreError::backend(
                                "switching to the compacted sled store",
                                "no write log was running",
                            )),
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            taken += 1;
            if taken < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let flushed = match db.flush() {
            Ok(_) => files
                .sync()
                .map_err(|e| format!("fdatasync of the sled store's files failed: {e}")),
            Err(e) => Err(format!("sled flush failed: {e}")),
        };
        let took = started.elapsed();
        if took >= SLOW_FLUSH {
            tracing::warn!(
                took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                commits = waiting.len(),
                "slow store flush: every commit of the group waited for it"
            );
        }
        if let Err(cause) = &flushed {
            fail(failure, cause);
        }
        for (out, taken) in logs.drain(..) {
            let _ = out.send(match &flushed {
                Ok(()) => Ok(taken),
                Err(e) => Err(StoreError::backend("sled snapshot", e.clone())),
            });
        }
        for reply in waiting.drain(..) {
            let result = match &flushed {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::backend(
                    "committing to the sled store",
                    e.clone(),
                )),
            };
            let _ = reply.send(result);
        }
    }
}

/// The writer thread's half of a compaction: applies the writes logged since
/// the last catch-up to the new generation, makes it durable, names it in
/// `CURRENT` and writes to it from now on. Until `CURRENT` is renamed, a
/// failure leaves the old generation live and complete; after the rename,
/// a failure to sync the directory leaves it unknown which one a crash
/// would bring back, so the store fails (and the restart settles it: both
/// generations hold every acknowledged write up to this job).
fn switch_to(
    live: &RwLock<Live>,
    db: &mut Arc<sled::Db>,
    files: &mut durable::DataFiles,
    mut switch: compact::Switch,
    rest: WriteLog,
    failure: &OnceLock<String>,
) -> Result<(), StoreError> {
    compact::apply_log(&switch.db, rest)?;
    switch
        .db
        .flush()
        .map_err(|e| StoreError::backend("flushing the compacted sled store", e))?;
    switch
        .files
        .sync()
        .map_err(|e| StoreError::backend("syncing the compacted sled store", e))?;
    let tmp = generations::prepare_current(&switch.store_dir, switch.generation, switch.bytes)
        .map_err(|e| StoreError::backend("writing the sled store's CURRENT file", e))?;
    std::fs::rename(&tmp, switch.store_dir.join("CURRENT"))
        .map_err(|e| StoreError::backend("renaming the sled store's CURRENT file", e))?;
    if let Err(e) = std::fs::File::open(&switch.store_dir).and_then(|d| d.sync_all()) {
        let cause = format!(
            "fsync of {} after switching to a compacted generation failed: {e}",
            switch.store_dir.display()
        );
        fail(failure, &cause);
        return Err(StoreError::backend(
            "switching to the compacted sled store",
            cause,
        ));
    }
    *live
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Live {
        db: switch.db.clone(),
        generation: switch.generation,
    };
    *db = switch.db;
    *files = switch.files;
    Ok(())
}

/// Puts the store in its failed state (once) and says so in the log.
fn fail(failure: &OnceLock<String>, cause: &dyn std::fmt::Display) {
    let cause = cause.to_string();
    if failure.set(cause.clone()).is_ok() {
        tracing::error!(
            %cause,
            "the store failed to write; it refuses reads and writes from now on, and \
             acmeproxy exits for a restart once the data directory takes writes again"
        );
    }
}

/// Checks the preconditions of `ops` and applies them atomically, or returns
/// [`StoreError::Conflict`] naming the first failing op with nothing written.
/// Runs only on the writer thread, so nothing changes between check and write.
fn apply(db: &sled::Db, ops: &[Op], seq: &mut u64) -> Result<(), StoreError> {
    let keyed: Vec<Vec<u8>> = ops.iter().map(|op| db_key(op.table, &op.key)).collect();
    // What earlier ops of this batch wrote, so later preconditions see it.
    let mut written: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    for (key, op) in keyed.iter().zip(ops) {
        let current: Option<Vec<u8>> =
            match written.iter().rev().find(|(k, _)| *k == key.as_slice()) {
                Some((_, v)) => v.map(<[u8]>::to_vec),
                None if op.expect == Expect::Any => None,
                None => db
                    .get(key)
                    .map_err(|e| StoreError::backend("sled read for a precondition", e))?
                    .map(|v| v.to_vec()),
            };
        let holds = match &op.expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Present => current.is_some(),
            Expect::Value(want) => current.as_deref() == Some(want.as_slice()),
        };
        if !holds {
            return Err(StoreError::Conflict {
                table: op.table,
                key: op.key.clone(),
            });
        }
        written.push((key.as_slice(), op.value.as_deref()));
    }
    let writes: Vec<(&[u8], Option<&[u8]>)> = keyed
        .iter()
        .zip(ops)
        .map(|(k, op)| (k.as_slice(), op.value.as_deref()))
        .collect();
    match writes.as_slice() {
        [(key, value)] => write_one(db, key, *value),
        _ => {
            // Several keys: record the whole batch under an intent key first,
            // apply it key by key, then drop the intent. sled recovers a
            // prefix of its log, so after a crash either the intent is there
            // (and `replay_intents` finishes the batch) or none of it is.
            let intent = intent_key(*seq);
            *seq += 1;
            write_one(db, &intent, Some(&encode_intent(&writes)))?;
            for (key, value) in &writes {
                write_one(db, key, *value)?;
            }
            write_one(db, &intent, None)
        }
    }
}

fn write_one(db: &sled::Db, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    match value {
        Some(v) => db.insert(key, v).map(|_| ()),
        None => db.remove(key).map(|_| ()),
    }
    .map_err(|e| StoreError::backend("sled write failed", e))
}

/// Where intents live: outside every table (table names never start `__`).
const INTENT_PREFIX: &[u8] = b"__intent\0";

fn intent_key(seq: u64) -> Vec<u8> {
    let mut k = INTENT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `count`, then per write: key length, key, 0 (delete) or 1 + value length +
/// value; lengths as u32 big-endian.
fn encode_intent(writes: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len(writes.len()));
    for (key, value) in writes {
        out.extend_from_slice(&len(key.len()));
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&len(v.len()));
                out.extend_from_slice(v);
            }
        }
    }
    out
}

type IntentWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn decode_intent(mut raw: &[u8]) -> Option<IntentWrites> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (raw.get(..n)?, raw.get(n..)?);
        *raw = rest;
        Some(head)
    }
    fn take_len(raw: &mut &[u8]) -> Option<usize> {
        let b: [u8; 4] = take(raw, 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(b)).ok()
    }
    let count = take_len(&mut raw)?;
    let mut writes = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let klen = take_len(&mut raw)?;
        let key = take(&mut raw, klen)?.to_vec();
        let value = match take(&mut raw, 1)?.first()? {
            0 => None,
            1 => {
                let vlen = take_len(&mut raw)?;
                Some(take(&mut raw, vlen)?.to_vec())
            }
            _ => return None,
        };
        writes.push((key, value));
    }
    raw.is_empty().then_some(writes)
}

/// Finishes every batch a crash interrupted (see [`apply`]), oldest first,
/// and makes the result durable. Returns how many there were.
fn replay_intents(db: &sled::Db) -> Result<usize, StoreError> {
    let mut done = 0;
    for item in db.scan_prefix(INTENT_PREFIX) {
        let (key, raw) = item.map_err(|e| StoreError::backend("sled scan of intents", e))?;
        let writes = decode_intent(&raw).ok_or_else(|| {
            StoreError::backend(
                "replaying an interrupted batch",
                "the intent record is unreadable",
            )
        })?;
        for (k, v) in &writes {
            write_one(db, k, v.as_deref())?;
        }
        write_one(db, &key, None)?;
        done += 1;
    }
    if done > 0 {
        db.flush()
            .map_err(|e| StoreError::backend("sled flush after replaying batches", e))?;
    }
    Ok(done)
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
    fn intents_round_trip_and_reject_damage() {
        let writes: Vec<(&[u8], Option<&[u8]>)> =
            vec![(b"orders\0a", Some(b"{}")), (b"jobs\0a", None)];
        let raw = encode_intent(&writes);
        let back = decode_intent(&raw).unwrap();
        assert_eq!(
            back,
            vec![
                (b"orders\0a".to_vec(), Some(b"{}".to_vec())),
                (b"jobs\0a".to_vec(), None)
            ]
        );
        assert!(decode_intent(&raw[..raw.len() - 1]).is_none(), "truncated");
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode_intent(&longer).is_none(), "trailing bytes");
    }

    /// A crash after the intent and the first of its writes: opening the store
    /// finishes the batch (the second write here is a delete) and drops the
    /// intent.
    #[tokio::test]
    async fn open_finishes_a_batch_a_crash_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            db.insert(db_key(Table::Jobs, "o1"), &b"job"[..]).unwrap();
            let order = db_key(Table::Orders, "o1");
            let job = db_key(Table::Jobs, "o1");
            let writes: Vec<(&[u8], Option<&[u8]>)> = vec![(&order, Some(b"valid")), (&job, None)];
            db.insert(intent_key(7), encode_intent(&writes)).unwrap();
            db.insert(&order, &b"valid"[..]).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.get(Table::Orders, "o1").await.unwrap(),
            Some(b"valid".to_vec())
        );
        assert_eq!(store.get(Table::Jobs, "o1").await.unwrap(), None);
        assert_eq!(store.db().scan_prefix(INTENT_PREFIX).count(), 0);
        // A batch applied now leaves no intent behind either.
        store
            .commit(vec![
                Op::put(Table::Certs, "c", b"x".to_vec(), Expect::Absent),
                Op::put(Table::CertSerials, "01", b"c".to_vec(), Expect::Absent),
            ])
            .await
            .unwrap();
        assert_eq!(store.db().scan_prefix(INTENT_PREFIX).count(), 0);
        assert_eq!(
            store.get(Table::CertSerials, "01").await.unwrap(),
            Some(b"c".to_vec())
        );
    }

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
