//! The Kubernetes API of a member (`--kube-listen`): kubectl, kube-rs, client-go and GitOps tools talk
//! to the store as they would to a kube-apiserver, for the kinds gw stores.
//!
//! HTTPS (HTTP/2 and HTTP/1.1) with the cluster's TLS: a client presents a certificate of the cluster's
//! CA (`gwadm kubeconfig` writes one into a kubeconfig), whose identity is authorized exactly as on the
//! gRPC API — every request becomes an in-process call to this member's own Config service carrying
//! the authenticated identity (`auth::Authenticated`), so that validation, authorization, forwarding
//! to the leader, redaction of Secrets and the watch guarantees are the same code as for gwadm.
//!
//! - `path`: what a URL addresses; `discovery`: `/version`, `/api`, `/apis`, aggregated discovery;
//!   `openapi`: the OpenAPI v3 documents;
//! - `resources`: get, list (selectors, pages at one revision), create, update, patch, delete, the
//!   status subresource; `watch`: watches as streams of JSON events;
//! - `status`: errors as `metav1.Status`.

pub mod discovery;
pub mod openapi;
pub mod path;
mod resources;
pub mod status;
mod watch;

use crate::auth::Authenticated;
use crate::node::Node;
use crate::services::ConfigService;
use bytes::Bytes;
use gw_client::{Identity, Security};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use path::{NotFound, Target};
use serde_json::Value;
use status::Failure;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// The largest request body read (an apply is at most `MAX_APPLY_BYTES`; JSON and YAML add a little).
const MAX_BODY_BYTES: usize = 2 * gw_client::MAX_APPLY_BYTES;

pub type Body = BoxBody<Bytes, Infallible>;

/// The Kubernetes API of one member.
pub struct KubeApi {
    node: Arc<Node>,
    config: ConfigService,
    /// `HOST:PORT` clients reach this API at (discovery reports it).
    advertise: String,
}

/// One request: who sent it, and its query.
pub struct Call {
    pub who: Identity,
    pub query: HashMap<String, String>,
    /// The client's `User-Agent`, whose program name is the default field manager.
    pub user_agent: String,
    /// Warnings for the response (`Warning` headers, which kubectl prints).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Call {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A warning for the response (once, however often a retried write finds it).
    pub fn warn(&self, w: String) {
        let mut list = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        if !list.contains(&w) {
            list.push(w);
        }
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.param(k), Some("true" | "1"))
    }

    /// A request to this member's own services, made as the caller.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(Authenticated(self.who.clone()));
        r
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    respond(code, "application/json", v.to_string())
}

fn respond(code: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

impl From<Failure> for Response<Body> {
    fn from(f: Failure) -> Response<Body> {
        json_response(f.code, &f.body)
    }
}

/// Splits a query string into decoded parameters (the last of a repeated name wins).
fn query(q: Option<&str>) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

impl KubeApi {
    async fn handle(
        self: Arc<Self>,
        who: Result<Identity, String>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let who = match who {
            Ok(w) => w,
            Err(e) => return Failure::unauthorized(e).into(),
        };
        let call = Call {
            who,
            query: query(req.uri().query()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            warnings: Default::default(),
        };
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let target = match path::parse(req.uri().path()) {
            Ok(t) => t,
            Err(NotFound::Path) => {
                return Failure::not_found("the server could not find the requested resource")
                    .into();
            }
            Err(NotFound::Resource(m)) => return Failure::not_found(m).into(),
        };
        let method = req.method().clone();
        match (target, &method) {
            (Target::Resource(r), _) => resources::handle(&self, &call, r, req).await,
            (_, m) if *m != Method::GET => {
                Failure::method_not_allowed(format!("{m} is not allowed here")).into()
            }
            (Target::Version, _) => json_response(StatusCode::OK, &discovery::version()),
            (Target::CoreVersions, _) if discovery::wants_aggregated(&accept) => respond(
                StatusCode::OK,
                discovery::AGGREGATED_CONTENT_TYPE,
                discovery::aggregated(true).to_string(),
            ),
            (Target::Groups, _) if discovery::wants_aggregated(&accept) => respond(
                StatusCode::OK,
                discovery::AGGREGATED_CONTENT_TYPE,
                discovery::aggregated(false).to_string(),
            ),
            (Target::CoreVersions, _) => {
                json_response(StatusCode::OK, &discovery::core_versions(&self.advertise))
            }
            (Target::Groups, _) => json_response(StatusCode::OK, &discovery::group_list()),
            (Target::Group(g), _) => json_response(StatusCode::OK, &discovery::group(&g)),
            (Target::GroupVersion { group, version }, _) => {
                json_response(StatusCode::OK, &discovery::resource_list(&group, &version))
            }
            (Target::OpenApiV3Index, _) => json_response(StatusCode::OK, &openapi::index()),
            (Target::OpenApiV3 { group, version }, _) => {
                match openapi::group_version(&group, &version) {
                    Some(doc) => json_response(StatusCode::OK, &doc),
                    None => {
                        Failure::not_found(format!("no OpenAPI document for {group}/{version}"))
                            .into()
                    }
                }
            }
            (Target::OpenApiV2, _) => Failure::not_found(
                "OpenAPI v2 is not served: gw publishes OpenAPI v3 (/openapi/v3)",
            )
            .into(),
        }
    }
}

/// Reads a request body, at most `MAX_BODY_BYTES`.
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, Failure> {
    http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("the request body could not be read (at most {MAX_BODY_BYTES} bytes): {e}"),
            )
        })
}

/// The identity of a connection's client certificate (`Err`: why there is none to trust).
fn identify(
    node: &Node,
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<Identity, String> {
    let tls = match node.auth.security() {
        Security::Insecure => {
            return Ok(Identity::Admin {
                name: "insecure".into(),
            });
        }
        Security::Mutual(tls) => tls,
    };
    match certs {
        Some(chain) if !chain.is_empty() => node.auth.verify(tls, chain),
        _ => Err(
            "no client certificate: this API requires one of the cluster's (see `gwadm kubeconfig`)"
                .into(),
        ),
    }
}

/// Serves the Kubernetes API on `listener` until `shutdown` turns true.
pub fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    advertise: String,
    mut shutdown: signal::Receiver<bool>,
) -> JoinHandle<()> {
    let api = Arc::new(KubeApi {
        config: ConfigService { node: node.clone() },
        node,
        advertise,
    });
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                c = crate::accept(&listener) => c,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            let api = api.clone();
            tokio::spawn(async move {
                match api.node.auth.security().clone() {
                    Security::Insecure => {
                        let who = identify(&api.node, None);
                        serve_connection(api, who, tcp).await;
                    }
                    Security::Mutual(tls) => {
                        // kubectl speaks HTTP/2; Python clients HTTP/1.1.
                        let mut config = (*tls.server_config()).clone();
                        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                        let Some(stream) = crate::handshake(&acceptor, tcp, remote).await else {
                            return;
                        };
                        let who = identify(&api.node, stream.get_ref().1.peer_certificates());
                        serve_connection(api, who, stream).await;
                    }
                }
            });
        }
    })
}

async fn serve_connection<S>(api: Arc<KubeApi>, who: Result<Identity, String>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (api, who) = (api.clone(), who.clone());
        async move { Ok::<_, Infallible>(api.handle(who, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = query(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&limit=2&watch"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["limit"], "2");
        assert_eq!(q["watch"], "");
    }
}
