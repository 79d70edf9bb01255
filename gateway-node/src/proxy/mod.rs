//! The request path, as named phases: route (`route`) → choose a backend (`choose`, after session
//! persistence) → prepare the request (`prepare`) → send it (`send`, with mirrors) → the response
//! filters (`respond`) → log (`log`). The phases are pure functions with their own tests (but for
//! `send`); this module is their runtime: it reads the routing table, draws randomness, asks the
//! session runtime, wires WebSocket upgrades and turns a `ProxyError` into the response the Gateway
//! API prescribes (gRPC requests get gRPC statuses).

mod accept;
mod body;
mod choose;
pub mod error;
pub mod forward;
mod log;
mod prepare;
mod redirect;
mod respond;
mod route;
mod send;
mod upstream;

use crate::access_log::{self, AccessLog, LogOnEnd, Record};
use crate::metrics::{Metrics, RouteMetrics};
use crate::rng;
use crate::session::{Chosen, Selection, Sessions};
use crate::table::RoutingTable;
use arc_swap::ArcSwap;
pub use body::Body;
use bytes::Bytes;
use error::{ErrorKind, ProxyError};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use route::Routed;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
pub use upstream::{UpstreamError, Upstreams, connect_from, dial};

/// Bodies in both directions.
pub type ProxyBody = Body;

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket this node listens on (the routing-table key).
    pub socket: SocketAddr,
    pub remote: SocketAddr,
    pub https: bool,
    /// On an HTTPS connection: the id of the listener its TLS handshake was for.
    pub tls_listener: Option<String>,
    /// The client's address as an `X-Forwarded-For` value.
    pub forwarded_for: HeaderValue,
}

impl ConnInfo {
    /// A connection; `tls_listener` for HTTPS ones (see the field).
    pub fn new(socket: SocketAddr, remote: SocketAddr, tls_listener: Option<String>) -> ConnInfo {
        let forwarded_for = HeaderValue::from_str(&remote.ip().to_string())
            .expect("an IP address is a header value");
        ConnInfo {
            socket,
            remote,
            https: tls_listener.is_some(),
            tls_listener,
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
    /// Metrics of requests no route took.
    unmatched: std::sync::OnceLock<RouteMetrics>,
    access_log: Option<Arc<AccessLog>>,
}

/// The response header naming the revision of the routing table that served a request (for classes
/// that ask for it: `compile::REVISION_HEADER_ANNOTATION`).
pub const REVISION_HEADER: &str = "gw-revision";

pub fn empty() -> ProxyBody {
    Body::empty()
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Body::full(b)
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
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
            access_log: None,
        }
    }

    /// Connections to backends leave from `source` (when given).
    pub fn with_upstream_source(mut self, source: Option<IpAddr>) -> Proxy {
        self.upstreams = Arc::new(Upstreams::from(source));
        self
    }

    /// Where connections to backends leave from.
    pub fn upstream_source(&self) -> Option<IpAddr> {
        self.upstreams.source
    }

    /// Logs requests (a sampled share of them) to `log`.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Proxy {
        self.access_log = Some(log);
        self
    }

    /// Serves one request.
    #[allow(clippy::disallowed_methods)] // runtime: the request's latency, for the metrics
    pub async fn handle(&self, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let table = self.table.load_full();
        let log = self.access_log.as_ref().filter(|l| l.sampled(rng::draw()));
        let mut record = log.map(|_| begin_record(conn, &req, table.revision));
        let routed = accept::accept(req).and_then(|req| {
            Ok((
                route::route(
                    &table,
                    conn.socket,
                    conn.remote.ip(),
                    conn.tls_listener.as_deref(),
                    &req,
                )?,
                req,
            ))
        });
        let mut resp = match routed {
            Ok((routed, req)) => {
                let route = routed.action.route.clone();
                if let Some(r) = &mut record {
                    r.listener = Some(routed.listener.to_string());
                    r.route = Some(route.id.clone());
                    r.rule = Some(routed.action.rule_index);
                }
                let resp = self
                    .forward(conn, &routed, req, &mut record, start)
                    .await
                    .unwrap_or_else(|e| self.refuse(&e, &route.id, grpc, &mut record));
                let metrics = route.metrics.get_or_init(|| self.metrics.route(&route.id));
                log::record(&self.metrics, metrics, resp.status(), start.elapsed());
                resp
            }
            Err(e) => {
                let resp = self.refuse(&e, "(none)", grpc, &mut record);
                let metrics = self.unmatched.get_or_init(|| self.metrics.route("(none)"));
                log::record(&self.metrics, metrics, resp.status(), start.elapsed());
                resp
            }
        };
        if table.revision_header {
            resp.headers_mut()
                .insert(REVISION_HEADER, HeaderValue::from(table.revision));
        }
        match (log, record) {
            (Some(log), Some(mut r)) => {
                r.status = resp.status().as_u16();
                r.duration_ms = access_log::ms(start.elapsed());
                let mut end = LogOnEnd::new(r, log.clone(), start);
                if resp.body().is_end_stream() {
                    end.finish(true);
                    resp
                } else {
                    resp.map(|b| Body::Logged(Box::new(b), Box::new(end)))
                }
            }
            _ => resp,
        }
    }

    /// The response to a request that was not proxied, logged.
    fn refuse(
        &self,
        e: &ProxyError,
        route: &str,
        grpc: bool,
        record: &mut Option<Record>,
    ) -> Response<ProxyBody> {
        log::failure(e, route);
        if let Some(r) = record {
            r.error = Some(e.kind.label());
            r.grpc_status = grpc.then(|| u32::from(e.kind.grpc_code()));
        }
        e.response(grpc)
    }

    /// Counts a backend's failure to serve a request of `action`.
    fn upstream_failed(
        &self,
        action: &crate::table::RuleAction,
        target: &choose::Target<'_>,
        kind: ErrorKind,
    ) {
        if let Some(label) = kind.upstream_label() {
            log::upstream_error(&self.metrics, &action.route.id, &target.upstream.id, label);
        }
    }

    async fn forward(
        &self,
        conn: &ConnInfo,
        routed: &Routed<'_>,
        mut req: Request<Incoming>,
        record: &mut Option<Record>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let action = &routed.action;
        if let Some(why) = &action.filters.invalid {
            return Err(ProxyError::new(ErrorKind::InvalidFilter, why.clone()));
        }
        if let Some(r) = &action.filters.redirect {
            return Ok(redirect::redirect(
                r,
                conn.https,
                &routed.host,
                routed.listener_port,
                req.uri(),
                action.prefix.as_deref(),
            ));
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
        let mut session = match selection {
            Selection::Chosen(c) => Some(c),
            Selection::Unavailable(why) => {
                return Err(ProxyError::new(ErrorKind::SessionUnavailable, why));
            }
            Selection::Fallback => None,
        };
        let mut target = choose::choose(
            backends,
            session.as_ref().map(|c| (c.entry, c.endpoint)),
            &mut rng::draw,
            gw_client::clock::now_ms(),
        )?;
        let protocol = target.upstream.protocol;
        note_target(record, &target, session.as_ref());

        let upgrade = prepare::wants_upgrade(req.headers())
            && protocol == crate::table::UpstreamProtocol::Http1;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let p = prepare::prepare(
            parts,
            action,
            &target.backend.filters,
            conn,
            &routed.host,
            upgrade,
        )?;
        // Mirrors get a copy; the body is buffered (bounded) only when there is one to copy.
        let mirrors: Vec<_> = [&action.filters, &target.backend.filters]
            .iter()
            .flat_map(|f| f.mirrors.iter().cloned())
            .collect();
        let client_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = if mirrors.is_empty() {
            Body::Request(body, client_failed.clone())
        } else {
            let bytes = send::buffer(Body::Incoming(body)).await?;
            send::mirror(
                &self.upstreams,
                &mirrors,
                &p.parts,
                &bytes,
                &p.path_and_query,
                &p.authority,
            );
            full(bytes)
        };
        // A session's request stays on its backend: a refused connection fails the session over
        // (or starts it anew elsewhere) and the request, none of it sent, goes there.
        let mut sent = send::send(
            &self.upstreams,
            &target.upstream,
            target.endpoint,
            session.is_none(),
            Request::from_parts(p.parts, body),
            (&p.path_and_query, &p.authority),
            action.timeouts,
        )
        .await;
        let moved = match (&mut sent, &action.session, &self.sessions, &session) {
            (Err((e, unsent)), Some(cfg), Some(sessions), Some(c))
                if e.kind == ErrorKind::UpstreamConnect =>
            {
                let unsent = unsent.take();
                match sessions.reselect(cfg, c, backends, conn.https).await {
                    Selection::Chosen(n) => unsent.map(|req| (req, n)),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((req, moved)) = moved {
            let next = choose::choose(
                backends,
                Some((moved.entry, moved.endpoint)),
                &mut rng::draw,
                gw_client::clock::now_ms(),
            )?;
            let prepared_fits = std::ptr::eq(next.backend, target.backend)
                || (next.backend.filters.keep_requests() && target.backend.filters.keep_requests());
            if prepared_fits && next.upstream.protocol == protocol {
                self.upstream_failed(action, &target, ErrorKind::UpstreamConnect);
                // The request's own timeout counts from its arrival; the backend's, per attempt.
                let timeouts = crate::table::Timeouts {
                    request: action
                        .timeouts
                        .request
                        .map(|d| d.saturating_sub(start.elapsed())),
                    ..action.timeouts
                };
                sent = send::send(
                    &self.upstreams,
                    &next.upstream,
                    next.endpoint,
                    false,
                    req,
                    (&p.path_and_query, &p.authority),
                    timeouts,
                )
                .await;
                (target, session) = (next, Some(moved));
                note_target(record, &target, session.as_ref());
            }
        }
        let mut resp = match sent {
            Ok((endpoint, r)) => {
                if let Some(rec) = record.as_mut().filter(|_| endpoint != target.endpoint) {
                    rec.endpoint = Some(target.upstream.endpoint(endpoint).0.to_string());
                }
                r
            }
            Err(_) if client_failed.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(ProxyError::new(
                    ErrorKind::MalformedBody,
                    "the request body is malformed",
                ));
            }
            Err((e, _)) => {
                self.upstream_failed(action, &target, e.kind);
                let message = match e.kind {
                    ErrorKind::UpstreamTimeout => e.message,
                    _ => format!("backend {}: {}", target.upstream.id, e.message),
                };
                return Err(ProxyError::new(e.kind, message));
            }
        };
        if let Some(r) = record {
            r.upstream_ms = Some(access_log::ms(start.elapsed()));
        }
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
        let (mut parts, body) = resp.into_parts();
        respond::respond(
            &mut parts,
            &action.filters,
            &target.backend.filters,
            session.and_then(|c| c.issue),
        );
        Ok(Response::from_parts(parts, body))
    }
}

/// Where the request goes, in its access log record: the endpoint tried first (the one that answered
/// replaces it), and the session's decision.
fn note_target(record: &mut Option<Record>, target: &choose::Target<'_>, session: Option<&Chosen>) {
    if let Some(r) = record {
        r.backend = Some(target.upstream.id.clone());
        r.endpoint = Some(target.upstream.endpoint(target.endpoint).0.to_string());
        if let Some(c) = session {
            r.session = Some(access_log::session_hash(&c.token.session));
            r.affinity = Some(c.decision);
        }
    }
}

/// The access log record of a request, as far as its arrival tells.
fn begin_record(conn: &ConnInfo, req: &Request<Incoming>, revision: u64) -> Record {
    Record {
        time: gw_model::meta::rfc3339_ms(gw_client::clock::now_ms()),
        client: conn.remote.to_string(),
        socket: conn.socket.to_string(),
        method: req.method().to_string(),
        host: req
            .uri()
            .host()
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("")
            .to_string(),
        path: req.uri().path().to_string(),
        protocol: format!("{:?}", req.version()),
        request_bytes: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        revision,
        ..Default::default()
    }
}
