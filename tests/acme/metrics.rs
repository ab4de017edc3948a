//! The Prometheus endpoint after a real issuance: the key series exist with
//! sane values, labels stay bounded (no DNS names, account or order ids), and
//! `promtool check metrics` accepts the exposition. Also /health and /ready.
//! (Metrics are process-wide, so this file runs one server.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use kit::{Options, TestServer};

const NAME: &str = "metrics-probe.example.test";

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of a Prometheus text exposition.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (name.to_owned(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} is quoted in {s:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// One http-01 order for `NAME`, to the certificate; returns the order URL.
async fn issue(ts: &TestServer, account: &Account) -> String {
    let ids = [Identifier::Dns(NAME.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let order_url = order.url().to_owned();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.unwrap();
        if a.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut ch = a.challenge(ChallengeType::Http01).unwrap();
        let key_auth = ch.key_authorization();
        ts.responders.set_http01(&ch.token, key_auth.as_str());
        ch.set_ready().await.unwrap();
    }
    let status = order.poll_ready(&RetryPolicy::default()).await.unwrap();
    assert_eq!(status, OrderStatus::Ready);
    order.finalize().await.unwrap();
    let chain = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .unwrap();
    assert!(chain.contains("BEGIN CERTIFICATE"));
    order_url
}

/// The last path segment of an ACME resource URL (its id).
fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn metrics_after_an_issuance() {
    let ts = TestServer::start_with(Options {
        metrics: true,
        ..Options::default()
    })
    .await;
    let metrics_addr = ts.server.as_ref().unwrap().metrics_addr.unwrap();
    assert!(metrics_addr.ip().is_loopback());
    let http = ts.http();

    for (path, body) in [("/health", "ok"), ("/ready", "ready")] {
        let resp = http.get(ts.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap().trim(), body, "{path}");
    }

    let (account, _) = ts.account().await;
    let account_id = last_segment(account.id()).to_owned();
    let order_url = issue(&ts, &account).await;
    let order_id = last_segment(&order_url).to_owned();
    // An unknown resource whose path carries a name must not become a label.
    let resp = http
        .get(ts.url(&format!("/acme/acme/no-such-thing/{NAME}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The finalize queue gauge is sampled by the worker once a second: scrape
    // until it shows the drained queue.
    let mut tries = 0;
    let (text, samples) = loop {
        let resp = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await.unwrap();
        let samples = parse(&text);
        tries += 1;
        if value(&samples, "acmeproxy_finalize_queue_depth", &[]) == Some(0.0) || tries == 50 {
            break (text, samples);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!samples.is_empty());

    // Every sample is named acmeproxy_* and has a finite or +Inf value.
    for s in &samples {
        assert!(s.name.starts_with("acmeproxy_"), "{s:?}");
        assert!(!s.value.is_nan(), "{s:?}");
    }

    let at_least_one = |name: &str, labels: &[(&str, &str)]| {
        let v = value(&samples, name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"));
        assert!(v >= 1.0, "{name}{labels:?} = {v}");
    };
    at_least_one(
        "acmeproxy_http_requests_total",
        &[("route", "/acme/{prov}/new-order"), ("status", "201")],
    );
    at_least_one(
        "acmeproxy_http_requests_total",
        &[("route", "/acme/{prov}/new-account"), ("status", "201")],
    );
    at_least_one(
        "acmeproxy_http_requests_total",
        &[
            ("route", "/acme/{prov}/order/{id}/finalize"),
            ("status", "200"),
        ],
    );
    at_least_one(
        "acmeproxy_http_requests_total",
        &[("route", "unmatched"), ("status", "404")],
    );
    at_least_one(
        "acmeproxy_http_request_duration_seconds_count",
        &[("route", "/acme/{prov}/new-order")],
    );
    at_least_one("acmeproxy_orders_total", &[("status", "valid")]);
    at_least_one(
        "acmeproxy_challenge_validations_total",
        &[("type", "http-01"), ("result", "valid")],
    );
    at_least_one(
        "acmeproxy_challenge_validation_duration_seconds_count",
        &[("type", "http-01")],
    );
    at_least_one("acmeproxy_certificates_issued_total", &[]);
    at_least_one(
        "acmeproxy_upstream_calls_total",
        &[
            ("upstream", "softcas"),
            ("operation", "create"),
            ("result", "success"),
        ],
    );
    // /ready asked the upstream, and it answered.
    assert_eq!(value(&samples, "acmeproxy_upstream_up", &[]), Some(1.0));
    assert_eq!(
        value(&samples, "acmeproxy_finalize_queue_depth", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "acmeproxy_finalize_queue_oldest_age_seconds", &[]),
        Some(0.0)
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let expiry = value(
        &samples,
        "acmeproxy_own_certificate_expiry_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(
        expiry > now && expiry < now + 400.0 * 86400.0,
        "own certificate expiry {expiry} (now {now})"
    );
    // Histogram buckets are cumulative and end in +Inf = count.
    let count = value(
        &samples,
        "acmeproxy_http_request_duration_seconds_count",
        &[("route", "/acme/{prov}/new-order")],
    )
    .unwrap();
    let inf = value(
        &samples,
        "acmeproxy_http_request_duration_seconds_bucket",
        &[("route", "/acme/{prov}/new-order"), ("le", "+Inf")],
    )
    .unwrap();
    assert_eq!(count, inf);

    // Bounded cardinality: no label value carries a name or an id.
    for s in &samples {
        for (k, v) in &s.labels {
            for secret in [NAME, account_id.as_str(), order_id.as_str()] {
                assert!(
                    !v.contains(secret),
                    "label {k}={v:?} of {} leaks {secret}",
                    s.name
                );
            }
        }
    }
    let routes: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "acmeproxy_http_requests_total")
        .map(|s| s.labels["route"].as_str())
        .collect();
    for r in &routes {
        assert!(*r == "unmatched" || r.starts_with("/acme/{prov}/"), "{r}");
    }

    promtool_check(&text);

    // The alerting rules and the dashboard use only names this scrape has
    // (or that a recording rule makes).
    let names = samples.iter().map(|s| s.name.clone()).collect();
    super::alerts::assert_only_exported_names(&names);
}

/// `promtool check metrics` on the scrape; it must report nothing. Skipped
/// with a message when promtool is missing (CI installs it).
fn promtool_check(text: &str) {
    let Some(report) = promtool(text) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI (tests/interop/install-clients.sh installs it)"
        );
        eprintln!("SKIP promtool check: promtool is not installed (apt-get install prometheus)");
        return;
    };
    assert_eq!(
        report,
        Ok(String::new()),
        "promtool check metrics on:\n{text}"
    );
    // The check is not vacuous: promtool does report a misnamed counter.
    let bad = promtool("# HELP foo A counter\n# TYPE foo counter\nfoo 1\n").unwrap();
    assert!(matches!(&bad, Err(r) if r.contains("_total")), "{bad:?}");
}

/// Runs `promtool check metrics` on `text`: None without promtool, else
/// Ok(its output) when it exits 0, Err(its output) when not.
fn promtool(text: &str) -> Option<Result<String, String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_owned();
    Some(if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    })
}
