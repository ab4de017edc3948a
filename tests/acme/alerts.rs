//! The operator's Prometheus side: the rules in
//! contrib/prometheus/acmeproxy-rules.yml pass `promtool check rules` and the
//! `promtool test rules` unit tests of tests/prometheus/ (every alert made to
//! fire and kept silent, and the tests fail when the rules lose their `for:`);
//! every alert is documented in docs/admin.md "Alerts"; the Grafana dashboard
//! contrib/grafana/acmeproxy.json parses as PromQL and, like the rules, uses
//! only names the server exports or the rules record
//! ([`assert_only_exported_names`], called by the metrics test on its scrape);
//! and a real Prometheus scraping a real server fires AcmeproxyUpstreamDown
//! when its Pebble upstream stops (`e2e`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use acmeproxy_testkit as kit;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// Series that Prometheus makes itself for every target, used by
/// AcmeproxyTargetDown.
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn repo() -> PathBuf {
    kit::repo_root()
}

fn rules_file() -> PathBuf {
    repo().join("contrib/prometheus/acmeproxy-rules.yml")
}

fn rules_test_file() -> PathBuf {
    repo().join("tests/prometheus/acmeproxy-rules.test.yml")
}

fn dashboard_file() -> PathBuf {
    repo().join("contrib/grafana/acmeproxy.json")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule of the rules file.
fn rules() -> Vec<Value> {
    yaml(&rules_file())["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn alerts() -> Vec<Value> {
    rules()
        .into_iter()
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// The names the recording rules record.
fn recorded_names() -> BTreeSet<String> {
    rules()
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard, with where it is: the panels'
/// targets and the template variables' queries (`label_values(m, l)` as
/// `m`).
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            out.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query:?}"));
        let (metric, _label) = inner.rsplit_once(',').unwrap();
        out.push((format!("variable {:?}", var["name"]), metric.to_owned()));
    }
    out
}

/// Every PromQL expression of the rules file, with its rule's name.
fn rules_exprs() -> Vec<(String, String)> {
    rules()
        .iter()
        .map(|r| {
            let name = r.get("alert").or_else(|| r.get("record")).unwrap();
            (
                format!("rule {name}"),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Grafana's variables replaced by values Prometheus accepts.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$job", ".+")
}

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, ranges, strings and grouping lists that are neither functions
/// (followed by `(`) nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its closing one, past strings.
    let skip_to = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open} in {expr:?}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_to(i, '{', '}');
        } else if c == '[' {
            i = skip_to(i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let rest: String = chars[next..].iter().take(8).collect();
            // `sum by (…) (…)`: an aggregation, like a call.
            let grouped = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.starts_with(|c: char| c == '(' || c.is_whitespace()))
            });
            let called = chars.get(next) == Some(&'(') || grouped;
            let keyword = PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
            if keyword && called {
                // by (…), on (…), group_left (…): label names.
                i = skip_to(next, '(', ')');
            } else if !keyword && !called {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the quote that closes the string opened at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Every expression of the rules file and the dashboard selects at least one
/// metric, and each is exported by the server (`exported`: the sample
/// names of a real scrape), recorded by a recording rule, or made by
/// Prometheus itself.
pub(crate) fn assert_only_exported_names(exported: &BTreeSet<String>) {
    let mut known = exported.clone();
    known.extend(recorded_names());
    known.extend(PROMETHEUS_SERIES.iter().map(|s| (*s).to_owned()));
    let mut used = BTreeSet::new();
    for (place, expr) in rules_exprs().into_iter().chain(dashboard_exprs()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for name in names {
            assert!(
                known.contains(&name),
                "{place} uses {name}, which the server does not export and no rule records \
                 ({expr:?}); exported: {exported:?}"
            );
            used.insert(name);
        }
    }
    // Not vacuous: the raw metrics the alerts rest on were in the scrape.
    for name in [
        "acmeproxy_upstream_up",
        "acmeproxy_store_writable",
        "acmeproxy_finalize_queue_oldest_age_seconds",
        "acmeproxy_orders_total",
        "acmeproxy_challenge_validations_total",
        "acmeproxy_upstream_calls_total",
        "acmeproxy_own_certificate_expiry_timestamp_seconds",
        "acmeproxy_rate_limited_total",
        "acmeproxy_http_request_duration_seconds_bucket",
    ] {
        assert!(exported.contains(name), "{name} is not in the scrape");
        assert!(
            used.contains(name)
                || rules_exprs()
                    .iter()
                    .any(|(_, e)| metric_names(e).contains(name)),
            "{name} is used by no rule and no panel"
        );
    }
}

/// Runs promtool with `args` in `dir`: None when promtool is missing (a
/// skip, or a failure under CI), else (success, output).
fn promtool(dir: &Path, args: &[&str]) -> Option<(bool, String)> {
    let missing = kit::find_in_path("promtool").is_none().then(|| {
        "promtool is not installed (tests/interop/install-clients.sh installs prometheus)"
            .to_owned()
    });
    if kit::skip_when_missing("promtool", missing) {
        return None;
    }
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let file = rules_file();
    let Some((ok, out)) = promtool(&repo(), &["check", "rules", file.to_str().unwrap()]) else {
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules().len())),
        "{out}"
    );
    let tests = rules_test_file();
    let (ok, out) = promtool(&repo(), &["test", "rules", tests.to_str().unwrap()]).unwrap();
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The unit tests are not vacuous: the same tests against a copy of the
/// rules without their `for:` fail, for every alert, at the times when the
/// alert must not fire yet.
#[test]
fn the_unit_tests_fail_when_the_alerts_lose_their_for() {
    let tmp = tempfile::tempdir().unwrap();
    let mut doc = yaml(&rules_file());
    for group in doc["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            if let Some(rule) = rule.as_object_mut() {
                rule.remove("for");
            }
        }
    }
    std::fs::write(
        tmp.path().join("rules.yml"),
        serde_norway::to_string(&doc).unwrap(),
    )
    .unwrap();
    let mut tests = yaml(&rules_test_file());
    tests["rule_files"] = json!(["rules.yml"]);
    std::fs::write(
        tmp.path().join("tests.yml"),
        serde_norway::to_string(&tests).unwrap(),
    )
    .unwrap();
    let Some((ok, out)) = promtool(tmp.path(), &["test", "rules", "tests.yml"]) else {
        return;
    };
    assert!(!ok, "the unit tests passed without `for:`:\n{out}");
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            out.contains(&format!("alertname: {name},")),
            "no test of {name} failed without `for:`:\n{out}"
        );
    }
}

/// Every alert has a severity, a summary, a description that says what to
/// check first, and a `for:`; the unit tests make it fire and keep it
/// silent; docs/admin.md lists it under "Alerts".
#[test]
fn every_alert_is_described_tested_both_ways_and_documented() {
    let tests = yaml(&rules_test_file());
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let admin = std::fs::read_to_string(repo().join("docs/admin.md")).unwrap();
    let section = admin
        .split_once("\n## Alerts\n")
        .expect("docs/admin.md has an \"Alerts\" section")
        .1
        .split("\n## ")
        .next()
        .unwrap();
    let names: Vec<String> = alerts()
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            ["critical", "warning", "info"]
                .contains(&alert["labels"]["severity"].as_str().unwrap()),
            "{name}: severity"
        );
        assert!(alert["for"].is_string(), "{name}: no for:");
        assert!(
            !alert["annotations"]["summary"].as_str().unwrap().is_empty(),
            "{name}: summary"
        );
        let description = alert["annotations"]["description"].as_str().unwrap();
        assert!(
            description.contains("Check first:"),
            "{name}: the description does not say what to check first"
        );
        let of_this: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == name).collect();
        assert!(
            of_this
                .iter()
                .any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty())),
            "{name}: no unit test makes it fire"
        );
        assert!(
            of_this
                .iter()
                .any(|c| c["exp_alerts"].as_array().is_none_or(Vec::is_empty)),
            "{name}: no unit test keeps it silent"
        );
        assert!(
            section.contains(&format!("### {name}\n")),
            "docs/admin.md \"Alerts\" has no \"### {name}\""
        );
    }
    // The section documents no alert that does not exist.
    for line in section.lines().filter_map(|l| l.strip_prefix("### ")) {
        if line.starts_with("Acmeproxy") {
            assert!(
                names.iter().any(|n| n == line),
                "docs/admin.md documents {line}"
            );
        }
    }
}

/// Every recording rule is shown by the dashboard or used by an alert.
#[test]
fn every_recording_rule_is_used() {
    let exprs: Vec<String> = rules_exprs()
        .into_iter()
        .chain(dashboard_exprs())
        .map(|(_, e)| e)
        .collect();
    for name in recorded_names() {
        assert!(
            exprs.iter().any(|e| metric_names(e).contains(&name)),
            "recording rule {name} is used nowhere"
        );
    }
}

/// The dashboard: unique panel ids, every panel with a PromQL target on the
/// `datasource` variable, the topics the issue asks for, and each
/// expression valid PromQL (checked by promtool as a recording rule).
#[test]
fn the_dashboard_is_complete_and_its_queries_parse() {
    let d = dashboard();
    assert_eq!(d["uid"], "acmeproxy");
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().unwrap().contains("$job"),
                "{}",
                p["title"]
            );
        }
    }
    let all: String = dashboard_exprs()
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for topic in [
        "acmeproxy_http_requests",
        "acmeproxy_http_request_duration_seconds",
        "acmeproxy_orders",
        "acmeproxy_challenge_validations",
        "acmeproxy_upstream_calls",
        "acmeproxy_upstream_call_duration_seconds",
        "acmeproxy_finalize_queue_depth",
        "acmeproxy_finalize_queue_oldest_age_seconds",
        "acmeproxy_own_certificate_expiry",
    ] {
        assert!(all.contains(topic), "the dashboard shows no {topic}");
    }

    let rules: Vec<Value> = dashboard_exprs()
        .iter()
        .enumerate()
        .map(|(i, (_, e))| json!({"record": format!("dashboard:expr_{i}"), "expr": without_grafana_variables(e)}))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboard-rules.yml");
    let doc = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_norway::to_string(&doc).unwrap()).unwrap();
    let Some((ok, out)) = promtool(tmp.path(), &["check", "rules", "dashboard-rules.yml"]) else {
        return;
    };
    assert!(ok, "the dashboard's queries do not parse:\n{out}");
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{route=~"x|y", le!="1"}[5m])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("job:x:ratio_rate15m > 0.25\n  and on (job) b_total offset 5m >= 5"),
        ["b_total", "job:x:ratio_rate15m"]
    );
    assert_eq!(
        names("m > 0 and m - time() < 7 * 86400 unless ignoring(instance) group_left(a) n"),
        ["m", "n"]
    );
    assert_eq!(
        names(r#"sum(rate(c{job=~"$job"}[$__rate_interval])) by (route)"#),
        ["c"]
    );
    assert_eq!(names(r#"up{job=~".*acmeproxy.*"} == 0"#), ["up"]);
}
