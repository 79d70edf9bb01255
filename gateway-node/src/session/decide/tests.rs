//! The session decision as a table: every `Decision` for the situations that lead to it, with time and
//! randomness given (no clock, no RNG, no sockets).

use super::*;
use crate::table::{
    BackendEntry, Carrier, EndpointInfo, Filters, Locality, Placement, Upstream, UpstreamProtocol,
};
use gw_model::affinity::{SessionSpec, SessionStatus};
use std::sync::Arc;

const NOW: u64 = 1_800_000_000_000;

fn config(idle_timeout_ms: Option<u64>, absolute_timeout_ms: Option<u64>) -> SessionConfig {
    SessionConfig {
        scope: "HTTPRoute/d/r/rules/0".into(),
        namespace: "d".into(),
        carrier: Carrier::Header(http::HeaderName::from_static("x-s")),
        idle_timeout_ms,
        absolute_timeout_ms,
    }
}

/// Backends `s0`, `s1`, ...: `(weight, endpoints)` each; endpoint `e` of `si` is `d/si:80|pod-i-e|...`.
fn backends(spec: &[(u64, usize)]) -> Backends {
    backends_in(spec, &Placement::default())
}

/// `backends`, their endpoints' health kept in `placement`'s.
fn backends_in(spec: &[(u64, usize)], placement: &Placement) -> Backends {
    Backends::new(
        spec.iter()
            .enumerate()
            .map(|(i, (w, n))| BackendEntry {
                weight: *w,
                target: BackendTarget::Upstream(Arc::new(Upstream::new(
                    format!("d/s{i}:80"),
                    UpstreamProtocol::Http1,
                    (0..*n)
                        .map(|e| EndpointInfo {
                            addr: format!("10.0.{i}.{e}:80").parse().unwrap(),
                            pod: format!("pod-{i}-{e}"),
                            locality: Locality::default(),
                            for_zones: Vec::new(),
                        })
                        .collect(),
                    placement,
                ))),
                filters: Filters::default(),
            })
            .collect(),
    )
}

fn id(i: usize, e: usize) -> String {
    format!("d/s{i}:80|pod-{i}-{e}|10.0.{i}.{e}:80")
}

fn token(backend: &str, issued_ms: u64) -> Token {
    Token {
        session: "abc".into(),
        scope: "HTTPRoute/d/r/rules/0".into(),
        backend: backend.into(),
        issued_ms,
    }
}

fn entry(backend: &str, expired: bool, scope: &str) -> SessionEntry {
    SessionEntry {
        namespace: "d".into(),
        id: "abc".into(),
        spec: SessionSpec {
            scope: scope.into(),
            backend: backend.into(),
            issued_ms: NOW - 10_000,
            idle_timeout_ms: None,
            absolute_timeout_ms: None,
        },
        status: SessionStatus {
            expired_ms: expired.then_some(NOW - 1),
            ..SessionStatus::new(NOW - 10_000)
        },
    }
}

/// A fixed sequence of draws (cycled): the test decides what "random" is.
fn draws(values: &[u64]) -> impl FnMut() -> u64 + '_ {
    let mut i = 0;
    move || {
        let v = values[i % values.len()];
        i += 1;
        v
    }
}

struct Case {
    name: &'static str,
    token: Option<Token>,
    known: Known,
    idle_timeout_ms: Option<u64>,
    absolute_timeout_ms: Option<u64>,
    local_failover: bool,
    /// The backend that refused this request's connection ("": none).
    refused: String,
    backends: Vec<(u64, usize)>,
    want: Decision,
}

fn case(name: &'static str, token: Option<Token>, known: Known, want: Decision) -> Case {
    Case {
        name,
        token,
        known,
        idle_timeout_ms: None,
        absolute_timeout_ms: None,
        local_failover: false,
        refused: String::new(),
        backends: vec![(1, 2), (0, 1)],
        want,
    }
}

fn new_session(entry: usize, endpoint: usize) -> Decision {
    Decision::New {
        entry,
        endpoint,
        token: Token {
            // Two draws of 0 make the id; the backend is the one the first draws chose.
            session: "00000000000000000000000000000000".into(),
            scope: "HTTPRoute/d/r/rules/0".into(),
            backend: id(entry, endpoint),
            issued_ms: NOW,
        },
    }
}

#[test]
fn every_decision() {
    let scope = "HTTPRoute/d/r/rules/0";
    let fresh_token = || Some(token(&id(0, 1), NOW - 1_000));
    let cases = vec![
        case("no token: a new session", None, Known::Entry(None), new_session(0, 0)),
        case(
            "a stale view: confirm with the store first",
            fresh_token(),
            Known::Unconfirmed,
            Decision::Confirm,
        ),
        case(
            "a committed binding is followed",
            fresh_token(),
            Known::Entry(Some(entry(&id(0, 1), false, scope))),
            Decision::Follow { entry: 0, endpoint: 1 },
        ),
        case(
            "stickiness: a binding to a weight-0 backend is followed",
            fresh_token(),
            Known::Entry(Some(entry(&id(1, 0), false, scope))),
            Decision::Follow { entry: 1, endpoint: 0 },
        ),
        case(
            "a token without an entry yet binds inside its window (its entry is made on its return)",
            fresh_token(),
            Known::Entry(None),
            Decision::Follow { entry: 0, endpoint: 1 },
        ),
        Case {
            idle_timeout_ms: Some(1_001),
            ..case(
                "just inside its idle timeout, a token without an entry binds",
                fresh_token(),
                Known::Entry(None),
                Decision::Follow { entry: 0, endpoint: 1 },
            )
        },
        Case {
            idle_timeout_ms: Some(1_000),
            ..case(
                "past its idle timeout, a token without an entry: a new session",
                fresh_token(),
                Known::Entry(None),
                new_session(0, 0),
            )
        },
        Case {
            idle_timeout_ms: Some(60_000),
            absolute_timeout_ms: Some(500),
            ..case(
                "past its absolute timeout a token never binds",
                fresh_token(),
                Known::Entry(None),
                new_session(0, 0),
            )
        },
        case(
            "without an absolute timeout, gw's cap: a day-old token never binds",
            Some(token(&id(0, 1), NOW - affinity::MAX_SESSION_MS)),
            Known::Entry(None),
            new_session(0, 0),
        ),
        case(
            "an expired entry: a new session",
            fresh_token(),
            Known::Entry(Some(entry(&id(0, 1), true, scope))),
            new_session(0, 0),
        ),
        case(
            "an entry of another scope is no binding",
            fresh_token(),
            Known::Entry(Some(entry(&id(0, 1), false, "HTTPRoute/d/other/rules/0"))),
            new_session(0, 0),
        ),
        case(
            "agreement before stickiness: an unconfirmable binding is not followed",
            fresh_token(),
            Known::Unreachable,
            new_session(0, 0),
        ),
        case(
            "the bound backend is gone: propose a replacement",
            fresh_token(),
            Known::Entry(Some(entry("d/s0:80|pod-gone|10.0.0.9:80", false, scope))),
            Decision::ProposeFailover {
                from: "d/s0:80|pod-gone|10.0.0.9:80".into(),
                to: id(0, 0),
            },
        ),
        Case {
            local_failover: true,
            ..case(
                "the null control follows its own pick",
                fresh_token(),
                Known::Entry(Some(entry("d/s0:80|pod-gone|10.0.0.9:80", false, scope))),
                Decision::Follow { entry: 0, endpoint: 0 },
            )
        },
        case(
            "after a failover, the committed entry is followed (another node's pick)",
            fresh_token(),
            Known::FailedOver(Some(entry(&id(1, 0), false, scope))),
            Decision::Follow { entry: 1, endpoint: 0 },
        ),
        case(
            "a committed replacement this node does not know yet",
            fresh_token(),
            Known::FailedOver(Some(entry("d/s9:80|pod-new|10.0.9.9:80", false, scope))),
            Decision::Unavailable(
                "the session's committed backend d/s9:80|pod-new|10.0.9.9:80 is not known to this node yet"
                    .into(),
            ),
        ),
        case(
            "expired while failing over: a new session",
            fresh_token(),
            Known::FailedOver(None),
            new_session(0, 0),
        ),
        case(
            "a failover that could not be committed: a new session",
            fresh_token(),
            Known::FailoverFailed,
            new_session(0, 0),
        ),
        Case {
            backends: vec![(0, 1), (3, 0)],
            ..case(
                "no weighted backend with a ready endpoint: route as without persistence",
                None,
                Known::Entry(None),
                Decision::Fallback,
            )
        },
        Case {
            backends: vec![(1, 0), (0, 1)],
            ..case(
                "the bound backend is gone and no weighted one is left: route as without persistence",
                fresh_token(),
                Known::Entry(Some(entry(&id(0, 1), false, scope))),
                Decision::Fallback,
            )
        },
        Case {
            refused: id(0, 1),
            ..case(
                "the bound backend refused this request: propose a replacement",
                fresh_token(),
                Known::Entry(Some(entry(&id(0, 1), false, scope))),
                Decision::ProposeFailover {
                    from: id(0, 1),
                    to: id(0, 0),
                },
            )
        },
        Case {
            refused: id(0, 1),
            ..case(
                "a token without an entry yet whose backend refused: propose a replacement",
                fresh_token(),
                Known::Entry(None),
                Decision::ProposeFailover {
                    from: id(0, 1),
                    to: id(0, 0),
                },
            )
        },
        Case {
            refused: id(0, 0),
            backends: vec![(1, 1), (1, 1)],
            ..case(
                "a new session whose backend refused: a new session on another",
                None,
                Known::Entry(None),
                new_session(1, 0),
            )
        },
        Case {
            refused: id(0, 0),
            backends: vec![(1, 1), (1, 1)],
            ..case(
                "refused, and no failover could be committed (a region cut off): anew elsewhere",
                Some(token(&id(0, 0), NOW - 1_000)),
                Known::FailoverFailed,
                new_session(1, 0),
            )
        },
        Case {
            refused: id(0, 0),
            backends: vec![(1, 1)],
            ..case(
                "a lone backend that refused has no replacement: route as without persistence",
                Some(token(&id(0, 0), NOW - 1_000)),
                Known::Entry(Some(entry(&id(0, 0), false, scope))),
                Decision::Fallback,
            )
        },
    ];
    for c in cases {
        let cfg = config(c.idle_timeout_ms, c.absolute_timeout_ms);
        let b = backends(&c.backends);
        let inputs = Inputs {
            cfg: &cfg,
            token: c.token.as_ref(),
            known: &c.known,
            backends: &b,
            now_ms: NOW,
            local_failover: c.local_failover,
            refused: &c.refused,
        };
        assert_eq!(decide(&inputs, &mut draws(&[0])), c.want, "{}", c.name);
    }
}

#[test]
fn new_sessions_go_only_to_weighted_backends_with_ready_endpoints() {
    let b = backends(&[(0, 1), (5, 0), (1, 1)]);
    for d in [0, u64::MAX / 3, u64::MAX] {
        assert_eq!(fresh(&b, "", NOW, &mut draws(&[d])), Some((2, 0)));
    }
    // A failed backend is not its own replacement.
    let two = backends(&[(1, 1), (1, 1)]);
    for d in [0, u64::MAX] {
        assert_eq!(fresh(&two, &id(0, 0), NOW, &mut draws(&[d])), Some((1, 0)));
    }
    // Within a backend, the draw chooses the endpoint.
    let one = backends(&[(1, 3)]);
    assert_eq!(fresh(&one, "", NOW, &mut draws(&[0, 2])), Some((0, 2)));
    assert_eq!(fresh(&one, "", NOW, &mut draws(&[0, 4])), Some((0, 1)));
    assert_eq!(
        fresh(&one, &id(0, 2), NOW, &mut draws(&[0, 2])),
        Some((0, 0)),
        "the failed endpoint is skipped"
    );
}

#[test]
fn new_sessions_avoid_backends_whose_endpoints_are_out_of_rotation_while_others_can_take_them() {
    let b = backends(&[(1, 1), (1, 2), (1, 1)]);
    let BackendTarget::Upstream(u0) = &b.entries[0].target else {
        unreachable!()
    };
    let BackendTarget::Upstream(u1) = &b.entries[1].target else {
        unreachable!()
    };
    u0.connect_failed(0, NOW);
    u1.connect_failed(0, NOW);
    // s0 is out; s1 still has an endpoint in rotation, and the draw goes over s1 and s2 alone.
    assert_eq!(fresh(&b, "", NOW, &mut draws(&[0, 0])), Some((1, 1)));
    assert_eq!(fresh(&b, "", NOW, &mut draws(&[u64::MAX])), Some((2, 0)));
    // Every backend out of rotation: the weighted choice over all of them, as before.
    let one = backends(&[(1, 1), (1, 1)]);
    for (i, e) in one.entries.iter().enumerate() {
        let BackendTarget::Upstream(u) = &e.target else {
            unreachable!()
        };
        u.connect_failed(0, NOW);
        assert!(u.health(0).ejected(NOW), "s{i}");
    }
    assert_eq!(fresh(&one, "", NOW, &mut draws(&[0])), Some((0, 0)));
    assert_eq!(fresh(&one, "", NOW, &mut draws(&[u64::MAX])), Some((1, 0)));
}

#[test]
fn a_binding_to_an_endpoint_the_health_check_found_down_fails_over_or_starts_anew() {
    let placement = Placement {
        health: Arc::new(crate::table::Health::with_checks()),
        ..Placement::default()
    };
    let b = backends_in(&[(1, 1), (1, 1)], &placement);
    let s0: std::net::SocketAddr = "10.0.0.0:80".parse().unwrap();
    placement
        .health
        .checked(&[(s0, placement.health.of(s0), true)]);
    let cfg = config(None, None);
    let t = token(&id(1, 0), NOW);
    let decide_with = |known: Known| {
        let inputs = Inputs {
            cfg: &cfg,
            token: Some(&t),
            known: &known,
            backends: &b,
            now_ms: NOW,
            local_failover: false,
            refused: "",
        };
        decide(&inputs, &mut draws(&[0]))
    };
    let on_s0 = || entry(&id(0, 0), false, "HTTPRoute/d/r/rules/0");
    // Bound to s0 (down): as if it had refused, a failover to s1 is proposed.
    assert_eq!(
        decide_with(Known::Entry(Some(on_s0()))),
        Decision::ProposeFailover {
            from: id(0, 0),
            to: id(1, 0)
        }
    );
    // A committed replacement on s0 (down): a new session on s1.
    assert!(matches!(
        decide_with(Known::FailedOver(Some(on_s0()))),
        Decision::New {
            entry: 1,
            endpoint: 0,
            ..
        }
    ));
}

#[test]
fn bound_backends_are_found_whatever_their_weight() {
    let b = backends(&[(1, 2), (0, 1)]);
    assert_eq!(find(&b, &id(1, 0)), Some((1, 0)));
    assert_eq!(find(&b, &id(0, 1)), Some((0, 1)));
    // The same address behind another pod is another backend.
    assert_eq!(find(&b, "d/s0:80|pod-new|10.0.0.1:80"), None);
}
