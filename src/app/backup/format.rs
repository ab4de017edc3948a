//! The backup file: its format, the writer and the verifying reader.
//!
//! # Format, version 1
//!
//! JSON Lines: one JSON object per line, each line ending with `\n`, told
//! apart by `type`:
//!
//! ```text
//! {"type":"header","format":"acmeproxy-backup","version":1,"created":"2026-12-03T11:30:00Z","acmeproxy":"0.1.0","store":"sled"}
//! {"type":"record","table":"accounts","key":"<key>","value":"<base64>"}     one per store record, by table then key
//! {"type":"file","path":"softcas/root.key","mode":384,"data":"<base64>"}    one per data-directory file
//! {"type":"end","records":2,"files":1,"sha256":"<hex>"}
//! ```
//!
//! `table` is a [`Table::name`]; `value` and `data` are standard base64
//! with padding; `mode` is the file's permission bits. Files are the regular
//! files of `<dataDir>/softcas/` (with the softcas upstream) and of
//! `<dataDir>/tls/` (the server's obtained certificate and key, when
//! `tls.certFile` is not set); names beginning with `.` (temporary files)
//! are left out. `sha256` is the SHA-256 of every byte before the end line.
//! A file without its end line is truncated; a different digest or count,
//! or anything after the end line, is corruption. Nothing is restored from
//! a file that does not verify.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::store::{Snapshot, SnapshotRecord, Table};

/// The `format` of the header line.
pub(in crate::app) const FORMAT: &str = "acmeproxy-backup";
/// The format version this acmeproxy writes and reads.
pub(in crate::app) const VERSION: u32 = 1;
/// The data-directory subdirectories whose files a backup may hold.
const FILE_DIRS: [&str; 2] = ["softcas", "tls"];
/// Longest line read (a record or file; far above any real one).
const MAX_LINE: u64 = 64 << 20;

/// One line of a backup.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Header(Header),
    Record {
        table: String,
        key: String,
        value: String,
    },
    File {
        path: String,
        mode: u32,
        data: String,
    },
    End {
        records: u64,
        files: u64,
        sha256: String,
    },
}

/// The first line of a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(in crate::app) struct Header {
    pub(in crate::app) format: String,
    pub(in crate::app) version: u32,
    /// RFC 3339, UTC.
    pub(in crate::app) created: String,
    /// The acmeproxy version that wrote it.
    pub(in crate::app) acmeproxy: String,
    /// The store backend it was taken from.
    pub(in crate::app) store: String,
}

/// A file of the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::app) struct DataFile {
    /// Relative to the data directory: `softcas/root.key`.
    pub(in crate::app) path: String,
    /// Permission bits.
    pub(in crate::app) mode: u32,
    pub(in crate::app) data: Vec<u8>,
}

/// What a backup holds, once written or verified.
#[derive(Clone, Debug)]
pub(in crate::app) struct Summary {
    pub(in crate::app) header: Header,
    pub(in crate::app) records: u64,
    /// The paths of the files.
    pub(in crate::app) files: Vec<String>,
    pub(in crate::app) sha256: String,
}

/// Writes a backup of `snapshot` and `files` to `out`, taken from the store
/// backend `store`.
pub(in crate::app) fn write_backup(
    mut out: impl Write,
    store: &str,
    snapshot: &Snapshot,
    files: &[DataFile],
) -> io::Result<Summary> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut emit = |line: &Line, hash: Option<&mut ring::digest::Context>| -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some(hash) = hash {
            hash.update(&bytes);
        }
        out.write_all(&bytes)
    };
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        created: crate::http::render_time(time::OffsetDateTime::now_utc()),
        acmeproxy: env!("CARGO_PKG_VERSION").to_owned(),
        store: store.to_owned(),
    };
    emit(&Line::Header(header.clone()), Some(&mut hash))?;
    for r in &snapshot.records {
        let line = Line::Record {
            table: r.table.name().to_owned(),
            key: r.key.clone(),
            value: STANDARD.encode(&r.value),
        };
        emit(&line, Some(&mut hash))?;
    }
    for f in files {
        let line = Line::File {
            path: f.path.clone(),
            mode: f.mode,
            data: STANDARD.encode(&f.data),
        };
        emit(&line, Some(&mut hash))?;
    }
    let sha256 = hex(hash.finish().as_ref());
    let records = snapshot.records.len() as u64;
    let end = Line::End {
        records,
        files: files.len() as u64,
        sha256: sha256.clone(),
    };
    emit(&end, None)?;
    out.flush()?;
    Ok(Summary {
        header,
        records,
        files: files.iter().map(|f| f.path.clone()).collect(),
        sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An item of a backup, as [`BackupReader`] hands it out.
#[derive(Debug)]
pub(in crate::app) enum Item {
    Record(SnapshotRecord),
    File(DataFile),
}

/// Reads a backup line by line, checking its header first and its digest
/// and counts at its end line. What it hands out is verified only once
/// [`next_item`](Self::next_item) has returned `None`.
pub(in crate::app) struct BackupReader<R> {
    input: R,
    hash: ring::digest::Context,
    header: Header,
    records: u64,
    files: Vec<String>,
    line: u64,
    ended: Option<String>,
}

impl<R: BufRead> BackupReader<R> {
    /// Reads and checks the header line.
    pub(in crate::app) fn open(mut input: R) -> anyhow::Result<Self> {
        let not_backup = "not an acmeproxy backup (its first line is no acmeproxy-backup header)";
        let Some(first) = read_line(&mut input)? else {
            bail!("{not_backup}: the file is empty");
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&first) else {
            bail!("{not_backup}");
        };
        if value["type"] != "header" || value["format"] != FORMAT {
            bail!("{not_backup}");
        }
        match value["version"].as_u64() {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) if v > u64::from(VERSION) => bail!(
                "the backup has format version {v}, from a newer acmeproxy; this one reads version {VERSION}"
            ),
            _ => bail!("the backup's format version is not one this acmeproxy reads ({VERSION})"),
        }
        let Ok(Line::Header(header)) = serde_json::from_slice::<Line>(&first) else {
            bail!("the backup is corrupt: its header line is unreadable");
        };
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(&first);
        Ok(Self {
            input,
            hash,
            header,
            records: 0,
            files: Vec::new(),
            line: 1,
            ended: None,
        })
    }

    /// The next record or file; `None` after the end line has verified the
    /// whole file.
    pub(in crate::app) fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let Some(bytes) = read_line(&mut self.input)? else {
            bail!(
                "the backup is truncated: it ends after line {} without its end line",
                self.line
            );
        };
        self.line += 1;
        let n = self.line;
        let corrupt = |what: &str| anyhow::anyhow!("the backup is corrupt: line {n} {what}");
        let line: Line = serde_json::from_slice(&bytes).map_err(|_| corrupt("is unreadable"))?;
        let item = match line {
            Line::Header(_) => return Err(corrupt("is a second header")),
            Line::Record { table, key, value } => {
                let table = Table::from_name(&table)
                    .ok_or_else(|| corrupt(&format!("names an unknown table {table:?}")))?;
                let value = STANDARD
                    .decode(value)
                    .map_err(|_| corrupt("has a value that is not base64"))?;
                self.records += 1;
                Item::Record(SnapshotRecord { table, key, value })
            }
            Line::File { path, mode, data } => {
                check_file_path(&path).map_err(|e| corrupt(&e))?;
                let data = STANDARD
                    .decode(data)
                    .map_err(|_| corrupt("has file data that is not base64"))?;
                self.files.push(path.clone());
                Item::File(DataFile {
                    path,
                    mode: mode & 0o777,
                    data,
                })
            }
            Line::End {
                records,
                files,
                sha256,
            } => {
                let digest = hex(self.hash.clone().finish().as_ref());
                if digest != sha256 {
                    bail!(
                        "the backup is corrupt: its SHA-256 is {digest}, but its end line says {sha256}"
                    );
                }
                if records != self.records || files != self.files.len() as u64 {
                    bail!(
                        "the backup is corrupt: it holds {} records and {} files, but its end line says {records} and {files}",
                        self.records,
                        self.files.len()
                    );
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest).context("reading the backup")? > 0 {
                    bail!("the backup is corrupt: there is data after its end line");
                }
                self.ended = Some(digest);
                return Ok(None);
            }
        };
        self.hash.update(&bytes);
        Ok(Some(item))
    }

    /// What the backup held; once [`next_item`](Self::next_item) returned
    /// `None`.
    pub(in crate::app) fn summary(&self) -> Summary {
        Summary {
            header: self.header.clone(),
            records: self.records,
            files: self.files.clone(),
            sha256: self.ended.clone().unwrap_or_default(),
        }
    }
}

/// One line with its `\n`; `None` at the end of the input. A last line
/// without `\n` is a truncated one.
fn read_line(input: &mut impl BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    input
        .take(MAX_LINE + 1)
        .read_until(b'\n', &mut buf)
        .context("reading the backup")?;
    match buf.last() {
        None => Ok(None),
        Some(b'\n') => Ok(Some(buf)),
        Some(_) if buf.len() as u64 > MAX_LINE => {
            bail!("the backup is corrupt: a line is longer than {MAX_LINE} bytes")
        }
        Some(_) => bail!("the backup is truncated: its last line is cut short"),
    }
}

/// A file's path in a backup is `<dir>/<name>`: one of [`FILE_DIRS`] and a
/// plain file name, so a restore never writes anywhere else.
fn check_file_path(path: &str) -> Result<(), String> {
    let bad = || format!("has a file path {path:?} outside softcas/ and tls/");
    let (dir, name) = path.split_once('/').ok_or_else(bad)?;
    if !FILE_DIRS.contains(&dir)
        || name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
    {
        return Err(bad());
    }
    Ok(())
}

/// Reads the whole backup at `path` and checks it (header, digest, counts).
pub(in crate::app) fn verify(path: &Path) -> anyhow::Result<Summary> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BackupReader::open(io::BufReader::new(file))?;
    while reader.next_item()?.is_some() {}
    Ok(reader.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Snapshot, Vec<DataFile>) {
        let snapshot = Snapshot {
            records: vec![
                SnapshotRecord {
                    table: Table::Accounts,
                    key: "a1".to_owned(),
                    value: b"{\"id\":\"a1\"}".to_vec(),
                },
                SnapshotRecord {
                    table: Table::Meta,
                    key: "k\n\0".to_owned(),
                    value: vec![0, 255, b'\n'],
                },
            ],
        };
        let files = vec![DataFile {
            path: "softcas/root.key".to_owned(),
            mode: 0o600,
            data: b"-----BEGIN PRIVATE KEY-----\n".to_vec(),
        }];
        (snapshot, files)
    }

    fn written() -> Vec<u8> {
        let (snapshot, files) = sample();
        let mut out = Vec::new();
        write_backup(&mut out, "sled", &snapshot, &files).unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<(Vec<Item>, Summary)> {
        let mut reader = BackupReader::open(bytes)?;
        let mut items = Vec::new();
        while let Some(item) = reader.next_item()? {
            items.push(item);
        }
        Ok((items, reader.summary()))
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let bytes = written();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"type":"header","format":"acmeproxy-backup","version":1,"#),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5, "header, 2 records, 1 file, end");
        let (items, summary) = read_all(&bytes).unwrap();
        let (snapshot, files) = sample();
        let mut records = Vec::new();
        let mut got_files = Vec::new();
        for item in items {
            match item {
                Item::Record(r) => records.push(r),
                Item::File(f) => got_files.push(f),
            }
        }
        assert_eq!(records, snapshot.records);
        assert_eq!(got_files, files);
        assert_eq!(summary.records, 2);
        assert_eq!(summary.files, ["softcas/root.key"]);
        assert_eq!(summary.header.store, "sled");
        assert_eq!(summary.sha256.len(), 64);
    }

    fn error(bytes: &[u8]) -> String {
        format!("{:#}", read_all(bytes).unwrap_err())
    }

    #[test]
    fn truncation_and_corruption_are_refused() {
        let bytes = written();
        // Cut anywhere: never accepted.
        for cut in [bytes.len() - 1, bytes.len() - 30, bytes.len() / 2, 10] {
            let e = error(&bytes[..cut]);
            assert!(
                e.contains("truncated") || e.contains("corrupt"),
                "{cut}: {e}"
            );
        }
        // Whole lines missing: the end line is what tells.
        let without_end: Vec<&str> = std::str::from_utf8(&bytes).unwrap().lines().collect();
        let e = error(format!("{}\n", without_end[..4].join("\n")).as_bytes());
        assert!(e.contains("truncated"), "{e}");
        // One character changed inside a value: still base64, still JSON.
        let mut flipped = bytes.clone();
        let pos = String::from_utf8_lossy(&bytes)
            .find("\"value\":\"")
            .unwrap()
            + 9;
        flipped[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
        let e = error(&flipped);
        assert!(e.contains("corrupt") && e.contains("SHA-256"), "{e}");
        // Data after the end line.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"{}\n");
        assert!(error(&longer).contains("after its end line"));
        // Not a backup at all, or an empty file.
        assert!(error(b"hello\n").contains("not an acmeproxy backup"));
        assert!(error(b"").contains("not an acmeproxy backup"));
    }

    #[test]
    fn a_newer_format_version_is_refused_by_name() {
        let text = String::from_utf8(written()).unwrap();
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        let e = error(newer.as_bytes());
        assert!(e.contains("format version 2") && e.contains("newer"), "{e}");
    }

    #[test]
    fn file_paths_stay_inside_the_backed_up_directories() {
        for ok in ["softcas/root.key", "tls/server.crt"] {
            assert!(check_file_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "db/conf",
            "softcas/../x",
            "softcas/.root.key.tmp",
            "softcas/",
            "/etc/passwd",
            "tls/a/b",
            "softcas",
            "../softcas/x",
        ] {
            assert!(check_file_path(bad).is_err(), "{bad}");
        }
    }
}
