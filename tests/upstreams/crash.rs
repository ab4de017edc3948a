//! Crash safety of the external ACME upstream (RFC 8555 section 7.4):
//! acmeproxy is SIGKILLed after the upstream order was created
//! and before the certificate was stored; after a restart on the same data
//! directory the client's order completes, and Pebble has issued ONE
//! certificate for it, not two.
//!
//! The crash window is made deterministic without a production switch: the
//! first server runs in a child process (this test binary re-executed with
//! `--exact crash::crash_child --ignored`) whose upstream is the real
//! [`AcmeUpstream`] wrapped so that, for the client's order only, it freezes
//! at a chosen step and drops a marker file. The parent then kills it and
//! starts the real `acmeproxy` binary on the same data directory and port.
//!
//! Two windows: right after the upstream order URL was checkpointed (before
//! the upstream finalize), and right after the upstream issued (before the RA
//! stored the chain). In the second, a server that did not resume the saved
//! order would make Pebble issue a second certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acmeproxy::acme::Identifier;
use acmeproxy::app::{Overrides, StoreUpstreamState, UpstreamFactory};
use acmeproxy::config::Config;
use acmeproxy::store::Store;
use acmeproxy::upstream::acme::{AcmeUpstream, AcmeUpstreamOptions};
use acmeproxy::upstream::{
    CertificateAuthorityService, Checkpoint, IssuedChain, SignRequest, UpstreamError,
};
use async_trait::async_trait;
use instant_acme::{Account, ChallengeType, NewAccount, NewOrder, OrderStatus, RetryPolicy};
use kit::upstream::{Hook, Hooked};
use tokio_util::sync::CancellationToken;

use kit::clients::{Issued, verify_cert};
use kit::crash_support::{leaf_serial, serial_hex};
use kit::pebble::{Pebble, PebbleOptions};
use kit::{ChildGuard, Responders, free_ports, tail};

/// The name the client orders; only its order is frozen in the child.
const NAME: &str = "crash.test";
/// Bounds every wait of the parent.
const WAIT: Duration = Duration::from_secs(60);
/// The child exits by itself after this, should the parent vanish.
const CHILD_LIFETIME: Duration = Duration::from_secs(300);

const ENV_CONFIG: &str = "ACMEPROXY_CRASH_CONFIG";
const ENV_MODE: &str = "ACMEPROXY_CRASH_MODE";
const ENV_MARKER: &str = "ACMEPROXY_CRASH_MARKER";

/// Where the child freezes for the client's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// Upstream order created and its URL saved; upstream finalize not sent.
    AfterCheckpoint,
    /// The upstream issued the certificate; the RA has not stored it.
    AfterIssue,
}

impl Window {
    fn as_str(self) -> &'static str {
        match self {
            Self::AfterCheckpoint => "after-checkpoint",
            Self::AfterIssue => "after-issue",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::AfterCheckpoint, Self::AfterIssue]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_upstream_order_saved_resumes_that_order() {
    crash_and_restart(Window::AfterCheckpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_upstream_issued_does_not_issue_again() {
    crash_and_restart(Window::AfterIssue).await;
}

/// The first server, run by the parent as a child process.
#[test]
#[ignore = "child process of the crash tests"]
fn crash_child() {
    let (Some(config), Some(mode), Some(marker)) = (
        std::env::var_os(ENV_CONFIG),
        std::env::var(ENV_MODE).ok(),
        std::env::var_os(ENV_MARKER),
    ) else {
        eprintln!("crash_child runs only as a child of the crash tests");
        return;
    };
    let window = Window::parse(&mode).expect("unknown crash window");
    serve_hooked(
        Path::new(&config),
        Freezing {
            window,
            marker: PathBuf::from(marker),
        },
    );
}

/// A crash test's first server: `acmeproxy` on the ca.json at `config`
/// (an externalcas upstream) with `hook` around its upstream, serving
/// until the parent kills it (or [`CHILD_LIFETIME`] ends).
pub(crate) fn serve_hooked(config: &Path, hook: impl Hook + 'static) {
    let hook = Arc::new(hook);
    let (cfg, _) = Config::load(config).unwrap();
    acmeproxy::telemetry::init(false);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
        let acmeproxy::config::Upstream::ExternalCas(ext) = &cfg.upstream else {
            panic!("the crash tests run an externalcas upstream");
        };
        let opts = AcmeUpstreamOptions::from(ext);
        let factory: UpstreamFactory = Box::new(move |store: Arc<dyn Store>| {
            let state = Arc::new(StoreUpstreamState::new(store));
            let inner = AcmeUpstream::new(opts, state).unwrap();
            Arc::new(Hooked { inner, hook }) as Arc<dyn CertificateAuthorityService>
        });
        let shutdown = CancellationToken::new();
        let server = acmeproxy::app::start_with(
            cfg,
            listener,
            shutdown.clone(),
            Overrides {
                upstream_factory: Some(factory),
                ..Overrides::default()
            },
        )
        .await
        .unwrap();
        println!("crash child serving on {}", server.addr);
        tokio::time::sleep(CHILD_LIFETIME).await;
        shutdown.cancel();
    });
}

/// The real upstream, frozen at `window` for the client's order.
struct Freezing {
    window: Window,
    marker: PathBuf,
}

#[async_trait]
impl Hook for Freezing {
    async fn create_certificate(
        &self,
        inner: &dyn CertificateAuthorityService,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        // The RA's own TLS certificate (and anything else) passes through.
        if !req.identifiers.contains(&Identifier::Dns(NAME.to_owned())) {
            return inner.create_certificate(req, checkpoint).await;
        }
        match self.window {
            Window::AfterCheckpoint => {
                let freezing = FreezingCheckpoint {
                    real: checkpoint,
                    marker: &self.marker,
                };
                inner.create_certificate(req, &freezing).await
            }
            Window::AfterIssue => {
                let chain = inner.create_certificate(req, checkpoint).await?;
                write_marker(&self.marker, &chain.to_pem());
                std::future::pending().await
            }
        }
    }
}

/// Saves through the real checkpoint, then drops the marker (holding the
/// saved state: the upstream order URL) and never returns.
struct FreezingCheckpoint<'a> {
    real: &'a dyn Checkpoint,
    marker: &'a Path,
}

#[async_trait]
impl Checkpoint for FreezingCheckpoint<'_> {
    async fn save(&self, state: &str) -> Result<(), UpstreamError> {
        self.real.save(state).await?;
        write_marker(self.marker, state);
        std::future::pending().await
    }
}

/// Writes the marker atomically (the parent polls for it).
fn write_marker(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

async fn crash_and_restart(window: Window) {
    if !Pebble::available() || kit::find_in_path("openssl").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble or openssl is not installed (tests/interop/install-clients.sh installs them)"
        );
        eprintln!("SKIP: pebble or openssl is not installed");
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-upcrash-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    if let Err(failure) = scenario(&pebble, window, tmp.path()).await {
        let kept = tmp.keep();
        for log in ["child.log", "server.log"] {
            eprintln!("{}", tail(&kept.join(log), 80));
        }
        eprintln!("    --- pebble ---\n{}", pebble.log());
        panic!(
            "crash {} failed: {failure}\n(state kept in {})",
            window.as_str(),
            kept.display()
        );
    }
    println!(
        "crash {}: whole scenario {:.2}s",
        window.as_str(),
        started.elapsed().as_secs_f64()
    );
}

async fn scenario(pebble: &Pebble, window: Window, tmp: &Path) -> Result<(), String> {
    let root = tmp.join("pebble-root.pem");
    fs::write(&root, pebble.root_pem().await).map_err(|e| e.to_string())?;
    let responders = Responders::start().await;
    let [port] = free_ports().map_err(|e| e.to_string())?;
    let config_path = tmp.join("ca.json");
    kit::CaJson::new(tmp.join("data"))
        .port(port)
        .db(Some("sled"))
        .authority(pebble.authority_json())
        .validation(
            responders.http_port(),
            responders.tls_alpn_port(),
            responders.dns_addr(),
            5,
        )
        .write(&config_path)?;
    let directory_url = format!("https://127.0.0.1:{port}/acme/acme/directory");
    let marker = tmp.join("frozen");

    // 1. The first server, in a child process that freezes in the window.
    let t = Instant::now();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", &kit::test_name(module_path!(), "crash_child")])
        .args(["--ignored", "--nocapture"])
        .env(ENV_CONFIG, &config_path)
        .env(ENV_MODE, window.as_str())
        .env(ENV_MARKER, &marker);
    let mut child = ChildGuard::spawn("the crash child", &mut cmd, &tmp.join("child.log"))?;
    wait_ready(&directory_url, &root, || child.check_running()).await?;
    let first_start = t.elapsed();
    expect_issued(
        pebble,
        1,
        "after the first start (the RA's TLS certificate)",
    )?;

    // 2. A client order, finalized: the child freezes on it.
    let (account, _) = Account::builder_with_root(&root)
        .map_err(|e| e.to_string())?
        .create(
            &NewAccount {
                contact: &["mailto:crash@example.org"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account: {e}"))?;
    let ids = [instant_acme::Identifier::Dns(NAME.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let order_url = order.url().to_owned();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| e.to_string())?;
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or("no http-01 challenge")?;
        responders.set_http01(&ch.token, ch.key_authorization().as_str());
        ch.set_ready().await.map_err(|e| e.to_string())?;
    }
    let ready = order
        .poll_ready(&RetryPolicy::new().timeout(WAIT))
        .await
        .map_err(|e| format!("order not ready: {e}"))?;
    if ready != OrderStatus::Ready {
        return Err(format!("order is {ready:?}, not ready"));
    }
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let deadline = Instant::now() + WAIT;
    while !marker.exists() {
        child.check_running()?;
        if Instant::now() > deadline {
            return Err("the child never reached the crash window".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frozen = fs::read_to_string(&marker).map_err(|e| e.to_string())?;
    let status = order.refresh().await.map_err(|e| e.to_string())?.status;
    if status != OrderStatus::Processing {
        return Err(format!("order is {status:?} in the crash window"));
    }
    let issued_before = match window {
        Window::AfterCheckpoint => 1,
        Window::AfterIssue => 2,
    };
    expect_issued(pebble, issued_before, "in the crash window")?;

    // 3. SIGKILL, then the real binary on the same data directory and port.
    child.sigkill();
    let t = Instant::now();
    let mut cmd = Command::new(kit::acmeproxy_bin());
    cmd.arg("serve").arg(&config_path);
    let mut server = ChildGuard::spawn("acmeproxy", &mut cmd, &tmp.join("server.log"))?;
    wait_ready(&directory_url, &root, || server.check_running()).await?;
    let restart = t.elapsed();
    // The stored TLS certificate is reused: no issuance at start-up.
    expect_issued(pebble, issued_before, "after the restart")?;

    // 4. The same order (same URL) completes.
    let mut order = account
        .order(order_url.clone())
        .await
        .map_err(|e| format!("fetching the order after the restart: {e}"))?;
    let chain = poll_certificate(&mut order).await?;
    let completed = t.elapsed();
    let issued = Issued {
        fullchain: tmp.join("crash-fullchain.pem"),
        key: tmp.join("crash-key.pem"),
    };
    fs::write(&issued.fullchain, &chain).map_err(|e| e.to_string())?;
    fs::write(&issued.key, key).map_err(|e| e.to_string())?;
    let facts = verify_cert(&issued, NAME, &root)?;

    // 5. Pebble issued exactly two certificates: the RA's and this one.
    expect_issued(pebble, 2, "in total")?;
    let all = pebble.issued();
    let serial = serial_hex(&facts.serial);
    let Some((_, pebble_order)) = all.iter().find(|(s, _)| serial_hex(s) == serial) else {
        return Err(format!("pebble never logged serial {serial}: {all:?}"));
    };
    let server_log = fs::read_to_string(tmp.join("server.log")).unwrap_or_default();
    match window {
        Window::AfterCheckpoint => {
            // The restarted server resumed the checkpointed upstream order.
            if !frozen.ends_with(&format!("/{pebble_order}")) {
                return Err(format!(
                    "pebble issued for order {pebble_order}, the checkpoint saved {frozen}"
                ));
            }
            if !server_log.contains("resuming the upstream order") {
                return Err("the restarted server did not resume the upstream order".into());
            }
        }
        Window::AfterIssue => {
            // It downloaded the certificate Pebble had already issued.
            let before = leaf_serial(&frozen)?;
            if before != serial {
                return Err(format!(
                    "the RA stored serial {serial}, pebble had issued {before} before the crash"
                ));
            }
        }
    }
    if pebble.orders_created() != 2 {
        return Err(format!(
            "pebble created {} orders, expected 2 (the RA's TLS certificate and the client's)",
            pebble.orders_created()
        ));
    }
    println!(
        "crash {}: first start {:.2}s, restart until ready {:.2}s, restart until the order was \
         valid {:.2}s; serial {serial} from pebble order {pebble_order}",
        window.as_str(),
        first_start.as_secs_f64(),
        restart.as_secs_f64(),
        completed.as_secs_f64()
    );
    drop(server);
    Ok(())
}

/// Polls the order until it is valid and downloads the chain, tolerating
/// transient errors (a stale connection to the killed server), within [`WAIT`].
async fn poll_certificate(order: &mut instant_acme::Order) -> Result<String, String> {
    let deadline = Instant::now() + WAIT;
    let mut last = String::from("not polled");
    while Instant::now() < deadline {
        match order.refresh().await {
            Ok(state) if state.status == OrderStatus::Valid => {
                return order
                    .certificate()
                    .await
                    .map_err(|e| format!("download: {e}"))?
                    .ok_or_else(|| "no certificate for a valid order".to_owned());
            }
            Ok(state) if state.status == OrderStatus::Processing => {
                last = "processing".into();
            }
            Ok(state) => {
                return Err(format!(
                    "order became {:?}: {:?}",
                    state.status, state.error
                ));
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "the order did not become valid in {WAIT:?}: {last}"
    ))
}

/// Polls the directory over HTTPS trusting only Pebble's root, within [`WAIT`].
async fn wait_ready(
    url: &str,
    root: &Path,
    alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    kit::wait_https(url, root, 200, WAIT, alive).await
}

fn expect_issued(pebble: &Pebble, want: usize, when: &str) -> Result<(), String> {
    let issued = pebble.issued();
    if issued.len() == want {
        Ok(())
    } else {
        Err(format!(
            "pebble issued {} certificates {when}, expected {want}: {issued:?}",
            issued.len()
        ))
    }
}
