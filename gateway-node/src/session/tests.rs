use super::*;
use crate::table::{BackendEntry, Filters, Upstream, UpstreamProtocol};

fn config(carrier: Carrier) -> SessionConfig {
    SessionConfig {
        scope: "HTTPRoute/d/r/rules/0".into(),
        namespace: "d".into(),
        carrier,
        idle_timeout_ms: None,
        absolute_timeout_ms: None,
    }
}

fn cookie(max_age_s: Option<u64>) -> Carrier {
    Carrier::Cookie {
        name: "s".into(),
        path: "/app".into(),
        max_age_s,
    }
}

#[test]
fn tokens_are_read_from_the_named_cookie_or_header() {
    let mut h = HeaderMap::new();
    h.append(COOKIE, HeaderValue::from_static("a=1; s=tok; b=2"));
    assert_eq!(config(cookie(None)).token(&h), Some("tok"));
    let mut other = HeaderMap::new();
    other.append(COOKIE, HeaderValue::from_static("ss=no; xs=no"));
    assert_eq!(config(cookie(None)).token(&other), None);
    let header = config(Carrier::Header(HeaderName::from_static("x-session")));
    h.insert("x-session", HeaderValue::from_static("htok"));
    assert_eq!(header.token(&h), Some("htok"));
}

#[test]
fn only_permanent_cookies_carry_max_age() {
    let (n, v) = config(cookie(None)).issue("t", false).unwrap();
    assert_eq!(n, SET_COOKIE);
    assert_eq!(v, "s=t; Path=/app; HttpOnly");
    let (_, v) = config(cookie(Some(60))).issue("t", true).unwrap();
    assert_eq!(v, "s=t; Path=/app; HttpOnly; Max-Age=60; Secure");
}

fn backends(weights: &[(u64, usize)]) -> Backends {
    Backends::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, (w, endpoints))| BackendEntry {
                weight: *w,
                target: BackendTarget::Upstream(Arc::new(Upstream::new(
                    format!("d/s{i}:80"),
                    UpstreamProtocol::Http1,
                    (0..*endpoints)
                        .map(|e| {
                            (
                                format!("10.0.{i}.{e}:80").parse().unwrap(),
                                format!("pod-{i}-{e}"),
                            )
                        })
                        .collect(),
                ))),
                filters: Filters::default(),
            })
            .collect(),
    )
}

#[test]
fn bound_backends_are_found_whatever_their_weight() {
    let b = backends(&[(1, 2), (0, 1)]);
    assert_eq!(find(&b, "d/s1:80|pod-1-0|10.0.1.0:80"), Some((1, 0)));
    assert_eq!(find(&b, "d/s0:80|pod-0-1|10.0.0.1:80"), Some((0, 1)));
    // The same address behind another pod is another backend.
    assert_eq!(find(&b, "d/s0:80|pod-new|10.0.0.1:80"), None);
}

#[test]
fn new_sessions_go_only_to_weighted_backends_with_ready_endpoints() {
    let b = backends(&[(0, 1), (5, 0), (1, 1)]);
    for _ in 0..50 {
        assert_eq!(fresh(&b, ""), Some((2, 0)));
    }
    assert_eq!(fresh(&backends(&[(0, 1), (3, 0)]), ""), None);
    // A failed backend is not its own replacement.
    let two = backends(&[(1, 1), (1, 1)]);
    for _ in 0..20 {
        assert_eq!(fresh(&two, "d/s0:80|pod-0-0|10.0.0.0:80"), Some((1, 0)));
    }
}
