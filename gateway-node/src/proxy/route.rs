//! Phase 1, route: the request's listener (by socket, then the most specific listener hostname) and
//! the highest-precedence rule matching it. Pure over the routing table.

use super::error::{ErrorKind, ProxyError};
use crate::hostname::normalize_host;
use crate::table::{RequestView, RoutingTable, RuleAction};
use http::{Request, header};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A routed request.
#[derive(Clone)]
pub struct Routed<'t> {
    pub action: Arc<RuleAction>,
    /// The port of the listener that took it (redirects default to it).
    pub listener_port: u16,
    /// `namespace/gateway/listener` of that listener.
    pub listener: &'t str,
    /// The request's host, normalized (lowercase, no port).
    pub host: String,
}

/// `tls_listener`: on an HTTPS connection, the id of the listener its handshake was for; `caller`:
/// the client's address (a mesh node tells its namespace by it).
pub fn route<'t, B>(
    table: &'t RoutingTable,
    socket: SocketAddr,
    caller: IpAddr,
    tls_listener: Option<&str>,
    req: &Request<B>,
) -> Result<Routed<'t>, ProxyError> {
    let Some(socket) = table.sockets.get(&socket) else {
        return Err(ProxyError::new(
            ErrorKind::ListenerGone,
            "this listener is no longer configured",
        ));
    };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .map(normalize_host)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoHost, "the request has no Host"))?;
    let listener = socket.listener_for(&host);
    // A listener that verifies client certificates serves only the connections whose handshake it
    // verified: a server name for another listener must not carry requests past its check.
    if let Some(l) = listener
        && l.verifies_clients
        && tls_listener != Some(l.id.as_str())
    {
        return Err(ProxyError::new(
            ErrorKind::Misdirected,
            "this host's listener requires a client certificate, and the TLS handshake was for another listener",
        ));
    }
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let (action, l) = listener
        .and_then(|l| {
            // Only a mesh node knows callers; a gateway node skips the lookup.
            let caller_namespace = if table.callers.is_empty() {
                None
            } else {
                table.callers.get(&caller).map(String::as_str)
            };
            l.route(&host, &view, caller_namespace)
                .map(|e| (e.action.clone(), l))
        })
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute, "no route matches"))?;
    Ok(Routed {
        action,
        listener_port: l.port,
        listener: &l.id,
        host,
    })
}
