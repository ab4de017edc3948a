//! Retention: the background purge of what has served its purpose. An order
//! and its authorizations (with their challenges) go some time after the
//! order's `expires`; a certificate, its revocation state, its serial's index
//! entry and its order go some time after the certificate's notAfter.
//! Accounts and EAB keys are never purged.
//!
//! An order that has a certificate stays as long as the certificate does:
//! revoking a certificate (RFC 8555 §7.6) reads its order (the provisioner,
//! the identifiers), so only the order's authorizations go at the order's
//! grace. ARI (RFC 9773) and certificate download read the certificate
//! record only. Authorizations belong to one order each here (no reuse), so
//! an order's own authorizations are removed with it.
//!
//! Each removal is one atomic batch whose preconditions are the records as
//! read (and that no finalize job exists for the order): a concurrent change
//! wins, and the purge looks again at its next pass. Removals are committed
//! deferred and made durable once per page: a purge lost in a crash is only
//! done again.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3>

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use time::{Duration, OffsetDateTime};
use tokio::task::{JoinError, JoinSet};

use super::Authority;
use crate::model::{AuthzRecord, CertificateRecord, FinalizeJob, OrderRecord};
use crate::store::records::{Batch, Versioned};
use crate::store::{Records, StoreError};

/// Records read per page of a pass: a pass never holds more, and yields to
/// request handling between pages.
const PAGE: usize = 256;

/// Removals of a page run at once.
const CONCURRENT: usize = 16;

/// Longest wait before the first pass after start-up.
const FIRST_PASS_AFTER: StdDuration = StdDuration::from_secs(60);

/// When the purge runs and what it removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Time between passes (the first comes after at most a minute).
    pub interval: StdDuration,
    /// How long an order and its authorizations stay after its `expires`.
    pub order_grace: Duration,
    /// How long a certificate (and its order) stays after its notAfter.
    pub certificate_retention: Duration,
}

/// What a pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub orders: u64,
    pub authorizations: u64,
    pub certificates: u64,
    /// Removals not made because a record changed meanwhile; the next pass
    /// looks again.
    pub conflicts: u64,
}

impl Purged {
    /// Records removed, of every kind.
    pub fn removed(&self) -> u64 {
        self.orders + self.authorizations + self.certificates
    }

    fn add(&mut self, other: Self) {
        self.orders += other.orders;
        self.authorizations += other.authorizations;
        self.certificates += other.certificates;
        self.conflicts += other.conflicts;
    }
}

/// Runs a purge pass every interval until shutdown.
pub struct RetentionWorker {
    authority: Arc<Authority>,
    policy: RetentionPolicy,
}

impl RetentionWorker {
    /// A purge for this Authority.
    pub fn new(authority: Arc<Authority>, policy: RetentionPolicy) -> Self {
        Self { authority, policy }
    }

    /// Waits a little (at most a minute, so start-up is not slowed), then
    /// purges every interval until the shutdown token fires. A pass that
    /// fails is logged and tried again at the next interval.
    pub async fn run(self) {
        let ra = &self.authority;
        let mut wait = self.policy.interval.min(FIRST_PASS_AFTER);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = ra.shutdown.cancelled() => return,
            }
            wait = self.policy.interval;
            let started = Instant::now();
            match ra.purge_expired(&self.policy).await {
                Ok(p) if p.removed() > 0 => tracing::info!(
                    orders = p.orders,
                    authorizations = p.authorizations,
                    certificates = p.certificates,
                    conflicts = p.conflicts,
                    seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
                    "purged expired records"
                ),
                Ok(p) => tracing::debug!(
                    conflicts = p.conflicts,
                    seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
                    "retention pass found nothing to purge"
                ),
                Err(e) => tracing::warn!(
                    error = %crate::telemetry::causes(&e),
                    "retention pass failed; it runs again at the next interval"
                ),
            }
        }
    }
}

impl Authority {
    /// One purge pass: orders past `expires` plus the grace, then
    /// certificates past notAfter plus the retention. Stops early at
    /// shutdown.
    pub async fn purge_expired(
        self: &Arc<Self>,
        policy: &RetentionPolicy,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        let grace = policy.order_grace;
        self.purge_pages(
            &mut purged,
            move |ra, order: Versioned<OrderRecord>, now| {
                (now >= order.expires.saturating_add(grace))
                    .then_some(async move { ra.purge_order(&order).await })
            },
        )
        .await?;
        let retention = policy.certificate_retention;
        self.purge_pages(
            &mut purged,
            move |ra, cert: Versioned<CertificateRecord>, now| {
                (now >= cert.not_after.saturating_add(retention))
                    .then_some(async move { ra.purge_certificate(&cert).await })
            },
        )
        .await?;
        Ok(purged)
    }

    /// Pages through every record of a kind; `due` says which to remove
    /// and how. Up to [`CONCURRENT`] removals of a page run at once (their
    /// commits then share the store's group commit); each page's removals
    /// are durable before the next page is read.
    async fn purge_pages<T, F, Fut>(
        self: &Arc<Self>,
        purged: &mut Purged,
        due: F,
    ) -> Result<(), StoreError>
    where
        T: crate::store::records::Record + 'static,
        F: Fn(Arc<Self>, Versioned<T>, OffsetDateTime) -> Option<Fut>,
        Fut: Future<Output = Result<Purged, StoreError>> + Send + 'static,
    {
        let mut after: Option<String> = None;
        loop {
            let page = self.records.list::<T>(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.value.key());
            let full = page.len() == PAGE;
            let now = self.clock.now();
            let mut page_purged = Purged::default();
            let mut running = JoinSet::new();
            for record in page {
                let Some(removal) = due(Arc::clone(self), record, now) else {
                    continue;
                };
                if running.len() >= CONCURRENT
                    && let Some(done) = running.join_next().await
                {
                    page_purged.add(joined(done)?);
                }
                running.spawn(removal);
            }
            while let Some(done) = running.join_next().await {
                page_purged.add(joined(done)?);
            }
            if page_purged.removed() > 0 {
                self.records.sync().await?;
                crate::metrics::purged("order", page_purged.orders);
                crate::metrics::purged("authorization", page_purged.authorizations);
                crate::metrics::purged("certificate", page_purged.certificates);
            }
            purged.add(page_purged);
            if !full || self.shutdown.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Removes an order past its grace with its authorizations; an order
    /// whose certificate is still kept loses only its authorizations; an
    /// order with a finalize job is in progress and stays.
    async fn purge_order(&self, order: &Versioned<OrderRecord>) -> Result<Purged, StoreError> {
        if self
            .records
            .get::<FinalizeJob>(order.id.as_str())
            .await?
            .is_some()
        {
            return Ok(Purged::default());
        }
        if let Some(cert_id) = &order.certificate_id
            && self
                .records
                .get::<CertificateRecord>(cert_id.as_str())
                .await?
                .is_some()
        {
            let (batch, authorizations) = self.authz_remove_ops(Batch::new(), order).await?;
            if authorizations == 0 {
                return Ok(Purged::default());
            }
            return self
                .commit_purge(
                    batch,
                    Purged {
                        authorizations,
                        ..Purged::default()
                    },
                )
                .await;
        }
        let batch = Records::order_remove_ops(Batch::new(), order);
        let (batch, authorizations) = self.authz_remove_ops(batch, order).await?;
        self.commit_purge(
            batch,
            Purged {
                orders: 1,
                authorizations,
                ..Purged::default()
            },
        )
        .await
    }

    /// Removes a certificate past its retention, with its serial's index
    /// entry and its order (and whatever authorizations the order still has).
    async fn purge_certificate(
        &self,
        cert: &Versioned<CertificateRecord>,
    ) -> Result<Purged, StoreError> {
        let mut batch = Batch::new();
        let mut purged = Purged {
            certificates: 1,
            ..Purged::default()
        };
        if let Some(order) = self
            .records
            .get::<OrderRecord>(cert.order_id.as_str())
            .await?
            && order.certificate_id.as_ref() == Some(&cert.id)
        {
            batch = Records::order_remove_ops(batch, &order);
            let (b, authorizations) = self.authz_remove_ops(batch, &order).await?;
            batch = b;
            purged.orders = 1;
            purged.authorizations = authorizations;
        }
        let indexed = self
            .records
            .cert_by_serial(&cert.serial_hex)
            .await?
            .is_some_and(|c| c.id == cert.id);
        let batch = Records::cert_remove_ops(batch, cert, indexed);
        self.commit_purge(batch, purged).await
    }

    /// Adds the removal of the order's stored authorizations (those that
    /// belong to it) to `batch`; returns it and how many.
    async fn authz_remove_ops(
        &self,
        mut batch: Batch,
        order: &OrderRecord,
    ) -> Result<(Batch, u64), StoreError> {
        let mut n = 0;
        for id in &order.authz_ids {
            if let Some(a) = self.records.get::<AuthzRecord>(id.as_str()).await?
                && a.order_id == order.id
            {
                batch = batch.remove(&a);
                n += 1;
            }
        }
        Ok((batch, n))
    }

    /// Commits a removal (deferred: the page's sync makes it durable); a
    /// conflict counts as such and removes nothing.
    async fn commit_purge(&self, batch: Batch, removed: Purged) -> Result<Purged, StoreError> {
        match self.records.commit_deferred(batch).await {
            Ok(()) => Ok(removed),
            Err(StoreError::Conflict { .. }) => Ok(Purged {
                conflicts: 1,
                ..Purged::default()
            }),
            Err(e) => Err(e),
        }
    }
}

/// The outcome of a removal's task.
fn joined(done: Result<Result<Purged, StoreError>, JoinError>) -> Result<Purged, StoreError> {
    done.map_err(|e| StoreError::backend("a retention removal task ended abnormally", e))?
}

#[cfg(test)]
mod tests;
