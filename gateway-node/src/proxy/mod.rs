//! The request path: routing-table lookup, the rule's filters (redirect, header modifiers, rewrites,
//! mirrors), weighted backend choice, forwarding with timeouts, response header modifiers, WebSocket
//! upgrades. Errors get the status the Gateway API prescribes (404 no route, 500 invalid backends or
//! filters, 503 no endpoint, 504 timeout; gRPC requests get gRPC statuses).

mod body;
mod upstream;

use crate::hostname::normalize_host;
use crate::metrics::{BackendLabels, Metrics, RouteMetrics};
use crate::session::{Selection, Sessions};
use crate::table::{
    BackendTarget, Filters, RequestView, RoutingTable, RuleAction, UpstreamProtocol,
};
use arc_swap::ArcSwap;
pub use body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::RngExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
pub use upstream::{UpstreamError, Upstreams};

/// Bodies in both directions.
pub type ProxyBody = Body;

/// Largest request body buffered to be copied to mirrors.
const MIRROR_BODY_LIMIT: usize = 1 << 20;

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket this node listens on (the routing-table key).
    pub socket: SocketAddr,
    pub remote: SocketAddr,
    pub https: bool,
    /// The client's address as an `X-Forwarded-For` value.
    pub forwarded_for: HeaderValue,
}

impl ConnInfo {
    pub fn new(socket: SocketAddr, remote: SocketAddr, https: bool) -> ConnInfo {
        let forwarded_for = HeaderValue::from_str(&remote.ip().to_string())
            .expect("an IP address is a header value");
        ConnInfo {
            socket,
            remote,
            https,
            forwarded_for,
        }
    }
}

pub struct Proxy {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub metrics: Arc<Metrics>,
    /// Session persistence (absent: rules with persistence route as without it).
    pub sessions: Option<Arc<Sessions>>,
    upstreams: Arc<Upstreams>,
    /// Metrics of requests no route matched.
    unmatched: std::sync::OnceLock<RouteMetrics>,
}

pub fn empty() -> ProxyBody {
    Body::empty()
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Body::full(b)
}

fn plain(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A trailers-only gRPC response carrying a status code.
fn grpc_status(code: u8, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(msg) {
        h.insert("grpc-message", v);
    }
    r
}

/// gRPC status codes used here.
const GRPC_UNIMPLEMENTED: u8 = 12;
const GRPC_UNAVAILABLE: u8 = 14;
const GRPC_INTERNAL: u8 = 13;
const GRPC_DEADLINE_EXCEEDED: u8 = 4;

/// An error response in the request's protocol.
fn failure(grpc: bool, status: StatusCode, msg: &str) -> Response<ProxyBody> {
    if !grpc {
        return plain(status, msg);
    }
    let code = match status {
        StatusCode::NOT_FOUND => GRPC_UNIMPLEMENTED,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => GRPC_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT => GRPC_DEADLINE_EXCEEDED,
        _ => GRPC_INTERNAL,
    };
    grpc_status(code, msg)
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1); `te: trailers` is kept
/// for gRPC.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    let trailers = h.get(header::TE).is_some_and(|v| v == "trailers");
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
    ] {
        h.remove(n);
    }
    h.remove(header::TE);
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// Addresses a request to a backend: for HTTP/1.1 the URI names the endpoint and the Host header
/// carries the (possibly rewritten) host; for HTTP/2 the URI's authority is the host (`:authority`),
/// the connection being chosen by endpoint.
fn prepare(
    mut req: Request<ProxyBody>,
    path_and_query: &PathAndQuery,
    host: &Authority,
    endpoint: &Authority,
    protocol: UpstreamProtocol,
) -> Request<ProxyBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.path_and_query = Some(path_and_query.clone());
    match protocol {
        UpstreamProtocol::Http1 => {
            uri.authority = Some(endpoint.clone());
            if let Ok(h) = HeaderValue::from_str(host.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        UpstreamProtocol::H2c => {
            uri.authority = Some(host.clone());
            req.headers_mut().remove(header::HOST);
        }
    }
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    req
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
}

impl Proxy {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Arc<Metrics>,
        sessions: Option<Arc<Sessions>>,
    ) -> Proxy {
        Proxy {
            table,
            metrics,
            sessions,
            upstreams: Arc::new(Upstreams::default()),
            unmatched: std::sync::OnceLock::new(),
        }
    }

    /// Serves one request.
    pub async fn handle(&self, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let table = self.table.load_full();
        let Some(socket) = table.sockets.get(&conn.socket) else {
            return failure(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                "this listener is no longer configured",
            );
        };
        let host = match req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        }) {
            Some(h) => normalize_host(h),
            None => return failure(grpc, StatusCode::BAD_REQUEST, "the request has no Host"),
        };
        let matched = socket.listener_for(&host).and_then(|l| {
            let view = RequestView {
                method: req.method(),
                path: req.uri().path(),
                query: req.uri().query(),
                headers: req.headers(),
            };
            l.route(&host, &view).map(|e| (e.action.clone(), l.port))
        });
        let Some((action, listener_port)) = matched else {
            let r = failure(grpc, StatusCode::NOT_FOUND, "no route matches");
            self.record(
                self.unmatched.get_or_init(|| self.metrics.route("(none)")),
                r.status(),
                start,
            );
            return r;
        };
        let resp = self
            .forward(conn, &host, listener_port, &action, grpc, req)
            .await;
        self.record(
            action
                .route
                .metrics
                .get_or_init(|| self.metrics.route(&action.route.id)),
            resp.status(),
            start,
        );
        resp
    }

    fn record(&self, route: &RouteMetrics, status: StatusCode, start: Instant) {
        self.metrics.count(route, status.as_u16());
        route.latency.observe(start.elapsed().as_secs_f64());
    }

    async fn forward(
        &self,
        conn: &ConnInfo,
        host: &str,
        listener_port: u16,
        action: &RuleAction,
        grpc: bool,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        if let Some(why) = &action.filters.invalid {
            return failure(grpc, StatusCode::INTERNAL_SERVER_ERROR, why);
        }
        if let Some(r) = &action.filters.redirect {
            return redirect(r, conn, host, listener_port, &req, action.prefix.as_deref());
        }
        let backends = &action.backends;
        let selection = match (&action.session, &self.sessions) {
            (Some(cfg), Some(sessions)) => {
                sessions
                    .select(cfg, req.headers(), backends, conn.https)
                    .await
            }
            _ => Selection::Fallback,
        };
        let (chosen, session_token) = match selection {
            Selection::Chosen(c) => (Some((c.entry, c.endpoint)), Some(c)),
            Selection::Unavailable(why) => {
                return failure(grpc, StatusCode::SERVICE_UNAVAILABLE, &why);
            }
            Selection::Fallback => (None, None),
        };
        let backend = match chosen {
            Some((entry, _)) => &backends.entries[entry],
            None => {
                if backends.total_weight == 0 {
                    return failure(
                        grpc,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the rule has no backend to send to",
                    );
                }
                let pick = rand::rng().random_range(0..backends.total_weight);
                let Some(backend) = backends.choose(pick) else {
                    return failure(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no backend chosen");
                };
                backend
            }
        };
        let upstream = match &backend.target {
            BackendTarget::Upstream(u) => u.clone(),
            BackendTarget::Invalid(why) => {
                return failure(grpc, StatusCode::INTERNAL_SERVER_ERROR, why);
            }
        };
        if let Some(why) = &backend.filters.invalid {
            return failure(grpc, StatusCode::INTERNAL_SERVER_ERROR, why);
        }
        let Some(endpoint_index) = chosen.map(|(_, p)| p).or_else(|| upstream.pick_index()) else {
            return failure(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{} has no ready endpoint", upstream.id),
            );
        };
        let (endpoint, endpoint_authority) = upstream.endpoint(endpoint_index);

        let upgrade = wants_upgrade(req.headers()) && upstream.protocol == UpstreamProtocol::Http1;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers, upgrade);
        let filter_sets: [&Filters; 2] = [&action.filters, &backend.filters];
        let mut new_path: Option<String> = None;
        let mut host_value = original_host;
        for f in filter_sets {
            f.request_headers.apply(&mut parts.headers);
            if let Some(rw) = &f.rewrite {
                if let Some(p) = &rw.path {
                    let current = new_path.as_deref().unwrap_or(parts.uri.path());
                    new_path = Some(p.apply(current, action.prefix.as_deref()));
                }
                if let Some(h) = &rw.hostname {
                    host_value = Some(h.clone());
                }
            }
        }
        let proto = if conn.https { "https" } else { "http" };
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
        parts
            .headers
            .append("x-forwarded-for", conn.forwarded_for.clone());
        // The request target: the original one unless a filter rewrote the path.
        let path_and_query = match (new_path, parts.uri.path_and_query()) {
            (None, Some(pq)) => pq.clone(),
            (new_path, pq) => {
                let path = new_path.unwrap_or_else(|| "/".into());
                let target = match pq.and_then(|p| p.query()) {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                match PathAndQuery::try_from(target) {
                    Ok(p) => p,
                    Err(e) => {
                        return failure(
                            grpc,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &format!("rewritten path: {e}"),
                        );
                    }
                }
            }
        };
        let authority = match host_value
            .as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        {
            Some(a) => a,
            None => match Authority::try_from(host) {
                Ok(a) => a,
                Err(_) => {
                    return failure(
                        grpc,
                        StatusCode::BAD_REQUEST,
                        "the request's host is not a valid authority",
                    );
                }
            },
        };

        // Mirrors get a copy; the body is buffered (bounded) only when there is one to copy.
        let mirrors: Vec<_> = filter_sets
            .iter()
            .flat_map(|f| f.mirrors.iter().cloned())
            .collect();
        let body: ProxyBody = if mirrors.is_empty() {
            Body::Incoming(body)
        } else {
            let bytes = match http_body_util::Limited::new(body, MIRROR_BODY_LIMIT)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return failure(
                        grpc,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large to mirror",
                    );
                }
            };
            for m in &mirrors {
                let Some((ep, ep_authority)) = m.pick() else {
                    continue;
                };
                let mut copy = Request::new(full(bytes.clone()));
                *copy.method_mut() = parts.method.clone();
                *copy.headers_mut() = parts.headers.clone();
                let copy = prepare(copy, &path_and_query, &authority, ep_authority, m.protocol);
                let (upstreams, protocol) = (self.upstreams.clone(), m.protocol);
                tokio::spawn(async move {
                    // A mirror's answer is ignored, and so is its failure.
                    let _ = upstreams.send(protocol, ep, copy).await;
                });
            }
            full(bytes)
        };

        let out = prepare(
            Request::from_parts(parts, body),
            &path_and_query,
            &authority,
            endpoint_authority,
            upstream.protocol,
        );
        let send = self.upstreams.send(upstream.protocol, endpoint, out);
        let deadline = action
            .timeouts
            .request
            .into_iter()
            .chain(action.timeouts.backend)
            .min();
        let result = match deadline {
            Some(d) => match tokio::time::timeout(d, send).await {
                Ok(r) => r,
                Err(_) => {
                    self.upstream_error(action, &upstream.id, "timeout");
                    return failure(
                        grpc,
                        StatusCode::GATEWAY_TIMEOUT,
                        "the backend did not answer in time",
                    );
                }
            },
            None => send.await,
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                let kind = if matches!(e, UpstreamError::Connect(..)) {
                    if let (Some(cfg), Some(sessions), Some(c)) =
                        (&action.session, &self.sessions, &session_token)
                    {
                        sessions.backend_failed(cfg, c, backends);
                    }
                    "connect"
                } else {
                    "http"
                };
                self.upstream_error(action, &upstream.id, kind);
                return failure(
                    grpc,
                    StatusCode::BAD_GATEWAY,
                    &format!("backend {}: {e}", upstream.id),
                );
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                            .await;
                }
            });
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(
            &mut rparts.headers,
            rparts.status == StatusCode::SWITCHING_PROTOCOLS,
        );
        for f in [&backend.filters, &action.filters] {
            f.response_headers.apply(&mut rparts.headers);
        }
        if let Some((name, value)) = session_token.and_then(|c| c.issue) {
            rparts.headers.append(name, value);
        }
        Response::from_parts(rparts, rbody)
    }

    fn upstream_error(&self, action: &RuleAction, backend: &str, kind: &'static str) {
        self.metrics
            .upstream_errors
            .get_or_create(&BackendLabels {
                route: action.route.id.clone(),
                backend: backend.to_string(),
                kind,
            })
            .inc();
    }
}

/// The response of a RequestRedirect filter. Gateway API: without a port, the port is the scheme's
/// well-known one when the filter sets a scheme, else the listener's; a well-known port is not written.
fn redirect(
    r: &crate::table::Redirect,
    conn: &ConnInfo,
    host: &str,
    listener_port: u16,
    req: &Request<Incoming>,
    prefix: Option<&str>,
) -> Response<ProxyBody> {
    let scheme = r
        .scheme
        .unwrap_or(if conn.https { "https" } else { "http" });
    let hostname = r.hostname.as_deref().unwrap_or(host);
    let port = r.port.or(if r.scheme.is_some() {
        None
    } else {
        Some(listener_port)
    });
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => m.apply(req.uri().path(), prefix),
        None => req.uri().path().to_string(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = match port {
        Some(p) => format!("{scheme}://{hostname}:{p}{path}{query}"),
        None => format!("{scheme}://{hostname}{path}{query}"),
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
