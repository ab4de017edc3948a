//! `acmeproxy migrate --from OLD.json --to NEW.json`: copies every record of
//! one configuration's store into another's, offline (for example from the
//! embedded sled store to PostgreSQL, when moving to replicas).
//!
//! The source is read as one consistent snapshot ([`Store::snapshot`]); the
//! target must be empty, and is written in batches whose every key must be
//! absent, then made durable and counted table by table against the
//! snapshot. Files of the data directory (softcas's CA, the server's TLS
//! key) are not records: they stay in `dataDir`, and the command says so
//! when the two configurations name different ones.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::{Config, StoreChoice};
use crate::store::sled::SledStore;
use crate::store::{Expect, Op, Store, Table};

/// Records written per batch.
const BATCH: usize = 512;

/// What [`copy`] copied, table by table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub records: BTreeMap<Table, u64>,
}

pub(super) async fn migrate(from: &Path, to: &Path) -> anyhow::Result<()> {
    let (source_cfg, _) =
        Config::load(from).with_context(|| format!("configuration {}", from.display()))?;
    let (target_cfg, _) =
        Config::load(to).with_context(|| format!("configuration {}", to.display()))?;
    match &source_cfg.store {
        StoreChoice::Memory => bail!(
            "{} uses the memory store, which keeps nothing once its server stops: there is \
             nothing to migrate",
            from.display()
        ),
        StoreChoice::Sled(path) if !SledStore::exists(path) => bail!(
            "there is no sled store at {} (db.dataSource or dataDir/db of {})",
            path.display(),
            from.display()
        ),
        _ => {}
    }
    if matches!(target_cfg.store, StoreChoice::Memory) {
        bail!(
            "{} uses the memory store: what is migrated into it is gone when the command ends",
            to.display()
        );
    }
    if describe(&source_cfg.store) == describe(&target_cfg.store) {
        bail!(
            "{} and {} name the same store ({})",
            from.display(),
            to.display(),
            describe(&source_cfg.store)
        );
    }
    let source = super::open_store(&source_cfg).await.with_context(|| {
        format!(
            "opening the store of {} (stop the server that uses it first)",
            from.display()
        )
    })?;
    let target = super::open_store(&target_cfg)
        .await
        .with_context(|| format!("opening the store of {}", to.display()))?;
    let migrated = copy(source.as_ref(), target.as_ref())
        .await
        .with_context(|| {
            format!(
                "migrating from {} to {}",
                describe(&source_cfg.store),
                describe(&target_cfg.store)
            )
        })?;
    let total: u64 = migrated.records.values().sum();
    let per_table: Vec<String> = migrated
        .records
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| format!("{} {n}", t.name()))
        .collect();
    println!(
        "migrated {total} records from {} to {} ({})",
        describe(&source_cfg.store),
        describe(&target_cfg.store),
        per_table.join(", ")
    );
    if source_cfg.data_dir != target_cfg.data_dir {
        println!(
            "the files of the data directory are not records: copy {} to {} (softcas's CA, \
             the server's TLS key and certificate), keeping their modes",
            source_cfg.data_dir.display(),
            target_cfg.data_dir.display()
        );
    }
    Ok(())
}

/// How a store is named in messages (never with a password).
fn describe(store: &StoreChoice) -> String {
    match store {
        StoreChoice::Memory => "the memory store".to_owned(),
        StoreChoice::Sled(path) => format!("the sled store in {}", path.display()),
        StoreChoice::Postgres(pg) => format!("PostgreSQL database {}", pg.database),
    }
}

/// Copies a snapshot of `source` into the empty `target` and checks the
/// counts.
pub async fn copy(source: &dyn Store, target: &dyn Store) -> anyhow::Result<Migrated> {
    for table in Table::ALL {
        let n = target
            .count(table)
            .await
            .context("counting the target's records")?;
        if n > 0 {
            bail!(
                "the target store is not empty ({n} records in {}): migrate into a new, \
                 empty store",
                table.name()
            );
        }
    }
    let snapshot = source
        .snapshot()
        .await
        .context("reading the source store")?;
    let mut migrated = Migrated::default();
    let mut ops = Vec::with_capacity(BATCH);
    for record in snapshot.records {
        *migrated.records.entry(record.table).or_default() += 1;
        ops.push(Op::put(
            record.table,
            record.key,
            record.value,
            Expect::Absent,
        ));
        if ops.len() >= BATCH {
            target
                .commit_deferred(std::mem::take(&mut ops))
                .await
                .context("writing to the target store")?;
        }
    }
    target
        .commit_deferred(ops)
        .await
        .context("writing to the target store")?;
    target
        .sync()
        .await
        .context("making the target store durable")?;
    for table in Table::ALL {
        let want = migrated.records.get(&table).copied().unwrap_or(0);
        let got = target
            .count(table)
            .await
            .context("counting the migrated records")?;
        if got != want {
            bail!(
                "the target holds {got} records in {} after the copy, but the source had \
                 {want}: do not use the target",
                table.name()
            );
        }
    }
    Ok(migrated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn copies_every_table_and_refuses_a_target_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let source = SledStore::open(&dir.path().join("db")).unwrap();
        let mut ops = Vec::new();
        for table in Table::ALL {
            for i in 0..3 {
                ops.push(Op::put(
                    table,
                    format!("k{i}"),
                    format!("{}-{i}", table.name()).into_bytes(),
                    Expect::Absent,
                ));
            }
        }
        source.commit(ops).await.unwrap();
        let target = MemoryStore::new();
        let migrated = copy(&source, &target).await.unwrap();
        assert_eq!(migrated.records.len(), Table::ALL.len());
        assert!(migrated.records.values().all(|n| *n == 3));
        assert_eq!(
            target.get(Table::Orders, "k2").await.unwrap(),
            Some(b"orders-2".to_vec())
        );
        assert_eq!(
            source.snapshot().await.unwrap(),
            target.snapshot().await.unwrap()
        );
        let err = copy(&source, &target).await.unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }
}
