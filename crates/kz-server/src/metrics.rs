//! The Prometheus registry behind `GET /metrics` (text exposition format 0.0.4).
//!
//! Label values come from closed sets (endpoints, outcomes, status codes) or from the bundle
//! (policy, backend and issuer names), never from a caller's input, so the number of series is
//! bounded by the bundle.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the server.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kz_http_requests_total{endpoint, code}`.
    pub requests: IntCounterVec,
    /// `kz_http_request_duration_seconds{endpoint}`.
    pub request_seconds: HistogramVec,
    /// `kz_decisions_total{outcome, policy}` (`outcome`: allow, deny, error).
    pub decisions: IntCounterVec,
    /// `kz_backend_calls_total{backend, outcome}` (`outcome`: ok or the error kind).
    pub backend_calls: IntCounterVec,
    /// `kz_backend_duration_seconds{backend}`.
    pub backend_seconds: HistogramVec,
    /// `kz_cache_lookups_total{result}` (`hit`, `miss`).
    pub cache: IntCounterVec,
    /// `kz_jwks_refreshes_total{result}` (`ok`, `failed`).
    pub jwks_refreshes: IntCounterVec,
    /// `kz_audit_queue_depth`.
    pub audit_queue: IntGauge,
    /// `kz_audit_refused_total`: records the audit log could not take (answered 503).
    pub audit_refused: IntCounter,
    /// `kz_rate_limited_total`.
    pub rate_limited: IntCounter,
    /// `kz_bundle_reloads_total{result}` (`ok`, `invalid`).
    pub reloads: IntCounterVec,
    /// `kz_bundle_loaded_timestamp_seconds`: when the bundle in force was loaded.
    pub bundle_loaded: IntGauge,
}

/// Buckets for request latencies (seconds): 50 µs … 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let requests = counter_vec(
            "kz_http_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            &["endpoint", "code"],
        )?;
        let request_seconds = histogram_vec(
            "kz_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint.",
            &["endpoint"],
        )?;
        let decisions = counter_vec(
            "kz_decisions_total",
            "Decisions on refs, by outcome (allow, deny, error) and deciding policy.",
            &["outcome", "policy"],
        )?;
        let backend_calls = counter_vec(
            "kz_backend_calls_total",
            "Values requested from backends, by backend and outcome.",
            &["backend", "outcome"],
        )?;
        let backend_seconds = histogram_vec(
            "kz_backend_duration_seconds",
            "Time for a backend to answer a request's refs, by backend.",
            &["backend"],
        )?;
        let cache = counter_vec(
            "kz_cache_lookups_total",
            "Value cache lookups of resolvers with cache_ttl, by result (hit, miss).",
            &["result"],
        )?;
        let jwks_refreshes = counter_vec(
            "kz_jwks_refreshes_total",
            "Key set (JWKS) fetches, by result (ok, failed).",
            &["result"],
        )?;
        let audit_queue = IntGauge::new(
            "kz_audit_queue_depth",
            "Audit records accepted and not yet taken by the writer.",
        )?;
        registry.register(Box::new(audit_queue.clone()))?;
        let audit_refused = IntCounter::new(
            "kz_audit_refused_total",
            "Requests answered 503 because the audit log could not take their records.",
        )?;
        registry.register(Box::new(audit_refused.clone()))?;
        let rate_limited = IntCounter::new(
            "kz_rate_limited_total",
            "Requests answered 429 because their identity exceeded its rate.",
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        let reloads = counter_vec(
            "kz_bundle_reloads_total",
            "Bundle reloads, by result (ok, invalid: the old bundle kept serving).",
            &["result"],
        )?;
        let bundle_loaded = IntGauge::new(
            "kz_bundle_loaded_timestamp_seconds",
            "Unix time at which the bundle in force was loaded.",
        )?;
        registry.register(Box::new(bundle_loaded.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_seconds,
            decisions,
            backend_calls,
            backend_seconds,
            cache,
            jwks_refreshes,
            audit_queue,
            audit_refused,
            rate_limited,
            reloads,
            bundle_loaded,
        })
    }

    /// The exposition text.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec does not fail for metrics built by this type.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
