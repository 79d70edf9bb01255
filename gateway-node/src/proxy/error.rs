//! Why a request was not proxied, where the failure came from and whether retrying it is safe — and the
//! one place that maps a failure to the HTTP status (the Gateway API's: 404 no route, 500 invalid
//! backends or filters, 503 no endpoint, 504 timeout) and to the gRPC status of a gRPC request.

use super::{ProxyBody, full};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No listener hostname or route rule matches the request.
    NoRoute,
    /// The socket's listeners are gone from the routing table (a connection that outlived them).
    ListenerGone,
    /// The request is malformed (several Host headers, a Host the target disagrees with, a path that
    /// cannot be normalized).
    BadRequest,
    /// The request body is malformed (e.g. a bad chunk size).
    MalformedBody,
    /// The request names no host.
    NoHost,
    /// The request's host belongs to a listener that verifies client certificates, and the
    /// connection's TLS handshake was for another listener.
    Misdirected,
    /// The request's host cannot be forwarded as an authority.
    InvalidHost,
    /// The request body is larger than the gateway buffers (for mirrors).
    BodyTooLarge,
    /// A filter of the rule or backendRef cannot be applied (e.g. an unresolved ExtensionRef).
    InvalidFilter,
    /// The chosen backendRef cannot be used (not found, not permitted, unsupported kind).
    InvalidBackend,
    /// The rule has no backend with weight.
    NoBackend,
    /// A rewrite produced a path that is not a valid request target.
    InvalidRewrite,
    /// The chosen backend has no ready endpoint.
    NoEndpoint,
    /// The session's committed backend is not known to this node yet.
    SessionUnavailable,
    /// The backend refused or did not accept the connection.
    UpstreamConnect,
    /// TLS to the backend failed (its certificate did not verify against the BackendTLSPolicy), or
    /// the policy cannot be used: nothing was sent.
    UpstreamTls,
    /// The backend did not answer within the route's timeout.
    UpstreamTimeout,
    /// The exchange with the backend failed after the request was (possibly) sent.
    UpstreamProtocol,
}

/// Which side a failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's request.
    Downstream,
    /// The backend.
    Upstream,
    /// gw's own configuration or state.
    Internal,
}

/// gRPC status codes a proxy failure maps to.
const GRPC_UNIMPLEMENTED: u8 = 12;
const GRPC_UNAVAILABLE: u8 = 14;
const GRPC_INTERNAL: u8 = 13;
const GRPC_DEADLINE_EXCEEDED: u8 = 4;

impl ErrorKind {
    pub fn side(self) -> Side {
        use ErrorKind::*;
        match self {
            NoRoute | BadRequest | MalformedBody | NoHost | Misdirected | InvalidHost
            | BodyTooLarge => Side::Downstream,
            UpstreamConnect | UpstreamTls | UpstreamTimeout | UpstreamProtocol => Side::Upstream,
            ListenerGone | InvalidFilter | InvalidBackend | NoBackend | InvalidRewrite
            | NoEndpoint | SessionUnavailable => Side::Internal,
        }
    }

    /// Whether sending the request again (elsewhere) is safe: only when nothing reached a backend.
    pub fn retryable(self) -> bool {
        use ErrorKind::*;
        matches!(
            self,
            UpstreamConnect | UpstreamTls | NoEndpoint | SessionUnavailable | ListenerGone
        )
    }

    pub fn status(self) -> StatusCode {
        use ErrorKind::*;
        match self {
            NoRoute => StatusCode::NOT_FOUND,
            BadRequest | MalformedBody | NoHost | InvalidHost => StatusCode::BAD_REQUEST,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Misdirected => StatusCode::MISDIRECTED_REQUEST,
            InvalidFilter | InvalidBackend | NoBackend | InvalidRewrite => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ListenerGone | NoEndpoint | SessionUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamConnect | UpstreamTls | UpstreamProtocol => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status of a gRPC request that fails this way (GRPCRoute: no match is UNIMPLEMENTED).
    pub fn grpc_code(self) -> u8 {
        match self.status() {
            StatusCode::NOT_FOUND => GRPC_UNIMPLEMENTED,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => GRPC_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT => GRPC_DEADLINE_EXCEEDED,
            _ => GRPC_INTERNAL,
        }
    }

    /// The kind's name in the access log.
    pub fn label(self) -> &'static str {
        use ErrorKind::*;
        match self {
            NoRoute => "no-route",
            ListenerGone => "listener-gone",
            BadRequest => "bad-request",
            MalformedBody => "malformed-body",
            NoHost => "no-host",
            Misdirected => "misdirected",
            InvalidHost => "invalid-host",
            BodyTooLarge => "body-too-large",
            InvalidFilter => "invalid-filter",
            InvalidBackend => "invalid-backend",
            NoBackend => "no-backend",
            InvalidRewrite => "invalid-rewrite",
            NoEndpoint => "no-endpoint",
            SessionUnavailable => "session-unavailable",
            UpstreamConnect => "upstream-connect",
            UpstreamTls => "upstream-tls",
            UpstreamTimeout => "upstream-timeout",
            UpstreamProtocol => "upstream-protocol",
        }
    }

    /// The `kind` label of the upstream-error metric (`None`: not a backend's failure).
    pub fn upstream_label(self) -> Option<&'static str> {
        match self {
            ErrorKind::UpstreamConnect => Some("connect"),
            ErrorKind::UpstreamTls => Some("tls"),
            ErrorKind::UpstreamTimeout => Some("timeout"),
            ErrorKind::UpstreamProtocol => Some("http"),
            _ => None,
        }
    }
}

/// A request that was not proxied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProxyError {
        ProxyError {
            kind,
            message: message.into(),
        }
    }

    /// The response the client gets: plain text, or a trailers-only gRPC status for gRPC requests.
    pub fn response(&self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            let mut r = Response::new(full(""));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.kind.grpc_code())),
            );
            if let Ok(v) = HeaderValue::from_str(&self.message) {
                h.insert("grpc-message", v);
            }
            return r;
        }
        let mut r = Response::new(full(format!("{}\n", self.message)));
        *r.status_mut() = self.kind.status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;

    #[test]
    fn every_kind_maps_to_its_status_side_and_retry_safety() {
        // (kind, HTTP status, gRPC code, side, retryable, upstream metric label)
        let table = [
            (
                NoRoute,
                404,
                GRPC_UNIMPLEMENTED,
                Side::Downstream,
                false,
                None,
            ),
            (
                ListenerGone,
                503,
                GRPC_UNAVAILABLE,
                Side::Internal,
                true,
                None,
            ),
            (
                BadRequest,
                400,
                GRPC_INTERNAL,
                Side::Downstream,
                false,
                None,
            ),
            (
                MalformedBody,
                400,
                GRPC_INTERNAL,
                Side::Downstream,
                false,
                None,
            ),
            (NoHost, 400, GRPC_INTERNAL, Side::Downstream, false, None),
            (
                Misdirected,
                421,
                GRPC_INTERNAL,
                Side::Downstream,
                false,
                None,
            ),
            (
                InvalidHost,
                400,
                GRPC_INTERNAL,
                Side::Downstream,
                false,
                None,
            ),
            (
                BodyTooLarge,
                413,
                GRPC_INTERNAL,
                Side::Downstream,
                false,
                None,
            ),
            (
                InvalidFilter,
                500,
                GRPC_INTERNAL,
                Side::Internal,
                false,
                None,
            ),
            (
                InvalidBackend,
                500,
                GRPC_INTERNAL,
                Side::Internal,
                false,
                None,
            ),
            (NoBackend, 500, GRPC_INTERNAL, Side::Internal, false, None),
            (
                InvalidRewrite,
                500,
                GRPC_INTERNAL,
                Side::Internal,
                false,
                None,
            ),
            (
                NoEndpoint,
                503,
                GRPC_UNAVAILABLE,
                Side::Internal,
                true,
                None,
            ),
            (
                SessionUnavailable,
                503,
                GRPC_UNAVAILABLE,
                Side::Internal,
                true,
                None,
            ),
            (
                UpstreamConnect,
                502,
                GRPC_UNAVAILABLE,
                Side::Upstream,
                true,
                Some("connect"),
            ),
            (
                UpstreamTls,
                502,
                GRPC_UNAVAILABLE,
                Side::Upstream,
                true,
                Some("tls"),
            ),
            (
                UpstreamTimeout,
                504,
                GRPC_DEADLINE_EXCEEDED,
                Side::Upstream,
                false,
                Some("timeout"),
            ),
            (
                UpstreamProtocol,
                502,
                GRPC_UNAVAILABLE,
                Side::Upstream,
                false,
                Some("http"),
            ),
        ];
        for (kind, status, grpc, side, retryable, label) in table {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.grpc_code(), grpc, "{kind:?}");
            assert_eq!(kind.side(), side, "{kind:?}");
            assert_eq!(kind.retryable(), retryable, "{kind:?}");
            assert_eq!(kind.upstream_label(), label, "{kind:?}");
            let e = ProxyError::new(kind, "why");
            let http = e.response(false);
            assert_eq!(http.status().as_u16(), status);
            let g = e.response(true);
            assert_eq!(
                g.status(),
                StatusCode::OK,
                "gRPC errors travel in grpc-status"
            );
            assert_eq!(
                g.headers()["grpc-status"],
                u16::from(grpc).to_string().as_str()
            );
            assert_eq!(g.headers()["grpc-message"], "why");
        }
    }
}
