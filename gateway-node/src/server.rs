//! Listening sockets: one per (address, port) of the routing table, bound when a table needs it and
//! closed when no table does. Each accepted connection is served by hyper (HTTP/1.1 and HTTP/2, h2c by
//! prior knowledge), after a TLS handshake for HTTPS sockets (certificate by SNI, ALPN h2/http1.1).

use crate::proxy::{ConnInfo, Proxy};
use crate::table::RoutingTable;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

/// A bound socket and the switch that stops its accept loop.
struct Bound {
    stop: watch::Sender<bool>,
}

/// Keeps the bound sockets in line with the routing tables.
pub struct Sockets {
    proxy: Arc<Proxy>,
    bound: BTreeMap<SocketAddr, Bound>,
    /// Sockets that could not be bound, with the error (reported by the admin endpoint and logs).
    pub failed: BTreeMap<SocketAddr, String>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
    pub fn new(proxy: Arc<Proxy>) -> Sockets {
        Sockets {
            proxy,
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
                    tokio::spawn(accept_loop(self.proxy.clone(), addr, listener, stopped));
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
    addr: SocketAddr,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            // The TLS configuration is the one of the table current at accept time.
            let tls = proxy
                .table
                .load()
                .sockets
                .get(&addr)
                .and_then(|s| s.tls.clone());
            let conn = Arc::new(ConnInfo::new(addr, remote, tls.is_some()));
            let service = service_fn(move |req| {
                let (proxy, conn) = (proxy.clone(), conn.clone());
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(&conn, req).await) }
            });
            // Small messages: one flattened write is cheaper than writev (measured).
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().writev(false);
            let result = match tls {
                Some(cfg) => match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
}
