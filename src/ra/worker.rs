//! The finalize worker: takes due finalize jobs, asks the upstream to sign,
//! stores the chain and makes the order `valid` in one transaction, or retries
//! transient failures with back-off until the order expires.
//! Unfinished jobs are resumed after a restart, because they live in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use time::{Duration, OffsetDateTime};
use tokio::sync::Semaphore;

use super::state::FinalizeOutcome;
use super::{Authority, Event, state};
use crate::acme::types::OrderStatus;
use crate::acme::{Problem, ProblemType};
use crate::model::{CertId, CertificateRecord, FinalizeJob, OrderId, OrderRecord};
use crate::policy::cert;
use crate::store::lease::{Acquired, Leases};
use crate::store::records::{Batch, Change, Versioned};
use crate::store::{Expect, Op, Records, StoreError, Table};
use crate::upstream::{Checkpoint, SignRequest, UpstreamError};

/// How often the worker looks through the stored jobs for any it does not
/// run yet (jobs left by a stopped process are found by the first look, at
/// start-up). New jobs reach it at once through `Authority::enqueue_job`.
const SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs finalize jobs until shutdown.
pub struct FinalizeWorker {
    authority: Arc<Authority>,
    /// Every job this process runs or retries, with its creation time.
    in_flight: Arc<Mutex<HashMap<OrderId, OffsetDateTime>>>,
    permits: Arc<Semaphore>,
}

impl FinalizeWorker {
    /// A worker for this Authority.
    pub fn new(authority: Arc<Authority>) -> Self {
        let permits = Arc::new(Semaphore::new(authority.opts.finalize_concurrency.max(1)));
        Self {
            authority,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            permits,
        }
    }

    /// Takes new jobs as finalize hands them over, looks through the stored
    /// ones at start-up and every 30 s, and runs each in a task of
    /// its own (at most `finalize_concurrency` talk to the upstream at once),
    /// until the shutdown token fires.
    pub async fn run(self) {
        let ra = Arc::clone(&self.authority);
        let Some(mut queue) = ra.take_job_queue() else {
            tracing::error!("the finalize worker was started twice; this one stops");
            return;
        };
        let mut scan = tokio::time::interval(ra.scan_every());
        let mut gauge = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                next = queue.recv() => match next {
                    Some(job) => self.start(job),
                    None => return,
                },
                _ = scan.tick() => self.scan().await,
                _ = gauge.tick() => self.report_queue(),
                () = ra.shutdown.cancelled() => return,
            }
        }
    }

    /// Every stored job due before the next scan and not running here yet
    /// (jobs a stopped process left; this one's tasks retry their own). A
    /// job's task waits for its due time.
    async fn scan(&self) {
        let ra = &self.authority;
        let horizon = ra.clock.now() + ra.scan_every();
        match ra.records.due_jobs(horizon, usize::MAX).await {
            Ok(jobs) => {
                for job in jobs {
                    self.start(job.value);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read finalize jobs"),
        }
    }

    fn report_queue(&self) {
        let (depth, oldest) = match self.in_flight.lock() {
            Ok(map) => (map.len(), map.values().min().copied()),
            Err(_) => return,
        };
        crate::metrics::finalize_queue(depth, oldest, self.authority.clock.now());
    }

    /// Runs `job` in a task of its own unless it runs already: it waits for a
    /// permit and for its next attempt, and retries until the job is done.
    fn start(&self, job: FinalizeJob) {
        let id = job.order_id.clone();
        match self.in_flight.lock() {
            Ok(mut map) => {
                if map.contains_key(&id) {
                    return;
                }
                map.insert(id.clone(), job.created_at);
            }
            Err(_) => return,
        }
        let ra = Arc::clone(&self.authority);
        let in_flight = Arc::clone(&self.in_flight);
        let permits = Arc::clone(&self.permits);
        self.authority.tasks.spawn(async move {
            let mut next_attempt = job.next_attempt_at;
            loop {
                let wait = (next_attempt - ra.clock.now()).max(Duration::ZERO);
                if wait > Duration::ZERO {
                    let wait = std::time::Duration::try_from(wait).unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = ra.shutdown.cancelled() => break,
                    }
                }
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = ra.shutdown.cancelled() => break,
                };
                let retry_at = ra.run_job(&id).await;
                drop(permit);
                match retry_at {
                    Some(at) => next_attempt = at,
                    None => break,
                }
            }
            if let Ok(mut map) = in_flight.lock() {
                map.remove(&id);
            }
        });
    }
}

/// Saves the upstream's progress into the job before irreversible steps.
struct JobCheckpoint {
    records: Records,
    order_id: OrderId,
}

#[async_trait]
impl Checkpoint for JobCheckpoint {
    async fn save(&self, state: &str) -> Result<(), UpstreamError> {
        let found = self
            .records
            .update(
                self.order_id.as_str(),
                |job: Option<Versioned<FinalizeJob>>| async move {
                    let Some(job) = job else {
                        return Ok(Change::Keep(false));
                    };
                    let mut next = job.value.clone();
                    next.upstream_state = Some(state.to_owned());
                    Ok::<_, StoreError>(Change::Commit(Batch::new().replace(&job, &next), true))
                },
            )
            .await;
        match found {
            Ok(true) => Ok(()),
            Ok(false) => Err(UpstreamError::Internal {
                context: "the finalize job vanished".into(),
                source: None,
            }),
            Err(StoreError::Contended { .. }) => Err(UpstreamError::Internal {
                context: "the finalize job changed concurrently".into(),
                source: None,
            }),
            Err(e) => Err(UpstreamError::Internal {
                context: "saving the upstream state with the finalize job".into(),
                source: Some(Box::new(e)),
            }),
        }
    }
}

impl Authority {
    /// Hands a stored finalize job to the worker.
    pub(super) fn enqueue_job(&self, job: FinalizeJob) {
        // Fails only when no worker runs (it stopped at shutdown); the job is
        // stored, and the next start finds it.
        let _ = self.jobs_tx.send(job);
    }

    /// One attempt at a job, read afresh from the store. Returns when to try
    /// again if the job stays (a transient failure), `None` once it is done.
    ///
    /// The attempt runs in a task of its own: a panic in it (a bug, or input
    /// nobody foresaw) is caught here and ends the order `invalid` with
    /// `serverInternal`, instead of leaving it `processing` and panicking
    /// again after every restart.
    async fn run_job(self: &Arc<Self>, order_id: &OrderId) -> Option<OffsetDateTime> {
        // Replicas: only the holder of the job's lease talks to the upstream.
        match self.claim_job(order_id).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::error!(order = %order_id, error = %e, "cannot claim a finalize job; it will be retried");
                return Some(self.clock.now() + backoff(1, self.opts.max_backoff));
            }
        }
        let retry_at = match self.records.get::<FinalizeJob>(order_id.as_str()).await {
            Ok(None) => {
                self.release_job(order_id).await;
                None
            }
            Ok(Some(job)) => {
                let ra = Arc::clone(self);
                match tokio::spawn(async move { ra.try_job(job.value).await }).await {
                    Ok(Ok(next)) => next,
                    Ok(Err(e)) => {
                        tracing::error!(order = %order_id, error = %crate::telemetry::causes(&e), "finalize job failed to record its outcome; it will be retried");
                        Some(self.clock.now() + backoff(1, self.opts.max_backoff))
                    }
                    Err(join) if join.is_panic() => {
                        let panic = join.into_panic();
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".to_owned());
                        tracing::error!(order = %order_id, panic = %what, "finalize job panicked; the order is made invalid");
                        self.abandon_job(order_id).await
                    }
                    // Cancelled: the runtime is shutting down; the job stays
                    // stored and resumes at the next start.
                    Err(_) => None,
                }
            }
            Err(e) => {
                tracing::error!(order = %order_id, error = %e, "cannot read a finalize job; it will be retried");
                Some(self.clock.now() + backoff(1, self.opts.max_backoff))
            }
        };
        self.publish(Event::Order(order_id.to_string()));
        // Never sooner than a second: a job that stays for an unforeseen
        // reason must not spin.
        let soonest = self.clock.now() + Duration::seconds(1);
        retry_at.map(|at| at.max(soonest))
    }

    /// Ends a job whose attempt failed unexpectedly: its order becomes
    /// `invalid` with `serverInternal`. Returns when to try again if even
    /// that cannot be stored.
    async fn abandon_job(&self, order_id: &OrderId) -> Option<OffsetDateTime> {
        let p = Problem::new(
            ProblemType::ServerInternal,
            "the server failed while issuing this certificate (the details are in its log); \
             create a new order",
        );
        let outcome = match self.records.get::<OrderRecord>(order_id.as_str()).await {
            Ok(Some(order)) => self.finish(&order, FinalizeOutcome::Failed(p), None).await,
            Ok(None) => self.drop_job(order_id).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(order = %order_id, error = %e, "cannot end a failed finalize job; it will be retried");
                Some(self.clock.now() + backoff(1, self.opts.max_backoff))
            }
        }
    }

    /// One attempt. Returns when the job is due again if it stays (a
    /// transient failure), `None` once it is done.
    async fn try_job(&self, job: FinalizeJob) -> Result<Option<OffsetDateTime>, super::RaError> {
        let began = Some(job.created_at);
        let Some(order) = self
            .records
            .get::<OrderRecord>(job.order_id.as_str())
            .await?
        else {
            self.drop_job(&job.order_id).await?;
            return Ok(None);
        };
        if order.status != OrderStatus::Processing {
            self.drop_job(&job.order_id).await?;
            return Ok(None);
        }
        let now = self.clock.now();
        if now >= order.expires {
            let why = job
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer".to_owned());
            let p = Problem::new(
                ProblemType::ServerInternal,
                format!(
                    "the upstream CA did not issue the certificate before the order expired (last error: {why}); create a new order"
                ),
            );
            return self
                .finish(&order, FinalizeOutcome::Failed(p), began)
                .await
                .map(|()| None);
        }
        let terms = match self.issuance_terms(&order) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .finish(&order, FinalizeOutcome::Failed(*e.problem), began)
                    .await
                    .map(|()| None);
            }
        };
        let not_after = order.not_after.or_else(|| {
            terms
                .lifetime
                .and_then(|life| order.not_before.unwrap_or(now).checked_add(life))
        });
        let req = SignRequest {
            csr_der: job.csr_der.clone(),
            csr_verified: true,
            identifiers: order.identifiers.clone(),
            not_before: order.not_before,
            not_after,
            resume: job.upstream_state.clone(),
            replaces: order.replaces.clone(),
            profile: terms.upstream_profile,
        };
        let checkpoint = JobCheckpoint {
            records: self.records.clone(),
            order_id: order.id.clone(),
        };
        let who = self.requester_of(&order).await?;
        let started = Instant::now();
        let lease_name = job_lease_name(&order.id);
        let call = self.upstream.create_for(&req, &who, &checkpoint);
        let result = match &self.leases {
            None => call.await,
            // Replicas: the call ends when the lease is lost (this replica
            // stalled past it and another took the job over) or at shutdown
            // (the lease then expires, as if this replica had died).
            Some(_) => tokio::select! {
                r = call => r,
                () = self.hold_lease(&lease_name, self.opts.job_lease) => {
                    tracing::warn!(order = %order.id, "lost the finalize job's lease; another replica resumes it");
                    return Ok(None);
                }
                () = self.shutdown.cancelled() => return Ok(None),
            },
        };
        // A router counts each upstream's calls itself.
        if !self.upstream.is_router() {
            crate::metrics::upstream_call(
                self.upstream.name(),
                "create",
                result.is_ok(),
                started.elapsed(),
            );
        }
        match result {
            Ok(crate::upstream::Issued {
                chain,
                upstream: issuer,
            }) => {
                let Some(leaf) = chain.certificates.first() else {
                    return self
                        .retry_later(&job, "the upstream returned an empty chain")
                        .await;
                };
                let info = match cert::cert_info(leaf) {
                    Ok(i) => i,
                    Err(e) => {
                        return self
                            .retry_later(
                                &job,
                                &format!(
                                    "the upstream returned an unreadable certificate: {}",
                                    e.0
                                ),
                            )
                            .await;
                    }
                };
                let record = CertificateRecord {
                    id: CertId::random(),
                    account_id: order.account_id.clone(),
                    order_id: order.id.clone(),
                    serial_hex: info.serial_hex,
                    chain_pem: chain.to_pem(),
                    not_before: info.not_before,
                    not_after: info.not_after,
                    upstream: issuer,
                    revocation: None,
                };
                self.finish(&order, FinalizeOutcome::Issued(Box::new(record)), began)
                    .await
                    .map(|()| None)
            }
            Err(e @ UpstreamError::Rejected { .. }) => {
                let UpstreamError::Rejected { kind, detail } = &e else {
                    return Ok(None);
                };
                tracing::warn!(order = %order.id, error = %e, "upstream refused the certificate");
                let p = Problem::new(
                    *kind,
                    format!("the upstream CA refused the certificate: {detail}"),
                );
                self.finish(&order, FinalizeOutcome::Failed(p), began)
                    .await
                    .map(|()| None)
            }
            Err(e) => {
                tracing::warn!(order = %order.id, attempt = job.attempts + 1, error = %crate::telemetry::causes(&e), "upstream failed; will retry");
                self.retry_later(&job, &e.to_string()).await
            }
        }
    }

    /// Who the order is for, as routes between upstreams see it (the
    /// account's EAB key is read only when there are routes to match it).
    async fn requester_of(
        &self,
        order: &OrderRecord,
    ) -> Result<crate::upstream::Requester, super::RaError> {
        let mut who = crate::upstream::Requester {
            provisioner: order.provisioner.clone(),
            eab_kid: None,
        };
        if self.upstream.is_router() {
            who.eab_kid = match self.accounts.get(order.account_id.as_str()) {
                Some(a) => a.eab_kid,
                None => self
                    .records
                    .get::<crate::model::AccountRecord>(order.account_id.as_str())
                    .await?
                    .and_then(|a| a.value.eab_kid),
            };
        }
        Ok(who)
    }

    /// Stores the outcome: certificate + order `valid` + job removed, or order
    /// `invalid` + job removed, in one transaction. `began` is when the job
    /// was created, if the caller holds it (then the job is not read again:
    /// the order's compare-and-swap from `processing` makes this the one
    /// finish, and the job goes whatever its attempts say).
    async fn finish(
        &self,
        order: &Versioned<OrderRecord>,
        outcome: FinalizeOutcome,
        began: Option<OffsetDateTime>,
    ) -> Result<(), super::RaError> {
        let outcome = &outcome;
        let cert = match outcome {
            FinalizeOutcome::Issued(c) => Some(&**c),
            FinalizeOutcome::Failed(_) => None,
        };
        let stored = self
            .records
            .update_from(
                order.clone(),
                |order: Option<Versioned<OrderRecord>>| async move {
                    let Some(order) = order else {
                        return Ok(Change::Keep(Finish::Gone));
                    };
                    let mut next = order.value.clone();
                    if !state::end_finalize(&mut next, outcome) {
                        return Ok(Change::Keep(Finish::NotProcessing));
                    }
                    // The certificate before the order that points to it
                    // (readers may see a batch's first keys a moment before its
                    // last).
                    let mut batch = Batch::new();
                    if let Some(c) = cert {
                        batch = Records::cert_insert_ops(batch, c);
                    }
                    let mut batch = batch.replace(&order, &next);
                    let job_created = match began {
                        Some(at) => {
                            batch =
                                batch.op(Op::delete(Table::Jobs, order.id.as_str(), Expect::Any));
                            at
                        }
                        None => {
                            let Some(job) =
                                self.records.get::<FinalizeJob>(order.id.as_str()).await?
                            else {
                                return Ok(Change::Keep(Finish::Gone));
                            };
                            batch = batch.remove(&job);
                            job.created_at
                        }
                    };
                    if self.leases.is_some() {
                        batch = batch.op(Leases::release_op(&job_lease_name(&order.id)));
                    }
                    Ok::<_, StoreError>(Change::Commit(
                        batch,
                        Finish::Stored(Box::new(next), job_created),
                    ))
                },
            )
            .await?;
        let (next, job_created) = match stored {
            Finish::Gone => return Ok(()),
            Finish::NotProcessing => return self.drop_job(&order.id).await,
            Finish::Stored(next, job_created) => (next, job_created),
        };
        crate::metrics::order_finished(next.status);
        if let Some(c) = cert {
            crate::metrics::certificate_issued();
            // Logged once the outcome is stored, by the process that stored
            // it.
            let names: Vec<String> = next.identifiers.iter().map(ToString::to_string).collect();
            let seconds = (self.clock.now() - job_created).as_seconds_f64();
            tracing::info!(
                order = %next.id,
                account = %next.account_id,
                names = %names.join(","),
                serial = %c.serial_hex,
                upstream = %c.upstream,
                not_after = %c.not_after,
                seconds = format_args!("{seconds:.3}"),
                "certificate issued"
            );
        }
        Ok(())
    }

    /// Records the failure and schedules the next attempt; returns its time
    /// (`None` if the job is gone).
    async fn retry_later(
        &self,
        job: &FinalizeJob,
        why: &str,
    ) -> Result<Option<OffsetDateTime>, super::RaError> {
        let scheduled = self
            .records
            .update(
                job.order_id.as_str(),
                |current: Option<Versioned<FinalizeJob>>| async move {
                    let Some(current) = current else {
                        return Ok(Change::Keep(None));
                    };
                    let mut next = current.value.clone();
                    next.attempts = next.attempts.saturating_add(1);
                    next.last_error = Some(why.to_owned());
                    next.next_attempt_at =
                        self.clock.now() + backoff(next.attempts, self.opts.max_backoff);
                    let at = next.next_attempt_at;
                    Ok::<_, StoreError>(Change::Commit(
                        Batch::new().replace(&current, &next),
                        Some(at),
                    ))
                },
            )
            .await;
        match scheduled {
            Ok(at) => Ok(at),
            // Changed under us every time: look again after the shortest
            // back-off.
            Err(StoreError::Contended { .. }) => {
                Ok(Some(self.clock.now() + backoff(1, self.opts.max_backoff)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn drop_job(&self, order_id: &OrderId) -> Result<(), super::RaError> {
        if let Some(job) = self.records.get::<FinalizeJob>(order_id.as_str()).await? {
            let mut batch = Batch::new().remove(&job);
            if self.leases.is_some() {
                batch = batch.op(Leases::release_op(&job_lease_name(order_id)));
            }
            match self.records.commit(batch).await {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The lease that guards a finalize job.
fn job_lease_name(order_id: &OrderId) -> String {
    format!("job/{order_id}")
}

impl Authority {
    /// How often the worker looks through the stored jobs: often with
    /// replicas, so that a dead replica's job resumes soon after its lease
    /// expires.
    fn scan_every(&self) -> std::time::Duration {
        if self.leases.is_some() {
            self.opts.shared_scan_every
        } else {
            SCAN_EVERY
        }
    }

    /// Replicas: takes (or renews) the job's lease; false when another
    /// replica holds it. Always true for a store this process uses alone.
    async fn claim_job(&self, order_id: &OrderId) -> Result<bool, StoreError> {
        let Some(leases) = &self.leases else {
            return Ok(true);
        };
        let name = job_lease_name(order_id);
        match leases
            .acquire(&name, self.clock.now(), self.opts.job_lease)
            .await?
        {
            Acquired::Held(_) => {
                crate::metrics::lease("job", "taken");
                Ok(true)
            }
            Acquired::TookOver(_) => {
                crate::metrics::lease("job", "taken_over");
                tracing::info!(order = %order_id, "took over a finalize job whose replica's lease expired");
                Ok(true)
            }
            Acquired::Busy { owner, until } => {
                crate::metrics::lease("job", "busy");
                tracing::debug!(order = %order_id, %owner, %until, "finalize job runs on another replica");
                Ok(false)
            }
        }
    }

    /// Replicas: gives the job's lease back (the job is gone).
    async fn release_job(&self, order_id: &OrderId) {
        if let Some(leases) = &self.leases
            && let Err(e) = leases.release(&job_lease_name(order_id)).await
        {
            tracing::warn!(order = %order_id, error = %e, "cannot release a finalize job's lease; it expires");
        }
    }
}

/// What [`Authority::finish`] found.
enum Finish {
    /// The order or its job is gone: nothing to store.
    Gone,
    /// The order is no longer `processing`: only the job is dropped.
    NotProcessing,
    /// The outcome is stored: the order as written, and when its job began.
    Stored(Box<OrderRecord>, OffsetDateTime),
}

/// Exponential back-off: 1 s, 2 s, 4 s, … capped at `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    let secs = 1i64 << attempts.saturating_sub(1).min(20);
    Duration::seconds(secs).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let max = Duration::minutes(5);
        assert_eq!(backoff(1, max), Duration::seconds(1));
        assert_eq!(backoff(2, max), Duration::seconds(2));
        assert_eq!(backoff(5, max), Duration::seconds(16));
        assert_eq!(backoff(30, max), max);
    }
}
