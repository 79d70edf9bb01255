//! Connections to backends: for HTTP/1.1, a pool of keep-alive connections per endpoint (a connection
//! returns to the pool when its response body has been read to the end; upgraded connections do not);
//! for HTTP/2 cleartext (h2c and gRPC backends), one multiplexed connection per endpoint, re-dialled
//! when it closes. The request's URI authority is the backend's `:authority` for HTTP/2; for HTTP/1.1
//! the URI names the endpoint and the Host header carries the host.

use super::body::{Body, Release};
use crate::table::UpstreamProtocol;
use http::{Request, Response, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

#[derive(Default)]
pub struct Upstreams {
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

async fn dial(endpoint: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| UpstreamError::Connect(endpoint, std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| UpstreamError::Connect(endpoint, e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl Upstreams {
    pub async fn send(
        &self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        match protocol {
            UpstreamProtocol::Http1 => self.send_http1(endpoint, req).await,
            UpstreamProtocol::H2c => self
                .send_h2c(endpoint, req)
                .await
                .map(|r| r.map(Body::Incoming)),
        }
    }

    /// A ready pooled connection to `endpoint`, or a new one (each connection runs in a task of its own,
    /// which also carries upgrades).
    async fn http1_sender(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&endpoint)
                .and_then(Vec::pop);
            match pooled {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => break,
            }
        }
        // Small messages: one flattened write is cheaper than writev (measured).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(dial(endpoint).await?))
            .await
            .map_err(|e| UpstreamError::Http(format!("HTTP/1.1 handshake with {endpoint}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// HTTP/1.1; the connection returns to the pool when the response body is complete.
    async fn send_http1(
        &self,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        *req.version_mut() = Version::HTTP_11;
        let mut sender = self.http1_sender(endpoint).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(format!("{e}")))?;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp.map(Body::Incoming));
        }
        let idle = self.idle.clone();
        let release: Release = Box::new(move || {
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(endpoint).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(sender);
            }
        });
        Ok(resp.map(|b| Body::Pooled(b, Some(release))))
    }

    /// HTTP/2 with prior knowledge to `endpoint`; `:authority` comes from the request URI.
    async fn send_h2c(
        &self,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        *req.version_mut() = Version::HTTP_2;
        let mut sender = self.h2_sender(endpoint).await?;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.h2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&endpoint);
                Err(UpstreamError::Http(format!("{e}")))
            }
        }
    }

    async fn h2_sender(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(s) = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(dial(endpoint).await?))
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
