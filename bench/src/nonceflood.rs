//! `--nonce-flood N`: asks newNonce (HEAD, RFC 8555 §7.2) N times and never
//! uses the nonces, as a flood of unauthenticated clients would. At 0, N/4,
//! N/2 and N nonces issued it measures newNonce latency (sequential requests
//! on one kept-alive connection, so queueing behind the flood does not count)
//! and the server's resident memory (`--server-pid`). A server whose nonce
//! state is bounded shows both flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::Method;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::Http;
use crate::procstat;
use crate::stats::Summary;

/// Sequential requests timed at each checkpoint.
const SAMPLES: usize = 2_000;

/// One checkpoint.
#[derive(Debug, Serialize)]
pub(crate) struct Checkpoint {
    /// Nonces the server had issued (flood and samples) when measured.
    pub(crate) issued: u64,
    /// newNonce latency over [`SAMPLES`] sequential requests.
    pub(crate) latency: Summary,
    /// Server resident set after the samples, kB (with `--server-pid`).
    pub(crate) server_rss_kb: Option<u64>,
    /// Flood throughput since the previous checkpoint, requests/s.
    pub(crate) flood_rps: Option<f64>,
}

/// Runs the flood and returns its checkpoints.
pub(crate) async fn run(
    tls: &rustls::ClientConfig,
    timeout: Duration,
    new_nonce: &str,
    total: u64,
    concurrency: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<Vec<Checkpoint>> {
    let pid = server_pid.map(|p| p.to_string());
    let probe = Http::new(tls, timeout, 1);
    let issued = Arc::new(AtomicU64::new(0));
    let mut out = Vec::new();
    let marks = [0, total / 4, total / 2, total];
    let mut flooded = 0u64;
    for mark in marks {
        let mut flood_rps = None;
        if mark > flooded {
            let started = Instant::now();
            flood(
                tls,
                timeout,
                new_nonce,
                mark - flooded,
                concurrency,
                &issued,
            )
            .await?;
            flood_rps = Some((mark - flooded) as f64 / started.elapsed().as_secs_f64());
            flooded = mark;
        }
        let mut micros = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            head(&probe, new_nonce).await?;
            micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        issued.fetch_add(SAMPLES as u64, Ordering::Relaxed);
        let server_rss_kb = pid
            .as_deref()
            .map(procstat::sample)
            .transpose()?
            .map(|s| s.rss_kb);
        let cp = Checkpoint {
            issued: issued.load(Ordering::Relaxed),
            latency: Summary::of(&mut micros),
            server_rss_kb,
            flood_rps,
        };
        eprintln!(
            "acmeproxy-bench: {} nonces issued: p50 {:.3} ms, p99 {:.3} ms, server RSS {} kB",
            cp.issued,
            cp.latency.p50_ms.unwrap_or(0.0),
            cp.latency.p99_ms.unwrap_or(0.0),
            cp.server_rss_kb
                .map_or_else(|| "-".to_owned(), |k| k.to_string())
        );
        out.push(cp);
    }
    Ok(out)
}

/// The checkpoints as a table.
pub(crate) fn table(points: &[Checkpoint]) -> String {
    let mut s = String::from(
        "nonces issued | newNonce p50 ms | p90 ms | p99 ms | max ms | server RSS kB | flood req/s\n",
    );
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"));
    for p in points {
        s.push_str(&format!(
            "{} | {} | {} | {} | {} | {} | {}\n",
            p.issued,
            f(p.latency.p50_ms),
            f(p.latency.p90_ms),
            f(p.latency.p99_ms),
            f(p.latency.max_ms),
            p.server_rss_kb
                .map_or_else(|| "-".to_owned(), |k| k.to_string()),
            p.flood_rps
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
        ));
    }
    s
}

/// `count` HEAD newNonce requests from `concurrency` kept-alive connections.
async fn flood(
    tls: &rustls::ClientConfig,
    timeout: Duration,
    new_nonce: &str,
    count: u64,
    concurrency: usize,
    issued: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let left = Arc::new(AtomicU64::new(count));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let http = Http::new(tls, timeout, 1);
        let (left, issued, url) = (left.clone(), issued.clone(), new_nonce.to_owned());
        workers.spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                head(&http, &url).await?;
                issued.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r.context("a flood worker panicked")??;
    }
    Ok(())
}

async fn head(http: &Http, url: &str) -> anyhow::Result<()> {
    let resp = http
        .send(Method::HEAD, url, None)
        .await
        .with_context(|| format!("HEAD {url}"))?;
    if resp.status != 200 || resp.nonce.is_none() {
        bail!(
            "HEAD {url} answered {} {} a Replay-Nonce (a rate limit? lift it for the bench's IP)",
            resp.status,
            if resp.nonce.is_some() {
                "with"
            } else {
                "without"
            }
        );
    }
    Ok(())
}
