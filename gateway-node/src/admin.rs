//! The admin endpoint: `/status` (revision served, store revision last seen, staleness, sockets,
//! status-writer role), `/metrics` (Prometheus), `/healthz`.

use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::table::Health;
use crate::watcher::WatchHealth;
use bytes::Bytes;
use gw_model::registry::NodeLease;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the node knows about itself, shared with the admin endpoint.
pub struct NodeState {
    pub name: String,
    pub gateway_class: String,
    pub region: String,
    pub zone: String,
    /// What the proxy saw of the endpoints it sends to.
    pub endpoint_health: Arc<Health>,
    pub started: Instant,
    /// The store members it was given (`--store`), in order.
    pub store: Vec<String>,
    /// `started`, in ms since the epoch.
    pub started_ms: u64,
    pub revision_served: AtomicU64,
    pub status_writer: Arc<AtomicBool>,
    pub watch: Arc<WatchHealth>,
    pub sockets: Mutex<Vec<String>>,
    pub failed_sockets: Mutex<BTreeMap<String, String>>,
    pub metrics: Arc<Metrics>,
    /// The admin endpoint's address, if any.
    pub admin: Option<SocketAddr>,
    pub sessions: Arc<Sessions>,
    /// When (ms since the epoch) the table of `revision_served` was installed.
    pub serving_since_ms: AtomicU64,
    /// Signalled when a new routing table is installed.
    pub table_changed: tokio::sync::Notify,
}

impl NodeState {
    /// Every config change up to this revision is in the table served: the watch has confirmed the
    /// store revision `seen`, and everything it published has been compiled. Read in the reverse
    /// order of the watcher's writes (published, then seen), so a revision counted in `seen` was
    /// published before, and is compiled if `served` has caught up with `published`.
    pub fn current_through(&self) -> u64 {
        let seen = self.watch.seen.load(Ordering::SeqCst);
        let published = self.watch.published.load(Ordering::SeqCst);
        let served = self.revision_served.load(Ordering::SeqCst);
        if served >= published {
            seen.max(served)
        } else {
            served
        }
    }

    /// This node's registration (see `gw_model::registry`), renewed now.
    pub fn lease(&self, duration_seconds: u32) -> NodeLease {
        let served = self.revision_served.load(Ordering::SeqCst);
        NodeLease {
            gateway_class: self.gateway_class.clone(),
            region: self.region.clone(),
            addresses: self
                .sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            admin: self.admin.map(|a| a.to_string()).unwrap_or_default(),
            revision_served: served,
            current_through: self.current_through().max(served),
            serving_since_ms: self.serving_since_ms.load(Ordering::SeqCst),
            store_connected: self.watch.connected.load(Ordering::Relaxed),
            failed_sockets: self
                .failed_sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect(),
            started_ms: self.started_ms,
            renew_time_ms: gw_client::clock::now_ms(),
            lease_duration_seconds: duration_seconds,
        }
    }

    pub fn report(&self) -> serde_json::Value {
        let current = self.current_through();
        let served = self.revision_served.load(Ordering::Relaxed);
        let seen = self.watch.seen.load(Ordering::Relaxed).max(served);
        let contact = self.watch.last_contact_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let (affinity_entries, affinity_revision) = self.sessions.view_size();
        json!({
            "node": self.name,
            "gatewayClass": self.gateway_class,
            "region": self.region,
            "zone": self.zone,
            "ejectedEndpoints": self.endpoint_health.ejected(gw_client::clock::now_ms()),
            "downEndpoints": self.endpoint_health.down(),
            "revisionServed": served,
            "revisionSeen": seen,
            "currentThrough": current,
            "revisionsBehind": seen - current.min(seen),
            "storeConnected": self.watch.connected.load(Ordering::Relaxed),
            "watching": self.watch.watching().and_then(|i| self.store.get(i)),
            "msSinceStoreContact": if contact == 0 { serde_json::Value::Null } else { json!(now.saturating_sub(contact)) },
            "statusWriter": self.status_writer.load(Ordering::Relaxed),
            "affinityEntries": affinity_entries,
            "affinityRevision": affinity_revision,
            "sockets": *self.sockets.lock().unwrap_or_else(|p| p.into_inner()),
            "failedSockets": *self.failed_sockets.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn serve_one(state: &NodeState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&state.report()).unwrap_or_default(),
        ),
        "/metrics" => {
            // Gauges kept elsewhere are read at scrape time.
            state
                .metrics
                .revision_seen
                .set(state.watch.seen.load(Ordering::Relaxed));
            if let Some(age) = state.sessions.view_age_ms() {
                state.metrics.affinity_staleness.set(age as f64 / 1000.0);
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.encode(),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /status, /metrics, /healthz\n".into(),
        ),
    }
}

pub async fn serve(addr: SocketAddr, state: Arc<NodeState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(serve_one(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
