//! Power-loss durability for sled 0.34's files.
//!
//! sled's own flush writes its log with `pwrite` and then calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range.
//! That starts and waits for the write-back of those pages, but it flushes
//! neither the drive's volatile write cache nor the file's metadata (its new
//! size), so a power cut can still lose a write sled called flushed. A real
//! `fsync` came only from sled's background thread, every 500 ms. Values too
//! large for a log segment (over 128 KiB: a tree node of many certificates can
//! get there) go to files under `blobs/` that sled never syncs at all.
//!
//! [`DataFiles::sync`] closes that gap. The store's writer thread calls it
//! after every group flush and before it answers any committer of the group:
//! an `fsync` of every blob file it has not synced yet and of the `blobs/`
//! directory that names them, then one `fdatasync` of the log file `db`
//! (which also flushes the drive cache), so that the durable log never points
//! at a blob that is not. Group commit amortises the cost: one
//! `fdatasync` serves every commit of the group.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The files of one sled directory that [`DataFiles::sync`] makes durable.
#[derive(Debug)]
pub(super) struct DataFiles {
    /// sled's log and page file, `<dir>/db`.
    log: File,
    /// `<dir>/blobs`.
    blobs: PathBuf,
    /// Blob files already synced (sled never rewrites a blob; it writes a new
    /// one and later removes the old).
    synced_blobs: HashSet<OsString>,
}

impl DataFiles {
    /// Opens the files of the sled directory `dir` (after sled has opened it,
    /// so they exist) and syncs them and the directories once: what an
    /// earlier run or sled's creation of the directory left unsynced is
    /// durable before the first commit is acknowledged.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let log = File::open(dir.join("db"))?;
        log.sync_all()?;
        let conf = dir.join("conf");
        if conf.exists() {
            File::open(&conf)?.sync_all()?;
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let mut files = Self {
            log,
            blobs: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        };
        files.sync_new_blobs()?;
        Ok(files)
    }

    /// Makes everything sled has written so far durable: call it after
    /// `Db::flush` and before acknowledging the writes that flush covered.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        // Blobs first: once the log is durable it may point at them.
        self.sync_new_blobs()?;
        self.log.sync_data()
    }

    /// `fsync`s blob files not synced before, then the `blobs/` directory if
    /// there were any. Forgets blobs sled has removed.
    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Removed by sled's blob collection in the meantime.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if new {
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }
}

/// Bytes [`probe_space`] writes: several of sled's 512 KiB log segments, so
/// that a directory that passes has room for sled to start and write.
const PROBE_BYTES: usize = 4 * 1024 * 1024;

/// Whether the store directory `dir` takes writes again: writes, syncs and
/// removes a probe file of [`PROBE_BYTES`] beside sled's files.
pub(super) fn probe_space(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let path = dir.join("acmeproxy-space-probe");
    let result = (|| {
        let mut f = File::create(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..PROBE_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    result?;
    removed
}

/// `fsync` of a directory, so that the names of files created in it survive.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    //! The durability test watches the real system calls: it runs a child
    //! (this test binary, one ignored test) under `strace`, which commits
    //! batches one after another and writes a marker to stderr after each
    //! commit returns. Every marker must come after a completed `fsync` or
    //! `fdatasync` of sled's log file that follows the previous marker. On
    //! sled's flush alone (`sync_file_range`) the check fails at once.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Write;
    use std::process::Command;

    use crate::store::sled::SledStore;
    use crate::store::{Expect, Op, Store, Table};

    const CHILD_ENV: &str = "ACMEPROXY_DURABILITY_CHILD_DIR";
    const COMMITS: usize = 40;
    const MARKER: &str = "acmeproxy-durability-ack";
    /// How the child's sled log file ends in `strace -y` output.
    const LOG_SUFFIX: &str = "/store/gen-1/db>";

    /// The child: commits `COMMITS` batches in turn; after each returns, one
    /// `write(2)` of a marker. Run only by `every_commit_is_fsynced_before_it_returns`.
    #[tokio::test]
    #[ignore = "child process of every_commit_is_fsynced_before_it_returns"]
    async fn durability_child() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let store = SledStore::open(&std::path::Path::new(&dir).join("store")).unwrap();
        let stderr = std::io::stderr();
        for i in 0..COMMITS {
            let ops = vec![
                Op::put(
                    Table::Orders,
                    format!("o{i}"),
                    vec![b'x'; 300],
                    Expect::Absent,
                ),
                Op::put(
                    Table::Jobs,
                    format!("o{i}"),
                    vec![b'y'; 100],
                    Expect::Absent,
                ),
            ];
            store.commit(ops).await.unwrap();
            stderr
                .lock()
                .write_all(format!("{MARKER} {i}\n").as_bytes())
                .unwrap();
        }
    }

    fn strace_available() -> bool {
        Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn every_commit_is_fsynced_before_it_returns() {
        if !strace_available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "strace is missing (make test-deps installs it)"
            );
            eprintln!("skipped: strace is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("strace.txt");
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("strace")
            .args(["-f", "-qq", "-y", "-e", "signal=none"])
            .args(["-e", "trace=fsync,fdatasync,write", "-s", "64", "-o"])
            .arg(&trace)
            .arg(&exe)
            .args([
                "--exact",
                "store::sled::durable::tests::durability_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&trace).unwrap();
        let report = check_trace(&text);
        assert_eq!(report.acks, COMMITS, "markers seen in the trace");
        assert!(
            report.unsynced_acks.is_empty(),
            "commits {:?} returned before an fsync/fdatasync of sled's log covered them \
             ({} syncs of the log for {} commits)",
            report.unsynced_acks,
            report.log_syncs,
            report.acks
        );
    }

    #[derive(Debug, Default)]
    struct TraceReport {
        acks: usize,
        log_syncs: usize,
        /// Markers not preceded by a completed sync of the log since the
        /// previous marker.
        unsynced_acks: Vec<usize>,
    }

    /// Reads an `strace -f -y` log in order. A sync counts when it completes
    /// (the full line, or the `resumed` line of an `unfinished` one) with
    /// result 0 on the child's log file (`…/store/db`).
    fn check_trace(text: &str) -> TraceReport {
        let mut report = TraceReport::default();
        let mut synced = false;
        // pid → whether its unfinished sync call is on the log file.
        let mut pending = std::collections::HashMap::new();
        for line in text.lines() {
            let Some((pid, call)) = line.split_once(' ') else {
                continue;
            };
            let call = call.trim_start();
            let is_sync = call.starts_with("fsync(") || call.starts_with("fdatasync(");
            let on_log = call.contains(LOG_SUFFIX);
            if is_sync && call.ends_with("<unfinished ...>") {
                pending.insert(pid.to_owned(), on_log);
            } else if is_sync {
                if on_log && call.ends_with("= 0") {
                    synced = true;
                    report.log_syncs += 1;
                }
            } else if call.starts_with("<... fsync resumed>")
                || call.starts_with("<... fdatasync resumed>")
            {
                if pending.remove(pid).unwrap_or(false) && call.ends_with("= 0") {
                    synced = true;
                    report.log_syncs += 1;
                }
            } else if call.starts_with("write(2") && call.contains(MARKER) {
                if !synced {
                    report.unsynced_acks.push(report.acks);
                }
                report.acks += 1;
                synced = false;
            }
        }
        report
    }

    /// A full disk: the commit that cannot be written fails, the store then
    /// refuses reads and writes, says it is not writable until space returns,
    /// and after a reopen every acknowledged batch is there in full, the failed
    /// one is there in full or not at all, and new commits succeed.
    #[tokio::test]
    async fn a_full_disk_fails_the_store_and_loses_nothing_acknowledged() {
        let Some(fs) = acmeproxy_testkit::Tmpfs::mount("24m") else {
            return;
        };
        let dir = fs.path().join("store");
        let store = SledStore::open(&dir).unwrap();
        let filler = fs.path().join("filler");
        fs.fill(&filler, 1024 * 1024);
        let batch = |i: usize| {
            vec![
                Op::put(
                    Table::Orders,
                    format!("o{i:05}"),
                    vec![b'o'; 1500],
                    Expect::Absent,
                ),
                Op::put(
                    Table::Jobs,
                    format!("o{i:05}"),
                    vec![b'j'; 500],
                    Expect::Absent,
                ),
            ]
        };
        let mut acknowledged = 0;
        let mut failed = None;
        for i in 0..20_000 {
            match store.commit(batch(i)).await {
                Ok(()) => acknowledged += 1,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let failed = failed.expect("the full disk never failed a commit");
        assert!(acknowledged > 0, "no room for a first commit: {failed}");
        eprintln!("{acknowledged} commits acknowledged, then: {failed}");
        assert!(store.failure().is_some(), "failure() after {failed}");
        let refused = store.get(Table::Orders, "o00000").await.unwrap_err();
        assert!(refused.to_string().contains("stopped"), "{refused}");
        assert!(store.commit(batch(99_999)).await.is_err());
        assert!(!store.writable_again().await, "writable while still full");

        std::fs::remove_file(&filler).unwrap();
        assert!(
            store.writable_again().await,
            "not writable after freeing space"
        );
        drop(store);

        let store = SledStore::open(&dir).unwrap();
        for i in 0..acknowledged {
            let key = format!("o{i:05}");
            assert!(
                store.get(Table::Orders, &key).await.unwrap().is_some(),
                "{key}"
            );
            assert!(
                store.get(Table::Jobs, &key).await.unwrap().is_some(),
                "{key}"
            );
        }
        let key = format!("o{acknowledged:05}");
        let order = store.get(Table::Orders, &key).await.unwrap();
        let job = store.get(Table::Jobs, &key).await.unwrap();
        assert_eq!(order.is_some(), job.is_some(), "half of the failed batch");
        store.commit(batch(50_000)).await.unwrap();
        assert!(store.failure().is_none());
    }

    #[test]
    fn trace_reader_pairs_unfinished_and_resumed_calls() {
        let text = "\
10 write(2<pipe:[1]>, \"acmeproxy-durability-ack 0\\n\", 27) = 27
11 fdatasync(5</tmp/x/store/gen-1/db> <unfinished ...>
10 write(2<pipe:[1]>, \"acmeproxy-durability-ack 1\\n\", 27) = 27
11 <... fdatasync resumed>) = 0
10 write(2<pipe:[1]>, \"acmeproxy-durability-ack 2\\n\", 27) = 27
12 fsync(6</tmp/x/store/gen-1/blobs>) = 0
12 fsync(7</tmp/x/store>) = 0
10 write(2<pipe:[1]>, \"acmeproxy-durability-ack 3\\n\", 27) = 27
";
        let report = check_trace(text);
        assert_eq!(report.acks, 4);
        assert_eq!(report.log_syncs, 1);
        assert_eq!(report.unsynced_acks, vec![0, 1, 3]);
    }
}
