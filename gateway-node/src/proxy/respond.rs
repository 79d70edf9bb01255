//! Phase 5, respond: the response as the client gets it — hop-by-hop headers removed (kept for a
//! protocol switch), the backendRef's then the rule's response header modifiers, and the token of a
//! new session. Pure.

use super::prepare::strip_hop_by_hop;
use crate::table::Filters;
use http::{HeaderName, HeaderValue, StatusCode, response};

pub fn respond(
    parts: &mut response::Parts,
    rule: &Filters,
    backend: &Filters,
    issue: Option<(HeaderName, HeaderValue)>,
) {
    strip_hop_by_hop(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    for f in [backend, rule] {
        f.response_headers.apply(&mut parts.headers);
    }
    if let Some((name, value)) = issue {
        parts.headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::HeaderMod;
    use http::Response;

    #[test]
    fn response_filters_and_session_tokens() {
        let set = |v: &'static str| Filters {
            response_headers: HeaderMod {
                set: vec![(HeaderName::from_static("x-r"), HeaderValue::from_static(v))],
                ..HeaderMod::default()
            },
            ..Filters::default()
        };
        let mut parts = Response::builder()
            .header("connection", "close")
            .header("x-r", "backend-sent")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        respond(
            &mut parts,
            &set("rule"),
            &set("backendref"),
            Some((
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("s=t"),
            )),
        );
        assert_eq!(
            parts.headers["x-r"], "rule",
            "the rule's modifier runs last"
        );
        assert_eq!(parts.headers["set-cookie"], "s=t");
        assert!(!parts.headers.contains_key("connection"));
    }
}
