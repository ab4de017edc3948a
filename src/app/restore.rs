//! `acmeproxy restore FILE --dir D`: rebuilds a data directory from a backup
//! ([`super::backup`]), offline. The backup is verified whole before
//! anything is written; the store is written through [`SledStore`], so the
//! result is an ordinary sled directory; the files get their modes back
//! (keys 0600) in 0700 directories.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::backup::{self, BackupReader, DataFile, Item};
use super::{admin_socket, create_private_dir};
use crate::store::sled::SledStore;
use crate::store::{Expect, Op, Store};

/// Records written per batch.
const BATCH: usize = 512;

/// Restores `file` into the data directory `dir`, its store into `db`
/// (default `dir/db`).
pub(super) async fn restore(file: &Path, dir: &Path, db: Option<&Path>) -> anyhow::Result<()> {
    let summary = backup::verify(file).with_context(|| format!("{} is refused", file.display()))?;
    let db = db.map_or_else(|| dir.join("db"), Path::to_owned);
    refuse_occupied(dir, &db, &summary.files).await?;

    create_private_dir(dir)?;
    // sled would create its directory world-readable.
    create_private_dir(&db)?;
    let written = write(file, dir, &db).await.with_context(|| {
        format!(
            "restoring into {} stopped half-way: remove what it wrote ({} and the files) before trying again",
            dir.display(),
            db.display()
        )
    })?;
    println!(
        "restored {} (taken {} by acmeproxy {}): {} records into the sled store {}, {} file(s) into {}{}{}",
        file.display(),
        summary.header.created,
        summary.header.acmeproxy,
        written.records,
        db.display(),
        summary.files.len(),
        dir.display(),
        if summary.files.is_empty() { "" } else { ": " },
        summary.files.join(", ")
    );
    println!(
        "point ca.json's dataDir at {} (and db.dataSource at {} if it is not {}/db), then start the server",
        dir.display(),
        db.display(),
        dir.display()
    );
    Ok(())
}

/// Refuses a target that holds a store or any of the backup's files, or
/// that a running server serves.
async fn refuse_occupied(dir: &Path, db: &Path, files: &[String]) -> anyhow::Result<()> {
    let socket = dir.join(admin_socket::SOCKET_NAME);
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "a server is running on {} (its admin socket answers): stop it, and restore into a new directory",
            dir.display()
        );
    }
    let non_empty = |p: &Path| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    if non_empty(db) || (db.exists() && !db.is_dir()) {
        bail!(
            "{} already holds a store: restore into a new directory, or move it away first",
            db.display()
        );
    }
    if let Some(existing) = files.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        bail!(
            "{} exists already: restore into a new directory, or move it away first",
            existing.display()
        );
    }
    Ok(())
}

/// What [`write`] wrote.
struct Written {
    records: u64,
}

/// Reads `file` again, this time writing what it holds; the digest is
/// checked again at its end, as the file could have changed since.
async fn write(file: &Path, dir: &Path, db: &Path) -> anyhow::Result<Written> {
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut reader = BackupReader::open(std::io::BufReader::new(input))?;
    let store = SledStore::open(db)?;
    let mut ops = Vec::with_capacity(BATCH);
    let mut files: Vec<DataFile> = Vec::new();
    let mut records = 0u64;
    while let Some(item) = reader.next_item()? {
        match item {
            Item::Record(r) => {
                ops.push(Op::put(r.table, r.key, r.value, Expect::Absent));
                records += 1;
                if ops.len() >= BATCH {
                    store.commit_deferred(std::mem::take(&mut ops)).await?;
                }
            }
            Item::File(f) => files.push(f),
        }
    }
    store.commit_deferred(ops).await?;
    store.sync().await?;
    drop(store);
    for f in &files {
        write_file(dir, f)?;
    }
    Ok(Written { records })
}

/// Writes one file of the backup under `dir` (its directory 0700; the file
/// with its mode, never more than 0644, and 0600 for a key).
fn write_file(dir: &Path, f: &DataFile) -> anyhow::Result<()> {
    let path: PathBuf = dir.join(&f.path);
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mode = if f.path.ends_with(".key") {
        0o600
    } else {
        f.mode & 0o644
    };
    crate::upstream::softcas::write_atomic(&path, &f.data, mode)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::store::{Snapshot, SnapshotRecord, Table};

    #[tokio::test]
    async fn restore_writes_the_store_and_private_files() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("b");
        let snapshot = Snapshot {
            records: vec![SnapshotRecord {
                table: Table::Orders,
                key: "o1".to_owned(),
                value: b"{}".to_vec(),
            }],
        };
        let files = [
            DataFile {
                path: "softcas/root.key".to_owned(),
                mode: 0o640,
                data: b"key".to_vec(),
            },
            DataFile {
                path: "softcas/root.crt".to_owned(),
                mode: 0o755,
                data: b"crt".to_vec(),
            },
        ];
        let out = std::fs::File::create(&file).unwrap();
        backup::write_backup(out, "sled", &snapshot, &files).unwrap();
        let dir = tmp.path().join("data");
        restore(&file, &dir, None).await.unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("db"), 0o700);
        assert_eq!(mode("softcas"), 0o700);
        assert_eq!(mode("softcas/root.key"), 0o600);
        assert_eq!(mode("softcas/root.crt"), 0o644);
        let store = SledStore::open(&dir.join("db")).unwrap();
        assert_eq!(
            store.get(Table::Orders, "o1").await.unwrap(),
            Some(b"{}".to_vec())
        );
        drop(store);
        let again = restore(&file, &dir, None).await.unwrap_err();
        assert!(
            format!("{again:#}").contains("already holds a store"),
            "{again:#}"
        );
    }
}
