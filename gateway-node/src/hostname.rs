//! Hostnames as the Gateway API uses them: exact names and `*.` wildcards (one or more labels),
//! intersection of listener and route hostnames, and matching of a request's host.

/// Lowercases a Host header value and strips its port ("the port in the Host header must be ignored").
pub fn normalize_host(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `pattern` (exact or `*.suffix`) matches the concrete `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // "*.example.com" matches one or more labels before ".example.com", never "example.com" itself.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The hostnames in which a listener hostname and a route hostname intersect (Gateway API
/// "hostname intersection"): `None` when they do not.
pub fn intersect(listener: &str, route: &str) -> Option<String> {
    if listener == route {
        return Some(route.to_string());
    }
    let lw = listener.starts_with("*.");
    let rw = route.starts_with("*.");
    match (lw, rw) {
        (false, false) => None,
        (true, false) => matches(listener, route).then(|| route.to_string()),
        (false, true) => matches(route, listener).then(|| listener.to_string()),
        // Both wildcards: the more specific one, if it lies under the other.
        (true, true) => {
            if route.len() > listener.len() && route.ends_with(&listener[1..]) {
                Some(route.to_string())
            } else if listener.len() > route.len() && listener.ends_with(&route[1..]) {
                Some(listener.to_string())
            } else {
                None
            }
        }
    }
}

/// The hostnames a route serves on a listener: the intersection of both lists, where an empty list
/// means "any". `Some(vec![])` means "any hostname"; `None` means no intersection.
pub fn effective(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener, route.is_empty()) {
        (None, true) => Some(vec![]),
        (None, false) => Some(route.to_vec()),
        (Some(l), true) => Some(vec![l.to_string()]),
        (Some(l), false) => {
            let mut out: Vec<String> = route.iter().filter_map(|r| intersect(l, r)).collect();
            out.sort();
            out.dedup();
            (!out.is_empty()).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        for (raw, host) in [
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("very.specific.com:1234", "very.specific.com"),
            ("[::1]:80", "::1"),
            ("127.0.0.1", "127.0.0.1"),
            ("example.com.", "example.com"),
        ] {
            assert_eq!(normalize_host(raw), host, "{raw}");
        }
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*.example.com", "foo.example.com"));
        assert!(matches("*.example.com", "foo.bar.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "fooexample.com"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "x.a.b"));
    }

    /// Gateway API hostname intersection, as a table.
    #[test]
    fn intersection_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "very.specific.com",
                "very.specific.com",
                Some("very.specific.com"),
            ),
            (
                "very.specific.com",
                "*.specific.com",
                Some("very.specific.com"),
            ),
            ("*.wildcard.io", "foo.wildcard.io", Some("foo.wildcard.io")),
            ("*.wildcard.io", "*.wildcard.io", Some("*.wildcard.io")),
            (
                "*.wildcard.io",
                "*.foo.wildcard.io",
                Some("*.foo.wildcard.io"),
            ),
            (
                "*.foo.wildcard.io",
                "*.wildcard.io",
                Some("*.foo.wildcard.io"),
            ),
            ("*.wildcard.io", "wildcard.io", None),
            ("*.wildcard.io", "*.anotherwildcard.io", None),
            ("very.specific.com", "non.matching.com", None),
            ("very.specific.com", "*.other.com", None),
        ];
        for (l, r, want) in cases {
            assert_eq!(intersect(l, r).as_deref(), *want, "{l} ∩ {r}");
        }
        assert_eq!(effective(None, &[]), Some(vec![]));
        assert_eq!(
            effective(Some("*.a.io"), &[]),
            Some(vec!["*.a.io".to_string()])
        );
        assert_eq!(
            effective(Some("x.a.io"), &["*.a.io".into(), "y.b.io".into()]),
            Some(vec!["x.a.io".to_string()])
        );
        assert_eq!(effective(Some("x.a.io"), &["y.b.io".into()]), None);
    }
}
