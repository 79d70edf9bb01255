//! The response of a RequestRedirect filter. Pure.

use super::{ProxyBody, empty};
use crate::table::Redirect;
use http::header::{self, HeaderValue};
use http::{Response, Uri};

/// Gateway API: without a port, the port is the scheme's well-known one when the filter sets a scheme,
/// else the listener's; a well-known port is not written.
pub fn redirect(
    r: &Redirect,
    https: bool,
    host: &str,
    listener_port: u16,
    uri: &Uri,
    prefix: Option<&str>,
) -> Response<ProxyBody> {
    let scheme = r.scheme.unwrap_or(if https { "https" } else { "http" });
    let hostname = r.hostname.as_deref().unwrap_or(host);
    let port = r.port.or(if r.scheme.is_some() {
        None
    } else {
        Some(listener_port)
    });
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => m.apply(uri.path(), prefix),
        None => uri.path().to_string(),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = match port {
        Some(p) => format!("{scheme}://{hostname}:{p}{path}{query}"),
        None => format!("{scheme}://{hostname}{path}{query}"),
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::PathModifier;
    use http::StatusCode;

    fn r(scheme: Option<&'static str>, port: Option<u16>, path: Option<PathModifier>) -> Redirect {
        Redirect {
            scheme,
            hostname: None,
            port,
            path,
            status: StatusCode::FOUND,
        }
    }

    #[test]
    fn locations_follow_the_spec_defaults() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let loc = |red: &Redirect, https, port| {
            redirect(red, https, "h.example", port, &uri, Some("/a")).headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            loc(&r(None, None, None), false, 8080),
            "http://h.example:8080/a/b?x=1"
        );
        assert_eq!(
            loc(&r(None, None, None), false, 80),
            "http://h.example/a/b?x=1"
        );
        assert_eq!(
            loc(&r(Some("https"), None, None), false, 8080),
            "https://h.example/a/b?x=1"
        );
        assert_eq!(
            loc(&r(Some("https"), Some(8443), None), false, 80),
            "https://h.example:8443/a/b?x=1"
        );
        assert_eq!(
            loc(
                &r(None, None, Some(PathModifier::Prefix("/z".into()))),
                true,
                443
            ),
            "https://h.example/z/b?x=1"
        );
    }
}
