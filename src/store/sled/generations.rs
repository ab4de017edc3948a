//! The store directory's layout: which sled directory is the live one (see
//! "Compaction" in the parent module).
//!
//! ```text
//! <dir>/LOCK       held (flock) by the process that has the store open
//! <dir>/CURRENT    "gen-<n> <bytes>\n": the live generation, and its size
//!                  on disk right after it was written by a compaction
//! <dir>/gen-<n>/   a sled directory (conf, db, blobs/, snap.*)
//! ```
//!
//! A directory written before compactions existed has sled's files directly
//! in `<dir>` and no `CURRENT`: that is the *legacy* generation, opened as it
//! is until its first compaction moves the live data to `gen-1`.
//!
//! `CURRENT` changes only by an atomic rename of a synced `CURRENT.tmp`,
//! followed by an `fsync` of `<dir>`, so after a crash it names either the
//! old generation or the new, complete one. Everything else in `<dir>` (a
//! generation a crash interrupted half-written, an old generation not yet
//! removed) is removed when the store is opened.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One generation of the store's sled directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Generation {
    /// sled's files directly in the store directory.
    Legacy,
    /// `gen-<n>`.
    Numbered(u64),
}

impl Generation {
    /// The generation a compaction of this one writes.
    pub(super) fn next(self) -> Self {
        match self {
            Self::Legacy => Self::Numbered(1),
            Self::Numbered(n) => Self::Numbered(n.saturating_add(1)),
        }
    }

    /// Where its sled files are.
    pub(super) fn dir(self, store_dir: &Path) -> PathBuf {
        match self {
            Self::Legacy => store_dir.to_owned(),
            Self::Numbered(n) => store_dir.join(format!("gen-{n}")),
        }
    }
}

/// What [`open`] found.
#[derive(Debug)]
pub(super) struct Layout {
    /// The held `LOCK` file: the lock lasts as long as this handle.
    pub(super) lock: File,
    pub(super) current: Generation,
    /// The size recorded in `CURRENT` (0 for the legacy generation or a new
    /// store): what the last compaction left.
    pub(super) baseline: u64,
}

/// Takes the store directory's lock, reads `CURRENT` (creating a new store
/// as `gen-1` if the directory holds none) and removes what earlier runs
/// left behind.
pub(super) fn open(store_dir: &Path) -> io::Result<Layout> {
    fs::create_dir_all(store_dir)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(store_dir.join("LOCK"))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the store is in use by another process (is acmeproxy already running?)",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let (current, baseline) = match read_current(store_dir)? {
        Some(found) => found,
        None if store_dir.join("db").exists() => (Generation::Legacy, 0),
        None => {
            let first = Generation::Numbered(1);
            let dir = first.dir(store_dir);
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            fs::create_dir(&dir)?;
            write_current(store_dir, first, 0)?;
            (first, 0)
        }
    };
    remove_stale(store_dir, current)?;
    Ok(Layout {
        lock,
        current,
        baseline,
    })
}

/// Parses `CURRENT`; `None` when there is none.
fn read_current(store_dir: &Path) -> io::Result<Option<(Generation, u64)>> {
    let text = match fs::read_to_string(store_dir.join("CURRENT")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let damaged = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is damaged (expected \"gen-<n> <bytes>\", found {:?}); restore the \
                 store from a backup",
                store_dir.join("CURRENT").display(),
                text.chars().take(64).collect::<String>()
            ),
        )
    };
    let mut words = text.split_whitespace();
    let generation = words
        .next()
        .and_then(|w| w.strip_prefix("gen-"))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(damaged)?;
    let bytes = words
        .next()
        .and_then(|b| b.parse::<u64>().ok())
        .ok_or_else(damaged)?;
    if words.next().is_some() {
        return Err(damaged());
    }
    let current = Generation::Numbered(generation);
    // A new store names gen-1 before sled has written anything into it; a
    // compacted generation is complete before CURRENT names it.
    if !current.dir(store_dir).is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} names gen-{generation}, which does not exist; restore the store \
                 from a backup",
                store_dir.join("CURRENT").display()
            ),
        ));
    }
    Ok(Some((current, bytes)))
}

/// Makes `generation` the live one, durably: a synced `CURRENT.tmp` renamed
/// over `CURRENT`, then an `fsync` of the store directory.
pub(super) fn write_current(
    store_dir: &Path,
    generation: Generation,
    bytes: u64,
) -> io::Result<()> {
    let tmp = prepare_current(store_dir, generation, bytes)?;
    fs::rename(&tmp, store_dir.join("CURRENT"))?;
    File::open(store_dir)?.sync_all()
}

/// Writes and syncs `CURRENT.tmp` naming `generation`; renaming it over
/// `CURRENT` (and syncing the directory) makes the generation live.
pub(super) fn prepare_current(
    store_dir: &Path,
    generation: Generation,
    bytes: u64,
) -> io::Result<PathBuf> {
    let Generation::Numbered(n) = generation else {
        return Err(io::Error::other(
            "the legacy generation cannot be named in CURRENT",
        ));
    };
    let tmp = store_dir.join("CURRENT.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "gen-{n} {bytes}")?;
    f.sync_all()?;
    Ok(tmp)
}

/// sled's own file names in a generation's directory (sled 0.34).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Removes every generation but `current`: directories `gen-<n>`, sled's
/// files of the legacy generation once a numbered one is live, and a
/// `CURRENT.tmp` a crash left.
pub(super) fn remove_stale(store_dir: &Path, current: Generation) -> io::Result<()> {
    for entry in fs::read_dir(store_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = name
            .strip_prefix("gen-")
            .and_then(|n| n.parse::<u64>().ok())
            .map(Generation::Numbered);
        let stale = match generation {
            Some(g) => g != current,
            None => name == "CURRENT.tmp" || (current != Generation::Legacy && is_sled_file(name)),
        };
        if stale {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes the files of `generation` (after a compaction has replaced it).
pub(super) fn remove_generation(store_dir: &Path, generation: Generation) -> io::Result<()> {
    match generation {
        Generation::Numbered(_) => remove(&generation.dir(store_dir)),
        Generation::Legacy => {
            for entry in fs::read_dir(store_dir)? {
                let entry = entry?;
                if entry.file_name().to_str().is_some_and(is_sled_file) {
                    remove(&entry.path())?;
                }
            }
            Ok(())
        }
    }
}

fn remove(path: &Path) -> io::Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Bytes the generation's sled files take on disk (allocated blocks, as
/// `du` counts them).
pub(super) fn disk_bytes(store_dir: &Path, generation: Generation) -> io::Result<u64> {
    let dir = generation.dir(store_dir);
    let mut total = 0;
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if generation == Generation::Legacy && !is_sled_file(name) {
            continue;
        }
        total += tree_bytes(&entry.path())?;
    }
    Ok(total)
}

fn tree_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // sled removed it meanwhile (an old blob).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = meta.blocks().saturating_mul(512);
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            total += tree_bytes(&entry?.path())?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sled_files(dir: &Path) {
        fs::create_dir_all(dir.join("blobs")).unwrap();
        fs::write(dir.join("db"), b"log").unwrap();
        fs::write(dir.join("conf"), b"conf").unwrap();
        fs::write(dir.join("snap.0000"), b"snap").unwrap();
    }

    #[test]
    fn a_new_store_starts_at_gen_1() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("db");
        let layout = open(&store).unwrap();
        assert_eq!(layout.current, Generation::Numbered(1));
        assert!(store.join("gen-1").is_dir());
        assert_eq!(
            fs::read_to_string(store.join("CURRENT")).unwrap(),
            "gen-1 0\n"
        );
    }

    #[test]
    fn a_legacy_directory_is_opened_in_place_and_gens_left_half_written_go() {
        let dir = tempfile::tempdir().unwrap();
        sled_files(dir.path());
        // A compaction the crash interrupted before CURRENT was written.
        sled_files(&dir.path().join("gen-1"));
        let layout = open(dir.path()).unwrap();
        assert_eq!(layout.current, Generation::Legacy);
        assert!(!dir.path().join("gen-1").exists());
        assert!(dir.path().join("db").exists());
    }

    #[test]
    fn once_current_names_a_generation_the_others_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        sled_files(dir.path());
        sled_files(&dir.path().join("gen-1"));
        sled_files(&dir.path().join("gen-2"));
        write_current(dir.path(), Generation::Numbered(1), 4096).unwrap();
        fs::write(dir.path().join("CURRENT.tmp"), b"gen-2 0\n").unwrap();
        let layout = open(dir.path()).unwrap();
        assert_eq!(layout.current, Generation::Numbered(1));
        assert_eq!(layout.baseline, 4096);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "LOCK", "gen-1"]);
    }

    #[test]
    fn a_damaged_current_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("CURRENT"), b"gen-x\n").unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("backup"), "{err}");
        fs::write(dir.path().join("CURRENT"), b"gen-3 10\n").unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("gen-3") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_second_open_is_refused_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        open(dir.path()).unwrap();
    }

    #[test]
    fn removing_the_legacy_generation_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        sled_files(dir.path());
        sled_files(&dir.path().join("gen-1"));
        remove_generation(dir.path(), Generation::Legacy).unwrap();
        assert!(!dir.path().join("db").exists());
        assert!(!dir.path().join("blobs").exists());
        assert!(dir.path().join("gen-1/db").exists());
        assert!(disk_bytes(dir.path(), Generation::Numbered(1)).unwrap() > 0);
    }
}
