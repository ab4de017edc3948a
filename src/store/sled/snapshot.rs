//! Snapshots of the sled store (see "Snapshots" in the parent module): a
//! read of every table while writes go on, and the log of the writes
//! applied meanwhile that makes it a consistent cut.

use std::sync::mpsc;

use super::{Job, Reply, db_key};
use crate::store::{Op, Snapshot, SnapshotRecord, StoreError, Table};

/// Writes applied while a snapshot read, in the order applied: `None`
/// deletes.
pub(super) type WriteLog = Vec<(Table, String, Option<Vec<u8>>)>;

/// Ends a snapshot's write log: with [`end`](Self::end), or when dropped
/// (a snapshot given up half-way must not leave the log growing).
pub(super) struct LogGuard {
    pub(super) queue: Option<mpsc::Sender<(Job, Reply)>>,
}

impl LogGuard {
    /// Ends the log between two batches and returns it once durable.
    pub(super) async fn end(mut self) -> Result<WriteLog, StoreError> {
        let stopped = || StoreError::backend("sled writer", "the store's writer thread stopped");
        let queue = self.queue.take().ok_or_else(stopped)?;
        let (log_reply, log) = tokio::sync::oneshot::channel();
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue
            .send((Job::EndLog(Some(log_reply)), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        log.await.map_err(|_| stopped())?
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = queue.send((Job::EndLog(None), reply));
        }
    }
}

/// Adds the writes of an applied batch to the snapshot's log, if one runs.
pub(super) fn record(log: &mut Option<WriteLog>, ops: Vec<Op>) {
    if let Some(log) = log {
        log.extend(ops.into_iter().map(|op| (op.table, op.key, op.value)));
    }
}

/// What [`read_all`] saw, with the writes logged meanwhile laid over it:
/// the store as it was when the log ended (see "Snapshots" in the parent
/// module).
pub(super) fn overlay(read: Snapshot, log: WriteLog) -> Snapshot {
    let mut records: std::collections::BTreeMap<(Table, String), Vec<u8>> = read
        .records
        .into_iter()
        .map(|r| ((r.table, r.key), r.value))
        .collect();
    for (table, key, value) in log {
        match value {
            Some(v) => records.insert((table, key), v),
            None => records.remove(&(table, key)),
        };
    }
    Snapshot {
        records: records
            .into_iter()
            .map(|((table, key), value)| SnapshotRecord { table, key, value })
            .collect(),
    }
}

/// Every record of every table, table by table in key order: not a
/// consistent cut by itself, as writes go on ([`overlay`] makes it one).
pub(super) fn read_all(db: &sled::Db) -> Result<Snapshot, StoreError> {
    let mut records = Vec::new();
    for table in Table::ALL {
        let prefix = db_key(table, "");
        for item in db.scan_prefix(&prefix) {
            let (k, v) =
                item.map_err(|e| StoreError::backend(format!("sled snapshot of {table:?}"), e))?;
            let raw = k.get(prefix.len()..).unwrap_or_default();
            let key = String::from_utf8(raw.to_vec())
                .map_err(|e| StoreError::backend(format!("sled key in {table:?}"), e))?;
            records.push(SnapshotRecord {
                table,
                key,
                value: v.to_vec(),
            });
        }
    }
    Ok(Snapshot { records })
}
