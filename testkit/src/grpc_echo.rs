//! The gRPC echo backend and its client: the Gateway API conformance suite's `GrpcEcho` service
//! (`proto/grpcecho.proto`). `Echo` and `EchoTwo` answer with what the backend saw — the fully qualified
//! method, every request header with the `:authority`, and which pod in which namespace answered;
//! `EchoThree` is unimplemented. The server speaks HTTP/2 only (h2c), as the suite's backend does.

use crate::echo::EchoServer;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower_service::Service;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("gateway_api_conformance.echo_basic.grpcecho");
}

/// The service's full name, as in `/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo`.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// The message of the backend's own UNIMPLEMENTED (`EchoThree`), telling it apart from a proxy's.
pub const BACKEND_UNIMPLEMENTED: &str = "EchoThree is not implemented";

/// The fully qualified name of one of the service's methods.
pub fn full_method(method: &str) -> String {
    format!("/{SERVICE}/{method}")
}

#[derive(Debug, Clone)]
pub struct GrpcEchoConfig {
    pub listen: SocketAddr,
    pub pod: String,
    pub namespace: String,
}

/// The request's `:authority`, which tonic does not carry into a call's metadata.
#[derive(Clone)]
struct Authority(String);

struct Echo {
    context: pb::Context,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Echo {
    /// Notes a call of `method`; its fully qualified name.
    fn record(&self, method: &str) -> String {
        let full = full_method(method);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(full.clone());
        full
    }

    fn answer(
        &self,
        method: &str,
        req: tonic::Request<pb::EchoRequest>,
    ) -> tonic::Response<pb::EchoResponse> {
        let fully_qualified_method = self.record(method);
        let authority = req
            .extensions()
            .get::<Authority>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        let mut headers = vec![pb::Header {
            key: ":authority".into(),
            value: authority.clone(),
        }];
        headers.extend(
            req.metadata()
                .clone()
                .into_headers()
                .iter()
                .map(|(k, v)| pb::Header {
                    key: k.as_str().to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                }),
        );
        tonic::Response::new(pb::EchoResponse {
            assertions: Some(pb::Assertions {
                fully_qualified_method,
                headers,
                authority,
                context: Some(self.context.clone()),
                tls_assertions: None,
            }),
            request: Some(req.into_inner()),
        })
    }
}

#[tonic::async_trait]
impl pb::grpc_echo_server::GrpcEcho for Echo {
    async fn echo(
        &self,
        req: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
        Ok(self.answer("Echo", req))
    }

    async fn echo_two(
        &self,
        req: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
        Ok(self.answer("EchoTwo", req))
    }

    async fn echo_three(
        &self,
        _req: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
        self.record("EchoThree");
        Err(tonic::Status::unimplemented(BACKEND_UNIMPLEMENTED))
    }
}

/// Starts a gRPC echo server; `seen` of the returned server lists the fully qualified methods called
/// (`EchoThree` too, though it is answered UNIMPLEMENTED).
pub async fn start(cfg: GrpcEchoConfig) -> std::io::Result<EchoServer> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = pb::grpc_echo_server::GrpcEchoServer::new(Echo {
        context: pb::Context {
            namespace: cfg.namespace,
            pod: cfg.pod,
            ..Default::default()
        },
        seen: seen.clone(),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let per_request = service_fn(move |mut req: Request<Incoming>| {
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            req.headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    req.extensions_mut().insert(Authority(authority));
                    let mut service = service.clone();
                    async move { service.call(req).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), per_request)
                    .await;
            });
        }
    });
    Ok(EchoServer::new(addr, seen, task))
}

/// How to reach a gRPC echo service: where to connect, the `:authority` to send (the address when
/// none), and TLS (trusting `root_pem`, checking the certificate against `server_name`) or plaintext.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    pub authority: Option<String>,
    pub tls: Option<(String, String)>,
}

/// A channel to `addr`; it connects on first use.
pub fn channel(addr: SocketAddr, dial: &Dial) -> Result<Channel, String> {
    let scheme = if dial.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    if let Some(authority) = &dial.authority {
        let origin = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| format!("authority {authority:?}: {e}"))?;
        endpoint = endpoint.origin(origin);
    }
    if let Some((root_pem, server_name)) = &dial.tls {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(root_pem))
                    .domain_name(server_name),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(endpoint.connect_lazy())
}

/// Calls `method` (`Echo`, `EchoTwo` or `EchoThree`) with `metadata`; the answer with its response
/// metadata, or the call's status.
pub async fn call(
    channel: Channel,
    method: &str,
    metadata: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
    let mut req = tonic::Request::new(pb::EchoRequest {});
    req.set_timeout(timeout);
    for (k, v) in metadata {
        // gRPC metadata keys are lower case (the suite's Go client lowers them too).
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| tonic::Status::invalid_argument(format!("metadata key {k:?}: {e}")))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|e| tonic::Status::invalid_argument(format!("metadata {k:?}: {e}")))?;
        req.metadata_mut().insert(key, value);
    }
    let mut client = pb::grpc_echo_client::GrpcEchoClient::new(channel);
    match method {
        "Echo" => client.echo(req).await,
        "EchoTwo" => client.echo_two(req).await,
        "EchoThree" => client.echo_three(req).await,
        other => Err(tonic::Status::invalid_argument(format!(
            "GrpcEcho has no method {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_reports_method_metadata_authority_and_pod_and_echo_three_is_unimplemented() {
        let server = start(GrpcEchoConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            pod: "grpc-v1-0".into(),
            namespace: "ns".into(),
        })
        .await
        .unwrap();
        let channel = channel(
            server.addr,
            &Dial {
                authority: Some("echo.example.com".into()),
                tls: None,
            },
        )
        .unwrap();
        let metadata = BTreeMap::from([("Version".to_string(), "two".to_string())]);
        let reply = call(
            channel.clone(),
            "EchoTwo",
            &metadata,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let a = reply.into_inner().assertions.unwrap();
        assert_eq!(a.fully_qualified_method, full_method("EchoTwo"));
        assert_eq!(a.authority, "echo.example.com");
        let context = a.context.unwrap();
        assert_eq!(
            (context.pod.as_str(), context.namespace.as_str()),
            ("grpc-v1-0", "ns")
        );
        assert!(
            a.headers
                .iter()
                .any(|h| h.key == "version" && h.value == "two"),
            "{:?}",
            a.headers
        );
        let err = call(channel, "EchoThree", &metadata, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert_eq!(err.message(), BACKEND_UNIMPLEMENTED);
        assert_eq!(
            *server.seen.lock().unwrap(),
            vec![full_method("EchoTwo"), full_method("EchoThree")]
        );
    }
}
