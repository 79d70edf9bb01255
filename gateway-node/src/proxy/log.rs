//! Phase 6, log: what a request did, in the node's metrics (requests and latency by route and status,
//! failed exchanges by route, backend and kind).

use super::error::{ProxyError, Side};
use crate::metrics::{BackendLabels, Metrics, RouteMetrics};
use http::StatusCode;
use std::time::Duration;

pub fn record(metrics: &Metrics, route: &RouteMetrics, status: StatusCode, elapsed: Duration) {
    metrics.count(route, status.as_u16());
    route.latency.observe(elapsed.as_secs_f64());
}

pub fn upstream_error(metrics: &Metrics, route: &str, backend: &str, kind: &'static str) {
    metrics
        .upstream_errors
        .get_or_create(&BackendLabels {
            route: route.to_string(),
            backend: backend.to_string(),
            kind,
        })
        .inc();
}

/// A request that was not proxied, in the node's log: the backend's failures and gw's own
/// (configuration, state) as warnings, the client's at debug level (they are the client's business).
pub fn failure(e: &ProxyError, route: &str) {
    let (kind, retryable) = (e.kind, e.kind.retryable());
    match e.kind.side() {
        Side::Downstream => tracing::debug!(?kind, route, "request refused: {e}"),
        Side::Upstream => tracing::warn!(?kind, retryable, route, "backend failed: {e}"),
        Side::Internal => tracing::warn!(?kind, retryable, route, "request not served: {e}"),
    }
}
