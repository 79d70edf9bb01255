//! The session persistence of a route rule, as compiled into the routing table: its scope, where its
//! entries live, how the token travels (cookie or header) and its timeouts. Reading a token from a
//! request and writing one into a response are pure functions of this configuration.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The cookie or header name when `sessionName` is not given.
pub const DEFAULT_NAME: &str = "gw-session";

/// How the token travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// `Set-Cookie` on the response that starts the session; the `Cookie` header after that.
    Cookie {
        name: String,
        path: String,
        /// Only for `lifetimeType: Permanent` (the absolute timeout).
        max_age_s: Option<u64>,
    },
    /// A response header that the client sends back as a request header of the same name.
    Header(HeaderName),
}

/// The session persistence of one route rule (or of the BackendLBPolicy that applies to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// `HTTPRoute/ns/name/rules/N` or `BackendLBPolicy/ns/name`: two scopes never share a session.
    pub scope: String,
    /// Where the sessions' entries live (the route's or the policy's namespace).
    pub namespace: String,
    pub carrier: Carrier,
    pub idle_timeout_ms: Option<u64>,
    pub absolute_timeout_ms: Option<u64>,
}

impl SessionConfig {
    /// The token a request carries, if any (not yet verified).
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        match &self.carrier {
            Carrier::Header(name) => headers.get(name)?.to_str().ok(),
            Carrier::Cookie { name, .. } => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim_matches('"')),
        }
    }

    /// The response header that hands `token` to the client.
    pub fn issue(&self, token: &str, https: bool) -> Option<(HeaderName, HeaderValue)> {
        match &self.carrier {
            Carrier::Header(name) => Some((name.clone(), HeaderValue::from_str(token).ok()?)),
            Carrier::Cookie {
                name,
                path,
                max_age_s,
            } => {
                let mut c = format!("{name}={token}; Path={path}; HttpOnly");
                if let Some(s) = max_age_s {
                    c.push_str(&format!("; Max-Age={s}"));
                }
                if https {
                    c.push_str("; Secure");
                }
                Some((SET_COOKIE, HeaderValue::from_str(&c).ok()?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
