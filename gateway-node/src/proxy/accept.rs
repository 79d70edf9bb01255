//! Phase 0, accept: what a request must be before it is routed, and its path normalized — every client
//! is treated as hostile (DESIGN.md, Security). Pure.
//!
//! - One `Host` (RFC 9112 §3.2: a request with several is malformed), agreeing with the authority of
//!   an absolute-form target (§3.2.2) or of HTTP/2's `:authority` (RFC 9113 §8.3.1).
//! - The path is normalized before it is matched and it is the normalized path that the backend
//!   receives, the choices of Envoy's `normalize_path: true`, `merge_slashes: false` and
//!   `path_with_escaped_slashes_action: REJECT_REQUEST`: percent-encoded unreserved characters are
//!   decoded (`%2e` is `.`, RFC 3986 §6.2.2.2), dot segments removed (§5.2.4), an encoded `/` or `\`
//!   (`%2F`, `%5C`) is refused — it would make one segment look like two to some backends and one to
//!   the matcher — as is a malformed escape. Repeated slashes are kept (`//a` is not `/a`).

use super::error::{ErrorKind, ProxyError};
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Uri};

fn bad(why: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, why)
}

/// The request as gw routes it: one consistent host, and its path normalized.
pub fn accept<B>(mut req: Request<B>) -> Result<Request<B>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    if let (Some(h), Some(a)) = (host, req.uri().authority())
        && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
    {
        return Err(bad(format!(
            "the Host header ({}) disagrees with the request target's authority ({a})",
            String::from_utf8_lossy(h.as_bytes())
        )));
    }
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(req);
    };
    let path = normalize_path(pq.path())?;
    if path != pq.path() {
        let target = match pq.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query =
            Some(PathAndQuery::try_from(target).map_err(|e| bad(format!("normalized path: {e}")))?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| bad(format!("request target: {e}")))?;
    }
    Ok(req)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The normalized form of a request path (see the module doc); `Err` for what cannot be normalized.
pub fn normalize_path(path: &str) -> Result<String, ProxyError> {
    if path == "*" {
        return Ok(path.to_string());
    }
    if !path.starts_with('/') {
        return Err(bad(format!("the path {path:?} is not absolute")));
    }
    // Escapes first: unreserved characters decoded, encoded separators refused, others kept (upper case).
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad(format!(
                    "a malformed percent-escape in the path {path:?}"
                )));
            };
            let b = h * 16 + l;
            if b == b'/' || b == b'\\' {
                return Err(bad(format!(
                    "an encoded '{}' in the path {path:?}",
                    b as char
                )));
            }
            if unreserved(b) {
                decoded.push(b as char);
            } else {
                decoded.push_str(&format!("%{b:02X}"));
            }
            i += 3;
        } else {
            decoded.push(bytes[i] as char);
            i += 1;
        }
    }
    Ok(remove_dot_segments(&decoded))
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` removes the segment before it
/// (never above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_like_rfc_3986_or_are_refused() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin/x", "/admin/x"),
            ("/public/%2E%2E/admin/x", "/admin/x"),
            ("/public/./x", "/public/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../x", "/x"),
            ("/..", "/"),
            ("/a//b", "/a//b"),
            ("/%7Euser/%41", "/~user/A"),
            ("/a%20b/%e2%82%ac", "/a%20b/%E2%82%AC"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for raw in [
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/a%5c..%5cadmin",
            "/a%zz",
            "/a%2",
            "/a%",
            "relative",
        ] {
            let e = normalize_path(raw).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{raw}: {e}");
        }
    }

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_must_be_one_and_agree_with_the_target() {
        assert!(accept(req("/x", &["a.example"])).is_ok());
        assert!(
            accept(req("/x", &[])).is_ok(),
            "routing answers a request without Host"
        );
        let e = accept(req("/x", &["a.example", "b.example"])).unwrap_err();
        assert!(e.message.contains("more than one Host"), "{e}");
        let e = accept(req("http://a.example/x", &["b.example"])).unwrap_err();
        assert!(e.message.contains("disagrees"), "{e}");
        assert!(accept(req("http://a.example:8080/x", &["A.example:8080"])).is_ok());
        let r = accept(req("/public/%2e%2e/admin?q=1", &["a"])).unwrap();
        assert_eq!(
            r.uri(),
            "/admin?q=1",
            "the normalized path is the one forwarded"
        );
    }
}
