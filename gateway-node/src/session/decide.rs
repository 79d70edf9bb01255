//! The session decision, pure: given a rule's session persistence, the request's (verified) token, what
//! is known of the session's committed entry, the rule's backends, the time and a source of randomness,
//! where does the request go? No I/O, no clock, no RNG of its own: the runtime (`super::Sessions`)
//! carries out the store calls a decision asks for (`Confirm`, `ProposeFailover`) and decides again with
//! the answer. The rules, from DESIGN.md's session semantics:
//!
//! - a token whose session is bound goes to its backend, whatever that backend's weight (stickiness);
//! - a binding this node cannot confirm as current is not followed (agreement before stickiness);
//! - when the bound backend is gone, exactly one replacement is committed (first writer wins) and
//!   every node follows the committed one;
//! - a token whose session has no entry yet binds on its own while it is inside its window (younger
//!   than its idle and absolute timeouts): the store creates its entry when it comes back, and refuses
//!   to past that window;
//! - an expired or unknown session starts a new session;
//! - a backend that refuses a request's connection is gone for that request: its session fails over
//!   (or, where no failover can be committed, starts anew elsewhere) before the request is sent again.

use crate::table::{BackendEntry, BackendTarget, Backends, SessionConfig};
use gw_model::affinity::token::Token;
use gw_model::affinity::{self, SessionEntry};

/// What this node knows of a session's committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Its view of the table may be stale: the entry must be read from the store first.
    Unconfirmed,
    /// The entry as committed (from a fresh view or a read); `None`: there is none.
    Entry(Option<SessionEntry>),
    /// The store could not be asked.
    Unreachable,
    /// This node proposed a failover; the committed entry, whoever won (`None`: expired meanwhile).
    FailedOver(Option<SessionEntry>),
    /// A failover could not be committed.
    FailoverFailed,
}

/// Everything one decision depends on.
pub struct Inputs<'a> {
    pub cfg: &'a SessionConfig,
    /// The request's token, verified and of this scope.
    pub token: Option<&'a Token>,
    pub known: &'a Known,
    pub backends: &'a Backends,
    /// The wall clock, ms since the epoch.
    pub now_ms: u64,
    /// The null control of the fault-injection suite: follow this node's own replacement instead of
    /// proposing a failover.
    pub local_failover: bool,
    /// The backend (identity) that has just refused this very request's connection (empty: none):
    /// gone, as far as this request is concerned.
    pub refused: &'a str,
}

/// Where a request with session persistence goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The session's binding: `backends.entries[entry]`, endpoint `endpoint`.
    Follow { entry: usize, endpoint: usize },
    /// A new session on this backend; `token` is to be issued to the client.
    New {
        entry: usize,
        endpoint: usize,
        token: Token,
    },
    /// Read the session's entry from the store, then decide again (`Known::Entry` or `Unreachable`).
    Confirm,
    /// The bound backend `from` is gone: propose `to` in its place, then decide again with the
    /// committed entry (`Known::FailedOver` or `FailoverFailed`).
    ProposeFailover { from: String, to: String },
    /// Nothing to choose from: route as without persistence.
    Fallback,
    /// The session's committed backend is not known to this node yet.
    Unavailable(String),
}

pub fn decide(i: &Inputs<'_>, draw: &mut impl FnMut() -> u64) -> Decision {
    if let Some(t) = i.token {
        match bound_backend(i, t) {
            Bound::Ask(d) => return d,
            Bound::To(backend) => {
                if backend != i.refused
                    && let Some((entry, endpoint)) = find(i.backends, &backend)
                    && !found_down(i.backends, entry, endpoint)
                {
                    return Decision::Follow { entry, endpoint };
                }
                let Some((entry, endpoint)) = fresh(i.backends, &backend, i.now_ms, draw) else {
                    return Decision::Fallback;
                };
                if i.local_failover {
                    return Decision::Follow { entry, endpoint };
                }
                return Decision::ProposeFailover {
                    from: backend,
                    to: identity(i.backends, entry, endpoint),
                };
            }
            Bound::Committed(e) => {
                return match find(i.backends, &e.spec.backend) {
                    // A committed replacement this node cannot reach: a new session rather than a
                    // request sure to fail.
                    Some((entry, endpoint)) if found_down(i.backends, entry, endpoint) => {
                        match fresh(i.backends, &e.spec.backend, i.now_ms, draw) {
                            Some((entry, endpoint)) => new_session(i, entry, endpoint, draw),
                            None => Decision::Fallback,
                        }
                    }
                    Some((entry, endpoint)) => Decision::Follow { entry, endpoint },
                    None => Decision::Unavailable(format!(
                        "the session's committed backend {} is not known to this node yet",
                        e.spec.backend
                    )),
                };
            }
            Bound::Nothing => {}
        }
    }
    let Some((entry, endpoint)) = fresh(i.backends, i.refused, i.now_ms, draw) else {
        return Decision::Fallback;
    };
    new_session(i, entry, endpoint, draw)
}

/// A new session on endpoint `endpoint` of `backends.entries[entry]`.
fn new_session(
    i: &Inputs<'_>,
    entry: usize,
    endpoint: usize,
    draw: &mut impl FnMut() -> u64,
) -> Decision {
    Decision::New {
        entry,
        endpoint,
        token: Token {
            session: format!("{:016x}{:016x}", draw(), draw()),
            scope: i.cfg.scope.clone(),
            backend: identity(i.backends, entry, endpoint),
            issued_ms: i.now_ms,
        },
    }
}

/// Whether the health check found this endpoint down: gone, for a session bound to it, as if it had
/// refused the request.
fn found_down(backends: &Backends, entry: usize, endpoint: usize) -> bool {
    match &backends.entries[entry].target {
        BackendTarget::Upstream(u) => u.health(endpoint).is_down(),
        BackendTarget::Invalid(_) => false,
    }
}

/// What the token's session is bound to, as far as this node knows.
enum Bound {
    /// Bound to this backend (it may be gone).
    To(String),
    /// The committed entry after a failover this node proposed: follow it as it is.
    Committed(SessionEntry),
    /// No binding to follow: a new session.
    Nothing,
    /// Ask the store first.
    Ask(Decision),
}

fn bound_backend(i: &Inputs<'_>, t: &Token) -> Bound {
    match i.known {
        Known::Unconfirmed => Bound::Ask(Decision::Confirm),
        // The binding cannot be confirmed: another node may have moved the session meanwhile.
        Known::Unreachable | Known::FailoverFailed | Known::FailedOver(None) => Bound::Nothing,
        Known::FailedOver(Some(e)) => Bound::Committed(e.clone()),
        Known::Entry(Some(e)) if e.expired() || e.spec.scope != t.scope => Bound::Nothing,
        Known::Entry(Some(e)) => Bound::To(e.spec.backend.clone()),
        Known::Entry(None) => {
            let window = affinity::window_ms(i.cfg.idle_timeout_ms, i.cfg.absolute_timeout_ms);
            if i.now_ms.saturating_sub(t.issued_ms) < window {
                Bound::To(t.backend.clone())
            } else {
                Bound::Nothing
            }
        }
    }
}

/// The entry and endpoint of the backend with this identity, whatever its weight.
pub fn find(backends: &Backends, identity: &str) -> Option<(usize, usize)> {
    backends
        .entries
        .iter()
        .enumerate()
        .find_map(|(i, e)| match &e.target {
            BackendTarget::Upstream(u) => u.find(identity).map(|p| (i, p)),
            BackendTarget::Invalid(_) => None,
        })
}

/// The rule's weighted choice among the backends with a ready endpoint, avoiding the endpoint
/// `exclude` (`None`: there is nothing else to choose). Backends with an endpoint in rotation (not
/// ejected, not found down by the health check) come first: a new session is not bound to a backend
/// known not to answer while another can take it.
fn fresh(
    backends: &Backends,
    exclude: &str,
    now_ms: u64,
    draw: &mut impl FnMut() -> u64,
) -> Option<(usize, usize)> {
    let ready = |e: &BackendEntry, in_rotation: bool| match &e.target {
        BackendTarget::Upstream(u) => u
            .identities
            .iter()
            .enumerate()
            .any(|(k, id)| id != exclude && !(in_rotation && u.health(k).ejected(now_ms))),
        BackendTarget::Invalid(_) => false,
    };
    let d = draw();
    let entry = backends
        .choose_where(d, |e| ready(e, true))
        .or_else(|| backends.choose_where(d, |e| ready(e, false)))?;
    let BackendTarget::Upstream(u) = &backends.entries[entry].target else {
        return None;
    };
    let endpoint = u.pick_at_random(draw, now_ms, u.find(exclude))?;
    Some((entry, endpoint))
}

pub fn identity(backends: &Backends, entry: usize, endpoint: usize) -> String {
    match &backends.entries[entry].target {
        BackendTarget::Upstream(u) => u.identities[endpoint].clone(),
        BackendTarget::Invalid(_) => String::new(),
    }
}

#[cfg(test)]
mod tests;
