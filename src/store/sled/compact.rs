//! Online compaction of the sled store (see "Compaction" in the parent
//! module): a thread of its own watches the live generation's size and,
//! past a threshold, copies the live records into a fresh generation while
//! writes go on, catches up with the writes applied meanwhile, and has the
//! writer thread switch to it between two batches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, mpsc};
use std::time::{Duration, Instant};

use super::generations::{self, Generation};
use super::snapshot::{LogGuard, WriteLog};
use super::{INTENT_PREFIX, Job, Live, Reply, SledOptions, durable, open_sled, read_live};
use crate::store::StoreError;

/// What one compaction did, for the log and for tests.
#[derive(Clone, Debug)]
pub struct CompactionReport {
    /// Records copied into the new generation (before catching up).
    pub records: u64,
    /// The old generation's size on disk when the compaction started.
    pub bytes_before: u64,
    /// The new generation's size on disk just before the switch (what
    /// `CURRENT` records as the next baseline).
    pub bytes_after: u64,
    /// Writes applied to the new generation after the copy.
    pub caught_up: u64,
    /// From the start of the copy to the switch.
    pub took: Duration,
    /// How long the switch held the writer thread (commits waited).
    pub switch: Duration,
}

/// Catch-up rounds before the switch: each applies, off the writer thread,
/// the writes applied since the previous round, so the switch itself (which
/// holds the writer) applies only the last few.
const CATCH_UP_ROUNDS: usize = 4;
/// A catch-up round smaller than this ends the catching up.
const CATCH_UP_SMALL: usize = 512;
/// After a failed compaction, how long before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Free space a compaction leaves besides the copy (the live store keeps
/// writing meanwhile).
const FREE_SPACE_MARGIN: u64 = 64 * 1024 * 1024;

type CompactReply = tokio::sync::oneshot::Sender<Result<CompactionReport, StoreError>>;

/// The handle of the compaction thread. Dropping it stops the thread (a copy
/// in progress is abandoned and its directory removed at the next open).
#[derive(Debug)]
pub(super) struct Compactor {
    stop: Arc<AtomicBool>,
    requests: Option<mpsc::Sender<CompactReply>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the compaction thread works with.
pub(super) struct Context {
    pub(super) store_dir: PathBuf,
    pub(super) live: Arc<RwLock<Live>>,
    pub(super) queue: mpsc::Sender<(Job, Reply)>,
    /// Held by a snapshot or a compaction: they share the writer's log.
    pub(super) exclusive: Arc<tokio::sync::Mutex<()>>,
    pub(super) failure: Arc<OnceLock<String>>,
    pub(super) options: SledOptions,
    /// The size the last compaction left (`CURRENT`).
    pub(super) baseline: u64,
}

impl Compactor {
    pub(super) fn start(ctx: Context) -> Result<Self, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (requests, rx) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("acmeproxy-compact".to_owned())
            .spawn(move || run(ctx, &thread_stop, &rx))
            .map_err(|e| StoreError::backend("starting the store's compaction thread", e))?;
        Ok(Self {
            stop,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Compacts now, whatever the size, and reports.
    pub(super) async fn compact_now(&self) -> Result<CompactionReport, StoreError> {
        let stopped = || StoreError::backend("sled compaction", "the compaction thread stopped");
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(reply)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: check the size every `compaction_check`, compact past the
/// threshold, and answer requests to compact now.
fn run(mut ctx: Context, stop: &AtomicBool, requests: &mpsc::Receiver<CompactReply>) {
    let every = ctx.options.compaction_check.unwrap_or(Duration::MAX);
    let mut not_before = Instant::now();
    loop {
        let asked = match requests.recv_timeout(every) {
            Ok(reply) => Some(reply),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if asked.is_none() {
            if Instant::now() < not_before || ctx.failure.get().is_some() {
                continue;
            }
            match due(&ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    not_before = Instant::now() + RETRY_AFTER;
                    tracing::warn!(error = %causes(&e), "could not measure the sled store's size");
                    continue;
                }
            }
        }
        let result = compact(&mut ctx, stop);
        match &result {
            Ok(report) => tracing::info!(
                records = report.records,
                caught_up = report.caught_up,
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                took_ms = u64::try_from(report.took.as_millis()).unwrap_or(u64::MAX),
                switch_ms = u64::try_from(report.switch.as_millis()).unwrap_or(u64::MAX),
                "compacted the sled store"
            ),
            Err(e) if stop.load(Ordering::Relaxed) => {
                tracing::debug!(error = %causes(e), "compaction stopped with the store");
            }
            Err(e) => {
                not_before = Instant::now() + RETRY_AFTER;
                tracing::warn!(
                    error = %causes(e),
                    retry_in_s = RETRY_AFTER.as_secs(),
                    "could not compact the sled store; it keeps running on the old files"
                );
            }
        }
        if let Some(reply) = asked {
            let _ = reply.send(result);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// An error and its sources on one line (the log must say why, for
/// example which disk is short of how much space).
fn causes(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether the live generation has outgrown what the last compaction left.
fn due(ctx: &Context) -> Result<bool, StoreError> {
    let generation = read_live(&ctx.live).generation;
    let bytes = generations::disk_bytes(&ctx.store_dir, generation)
        .map_err(|e| StoreError::backend("measuring the sled store's size", e))?;
    let threshold = ctx
        .options
        .compaction_min_bytes
        .max(ctx.baseline.saturating_mul(ctx.options.compaction_ratio));
    Ok(bytes >= threshold)
}

/// One compaction (see the module documentation).
fn compact(ctx: &mut Context, stop: &AtomicBool) -> Result<CompactionReport, StoreError> {
    if let Some(cause) = ctx.failure.get() {
        return Err(StoreError::backend(
            "sled compaction",
            format!("the store has failed: {cause}"),
        ));
    }
    let exclusive = ctx.exclusive.clone();
    let _exclusive = exclusive.blocking_lock();
    let started = Instant::now();
    let (old, old_generation) = {
        let live = read_live(&ctx.live);
        (live.db.clone(), live.generation)
    };
    let bytes_before = generations::disk_bytes(&ctx.store_dir, old_generation)
        .map_err(|e| StoreError::backend("measuring the sled store's size", e))?;
    check_free_space(&ctx.store_dir, bytes_before)?;
    let generation = old_generation.next();
    let new_dir = generation.dir(&ctx.store_dir);
    let result = copy_and_switch(ctx, stop, &old, generation, &new_dir, bytes_before, started);
    if result.is_err() {
        // Not live: nothing refers to it. (Removed at the next open otherwise.)
        if read_live(&ctx.live).generation != generation {
            let _ = generations::remove_generation(&ctx.store_dir, generation);
        }
        return result;
    }
    // Retire the old generation once no reader holds it any more.
    let retired = Arc::downgrade(&old);
    drop(old);
    while retired.strong_count() > 0 {
        if stop.load(Ordering::Relaxed) {
            return result;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = generations::remove_generation(&ctx.store_dir, old_generation) {
        tracing::warn!(error = %e, "could not remove the old generation of the sled store; \
            it is removed at the next start");
    }
    result
}

fn copy_and_switch(
    ctx: &mut Context,
    stop: &AtomicBool,
    old: &sled::Db,
    generation: Generation,
    new_dir: &Path,
    bytes_before: u64,
    started: Instant,
) -> Result<CompactionReport, StoreError> {
    if new_dir.exists() {
        std::fs::remove_dir_all(new_dir)
            .map_err(|e| StoreError::backend(format!("removing {}", new_dir.display()), e))?;
    }
    let new = Arc::new(open_sled(new_dir)?);
    let guard = start_log(&ctx.queue)?;
    let records = copy(old, &new, stop)?;
    let mut caught_up = 0;
    for _ in 0..CATCH_UP_ROUNDS {
        let log = take_log(&ctx.queue)?;
        let n = log.len();
        apply_log(&new, log)?;
        caught_up += n as u64;
        if n < CATCH_UP_SMALL {
            break;
        }
    }
    new.flush()
        .map_err(|e| StoreError::backend("flushing the compacted sled store", e))?;
    let files = durable::DataFiles::open(new_dir)
        .map_err(|e| StoreError::backend("syncing the compacted sled store", e))?;
    let bytes_now = generations::disk_bytes(&ctx.store_dir, generation)
        .map_err(|e| StoreError::backend("measuring the compacted sled store", e))?;
    let switching = Instant::now();
    submit(
        &ctx.queue,
        Job::Switch(Box::new(Switch {
            db: new,
            files,
            generation,
            store_dir: ctx.store_dir.clone(),
            bytes: bytes_now,
        })),
    )?;
    let switch = switching.elapsed();
    // The switch ended the log.
    drop(guard);
    ctx.baseline = bytes_now;
    Ok(CompactionReport {
        records,
        bytes_before,
        bytes_after: bytes_now,
        caught_up,
        took: started.elapsed(),
        switch,
    })
}

/// Refuses to start a copy that could fill the disk under the live store:
/// the copy needs at most what the live generation takes now.
fn check_free_space(store_dir: &Path, needed: u64) -> Result<(), StoreError> {
    let stat = rustix::fs::statvfs(store_dir)
        .map_err(|e| StoreError::backend("reading the free space of the store's disk", e))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let want = needed.saturating_add(FREE_SPACE_MARGIN);
    if free < want {
        return Err(StoreError::backend(
            "sled compaction",
            format!(
                "{} MiB free on the store's disk, and a compaction needs up to {} MiB; \
                 free some space (the store grows until then)",
                free >> 20,
                want >> 20
            ),
        ));
    }
    Ok(())
}

/// Copies every record (not the intents of batches being applied: their
/// writes are in the log) from `old` into `new`.
fn copy(old: &sled::Db, new: &sled::Db, stop: &AtomicBool) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for item in old.iter() {
        let (key, value) = item.map_err(|e| StoreError::backend("reading for compaction", e))?;
        if key.starts_with(INTENT_PREFIX) {
            continue;
        }
        new.insert(key, value)
            .map_err(|e| StoreError::backend("writing the compacted sled store", e))?;
        n += 1;
        if n % 4096 == 0 && stop.load(Ordering::Relaxed) {
            return Err(StoreError::backend(
                "sled compaction",
                "the store is closing",
            ));
        }
    }
    Ok(n)
}

/// Applies logged writes, in order, to `db`.
pub(super) fn apply_log(db: &sled::Db, log: WriteLog) -> Result<(), StoreError> {
    for (table, key, value) in log {
        super::write_one(db, &super::db_key(table, &key), value.as_deref())?;
    }
    Ok(())
}

/// What the writer thread needs to switch to a compacted generation.
pub(super) struct Switch {
    pub(super) db: Arc<sled::Db>,
    pub(super) files: durable::DataFiles,
    pub(super) generation: Generation,
    pub(super) store_dir: PathBuf,
    /// Recorded in `CURRENT` as the baseline of the next compaction.
    pub(super) bytes: u64,
}

fn stopped() -> StoreError {
    StoreError::backend("sled writer", "the store's writer thread stopped")
}

/// Sends a job to the writer thread and waits for its answer (from this
/// thread, outside the async runtime).
fn submit(queue: &mpsc::Sender<(Job, Reply)>, job: Job) -> Result<(), StoreError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    queue.send((job, reply)).map_err(|_| stopped())?;
    answer.blocking_recv().map_err(|_| stopped())?
}

fn start_log(queue: &mpsc::Sender<(Job, Reply)>) -> Result<LogGuard, StoreError> {
    let guard = LogGuard {
        queue: Some(queue.clone()),
    };
    submit(queue, Job::StartLog)?;
    Ok(guard)
}

/// The writes logged so far; the log goes on.
fn take_log(queue: &mpsc::Sender<(Job, Reply)>) -> Result<WriteLog, StoreError> {
    let (out, log) = tokio::sync::oneshot::channel();
    submit(queue, Job::TakeLog(out))?;
    log.blocking_recv().map_err(|_| stopped())?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    use super::super::{SledOptions, SledStore};
    use crate::store::{Expect, Op, Store, StoreError, Table};

    fn manual() -> SledOptions {
        SledOptions {
            compaction_check: None,
            ..SledOptions::default()
        }
    }

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    async fn all(store: &SledStore, table: Table) -> BTreeMap<String, Vec<u8>> {
        store
            .scan(table, "", None, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Garbage (overwritten and deleted records) is left behind; what is
    /// live is copied exactly, and the store keeps working on the new files,
    /// across a reopen too.
    #[tokio::test]
    async fn compaction_keeps_every_live_record_and_drops_the_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = SledStore::open_with(&path, manual()).unwrap();
        let mut model = BTreeMap::new();
        for round in 0..6u8 {
            for i in 0..400 {
                let key = format!("o{i:04}");
                let value = vec![round; 1500];
                store
                    .commit(vec![Op::put(
                        Table::Orders,
                        &key,
                        value.clone(),
                        Expect::Any,
                    )])
                    .await
                    .unwrap();
                model.insert(key, value);
            }
        }
        for i in (0..400).filter(|i| i % 4 != 0) {
            let key = format!("o{i:04}");
            store
                .commit(vec![Op::delete(Table::Orders, &key, Expect::Present)])
                .await
                .unwrap();
            model.remove(&key);
        }
        let report = store.compact_now().await.unwrap();
        assert_eq!(report.records, 100, "the live orders: {report:?}");
        assert!(
            report.bytes_after < report.bytes_before,
            "no space given back: {report:?}"
        );
        assert_eq!(all(&store, Table::Orders).await, model);
        assert_eq!(entries(&path), ["CURRENT", "LOCK", "gen-2"]);
        // Writes go to the new generation, and survive a reopen.
        store
            .commit(vec![Op::put(
                Table::Orders,
                "after",
                b"x".to_vec(),
                Expect::Absent,
            )])
            .await
            .unwrap();
        model.insert("after".to_owned(), b"x".to_vec());
        drop(store);
        let store = SledStore::open_with(&path, manual()).unwrap();
        assert_eq!(all(&store, Table::Orders).await, model);
        assert!(
            std::fs::read_to_string(path.join("CURRENT"))
                .unwrap()
                .starts_with("gen-2 ")
        );
    }

    /// Compare-and-swap counters bumped by many writers while compactions
    /// run back to back: every acknowledged bump is in the final count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_during_compactions_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = std::sync::Arc::new(SledStore::open_with(&path, manual()).unwrap());
        // Some bulk, so that each copy takes a while.
        for chunk in 0..20 {
            let ops = (0..100)
                .map(|i| {
                    Op::put(
                        Table::Certs,
                        format!("c{chunk}-{i}"),
                        vec![7; 800],
                        Expect::Absent,
                    )
                })
                .collect();
            store.commit(ops).await.unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let key = format!("counter{}", w % 4);
                let mut acked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let current = store.get(Table::Meta, &key).await.unwrap();
                    let n: u64 = current
                        .as_deref()
                        .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                    let expect = current.map_or(Expect::Absent, Expect::Value);
                    let op = Op::put(Table::Meta, &key, (n + 1).to_string().into(), expect);
                    match store.commit(vec![op]).await {
                        Ok(()) => acked += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                (key, acked)
            }));
        }
        let mut compactions = 0;
        for _ in 0..4 {
            let report = store.compact_now().await.unwrap();
            assert!(report.records >= 2000, "{report:?}");
            compactions += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for w in writers {
            let (key, acked) = w.await.unwrap();
            *want.entry(key).or_default() += acked;
        }
        let check = |got: BTreeMap<String, Vec<u8>>| {
            for (key, n) in &want {
                let value = got.get(key).map(|v| String::from_utf8(v.clone()).unwrap());
                assert_eq!(value, Some(n.to_string()), "{key}");
            }
        };
        check(all(&store, Table::Meta).await);
        assert_eq!(all(&store, Table::Certs).await.len(), 2000);
        assert_eq!(compactions, 4);
        drop(store);
        let store = SledStore::open_with(&path, manual()).unwrap();
        check(all(&store, Table::Meta).await);
        assert_eq!(entries(&path), ["CURRENT", "LOCK", "gen-5"]);
    }

    /// A directory from before compactions (sled's files in it directly)
    /// opens as it is, and its first compaction moves it to `gen-1`.
    #[tokio::test]
    async fn a_legacy_directory_moves_to_gen_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            for i in 0..50 {
                db.insert(
                    super::super::db_key(Table::Accounts, &format!("a{i}")),
                    &b"{}"[..],
                )
                .unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledStore::open_with(&path, manual()).unwrap();
        assert_eq!(all(&store, Table::Accounts).await.len(), 50);
        store.compact_now().await.unwrap();
        assert_eq!(entries(&path), ["CURRENT", "LOCK", "gen-1"]);
        assert_eq!(all(&store, Table::Accounts).await.len(), 50);
        drop(store);
        let store = SledStore::open_with(&path, manual()).unwrap();
        assert_eq!(all(&store, Table::Accounts).await.len(), 50);
    }

    /// The background check compacts once the size passes the threshold.
    #[tokio::test]
    async fn the_size_check_compacts_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let options = SledOptions {
            compaction_check: Some(std::time::Duration::from_millis(50)),
            compaction_min_bytes: 1,
            compaction_ratio: 2,
        };
        let store = SledStore::open_with(&path, options).unwrap();
        store
            .commit(vec![Op::put(Table::Orders, "o", vec![1; 100], Expect::Any)])
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !path.join("gen-2").exists() || path.join("gen-1").exists() {
            assert!(std::time::Instant::now() < deadline, "{:?}", entries(&path));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            store.get(Table::Orders, "o").await.unwrap(),
            Some(vec![1; 100])
        );
    }

    const CHILD_ENV: &str = "ACMEPROXY_COMPACTION_CHILD_DIR";

    /// The child of `a_crash_at_any_moment_of_a_compaction_loses_nothing`:
    /// commits batches one after another (printing `ack N` after each
    /// returns) while compactions run back to back, until killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "child process of a_crash_at_any_moment_of_a_compaction_loses_nothing"]
    async fn compaction_crash_child() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let start: u64 = std::env::var("ACMEPROXY_COMPACTION_CHILD_START")
            .unwrap()
            .parse()
            .unwrap();
        let store = std::sync::Arc::new(
            SledStore::open_with(&std::path::Path::new(&dir).join("store"), manual()).unwrap(),
        );
        let compacting = store.clone();
        tokio::spawn(async move {
            loop {
                compacting.compact_now().await.unwrap();
            }
        });
        let mut out = std::io::stdout();
        for i in start.. {
            let ops = vec![
                // `Any`: a batch the previous child committed but did not
                // get to acknowledge may already be there.
                Op::put(Table::Orders, format!("o{i}"), vec![b'x'; 700], Expect::Any),
                Op::put(Table::Jobs, format!("o{i}"), vec![b'y'; 90], Expect::Any),
                Op::delete(
                    Table::Jobs,
                    format!("o{}", i.saturating_sub(3)),
                    Expect::Any,
                ),
            ];
            store.commit(ops).await.unwrap();
            writeln!(out, "ack {i}").unwrap();
            out.flush().unwrap();
        }
    }

    /// SIGKILLs a writer that compacts all the time, at several moments;
    /// after each, the store opens with every acknowledged write and one
    /// generation.
    #[test]
    fn a_crash_at_any_moment_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut next = 0u64;
        for round in 0..6u64 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "store::sled::compact::tests::compaction_crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env("ACMEPROXY_COMPACTION_CHILD_START", next.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (started, first_ack) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                let mut acked = Vec::new();
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("ack ") {
                        acked.push(n.parse::<u64>().unwrap());
                        if acked.len() == 1 {
                            let _ = started.send(());
                        }
                    }
                }
                acked
            });
            let _ = first_ack.recv_timeout(std::time::Duration::from_secs(30));
            // Different moments: 40 ms to 440 ms after the first write.
            std::thread::sleep(std::time::Duration::from_millis(40 + round * 80));
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            let acked = reader.join().unwrap();
            assert!(
                !acked.is_empty(),
                "round {round}: the child acknowledged nothing"
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store = SledStore::open_with(&dir.path().join("store"), manual()).unwrap();
                for n in &acked {
                    assert!(
                        store
                            .get(Table::Orders, &format!("o{n}"))
                            .await
                            .unwrap()
                            .is_some(),
                        "round {round}: acknowledged order o{n} is gone"
                    );
                }
                let generations: Vec<String> = entries(&dir.path().join("store"))
                    .into_iter()
                    .filter(|e| e.starts_with("gen-"))
                    .collect();
                assert_eq!(generations.len(), 1, "round {round}: {generations:?}");
            });
            next = acked.iter().max().copied().unwrap_or(next) + 1;
        }
    }
}
