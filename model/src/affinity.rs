//! The replicated session affinity table: one `SessionAffinity` object (group `gw.dev`) per session,
//! written only by the store's state machine on behalf of gateway nodes. The spec is the binding
//! (scope, backend, when the token was issued, the timeouts); the status is kept by committed time
//! (created, last activity, expiry, the committed failovers). Expiry rules live here so that the store
//! (which decides) and the nodes (which follow) read an entry the same way.

pub mod token;

use crate::kinds::{GW_GROUP, ObjectKey, api_version};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const KIND: &str = "SessionAffinity";
pub const VERSION: &str = "v1alpha1";

/// How long any session lasts at most when its rule sets no `absoluteTimeout`: gw's cap, so that no
/// session — nor its entry — lives for ever.
pub const MAX_SESSION_MS: u64 = 24 * 3_600_000;

/// How far a gateway node's clock may be behind the store leader's without a purged session being
/// brought back: an expired entry is kept this much longer than its token's window, since a node
/// decides a token's age by its own clock.
pub const CLOCK_SKEW_MS: u64 = 5_000;

/// How often a gateway node sends the session activity it has gathered.
pub const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Sessions per Touch call a gateway node sends: each call is one Raft entry, which a config write
/// arriving meanwhile waits behind (its sync, its apply). Small entries keep that wait short: under
/// 10 000 touches/s, config applies' p99 was 12–17 ms with 2 000 per call (entries went to sled's
/// blob files), 5–6 ms with 1 000, about 3 ms with 200 and about 2 ms with 100 or 50
/// (`gwadm bench sessions`, bench/results/sessions-20261201.md); 100 costs a node one call per
/// 100 sessions active in a batch.
pub const TOUCHES_PER_CALL: usize = 100;

/// The binding a session token carries, and its timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// What the session is scoped to: `HTTPRoute/ns/name/rules/N` or `BackendLBPolicy/ns/name`.
    pub scope: String,
    /// The stable identity of the backend endpoint (see gw-node's `Upstream`).
    pub backend: String,
    /// When the token was issued (the issuing node's clock, ms since the epoch).
    pub issued_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout_ms: Option<u64>,
}

/// One committed failover of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub from: String,
    pub to: String,
    pub at_ms: u64,
}

/// What the cluster knows of a session, all by committed time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub created_ms: u64,
    pub last_active_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failovers: Vec<FailoverRecord>,
}

impl SessionSpec {
    /// The absolute timeout in force (the rule's, else gw's cap).
    pub fn absolute_ms(&self) -> u64 {
        self.absolute_timeout_ms.unwrap_or(MAX_SESSION_MS)
    }

    /// How long after its issue a token binds on its own, without an entry: until its session would
    /// have passed its idle timeout unused, or its absolute timeout. The store creates no entry for a
    /// token older than this, and purges an expired entry once its token is older than this, so a
    /// purged session can never be brought back by its old token.
    pub fn window_ms(&self) -> u64 {
        window_ms(self.idle_timeout_ms, self.absolute_timeout_ms)
    }
}

/// The window (see `SessionSpec::window_ms`) of a session with these timeouts.
pub fn window_ms(idle_timeout_ms: Option<u64>, absolute_timeout_ms: Option<u64>) -> u64 {
    let absolute = absolute_timeout_ms.unwrap_or(MAX_SESSION_MS);
    idle_timeout_ms.map_or(absolute, |i| i.min(absolute))
}

impl SessionStatus {
    /// A fresh session recorded at committed time `now`.
    pub fn new(now: u64) -> SessionStatus {
        SessionStatus {
            created_ms: now,
            last_active_ms: now,
            ..SessionStatus::default()
        }
    }

    /// When a live session passes its idle timeout (from its last recorded activity) or its absolute
    /// timeout (from its token's issue).
    fn due_at(&self, spec: &SessionSpec) -> u64 {
        let absolute = spec
            .issued_ms
            .saturating_add(spec.absolute_ms())
            .saturating_add(1);
        spec.idle_timeout_ms.map_or(absolute, |t| {
            absolute.min(self.last_active_ms.saturating_add(t).saturating_add(1))
        })
    }

    /// Whether a live session has passed its idle or absolute timeout at `now`.
    pub fn due(&self, spec: &SessionSpec, now: u64) -> bool {
        now >= self.due_at(spec)
    }

    /// Whether an expired entry may be deleted: its token can no longer create it again, nor bind on
    /// its own on any node whose clock is within `CLOCK_SKEW_MS` of the leader's.
    pub fn purgeable(&self, spec: &SessionSpec, now: u64) -> bool {
        self.expired_ms.is_some() && now >= purge_at(spec)
    }

    /// When the sweeper next has something to do with this entry: expire it, or purge it.
    pub fn sweep_at(&self, spec: &SessionSpec) -> u64 {
        match self.expired_ms {
            Some(_) => purge_at(spec),
            None => self.due_at(spec),
        }
    }
}

fn purge_at(spec: &SessionSpec) -> u64 {
    spec.issued_ms
        .saturating_add(spec.window_ms())
        .saturating_add(CLOCK_SKEW_MS)
}

/// A session entry as read from a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    pub namespace: String,
    pub id: String,
    pub spec: SessionSpec,
    pub status: SessionStatus,
}

impl SessionEntry {
    pub fn from_object(obj: &Value) -> Option<SessionEntry> {
        Some(SessionEntry {
            namespace: obj["metadata"]["namespace"].as_str()?.to_string(),
            id: obj["metadata"]["name"].as_str()?.to_string(),
            // Deserialized in place (no copy of the JSON): the sweeper reads every entry often.
            spec: SessionSpec::deserialize(obj.get("spec")?).ok()?,
            status: match obj.get("status") {
                Some(s) => SessionStatus::deserialize(s).ok()?,
                None => SessionStatus::default(),
            },
        })
    }

    /// The object (without store metadata) holding this entry.
    pub fn to_object(&self) -> Value {
        json!({
            "apiVersion": api_version(GW_GROUP, VERSION),
            "kind": KIND,
            "metadata": {"name": self.id, "namespace": self.namespace},
            "spec": self.spec,
            "status": self.status,
        })
    }

    pub fn key(&self) -> ObjectKey {
        key(&self.namespace, &self.id)
    }

    pub fn expired(&self) -> bool {
        self.status.expired_ms.is_some()
    }
}

/// The key of session `id` in `namespace`.
pub fn key(namespace: &str, id: &str) -> ObjectKey {
    ObjectKey::new(GW_GROUP, KIND, namespace, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(idle: Option<u64>, absolute: Option<u64>) -> SessionSpec {
        SessionSpec {
            scope: "HTTPRoute/d/r/rules/0".into(),
            backend: "b".into(),
            issued_ms: 1_000,
            idle_timeout_ms: idle,
            absolute_timeout_ms: absolute,
        }
    }

    #[test]
    fn idle_and_absolute_timeouts_by_committed_time() {
        let mut st = SessionStatus::new(1_000);
        let s = spec(Some(2_000), Some(10_000));
        assert!(
            !st.due(&s, 3_000),
            "idle exactly the timeout is not yet expired"
        );
        assert!(st.due(&s, 3_001));
        st.last_active_ms = 9_000;
        assert!(!st.due(&s, 11_000));
        assert!(
            st.due(&s, 11_001),
            "the absolute timeout counts from the token's issue"
        );
        let forever = spec(None, None);
        assert!(!SessionStatus::new(1_000).due(&forever, 1_000 + MAX_SESSION_MS));
        assert!(
            SessionStatus::new(1_000).due(&forever, 1_001 + MAX_SESSION_MS),
            "without an absolute timeout, gw's cap ends a session"
        );
    }

    #[test]
    fn the_window_is_how_long_a_token_binds_without_an_entry() {
        assert_eq!(spec(Some(2_000), Some(10_000)).window_ms(), 2_000);
        assert_eq!(spec(Some(20_000), Some(10_000)).window_ms(), 10_000);
        assert_eq!(spec(None, Some(10_000)).window_ms(), 10_000);
        assert_eq!(spec(None, None).window_ms(), MAX_SESSION_MS);
    }

    #[test]
    fn the_sweep_time_is_when_an_entry_becomes_due_or_purgeable() {
        let s = spec(Some(2_000), Some(10_000));
        let mut st = SessionStatus::new(1_000);
        assert_eq!(st.sweep_at(&s), 3_001);
        assert!(!st.due(&s, 3_000) && st.due(&s, 3_001));
        st.expired_ms = Some(3_001);
        assert_eq!(st.sweep_at(&s), 1_000 + 2_000 + CLOCK_SKEW_MS);
        assert!(st.purgeable(&s, 1_000 + 2_000 + CLOCK_SKEW_MS));
    }

    #[test]
    fn only_expired_entries_past_the_window_are_purgeable() {
        let s = spec(Some(5_000), None);
        let mut st = SessionStatus::new(1_000);
        let purge = 1_000 + 5_000 + CLOCK_SKEW_MS;
        assert!(!st.purgeable(&s, purge));
        st.expired_ms = Some(2_000);
        assert!(!st.purgeable(&s, purge - 1));
        assert!(st.purgeable(&s, purge));
    }

    #[test]
    fn entries_round_trip_through_objects() {
        let e = SessionEntry {
            namespace: "d".into(),
            id: "abc".into(),
            spec: spec(Some(5), None),
            status: SessionStatus::new(7),
        };
        assert_eq!(SessionEntry::from_object(&e.to_object()), Some(e.clone()));
        assert_eq!(
            e.key(),
            ObjectKey::new("gw.dev", "SessionAffinity", "d", "abc")
        );
    }
}
