//! Prometheus metrics of a node: requests by route and status code, latencies, upstream errors by
//! route and backend, the revision served vs the store revision last seen, session decisions, the
//! affinity view's staleness, table compile time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `new`, `followed`, `confirmed`, `failed-over`.
    pub decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub route: String,
    pub backend: String,
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<BackendLabels, Counter>,
    pub revision_served: Gauge<u64, AtomicU64>,
    pub revision_seen: Gauge<u64, AtomicU64>,
    pub table_swaps: Counter,
    pub session_creations: Counter,
    pub session_creations_deferred: Counter,
    pub session_store_calls_skipped: Counter,
    pub sessions: Family<DecisionLabels, Counter>,
    pub affinity_staleness: Gauge<f64, AtomicU64>,
    pub compile_seconds: Histogram,
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gw_node");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_errors = Family::<BackendLabels, Counter>::default();
        let revision_served = Gauge::<u64, AtomicU64>::default();
        let revision_seen = Gauge::<u64, AtomicU64>::default();
        let table_swaps = Counter::default();
        let session_creations = Counter::default();
        let session_creations_deferred = Counter::default();
        let session_store_calls_skipped = Counter::default();
        let sessions = Family::<DecisionLabels, Counter>::default();
        let affinity_staleness = Gauge::<f64, AtomicU64>::default();
        let compile_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        let access_log_dropped = Counter::default();
        registry.register(
            "requests",
            "Requests served, by route and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency (to response headers), by route",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed requests to backends, by route, backend and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "revision_served",
            "Store revision of the routing table being served",
            revision_served.clone(),
        );
        registry.register(
            "revision_seen",
            "Latest store revision seen on the watch",
            revision_seen.clone(),
        );
        registry.register(
            "table_swaps",
            "Routing tables installed",
            table_swaps.clone(),
        );
        registry.register(
            "session_creations",
            "Session entries proposed to the store (a session's first return with its token)",
            session_creations.clone(),
        );
        registry.register(
            "session_creations_deferred",
            "Session entries not proposed: past --session-creations-per-second (the session binds by its token until a later request)",
            session_creations_deferred.clone(),
        );
        registry.register(
            "session_store_calls_skipped",
            "Session reads and failovers not tried on a request's path because one found the store out of reach since the affinity watch's last bookmark, less than 5 s before (the request starts a new session at once)",
            session_store_calls_skipped.clone(),
        );
        registry.register(
            "sessions",
            "Requests of persistent sessions, by decision: new, followed (the node's view of the table), confirmed (followed after reading the store), failed-over",
            sessions.clone(),
        );
        registry.register(
            "affinity_view_staleness_seconds",
            "Seconds since the node's view of the session affinity table was last confirmed current by the store",
            affinity_staleness.clone(),
        );
        registry.register(
            "table_compile_seconds",
            "Time to compile a committed state into a routing table",
            compile_seconds.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            revision_served,
            revision_seen,
            table_swaps,
            session_creations,
            session_creations_deferred,
            session_store_calls_skipped,
            sessions,
            affinity_staleness,
            compile_seconds,
            access_log_dropped,
        }
    }
}

/// One route's metric handles, looked up once and then used without hashing label sets per request.
#[derive(Debug)]
pub struct RouteMetrics {
    pub latency: Histogram,
    route: String,
    codes: std::sync::RwLock<Vec<(u16, Counter)>>,
}

impl Metrics {
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            latency: self
                .latency
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                })
                .clone(),
            route: route.to_string(),
            codes: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Counts one request of `route` answered with `code`.
    pub fn count(&self, route: &RouteMetrics, code: u16) {
        let found = route
            .codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, k)| k.clone());
        let counter = found.unwrap_or_else(|| {
            let c = self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.route.clone(),
                    code,
                })
                .clone();
            route
                .codes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push((code, c.clone()));
            c
        });
        counter.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
