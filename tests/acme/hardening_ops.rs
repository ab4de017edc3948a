//! Operational endpoints under hostile use: `/ready` answers from a cached
//! check (at most one store write and one upstream call a second, however
//! many GETs) and answers "not ready" in bounded time when the upstream
//! hangs; the admin socket is private from the moment it exists and refuses
//! peers other than root and the server's own user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use acmeproxy::app::{self, Overrides, Server};
use acmeproxy::config::Config;
use acmeproxy::upstream::softcas::{SoftCas, SoftCasOptions};
use acmeproxy::upstream::{CertificateAuthorityService, UpstreamError};
use async_trait::async_trait;
use kit::upstream::{Hook, Hooked};
use tokio_util::sync::CancellationToken;

/// softcas that counts `health` calls, and can make them hang.
struct Counting {
    health_calls: AtomicUsize,
    hang: AtomicBool,
}

#[async_trait]
impl Hook for Counting {
    async fn health(&self, inner: &dyn CertificateAuthorityService) -> Result<(), UpstreamError> {
        self.health_calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        inner.health().await
    }
}

async fn start(dir: &Path) -> (Server, Arc<Counting>, CancellationToken) {
    // The flood of GET /ready comes from one address: no per-IP limit here.
    let doc = kit::CaJson::new(dir.join("data"))
        .authority(serde_json::json!({
            "type": "softcas",
            "provisioners": [kit::CaJson::provisioner()],
            "rateLimits": {"requestsPerIp": 0}
        }))
        .to_json();
    let (cfg, _) = Config::parse(&doc.to_string()).unwrap();
    acmeproxy::telemetry::init(false);
    let softcas = SoftCas::open(SoftCasOptions {
        dir: dir.join("softcas"),
        name: "acmeproxy".into(),
        default_lifetime: Duration::from_secs(90 * 86_400),
        sign_delay: Duration::ZERO,
    })
    .unwrap();
    let upstream = Arc::new(Counting {
        health_calls: AtomicUsize::new(0),
        hang: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let server = app::start_with(
        cfg,
        listener,
        shutdown.clone(),
        Overrides {
            upstream: Some(Arc::new(Hooked {
                inner: softcas,
                hook: Arc::clone(&upstream),
            })),
            ..Overrides::default()
        },
    )
    .await
    .unwrap();
    (server, upstream, shutdown)
}

fn client(server: &Server) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server.roots_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Many concurrent GET /ready cause at most one check (one store write, one
/// upstream call) a second; a hanging upstream gives 503 within the check's
/// 4 s budget, to every waiting request, and the up metric says 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_cached_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, upstream, shutdown) = start(dir.path()).await;
    let http = client(&server);
    let url = format!("https://localhost:{}/ready", server.addr.port());
    let url = url.replace("localhost", "127.0.0.1");

    let before = upstream.health_calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let http = http.clone();
                let url = url.clone();
                tokio::spawn(async move { http.get(&url).send().await })
            })
            .collect();
        for b in batch {
            let resp = b.await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            answered += 1;
        }
    }
    let elapsed = started.elapsed();
    let checks = upstream.health_calls.load(Ordering::SeqCst) - before;
    let allowed = usize::try_from(elapsed.as_secs()).unwrap() + 1;
    eprintln!("{answered} GET /ready in {elapsed:?}: {checks} upstream checks");
    assert!(
        checks <= allowed,
        "{checks} upstream checks for {answered} GETs in {elapsed:?}"
    );

    // The upstream hangs: every waiting GET gets 503 within the budget.
    upstream.hang.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let batch: Vec<_> = (0..20)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let resp = http.get(&url).send().await.unwrap();
                (resp.status(), resp.text().await.unwrap())
            })
        })
        .collect();
    for b in batch {
        let (status, text) = tokio::time::timeout(Duration::from_secs(8), b)
            .await
            .expect("/ready answers while the upstream hangs")
            .unwrap();
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("timed out"), "{text}");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "answered after {waited:?}");
    assert!(
        acmeproxy::metrics::render().contains("acmeproxy_upstream_up 0"),
        "{}",
        acmeproxy::metrics::render()
    );

    // Back up: ready again once the cache expires.
    upstream.hang.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert!(acmeproxy::metrics::render().contains("acmeproxy_upstream_up 1"));
    shutdown.cancel();
    server.wait().await.unwrap();
}

/// A connection from a user that is neither root nor the server's own is
/// refused, even when the file permissions let it connect; root is served.
/// Needs root (to run the client as another uid) and perl (the client);
/// skipped, saying so, without them.
#[tokio::test]
async fn the_admin_socket_refuses_other_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let ts = kit::TestServer::start().await;
    let socket = ts.data_dir.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is private");
    let leftovers: Vec<_> = std::fs::read_dir(&ts.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".admin-sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Root (the server's user here) is served.
    let ok = app::admin_socket::call(&socket, &app::admin_socket::AdminRequest::EabList).await;
    assert!(ok.is_ok(), "{ok:?}");

    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me != 0 || Command::new("perl").arg("-v").output().is_err() {
        eprintln!("skipped the other-uid part: needs root and perl (uid {me})");
        return;
    }
    // Open the way for uid 65534: every directory down to the socket, and
    // the socket itself, so that only SO_PEERCRED stands in the way.
    let mut dir = ts.data_dir.clone();
    loop {
        if dir == Path::new("/") || dir == Path::new("/tmp") {
            break;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !dir.pop() {
            break;
        }
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = r#"use IO::Socket::UNIX;
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
        print $s "{\"cmd\":\"eab_list\"}\n";
        my $line = <$s>;
        print defined $line ? $line : "EOF\n";"#;
    let socket_arg = socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("perl")
            .arg("-e")
            .arg(script)
            .arg(&socket_arg)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "perl failed: {stdout} {stderr}");
    assert!(
        stdout.contains("\"ok\":false") && stdout.contains("permission denied"),
        "uid 65534 was not refused: {stdout} {stderr}"
    );
    assert!(stdout.contains("uid 65534"), "{stdout}");
}
