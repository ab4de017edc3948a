//! Crash safety: what the server acknowledged survives a
//! SIGKILL of a real process, a finalize interrupted between the `processing`
//! order (RFC 8555 §7.4) and the stored certificate is completed after a
//! restart, and a graceful stop (SIGTERM) answers the request in flight, exits
//! 0 and keeps the data.
//!
//! The first test kills a server running in a child process: this test binary
//! re-executed to run only [`crash_child_server`], whose upstream signs the
//! server's own TLS certificate and then blocks forever, so the kill lands
//! deterministically inside the finalize window without any switch in the
//! server. The other tests run the real `acmeproxy` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use acmeproxy::app::{self, Overrides};
use acmeproxy::config::Config;
use acmeproxy::upstream::softcas::{SoftCas, SoftCasOptions};
use acmeproxy::upstream::{
    CertificateAuthorityService, Checkpoint, IssuedChain, SignRequest, UpstreamError,
};
use async_trait::async_trait;
use instant_acme::{
    Account, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy, RevocationReason,
    RevocationRequest,
};
use kit::upstream::{Hook, Hooked};
use tokio_util::sync::CancellationToken;

use kit::Responders;
use kit::crash_support::{
    Binary, CALL_LIMIT, START_LIMIT, SlowHttp01, assert_problem, assert_unauthorized,
    authorize_http01, bind_loopback, bounded, existing_account, finalize_and_download, issue,
    leaf_der, leaf_sans, new_account, served_leaf, server_config, temp_dir, verify_chain,
    wait_for_file, write_atomic,
};

/// The test that runs the child server.
const CHILD_TEST: &str = "crash_child_server";
/// Environment of the child: its configuration file, where it writes its
/// port, and the marker it writes when the upstream call begins to block.
const ENV_CONFIG: &str = "ACMEPROXY_CRASH_CONFIG";
const ENV_PORT_FILE: &str = "ACMEPROXY_CRASH_PORT_FILE";
const ENV_MARKER: &str = "ACMEPROXY_CRASH_MARKER";
/// A child that nobody killed gives up after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(300);
/// How long a resumed finalize may take after the restart.
const RESUME_LIMIT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finalize_survives_sigkill_between_finalize_and_completion() {
    let t0 = Instant::now();
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    let responders = Responders::start().await;
    let config = server_config(
        "127.0.0.1:0",
        &data,
        responders.http_port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    let config_path = tmp.path().join("ca.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let port_file = tmp.path().join("port");
    let marker = tmp.path().join("upstream-blocked");

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", &kit::test_name(module_path!(), CHILD_TEST)])
        .args(["--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(ENV_CONFIG, &config_path)
        .env(ENV_PORT_FILE, &port_file)
        .env(ENV_MARKER, &marker);
    let log = tmp.path().join("child.log");
    let mut child =
        kit::ChildGuard::spawn_holding_stdin("crash child server", &mut cmd, &log).unwrap();
    let port_text = wait_for_file(&port_file, START_LIMIT, &mut child).await;
    let port: u16 = String::from_utf8(port_text)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let child_up = t0.elapsed();
    let root_file = data.join("softcas/root.crt");
    let root_pem = std::fs::read(&root_file).unwrap();
    let directory_url = format!("https://127.0.0.1:{port}/acme/acme/directory");

    let name = "crash.test";
    let (_, account, credentials) = new_account(&root_file, &directory_url).await;
    let credentials = serde_json::to_string(&credentials).unwrap();
    let ids = [Identifier::Dns(name.into())];
    let mut order = bounded(
        "newOrder",
        CALL_LIMIT,
        account.new_order(&NewOrder::new(&ids)),
    )
    .await
    .unwrap();
    authorize_http01(&mut order, |token, key_auth| {
        responders.set_http01(token, key_auth);
    })
    .await;
    // finalize answers once the order is `processing` (after its short wait
    // for the upstream, which never answers); the certificate is not polled.
    bounded("finalize", CALL_LIMIT, order.finalize())
        .await
        .unwrap();
    assert_eq!(order.state().status, OrderStatus::Processing);
    let order_url = order.url().to_owned();
    let blocked = wait_for_file(&marker, CALL_LIMIT, &mut child).await;
    assert!(
        String::from_utf8_lossy(&blocked).contains(name),
        "the blocked upstream call is for another request: {}",
        String::from_utf8_lossy(&blocked)
    );
    let state = bounded("order refresh", CALL_LIMIT, order.refresh())
        .await
        .unwrap();
    assert_eq!(state.status, OrderStatus::Processing);
    assert!(state.certificate.is_none());

    let status = child.sigkill();
    assert_eq!(status.signal(), Some(9), "the child died of SIGKILL");
    let killed_at = t0.elapsed();

    // Restart in this process, with the real softcas, on the same data
    // directory and port (so the order URL stays the same).
    let (cfg, _) = Config::load(&config_path).unwrap();
    acmeproxy::telemetry::init(false);
    let listener = bind_loopback(port, Duration::from_secs(10)).await;
    let shutdown = CancellationToken::new();
    let _stop_on_failure = shutdown.clone().drop_guard();
    let restart = Instant::now();
    let server = bounded(
        "in-process restart",
        START_LIMIT,
        app::start(cfg, listener, shutdown.clone()),
    )
    .await
    .unwrap();
    let account = bounded(
        "restore the account",
        CALL_LIMIT,
        Account::builder_with_root(&root_file)
            .unwrap()
            .from_credentials(serde_json::from_str(&credentials).unwrap()),
    )
    .await
    .unwrap();
    let mut order = bounded("fetch the order", CALL_LIMIT, account.order(order_url))
        .await
        .unwrap();
    let deadline = Instant::now() + RESUME_LIMIT;
    loop {
        let state = bounded("order refresh", CALL_LIMIT, order.refresh())
            .await
            .unwrap();
        match state.status {
            OrderStatus::Valid => break,
            OrderStatus::Processing => {}
            other => panic!("the order became {other:?}: {:?}", state.error),
        }
        assert!(
            Instant::now() < deadline,
            "the order is still processing {RESUME_LIMIT:?} after the restart: the finalize job was not resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_in = restart.elapsed();
    let chain = bounded("certificate download", CALL_LIMIT, order.certificate())
        .await
        .unwrap()
        .expect("a valid order has a certificate");
    assert_eq!(leaf_sans(&chain), vec![name]);
    verify_chain(&chain, &root_pem);
    // One certificate, issued once, and the job is gone.
    let ra = server.authority();
    assert_eq!(ra.admin_certificates(None).await.unwrap().len(), 1);
    assert_eq!(ra.finalize_backlog().await.unwrap(), 0);

    shutdown.cancel();
    bounded("graceful stop", STOP_LIMIT, server.wait())
        .await
        .unwrap();
    println!(
        "crash/finalize: child up after {:.2}s, SIGKILL at {:.2}s, order valid {:.2}s after the restart began, total {:.2}s",
        child_up.as_secs_f64(),
        killed_at.as_secs_f64(),
        resumed_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_sigkill() {
    let t0 = Instant::now();
    let tmp = temp_dir();
    let responders = Responders::start().await;
    let binary = Binary::new(
        tmp.path(),
        responders.http_port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    let mut server = binary.start().await;
    let root_pem = std::fs::read(&binary.root_file).unwrap();
    let tls_file = binary.data.join("tls/server.crt");
    let tls_before = std::fs::read(&tls_file).unwrap();
    let served_before = served_leaf(binary.port, &root_pem).await;
    assert_eq!(
        served_before,
        ::pem::parse(&tls_before).unwrap().contents(),
        "the server presents the certificate in {}",
        tls_file.display()
    );

    let serve = |token: &str, key_auth: &str| responders.set_http01(token, key_auth);
    let (key_a, account_a, _) = new_account(&binary.root_file, &binary.directory_url).await;
    let (key_b, account_b, credentials_b) =
        new_account(&binary.root_file, &binary.directory_url).await;
    let credentials_b = serde_json::to_string(&credentials_b).unwrap();
    let kept = issue(&account_a, "kept.crash.test", serve).await;
    let revoked = issue(&account_a, "revoked.crash.test", serve).await;
    let pending_ids = [Identifier::Dns("pending.crash.test".into())];
    let pending = bounded(
        "newOrder",
        CALL_LIMIT,
        account_a.new_order(&NewOrder::new(&pending_ids)),
    )
    .await
    .unwrap();
    let pending_url = pending.url().to_owned();
    let revoked_leaf = leaf_der(&revoked.chain);
    bounded(
        "revokeCert",
        CALL_LIMIT,
        account_a.revoke(&RevocationRequest {
            certificate: &revoked_leaf,
            reason: Some(RevocationReason::KeyCompromise),
        }),
    )
    .await
    .unwrap();
    let id_a = account_a.id().to_owned();
    let id_b = account_b.id().to_owned();
    bounded("deactivate", CALL_LIMIT, account_b.deactivate())
        .await
        .unwrap();
    // The last write was acknowledged: kill at once.
    let status = server.sigkill();
    assert_eq!(status.signal(), Some(9));
    let killed_at = t0.elapsed();

    let restart = Instant::now();
    let _server = binary.start().await;
    let restarted_in = restart.elapsed();
    assert_eq!(
        std::fs::read(&tls_file).unwrap(),
        tls_before,
        "the stored TLS certificate was kept"
    );
    assert_eq!(
        served_leaf(binary.port, &root_pem).await,
        served_before,
        "the restarted server presents the same certificate (no new one from the upstream)"
    );

    // Both accounts exist; B is still deactivated.
    let account_a = existing_account(&binary, &key_a)
        .await
        .expect("account A exists after the restart");
    assert_eq!(account_a.id(), id_a);
    let refused = existing_account(&binary, &key_b)
        .await
        .err()
        .expect("account B is still deactivated after the restart");
    assert_unauthorized(&refused, "newAccount with the deactivated account's key");
    let account_b = bounded(
        "restore the account",
        CALL_LIMIT,
        Account::builder_with_root(&binary.root_file)
            .unwrap()
            .from_credentials(serde_json::from_str(&credentials_b).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(account_b.id(), id_b);
    let refused = bounded(
        "POST-as-GET on the deactivated account",
        CALL_LIMIT,
        account_b.order(id_b.clone()),
    )
    .await
    .err()
    .expect("a deactivated account is refused");
    assert_unauthorized(&refused, "POST-as-GET with the deactivated account");

    // The valid order, its certificate URL and chain are unchanged.
    let mut order = bounded(
        "fetch the valid order",
        CALL_LIMIT,
        account_a.order(kept.order_url.clone()),
    )
    .await
    .unwrap();
    assert_eq!(order.state().status, OrderStatus::Valid);
    assert_eq!(
        order.state().certificate.as_deref(),
        Some(kept.cert_url.as_str())
    );
    let chain = bounded("certificate download", CALL_LIMIT, order.certificate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chain, kept.chain, "the chain downloads byte-identical");

    // The pending order is still pending.
    let mut order = bounded(
        "fetch the pending order",
        CALL_LIMIT,
        account_a.order(pending_url),
    )
    .await
    .unwrap();
    assert_eq!(order.state().status, OrderStatus::Pending);

    // The revocation was kept.
    let again = bounded(
        "revokeCert again",
        CALL_LIMIT,
        account_a.revoke(&RevocationRequest {
            certificate: &revoked_leaf,
            reason: None,
        }),
    )
    .await
    .expect_err("revoking twice is refused");
    assert_problem(
        &again,
        "alreadyRevoked",
        "revoking the revoked certificate again",
    );
    println!(
        "crash/acknowledged: SIGKILL at {:.2}s, restart ready in {:.2}s, total {:.2}s",
        killed_at.as_secs_f64(),
        restarted_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_answers_the_request_in_flight_and_keeps_the_data() {
    let t0 = Instant::now();
    let tmp = temp_dir();
    let responders = Responders::start().await;
    // The validation of the challenge takes 2 s, so the challenge POST is in
    // flight when SIGTERM arrives.
    let slow = SlowHttp01::start(Duration::from_secs(2)).await;
    let binary = Binary::new(
        tmp.path(),
        slow.port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    let mut server = binary.start().await;
    let name = "graceful.crash.test";
    let (key, account, _) = new_account(&binary.root_file, &binary.directory_url).await;
    let ids = [Identifier::Dns(name.into())];
    let mut order = bounded(
        "newOrder",
        CALL_LIMIT,
        account.new_order(&NewOrder::new(&ids)),
    )
    .await
    .unwrap();
    let order_url = order.url().to_owned();
    let mut authzs = order.authorizations();
    let mut authz = bounded("authorization", CALL_LIMIT, authzs.next())
        .await
        .unwrap()
        .unwrap();
    let mut challenge = authz.challenge(ChallengeType::Http01).unwrap();
    slow.set(&challenge.token, challenge.key_authorization().as_str());
    let mut term_sent = None;
    let (answer, ()) = tokio::join!(
        bounded("challenge POST", CALL_LIMIT, challenge.set_ready()),
        async {
            bounded("the validation request", CALL_LIMIT, slow.requested()).await;
            server.sigterm();
            term_sent = Some(Instant::now());
        }
    );
    answer.expect("the request in flight is answered during a graceful stop");
    let status = server
        .wait_exit(STOP_LIMIT)
        .await
        .unwrap_or_else(|| panic!("no exit within {STOP_LIMIT:?} after SIGTERM"));
    let stopped_in = term_sent.unwrap().elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");

    let _server = binary.start().await;
    let account = existing_account(&binary, &key)
        .await
        .expect("the account exists after the restart");
    let mut order = bounded("fetch the order", CALL_LIMIT, account.order(order_url))
        .await
        .unwrap();
    let ready = bounded(
        "order ready",
        RESUME_LIMIT,
        order.poll_ready(&RetryPolicy::new().timeout(RESUME_LIMIT)),
    )
    .await
    .unwrap();
    assert_eq!(ready, OrderStatus::Ready, "{:?}", order.state().error);
    assert_eq!(
        slow.hits(),
        1,
        "the validation finished during the graceful stop (the restart did not need to run it again)"
    );
    let chain = finalize_and_download(&mut order, name).await;
    verify_chain(&chain, &std::fs::read(&binary.root_file).unwrap());
    println!(
        "crash/graceful: exit 0 {:.2}s after SIGTERM, total {:.2}s",
        stopped_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Not a test of its own: the server process that
/// `finalize_survives_sigkill_between_finalize_and_completion` starts and
/// kills. Runs `app::start_with` with an upstream that blocks every
/// certificate request after the first, until killed.
#[test]
#[ignore = "child process of the crash tests"]
fn crash_child_server() {
    let (Some(config), Some(port_file), Some(marker)) = (
        std::env::var_os(ENV_CONFIG),
        std::env::var_os(ENV_PORT_FILE),
        std::env::var_os(ENV_MARKER),
    ) else {
        eprintln!("{CHILD_TEST}: not started by a crash test; nothing to do");
        return;
    };
    // Go away with the parent: its end of our stdin closes when it exits.
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => std::process::exit(2),
                Ok(_) => {}
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (cfg, _) = Config::load(Path::new(&config)).unwrap();
        acmeproxy::telemetry::init(false);
        let softcas = SoftCas::open(SoftCasOptions {
            dir: cfg.data_dir.join("softcas"),
            name: "acmeproxy".into(),
            default_lifetime: Duration::from_secs(90 * 86_400),
            sign_delay: Duration::ZERO,
        })
        .unwrap();
        let upstream = Arc::new(Hooked {
            inner: softcas,
            hook: Arc::new(BlockAfterFirst {
                calls: AtomicUsize::new(0),
                marker: PathBuf::from(marker),
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = app::start_with(
            cfg,
            listener,
            CancellationToken::new(),
            Overrides {
                upstream: Some(upstream),
                ..Overrides::default()
            },
        )
        .await
        .unwrap();
        write_atomic(
            Path::new(&port_file),
            server.addr.port().to_string().as_bytes(),
        );
        tokio::time::sleep(CHILD_LIFETIME).await;
        eprintln!("{CHILD_TEST}: not killed within {CHILD_LIFETIME:?}; exiting");
        std::process::exit(3);
    });
}

/// softcas that signs the first request (the server's own TLS certificate at
/// start-up) and never answers the later ones, after writing `marker` with the
/// request's identifiers.
struct BlockAfterFirst {
    calls: AtomicUsize,
    marker: PathBuf,
}

#[async_trait]
impl Hook for BlockAfterFirst {
    async fn create_certificate(
        &self,
        inner: &dyn CertificateAuthorityService,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return inner.create_certificate(req, checkpoint).await;
        }
        write_atomic(&self.marker, format!("{:?}", req.identifiers).as_bytes());
        std::future::pending().await
    }
}
