//! Connections to backends: a pooled HTTP/1.1 client (keep-alive, upgrades for WebSocket), and one
//! multiplexed HTTP/2 cleartext connection per endpoint for h2c and gRPC backends (re-dialled when it
//! closes). The request's URI authority is what the backend sees as `:authority`, not the endpoint.

use super::ProxyBody;
use crate::table::UpstreamProtocol;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}")]
    Http(String),
}

pub struct Upstreams {
    http1: Client<HttpConnector, ProxyBody>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<ProxyBody>>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        Upstreams {
            http1,
            h2: Mutex::new(HashMap::new()),
        }
    }
}

impl Upstreams {
    pub async fn send(
        &self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match protocol {
            UpstreamProtocol::Http1 => self.send_http1(endpoint, req).await,
            UpstreamProtocol::H2c => self.send_h2c(endpoint, req).await,
        }
    }

    /// HTTP/1.1 to `endpoint`; the request carries its own Host header.
    pub async fn send_http1(
        &self,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        *req.uri_mut() = Uri::try_from(format!("http://{endpoint}{pq}"))
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        *req.version_mut() = Version::HTTP_11;
        self.http1
            .request(req)
            .await
            .map_err(|e| UpstreamError::Http(format!("{e:?}")))
    }

    /// HTTP/2 with prior knowledge to `endpoint`; `:authority` comes from the request URI.
    pub async fn send_h2c(
        &self,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        *req.version_mut() = Version::HTTP_2;
        let mut sender = self.h2_sender(endpoint).await?;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.h2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&endpoint);
                Err(UpstreamError::Http(format!("{e:?}")))
            }
        }
    }

    async fn h2_sender(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        if let Some(s) = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(endpoint, std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| UpstreamError::Connect(endpoint, e))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Http(format!("h2c handshake with {endpoint}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint, sender.clone());
        Ok(sender)
    }
}
