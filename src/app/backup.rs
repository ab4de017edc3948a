//! Backups of a data directory: `acmeproxy admin backup` (an online
//! snapshot that the running server streams through its admin socket, or
//! one taken from the store directly when no server runs). The file format
//! and its verifying reader, which `acmeproxy restore` uses too, are in
//! [`format`].
//!
//! # Consistency
//!
//! The store part is one [`Snapshot`](crate::store::Snapshot): a cut between two batches, with no
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

mod format;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub(super) use format::{BackupReader, DataFile, Item, verify, write_backup};
use format::{FORMAT, VERSION};

use super::admin_socket::{self, AdminRequest, AdminResponse};
use crate::config::{Config, Settings, StoreChoice};
use crate::ra::Authority;

/// Bytes the server hands to the socket at a time.
const CHUNK: usize = 64 * 1024;

/// Which files of the data directory go into a backup.
#[derive(Clone, Debug)]
pub(super) struct BackupFiles {
    data_dir: PathBuf,
    dirs: Vec<String>,
}

impl BackupFiles {
    /// The files the configuration's server keeps in its data directory:
    /// the CA of each softcas upstream and the obtained TLS certificate
    /// (unless `tls.certFile` names the operator's own).
    pub(super) fn of(cfg: &Settings) -> Self {
        let mut dirs = super::serve::softcas_dirs(cfg);
        if cfg.tls.cert_file.is_none() {
            dirs.push("tls".to_owned());
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
        StoreChoice::Sled(path) if !crate::store::sled::SledStore::exists(path) => bail!(
            "the server is not running, and there is no store at {} to back up",
            path.display()
        ),
        StoreChoice::Sled(_) | StoreChoice::Postgres(_) => {}
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

    #[test]
    fn every_softcas_upstreams_ca_is_backed_up() {
        let doc = serde_json::json!({
            "address": "127.0.0.1:8443", "dnsNames": ["localhost"], "dataDir": "/var/lib/acmeproxy",
            "authority": {
                "upstreams": [
                    {"name": "first", "type": "softcas"},
                    {"name": "ext", "type": "externalcas", "config": {
                        "ca_url": "https://127.0.0.1:14000/dir", "eab_kid": "k",
                        "eab_hmac_key": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
                    {"name": "second", "type": "softcas"}
                ],
                "provisioners": [{"type": "ACME", "name": "acme"}]
            }
        });
        let (cfg, _) = Config::parse(&doc.to_string()).unwrap();
        assert_eq!(
            BackupFiles::of(&cfg).dirs,
            ["softcas", "softcas-second", "tls"]
        );
    }
}
