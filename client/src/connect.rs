//! Channels to store members: plaintext (insecure) or mutual TLS with the identity the caller expects
//! of the server, from an optional source address (members connect from their own listen address, so
//! that a partition by address cuts their traffic too). One home for how every part dials a member.

use crate::tls::{Expect, Security, TlsMaterial};
use crate::{Error, Result};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How to dial members.
#[derive(Debug, Clone)]
pub struct Dialer {
    security: Security,
    expect: Expect,
    source: Option<IpAddr>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    keep_alive: Option<Duration>,
}

impl Dialer {
    /// Any member, a 1 s connect timeout, no per-call deadline.
    pub fn new(security: Security) -> Dialer {
        Dialer {
            security,
            expect: Expect::AnyMember,
            source: None,
            connect_timeout: Duration::from_millis(1000),
            timeout: None,
            keep_alive: None,
        }
    }

    /// The server must be this member.
    pub fn expect(mut self, expect: Expect) -> Dialer {
        self.expect = expect;
        self
    }

    /// Connections leave from this address.
    pub fn source(mut self, ip: Option<IpAddr>) -> Dialer {
        self.source = ip;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Dialer {
        self.connect_timeout = d;
        self
    }

    /// A deadline for every call on the channel.
    pub fn timeout(mut self, d: Duration) -> Dialer {
        self.timeout = Some(d);
        self
    }

    /// HTTP/2 keep-alive pings (a dead peer is noticed without a call).
    pub fn keep_alive(mut self, d: Duration) -> Dialer {
        self.keep_alive = Some(d);
        self
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let mut e = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Config(format!("bad member address {addr:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout)
            .local_address(self.source);
        if let Some(t) = self.timeout {
            e = e.timeout(t);
        }
        if let Some(k) = self.keep_alive {
            e = e
                .http2_keep_alive_interval(k)
                .keep_alive_timeout(k)
                .keep_alive_while_idle(true);
        }
        Ok(e)
    }

    /// A channel that connects on first use (and reconnects after failures).
    pub fn lazy(&self, addr: &str) -> Result<Channel> {
        let e = self.endpoint(addr)?;
        Ok(match &self.security {
            Security::Insecure => e.connect_lazy(),
            Security::Mutual(tls) => e.connect_with_connector_lazy(self.tls_connector(tls)),
        })
    }

    /// A channel connected now.
    pub async fn connect(&self, addr: &str) -> Result<Channel> {
        let e = self.endpoint(addr)?;
        let connected = match &self.security {
            Security::Insecure => e.connect().await,
            Security::Mutual(tls) => e.connect_with_connector(self.tls_connector(tls)).await,
        };
        connected.map_err(|e| Error::Unavailable {
            tried: addr.to_string(),
            last: error_chain(&e),
        })
    }

    fn tls_connector(&self, tls: &Arc<TlsMaterial>) -> TlsConnector {
        TlsConnector {
            tls: tls.clone(),
            expect: self.expect,
            source: self.source,
        }
    }
}

/// How a failure to reach a member (TCP or the TLS handshake: nothing was sent) begins.
pub(crate) const CONNECT_FAILED: &str = "error trying to connect";

/// An error and its causes on one line (TLS refusals are buried a few levels down).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// TCP, then a TLS handshake that checks the server's identity, for tonic's channels.
#[derive(Clone)]
struct TlsConnector {
    tls: Arc<TlsMaterial>,
    expect: Expect,
    source: Option<IpAddr>,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            me.connect(uri)
                .await
                .map_err(|e| format!("{CONNECT_FAILED}: {}", error_chain(e.as_ref())).into())
        })
    }
}

impl TlsConnector {
    /// TCP, then the handshake.
    async fn connect(
        self,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, BoxError> {
        let host = uri.host().ok_or("a member address without host")?;
        let port = uri.port_u16().ok_or("a member address without port")?;
        let addr: SocketAddr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        let tcp = socket.connect(addr).await?;
        let config = self.tls.client_config(self.expect)?;
        // Identities are checked, not names: the server name only fills SNI.
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(TokioIo::new(stream))
    }
}
