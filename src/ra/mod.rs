//! The Authority: every state change of accounts, orders, authorizations and
//! certificates goes through here (Boulder's RA). Handlers call one method,
//! the Authority reaches the store, validators and upstream through their seams.

mod account;
pub mod admin;
mod challenge;
pub mod eab;
pub mod error;
mod finalize;
mod order;
pub mod renewal;
pub mod state;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::types::ChallengeType;
use crate::model::Clock;
use crate::store::Records;
use crate::upstream::CertificateAuthorityService;
use crate::validate::Validator;

pub use account::{NewAccountOutcome, RevocationSigner, jws_problem};
pub use error::RaError;
pub use worker::FinalizeWorker;

/// One ACME provisioner, as the Authority uses it.
#[derive(Clone, Debug)]
pub struct Provisioner {
    pub name: String,
    pub challenges: Vec<ChallengeType>,
    pub require_eab: bool,
    /// Name policies every identifier must pass (authority, then provisioner).
    pub policies: Vec<crate::policy::rules::NamePolicy>,
    /// Certificate lifetime when the order names no notAfter.
    pub default_lifetime: Duration,
    pub min_lifetime: Duration,
    pub max_lifetime: Duration,
    pub terms_of_service: Option<String>,
    pub website: Option<String>,
    pub caa_identities: Vec<String>,
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
}

impl Default for AuthorityOptions {
    fn default() -> Self {
        Self {
            order_lifetime: Duration::days(1),
            authz_lifetime: Duration::days(1),
            challenge_wait: StdDuration::from_millis(1500),
            finalize_wait: StdDuration::from_millis(1500),
            max_backoff: Duration::minutes(5),
            finalize_concurrency: 32,
        }
    }
}

/// Something changed: an authorization finished validating, or an order
/// finished finalizing. Request handlers waiting for it wake up.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    events: broadcast::Sender<Event>,
    jobs_ready: Arc<Notify>,
    /// Authorizations whose validation runs in this process.
    validating: std::sync::Mutex<std::collections::HashSet<crate::model::AuthzId>>,
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
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            records,
            clock,
            validator,
            upstream,
            provisioners: provisioners
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            opts,
            events,
            jobs_ready: Arc::new(Notify::new()),
            validating: std::sync::Mutex::new(std::collections::HashSet::new()),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// The provisioner of this name, if configured.
    pub fn provisioner(&self, name: &str) -> Option<&Provisioner> {
        self.provisioners.get(name)
    }

    /// The typed store.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The upstream CA.
    pub fn upstream(&self) -> &Arc<dyn CertificateAuthorityService> {
        &self.upstream
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The roots the upstream chains to, PEM, for `/roots.pem`.
    pub fn roots_pem(&self) -> String {
        self.upstream
            .roots()
            .into_iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
            .collect()
    }

    /// Waits for background work (validations) to end, after shutdown.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn publish(&self, event: Event) {
        // No receivers is fine: nobody is waiting.
        let _ = self.events.send(event);
    }

    /// Waits up to `limit` for `event`, or returns early on shutdown.
    async fn wait_for(&self, mut rx: broadcast::Receiver<Event>, event: Event, limit: StdDuration) {
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(e) if e == event => return,
                    Ok(_) => {}
                    // Lagged: we may have missed it; the caller re-reads anyway.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        tokio::select! {
            () = wait => {}
            () = tokio::time::sleep(limit) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}
