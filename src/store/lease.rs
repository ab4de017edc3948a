//! Leases for replicas on one shared store (docs/ha.md): a record in the
//! `Meta` table, `lease/<name>` → `{owner, until}`, taken, renewed and
//! released with compare-and-swap, so that at most one replica holds a
//! name at a time. A holder that dies stops renewing; once `until` has
//! passed, another replica may take the lease over.
//!
//! A lease is advisory: it guards work (a finalize job's upstream calls,
//! the RA's own certificate renewal), and the work's results are still
//! written with their own compare-and-swap.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{Expect, Op, Store, StoreError, Table};

/// The `Meta` key prefix of leases.
pub const PREFIX: &str = "lease/";

/// A stored lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The replica that holds it (a random id drawn at start).
    pub owner: String,
    /// Until when it holds unless renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// What [`Leases::acquire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is ours (new, or renewed) until then.
    Held(OffsetDateTime),
    /// The lease is ours until then, taken over from another replica whose
    /// lease had expired (it died or stalled), or replacing an unreadable
    /// one.
    TookOver(OffsetDateTime),
    /// Another replica holds it until then.
    Busy {
        owner: String,
        until: OffsetDateTime,
    },
}

/// Leases of one replica.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    owner: String,
}

impl Leases {
    /// Leases held as `owner` in `store`.
    pub fn new(store: Arc<dyn Store>, owner: impl Into<String>) -> Self {
        Self {
            store,
            owner: owner.into(),
        }
    }

    /// This replica's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The `Meta` key of lease `name`.
    pub fn key(name: &str) -> String {
        format!("{PREFIX}{name}")
    }

    /// The lease `name` as stored.
    pub async fn read(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let key = Self::key(name);
        match self.store.get(Table::Meta, &key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Corrupt {
                        table: Table::Meta,
                        key,
                        source,
                    })
            }
        }
    }

    /// Takes lease `name` until `now + ttl` if it is free, expired or
    /// already ours (which renews it).
    pub async fn acquire(
        &self,
        name: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let key = Self::key(name);
        // Most leases are free when taken: try to create it first, one write
        // and no read (a round trip less on PostgreSQL); only a lease that
        // exists is read and compared.
        let until = now + ttl;
        let value = self.encode(&key, until)?;
        match self
            .store
            .commit(vec![Op::put(
                Table::Meta,
                key.clone(),
                value.clone(),
                Expect::Absent,
            )])
            .await
        {
            Ok(()) => return Ok(Acquired::Held(until)),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let current = self.store.get(Table::Meta, &key).await?;
        let mut took_over = false;
        let expect = match &current {
            None => Expect::Absent,
            Some(bytes) => {
                // An unreadable lease is treated as expired and replaced.
                match serde_json::from_slice::<Lease>(bytes) {
                    Ok(lease) if lease.owner != self.owner && lease.until > now => {
                        return Ok(Acquired::Busy {
                            owner: lease.owner,
                            until: lease.until,
                        });
                    }
                    Ok(lease) => took_over = lease.owner != self.owner,
                    Err(_) => took_over = true,
                }
                Expect::Value(bytes.clone())
            }
        };
        match self
            .store
            .commit(vec![Op::put(Table::Meta, key, value, expect)])
            .await
        {
            Ok(()) if took_over => Ok(Acquired::TookOver(until)),
            Ok(()) => Ok(Acquired::Held(until)),
            // Someone else wrote it between our read and our write.
            Err(StoreError::Conflict { .. }) => match self.read(name).await? {
                Some(l) if l.owner == self.owner => Ok(Acquired::Held(l.until)),
                Some(l) => Ok(Acquired::Busy {
                    owner: l.owner,
                    until: l.until,
                }),
                None => Ok(Acquired::Busy {
                    owner: String::new(),
                    until: now,
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// Our lease until `until`, as stored.
    fn encode(&self, key: &str, until: OffsetDateTime) -> Result<Vec<u8>, StoreError> {
        let lease = Lease {
            owner: self.owner.clone(),
            until,
        };
        serde_json::to_vec(&lease).map_err(|source| StoreError::Corrupt {
            table: Table::Meta,
            key: key.to_owned(),
            source,
        })
    }

    /// Extends our lease `name` to `now + ttl`; false if it is no longer
    /// ours (it expired and another replica took it, or it was released).
    pub async fn renew(
        &self,
        name: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = Self::key(name);
        let Some(bytes) = self.store.get(Table::Meta, &key).await? else {
            return Ok(false);
        };
        match serde_json::from_slice::<Lease>(&bytes) {
            Ok(l) if l.owner == self.owner => {}
            _ => return Ok(false),
        }
        // One compare-and-swap over what we read: a lease taken over or
        // released meanwhile is not written again.
        let value = self.encode(&key, now + ttl)?;
        match self
            .store
            .commit(vec![Op::put(Table::Meta, key, value, Expect::Value(bytes))])
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The op that deletes our lease `name` (to put in the batch that ends
    /// the work it guarded): it applies whoever holds it, since the work
    /// is done.
    pub fn release_op(name: &str) -> Op {
        Op::delete(Table::Meta, Self::key(name), Expect::Any)
    }

    /// Releases lease `name`, taken (or last renewed) until `until`: one
    /// delete of exactly what we wrote then (no read first); if it was
    /// renewed since, or is no longer ours, as [`release`](Self::release).
    pub async fn release_held(&self, name: &str, until: OffsetDateTime) -> Result<(), StoreError> {
        let key = Self::key(name);
        let written = self.encode(&key, until)?;
        match self
            .store
            .commit(vec![Op::delete(Table::Meta, key, Expect::Value(written))])
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => self.release(name).await,
            Err(e) => Err(e),
        }
    }

    /// Releases lease `name` if it is still ours.
    pub async fn release(&self, name: &str) -> Result<(), StoreError> {
        let key = Self::key(name);
        let Some(bytes) = self.store.get(Table::Meta, &key).await? else {
            return Ok(());
        };
        match serde_json::from_slice::<Lease>(&bytes) {
            Ok(l) if l.owner == self.owner => {}
            _ => return Ok(()),
        }
        match self
            .store
            .commit(vec![Op::delete(Table::Meta, key, Expect::Value(bytes))])
            .await
        {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_take_over_after_expiry() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new_shared());
        let a = Leases::new(Arc::clone(&store), "a");
        let b = Leases::new(Arc::clone(&store), "b");
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        let ttl = Duration::seconds(10);
        assert_eq!(
            a.acquire("x", t0, ttl).await.unwrap(),
            Acquired::Held(t0 + ttl)
        );
        assert!(matches!(
            b.acquire("x", t0 + Duration::seconds(5), ttl).await.unwrap(),
            Acquired::Busy { owner, .. } if owner == "a"
        ));
        // A renews; B is still refused after the first expiry.
        let t1 = t0 + Duration::seconds(8);
        assert!(a.renew("x", t1, ttl).await.unwrap());
        assert!(matches!(
            b.acquire("x", t0 + Duration::seconds(12), ttl)
                .await
                .unwrap(),
            Acquired::Busy { .. }
        ));
        // A stops renewing (it died): B takes over, and A has lost it.
        let t2 = t1 + ttl + Duration::seconds(1);
        assert_eq!(
            b.acquire("x", t2, ttl).await.unwrap(),
            Acquired::TookOver(t2 + ttl)
        );
        // B's own lease again is a renewal, not a take-over.
        assert_eq!(
            b.acquire("x", t2, ttl).await.unwrap(),
            Acquired::Held(t2 + ttl)
        );
        assert!(!a.renew("x", t2, ttl).await.unwrap());
        // A's release does not free B's lease; B's does.
        a.release("x").await.unwrap();
        assert_eq!(b.read("x").await.unwrap().unwrap().owner, "b");
        b.release("x").await.unwrap();
        assert_eq!(b.read("x").await.unwrap(), None);

        // Released by what was written: A's old lease time does not free
        // B's lease; B's, and B's after a renewal, do.
        let t3 = t2 + Duration::seconds(30);
        assert_eq!(
            a.acquire("y", t3, ttl).await.unwrap(),
            Acquired::Held(t3 + ttl)
        );
        let t4 = t3 + ttl + Duration::seconds(1);
        assert_eq!(
            b.acquire("y", t4, ttl).await.unwrap(),
            Acquired::TookOver(t4 + ttl)
        );
        a.release_held("y", t3 + ttl).await.unwrap();
        assert_eq!(b.read("y").await.unwrap().unwrap().owner, "b");
        b.release_held("y", t4 + ttl).await.unwrap();
        assert_eq!(b.read("y").await.unwrap(), None);
        assert_eq!(
            b.acquire("z", t4, ttl).await.unwrap(),
            Acquired::Held(t4 + ttl)
        );
        assert!(b.renew("z", t4 + Duration::seconds(3), ttl).await.unwrap());
        b.release_held("z", t4 + ttl).await.unwrap();
        assert_eq!(b.read("z").await.unwrap(), None);
    }
}
