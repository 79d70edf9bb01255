//! Phase 4, send: the exchange with the backend within the rule's timeouts (the shorter of the request
//! and backend-request timeouts), another endpoint when one refuses the connection (or, for a
//! session's request, the request back to its caller), and the copies to mirrors, whose answers are
//! ignored.

use super::error::{ErrorKind, ProxyError};
use super::prepare::address;
use super::{Body, UpstreamError, Upstreams, full};
use crate::rng;
use crate::table::{Timeouts, Upstream};
use bytes::Bytes;
use gw_client::clock;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, request};
use http_body_util::BodyExt;
use std::sync::Arc;

/// Largest request body buffered to be copied to mirrors.
pub const MIRROR_BODY_LIMIT: usize = 1 << 20;

/// Sends `req` (not yet addressed to an endpoint: `path_and_query` and `authority` are where it goes)
/// to endpoint `first` of `upstream`. An endpoint that refuses the connection is ejected, and with
/// `retry` the request — not sent yet — goes to another endpoint the upstream picks instead (at most
/// `CONNECT_ATTEMPTS` in all). A kept-alive connection that closes under the request is replaced once
/// by a new one when nothing reached the backend or the request can be sent twice (`retry_copy`).
/// The endpoint that answered, and its answer; or the failure, with the request when it was refused
/// before any of it was sent (it can go elsewhere).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    upstreams: &Upstreams,
    upstream: &Upstream,
    first: usize,
    retry: bool,
    req: Request<Body>,
    (path_and_query, authority): (&PathAndQuery, &Authority),
    timeouts: Timeouts,
) -> Result<(usize, Response<Body>), (ProxyError, Option<Request<Body>>)> {
    let exchange = async {
        let (mut req, mut first, mut again, mut downs) = (req, first, true, 0);
        let mut copy = retry_copy(&req);
        loop {
            let connected = connect_any(
                upstream,
                first,
                retry,
                |e| matches!(e, UpstreamError::Connect(..)),
                |i| upstreams.connect(upstream, i),
            )
            .await;
            let (endpoint, conn) = match connected {
                Ok(c) => c,
                Err(e) => return Err((e, Some(req))),
            };
            let addressed = address(
                req,
                path_and_query,
                authority,
                upstream.endpoint(endpoint).1,
                upstream.protocol,
            );
            // An endpoint the health check finds down meanwhile will not answer: the exchange is given
            // up.
            let sent = tokio::select! {
                r = upstreams.send_on(conn, addressed) => r,
                () = upstream.health(endpoint).went_down() => {
                    Err(UpstreamError::Down(upstream.endpoint(endpoint).0))
                }
            };
            // Sent again: a request that a kept-alive connection, closed under it, gives back unsent
            // — once more, on a new connection (the endpoint's idle ones dropped), and past it to
            // another endpoint if that one is refused too. So is a request safe to send twice
            // (idempotent, without a body, as RFC 9110 §9.2.2 allows) that may have reached the
            // backend: once after such a closed connection, and to another endpoint when the health
            // check found this one down (at most `CONNECT_ATTEMPTS` times).
            let again_with = match sent {
                Err(UpstreamError::Unsent(back)) if again => *back.0,
                Err(UpstreamError::Closed(e)) if again => match copy.take() {
                    Some(c) => c,
                    None => return Err((UpstreamError::Closed(e), None)),
                },
                Err(UpstreamError::Down(at)) if downs < CONNECT_ATTEMPTS => match copy.take() {
                    Some(c) => {
                        downs += 1;
                        copy = retry_copy(&c);
                        (req, first) = (c, endpoint);
                        continue;
                    }
                    None => return Err((UpstreamError::Down(at), None)),
                },
                r => return r.map(|r| (endpoint, r)).map_err(|e| (e, None)),
            };
            again = false;
            upstreams.forget_idle(upstream.endpoint(endpoint).0);
            (req, first) = (again_with, endpoint);
        }
    };
    let deadline = timeouts.request.into_iter().chain(timeouts.backend).min();
    let result = match deadline {
        Some(d) => tokio::time::timeout(d, exchange).await.map_err(|_| {
            let e = ProxyError::new(
                ErrorKind::UpstreamTimeout,
                "the backend did not answer in time",
            );
            (e, None)
        })?,
        None => exchange.await,
    };
    result.map_err(|(e, unsent)| {
        let kind = match e {
            UpstreamError::Connect(..) | UpstreamError::Down(_) => ErrorKind::UpstreamConnect,
            UpstreamError::Tls(_) => ErrorKind::UpstreamTls,
            UpstreamError::Http(_) | UpstreamError::Unsent(_) | UpstreamError::Closed(_) => {
                ErrorKind::UpstreamProtocol
            }
        };
        (ProxyError::new(kind, e.to_string()), unsent)
    })
}

/// A copy of `req` to send again should its kept-alive connection close under it: only for an
/// idempotent request without a body, and not an upgrade (`None` otherwise).
fn retry_copy(req: &Request<Body>) -> Option<Request<Body>> {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let bodyless = hyper::body::Body::is_end_stream(req.body())
        || hyper::body::Body::size_hint(req.body()).exact() == Some(0);
    if !idempotent || !bodyless || req.headers().contains_key(http::header::UPGRADE) {
        return None;
    }
    let mut copy = Request::new(Body::full(Bytes::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Endpoints tried for one request whose connections are refused.
pub const CONNECT_ATTEMPTS: usize = 3;

/// A connection (`connect`, given an endpoint's index) to endpoint `first` of `upstream`, or — when it refuses (`refused`) and
/// with `retry` — to another endpoint the upstream picks, at most `CONNECT_ATTEMPTS` in all. Endpoints
/// that refuse are ejected. The endpoint connected to, and the connection.
pub async fn connect_any<C, E, F>(
    upstream: &Upstream,
    first: usize,
    retry: bool,
    refused: impl Fn(&E) -> bool,
    mut connect: impl FnMut(usize) -> F,
) -> Result<(usize, C), E>
where
    F: Future<Output = Result<C, E>>,
{
    let mut endpoint = first;
    let mut attempts = 1;
    loop {
        match connect(endpoint).await {
            Ok(c) => {
                upstream.connected(endpoint);
                return Ok((endpoint, c));
            }
            Err(e) if refused(&e) => {
                upstream.connect_failed(endpoint, clock::now_ms());
                let next = (retry && attempts < CONNECT_ATTEMPTS)
                    .then(|| upstream.pick_index(rng::draw(), clock::now_ms(), Some(endpoint)))
                    .flatten();
                match next {
                    Some(n) => (endpoint, attempts) = (n, attempts + 1),
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the request body (at most `MIRROR_BODY_LIMIT` bytes) so that mirrors can get a copy.
pub async fn buffer(body: Body) -> Result<Bytes, ProxyError> {
    http_body_util::Limited::new(body, MIRROR_BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ProxyError::new(ErrorKind::BodyTooLarge, "request body too large to mirror")
            } else {
                ProxyError::new(
                    ErrorKind::MalformedBody,
                    format!("the request body is malformed: {e}"),
                )
            }
        })
}

/// Sends a copy of the request to one endpoint of each mirror, in the background.
pub fn mirror(
    upstreams: &Arc<Upstreams>,
    mirrors: &[Arc<Upstream>],
    parts: &request::Parts,
    body: &Bytes,
    path_and_query: &PathAndQuery,
    authority: &Authority,
) {
    for m in mirrors {
        let Some(ep) = m.pick_index(rng::draw(), clock::now_ms(), None) else {
            continue;
        };
        let ep_authority = m.endpoint(ep).1;
        let mut copy = Request::new(full(body.clone()));
        *copy.method_mut() = parts.method.clone();
        *copy.headers_mut() = parts.headers.clone();
        let copy = address(copy, path_and_query, authority, ep_authority, m.protocol);
        let (upstreams, m) = (upstreams.clone(), m.clone());
        tokio::spawn(async move {
            // A mirror's answer is ignored, and so is its failure.
            let _ = upstreams.send(&m, ep, copy).await;
        });
    }
}
