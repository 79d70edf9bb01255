//! Connections to backends: for HTTP/1.1, a pool of keep-alive connections per endpoint (a connection
//! returns to the pool when its response body has been read to the end; upgraded connections do not);
//! for HTTP/2 (h2c, and gRPC backends), one multiplexed connection per endpoint, re-dialled when it
//! closes. Over TLS when the Service has a BackendTLSPolicy (the server name and CAs of the policy, ALPN
//! for the protocol), pooled apart from plaintext connections to the same endpoint. The request's URI
//! authority is the backend's `:authority` for HTTP/2; for HTTP/1.1 the URI names the endpoint and the
//! Host header carries the host.
//!
//! Connections leave from the node's upstream source address when it has one (`--upstream-source-address`),
//! and an attempt to an endpoint the active health check finds down is given up at once.

use super::body::{Body, Release};
use crate::table::{EndpointHealth, TlsTarget, Upstream, UpstreamProtocol, UpstreamTls};
use http::{Request, Response, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The TLS handshake failed (the backend's certificate did not verify, ...), or the policy's
    /// TLS settings are unusable.
    #[error("TLS to the backend: {0}")]
    Tls(String),
    #[error("{0}")]
    Http(String),
    /// A kept-alive connection taken from the pool turned out closed before the request was written
    /// to it (the backend went away, or closed it as idle): the request, untouched, to send again.
    #[error("the kept-alive connection to the backend was closed before the request was sent")]
    Unsent(Unsent),
    /// A kept-alive connection taken from the pool closed (or was reset) after the request was
    /// written and before an answer came: the backend may or may not have seen it.
    #[error("the kept-alive connection to the backend closed before it answered: {0}")]
    Closed(String),
    /// The health check found the endpoint down while the request was on its way there.
    #[error("{0} stopped answering: the health check found it down")]
    Down(SocketAddr),
}

/// A request given back unsent.
pub struct Unsent(pub Box<Request<Body>>);

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unsent({} {})", self.0.method(), self.0.uri())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Connections are pooled per endpoint and TLS setting (`None`: plaintext).
pub type PoolKey = (SocketAddr, Option<Arc<str>>);

#[derive(Default)]
pub struct Upstreams {
    idle: Arc<Mutex<HashMap<PoolKey, Vec<http1::SendRequest<Body>>>>>,
    h2: Mutex<HashMap<PoolKey, http2::SendRequest<Body>>>,
    /// Where connections to endpoints leave from (`None`: the system's choice).
    pub source: Option<IpAddr>,
}

impl From<Option<IpAddr>> for Upstreams {
    /// No connections yet; new ones leave from `source`.
    fn from(source: Option<IpAddr>) -> Upstreams {
        Upstreams {
            source,
            ..Upstreams::default()
        }
    }
}

/// A TCP connection to `addr` from `source` (when given) within `timeout`.
pub async fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))?
}

/// The refusal of a connection to an endpoint the health check found down.
fn found_down(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("the health check found {addr} down"),
    )
}

/// A connection to an endpoint for requests: from `source`, within the connect timeout, and refused at
/// once when the health check finds the endpoint down (before or during the attempt), so that the
/// request can go elsewhere rather than wait for an endpoint that does not answer.
pub async fn dial(
    source: Option<IpAddr>,
    addr: SocketAddr,
    health: &EndpointHealth,
) -> io::Result<TcpStream> {
    if health.is_down() {
        return Err(found_down(addr));
    }
    let tcp = tokio::select! {
        tcp = connect_from(source, addr, CONNECT_TIMEOUT) => tcp?,
        () = health.went_down() => return Err(found_down(addr)),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// An endpoint to dial for requests.
#[derive(Clone, Copy)]
struct Dial<'a> {
    source: Option<IpAddr>,
    addr: SocketAddr,
    health: &'a EndpointHealth,
}

impl Dial<'_> {
    async fn tcp(self) -> Result<TcpStream, UpstreamError> {
        dial(self.source, self.addr, self.health)
            .await
            .map_err(|e| UpstreamError::Connect(self.addr, e))
    }
}

/// A TLS connection to `endpoint` (the handshake within the connect timeout).
async fn dial_tls(
    to: Dial<'_>,
    tls: &TlsTarget,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let (endpoint, tcp) = (to.addr, to.tcp().await?);
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        connector.connect(tls.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| UpstreamError::Tls(format!("handshake with {endpoint} timed out")))?
    .map_err(|e| UpstreamError::Tls(format!("handshake with {endpoint}: {e}")))
}

/// An HTTP/1.1 connection over `io`, run in a task of its own (which also carries upgrades).
async fn http1_over<T>(
    io: T,
    endpoint: SocketAddr,
) -> Result<http1::SendRequest<Body>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Small messages: one flattened write is cheaper than writev (measured).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Http(format!("HTTP/1.1 handshake with {endpoint}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// An HTTP/2 connection over `io`, run in a task of its own.
async fn http2_over<T>(
    io: T,
    endpoint: SocketAddr,
) -> Result<http2::SendRequest<Body>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Http(format!("HTTP/2 handshake with {endpoint}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A new HTTP/1.1 connection to an endpoint, over TLS if `tls`.
async fn new_http1(
    to: Dial<'_>,
    tls: Option<&TlsTarget>,
) -> Result<http1::SendRequest<Body>, UpstreamError> {
    match tls {
        None => http1_over(to.tcp().await?, to.addr).await,
        Some(t) => http1_over(dial_tls(to, t).await?, to.addr).await,
    }
}

/// A new HTTP/2 connection to an endpoint, over TLS if `tls`.
async fn new_http2(
    to: Dial<'_>,
    tls: Option<&TlsTarget>,
) -> Result<http2::SendRequest<Body>, UpstreamError> {
    match tls {
        None => http2_over(to.tcp().await?, to.addr).await,
        Some(t) => http2_over(dial_tls(to, t).await?, to.addr).await,
    }
}

/// What an upstream's TLS setting asks of a connection: plaintext, TLS, or nothing at all.
fn tls_of(upstream: &Upstream) -> Result<Option<&TlsTarget>, UpstreamError> {
    match &upstream.tls {
        None => Ok(None),
        Some((UpstreamTls::Verify(t), _)) => Ok(Some(t)),
        Some((UpstreamTls::Unusable(why), policy)) => Err(UpstreamError::Tls(format!(
            "BackendTLSPolicy {policy}: {why}"
        ))),
    }
}

/// A connection to an endpoint, ready for one request; an HTTP/1.1 one says whether it came from
/// the pool.
pub enum Connection {
    Http1(PoolKey, http1::SendRequest<Body>, bool),
    H2(PoolKey, http2::SendRequest<Body>),
}

impl Upstreams {
    /// A connection to `endpoint` of `upstream`: pooled, or dialled now.
    pub async fn connect(
        &self,
        upstream: &Upstream,
        endpoint: usize,
    ) -> Result<Connection, UpstreamError> {
        let tls = tls_of(upstream)?;
        let to = Dial {
            source: self.source,
            addr: upstream.endpoint(endpoint).0,
            health: upstream.health(endpoint),
        };
        if to.health.is_down() {
            // Not even a pooled connection: it would not answer.
            return Err(UpstreamError::Connect(to.addr, found_down(to.addr)));
        }
        let key = (to.addr, tls.map(|t| t.pool_key.clone()));
        Ok(match upstream.protocol {
            UpstreamProtocol::Http1 => {
                let (sender, pooled) = self.http1_sender(&key, to, tls).await?;
                Connection::Http1(key, sender, pooled)
            }
            UpstreamProtocol::H2c => {
                let sender = self.h2_sender(&key, to, tls).await?;
                Connection::H2(key, sender)
            }
        })
    }

    /// Sends `req` on `conn`.
    pub async fn send_on(
        &self,
        conn: Connection,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        match conn {
            Connection::Http1(key, sender, pooled) => {
                self.send_http1(key, sender, pooled, req).await
            }
            Connection::H2(key, sender) => self
                .send_h2(key, sender, req)
                .await
                .map(|r| r.map(Body::Incoming)),
        }
    }

    /// Sends `req` to `endpoint` of `upstream`.
    pub async fn send(
        &self,
        upstream: &Upstream,
        endpoint: usize,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let conn = self.connect(upstream, endpoint).await?;
        self.send_on(conn, req).await
    }

    /// A ready pooled connection (`true`), or a new one.
    async fn http1_sender(
        &self,
        key: &PoolKey,
        to: Dial<'_>,
        tls: Option<&TlsTarget>,
    ) -> Result<(http1::SendRequest<Body>, bool), UpstreamError> {
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(key)
                .and_then(Vec::pop);
            match pooled {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        return Ok((s, true));
                    }
                }
                None => break,
            }
        }
        // Boxed: dialling (the TLS handshake above all) makes a future of kilobytes, which every
        // request's future would otherwise carry, and copy, though most of them find a pooled connection.
        Box::pin(new_http1(to, tls)).await.map(|s| (s, false))
    }

    /// Drops the idle connections to `endpoint` (one was found closed: the others may be too).
    pub fn forget_idle(&self, endpoint: SocketAddr) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(e, _), _| *e != endpoint);
    }

    /// HTTP/1.1; the connection returns to the pool when the response body is complete. A pooled
    /// connection found closed before the request was written gives it back (`Unsent`); one that
    /// closed after, before any answer, is `Closed`.
    async fn send_http1(
        &self,
        key: PoolKey,
        mut sender: http1::SendRequest<Body>,
        pooled: bool,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        *req.version_mut() = Version::HTTP_11;
        let resp = sender.try_send_request(req).await.map_err(|mut e| {
            match e.take_message().filter(|_| pooled) {
                Some(req) => UpstreamError::Unsent(Unsent(Box::new(req))),
                // No answer came (send_request ends with the head of one): the connection closed
                // or was reset under the request, not a malformed answer or a bad request.
                None if pooled && !e.error().is_parse() && !e.error().is_user() => {
                    UpstreamError::Closed(e.error().to_string())
                }
                None => UpstreamError::Http(format!("{}", e.error())),
            }
        })?;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp.map(Body::Incoming));
        }
        let idle = self.idle.clone();
        let release: Release = Box::new(move || {
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(sender);
            }
        });
        Ok(resp.map(|b| Body::Pooled(b, Some(release))))
    }

    /// HTTP/2 (with prior knowledge in plaintext, by ALPN over TLS); `:authority` comes from the
    /// request URI.
    async fn send_h2(
        &self,
        key: PoolKey,
        mut sender: http2::SendRequest<Body>,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        *req.version_mut() = Version::HTTP_2;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.h2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                Err(UpstreamError::Http(format!("{e}")))
            }
        }
    }

    async fn h2_sender(
        &self,
        key: &PoolKey,
        to: Dial<'_>,
        tls: Option<&TlsTarget>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(s) = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        // Boxed, as for HTTP/1.1.
        let mut sender = Box::pin(new_http2(to, tls)).await?;
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), sender.clone());
        Ok(sender)
    }
}
