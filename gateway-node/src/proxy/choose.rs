//! Phase 2, choose: the backend and endpoint a request goes to — the session's when persistence chose
//! one, else the rule's weighted choice (from a draw the runtime passes in) and the upstream's next
//! endpoint. Pure over the table.

use super::error::{ErrorKind, ProxyError};
use crate::table::{BackendEntry, BackendTarget, Backends, Upstream};
use std::sync::Arc;

/// Where a request goes.
pub struct Target<'a> {
    pub backend: &'a BackendEntry,
    pub upstream: Arc<Upstream>,
    pub endpoint: usize,
}

/// `session`: the entry and endpoint that session persistence chose, if it did; `draw`: uniform over
/// `u64`, for the weighted choice and the endpoint's locality otherwise; `now_ms` the time (for
/// endpoints' ejections).
pub fn choose<'a>(
    backends: &'a Backends,
    session: Option<(usize, usize)>,
    draw: &mut impl FnMut() -> u64,
    now_ms: u64,
) -> Result<Target<'a>, ProxyError> {
    let entry = match session {
        Some((entry, _)) => entry,
        None => backends.choose_where(draw(), |_| true).ok_or_else(|| {
            ProxyError::new(ErrorKind::NoBackend, "the rule has no backend to send to")
        })?,
    };
    let backend = &backends.entries[entry];
    let upstream = match &backend.target {
        BackendTarget::Upstream(u) => u.clone(),
        BackendTarget::Invalid(why) => {
            return Err(ProxyError::new(ErrorKind::InvalidBackend, why.clone()));
        }
    };
    if let Some(why) = &backend.filters.invalid {
        return Err(ProxyError::new(ErrorKind::InvalidFilter, why.clone()));
    }
    let endpoint = session
        .map(|(_, p)| p)
        .or_else(|| upstream.pick_index(draw(), now_ms, None))
        .ok_or_else(|| {
            ProxyError::new(
                ErrorKind::NoEndpoint,
                format!("{} has no ready endpoint", upstream.id),
            )
        })?;
    Ok(Target {
        backend,
        upstream,
        endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{EndpointInfo, Filters, Locality, Placement, UpstreamProtocol};

    fn upstream(id: &str, endpoints: usize) -> BackendTarget {
        BackendTarget::Upstream(Arc::new(Upstream::new(
            id.into(),
            UpstreamProtocol::Http1,
            (0..endpoints)
                .map(|e| EndpointInfo {
                    addr: format!("10.0.0.{e}:80").parse().unwrap(),
                    pod: String::new(),
                    locality: Locality::default(),
                    for_zones: Vec::new(),
                })
                .collect(),
            &Placement::default(),
        )))
    }

    fn entry(weight: u64, target: BackendTarget, invalid_filter: Option<&str>) -> BackendEntry {
        BackendEntry {
            weight,
            target,
            filters: Filters {
                invalid: invalid_filter.map(String::from),
                ..Filters::default()
            },
        }
    }

    #[test]
    fn choices_and_their_failures() {
        let b = Backends::new(vec![
            entry(1, upstream("a", 2), None),
            entry(1, upstream("b", 0), None),
            entry(
                0,
                BackendTarget::Invalid("Service x not found".into()),
                None,
            ),
            entry(0, upstream("c", 1), Some("ExtensionRef not resolved")),
        ]);
        let t = choose(&b, None, &mut || 0, 0).unwrap();
        assert_eq!((t.upstream.id.as_str(), t.endpoint), ("a", 0));
        let t = choose(&b, None, &mut || 0, 0).unwrap();
        assert_eq!(t.endpoint, 1, "round robin over a backend's endpoints");
        let err = |r: Result<Target<'_>, ProxyError>| r.err().map(|e| (e.kind, e.message));
        assert_eq!(
            err(choose(&b, None, &mut || u64::MAX, 0)),
            Some((ErrorKind::NoEndpoint, "b has no ready endpoint".into()))
        );
        assert_eq!(
            err(choose(&b, Some((2, 0)), &mut || 0, 0)),
            Some((ErrorKind::InvalidBackend, "Service x not found".into()))
        );
        assert_eq!(
            err(choose(&b, Some((3, 0)), &mut || 0, 0)),
            Some((ErrorKind::InvalidFilter, "ExtensionRef not resolved".into()))
        );
        let t = choose(&b, Some((0, 1)), &mut || u64::MAX, 0).unwrap();
        assert_eq!(
            (t.upstream.id.as_str(), t.endpoint),
            ("a", 1),
            "a session's choice wins over the draw"
        );
        let none = Backends::new(vec![entry(0, upstream("a", 1), None)]);
        assert_eq!(
            err(choose(&none, None, &mut || 0, 0)).map(|e| e.0),
            Some(ErrorKind::NoBackend)
        );
    }
}
