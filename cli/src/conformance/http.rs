//! Requests as the upstream suite sends them (HTTP/1.1, HTTPS with SNI, h2c with prior knowledge) and
//! their judgement as `conformance/utils/http.CompareRequest` makes it (see the suite's README).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The upstream `RequestTimeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the Gateway.
#[derive(Debug, Clone)]
pub enum Transport {
    Http,
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

/// Builds the request of a case: method (default GET), path with query, headers (set once each), the
/// Host (the case's, else the gateway address), and `X-Echo-Set-Header` as the suite always sends it.
pub fn build(case: &Value, default_host: &str) -> Result<Request<Full<Bytes>>, String> {
    let r = &case["Request"];
    let method = r["Method"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or("GET");
    let path = r["Path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/");
    let host = r["Host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .unwrap_or(default_host);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(hs) = r["Headers"].as_object() {
        for (k, v) in hs {
            b = b.header(gw_node::echo::canonical(k), v.as_str().unwrap_or(""));
        }
    }
    let set: Vec<String> = case["BackendSetResponseHeaders"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    b = b.header("X-Echo-Set-Header", set.join(","));
    b.body(Full::new(Bytes::new()))
        .map_err(|e| format!("building the request: {e}"))
}

async fn send_inner(
    addr: SocketAddr,
    transport: &Transport,
    mut req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let resp: Response<hyper::body::Incoming> = match transport {
        Transport::Http => {
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

/// Judges a reply against a case. `Err` says what differs.
pub fn compare(
    case: &Value,
    reply: &Reply,
    request_scheme: &str,
    request_host: &str,
) -> Result<(), String> {
    let expected_status = case["Response"]["StatusCode"]
        .as_u64()
        .filter(|s| *s != 0)
        .unwrap_or(200) as u16;
    if is_timeout(expected_status) && is_timeout(reply.status) {
        return Ok(());
    }
    if reply.status != expected_status {
        return Err(format!(
            "expected status {expected_status}, got {}",
            reply.status
        ));
    }
    let req = &case["Request"];
    if reply.status == 200 {
        let echo: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("the backend's answer is not the echo JSON: {e}"))?;
        let exp = if case["ExpectedRequest"].is_object() {
            &case["ExpectedRequest"]
        } else {
            req
        };
        let method = exp["Method"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or("GET");
        if echo["method"] != method {
            return Err(format!(
                "expected method {method}, the backend saw {}",
                echo["method"]
            ));
        }
        if let Some(h) = exp["Host"].as_str().filter(|h| !h.is_empty())
            && echo["host"] != h
        {
            return Err(format!(
                "expected host {h:?}, the backend saw {}",
                echo["host"]
            ));
        }
        let path = exp["Path"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        if echo["path"] != path {
            return Err(format!(
                "expected path {path:?}, the backend saw {}",
                echo["path"]
            ));
        }
        let ns = case["Namespace"].as_str().unwrap_or("");
        if echo["namespace"] != ns {
            return Err(format!(
                "expected namespace {ns:?}, the backend reported {}",
                echo["namespace"]
            ));
        }
        for (k, v) in exp["Headers"].as_object().into_iter().flatten() {
            let want = v.as_str().unwrap_or("");
            match joined(echo_header(&echo["headers"], k)) {
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(format!(
                        "request header {k}: expected {want:?}, the backend saw {got:?}"
                    ));
                }
                None => return Err(format!("request header {k} did not reach the backend")),
            }
        }
        for k in exp["AbsentHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            if echo_header(&echo["headers"], k).is_some() {
                return Err(format!("request header {k} should have been removed"));
            }
        }
        for (k, v) in case["Response"]["Headers"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let want = v.as_str().unwrap_or("");
            let got: Vec<&str> = reply
                .headers
                .get_all(k.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if got.is_empty() {
                return Err(format!("response header {k} is missing"));
            }
            if got.join(",") != want {
                return Err(format!(
                    "response header {k}: expected {want:?}, got {:?}",
                    got.join(",")
                ));
            }
        }
        for k in case["Response"]["AbsentHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            if reply.headers.contains_key(k) {
                return Err(format!("response header {k} should be absent"));
            }
        }
        let backend = case["Backend"].as_str().unwrap_or("");
        let pod = echo["pod"].as_str().unwrap_or("");
        if !pod.starts_with(backend) {
            return Err(format!(
                "expected backend {backend:?}, answered by pod {pod:?}"
            ));
        }
        return Ok(());
    }
    if is_redirect(reply.status) && case["RedirectRequest"].is_object() {
        let rr = &case["RedirectRequest"];
        let location = reply
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("a redirect without Location")?;
        let uri: http::Uri = location
            .parse()
            .map_err(|e| format!("Location {location:?}: {e}"))?;
        let host_only = request_host.split(':').next().unwrap_or("");
        let want_host = rr["Host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(host_only);
        let want_scheme = rr["Scheme"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(request_scheme);
        let want_path = rr["Path"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or(req["Path"].as_str().unwrap_or("/"));
        let got_scheme = uri.scheme_str().unwrap_or("");
        let got_host = uri.host().unwrap_or("");
        let got_port = uri.port_u16().map(|p| p.to_string()).unwrap_or_default();
        if got_host != want_host {
            return Err(format!(
                "redirect host: expected {want_host:?}, Location {location:?}"
            ));
        }
        if got_scheme != want_scheme {
            return Err(format!(
                "redirect scheme: expected {want_scheme:?}, Location {location:?}"
            ));
        }
        if uri.path() != want_path {
            return Err(format!(
                "redirect path: expected {want_path:?}, Location {location:?}"
            ));
        }
        let port_ok = match rr["Port"].as_str().unwrap_or("") {
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
                rr["Port"]
            ));
        }
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

    #[test]
    fn compare_request_semantics() {
        let case = json!({"Request": {"Path": "/x", "Headers": {"A": "1"}}, "Backend": "infra-backend-v1", "Namespace": "ns"});
        assert!(
            compare(
                &case,
                &reply(
                    200,
                    echo("/x", "infra-backend-v1-0", json!({"A": ["1"]})),
                    &[]
                ),
                "http",
                "h"
            )
            .is_ok()
        );
        assert!(
            compare(
                &case,
                &reply(
                    200,
                    echo("/x", "infra-backend-v2-0", json!({"A": ["1"]})),
                    &[]
                ),
                "http",
                "h"
            )
            .unwrap_err()
            .contains("expected backend")
        );
        assert!(
            compare(
                &case,
                &reply(
                    200,
                    echo("/y", "infra-backend-v1-0", json!({"A": ["1"]})),
                    &[]
                ),
                "http",
                "h"
            )
            .unwrap_err()
            .contains("path")
        );
        assert!(
            compare(&case, &reply(404, json!({}), &[]), "http", "h")
                .unwrap_err()
                .contains("expected status 200")
        );
        let timeout = json!({"Request": {"Path": "/"}, "Response": {"StatusCode": 504}});
        assert!(
            compare(&timeout, &reply(408, json!({}), &[]), "http", "h").is_ok(),
            "408 and 504 are equivalent"
        );
        let redirect = json!({"Request": {"Path": "/p"}, "RedirectRequest": {"Scheme": "https"}, "Response": {"StatusCode": 302}});
        assert!(
            compare(
                &redirect,
                &reply(302, json!({}), &[("location", "https://gw.example/p")]),
                "http",
                "gw.example"
            )
            .is_ok()
        );
        assert!(
            compare(
                &redirect,
                &reply(302, json!({}), &[("location", "https://gw.example:8443/p")]),
                "http",
                "gw.example"
            )
            .is_err()
        );
        assert!(
            compare(
                &redirect,
                &reply(302, json!({}), &[("location", "https://gw.example:443/p")]),
                "http",
                "gw.example"
            )
            .is_ok()
        );
    }

    #[test]
    fn reads_san_dns_names() {
        let (pem, _) =
            crate::conformance::env::self_signed(&["*".into(), "*.org".into(), "127.0.0.1".into()])
                .unwrap();
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
        let case = json!({"Request": {"Path": "/a?b=c", "Method": "POST", "Headers": {"x-custom": "v"}}, "BackendSetResponseHeaders": {"X-Y": "z"}});
        let r = build(&case, "1.2.3.4").unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri(), "/a?b=c");
        assert_eq!(r.headers()["host"], "1.2.3.4");
        assert_eq!(r.headers()["x-custom"], "v");
        assert_eq!(r.headers()["x-echo-set-header"], "X-Y:z");
    }
}
