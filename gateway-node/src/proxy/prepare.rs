//! Phase 3, prepare: the request as the backend gets it — hop-by-hop headers removed (RFC 9110
//! §7.6.1), the rule's then the backendRef's request filters applied (header modifiers, URL rewrites),
//! `X-Forwarded-For`/`-Proto` added — and addressed to the chosen endpoint. Pure.

use super::ConnInfo;
use super::error::{ErrorKind, ProxyError};
use crate::table::{Filters, RuleAction, UpstreamProtocol};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Uri, request};

/// Headers that describe one connection, never forwarded; `te: trailers` is kept for gRPC. With
/// `keep_upgrade` (a WebSocket handshake) `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    let trailers = h.get(header::TE).is_some_and(|v| v == "trailers");
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
    ] {
        h.remove(n);
    }
    h.remove(header::TE);
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// Whether the request asks to switch protocols (a WebSocket handshake).
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
}

/// A request ready to be addressed to an endpoint.
pub struct Prepared {
    pub parts: request::Parts,
    /// The request target: the original one unless a filter rewrote the path.
    pub path_and_query: PathAndQuery,
    /// The host the backend sees (rewritten by a filter, else the request's).
    pub authority: Authority,
}

/// Applies the filter sets (the rule's, then the backendRef's) to a request that matched `action`
/// with host `host`.
pub fn prepare(
    mut parts: request::Parts,
    action: &RuleAction,
    backend_filters: &Filters,
    conn: &ConnInfo,
    host: &str,
    upgrade: bool,
) -> Result<Prepared, ProxyError> {
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let mut new_path: Option<String> = None;
    let mut host_value = original_host;
    for f in [&action.filters, backend_filters] {
        f.request_headers.apply(&mut parts.headers);
        if let Some(rw) = &f.rewrite {
            if let Some(p) = &rw.path {
                let current = new_path.as_deref().unwrap_or(parts.uri.path());
                new_path = Some(p.apply(current, action.prefix.as_deref()));
            }
            if let Some(h) = &rw.hostname {
                host_value = Some(h.clone());
            }
        }
    }
    let proto = if conn.https { "https" } else { "http" };
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    parts
        .headers
        .append("x-forwarded-for", conn.forwarded_for.clone());
    let path_and_query = match (new_path, parts.uri.path_and_query()) {
        (None, Some(pq)) => pq.clone(),
        (new_path, pq) => {
            let path = new_path.unwrap_or_else(|| "/".into());
            let target = match pq.and_then(|p| p.query()) {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(target).map_err(|e| {
                ProxyError::new(ErrorKind::InvalidRewrite, format!("rewritten path: {e}"))
            })?
        }
    };
    let authority = match host_value
        .as_ref()
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    {
        Some(a) => a,
        None => Authority::try_from(host).map_err(|_| {
            ProxyError::new(
                ErrorKind::InvalidHost,
                "the request's host is not a valid authority",
            )
        })?,
    };
    Ok(Prepared {
        parts,
        path_and_query,
        authority,
    })
}

/// Addresses a request to a backend: for HTTP/1.1 the URI names the endpoint and the Host header
/// carries the (possibly rewritten) host; for HTTP/2 the URI's authority is the host (`:authority`),
/// the connection being chosen by endpoint.
pub fn address<B>(
    mut req: Request<B>,
    path_and_query: &PathAndQuery,
    host: &Authority,
    endpoint: &Authority,
    protocol: UpstreamProtocol,
) -> Request<B> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.path_and_query = Some(path_and_query.clone());
    match protocol {
        UpstreamProtocol::Http1 => {
            uri.authority = Some(endpoint.clone());
            if let Ok(h) = HeaderValue::from_str(host.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        UpstreamProtocol::H2c => {
            uri.authority = Some(host.clone());
            req.headers_mut().remove(header::HOST);
        }
    }
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{
        Backends, HeaderMod, PathModifier, Rewrite, RouteInfo, RuleAction, Timeouts,
    };
    use std::sync::Arc;

    fn action(filters: Filters, prefix: Option<&str>) -> RuleAction {
        RuleAction {
            route: Arc::new(RouteInfo::new("HTTPRoute d/r".into(), false)),
            rule_index: 0,
            filters,
            backends: Backends::default(),
            timeouts: Timeouts::default(),
            prefix: prefix.map(String::from),
            session: None,
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conn() -> ConnInfo {
        ConnInfo::new(
            "127.0.0.1:80".parse().unwrap(),
            "10.1.2.3:5555".parse().unwrap(),
            None,
        )
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded_but_upgrades_and_trailers_are() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private, upgrade"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        assert!(wants_upgrade(&h));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-kept"]);
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key("upgrade") && h.contains_key("connection"));
        assert!(!h.contains_key("x-private"));
    }

    #[test]
    fn filters_apply_in_order_and_forwarding_headers_are_added() {
        let rule = Filters {
            request_headers: HeaderMod {
                set: vec![(
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("rule"),
                )],
                ..HeaderMod::default()
            },
            rewrite: Some(Rewrite {
                hostname: Some(HeaderValue::from_static("rewritten.example")),
                path: Some(PathModifier::Prefix("/new".into())),
            }),
            ..Filters::default()
        };
        let backend = Filters {
            request_headers: HeaderMod {
                set: vec![(
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("backend"),
                )],
                ..HeaderMod::default()
            },
            ..Filters::default()
        };
        let p = prepare(
            parts(
                "/old/x?q=1",
                &[("host", "a.example"), ("x-forwarded-for", "1.1.1.1")],
            ),
            &action(rule, Some("/old")),
            &backend,
            &conn(),
            "a.example",
            false,
        )
        .unwrap();
        assert_eq!(
            p.parts.headers["x-a"], "backend",
            "the backendRef's filter runs last"
        );
        assert_eq!(p.path_and_query.as_str(), "/new/x?q=1");
        assert_eq!(p.authority.as_str(), "rewritten.example");
        assert_eq!(p.parts.headers["x-forwarded-proto"], "http");
        let xff: Vec<_> = p.parts.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["1.1.1.1", "10.1.2.3"]);
    }

    #[test]
    fn an_unusable_host_or_rewrite_is_refused() {
        let bad = prepare(
            parts("/", &[]),
            &action(Filters::default(), None),
            &Filters::default(),
            &conn(),
            "bad host",
            false,
        );
        assert_eq!(bad.err().map(|e| e.kind), Some(ErrorKind::InvalidHost));
        let rewrite = Filters {
            rewrite: Some(Rewrite {
                hostname: None,
                path: Some(PathModifier::Full("/with space".into())),
            }),
            ..Filters::default()
        };
        let bad = prepare(
            parts("/", &[("host", "a")]),
            &action(rewrite, None),
            &Filters::default(),
            &conn(),
            "a",
            false,
        );
        assert_eq!(bad.err().map(|e| e.kind), Some(ErrorKind::InvalidRewrite));
    }

    #[test]
    fn requests_are_addressed_per_protocol() {
        let pq = PathAndQuery::from_static("/p?q");
        let host = Authority::from_static("app.example");
        let ep = Authority::from_static("10.0.0.1:8080");
        let r = address(Request::new(()), &pq, &host, &ep, UpstreamProtocol::Http1);
        assert_eq!(r.uri(), "http://10.0.0.1:8080/p?q");
        assert_eq!(r.headers()["host"], "app.example");
        let r = address(Request::new(()), &pq, &host, &ep, UpstreamProtocol::H2c);
        assert_eq!(r.uri(), "http://app.example/p?q");
        assert!(!r.headers().contains_key("host"));
    }
}
