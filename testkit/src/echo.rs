//! The echo backend: answers every request with a JSON description of it, using the field names of the
//! Gateway API conformance suite's echo server (`path`, `host`, `method`, `proto`, `headers`,
//! `namespace`, `pod`), so that tests and demos see what the backend received and who answered. Like
//! that server it honours `X-Echo-Set-Header: name:value,...`, `?delay=<duration>`, `/status/<code>`,
//! and echoes WebSocket messages on upgrade; with `h2c_only` it refuses anything but HTTP/2. With `tls`
//! it serves HTTPS (ALPN h2 and http/1.1) and adds `tls: {sni, alpn}` — what the handshake carried.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub listen: SocketAddr,
    pub pod: String,
    pub namespace: String,
    /// Refuse requests that are not HTTP/2 (as the conformance suite's h2c backend does).
    pub h2c_only: bool,
    /// Log every echoed request to stderr, as the reference server does.
    pub log: bool,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<(String, String)>,
}

/// A running echo server.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// The request URIs echoed so far (the conformance suite reads the same from the server's log).
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub(crate) fn new(
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    ) -> EchoServer {
        EchoServer { addr, seen, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Go's canonical header name (`x-forwarded-for` → `X-Forwarded-For`), as the reference echo server
/// reports names.
pub fn canonical(name: &str) -> String {
    name.split('-')
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(canonical(k.as_str()))
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    json!(m)
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The value the reference server parses with Go's `time.ParseDuration`; the GEP-2257 subset suffices.
fn delay_of(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay="))
        .and_then(gw_model::duration::parse)
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

async fn handle(
    cfg: Arc<EchoConfig>,
    seen: Arc<Mutex<Vec<String>>>,
    tls: Option<Arc<serde_json::Value>>,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if cfg.h2c_only && req.version() != Version::HTTP_2 {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"only HTTP/2 is accepted here\n",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    if let Some(code) = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        return r;
    }
    if let Some(d) = delay_of(req.uri().query()) {
        tokio::time::sleep(d).await;
    }
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let accept = websocket_accept(key.to_str().unwrap_or(""));
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let _ = websocket_echo(TokioIo::new(up)).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        return r;
    }
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(uri.clone());
    if cfg.log {
        eprintln!("Echoing back request made to {uri} to client ({})", cfg.pod);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let set_headers = req
        .headers()
        .get("x-echo-set-header")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = json!({
        "path": uri,
        "host": host,
        "method": req.method().as_str(),
        "proto": version_name(req.version()),
        "headers": headers_json(req.headers()),
        "namespace": cfg.namespace,
        "pod": cfg.pod,
    });
    if let Some(t) = tls {
        body["tls"] = (*t).clone();
    }
    // Drain the request body before answering.
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for pair in set_headers.iter().flat_map(|s| s.split(',')) {
        if let Some((k, v)) = pair.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            r.headers_mut().append(k, v);
        }
    }
    r
}

/// The `Sec-WebSocket-Accept` answering a `Sec-WebSocket-Key`.
fn websocket_accept(key: &str) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        Sha1::digest(format!("{key}{WS_GUID}").as_bytes()),
    )
}

/// Echoes WebSocket data frames (text/binary) until a close frame; answers pings.
async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    loop {
        let (opcode, payload) = ws::read_frame(&mut io).await?;
        let reply_opcode = match opcode {
            ws::CLOSE => {
                ws::write_frame(&mut io, ws::CLOSE, &[], None).await?;
                return Ok(());
            }
            ws::PING => ws::PONG,
            ws::CONTINUATION | ws::TEXT | ws::BINARY => opcode,
            _ => continue,
        };
        ws::write_frame(&mut io, reply_opcode, &payload, None).await?;
    }
}

/// WebSocket framing (RFC 6455), both sides: the echo server's, and the client's that tests and the
/// conformance harness use to talk to it through a gateway.
pub mod ws {
    use super::websocket_accept;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
    /// Frames larger than this end the connection.
    const MAX_PAYLOAD: u64 = 16 << 20;

    fn invalid(msg: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
    }

    /// Reads one frame: its opcode and (unmasked) payload.
    pub async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            n => u64::from(n),
        };
        if len > MAX_PAYLOAD {
            return Err(invalid(format!("a {len}-byte WebSocket frame")));
        }
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        Ok((opcode, payload))
    }

    /// Writes one final frame; clients must pass a `mask`, servers none.
    pub async fn write_frame<S: AsyncWrite + Unpin>(
        io: &mut S,
        opcode: u8,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) -> std::io::Result<()> {
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(m) => {
                frame.extend_from_slice(&m);
                frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            None => frame.extend_from_slice(payload),
        }
        io.write_all(&frame).await
    }

    /// The client's opening handshake: sends the upgrade request for `path` with this Host (and Origin),
    /// and checks the server's 101 and its `Sec-WebSocket-Accept`. `Err` says what was wrong.
    pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
        io: &mut S,
        host: &str,
        path: &str,
        origin: Option<&str>,
    ) -> Result<(), String> {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{origin}\r\n"
        );
        io.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending the upgrade: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 << 10 {
                return Err("an upgrade response head over 16 KiB".into());
            }
            let mut b = [0u8; 1];
            io.read_exact(&mut b)
                .await
                .map_err(|e| format!("reading the upgrade response: {e}"))?;
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head.lines().next().unwrap_or_default().to_string();
        if !status.starts_with("http/1.1 101") {
            return Err(format!("the upgrade was answered with {status:?}"));
        }
        let accept = websocket_accept(key);
        if !head.contains(&format!(
            "sec-websocket-accept: {}",
            accept.to_ascii_lowercase()
        )) {
            return Err(format!("the 101 lacks Sec-WebSocket-Accept: {accept}"));
        }
        Ok(())
    }
}

/// The TLS configuration of an HTTPS echo server.
fn tls_config(cert_pem: &str, key_pem: &str) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(format!("key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Starts an echo server (port 0 picks a free port).
pub async fn start(cfg: EchoConfig) -> std::io::Result<EchoServer> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = match &cfg.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(tls_config(cert, key)?)),
        None => None,
    };
    let cfg = Arc::new(cfg);
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (cfg, seen, acceptor) = (cfg.clone(), seen2.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = |tls: Option<Arc<serde_json::Value>>| {
                    service_fn(move |req| {
                        let (cfg, seen, tls) = (cfg.clone(), seen.clone(), tls.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(cfg, seen, tls, req).await)
                        }
                    })
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(tcp), service(None))
                            .await
                    }
                    Some(a) => {
                        let Ok(stream) = a.accept(tcp).await else {
                            return;
                        };
                        let conn = stream.get_ref().1;
                        let tls = json!({
                            "sni": conn.server_name(),
                            "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                        });
                        builder
                            .serve_connection_with_upgrades(
                                TokioIo::new(stream),
                                service(Some(Arc::new(tls))),
                            )
                            .await
                    }
                };
            });
        }
    });
    Ok(EchoServer { addr, seen, task })
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_header_names() {
        assert_eq!(super::canonical("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(super::canonical("user-agent"), "User-Agent");
        assert_eq!(super::canonical("host"), "Host");
    }

    #[test]
    fn websocket_accept_of_rfc6455_example() {
        assert_eq!(
            super::websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
