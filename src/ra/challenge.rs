//! Answering challenges: the challenge goes to `processing`, validation runs
//! in the background, and its outcome moves the authorization and the order
//! on (RFC 8555 §7.5.1, §8).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1>

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use super::error::{RaError, problem};
use super::{Authority, Event, state};
use crate::acme::jws::key_authorization;
use crate::acme::types::{AuthorizationStatus, ChallengeStatus, ChallengeType, OrderStatus};
use crate::acme::{Problem, ProblemType};
use crate::model::{AccountRecord, AuthzId, AuthzRecord, OrderRecord};
use crate::store::StoreError;
use crate::store::lease::{Acquired, Leases};
use crate::store::records::{Batch, Change, Versioned};

impl Authority {
    /// The client says a challenge is ready (RFC 8555 §7.5.1). Starts the
    /// validation in the background and waits briefly for it, so that a quick
    /// validation is answered `valid` at once and clients need not sleep.
    pub async fn answer_challenge(
        self: &Arc<Self>,
        account: &AccountRecord,
        authz_id: &str,
        kind: ChallengeType,
    ) -> Result<AuthzRecord, RaError> {
        let current = self.owned_authz(&account.id, authz_id).await?;
        let Some(index) = current.challenges.iter().position(|c| c.kind == kind) else {
            return Err(super::order::not_found("challenge"));
        };
        let now = self.clock.now();
        if state::authz_at(current.value.clone(), now).status == AuthorizationStatus::Expired {
            return problem(
                ProblemType::Malformed,
                "the authorization has expired; create a new order",
            );
        }
        let mut started = current.value.clone();
        if !state::start_validation(&mut started, index) {
            // Already started or finished: answer with its state (idempotent).
            return Ok(current.value);
        }
        // The validation starts at once, and `processing` is stored only if it
        // outlasts the wait: a quick outcome is then the only write, and one
        // flush. Until either write, a crash leaves the challenge pending, and
        // the client, told nothing yet, answers it again.
        //
        // The validation runs in this request's task, so that its outcome is
        // answered without a hand-off; if it outlasts the wait, it goes on in
        // a task of its own. If one already runs for this authorization, wait
        // for its outcome instead.
        let finished = match self.validation(account, current.value.clone(), index)? {
            Some(mut validation) => {
                let finished = tokio::select! {
                    () = &mut validation => true,
                    () = tokio::time::sleep(self.opts.challenge_wait) => false,
                    () = self.shutdown.cancelled() => false,
                };
                if !finished {
                    self.tasks.spawn(validation);
                }
                finished
            }
            None => {
                // If the other validation ends before this subscribes, the
                // wait runs out and the stored state is shown anyway.
                let sub = self.subscribe(Event::Authz(current.id.to_string()));
                self.wait_for(sub, self.opts.challenge_wait).await
            }
        };
        if !finished {
            match self
                .records
                .commit(Batch::new().replace(&current, &started))
                .await
            {
                // Conflict: the outcome (or another request) got there first.
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.authz(account, authz_id).await
    }

    /// Runs the validation of challenge `index` in the background, unless one
    /// already runs in this process for that authorization.
    fn spawn_validation(
        self: &Arc<Self>,
        account: &AccountRecord,
        authz: AuthzRecord,
        index: usize,
    ) -> Result<(), RaError> {
        if let Some(validation) = self.validation(account, authz, index)? {
            self.tasks.spawn(validation);
        }
        Ok(())
    }

    /// The validation of challenge `index` (check, store the outcome, wake
    /// the waiters), claimed for this process; `None` if one already runs
    /// here for that authorization.
    fn validation(
        self: &Arc<Self>,
        account: &AccountRecord,
        authz: AuthzRecord,
        index: usize,
    ) -> Result<Option<Validation>, RaError> {
        let Some(ch) = authz.challenges.get(index) else {
            return Ok(None);
        };
        let key_auth = key_authorization(&ch.token, &account.jwk);
        match self.validating.lock() {
            Ok(mut set) => {
                if !set.insert(authz.id.clone()) {
                    return Ok(None);
                }
            }
            Err(_) => return Ok(None),
        }
        // Released when the validation ends or is dropped (a client that
        // hangs up drops its request, and the validation running in it).
        let claim = Claim {
            ra: Arc::clone(self),
            id: authz.id.clone(),
        };
        Ok(Some(Box::pin(async move {
            let ra = Arc::clone(&claim.ra);
            match &ra.leases {
                None => ra.run_validation(authz, index, key_auth).await,
                // Replicas: one validation of an authorization at a time
                // across replicas, under a lease; one whose replica died
                // is run again by the next replica that reads it once the
                // lease has expired (`resume_stalled`).
                Some(leases) => {
                    ra.validate_under_lease(leases, authz, index, key_auth)
                        .await
                }
            }
            drop(claim);
        })))
    }

    /// Runs the validation under its lease on a shared store. If another
    /// replica holds the lease, waits for its outcome or for the lease's end
    /// and then validates here.
    async fn validate_under_lease(
        &self,
        leases: &Leases,
        authz: AuthzRecord,
        index: usize,
        key_auth: String,
    ) {
        let name = format!("authz/{}", authz.id);
        let ttl = self.opts.validation_lease;
        loop {
            match leases.acquire(&name, self.clock.now(), ttl).await {
                Ok(held @ (Acquired::Held(_) | Acquired::TookOver(_))) => {
                    let (outcome, until) = match held {
                        Acquired::TookOver(until) => ("taken_over", until),
                        Acquired::Held(until) | Acquired::Busy { until, .. } => ("taken", until),
                    };
                    crate::metrics::lease("validation", outcome);
                    tokio::select! {
                        () = self.run_validation(authz, index, key_auth) => {}
                        () = self.hold_lease(&name, ttl) => {}
                    }
                    if let Err(e) = leases.release_held(&name, until).await {
                        tracing::warn!(lease = %name, error = %e, "cannot release a validation lease; it expires");
                    }
                    break;
                }
                // Another replica validates, or died holding the
                // lease before it stored anything. Answering the
                // client's POST and leaving the challenge as it is
                // would leave it unvalidated for good when that
                // replica died: wait for the outcome, or for the
                // lease's end and then validate here. (Past the
                // POST's wait this runs in a task of its own, the
                // challenge `processing`.)
                Ok(Acquired::Busy { until, .. }) => {
                    crate::metrics::lease("validation", "busy");
                    let left = StdDuration::try_from(until - self.clock.now())
                        .unwrap_or_default()
                        .min(self.opts.shared_scan_every)
                        .max(StdDuration::from_millis(50));
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    if !self.awaits_validation(&authz.id, index).await {
                        break;
                    }
                }
                // Without this the challenge would stay pending and
                // never validated (nothing resumes a challenge that
                // was never `processing`): validate without the lease;
                // the first outcome stored wins (compare-and-swap).
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot take a validation lease; validating without it");
                    self.run_validation(authz, index, key_auth).await;
                    break;
                }
            }
        }
    }

    /// Whether challenge `index` of authorization `id` still waits for an
    /// outcome (the authorization pending, the challenge pending or
    /// processing). A store error counts as yes: the caller tries again.
    async fn awaits_validation(&self, id: &AuthzId, index: usize) -> bool {
        match self.records.get::<AuthzRecord>(id.as_str()).await {
            Ok(Some(a)) => {
                a.value.status == AuthorizationStatus::Pending
                    && a.value.challenges.get(index).is_some_and(|c| {
                        matches!(
                            c.status,
                            ChallengeStatus::Pending | ChallengeStatus::Processing
                        )
                    })
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// A challenge left `processing` by a process that stopped (crash or
    /// restart) is validated again when the authorization is next read.
    pub(super) fn resume_stalled(self: &Arc<Self>, account: &AccountRecord, authz: &AuthzRecord) {
        if authz.status != AuthorizationStatus::Pending {
            return;
        }
        let Some(index) = authz
            .challenges
            .iter()
            .position(|c| c.status == ChallengeStatus::Processing)
        else {
            return;
        };
        let running = self
            .validating
            .lock()
            .map(|set| set.contains(&authz.id))
            .unwrap_or(true);
        if !running {
            tracing::info!(authz = %authz.id, "resuming a validation interrupted by a restart");
            if let Err(e) = self.spawn_validation(account, authz.clone(), index) {
                tracing::warn!(authz = %authz.id, error = %e, "cannot resume validation");
            }
        }
    }

    async fn run_validation(&self, authz: AuthzRecord, index: usize, key_auth: String) {
        let Some(ch) = authz.challenges.get(index) else {
            return;
        };
        let kind = ch.kind;
        let started = Instant::now();
        // At most `concurrentValidations` reach the network at once; the
        // rest wait here, their challenge `processing`, and the wait counts
        // toward the challenge's time like a slow validation would.
        let waiting = Waiting::start();
        let slot = self.validation_slots.acquire().await;
        drop(waiting);
        let outcome = self
            .validator
            .validate(kind, &authz.identifier, &ch.token, &key_auth)
            .await;
        drop(slot);
        let result = match &outcome {
            Ok(record) => {
                tracing::info!(authz = %authz.id, %kind, identifier = %authz.identifier,
                    address = %record.address_used.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    "challenge valid");
                Ok(())
            }
            Err(e) => {
                tracing::info!(authz = %authz.id, %kind, identifier = %authz.identifier,
                    error = %e, "challenge invalid");
                Err(Problem::new(e.problem_type(), e.to_string())
                    .with_identifier(authz.identifier.clone()))
            }
        };
        crate::metrics::validation_done(kind, result.is_ok(), started.elapsed());
        self.validation_quota(&authz, result.is_ok());
        if let Err(e) = self.record_validation(&authz, index, result).await {
            tracing::error!(authz = %authz.id, error = %e, "could not store the validation result");
        }
        self.publish(Event::Authz(authz.id.to_string()));
    }

    /// Stores the outcome and the order's status it implies (`ready` or
    /// `invalid`) in one durable commit.
    async fn record_validation(
        &self,
        authz: &AuthzRecord,
        index: usize,
        result: Result<(), Problem>,
    ) -> Result<(), RaError> {
        let result = &result;
        let finished_order = self
            .records
            .update_shared(
                authz.id.as_str(),
                |current: Option<Versioned<AuthzRecord>>| async move {
                    let Some(current) = current else {
                        return Ok(Change::Keep(None));
                    };
                    let now = self.clock.now();
                    let mut next = current.value.clone();
                    if !state::apply_validation(&mut next, index, result.clone(), now) {
                        return Ok(Change::Keep(None));
                    }
                    let mut batch = Batch::new().replace(&current, &next);
                    let order = self
                        .records
                        .get::<OrderRecord>(next.order_id.as_str())
                        .await?;
                    let mut finished_order = None;
                    if let Some(order) = &order {
                        let authzs = self.order_authzs_with(order, Some(&next)).await?;
                        let next_order = state::order_at(order.value.clone(), &authzs, now);
                        if next_order != order.value {
                            finished_order = Some(next_order.status);
                            batch = batch.replace(order, &next_order);
                        }
                    }
                    Ok::<_, RaError>(Change::Commit(batch, finished_order))
                },
            )
            .await?;
        if finished_order == Some(OrderStatus::Invalid) {
            crate::metrics::order_finished(OrderStatus::Invalid);
        }
        Ok(())
    }
}

/// A validation waiting for a place, counted in the metrics until dropped
/// (its place came, or the validation was dropped while it waited).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        crate::metrics::validation_waiting(1);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        crate::metrics::validation_waiting(-1);
    }
}

/// A validation ready to run, inline or in a task of its own.
type Validation = Pin<Box<dyn Future<Output = ()> + Send>>;

/// This process's claim on validating one authorization.
struct Claim {
    ra: Arc<Authority>,
    id: AuthzId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.ra.validating.lock() {
            set.remove(&self.id);
        }
    }
}
