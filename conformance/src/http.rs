//! Requests as the upstream suite sends them (HTTP/1.1, HTTPS with SNI, h2c with prior knowledge) and
//! their judgement as `conformance/utils/http.CompareRequest` makes it (see the suite's README).

use crate::case::{self, ExpectedRequest, RedirectRequest};
use bytes::Bytes;
use gw_testkit::echo::canonical;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The upstream `RequestTimeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the Gateway.
#[derive(Debug, Clone)]
pub enum Transport {
    Http,
    /// HTTP/1.1 from this source address (a mesh pod's: the mesh tells the caller by it).
    HttpFrom(IpAddr),
    /// HTTPS with this SNI, trusting this certificate (PEM) as the only root, presenting this client
    /// certificate and key (PEM) when asked, as the suite does.
    Https {
        server_name: String,
        root_pem: Vec<u8>,
        client: Option<(Vec<u8>, Vec<u8>)>,
    },
    H2c,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Builds a case's request: method (default GET), path with query, headers (set once each), `host`
/// (the request's own, resolved by the caller, else the gateway address), and `X-Echo-Set-Header` as
/// the suite always sends it.
pub fn build(
    r: &case::Request,
    set_response_headers: &BTreeMap<String, String>,
    host: &str,
) -> Result<Request<Full<Bytes>>, String> {
    let mut b = Request::builder()
        .method(r.method())
        .uri(r.path())
        .header("host", host);
    for (k, v) in &r.headers {
        b = b.header(canonical(k), v.as_str());
    }
    let set: Vec<String> = set_response_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    b = b.header("X-Echo-Set-Header", set.join(","));
    b.body(Full::new(Bytes::new()))
        .map_err(|e| format!("building the request: {e}"))
}

async fn send_inner(
    addr: SocketAddr,
    transport: &Transport,
    mut req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tcp = match transport {
        Transport::HttpFrom(source) => {
            let socket = match source {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .and_then(|s| s.bind(SocketAddr::new(*source, 0)).map(|()| s))
            .map_err(|e| format!("binding {source}: {e}"))?;
            socket.connect(addr).await
        }
        _ => tokio::net::TcpStream::connect(addr).await,
    }
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let resp: Response<hyper::body::Incoming> = match transport {
        Transport::Http | Transport::HttpFrom(_) => {
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            s.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        }
        Transport::Https {
            server_name,
            root_pem,
            client,
        } => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem) {
                let c = c.map_err(|e| format!("root certificate: {e}"))?;
                roots.add(c).map_err(|e| format!("root certificate: {e}"))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(GoNameVerifier(webpki)));
            let mut cfg = match client {
                Some((crt, key)) => {
                    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(crt)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("client certificate: {e}"))?;
                    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key)
                        .map_err(|e| format!("client key: {e}"))?;
                    cfg.with_client_auth_cert(chain, key)
                        .map_err(|e| format!("client certificate: {e}"))?
                }
                None => cfg.with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                .map_err(|e| format!("SNI {server_name:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            s.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        }
        Transport::H2c => {
            let host = req
                .headers_mut()
                .remove("host")
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_default();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            *req.uri_mut() = format!("http://{host}{pq}")
                .parse()
                .map_err(|e| format!("URI: {e}"))?;
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            s.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        }
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers: parts.headers,
        body,
    })
}

/// Certificate verification as Go's `crypto/tls` client does it: the chain as webpki checks it, the name
/// as Go's `matchHostnames` matches it (a leading `*` label matches any one label, so `*.org` covers
/// `example.org`, which webpki refuses). The suite's certificates rely on that.
#[derive(Debug)]
struct GoNameVerifier(Arc<rustls::client::WebPkiServerVerifier>);

/// One DER element: tag, content, and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (l, rest) = b.split_at(n);
        b = rest;
        l.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x))
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The elements of a DER sequence's content.
fn der_items(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((tag, content, rest)) = der(b) {
        out.push((tag, content));
        b = rest;
    }
    out
}

/// The dNSName entries of a certificate's subjectAltName extension (webpki will not list wildcards
/// such as `*.org`, which Go accepts).
fn san_dns_names(cert: &[u8]) -> Vec<String> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let tbs = der(cert)
        .and_then(|(_, c, _)| der(c))
        .map(|(_, tbs, _)| tbs)
        .unwrap_or_default();
    let Some((_, exts)) = der_items(tbs).into_iter().find(|(tag, _)| *tag == 0xa3) else {
        return vec![];
    };
    let exts = der(exts).map(|(_, c, _)| der_items(c)).unwrap_or_default();
    exts.iter()
        .map(|(_, e)| der_items(e))
        .filter(|fields| {
            fields
                .first()
                .is_some_and(|(tag, oid)| *tag == 0x06 && *oid == SAN_OID)
        })
        .filter_map(|fields| {
            fields
                .iter()
                .find(|(tag, _)| *tag == 0x04)
                .map(|(_, v)| v.to_vec())
        })
        .flat_map(|value| {
            let names = der(&value)
                .map(|(_, c, _)| der_items(c))
                .unwrap_or_default();
            names
                .into_iter()
                .filter(|(tag, _)| *tag == 0x82)
                .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Go's `matchHostnames`.
fn go_name_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (
        pattern.to_ascii_lowercase(),
        host.trim_end_matches('.').to_ascii_lowercase(),
    );
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    !pattern.is_empty()
        && !host.is_empty()
        && p.len() == h.len()
        && p.iter()
            .zip(&h)
            .enumerate()
            .all(|(i, (a, b))| (i == 0 && *a == "*") || a == b)
}

impl rustls::client::danger::ServerCertVerifier for GoNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // The name is checked after the chain: a name error means the chain is good.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                let host = server_name.to_str();
                if san_dns_names(end_entity)
                    .iter()
                    .any(|n| go_name_matches(n, &host))
                {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                } else {
                    Err(Error::InvalidCertificate(CertificateError::NotValidForName))
                }
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Sends one request, within the suite's per-request timeout.
pub async fn send(
    addr: SocketAddr,
    transport: &Transport,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, send_inner(addr, transport, req))
        .await
        .map_err(|_| format!("no answer from {addr} within {REQUEST_TIMEOUT:?}"))?
}

fn is_timeout(code: u16) -> bool {
    matches!(code, 408 | 504)
}

fn is_redirect(code: u16) -> bool {
    matches!(code, 300..=305 | 307 | 308)
}

/// Values of a header joined with ",", as the suite compares them (names are case-insensitive).
fn joined(values: Option<&Value>) -> Option<String> {
    let arr = values?.as_array()?;
    Some(
        arr.iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn echo_header<'a>(headers: &'a Value, name: &str) -> Option<&'a Value> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// What a reply is judged against: a case's expectations (or those a check builds).
pub struct Expect<'a> {
    pub request: &'a case::Request,
    pub expected_request: Option<&'a ExpectedRequest>,
    pub redirect: Option<&'a RedirectRequest>,
    pub response: &'a case::Response,
    /// The pod-name prefix of the backend that must answer ("" matches any).
    pub backend: &'a str,
    pub namespace: &'a str,
}

impl<'a> Expect<'a> {
    pub fn of(c: &'a case::Case) -> Expect<'a> {
        Expect {
            request: &c.request,
            expected_request: c.expected_request.as_ref(),
            redirect: c.redirect_request.as_ref(),
            response: &c.response,
            backend: &c.backend,
            namespace: &c.namespace,
        }
    }
}

/// Judges a reply as `CompareRequest` does. `Err` says what differs.
pub fn compare(
    e: &Expect<'_>,
    reply: &Reply,
    request_scheme: &str,
    request_host: &str,
) -> Result<(), String> {
    let expected_status = e.response.status();
    if is_timeout(expected_status) && is_timeout(reply.status) {
        return Ok(());
    }
    if reply.status != expected_status {
        return Err(format!(
            "expected status {expected_status}, got {}",
            reply.status
        ));
    }
    if reply.status == 200 {
        return compare_echo(e, reply, request_host);
    }
    if is_redirect(reply.status)
        && let Some(rr) = e.redirect
    {
        return compare_redirect(rr, e.request, reply, request_scheme, request_host);
    }
    Ok(())
}

/// A 200: the echo backend's report of what it received, and who answered. `request_host` is the Host
/// sent (the request's own, resolved).
fn compare_echo(e: &Expect<'_>, reply: &Reply, request_host: &str) -> Result<(), String> {
    let echo: Value = serde_json::from_slice(&reply.body)
        .map_err(|err| format!("the backend's answer is not the echo JSON: {err}"))?;
    // `ExpectedRequest` absent means "the request as sent".
    let (method, host, path, headers, absent) = match e.expected_request {
        Some(x) => (
            if x.method.is_empty() {
                "GET"
            } else {
                &x.method
            },
            x.host.as_str(),
            if x.path.is_empty() { "/" } else { &x.path },
            &x.headers,
            x.absent_headers.as_slice(),
        ),
        None => (
            e.request.method(),
            e.request.literal_host()?.map_or("", |_| request_host),
            e.request.path(),
            &e.request.headers,
            &[][..],
        ),
    };
    if echo["method"] != method {
        return Err(format!(
            "expected method {method}, the backend saw {}",
            echo["method"]
        ));
    }
    if !host.is_empty() && echo["host"] != host {
        return Err(format!(
            "expected host {host:?}, the backend saw {}",
            echo["host"]
        ));
    }
    if echo["path"] != path {
        return Err(format!(
            "expected path {path:?}, the backend saw {}",
            echo["path"]
        ));
    }
    if echo["namespace"] != e.namespace {
        return Err(format!(
            "expected namespace {:?}, the backend reported {}",
            e.namespace, echo["namespace"]
        ));
    }
    for (k, want) in headers {
        match joined(echo_header(&echo["headers"], k)) {
            Some(got) if got == *want => {}
            Some(got) => {
                return Err(format!(
                    "request header {k}: expected {want:?}, the backend saw {got:?}"
                ));
            }
            None => return Err(format!("request header {k} did not reach the backend")),
        }
    }
    for k in absent {
        if echo_header(&echo["headers"], k).is_some() {
            return Err(format!("request header {k} should have been removed"));
        }
    }
    response_headers_and_pod(e, reply, &echo, false)
}

/// A mesh case's answer (`echo.MeshPod`): only the status, then, for a 200, the response headers (their
/// first values) and the answering pod are checked.
pub fn compare_mesh(e: &Expect<'_>, reply: &Reply) -> Result<(), String> {
    let expected_status = e.response.status();
    if reply.status != expected_status {
        return Err(format!(
            "expected status {expected_status}, got {}",
            reply.status
        ));
    }
    if reply.status != 200 {
        return Ok(());
    }
    let echo: Value = serde_json::from_slice(&reply.body)
        .map_err(|err| format!("the backend's answer is not the echo JSON: {err}"))?;
    response_headers_and_pod(e, reply, &echo, true)
}

/// The expected response headers (all values joined, or the first value only), the absent ones, and
/// the prefix of the pod that answered.
fn response_headers_and_pod(
    e: &Expect<'_>,
    reply: &Reply,
    echo: &Value,
    first_value_only: bool,
) -> Result<(), String> {
    for (k, want) in &e.response.headers {
        let got: Vec<&str> = reply
            .headers
            .get_all(k.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if got.is_empty() {
            return Err(format!("response header {k} is missing"));
        }
        let got = if first_value_only {
            got[0].to_string()
        } else {
            got.join(",")
        };
        if got != *want {
            return Err(format!(
                "response header {k}: expected {want:?}, got {got:?}"
            ));
        }
    }
    for k in &e.response.absent_headers {
        if reply.headers.contains_key(k.as_str()) {
            return Err(format!("response header {k} should be absent"));
        }
    }
    let pod = echo["pod"].as_str().unwrap_or("");
    if !pod.starts_with(e.backend) {
        return Err(format!(
            "expected backend {:?}, answered by pod {pod:?}",
            e.backend
        ));
    }
    Ok(())
}

/// A redirect: its Location against `RedirectRequest` (empty fields default to the request's).
fn compare_redirect(
    rr: &RedirectRequest,
    request: &case::Request,
    reply: &Reply,
    request_scheme: &str,
    request_host: &str,
) -> Result<(), String> {
    let location = reply
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("a redirect without Location")?;
    let uri: http::Uri = location
        .parse()
        .map_err(|e| format!("Location {location:?}: {e}"))?;
    let host_only = request_host.split(':').next().unwrap_or("");
    let want_host = if rr.host.is_empty() {
        host_only
    } else {
        &rr.host
    };
    let want_scheme = if rr.scheme.is_empty() {
        request_scheme
    } else {
        &rr.scheme
    };
    let want_path = if rr.path.is_empty() {
        request.path()
    } else {
        &rr.path
    };
    let got_port = uri.port_u16().map(|p| p.to_string()).unwrap_or_default();
    if uri.host().unwrap_or("") != want_host {
        return Err(format!(
            "redirect host: expected {want_host:?}, Location {location:?}"
        ));
    }
    if uri.scheme_str().unwrap_or("") != want_scheme {
        return Err(format!(
            "redirect scheme: expected {want_scheme:?}, Location {location:?}"
        ));
    }
    if uri.path() != want_path {
        return Err(format!(
            "redirect path: expected {want_path:?}, Location {location:?}"
        ));
    }
    let port_ok = match rr.port.as_str() {
        "" => {
            got_port.is_empty()
                || (want_scheme == "http" && got_port == "80")
                || (want_scheme == "https" && got_port == "443")
        }
        p => got_port == p,
    };
    if !port_ok {
        return Err(format!(
            "redirect port: expected {:?}, Location {location:?}",
            rr.port
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(status: u16, body: Value, headers: &[(&str, &str)]) -> Reply {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Reply {
            status,
            headers: h,
            body: Bytes::from(body.to_string()),
        }
    }

    fn echo(path: &str, pod: &str, headers: Value) -> Value {
        json!({"path": path, "host": "h", "method": "GET", "namespace": "ns", "pod": pod, "headers": headers})
    }

    fn case(v: Value) -> case::Case {
        let mut v = v;
        v["name"] = json!("c");
        v["client"] = json!("http");
        v["target"] = json!({"kind": "Gateway", "namespace": "ns", "name": "g", "listener": null});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn compare_request_semantics() {
        let c = case(
            json!({"Request": {"Path": "/x", "Headers": {"A": "1"}}, "Backend": "infra-backend-v1", "Namespace": "ns"}),
        );
        let e = Expect::of(&c);
        let ok = |r: Reply| compare(&e, &r, "http", "h");
        assert!(
            ok(reply(
                200,
                echo("/x", "infra-backend-v1-0", json!({"A": ["1"]})),
                &[]
            ))
            .is_ok()
        );
        assert!(
            ok(reply(
                200,
                echo("/x", "infra-backend-v2-0", json!({"A": ["1"]})),
                &[]
            ))
            .unwrap_err()
            .contains("expected backend")
        );
        assert!(
            ok(reply(
                200,
                echo("/y", "infra-backend-v1-0", json!({"A": ["1"]})),
                &[]
            ))
            .unwrap_err()
            .contains("path")
        );
        assert!(
            ok(reply(404, json!({}), &[]))
                .unwrap_err()
                .contains("expected status 200")
        );
        let timeout = case(json!({"Request": {"Path": "/"}, "Response": {"StatusCode": 504}}));
        assert!(
            compare(
                &Expect::of(&timeout),
                &reply(408, json!({}), &[]),
                "http",
                "h"
            )
            .is_ok(),
            "408 and 504 are equivalent"
        );
        let redirect = case(
            json!({"Request": {"Path": "/p"}, "RedirectRequest": {"Scheme": "https"}, "Response": {"StatusCode": 302}}),
        );
        let r = Expect::of(&redirect);
        let at = |loc: &'static str| {
            compare(
                &r,
                &reply(302, json!({}), &[("location", loc)]),
                "http",
                "gw.example",
            )
        };
        assert!(at("https://gw.example/p").is_ok());
        assert!(at("https://gw.example:8443/p").is_err());
        assert!(at("https://gw.example:443/p").is_ok());
    }

    #[test]
    fn reads_san_dns_names() {
        let (pem, _) =
            crate::env::self_signed(&["*".into(), "*.org".into(), "127.0.0.1".into()]).unwrap();
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            san_dns_names(&der),
            vec!["*".to_string(), "*.org".to_string()]
        );
        assert!(
            san_dns_names(b"\x30\x03\x02").is_empty(),
            "truncated DER yields nothing"
        );
    }

    #[test]
    fn names_match_like_go() {
        assert!(go_name_matches("*.org", "example.org"));
        assert!(go_name_matches("*.example.com", "A.example.com."));
        assert!(!go_name_matches("*", "example.org"));
        assert!(!go_name_matches("*.org", "a.example.org"));
        assert!(!go_name_matches("a.*.org", "a.b.org"));
    }

    #[test]
    fn builds_requests_like_the_suite() {
        let c = case(
            json!({"Request": {"Path": "/a?b=c", "Method": "POST", "Headers": {"x-custom": "v"}}, "BackendSetResponseHeaders": {"X-Y": "z"}}),
        );
        let r = build(&c.request, &c.backend_set_response_headers, "1.2.3.4").unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri(), "/a?b=c");
        assert_eq!(r.headers()["host"], "1.2.3.4");
        assert_eq!(r.headers()["x-custom"], "v");
        assert_eq!(r.headers()["x-echo-set-header"], "X-Y:z");
    }
}
