//! Every Prometheus instrument, defined once. Prefix
//! `acmeproxy_`; labels are bounded: routes, statuses, challenge types,
//! upstream names and results — never names, serials or account ids.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use time::OffsetDateTime;

use crate::acme::types::{ChallengeType, OrderStatus};

struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    orders: IntCounterVec,
    validations: IntCounterVec,
    validation_duration: HistogramVec,
    upstream_calls: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_up: IntGauge,
    store_writable: IntGauge,
    finalize_queue_depth: IntGauge,
    finalize_oldest_age: Gauge,
    certificates_issued: IntCounter,
    certificates_revoked: IntCounter,
    own_cert_expiry: Gauge,
    rate_limited: IntCounterVec,
    validations_waiting: IntGauge,
    purged: IntCounterVec,
    store_pool: IntGaugeVec,
    leases: IntCounterVec,
    upstream_available: IntGaugeVec,
    upstream_choices: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let m = Metrics {
        http_requests: IntCounterVec::new(
            Opts::new(
                "acmeproxy_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?,
        http_duration: HistogramVec::new(
            HistogramOpts::new(
                "acmeproxy_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?,
        orders: IntCounterVec::new(
            Opts::new("acmeproxy_orders_total", "Orders by final status"),
            &["status"],
        )?,
        validations: IntCounterVec::new(
            Opts::new(
                "acmeproxy_challenge_validations_total",
                "Challenge validations by type and result",
            ),
            &["type", "result"],
        )?,
        validation_duration: HistogramVec::new(
            HistogramOpts::new(
                "acmeproxy_challenge_validation_duration_seconds",
                "Challenge validation duration by type",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["type"],
        )?,
        upstream_calls: IntCounterVec::new(
            Opts::new(
                "acmeproxy_upstream_calls_total",
                "Upstream CA calls by upstream, operation and result",
            ),
            &["upstream", "operation", "result"],
        )?,
        upstream_duration: HistogramVec::new(
            HistogramOpts::new(
                "acmeproxy_upstream_call_duration_seconds",
                "Upstream CA call duration by upstream and operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream", "operation"],
        )?,
        upstream_up: IntGauge::new(
            "acmeproxy_upstream_up",
            "1 if the upstream CA answered its last health check",
        )?,
        upstream_available: IntGaugeVec::new(
            Opts::new(
                "acmeproxy_upstream_available",
                "With several upstreams: 1 if the upstream takes new finalize jobs, 0 if marked down",
            ),
            &["upstream"],
        )?,
        upstream_choices: IntCounterVec::new(
            Opts::new(
                "acmeproxy_upstream_choices_total",
                "With several upstreams: finalize jobs sent to each, by reason (first, failover, resumed)",
            ),
            &["upstream", "reason"],
        )?,
        store_writable: IntGauge::new(
            "acmeproxy_store_writable",
            "1 if the store took the last readiness check's test write",
        )?,
        finalize_queue_depth: IntGauge::new(
            "acmeproxy_finalize_queue_depth",
            "Finalize jobs due and waiting for the upstream",
        )?,
        finalize_oldest_age: Gauge::new(
            "acmeproxy_finalize_queue_oldest_age_seconds",
            "Age of the oldest due finalize job",
        )?,
        certificates_issued: IntCounter::new(
            "acmeproxy_certificates_issued_total",
            "Certificates issued",
        )?,
        certificates_revoked: IntCounter::new(
            "acmeproxy_certificates_revoked_total",
            "Certificates revoked",
        )?,
        own_cert_expiry: Gauge::new(
            "acmeproxy_own_certificate_expiry_timestamp_seconds",
            "notAfter of the RA's own TLS certificate, Unix time",
        )?,
        rate_limited: IntCounterVec::new(
            Opts::new(
                "acmeproxy_rate_limited_total",
                "Requests refused with rateLimited, by limit (the authority.rateLimits key)",
            ),
            &["limit"],
        )?,
        validations_waiting: IntGauge::new(
            "acmeproxy_validations_waiting",
            "Validations queued for a place under authority.rateLimits.concurrentValidations",
        )?,
        purged: IntCounterVec::new(
            Opts::new(
                "acmeproxy_purged_total",
                "Records removed by the retention purge, by kind (order, authorization, certificate)",
            ),
            &["kind"],
        )?,
        store_pool: IntGaugeVec::new(
            Opts::new(
                "acmeproxy_store_pool_connections",
                "The PostgreSQL store's connection pool: max, open, idle, and waiting (requests waiting for a connection)",
            ),
            &["state"],
        )?,
        leases: IntCounterVec::new(
            Opts::new(
                "acmeproxy_leases_total",
                "Replicas: leases taken, taken over from a replica whose lease expired, found busy, or lost while held, by what they guard",
            ),
            &["lease", "outcome"],
        )?,
        registry,
    };
    m.registry.register(Box::new(m.http_requests.clone()))?;
    m.registry.register(Box::new(m.http_duration.clone()))?;
    m.registry.register(Box::new(m.orders.clone()))?;
    m.registry.register(Box::new(m.validations.clone()))?;
    m.registry
        .register(Box::new(m.validation_duration.clone()))?;
    m.registry.register(Box::new(m.upstream_calls.clone()))?;
    m.registry.register(Box::new(m.upstream_duration.clone()))?;
    m.registry.register(Box::new(m.upstream_up.clone()))?;
    m.registry
        .register(Box::new(m.upstream_available.clone()))?;
    m.registry.register(Box::new(m.upstream_choices.clone()))?;
    m.registry.register(Box::new(m.store_writable.clone()))?;
    m.registry
        .register(Box::new(m.finalize_queue_depth.clone()))?;
    m.registry
        .register(Box::new(m.finalize_oldest_age.clone()))?;
    m.registry
        .register(Box::new(m.certificates_issued.clone()))?;
    m.registry
        .register(Box::new(m.certificates_revoked.clone()))?;
    m.registry.register(Box::new(m.own_cert_expiry.clone()))?;
    m.registry.register(Box::new(m.rate_limited.clone()))?;
    m.registry
        .register(Box::new(m.validations_waiting.clone()))?;
    m.registry.register(Box::new(m.purged.clone()))?;
    m.registry.register(Box::new(m.store_pool.clone()))?;
    m.registry.register(Box::new(m.leases.clone()))?;
    // Every known label set starts at 0, so that the series exist before the
    // first event (rate() and ratios then count the first failure, and the
    // alerting rules see "no failures" rather than nothing).
    for status in [OrderStatus::Valid, OrderStatus::Invalid] {
        m.orders.with_label_values(&[status.as_str()]);
    }
    for kind in CHALLENGE_TYPES {
        for result in ["valid", "invalid"] {
            m.validations.with_label_values(&[kind.as_str(), result]);
        }
        m.validation_duration.with_label_values(&[kind.as_str()]);
    }
    Ok(m)
}

/// Every challenge type, for the series set up at 0.
const CHALLENGE_TYPES: [ChallengeType; 3] = [
    ChallengeType::Http01,
    ChallengeType::Dns01,
    ChallengeType::TlsAlpn01,
];

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics could not be set up; continuing without them");
        None
    }
});

fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.as_ref() {
        f(m);
    }
}

/// One HTTP request finished.
pub fn http_request(route: &str, status: u16, elapsed: Duration) {
    with(|m| {
        m.http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        m.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    });
}

/// An order reached a final status.
pub fn order_finished(status: OrderStatus) {
    with(|m| m.orders.with_label_values(&[status.as_str()]).inc());
}

/// A challenge validation finished.
pub fn validation_done(kind: ChallengeType, ok: bool, elapsed: Duration) {
    with(|m| {
        m.validations
            .with_label_values(&[kind.as_str(), if ok { "valid" } else { "invalid" }])
            .inc();
        m.validation_duration
            .with_label_values(&[kind.as_str()])
            .observe(elapsed.as_secs_f64());
    });
}

/// An upstream call finished.
pub fn upstream_call(upstream: &str, operation: &str, ok: bool, elapsed: Duration) {
    with(|m| {
        m.upstream_calls
            .with_label_values(&[upstream, operation, if ok { "success" } else { "failure" }])
            .inc();
        m.upstream_duration
            .with_label_values(&[upstream, operation])
            .observe(elapsed.as_secs_f64());
    });
}

/// With several upstreams: whether `upstream` takes new finalize jobs.
pub fn upstream_available(upstream: &str, up: bool) {
    with(|m| {
        m.upstream_available
            .with_label_values(&[upstream])
            .set(i64::from(up));
    });
}

/// With several upstreams: a finalize job went to `upstream` for `reason`.
pub fn upstream_chosen(upstream: &str, reason: &str) {
    with(|m| {
        m.upstream_choices
            .with_label_values(&[upstream, reason])
            .inc();
    });
}

/// Whether the upstream answered its health check.
pub fn upstream_up(up: bool) {
    with(|m| m.upstream_up.set(i64::from(up)));
}

/// Whether the store took the readiness check's test write.
pub fn store_writable(writable: bool) {
    with(|m| m.store_writable.set(i64::from(writable)));
}

/// The finalize queue as the worker last saw it.
pub fn finalize_queue(depth: usize, oldest: Option<OffsetDateTime>, now: OffsetDateTime) {
    with(|m| {
        m.finalize_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        m.finalize_oldest_age
            .set(oldest.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)));
    });
}

/// A certificate was issued.
pub fn certificate_issued() {
    with(|m| m.certificates_issued.inc());
}

/// A certificate was revoked.
pub fn certificate_revoked() {
    with(|m| m.certificates_revoked.inc());
}

/// The RA's own certificate's notAfter.
pub fn own_certificate_expiry(not_after: OffsetDateTime) {
    with(|m| m.own_cert_expiry.set(not_after.unix_timestamp() as f64));
}

/// A request was refused by rate limit `limit` (a fixed name: the
/// `authority.rateLimits` key, never an account or an address).
pub fn rate_limited(limit: &'static str) {
    with(|m| m.rate_limited.with_label_values(&[limit]).inc());
}

/// Sets the refusal count of rate limit `limit` up at 0 (the limiter
/// does so for every limit it knows, so the series exist before a refusal).
pub fn rate_limit_known(limit: &'static str) {
    with(|m| {
        m.rate_limited.with_label_values(&[limit]);
    });
}

/// A validation started (+1) or stopped (-1) waiting for a place.
pub fn validation_waiting(delta: i64) {
    with(|m| m.validations_waiting.add(delta));
}

/// The retention purge removed `n` records of `kind` (`order`,
/// `authorization` or `certificate`).
pub fn purged(kind: &'static str, n: u64) {
    if n > 0 {
        with(|m| m.purged.with_label_values(&[kind]).inc_by(n));
    }
}

/// The store's connection pool (PostgreSQL): its size limit, connections
/// open, idle, and requests waiting for one.
pub fn store_pool(max: usize, open: usize, idle: usize, waiting: usize) {
    with(|m| {
        for (state, n) in [
            ("max", max),
            ("open", open),
            ("idle", idle),
            ("waiting", waiting),
        ] {
            m.store_pool
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    });
}

/// Replicas: a lease on `lease` (`job`, `validation` or
/// `own_certificate`) was `taken`, `taken_over` (its holder's had expired),
/// found `busy`, or `lost` while held (it could not be renewed).
pub fn lease(lease: &'static str, outcome: &'static str) {
    with(|m| m.leases.with_label_values(&[lease, outcome]).inc());
}

type Refresh = Box<dyn Fn() + Send + Sync>;

/// Gauges read at scrape time (the store's pool), set by the composition
/// root.
static BEFORE_RENDER: std::sync::Mutex<Vec<Refresh>> = std::sync::Mutex::new(Vec::new());

/// Runs `refresh` before each [`render`] (it reads a figure and sets a
/// gauge). It must hold nothing that should be dropped earlier (hold a weak
/// reference).
pub fn before_render(refresh: impl Fn() + Send + Sync + 'static) {
    BEFORE_RENDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(refresh));
}

/// The text exposition of every metric.
pub fn render() -> String {
    let Some(m) = METRICS.as_ref() else {
        return String::new();
    };
    for refresh in BEFORE_RENDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        refresh();
    }
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `name` in `text` whose labels include `labels`.
    fn samples<'a>(text: &'a str, name: &str, labels: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.contains(labels))
            .collect()
    }

    #[test]
    fn known_label_sets_exist_before_their_first_event() {
        rate_limit_known("requestsPerIp");
        let text = render();
        for status in ["valid", "invalid"] {
            let lines = samples(
                &text,
                "acmeproxy_orders_total",
                &format!("status=\"{status}\""),
            );
            assert_eq!(lines.len(), 1, "{text}");
        }
        for kind in ["http-01", "dns-01", "tls-alpn-01"] {
            for result in ["valid", "invalid"] {
                let labels = format!("result=\"{result}\",type=\"{kind}\"");
                let lines = samples(&text, "acmeproxy_challenge_validations_total", &labels);
                assert_eq!(lines.len(), 1, "{labels} in\n{text}");
            }
            let labels = format!("type=\"{kind}\"");
            let count = samples(
                &text,
                "acmeproxy_challenge_validation_duration_seconds_count",
                &labels,
            );
            assert_eq!(count.len(), 1, "{labels} in\n{text}");
        }
        let limited = samples(
            &text,
            "acmeproxy_rate_limited_total",
            "limit=\"requestsPerIp\"",
        );
        assert_eq!(limited.len(), 1, "{text}");
    }

    #[test]
    fn store_writable_follows_the_last_check() {
        store_writable(false);
        assert_eq!(
            samples(&render(), "acmeproxy_store_writable", ""),
            ["acmeproxy_store_writable 0"]
        );
        store_writable(true);
        assert_eq!(
            samples(&render(), "acmeproxy_store_writable", ""),
            ["acmeproxy_store_writable 1"]
        );
    }
}
