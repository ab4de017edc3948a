//! The Authority: every state change of accounts, orders, authorizations and
//! certificates goes through here (Boulder's RA). Handlers call one method,
//! the Authority reaches the store, validators and upstream through their seams.

mod account;
mod account_cache;
pub mod admin;
mod challenge;
pub mod eab;
pub mod error;
mod finalize;
pub mod limits;
mod order;
mod profiles;
mod quota;
mod readiness;
pub mod renewal;
#[cfg(test)]
mod replica_tests;
pub mod retention;
pub mod state;
#[cfg(test)]
mod test_support;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::types::ChallengeType;
use crate::model::{Clock, random_token};
use crate::store::Records;
use crate::store::lease::Leases;
use crate::upstream::{CertificateAuthorityService, UpstreamError};
use crate::validate::Validator;

pub use account::{NewAccountOutcome, RevocationSigner, jws_problem};
pub use error::RaError;
pub use readiness::Readiness;
pub use retention::{RetentionPolicy, RetentionWorker};
pub use worker::FinalizeWorker;

/// One ACME provisioner, as the Authority uses it.
#[derive(Clone, Debug)]
pub struct Provisioner {
    pub name: String,
    pub challenges: Vec<ChallengeType>,
    pub require_eab: bool,
    /// Name policies every identifier must pass (authority, then provisioner).
    pub policies: Vec<crate::policy::rules::NamePolicy>,
    /// Certificate lifetime when the order names no notAfter; `None` leaves
    /// it to the upstream (step-ca's provisioner claims, Vault's role TTL,
    /// softcas's `certlifetime`), so a stock upstream is never asked for more
    /// than it allows.
    pub default_lifetime: Option<Duration>,
    pub min_lifetime: Duration,
    pub max_lifetime: Duration,
    pub terms_of_service: Option<String>,
    pub website: Option<String>,
    pub caa_identities: Vec<String>,
    /// The certificate profiles offered (draft-ietf-acme-profiles), by
    /// name; empty: none, and an order naming one is refused.
    pub profiles: std::collections::BTreeMap<String, Profile>,
}

/// A certificate profile a client may choose at newOrder
/// (draft-ietf-acme-profiles).
///
/// <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The directory's `meta.profiles` description.
    pub description: String,
    /// Certificate lifetime when the order names no notAfter; `None` leaves
    /// the provisioner's [`default_lifetime`](Provisioner::default_lifetime).
    pub lifetime: Option<Duration>,
    /// The profile asked of the upstream, where it takes one.
    pub upstream_profile: Option<String>,
}

/// Timing settings of the Authority.
#[derive(Clone, Debug)]
pub struct AuthorityOptions {
    /// How long a new order may stay unfinished.
    pub order_lifetime: Duration,
    /// How long a pending authorization lives.
    pub authz_lifetime: Duration,
    /// How long a challenge POST waits for a quick validation to finish before
    /// answering `processing`.
    pub challenge_wait: StdDuration,
    /// How long finalize waits for a quick upstream before answering
    /// `processing` with Retry-After.
    pub finalize_wait: StdDuration,
    /// Longest back-off between finalize attempts after transient failures.
    pub max_backoff: Duration,
    /// Finalize jobs run at once.
    pub finalize_concurrency: usize,
    /// `authority.rateLimits`: the token buckets, and how many validations
    /// reach the network at once.
    pub rate_limits: limits::RateLimits,
    /// Replicas on a shared store: how long a finalize job's lease lasts
    /// unless renewed (its holder renews it every third of that while the
    /// upstream works); a dead replica's job is taken over after it.
    pub job_lease: Duration,
    /// Replicas: how long a validation's lease lasts unless renewed (every
    /// third of it while the validation runs). Shorter than `job_lease`: a
    /// validation takes seconds, and a client waits for the outcome of a
    /// validation whose replica died until another replica takes it over.
    pub validation_lease: Duration,
    /// Replicas: how often the worker looks through the stored jobs (for
    /// jobs whose holder died, and new jobs of other replicas).
    pub shared_scan_every: StdDuration,
    /// Replicas: how often a waiting request re-reads the store for an
    /// outcome another replica stored.
    pub shared_poll_every: StdDuration,
    /// Replicas: how long an account read by `kid` is kept in memory
    /// (`account_cache`); a change made on another replica is seen here
    /// within it. A store one process serves keeps accounts for
    /// 30 s: every change goes through this process, which
    /// drops the kept account at once.
    pub shared_account_ttl: StdDuration,
}

/// How long an account read by `kid` is kept in memory when this process
/// alone writes the store (sled, memory): the cache only bounds its memory,
/// since this process's own changes drop the kept entry.
const LOCAL_ACCOUNT_TTL: StdDuration = StdDuration::from_secs(30);

impl Default for AuthorityOptions {
    fn default() -> Self {
        Self {
            order_lifetime: Duration::days(1),
            authz_lifetime: Duration::days(1),
            challenge_wait: StdDuration::from_millis(1500),
            finalize_wait: StdDuration::from_millis(1500),
            max_backoff: Duration::minutes(5),
            finalize_concurrency: 32,
            rate_limits: limits::RateLimits::default(),
            job_lease: Duration::seconds(20),
            validation_lease: Duration::seconds(6),
            shared_scan_every: StdDuration::from_secs(2),
            shared_poll_every: StdDuration::from_millis(75),
            shared_account_ttl: StdDuration::from_secs(2),
        }
    }
}

/// Something changed: an authorization finished validating, or an order
/// finished finalizing. Request handlers waiting for it wake up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Event {
    Authz(String),
    Order(String),
}

/// The Authority.
pub struct Authority {
    records: Records,
    clock: Arc<dyn Clock>,
    validator: Validator,
    upstream: Arc<dyn CertificateAuthorityService>,
    provisioners: HashMap<String, Provisioner>,
    opts: AuthorityOptions,
    /// Handlers waiting for an event, by event: a publish wakes only its own.
    waiters: std::sync::Mutex<HashMap<Event, Vec<oneshot::Sender<()>>>>,
    /// Finalize hands new jobs to the worker here.
    jobs_tx: mpsc::UnboundedSender<crate::model::FinalizeJob>,
    /// The worker's end, taken when it starts.
    jobs_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<crate::model::FinalizeJob>>>,
    /// Authorizations whose validation runs in this process.
    validating: std::sync::Mutex<std::collections::HashSet<crate::model::AuthzId>>,
    /// The rate limits' buckets.
    limiter: limits::RateLimiter,
    /// Places for validations on the network; the rest wait in `processing`.
    validation_slots: tokio::sync::Semaphore,
    /// The roots found at start-up ([`crate::upstream::roots::resolve`]).
    roots: std::sync::RwLock<Vec<Vec<u8>>>,
    /// The names requests may address the server by (`dnsNames` and the
    /// listen address); empty allows any.
    public_names: std::sync::RwLock<Arc<[String]>>,
    /// Replicas on a shared store: this replica's leases (`None` when the
    /// store serves this process alone).
    leases: Option<Leases>,
    /// Replicas: accounts read by `kid`, kept a moment.
    accounts: account_cache::AccountCache,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Authority {
    /// An Authority over these parts.
    pub fn new(
        records: Records,
        clock: Arc<dyn Clock>,
        validator: Validator,
        upstream: Arc<dyn CertificateAuthorityService>,
        provisioners: Vec<Provisioner>,
        opts: AuthorityOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let limiter = limits::RateLimiter::new(opts.rate_limits.clone());
        let validation_slots =
            tokio::sync::Semaphore::new(opts.rate_limits.concurrent_validations.max(1));
        let leases = records
            .store()
            .is_shared()
            .then(|| Leases::new(Arc::clone(records.store()), random_token(12)));
        let accounts = account_cache::AccountCache::new(if leases.is_some() {
            opts.shared_account_ttl
        } else {
            LOCAL_ACCOUNT_TTL
        });
        Arc::new(Self {
            public_names: std::sync::RwLock::new(Arc::from(Vec::new())),
            leases,
            accounts,
            records,
            clock,
            validator,
            upstream,
            provisioners: provisioners
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            opts,
            waiters: std::sync::Mutex::new(HashMap::new()),
            jobs_tx,
            jobs_rx: std::sync::Mutex::new(Some(jobs_rx)),
            validating: std::sync::Mutex::new(std::collections::HashSet::new()),
            limiter,
            validation_slots,
            roots: std::sync::RwLock::new(Vec::new()),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// The provisioner of this name, if configured.
    pub fn provisioner(&self, name: &str) -> Option<&Provisioner> {
        self.provisioners.get(name)
    }

    /// The typed store (for the composition root; handlers go through the
    /// Authority's methods).
    pub(crate) fn records(&self) -> &Records {
        &self.records
    }

    /// The upstream CA (for the composition root).
    pub(crate) fn upstream(&self) -> &Arc<dyn CertificateAuthorityService> {
        &self.upstream
    }

    /// The rate limits' buckets (per-IP limits are applied by the HTTP layer).
    pub(crate) fn limiter(&self) -> &limits::RateLimiter {
        &self.limiter
    }

    /// Asks the upstream CA, uncached, whether it answers now.
    pub async fn upstream_health(&self) -> Result<(), UpstreamError> {
        self.upstream.health().await
    }

    /// Finalize jobs stored and not finished yet (each order in
    /// `processing` has one).
    pub async fn finalize_backlog(&self) -> Result<u64, RaError> {
        Ok(self.records.count::<crate::model::FinalizeJob>().await?)
    }

    /// Sets the roots (self-signed, DER) that the RA's chains lead to.
    pub fn set_roots(&self, roots: Vec<Vec<u8>>) {
        *self
            .roots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = roots;
    }

    /// Sets the names requests may address the server by (the HTTP layer
    /// refuses any other Host, so that it never reaches a URL).
    pub fn set_public_names(&self, names: Vec<String>) {
        *self
            .public_names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(names);
    }

    /// The names set by [`set_public_names`](Self::set_public_names).
    pub fn public_names(&self) -> Arc<[String]> {
        Arc::clone(
            &self
                .public_names
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The self-signed roots the RA's chains lead to, PEM, for `/roots.pem`:
    /// those found at start-up, else the upstream's self-signed ones (an
    /// upstream may learn its root only at its first issuance); `None` when
    /// there is none.
    pub fn roots_pem(&self) -> Option<String> {
        let set = self
            .roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let roots = if set.is_empty() {
            crate::upstream::roots::self_signed_only(&self.upstream.roots())
        } else {
            set
        };
        (!roots.is_empty()).then(|| {
            roots
                .into_iter()
                .map(|der| {
                    pem::encode_config(
                        &pem::Pem::new("CERTIFICATE", der),
                        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                    )
                })
                .collect()
        })
    }

    /// Waits for background work (validations) to end, after shutdown.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The queue of new finalize jobs, for the one worker that runs.
    fn take_job_queue(&self) -> Option<mpsc::UnboundedReceiver<crate::model::FinalizeJob>> {
        self.jobs_rx.lock().ok().and_then(|mut q| q.take())
    }

    /// Wakes the handlers waiting for `event`.
    fn publish(&self, event: Event) {
        let waiting = match self.waiters.lock() {
            Ok(mut map) => map.remove(&event),
            Err(_) => None,
        };
        for tx in waiting.into_iter().flatten() {
            // A waiter that gave up has dropped its receiver: nothing to do.
            let _ = tx.send(());
        }
    }

    /// Registers interest in `event` before the work that publishes it
    /// starts, so that it cannot be missed; pass the result to
    /// [`wait_for`](Self::wait_for).
    fn subscribe(&self, event: Event) -> Subscription {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.waiters.lock() {
            map.entry(event.clone()).or_default().push(tx);
        }
        Subscription { event, rx }
    }

    /// Waits until the subscribed event is published, `limit` passes or the
    /// server shuts down; true if it was published. The caller re-reads the
    /// state either way.
    async fn wait_for(&self, sub: Subscription, limit: StdDuration) -> bool {
        self.wait_until(sub, limit, || async { false }).await
    }

    /// As [`wait_for`](Self::wait_for); with replicas on a shared store it
    /// also asks `done` every `shared_poll_every` (an outcome another
    /// replica stored publishes nothing here), and is true once `done` is.
    async fn wait_until<F, Fut>(&self, sub: Subscription, limit: StdDuration, mut done: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let Subscription { event, mut rx } = sub;
        let deadline = tokio::time::Instant::now() + limit;
        let poll = self.leases.is_some();
        let published = loop {
            let next = if poll {
                (tokio::time::Instant::now() + self.opts.shared_poll_every).min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                r = &mut rx => break r.is_ok(),
                () = tokio::time::sleep_until(next) => {}
                () = self.shutdown.cancelled() => break false,
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            if done().await {
                break true;
            }
        };
        if !published || poll {
            // Drop our (and any other abandoned) registration for this event.
            drop(rx);
            if let Ok(mut map) = self.waiters.lock()
                && let Some(list) = map.get_mut(&event)
            {
                list.retain(|tx| !tx.is_closed());
                if list.is_empty() {
                    map.remove(&event);
                }
            }
        }
        published
    }

    /// Keeps our lease `name` (renewing it every third of its time) until it
    /// is lost: returns then, or never while it holds. Pending forever
    /// when the store is not shared.
    async fn hold_lease(&self, name: &str, ttl: Duration) {
        let Some(leases) = &self.leases else {
            return std::future::pending().await;
        };
        let every = StdDuration::try_from(ttl / 3)
            .unwrap_or(StdDuration::from_secs(1))
            .max(StdDuration::from_millis(50));
        let margin = Duration::try_from(every).unwrap_or(ttl);
        let mut held_until = self.clock.now() + ttl;
        loop {
            tokio::time::sleep(every).await;
            let now = self.clock.now();
            match leases.renew(name, now, ttl).await {
                Ok(true) => held_until = now + ttl,
                Ok(false) => {
                    crate::metrics::lease(lease_kind(name), "lost");
                    return;
                }
                // The store is unreachable: keep trying while the lease
                // still holds; past it, others may take the work over.
                // Give up one renewal early: another replica may take over
                // at `held_until` by its own clock.
                Err(e) => {
                    tracing::warn!(lease = name, error = %e, "cannot renew a lease");
                    if now + margin >= held_until {
                        crate::metrics::lease(lease_kind(name), "lost");
                        return;
                    }
                }
            }
        }
    }
}

/// A registration made by [`Authority::subscribe`].
struct Subscription {
    event: Event,
    rx: oneshot::Receiver<()>,
}

/// What a lease named `name` guards, for metrics (`authz/…` leases guard
/// validations, the others finalize jobs).
fn lease_kind(name: &str) -> &'static str {
    if name.starts_with("authz/") {
        "validation"
    } else {
        "job"
    }
}
