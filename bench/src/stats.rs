//! Latency samples, error counts, and the report the generator prints: a
//! human table, or JSON with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::backlog::BacklogReport;
use crate::client::Kind;

/// What the workers collected about the flows started in the measured window.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Latencies in microseconds, per [`Kind::index`].
    requests: [Vec<u32>; Kind::ALL.len()],
    /// Whole-flow latencies (successful flows) in microseconds.
    flows: Vec<u32>,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) bad_nonce_retries: u64,
    pub(crate) order_polls: u64,
    /// Successful flows that ended at a `processing` finalize answer
    /// (`--finalize-nowait`).
    pub(crate) ended_processing: u64,
}

impl Stats {
    /// Adds one flow's requests.
    pub(crate) fn add_samples(&mut self, samples: &[(Kind, u32)]) {
        for &(kind, micros) in samples {
            if let Some(v) = self.requests.get_mut(kind.index()) {
                v.push(micros);
            }
        }
    }

    /// Counts a successful flow that took `took`.
    pub(crate) fn add_ok(&mut self, took: Duration) {
        self.ok += 1;
        self.flows
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }

    /// Counts a failed flow under `key`.
    pub(crate) fn add_error(&mut self, key: String) {
        self.failed += 1;
        *self.errors.entry(key).or_default() += 1;
    }

    /// Adds another worker's numbers.
    pub(crate) fn merge(&mut self, other: Self) {
        for (mine, theirs) in self.requests.iter_mut().zip(other.requests) {
            mine.extend(theirs);
        }
        self.flows.extend(other.flows);
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.bad_nonce_retries += other.bad_nonce_retries;
        self.order_polls += other.order_polls;
        self.ended_processing += other.ended_processing;
    }

    /// Latency summaries per request kind, then `flow`.
    pub(crate) fn latencies(&mut self) -> BTreeMap<&'static str, Summary> {
        let mut out = BTreeMap::new();
        for (kind, samples) in Kind::ALL.iter().zip(self.requests.iter_mut()) {
            out.insert(kind.name(), Summary::of(samples));
        }
        out.insert("flow", Summary::of(&mut self.flows));
        out
    }

    /// All answered requests.
    pub(crate) fn request_count(&self) -> usize {
        self.requests.iter().map(Vec::len).sum()
    }
}

/// Percentiles of one latency series, in milliseconds. An empty series has
/// count 0 and no figures (`null` in JSON, `-` in the table).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) mean_ms: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

impl Summary {
    /// Nearest-rank percentiles of `micros` (sorted in place).
    pub(crate) fn of(micros: &mut [u32]) -> Self {
        micros.sort_unstable();
        let ms = |v: u32| f64::from(v) / 1000.0;
        let rank = |p: f64| -> Option<f64> {
            // Nearest rank: ceil(p * n), 1-based.
            let n = micros.len() as f64;
            let r = ((p * n).ceil() as usize).clamp(1, micros.len().max(1));
            micros.get(r - 1).copied().map(ms)
        };
        let sum: u64 = micros.iter().map(|&v| u64::from(v)).sum();
        Self {
            count: micros.len(),
            mean_ms: (!micros.is_empty()).then(|| sum as f64 / micros.len() as f64 / 1000.0),
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: micros.last().copied().map(ms),
        }
    }
}

/// CPU and memory of a process over the measured window.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct ProcReport {
    /// CPU seconds used in the window.
    pub(crate) cpu_s: f64,
    /// CPU milliseconds per flow completed in the window.
    pub(crate) cpu_ms_per_flow: f64,
    /// Resident set at the start (before any flow).
    pub(crate) rss_start_kb: u64,
    /// Resident set at the end of the window.
    pub(crate) rss_end_kb: u64,
    /// Peak resident set (VmHWM) at the end of the window.
    pub(crate) rss_peak_kb: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) directory: String,
    pub(crate) settings: serde_json::Value,
    /// Length of the measured window in seconds.
    pub(crate) window_s: f64,
    /// Successful flows completed inside the window, per second.
    pub(crate) flows_per_sec: f64,
    pub(crate) flows_completed_in_window: u64,
    /// Flows started in the window: succeeded, failed.
    pub(crate) flows_ok: u64,
    pub(crate) flows_failed: u64,
    pub(crate) errors_total: u64,
    /// Failed flows by problem type urn or transport error kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Flows that failed during the warm-up.
    pub(crate) warmup_errors: u64,
    /// The run ended early because --max-errors flows failed.
    pub(crate) stopped_by_errors: bool,
    pub(crate) bad_nonce_retries: u64,
    pub(crate) requests_per_flow: f64,
    pub(crate) order_polls_per_flow: f64,
    /// Successful flows that ended at a `processing` finalize answer
    /// (`--finalize-nowait`), without a download.
    pub(crate) flows_ended_processing: u64,
    /// `--rate`: flow starts that ran over 5 ms behind their slot because
    /// every worker was busy (null without `--rate`).
    pub(crate) late_starts: Option<u64>,
    /// http-01 answers served (any time) and requests for unknown tokens.
    pub(crate) validations_served: u64,
    pub(crate) validations_unknown_token: u64,
    /// Per request type, and `flow` for whole successful flows.
    pub(crate) latency_ms: BTreeMap<&'static str, Summary>,
    pub(crate) server: Option<ProcReport>,
    pub(crate) generator: ProcReport,
    /// The `--backlog` orders left in `processing`; absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backlog: Option<BacklogReport>,
}

impl Report {
    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "directory      {}", self.directory);
        let _ = writeln!(s, "settings       {}", self.settings);
        let _ = writeln!(
            s,
            "throughput     {:.1} flows/s ({} flows completed in {:.1} s)",
            self.flows_per_sec, self.flows_completed_in_window, self.window_s
        );
        let _ = writeln!(
            s,
            "flows          {} ok, {} failed (warm-up failures {}); {} badNonce retries",
            self.flows_ok, self.flows_failed, self.warmup_errors, self.bad_nonce_retries
        );
        if self.flows_ended_processing > 0 {
            let _ = writeln!(
                s,
                "nowait         {} flows ended at a processing finalize (no download)",
                self.flows_ended_processing
            );
        }
        if let Some(late) = self.late_starts {
            let _ = writeln!(s, "paced          {late} flow starts ran over 5 ms late");
        }
        if self.stopped_by_errors {
            let _ = writeln!(s, "stopped early  --max-errors reached");
        }
        let _ = writeln!(
            s,
            "per flow       {:.2} requests, {:.2} order polls; http-01 served {} (unknown {})",
            self.requests_per_flow,
            self.order_polls_per_flow,
            self.validations_served,
            self.validations_unknown_token
        );
        let _ = writeln!(
            s,
            "\n{:<16}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "count", "mean", "p50", "p90", "p99", "max"
        );
        let order = Kind::ALL.iter().map(|k| k.name()).chain(["flow"]);
        for name in order {
            if let Some(l) = self.latency_ms.get(name) {
                let _ = writeln!(
                    s,
                    "{:<16}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    name,
                    l.count,
                    cell(l.mean_ms),
                    cell(l.p50_ms),
                    cell(l.p90_ms),
                    cell(l.p99_ms),
                    cell(l.max_ms)
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors");
            for (k, n) in &self.errors {
                let _ = writeln!(s, "  {n:>8}  {k}");
            }
        }
        let _ = writeln!(s);
        for (who, p) in [("server", self.server), ("generator", Some(self.generator))] {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "{who:<10} cpu {:.2} ms/flow ({:.1} s), RSS start {:.1} MB, end {:.1} MB, peak {:.1} MB",
                    p.cpu_ms_per_flow,
                    p.cpu_s,
                    p.rss_start_kb as f64 / 1024.0,
                    p.rss_end_kb as f64 / 1024.0,
                    p.rss_peak_kb as f64 / 1024.0
                );
            }
        }
        if let Some(b) = &self.backlog {
            let _ = writeln!(s, "\n{}", b.table_line());
        }
        s
    }
}

/// A latency figure for the table, `-` for an empty series.
fn cell(ms: Option<f64>) -> String {
    match ms {
        Some(v) => format!("{v:.2}"),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        v.reverse();
        let s = Summary::of(&mut v);
        assert_eq!(s.count, 100);
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (Some(50.0), Some(90.0), Some(99.0), Some(100.0))
        );
        assert!((s.mean_ms.unwrap() - 50.5).abs() < 1e-9);
        let one = Summary::of(&mut [2500]);
        assert_eq!((one.p50_ms, one.p99_ms), (Some(2.5), Some(2.5)));
        let empty = Summary::of(&mut []);
        assert_eq!((empty.count, empty.p99_ms, empty.mean_ms), (0, None, None));
        assert_eq!(cell(empty.p50_ms), "-");
        assert_eq!(cell(one.max_ms), "2.50");
        let json = serde_json::to_value(empty).unwrap();
        assert!(
            json["p99_ms"].is_null() && json["mean_ms"].is_null(),
            "{json}"
        );
        assert_eq!(json["count"], 0);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::default();
        a.add_samples(&[(Kind::NewOrder, 1000)]);
        a.add_ok(Duration::from_millis(5));
        let mut b = Stats::default();
        b.add_samples(&[(Kind::NewOrder, 3000), (Kind::Finalize, 2000)]);
        b.add_error("urn:ietf:params:acme:error:connection".to_owned());
        b.add_error("transport:connect".to_owned());
        a.merge(b);
        assert_eq!((a.ok, a.failed, a.request_count()), (1, 2, 3));
        assert_eq!(a.errors.len(), 2);
        let l = a.latencies();
        assert_eq!(l["new_order"].count, 2);
        assert_eq!(l["new_order"].max_ms, Some(3.0));
        assert_eq!(l["flow"].p50_ms, Some(5.0));
        assert_eq!(l["cert_download"].count, 0);
    }
}
