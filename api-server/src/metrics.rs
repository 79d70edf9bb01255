//! A member's Prometheus metrics (`--metrics HOST:PORT`, path `/metrics`): refused calls, by identity
//! and action.

use crate::authz::Denied;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub identity: String,
    pub action: String,
}

pub struct Metrics {
    registry: Registry,
    pub denied: Family<DeniedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gw_store");
        let denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "permission_denied",
            "Calls refused by authorization, by caller identity and action",
            denied.clone(),
        );
        Metrics { registry, denied }
    }
}

impl Metrics {
    pub fn count_denied(&self, d: &Denied) {
        self.denied
            .get_or_create(&DeniedLabels {
                identity: d.who.uri(),
                action: d.action.name().to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let mut r = http::Response::new(Full::new(Bytes::from(
                        if req.uri().path() == "/metrics" {
                            metrics.encode()
                        } else {
                            "not found: try /metrics\n".into()
                        },
                    )));
                    if req.uri().path() != "/metrics" {
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
