//! A member's Prometheus metrics (`--metrics HOST:PORT`, path `/metrics`): Raft (term, leader, log and
//! applied indexes), the store (revision, objects, compaction), proposals and their latency, the
//! storage's fsyncs and snapshots, watchers and how far behind they are, every RPC by method and gRPC
//! code with its latency, and refused calls by identity and action. Gauges read from Raft and the
//! state are refreshed when scraped.

use crate::authz::Denied;
use bytes::Bytes;
use gw_store::storage::StorageMetrics;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub identity: String,
    pub action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/gw.v1.Config/Apply`; `other` for paths gw does not serve.
    pub method: String,
    /// The gRPC status code (`0`: OK or a status sent in trailers).
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `committed`, `refused` (the transaction failed), `unknown` (not committed in time).
    pub outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// The values read from Raft and the state at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub term: u64,
    pub leader: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub revision: u64,
    pub compact_revision: u64,
    pub objects: u64,
}

pub struct Metrics {
    registry: Registry,
    pub denied: Family<DeniedLabels, Counter>,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub proposals: Family<OutcomeLabels, Counter>,
    pub proposal_seconds: Histogram,
    pub watchers: Gauge,
    pub watch_lag: Histogram,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_is_leader: Gauge,
    raft_last_log_index: Gauge,
    raft_applied_index: Gauge,
    raft_snapshot_index: Gauge,
    raft_purged_index: Gauge,
    revision: Gauge,
    compact_revision: Gauge,
    objects: Gauge,
}

impl Metrics {
    pub fn new(storage: &StorageMetrics) -> Metrics {
        let mut registry = Registry::with_prefix("gw_store");
        let m = Metrics {
            denied: Family::default(),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            proposals: Family::default(),
            proposal_seconds: seconds_histogram(),
            watchers: Gauge::default(),
            watch_lag: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_snapshot_index: Gauge::default(),
            raft_purged_index: Gauge::default(),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            objects: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "permission_denied",
            "Calls refused by authorization, by caller identity and action",
            m.denied.clone(),
        );
        r.register(
            "rpc_requests",
            "RPCs served, by method and gRPC code",
            m.rpcs.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "RPC latency to the response headers (for streams: to the stream's start), by method",
            m.rpc_seconds.clone(),
        );
        r.register(
            "proposals",
            "Transactions proposed by this member while it led, by outcome",
            m.proposals.clone(),
        );
        r.register(
            "proposal_duration_seconds",
            "From proposing a transaction to its commit and apply on this member (the leader)",
            m.proposal_seconds.clone(),
        );
        r.register(
            "fsync_duration_seconds",
            "Each durability point of the storage (sled flush and fdatasync)",
            storage.sync_seconds.clone(),
        );
        r.register(
            "fsync_batch_appends",
            "Log appends made durable by one fsync (group commit)",
            storage.sync_batch.clone(),
        );
        r.register(
            "snapshot_build_duration_seconds",
            "Time to build and persist a snapshot of the state",
            storage.snapshot_build_seconds.clone(),
        );
        r.register(
            "snapshot_bytes",
            "Size of the last snapshot built or installed",
            storage.snapshot_bytes.clone(),
        );
        r.register(
            "watchers",
            "Watch streams open on this member",
            m.watchers.clone(),
        );
        r.register(
            "watch_lag_revisions",
            "How many revisions this member had applied beyond the one a watcher was being sent",
            m.watch_lag.clone(),
        );
        for (name, help, g) in [
            ("raft_term", "The current Raft term", &m.raft_term),
            (
                "raft_leader",
                "The leader's id (0: none known)",
                &m.raft_leader,
            ),
            (
                "raft_is_leader",
                "1 when this member leads",
                &m.raft_is_leader,
            ),
            (
                "raft_last_log_index",
                "Index of the last entry in this member's log",
                &m.raft_last_log_index,
            ),
            (
                "raft_applied_index",
                "Index of the last entry applied to the state",
                &m.raft_applied_index,
            ),
            (
                "raft_snapshot_index",
                "Last index the current snapshot covers",
                &m.raft_snapshot_index,
            ),
            (
                "raft_purged_index",
                "Last index purged from the log",
                &m.raft_purged_index,
            ),
            ("revision", "The state's revision", &m.revision),
            (
                "compact_revision",
                "Oldest revision after which the history still has the changes",
                &m.compact_revision,
            ),
            ("objects", "Objects in the state", &m.objects),
        ] {
            r.register(name, help, g.clone());
        }
        Metrics { registry, ..m }
    }

    pub fn count_denied(&self, d: &Denied) {
        self.denied
            .get_or_create(&DeniedLabels {
                identity: d.who.uri(),
                action: d.action.name().to_string(),
            })
            .inc();
    }

    /// One RPC answered (`code`: its gRPC status).
    pub fn count_rpc(&self, path: String, code: String, took: Duration) {
        let method = if path.starts_with("/gw.v1.") {
            path
        } else {
            "other".to_string()
        };
        self.rpc_seconds
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.rpcs.get_or_create(&RpcLabels { method, code }).inc();
    }

    pub fn set(&self, s: Snapshot) {
        let g = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        g(&self.raft_term, s.term);
        g(&self.raft_leader, s.leader);
        g(&self.raft_is_leader, u64::from(s.is_leader));
        g(&self.raft_last_log_index, s.last_log_index);
        g(&self.raft_applied_index, s.applied_index);
        g(&self.raft_snapshot_index, s.snapshot_index);
        g(&self.raft_purged_index, s.purged_index);
        g(&self.revision, s.revision);
        g(&self.compact_revision, s.compact_revision);
        g(&self.objects, s.objects);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts every RPC of a tonic server (`Server::builder().layer(RpcLayer(..))`).
#[derive(Clone)]
pub struct RpcLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[allow(clippy::disallowed_methods)] // runtime: the call's latency, for the metrics
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let resp = fut.await;
            let code = match &resp {
                // A failure before any message is a "trailers-only" response: the code is a header.
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "transport".to_string(),
            };
            metrics.count_rpc(path, code, start.elapsed());
            resp
        })
    }
}

/// Serves `/metrics` until the process ends; `refresh` updates the gauges read at scrape time.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (metrics, refresh) = (metrics.clone(), refresh.clone());
                async move {
                    let found = req.uri().path() == "/metrics";
                    let body = if found {
                        metrics.set(refresh());
                        metrics.encode()
                    } else {
                        "not found: try /metrics\n".into()
                    };
                    let mut r = http::Response::new(Full::new(Bytes::from(body)));
                    if !found {
                        *r.status_mut() = http::StatusCode::NOT_FOUND;
                    }
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
