//! Backups of a data directory: the file format, `acmeproxy admin backup`
//! (an online snapshot that the running server streams through its admin
//! socket, or one taken from the store directly when no server runs), and
//! the verifying reader that `acmeproxy restore` uses.
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
//!
//! # Consistency
//!
//! The store part is one [`Snapshot`]: a cut between two batches, with no
//! batch half in it. The files are read after it and each is replaced only
//! atomically (written beside, then renamed), so each is whole and at least
//! as new as the store: a revocation recorded in the store is in softcas's
//! `revoked.json` too.
//!
//! # Who writes the file
//!
//! The command line does, as the user who runs it (root or the service
//! user): the server streams the backup through the admin socket. Under
//! the systemd unit the server could not write the operator's path anyway
//! (`ProtectSystem=strict`, a private `/tmp`).

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::admin_socket::{self, AdminRequest, AdminResponse};
use crate::config::{Config, Settings, StoreChoice, Upstream};
use crate::ra::Authority;
use crate::store::{Snapshot, SnapshotRecord, Table};

/// The `format` of the header line.
pub(super) const FORMAT: &str = "acmeproxy-backup";
/// The format version this acmeproxy writes and reads.
pub(super) const VERSION: u32 = 1;
/// The data-directory subdirectories whose files a backup may hold.
const FILE_DIRS: [&str; 2] = ["softcas", "tls"];
/// Longest line read (a record or file; far above any real one).
const MAX_LINE: u64 = 64 << 20;
/// Bytes the server hands to the socket at a time.
const CHUNK: usize = 64 * 1024;

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
pub(super) struct Header {
    pub(super) format: String,
    pub(super) version: u32,
    /// RFC 3339, UTC.
    pub(super) created: String,
    /// The acmeproxy version that wrote it.
    pub(super) acmeproxy: String,
    /// The store backend it was taken from.
    pub(super) store: String,
}

/// A file of the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DataFile {
    /// Relative to the data directory: `softcas/root.key`.
    pub(super) path: String,
    /// Permission bits.
    pub(super) mode: u32,
    pub(super) data: Vec<u8>,
}

/// What a backup holds, once written or verified.
#[derive(Clone, Debug)]
pub(super) struct Summary {
    pub(super) header: Header,
    pub(super) records: u64,
    /// The paths of the files.
    pub(super) files: Vec<String>,
    pub(super) sha256: String,
}

/// Which files of the data directory go into a backup.
#[derive(Clone, Debug)]
pub(super) struct BackupFiles {
    data_dir: PathBuf,
    dirs: Vec<&'static str>,
}

impl BackupFiles {
    /// The files the configuration's server keeps in its data directory:
    /// softcas's CA (with the softcas upstream) and the obtained TLS
    /// certificate (unless `tls.certFile` names the operator's own).
    pub(super) fn of(cfg: &Settings) -> Self {
        let mut dirs = Vec::new();
        if matches!(cfg.upstream, Upstream::SoftCas(_)) {
            dirs.push("softcas");
        }
        if cfg.tls.cert_file.is_none() {
            dirs.push("tls");
        }
        Self {
            data_dir: cfg.data_dir.clone(),
            dirs,
        }
    }

    /// Reads them: every regular file of each directory, by path, leaving
    /// out names that begin with `.` (temporary files).
    fn read(&self) -> anyhow::Result<Vec<DataFile>> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        for dir in &self.dirs {
            let path = self.data_dir.join(dir);
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let file = entry.path();
                let meta = std::fs::symlink_metadata(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                if name.starts_with('.') || !meta.is_file() {
                    continue;
                }
                let data =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                out.push(DataFile {
                    path: format!("{dir}/{name}"),
                    mode: meta.permissions().mode() & 0o777,
                    data,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Writes a backup of `snapshot` and `files` to `out`, taken from the store
/// backend `store`.
pub(super) fn write_backup(
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
pub(super) enum Item {
    Record(SnapshotRecord),
    File(DataFile),
}

/// Reads a backup line by line, checking its header first and its digest
/// and counts at its end line. What it hands out is verified only once
/// [`next_item`](Self::next_item) has returned `None`.
pub(super) struct BackupReader<R> {
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
    pub(super) fn open(mut input: R) -> anyhow::Result<Self> {
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
    pub(super) fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
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
    pub(super) fn summary(&self) -> Summary {
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
pub(super) fn verify(path: &Path) -> anyhow::Result<Summary> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BackupReader::open(io::BufReader::new(file))?;
    while reader.next_item()?.is_some() {}
    Ok(reader.summary())
}

/// The server's side of `admin backup`: a snapshot through the Authority,
/// then the files; an `ok` answer line, then the backup itself.
pub(super) async fn serve(
    ra: &Authority,
    files: &BackupFiles,
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> io::Result<()> {
    let taken = async {
        let snapshot = ra.admin_snapshot().await.map_err(|e| {
            (
                e.is_internal().then(|| crate::telemetry::causes(&e)),
                e.problem.detail,
            )
        })?;
        let data = files.read().map_err(|e| {
            (
                Some(format!("{e:#}")),
                "reading the data directory's files failed".to_owned(),
            )
        })?;
        Ok::<_, (Option<String>, String)>((snapshot, data))
    };
    let (snapshot, data) = match taken.await {
        Ok(taken) => taken,
        Err((log, detail)) => {
            if let Some(cause) = log {
                tracing::error!(error = %cause, "admin backup failed");
            }
            return admin_socket::respond(write, AdminResponse::error(detail)).await;
        }
    };
    admin_socket::respond(
        write,
        AdminResponse::ok(serde_json::json!({"format": FORMAT, "version": VERSION})),
    )
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let store = ra.store_backend();
    let encoder = tokio::task::spawn_blocking(move || {
        write_backup(ChunkSender::new(tx), store, &snapshot, &data)
    });
    let mut sent = 0usize;
    let streamed = async {
        while let Some(chunk) = rx.recv().await {
            write.write_all(&chunk).await?;
            sent += chunk.len();
        }
        write.shutdown().await
    }
    .await;
    // A failed socket write drops the receiver, which ends the encoder.
    drop(rx);
    let encoded = encoder.await.map_err(io::Error::other)?;
    streamed?;
    let summary = encoded?;
    tracing::info!(
        records = summary.records,
        files = summary.files.len(),
        bytes = sent,
        sha256 = %summary.sha256,
        "admin backup sent"
    );
    Ok(())
}

/// A writer that hands its bytes to the async side in chunks.
struct ChunkSender {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl ChunkSender {
    fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            buf: Vec::with_capacity(CHUNK),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the admin client went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// `acmeproxy admin backup CONFIG FILE`: from the running server through its
/// admin socket, or from the store itself when no server runs. The file is
/// written beside `file` (mode 0600), verified, then renamed over it.
pub(super) async fn backup(config: &Path, file: &Path) -> anyhow::Result<()> {
    let (cfg, _) =
        Config::load(config).with_context(|| format!("configuration {}", config.display()))?;
    let name = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = async {
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?
        };
        let socket = cfg.data_dir.join(admin_socket::SOCKET_NAME);
        let online = match tokio::net::UnixStream::connect(&socket).await {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
                "permission denied on {}: run as root or as the server's user",
                socket.display()
            ),
            Err(_) => false,
        };
        if online {
            from_server(&socket, tokio::fs::File::from_std(out)).await?;
        } else {
            offline(&cfg, out).await?;
        }
        let summary = verify(&tmp).context("the backup received does not verify")?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("moving the backup to {}", file.display()))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        anyhow::Ok((summary, online))
    }
    .await;
    let (summary, online) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    println!(
        "wrote {} ({}): {} records of the {} store, {} file(s){}{}",
        file.display(),
        if online {
            "online, from the running server"
        } else {
            "from the stopped server's store"
        },
        summary.records,
        summary.header.store,
        summary.files.len(),
        if summary.files.is_empty() { "" } else { ": " },
        summary.files.join(", ")
    );
    println!("sha256 {}", summary.sha256);
    println!(
        "keep it as private as the server: it holds the MAC keys of unbound EAB keys, an \
         external upstream's account key{}",
        if summary.files.iter().any(|f| f.ends_with(".key")) {
            " and private keys (softcas, TLS)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Receives the backup from the running server into `out`, then syncs it.
async fn from_server(socket: &Path, mut out: tokio::fs::File) -> anyhow::Result<()> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&AdminRequest::Backup).context("encoding the request")?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("writing to the admin socket")?;
    let mut read = tokio::io::BufReader::new(read);
    let mut answer = String::new();
    read.read_line(&mut answer)
        .await
        .context("reading the admin socket")?;
    let resp: AdminResponse =
        serde_json::from_str(&answer).context("the admin socket's answer is unreadable")?;
    if !resp.ok {
        bail!(
            "{}",
            resp.error.unwrap_or_else(|| "the backup failed".to_owned())
        );
    }
    tokio::io::copy(&mut read, &mut out)
        .await
        .context("receiving the backup from the server")?;
    out.sync_all().await.context("syncing the backup")?;
    Ok(())
}

/// Takes the backup from the store directly (the server is stopped).
async fn offline(cfg: &Settings, out: std::fs::File) -> anyhow::Result<()> {
    match &cfg.store {
        StoreChoice::Memory => bail!(
            "the server is not running, and its memory store keeps nothing while it is stopped"
        ),
        // Opening would create an empty store, and back that up.
        StoreChoice::Sled(path) if !path.join("db").exists() => bail!(
            "the server is not running, and there is no store at {} to back up",
            path.display()
        ),
        StoreChoice::Sled(_) => {}
    }
    let store = super::open_store(cfg).await.context(
        "the server is not running (no admin socket answers), and its store cannot be opened \
         (is the server starting or stopping? retry in a moment)",
    )?;
    let snapshot = store.snapshot().await?;
    let files = BackupFiles::of(cfg).read()?;
    let mut out = io::BufWriter::new(out);
    write_backup(&mut out, store.backend_name(), &snapshot, &files)
        .context("writing the backup")?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .context("syncing the backup")?;
    Ok(())
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
