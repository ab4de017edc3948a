//! Debian's real `prometheus`, on loopback, scrapes the real `acmeproxy`
//! binary whose upstream is a real Pebble, with the shipped rules loaded
//! (a copy whose AcmeproxyUpstreamDown waits 3 s instead of 5 min, and
//! evaluated every second). While Pebble runs, no alert is pending; once it
//! stops, AcmeproxyUpstreamDown goes pending, then firing, in
//! `/api/v1/alerts`; once it is back, the alert ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kit::pebble::{Pebble, PebbleOptions};
use kit::{ChildGuard, free_ports};
use serde_json::{Value, json};

use super::{kit, rules_file, yaml};

/// The test's own `for:` of AcmeproxyUpstreamDown.
const SHORT_FOR: &str = "3s";

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["prometheus", "pebble"]
        .into_iter()
        .filter(|b| kit::find_in_path(b).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (tests/interop/install-clients.sh installs them)",
            missing.join(" and ")
        )
    })
}

/// The shipped rules with AcmeproxyUpstreamDown's `for:` shortened; every
/// other rule as shipped.
fn rules_with_short_for(out: &Path) {
    let mut doc = yaml(&rules_file());
    let mut found = false;
    for group in doc["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            if rule["alert"] == "AcmeproxyUpstreamDown" {
                assert_eq!(rule["for"], "5m", "the shipped rule waits 5 minutes");
                rule["for"] = json!(SHORT_FOR);
                found = true;
            }
        }
    }
    assert!(found, "no AcmeproxyUpstreamDown in the rules");
    std::fs::write(out, serde_norway::to_string(&doc).unwrap()).unwrap();
}

/// A GET of Prometheus's API; its `data`.
async fn api(http: &reqwest::Client, base: &str, path: &str) -> Result<Value, String> {
    let rsp = http
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = rsp.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(body.to_string());
    }
    Ok(body["data"].clone())
}

/// The alerts Prometheus holds now: (name, state, labels).
async fn alerts(http: &reqwest::Client, base: &str) -> Vec<(String, String, Value)> {
    let Ok(data) = api(http, base, "/api/v1/alerts").await else {
        return Vec::new();
    };
    data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

/// The value of `query` for our target, when Prometheus has one.
async fn query(http: &reqwest::Client, base: &str, query: &str) -> Option<f64> {
    let data = api(http, base, &format!("/api/v1/query?query={query}"))
        .await
        .ok()?;
    data["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_fires_upstream_down_when_pebble_stops() {
    if kit::skip_when_missing("the real-Prometheus alert test", missing_tools()) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;

    // The RA: the real binary, metrics on its own loopback port.
    let [acme_port, metrics_port, prom_port] = free_ports().unwrap();
    let config = tmp.path().join("ca.json");
    let mut ca = kit::CaJson::new(tmp.path().join("data"))
        .port(acme_port)
        .authority(pebble.authority_json());
    ca.metrics = Some(format!("127.0.0.1:{metrics_port}"));
    ca.write(&config).unwrap();
    let mut cmd = Command::new(kit::acmeproxy_bin());
    cmd.arg("serve").arg(&config);
    let mut ra = ChildGuard::spawn("acmeproxy", &mut cmd, &tmp.path().join("ra.log")).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + STEP;
    loop {
        ra.check_running().unwrap();
        if let Ok(rsp) = http.get(&metrics_url).send().await {
            if rsp
                .text()
                .await
                .unwrap()
                .contains("acmeproxy_upstream_up 1")
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the RA's metrics never showed the upstream up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus: scrapes and evaluates every second.
    let rules = tmp.path().join("rules.yml");
    rules_with_short_for(&rules);
    let prom_config = tmp.path().join("prometheus.yml");
    let prom_doc = json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [{
            "job_name": "acmeproxy",
            "static_configs": [{"targets": [format!("127.0.0.1:{metrics_port}")]}],
        }],
    });
    std::fs::write(&prom_config, serde_norway::to_string(&prom_doc).unwrap()).unwrap();
    let mut prom_cmd = Command::new("prometheus");
    prom_cmd
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn");
    let mut prom = ChildGuard::spawn(
        "prometheus",
        &mut prom_cmd,
        &tmp.path().join("prometheus.log"),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{prom_port}");

    // Up: Prometheus has scraped the upstream as up, the rules are loaded,
    // and after a few evaluations no alert is pending.
    let deadline = Instant::now() + STEP;
    let target = json!({"job": "acmeproxy", "instance": format!("127.0.0.1:{metrics_port}")});
    while query(&http, &base, "acmeproxy_upstream_up").await != Some(1.0) {
        prom.check_running().unwrap();
        assert!(Instant::now() < deadline, "Prometheus never scraped the RA");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded = api(&http, &base, "/api/v1/rules").await.unwrap();
    let loaded_alerts: Vec<&str> = loaded["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["type"] == "alerting")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        loaded_alerts.len(),
        super::alerts().len(),
        "{loaded_alerts:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = alerts(&http, &base).await;
    assert!(quiet.is_empty(), "alerts while all is well: {quiet:?}");
    let up_at = started.elapsed();

    // Pebble stops: the next scrape's readiness check fails.
    pebble.stop();
    let stopped = Instant::now();
    let mut pending_after = None;
    let firing_after = loop {
        let now = alerts(&http, &base).await;
        for (name, state, labels) in &now {
            assert_eq!(name, "AcmeproxyUpstreamDown", "unexpected alert: {now:?}");
            assert_eq!(labels["job"], target["job"]);
            assert_eq!(labels["instance"], target["instance"]);
            assert_eq!(labels["severity"], "critical");
            match state.as_str() {
                "pending" => {
                    pending_after.get_or_insert_with(|| stopped.elapsed());
                }
                "firing" => {}
                other => panic!("state {other}"),
            }
        }
        if now.iter().any(|(_, state, _)| state == "firing") {
            break stopped.elapsed();
        }
        prom.check_running().unwrap();
        ra.check_running().unwrap();
        assert!(
            stopped.elapsed() < STEP,
            "AcmeproxyUpstreamDown did not fire within {STEP:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pending_after = pending_after.expect("the alert was seen pending before firing");
    assert!(
        firing_after >= pending_after + Duration::from_secs(2),
        "firing {firing_after:?} came too soon after pending {pending_after:?} for `for: {SHORT_FOR}`"
    );
    assert_eq!(
        query(&http, &base, "acmeproxy_upstream_up").await,
        Some(0.0)
    );

    // Pebble is back: the alert ends.
    pebble.restart().await;
    let back = Instant::now();
    loop {
        let now = alerts(&http, &base).await;
        if now.is_empty() {
            break;
        }
        assert!(back.elapsed() < STEP, "the alert did not end: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "real Prometheus: scraping and quiet after {:.1}s; pending {:.1}s and firing {:.1}s after Pebble stopped; \
         resolved {:.1}s after it restarted; whole test {:.1}s",
        up_at.as_secs_f64(),
        pending_after.as_secs_f64(),
        firing_after.as_secs_f64(),
        back.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
