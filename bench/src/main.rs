//! `acmeproxy-bench`: a full-flow ACME (RFC 8555) load generator. Every
//! iteration registers an account (or reuses one of `--accounts`), orders a
//! certificate for a distinct identifier, answers http-01 from its own
//! responder, finalizes with a fresh CSR and downloads the chain. It talks
//! only to the directory URL, so it measures acmeproxy, Pebble or step-ca
//! alike, and reports throughput, per-request latency percentiles, errors by
//! problem type, and the server's CPU and memory from `/proc`. With
//! `--backlog N` it first leaves N orders in `processing` (slow upstream), and
//! with `--finalize-nowait` flows end at a `processing` finalize answer.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7>

mod backlog;
mod client;
mod flow;
mod nonceflood;
mod pacer;
mod procstat;
mod responder;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ring::rand::SecureRandom;
use tokio::task::JoinSet;

use crate::backlog::Backlog;
use crate::client::{Directory, FlowError, Http, Session};
use crate::flow::{Account, FlowSettings, Identifier, KeyType, Outcome};
use crate::procstat::ProcSample;
use crate::responder::Responder;
use crate::stats::{ProcReport, Report, Stats};

const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;
/// Failed flows whose details are printed to stderr.
const ERRORS_SHOWN: u64 = 10;
/// Distinct loopback identifiers (see [`Identifier::nth`]).
const IP_SPACE: u64 = 254 * 254 * 254;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "acmeproxy-bench",
    version,
    about = "Full-flow ACME load generator: account, order, http-01, finalize, download"
)]
struct Args {
    /// ACME directory URL.
    #[arg(long)]
    directory: String,
    /// Flows in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measure for this many seconds (default 10 unless --count is given).
    #[arg(long, conflicts_with = "count")]
    duration: Option<f64>,
    /// Measure exactly this many flows instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Run flows for this many seconds before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// 0: a new account in every flow; N: register N accounts first and reuse them.
    #[arg(long, default_value_t = 0)]
    accounts: usize,
    /// Key type of the certificate requested (the CSR key).
    #[arg(long, value_enum, default_value_t = KeyType::Ec256)]
    key_type: KeyType,
    /// PEM bundle of the roots that the server's HTTPS certificate leads to
    /// (default: the system roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Where the http-01 responder listens; the server's http-01 port must be
    /// this port. IP identifiers need 0.0.0.0 to answer for all of 127/8.
    #[arg(long, default_value = "0.0.0.0:5002")]
    http01_listen: SocketAddr,
    /// Order DNS names `b<N>.<SUFFIX>` instead of loopback IP identifiers; the
    /// server's resolver must map them to the responder.
    #[arg(long)]
    names_suffix: Option<String>,
    /// First identifier index (default: random, so reruns against a
    /// persistent server never reuse identifiers).
    #[arg(long)]
    ident_offset: Option<u64>,
    /// PID of the server process, for its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sleep between order polls, in milliseconds (the first poll is immediate;
    /// Retry-After is not honoured).
    #[arg(long, default_value_t = 20)]
    poll_interval_ms: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Open a new HTTPS connection for every flow instead of one kept-alive
    /// connection per worker.
    #[arg(long)]
    connection_per_flow: bool,
    /// Stop the run after this many failed flows (warm-up included).
    #[arg(long)]
    max_errors: Option<u64>,
    /// Before the warm-up, drive this many flows up to their finalize answer
    /// and leave them (in `processing` on a slow upstream); read them once
    /// after the window. Their requests are not measured.
    #[arg(long, default_value_t = 0)]
    backlog: u64,
    /// End a flow when finalize answers `processing`: no polling, no
    /// download. A `valid` answer still downloads the certificate.
    #[arg(long)]
    finalize_nowait: bool,
    /// Start flows at this many per second (open loop), at most
    /// --concurrency in flight, instead of each worker starting its next flow
    /// at once (closed loop, the default).
    #[arg(long)]
    rate: Option<f64>,
    /// Instead of flows: ask newNonce N times, never using the nonces, and
    /// report newNonce latency and the server's RSS (--server-pid) at 0, N/4,
    /// N/2 and N nonces issued.
    #[arg(long, value_name = "N")]
    nonce_flood: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What the workers share.
struct Shared {
    tls: rustls::ClientConfig,
    dir: Arc<Directory>,
    responder: Arc<Responder>,
    /// Empty: every flow registers its own account.
    accounts: Vec<Account>,
    settings: FlowSettings,
    names_suffix: Option<String>,
    timeout: Duration,
    connection_per_flow: bool,
    count: Option<u64>,
    max_errors: Option<u64>,
    failures: AtomicU64,
    next_ident: AtomicU64,
    phase: AtomicU8,
    measured_started: AtomicU64,
    completed_in_window: AtomicU64,
    failed_in_window: AtomicU64,
    warmup_errors: AtomicU64,
    errors_shown: AtomicU64,
    /// `--rate`: the start schedule.
    pacer: Option<pacer::Pacer>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("acmeproxy-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acmeproxy-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of flows per second");
    }
    let tls = tls_config(args.ca_file.as_deref())?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let (responder, listen) = Responder::start(args.http01_listen)
        .await
        .with_context(|| format!("http-01 responder on {}", args.http01_listen))?;
    if args.names_suffix.is_none() && !listen.ip().is_unspecified() {
        eprintln!(
            "acmeproxy-bench: warning: the responder listens on {listen} only; validation of \
             127.x.y.z identifiers needs --http01-listen 0.0.0.0:{}",
            listen.port()
        );
    }
    let setup = Http::new(&tls, timeout, args.concurrency);
    let dir = Arc::new(
        setup
            .directory(&args.directory)
            .await
            .with_context(|| format!("fetching the directory {}", args.directory))?,
    );
    if let Some(n) = args.nonce_flood {
        let points = nonceflood::run(
            &tls,
            timeout,
            &dir.new_nonce,
            n,
            args.concurrency,
            args.server_pid,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&points)?);
        } else {
            print!("{}", nonceflood::table(&points));
        }
        return Ok(());
    }
    let accounts = register_accounts(&setup, &dir, args.accounts, args.concurrency).await?;
    let offset = match args.ident_offset {
        Some(o) => o,
        None => random_offset()?,
    };
    let settings = FlowSettings {
        key_type: args.key_type,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        poll_timeout: Duration::from_secs(30),
        finalize_nowait: args.finalize_nowait,
    };
    let shared = Arc::new(Shared {
        tls,
        dir,
        responder: responder.clone(),
        accounts,
        settings,
        names_suffix: args.names_suffix.clone(),
        timeout,
        connection_per_flow: args.connection_per_flow,
        count: args.count,
        max_errors: args.max_errors,
        failures: AtomicU64::new(0),
        next_ident: AtomicU64::new(offset),
        phase: AtomicU8::new(if args.warmup > 0.0 { WARMUP } else { MEASURING }),
        measured_started: AtomicU64::new(0),
        completed_in_window: AtomicU64::new(0),
        failed_in_window: AtomicU64::new(0),
        warmup_errors: AtomicU64::new(0),
        errors_shown: AtomicU64::new(0),
        pacer: args.rate.map(pacer::Pacer::new),
    });

    let server_pid = args.server_pid.map(|p| p.to_string());
    let server_idle = server_pid.as_deref().map(procstat::sample).transpose()?;
    let generator_idle = procstat::sample("self")?;

    let backlog = if args.backlog > 0 {
        eprintln!(
            "acmeproxy-bench: building a backlog of {} orders",
            args.backlog
        );
        Some(Backlog::build(&shared, args.backlog, args.concurrency).await?)
    } else {
        None
    };

    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(worker(shared.clone()));
    }
    if args.warmup > 0.0 {
        sleep_unless_done(
            &shared,
            Instant::now() + Duration::from_secs_f64(args.warmup),
        )
        .await;
        // Unless --max-errors already ended the run.
        let _ =
            shared
                .phase
                .compare_exchange(WARMUP, MEASURING, Ordering::SeqCst, Ordering::SeqCst);
    }
    let t0 = Instant::now();
    let server_t0 = server_pid.as_deref().map(procstat::sample).transpose()?;
    let generator_t0 = procstat::sample("self")?;

    let (t1, server_t1, generator_t1, stats) = match args.count {
        Some(_) => {
            let stats = join(&mut workers).await?;
            let t1 = t0.elapsed();
            let server_t1 = server_pid.as_deref().map(procstat::sample).transpose()?;
            (t1, server_t1, procstat::sample("self")?, stats)
        }
        None => {
            let length = Duration::from_secs_f64(args.duration.unwrap_or(10.0).max(0.1));
            progress(&shared, t0, length).await;
            let t1 = t0.elapsed();
            let server_t1 = server_pid.as_deref().map(procstat::sample).transpose()?;
            let generator_t1 = procstat::sample("self")?;
            shared.phase.store(DONE, Ordering::SeqCst);
            (t1, server_t1, generator_t1, join(&mut workers).await?)
        }
    };
    shared.phase.store(DONE, Ordering::SeqCst);
    let backlog = match backlog {
        Some(b) => Some(b.check(&shared, args.concurrency).await?),
        None => None,
    };

    let mut report = report(
        &args,
        &shared,
        stats,
        t1,
        offset,
        [server_idle, server_t0, server_t1],
        [generator_idle, generator_t0, generator_t1],
    );
    report.backlog = backlog;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Runs flows until the phase is [`DONE`] (or `count` measured flows started).
async fn worker(shared: Arc<Shared>) -> Stats {
    let mut stats = Stats::default();
    let mut http = Http::new(&shared.tls, shared.timeout, 1);
    loop {
        let phase = shared.phase.load(Ordering::SeqCst);
        if phase == DONE {
            break;
        }
        if let Some(count) = shared.count.filter(|_| phase == MEASURING)
            && shared.measured_started.fetch_add(1, Ordering::SeqCst) >= count
        {
            break;
        }
        if let Some(p) = &shared.pacer {
            p.wait_turn().await;
            if shared.phase.load(Ordering::SeqCst) == DONE {
                break;
            }
        }
        if shared.connection_per_flow {
            http = Http::new(&shared.tls, shared.timeout, 1);
        }
        let n = shared.next_ident.fetch_add(1, Ordering::Relaxed);
        let ident = identifier(&shared, n);
        let started = Instant::now();
        let mut session = Session::new(http.clone(), shared.dir.clone());
        let result = one_flow(&shared, &mut session, n, &ident).await;
        let took = started.elapsed();
        let in_window = shared.phase.load(Ordering::SeqCst) == MEASURING;
        if let Err(e) = &result {
            let failures = shared.failures.fetch_add(1, Ordering::SeqCst) + 1;
            if shared.max_errors.is_some_and(|max| failures >= max) {
                shared.phase.store(DONE, Ordering::SeqCst);
            }
            if shared.errors_shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
                eprintln!("acmeproxy-bench: flow for {ident} failed: {e}");
            }
            if phase != MEASURING {
                shared.warmup_errors.fetch_add(1, Ordering::Relaxed);
            } else if in_window {
                shared.failed_in_window.fetch_add(1, Ordering::Relaxed);
            }
        } else if in_window {
            shared.completed_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if phase == MEASURING {
            stats.add_samples(&session.samples);
            stats.bad_nonce_retries += session.bad_nonce_retries;
            match result {
                Ok(outcome) => {
                    stats.add_ok(took);
                    stats.order_polls += u64::from(outcome.polls);
                    stats.ended_processing += u64::from(outcome.ended_processing);
                }
                Err(e) => stats.add_error(e.key()),
            }
        }
    }
    stats
}

async fn one_flow(
    shared: &Shared,
    session: &mut Session,
    n: u64,
    ident: &Identifier,
) -> Result<Outcome, FlowError> {
    let fresh;
    let account = if shared.accounts.is_empty() {
        fresh = flow::new_account(session).await?;
        &fresh
    } else {
        shared_account(shared, n)?
    };
    flow::issue(session, account, ident, &shared.responder, &shared.settings).await
}

/// The identifier of flow `n`: `b<n>.<suffix>` or a loopback address.
fn identifier(shared: &Shared, n: u64) -> Identifier {
    match &shared.names_suffix {
        Some(s) => Identifier::nth(n, Some(s)),
        None => Identifier::nth(n % IP_SPACE, None),
    }
}

/// The `--accounts` account that flow `n` uses.
fn shared_account(shared: &Shared, n: u64) -> Result<&Account, FlowError> {
    let len = shared.accounts.len().max(1);
    let i = usize::try_from(n % len as u64).unwrap_or(0);
    shared
        .accounts
        .get(i)
        .ok_or_else(|| FlowError::Protocol("no account".to_owned()))
}

/// Sleeps through the measured window (or until --max-errors ends the run),
/// printing progress to stderr every 10 s.
async fn progress(shared: &Shared, t0: Instant, length: Duration) {
    let step = Duration::from_secs(10);
    let mut next = step;
    while next < length {
        if !sleep_unless_done(shared, t0 + next).await {
            return;
        }
        eprintln!(
            "acmeproxy-bench: {:>4}s {} flows, {} failed",
            next.as_secs(),
            shared.completed_in_window.load(Ordering::Relaxed),
            shared.failed_in_window.load(Ordering::Relaxed)
        );
        next += step;
    }
    sleep_unless_done(shared, t0 + length).await;
}

/// Sleeps until `until`; false if the run ended first.
async fn sleep_unless_done(shared: &Shared, until: Instant) -> bool {
    let tick = Duration::from_millis(200);
    loop {
        if shared.phase.load(Ordering::SeqCst) == DONE {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(tick)).await;
    }
}

async fn join(workers: &mut JoinSet<Stats>) -> anyhow::Result<Stats> {
    let mut total = Stats::default();
    while let Some(r) = workers.join_next().await {
        total.merge(r.context("a worker panicked")?);
    }
    Ok(total)
}

/// Registers `n` accounts, `parallel` at a time.
async fn register_accounts(
    http: &Http,
    dir: &Arc<Directory>,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Account>> {
    let mut accounts = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    for i in 0..n {
        if tasks.len() >= parallel
            && let Some(r) = tasks.join_next().await
        {
            accounts.push(r.context("account task")??);
        }
        let (http, dir) = (http.clone(), dir.clone());
        tasks.spawn(async move {
            let mut session = Session::new(http, dir);
            flow::new_account(&mut session)
                .await
                .with_context(|| format!("registering account {i}"))
        });
    }
    while let Some(r) = tasks.join_next().await {
        accounts.push(r.context("account task")??);
    }
    Ok(accounts)
}

/// A client TLS configuration trusting `ca_file`, or the system roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let blocks =
                pem::parse_many(&text).with_context(|| format!("parsing {}", path.display()))?;
            for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
                roots
                    .add(block.contents().to_vec().into())
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no CERTIFICATE block", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system roots found; give --ca-file");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn random_offset() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(u64::from_le_bytes(b) % IP_SPACE)
}

fn report(
    args: &Args,
    shared: &Shared,
    mut stats: Stats,
    window: Duration,
    offset: u64,
    server: [Option<ProcSample>; 3],
    generator: [ProcSample; 3],
) -> Report {
    let completed = shared.completed_in_window.load(Ordering::SeqCst);
    let secs = window.as_secs_f64().max(1e-9);
    let flows = (stats.ok + stats.failed).max(1) as f64;
    let proc_report = |idle: ProcSample, t0: ProcSample, t1: ProcSample| {
        let cpu = t1.cpu.saturating_sub(t0.cpu).as_secs_f64();
        ProcReport {
            cpu_s: cpu,
            cpu_ms_per_flow: if completed == 0 {
                0.0
            } else {
                cpu * 1000.0 / completed as f64
            },
            rss_start_kb: idle.rss_kb,
            rss_end_kb: t1.rss_kb,
            rss_peak_kb: t1.hwm_kb,
        }
    };
    let server = match server {
        [Some(idle), Some(t0), Some(t1)] => Some(proc_report(idle, t0, t1)),
        _ => None,
    };
    let [g_idle, g0, g1] = generator;
    let settings = serde_json::json!({
        "concurrency": args.concurrency,
        "duration_s": args.count.is_none().then(|| args.duration.unwrap_or(10.0)),
        "count": args.count,
        "warmup_s": args.warmup,
        "accounts": args.accounts,
        "key_type": args.key_type.name(),
        "identifiers": match &args.names_suffix {
            Some(s) => format!("dns b<N>.{s}"),
            None => "ip 127.x.y.z".to_owned(),
        },
        "ident_offset": offset,
        "poll_interval_ms": args.poll_interval_ms,
        "max_errors": args.max_errors,
        "backlog": args.backlog,
        "finalize_nowait": args.finalize_nowait,
        "rate": args.rate,
        "connection": if args.connection_per_flow { "per-flow" } else { "keep-alive per worker" },
        "http01_listen": args.http01_listen.to_string(),
        "client": "acmeproxy-bench (hand-written, HTTP/1.1, ES256 account keys)",
    });
    Report {
        directory: args.directory.clone(),
        settings,
        window_s: secs,
        flows_per_sec: completed as f64 / secs,
        flows_completed_in_window: completed,
        flows_ok: stats.ok,
        flows_failed: stats.failed,
        errors_total: stats.failed,
        errors: stats.errors.clone(),
        warmup_errors: shared.warmup_errors.load(Ordering::SeqCst),
        stopped_by_errors: args
            .max_errors
            .is_some_and(|max| shared.failures.load(Ordering::SeqCst) >= max),
        bad_nonce_retries: stats.bad_nonce_retries,
        requests_per_flow: stats.request_count() as f64 / flows,
        order_polls_per_flow: stats.order_polls as f64 / stats.ok.max(1) as f64,
        flows_ended_processing: stats.ended_processing,
        late_starts: shared.pacer.as_ref().map(pacer::Pacer::late_starts),
        validations_served: shared.responder.served(),
        validations_unknown_token: shared.responder.unknown(),
        latency_ms: stats.latencies(),
        server,
        generator: proc_report(g_idle, g0, g1),
        backlog: None,
    }
}
