//! Smoke test of the load generator `acmeproxy-bench`: an in-process
//! acmeproxy (softcas, memory store) whose http-01 port is the generator's
//! responder port, driven for about 3 seconds at concurrency 4 with `--json`.
//! Full ACME (RFC 8555) flows must complete without errors, and the report
//! must carry the per-request latency fields.
//!
//! The flows order DNS names (`--names-suffix`) that the mock DNS resolves to
//! 127.0.0.1, so that the responder listens on loopback only; the 127.x.y.z
//! IP mode needs a responder on 0.0.0.0 (see docs/performance.md).

use std::error::Error;
use std::net::TcpListener as StdListener;

use acmeproxy::config::Config;
use acmeproxy::validate::MockDns;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_full_flows_without_errors() -> TestResult {
    let dns = MockDns::start("127.0.0.1:0".parse()?)?;
    let http01_port = free_port()?;
    let dir = tempfile::tempdir()?;
    let doc = serde_json::json!({
        "address": "127.0.0.1:0",
        "dnsNames": ["localhost", "127.0.0.1"],
        "dataDir": dir.path().join("data"),
        "db": {"type": "memory"},
        "logger": {"format": "text"},
        "metrics": {"enabled": false},
        "authority": {
            "type": "softcas",
            "provisioners": [{"type": "ACME", "name": "acme"}]
        },
        "validation": {
            "httpPort": http01_port,
            "tlsAlpnPort": free_port()?,
            "resolvers": [dns.addr().to_string()],
            "timeoutSeconds": 5
        }
    });
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

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_acmeproxy-bench"))
        .args(["--directory", &directory, "--ca-file"])
        .arg(&ca_file)
        .args(["--concurrency", "4", "--duration", "3", "--json"])
        .args(["--http01-listen", &format!("127.0.0.1:{http01_port}")])
        .args(["--names-suffix", "bench.test"])
        .args(["--server-pid", &std::process::id().to_string()])
        .kill_on_drop(true)
        .output()
        .await?;
    shutdown.cancel();
    server.wait().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)?;

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
    Ok(())
}
