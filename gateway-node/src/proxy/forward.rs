//! TLS and TCP listeners: a connection is forwarded as a byte stream to one endpoint of its route's
//! backends (weighted, then round robin), chosen by the TLS ClientHello's server name (TLSRoute) or
//! by the listener alone (TCPRoute). Passthrough replays the ClientHello to the backend, which
//! terminates TLS; Terminate ends TLS here with the listener's certificate and forwards plaintext.

use super::choose::choose;
use super::send::connect_any;
use super::upstream::dial;
use crate::rng;
use crate::table::{L4Mode, SocketTable};
use gw_client::clock;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The largest ClientHello read to find the server name.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads the connection's first bytes until they hold a whole ClientHello; returns them (to be
/// replayed) and its server name.
async fn read_client_hello(tcp: &mut TcpStream) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut seen = Vec::new();
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a whole ClientHello",
            ));
        }
        seen.extend_from_slice(&chunk[..n]);
        let mut unread = &chunk[..n];
        while !unread.is_empty() {
            if acceptor.read_tls(&mut unread)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_string);
                return Ok((seen, name));
            }
            Ok(None) if seen.len() < MAX_CLIENT_HELLO => {}
            Ok(None) => return Err(io::Error::other("ClientHello too large")),
            Err((e, _)) => return Err(io::Error::other(format!("not a TLS ClientHello: {e}"))),
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Replay {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Forwards one connection accepted on a TLS or TCP socket; `handshake` bounds reading the
/// ClientHello and the TLS handshake. Connections to the backend leave from `source` (when given).
pub async fn forward(
    socket: Arc<SocketTable>,
    mut tcp: TcpStream,
    handshake: Duration,
    source: Option<IpAddr>,
) -> io::Result<()> {
    let tls = socket
        .listeners
        .iter()
        .any(|l| matches!(l.l4, Some((m, _)) if m != L4Mode::Tcp));
    let (prefix, name) = if tls {
        tokio::time::timeout(handshake, read_client_hello(&mut tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??
    } else {
        (Vec::new(), None)
    };
    let name = name.map(|n| n.to_ascii_lowercase()).unwrap_or_default();
    let refused = |why: String| io::Error::new(io::ErrorKind::ConnectionRefused, why);
    let listener = socket
        .listener_for(&name)
        .ok_or_else(|| refused(format!("no listener takes server name {name:?}")))?;
    let Some((mode, routes)) = &listener.l4 else {
        return Err(refused("not a TLS or TCP listener".into()));
    };
    let backends = routes
        .lookup(&name)
        .next()
        .ok_or_else(|| refused(format!("no route of {} takes {name:?}", listener.id)))?;
    let target =
        choose(backends, None, &mut rng::draw, clock::now_ms()).map_err(|e| refused(e.message))?;
    // Nothing is sent before the connection is up: an endpoint that refuses is left for another.
    let connect = async {
        connect_any(
            &target.upstream,
            target.endpoint,
            true,
            |_: &io::Error| true,
            |i| {
                dial(
                    source,
                    target.upstream.endpoint(i).0,
                    target.upstream.health(i),
                )
            },
        )
        .await
        .map(|(_, tcp)| tcp)
    };
    match mode {
        L4Mode::Tcp | L4Mode::TlsPassthrough => {
            let mut upstream = connect.await?;
            upstream.write_all(&prefix).await?;
            tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await?;
        }
        L4Mode::TlsTerminate => {
            let cfg = listener
                .tls
                .clone()
                .ok_or_else(|| refused("the listener's client CAs are not resolved".into()))?;
            let replay = Replay {
                prefix,
                at: 0,
                inner: tcp,
            };
            let mut stream = tokio::time::timeout(
                handshake,
                tokio_rustls::TlsAcceptor::from(cfg).accept(replay),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
            let mut upstream = connect.await?;
            tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
        }
    }
    Ok(())
}
