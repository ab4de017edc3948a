//! `--backlog N`: before the warm-up, the generator drives N flows up to and
//! including the finalize POST (RFC 8555 §7.4) and stops there, so that with a
//! slow upstream N orders wait in `processing` while the measured flows run.
//! After the window it reads each of those orders once (POST-as-GET,
//! RFC 8555 §7.1.3) and counts their states. None of these requests enter
//! the measured statistics.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6>

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::{FlowError, Http, Session};
use crate::flow::{self, Account};
use crate::{ERRORS_SHOWN, Shared};

/// How often the build prints its progress to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The backlog orders, built and not yet checked.
pub(crate) struct Backlog {
    orders: Vec<BacklogOrder>,
    requested: u64,
    /// Finalize answers that said `processing`.
    processing_at_build: u64,
    errors: BTreeMap<String, u64>,
    build: Duration,
}

/// One order left after its finalize POST.
struct BacklogOrder {
    url: String,
    /// The identifier index, which also picks a shared `--accounts` account.
    n: u64,
    /// The account the flow registered, when the run uses no shared accounts.
    fresh: Option<Account>,
}

/// What one build worker collected.
#[derive(Default)]
struct Built {
    orders: Vec<BacklogOrder>,
    processing: u64,
    errors: BTreeMap<String, u64>,
}

/// Counters the build workers share, for progress and error output.
#[derive(Default)]
struct Progress {
    claimed: AtomicU64,
    created: AtomicU64,
    failed: AtomicU64,
    shown: AtomicU64,
}

/// The `backlog` object of the report.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BacklogReport {
    /// `--backlog N`.
    pub(crate) requested: u64,
    /// Orders whose finalize POST was answered.
    pub(crate) created: u64,
    /// Backlog flows that failed before or at finalize.
    pub(crate) errors: u64,
    /// Failed backlog flows by key (as `errors` of the measured flows).
    pub(crate) error_kinds: BTreeMap<String, u64>,
    /// Finalize answers that said `processing` (the rest said `valid`).
    pub(crate) processing_at_build: u64,
    /// Seconds from the first backlog request to the last finalize answer.
    pub(crate) build_s: f64,
    /// States of the created orders when read once after the window.
    pub(crate) still_processing_at_end: u64,
    pub(crate) valid_at_end: u64,
    /// Any other state, or a read that failed (also in `check_errors`).
    pub(crate) other_at_end: u64,
    pub(crate) check_errors: u64,
}

impl Backlog {
    /// Drives `requested` flows, `concurrency` at a time, up to their
    /// finalize answer. Identifiers come from the run's counter, so the
    /// measured flows started afterwards never reuse them.
    pub(crate) async fn build(
        shared: &Arc<Shared>,
        requested: u64,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let progress = Arc::new(Progress::default());
        let mut workers = JoinSet::new();
        let width = usize::try_from(requested).unwrap_or(usize::MAX);
        for _ in 0..concurrency.min(width) {
            workers.spawn(build_worker(shared.clone(), progress.clone(), requested));
        }
        let mut built = Built::default();
        let mut next = tokio::time::Instant::now() + PROGRESS_EVERY;
        loop {
            match tokio::time::timeout_at(next, workers.join_next()).await {
                Ok(Some(r)) => {
                    let mut part = r.context("a backlog worker panicked")?;
                    built.orders.append(&mut part.orders);
                    built.processing += part.processing;
                    for (k, n) in part.errors {
                        *built.errors.entry(k).or_default() += n;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    eprintln!(
                        "acmeproxy-bench: backlog {:>4}s {} of {requested} created, {} failed",
                        started.elapsed().as_secs(),
                        progress.created.load(Ordering::Relaxed),
                        progress.failed.load(Ordering::Relaxed)
                    );
                    next += PROGRESS_EVERY;
                }
            }
        }
        Ok(Self {
            orders: built.orders,
            requested,
            processing_at_build: built.processing,
            errors: built.errors,
            build: started.elapsed(),
        })
    }

    /// Reads every backlog order once, `concurrency` at a time, and reports.
    pub(crate) async fn check(
        self,
        shared: &Arc<Shared>,
        concurrency: usize,
    ) -> anyhow::Result<BacklogReport> {
        let mut report = BacklogReport {
            requested: self.requested,
            created: self.orders.len() as u64,
            errors: self.errors.values().sum(),
            error_kinds: self.errors,
            processing_at_build: self.processing_at_build,
            build_s: self.build.as_secs_f64(),
            ..BacklogReport::default()
        };
        let orders = Arc::new(self.orders);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.min(orders.len()) {
            workers.spawn(check_worker(shared.clone(), orders.clone(), next.clone()));
        }
        while let Some(r) = workers.join_next().await {
            let part = r.context("a backlog check worker panicked")?;
            report.still_processing_at_end += part.still_processing_at_end;
            report.valid_at_end += part.valid_at_end;
            report.other_at_end += part.other_at_end;
            report.check_errors += part.check_errors;
        }
        Ok(report)
    }
}

impl BacklogReport {
    /// The report's backlog line.
    pub(crate) fn table_line(&self) -> String {
        format!(
            "backlog        {} requested, {} created ({} processing after finalize), {} failed, \
             built in {:.1} s; after the window: {} processing, {} valid, {} other ({} reads failed)",
            self.requested,
            self.created,
            self.processing_at_build,
            self.errors,
            self.build_s,
            self.still_processing_at_end,
            self.valid_at_end,
            self.other_at_end,
            self.check_errors
        )
    }
}

/// Runs backlog flows until `requested` have been claimed.
async fn build_worker(shared: Arc<Shared>, progress: Arc<Progress>, requested: u64) -> Built {
    let mut built = Built::default();
    let mut http = Http::new(&shared.tls, shared.timeout, 1);
    while progress.claimed.fetch_add(1, Ordering::SeqCst) < requested {
        if shared.connection_per_flow {
            http = Http::new(&shared.tls, shared.timeout, 1);
        }
        let n = shared.next_ident.fetch_add(1, Ordering::Relaxed);
        let ident = crate::identifier(&shared, n);
        let mut session = Session::new(http.clone(), shared.dir.clone());
        match finalize_one(&shared, &mut session, n, &ident).await {
            Ok((order, processing)) => {
                progress.created.fetch_add(1, Ordering::Relaxed);
                built.processing += u64::from(processing);
                built.orders.push(order);
            }
            Err(e) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                if progress.shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
                    eprintln!("acmeproxy-bench: backlog flow for {ident} failed: {e}");
                }
                *built.errors.entry(e.key()).or_default() += 1;
            }
        }
    }
    built
}

/// One backlog flow; the order and whether finalize answered `processing`.
async fn finalize_one(
    shared: &Shared,
    session: &mut Session,
    n: u64,
    ident: &flow::Identifier,
) -> Result<(BacklogOrder, bool), FlowError> {
    let fresh = if shared.accounts.is_empty() {
        Some(flow::new_account(session).await?)
    } else {
        None
    };
    let account = match &fresh {
        Some(a) => a,
        None => crate::shared_account(shared, n)?,
    };
    let done = flow::finalize(session, account, ident, &shared.responder, &shared.settings).await?;
    let processing = done.status() == "processing";
    Ok((
        BacklogOrder {
            url: done.order_url,
            n,
            fresh,
        },
        processing,
    ))
}

/// Reads backlog orders, one at a time, until none are left.
async fn check_worker(
    shared: Arc<Shared>,
    orders: Arc<Vec<BacklogOrder>>,
    next: Arc<AtomicUsize>,
) -> BacklogReport {
    let mut tally = BacklogReport::default();
    let http = Http::new(&shared.tls, shared.timeout, 1);
    // One session per worker: each read reuses the previous answer's nonce.
    let mut session = Session::new(http, shared.dir.clone());
    while let Some(order) = orders.get(next.fetch_add(1, Ordering::SeqCst)) {
        let status = match &order.fresh {
            Some(a) => Ok(a),
            None => crate::shared_account(&shared, order.n),
        };
        let status = match status {
            Ok(account) => flow::order_status(&mut session, account, &order.url).await,
            Err(e) => Err(e),
        };
        match status.as_deref() {
            Ok("processing") => tally.still_processing_at_end += 1,
            Ok("valid") => tally.valid_at_end += 1,
            Ok(_) => tally.other_at_end += 1,
            Err(e) => {
                tally.other_at_end += 1;
                tally.check_errors += 1;
                if tally.check_errors <= 3 {
                    eprintln!(
                        "acmeproxy-bench: reading backlog order {} failed: {e}",
                        order.url
                    );
                }
            }
        }
        session.samples.clear();
    }
    tally
}
