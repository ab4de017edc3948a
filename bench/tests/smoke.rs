//! Smoke test of the load generator `acmeproxy-bench`: an in-process
//! acmeproxy (softcas, memory store) whose http-01 port is the generator's
//! responder port, driven for about 3 seconds at concurrency 4 with `--json`.
//! Full ACME (RFC 8555) flows must complete without errors, and the report
//! must carry the per-request latency fields.
//!
//! A second test gives softcas a 3 s `signDelay` (a slow upstream) and runs
//! the generator with `--backlog 5 --finalize-nowait`: the backlog orders are
//! left in `processing`, and the measured flows end at their `processing`
//! finalize answer.
//!
//! The flows order DNS names (`--names-suffix`) that the mock DNS resolves to
//! 127.0.0.1, so that the responder listens on loopback only; the 127.x.y.z
//! IP mode needs a responder on 0.0.0.0 (see docs/performance.md).

use std::error::Error;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;

use acmeproxy::config::Config;
use acmeproxy_testkit::{CaJson, MockDns};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn Error>>;

const KINDS: [&str; 9] = [
    "new_nonce",
    "new_account",
    "new_order",
    "authz_get",
    "challenge_post",
    "order_poll",
    "finalize",
    "cert_download",
    "flow",
];

fn free_port() -> Result<u16, std::io::Error> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An in-process acmeproxy (softcas with `softcas_config`, memory store)
/// whose http-01 port is a free port for the generator's responder.
struct TestServer {
    server: acmeproxy::app::Server,
    shutdown: CancellationToken,
    directory: String,
    ca_file: PathBuf,
    http01_port: u16,
    _dns: MockDns,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(softcas_config: Option<Value>) -> Result<Self, Box<dyn Error>> {
        let dns = MockDns::start("127.0.0.1:0".parse()?)?;
        let http01_port = free_port()?;
        let dir = tempfile::tempdir()?;
        // The load generator is one client IP: lift the per-IP limits, as
        // docs/performance.md's bench configuration does.
        let mut authority = serde_json::json!({
            "type": "softcas",
            "provisioners": [CaJson::provisioner()],
            "rateLimits": {"requestsPerIp": 0, "newAccountsPerIp": 0}
        });
        if let Some(c) = softcas_config {
            authority["config"] = c;
        }
        let doc = CaJson::new(dir.path().join("data"))
            .authority(authority)
            .validation(http01_port, free_port()?, dns.addr(), 5)
            .to_json();
        let (config, _) = Config::parse(&doc.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let shutdown = CancellationToken::new();
        let server = acmeproxy::app::start(config, listener, shutdown.clone()).await?;
        let ca_file = dir.path().join("roots.pem");
        std::fs::write(&ca_file, &server.roots_pem)?;
        let directory = format!(
            "https://127.0.0.1:{}/acme/acme/directory",
            server.addr.port()
        );
        Ok(Self {
            server,
            shutdown,
            directory,
            ca_file,
            http01_port,
            _dns: dns,
            _dir: dir,
        })
    }

    /// Runs the built generator against this server with `args` added, then
    /// stops the server; the parsed JSON report and the generator's stderr.
    async fn bench(self, args: &[&str]) -> Result<(Value, String), Box<dyn Error>> {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_acmeproxy-bench"))
            .args(["--directory", &self.directory, "--ca-file"])
            .arg(&self.ca_file)
            .args(["--json", "--names-suffix", "bench.test"])
            .args([
                "--http01-listen",
                &format!("127.0.0.1:{}", self.http01_port),
            ])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await?;
        self.shutdown.cancel();
        self.server.wait().await?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "bench failed: {stderr}");
        Ok((serde_json::from_slice(&out.stdout)?, stderr))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_full_flows_without_errors() -> TestResult {
    let server = TestServer::start(None).await?;
    let pid = std::process::id().to_string();
    let (report, stderr) = server
        .bench(&[
            "--concurrency",
            "4",
            "--duration",
            "3",
            "--server-pid",
            &pid,
        ])
        .await?;

    let completed = report["flows_completed_in_window"].as_u64().unwrap_or(0);
    assert!(completed > 0, "no flow completed: {report:#}\n{stderr}");
    assert_eq!(report["errors_total"], 0, "{report:#}\n{stderr}");
    assert_eq!(report["flows_failed"], 0);
    assert_eq!(report["warmup_errors"], 0);
    assert!(report["flows_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    let ok = report["flows_ok"].as_u64().unwrap_or(0);
    assert!(ok >= completed);
    // Every flow was validated through the generator's responder.
    assert!(report["validations_served"].as_u64().unwrap_or(0) >= ok);

    for kind in KINDS {
        let l = &report["latency_ms"][kind];
        let count = l["count"].as_u64().unwrap_or(0);
        assert!(count >= ok.min(1), "{kind}: no samples in {l}");
        let field = |f: &str| {
            l[f].as_f64()
                .unwrap_or_else(|| panic!("{kind}.{f} missing: {l}"))
        };
        let (p50, p90, p99, max) = (
            field("p50_ms"),
            field("p90_ms"),
            field("p99_ms"),
            field("max_ms"),
        );
        assert!(
            p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= max,
            "{kind}: {l}"
        );
    }
    // One newAccount, newOrder, finalize and download per successful flow.
    for kind in ["new_account", "new_order", "finalize", "cert_download"] {
        assert_eq!(
            report["latency_ms"][kind]["count"].as_u64(),
            Some(ok),
            "{kind}"
        );
    }

    let server_stats = &report["server"];
    assert!(
        server_stats["rss_start_kb"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
    assert!(server_stats["cpu_ms_per_flow"].as_f64().is_some());
    assert_eq!(report["settings"]["concurrency"], 4);
    // Without --backlog and --finalize-nowait: no backlog, every flow downloads.
    assert!(report.get("backlog").is_none(), "{report:#}");
    assert_eq!(report["flows_ended_processing"], 0);
    Ok(())
}

/// With a 3 s signDelay, finalize (which waits 1.5 s for a quick upstream)
/// answers `processing`: the backlog orders stay there, and the measured
/// `--finalize-nowait` flows end there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_backlog_and_finalize_nowait_on_a_slow_upstream() -> TestResult {
    // Start-up takes about 3 s: the server's own certificate waits too.
    let server = TestServer::start(Some(serde_json::json!({"signDelay": "3s"}))).await?;
    let (report, stderr) = server
        .bench(&[
            "--backlog",
            "5",
            "--finalize-nowait",
            "--duration",
            "2",
            "--concurrency",
            "2",
        ])
        .await?;
    let context = format!("{report:#}\n{stderr}");

    let backlog = &report["backlog"];
    assert_eq!(backlog["requested"], 5, "{context}");
    assert_eq!(backlog["created"], 5, "{context}");
    assert_eq!(backlog["errors"], 0, "{context}");
    assert!(
        backlog["build_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{context}"
    );
    let processing = backlog["still_processing_at_end"].as_u64().unwrap_or(0);
    let valid = backlog["valid_at_end"].as_u64().unwrap_or(0);
    assert_eq!(processing + valid, 5, "{context}");
    assert_eq!(backlog["other_at_end"], 0, "{context}");

    assert_eq!(report["errors_total"], 0, "{context}");
    let ok = report["flows_ok"].as_u64().unwrap_or(0);
    let ended = report["flows_ended_processing"].as_u64().unwrap_or(0);
    assert!(ended > 0, "{context}");
    assert!(ended <= ok, "{context}");
    // The backlog's requests are not in the measured latencies: one
    // newAccount and one finalize per measured flow, a download for each
    // flow that did not end at `processing`.
    let count = |kind: &str| report["latency_ms"][kind]["count"].as_u64();
    assert_eq!(count("new_account"), Some(ok), "{context}");
    assert_eq!(count("finalize"), Some(ok), "{context}");
    assert_eq!(count("cert_download"), Some(ok - ended), "{context}");
    for kind in KINDS {
        let l = &report["latency_ms"][kind];
        for f in ["mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            let present = l.get(f).is_some_and(|v| v.is_f64() || v.is_null());
            assert!(present, "{kind}.{f} missing: {l}");
            // An empty series has null figures, a non-empty one numbers.
            assert_eq!(l[f].is_null(), l["count"] == 0, "{kind}.{f}: {l}");
        }
    }
    assert_eq!(report["settings"]["backlog"], 5);
    assert_eq!(report["settings"]["finalize_nowait"], true);
    Ok(())
}
