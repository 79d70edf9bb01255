//! Listening sockets: one per (address, port) of the routing table, bound when a table needs it and
//! closed when no table does. Each accepted connection is served by hyper (HTTP/1.1 and HTTP/2, h2c by
//! prior knowledge), after a TLS handshake for HTTPS sockets (certificate by SNI, ALPN h2/http1.1).
//! Every client is treated as hostile: a bounded number of connections per socket, a deadline for the
//! TLS handshake and for each request's head (which also closes HTTP/1.1 connections idle between
//! requests), and connections that move no byte for the idle timeout are closed.

#![allow(clippy::disallowed_methods)] // runtime: connection deadlines and idleness

use crate::proxy::{ConnInfo, Proxy, forward};
use crate::table::RoutingTable;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;

/// What a client is allowed on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// For the TLS handshake, and for each HTTP/1.1 request head (from when the connection is ready
    /// for it: a keep-alive connection idle this long between requests is closed too).
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

/// A bound socket and the switch that stops its accept loop.
struct Bound {
    stop: watch::Sender<bool>,
}

/// Keeps the bound sockets in line with the routing tables.
pub struct Sockets {
    proxy: Arc<Proxy>,
    limits: Limits,
    bound: BTreeMap<SocketAddr, Bound>,
    /// Sockets that could not be bound, with the error (reported by the admin endpoint and logs).
    pub failed: BTreeMap<SocketAddr, String>,
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_nodelay(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

impl Sockets {
    pub fn new(proxy: Arc<Proxy>, limits: Limits) -> Sockets {
        Sockets {
            proxy,
            limits,
            bound: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Binds the sockets `table` needs and closes those it no longer does (connections already
    /// accepted finish on their own).
    pub fn reconcile(&mut self, table: &RoutingTable) {
        let wanted: Vec<SocketAddr> = table.sockets.keys().copied().collect();
        self.bound.retain(|addr, b| {
            let keep = wanted.contains(addr);
            if !keep {
                let _ = b.stop.send(true);
                tracing::info!(%addr, "closed listener socket");
            }
            keep
        });
        self.failed.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            if self.bound.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    let (stop, stopped) = watch::channel(false);
                    tokio::spawn(accept_loop(
                        self.proxy.clone(),
                        self.limits,
                        addr,
                        listener,
                        stopped,
                    ));
                    self.bound.insert(addr, Bound { stop });
                    self.failed.remove(&addr);
                    tracing::info!(%addr, "listening");
                }
                Err(e) => {
                    if self.failed.insert(addr, e.to_string()).is_none() {
                        tracing::error!(%addr, error = %e, "cannot bind listener socket");
                    }
                }
            }
        }
    }
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    limits: Limits,
    addr: SocketAddr,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            serve(proxy, limits, addr, tcp, remote).await;
            drop(slot);
        });
    }
}

async fn serve(
    proxy: Arc<Proxy>,
    limits: Limits,
    addr: SocketAddr,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
) {
    // The TLS configuration (and the routes of TLS and TCP listeners) are the ones of the table
    // current at accept time.
    let socket = proxy.table.load().sockets.get(&addr).cloned();
    if let Some(s) = socket.as_ref().filter(|s| s.l4) {
        if let Err(e) = forward::forward(
            s.clone(),
            tcp,
            limits.header_read_timeout,
            proxy.upstream_source(),
        )
        .await
        {
            tracing::debug!(%remote, error = %e, "connection not forwarded");
        }
        return;
    }
    let tls_socket = socket.filter(|s| s.https);
    let service = |conn: ConnInfo| {
        let (proxy, conn) = (proxy.clone(), Arc::new(conn));
        service_fn(move |req| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(&conn, req).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Small messages: one flattened write is cheaper than writev (measured).
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let (io, activity) = Idle::wrap(tcp);
    let served = async {
        match tls_socket {
            Some(socket) => {
                // The ClientHello's server name picks the listener, and with it the certificate
                // and whether a client certificate is required.
                let handshake = async {
                    let start =
                        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
                    let name = start.client_hello().server_name().map(str::to_string);
                    let Some((listener, cfg)) = socket.tls_for(name.as_deref()) else {
                        return Err(io::Error::other(format!(
                            "no listener takes server name {name:?}"
                        )));
                    };
                    let id = listener.id.clone();
                    Ok((id, start.into_stream(cfg).await?))
                };
                match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                    Ok(Ok((listener, stream))) => {
                        builder
                            .serve_connection_with_upgrades(
                                TokioIo::new(stream),
                                service(ConnInfo::new(addr, remote, Some(listener))),
                            )
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        Ok(())
                    }
                }
            }
            None => {
                builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(io),
                        service(ConnInfo::new(addr, remote, None)),
                    )
                    .await
            }
        }
    };
    tokio::select! {
        r = served => if let Err(e) = r {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        },
        _ = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(%remote, "closing an idle connection");
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// A stream that records its activity.
struct Idle<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Idle<T> {
    fn wrap(inner: T) -> (Idle<T>, Arc<Activity>) {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        });
        (
            Idle {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
