//! Phase 4, send: the exchange with the backend within the rule's timeouts (the shorter of the request
//! and backend-request timeouts), and the copies to mirrors, whose answers are ignored.

use super::error::{ErrorKind, ProxyError};
use super::prepare::address;
use super::{Body, UpstreamError, Upstreams, full};
use crate::table::{Timeouts, Upstream};
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, request};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body buffered to be copied to mirrors.
pub const MIRROR_BODY_LIMIT: usize = 1 << 20;

pub async fn send(
    upstreams: &Upstreams,
    upstream: &Upstream,
    endpoint: SocketAddr,
    req: Request<Body>,
    timeouts: Timeouts,
) -> Result<Response<Body>, ProxyError> {
    let exchange = upstreams.send(upstream, endpoint, req);
    let deadline = timeouts.request.into_iter().chain(timeouts.backend).min();
    let result = match deadline {
        Some(d) => tokio::time::timeout(d, exchange).await.map_err(|_| {
            ProxyError::new(
                ErrorKind::UpstreamTimeout,
                "the backend did not answer in time",
            )
        })?,
        None => exchange.await,
    };
    result.map_err(|e| {
        let kind = match e {
            UpstreamError::Connect(..) => ErrorKind::UpstreamConnect,
            UpstreamError::Tls(_) => ErrorKind::UpstreamTls,
            UpstreamError::Http(_) => ErrorKind::UpstreamProtocol,
        };
        ProxyError::new(kind, e.to_string())
    })
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
        let Some((ep, ep_authority)) = m.pick() else {
            continue;
        };
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
