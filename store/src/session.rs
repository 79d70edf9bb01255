//! The state machine's side of the replicated session affinity table: what a touch, a failover and an
//! expiry do to one session entry, decided at committed time. Pure, like the rest of the state.
//!
//! Activity on a live entry (a touch that changes nothing but the time it was last active) is
//! recorded beside the entry, not in it: no new object, no watch event, no revision. Watchers (every
//! gateway node) only need what binds — the backend, failovers, expiry —, and a touch per session and
//! batch would otherwise put a whole object into the watch history each time. The entry's
//! `status.lastActiveMs` is the activity as of its last write (creation, failover, expiry); expiry is
//! decided on the latest activity, and an entry written for any other reason carries it.

use crate::state::resource_version;
use crate::types::{Action, Op};
use gw_model::affinity::{FailoverRecord, SessionEntry, SessionSpec, SessionStatus};
use gw_model::meta::rfc3339;
use serde_json::{Value, json};

/// What one session operation does.
#[derive(Debug, PartialEq)]
pub enum Planned {
    /// The entry after the operation (created or changed).
    Put(Action, Value),
    /// The entry is purged; the object as it was.
    Delete(Value),
    /// The entry is live and unchanged but for its latest activity, now `at` (kept beside it).
    Active(u64),
    Nothing(Action),
}

/// The entry in `obj` with its latest activity: `active`, recorded beside it, if later.
pub fn entry(obj: &Value, active: Option<u64>) -> Option<SessionEntry> {
    let mut e = SessionEntry::from_object(obj)?;
    e.status.last_active_ms = e.status.last_active_ms.max(active.unwrap_or(0));
    Some(e)
}

/// What the state keeps of each session entry beside its object: enough to decide activity, and
/// when the sweeper must look at the entry, without reading the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// The entry's spec without scope and backend: its issue time and timeouts.
    timing: SessionSpec,
    /// The entry's status without failovers, its latest activity included.
    status: SessionStatus,
    /// The entry object's resourceVersion.
    resource_version: u64,
    /// The latest activity the entry object records (`status.last_active_ms` may be later: activity
    /// recorded beside it since).
    recorded_active_ms: u64,
}

impl Tracked {
    pub fn of(e: &SessionEntry, resource_version: u64) -> Tracked {
        Tracked {
            resource_version,
            recorded_active_ms: e.status.last_active_ms,
            timing: SessionSpec {
                scope: String::new(),
                backend: String::new(),
                issued_ms: e.spec.issued_ms,
                idle_timeout_ms: e.spec.idle_timeout_ms,
                absolute_timeout_ms: e.spec.absolute_timeout_ms,
            },
            status: SessionStatus {
                created_ms: e.status.created_ms,
                last_active_ms: e.status.last_active_ms,
                expired_ms: e.status.expired_ms,
                failovers: Vec::new(),
            },
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn last_active_ms(&self) -> u64 {
        self.status.last_active_ms
    }

    /// Records activity at `at`.
    pub fn active(&mut self, at: u64) {
        self.status.last_active_ms = at;
    }

    /// The latest activity, if later than the entry object records: committed state kept beside it.
    pub fn unrecorded_activity(&self) -> Option<u64> {
        (self.status.last_active_ms > self.recorded_active_ms).then_some(self.status.last_active_ms)
    }

    /// When the sweeper next has something to do with the entry.
    pub fn sweep_at(&self) -> u64 {
        self.status.sweep_at(&self.timing)
    }

    /// What activity at `now` does: `None` when the entry is due, which writes its expiry.
    fn touched(&self, now: u64) -> Option<Planned> {
        if self.status.expired_ms.is_some() {
            return Some(Planned::Nothing(Action::Skipped));
        }
        if self.status.due(&self.timing, now) {
            return None;
        }
        Some(if self.status.last_active_ms >= now {
            Planned::Nothing(Action::Unchanged)
        } else {
            Planned::Active(now)
        })
    }
}

/// What `op` does if it is activity (a touch) on an entry tracked as `tracked`, decided on the record
/// alone; `None` for any other operation, or when the entry is due (the touch writes its expiry,
/// which `plan` makes from the object).
pub fn activity(op: &Op, tracked: &Tracked, now: u64) -> Option<Planned> {
    match op {
        Op::SessionTouch { .. } | Op::SessionActive { .. } => tracked.touched(now),
        _ => None,
    }
}

/// Plans `op` (a session operation) against the stored entry `old`, as the state tracks it
/// (`tracked`, its latest activity included), at committed time `now`.
pub fn plan(
    op: &Op,
    old: Option<&Value>,
    tracked: Option<&Tracked>,
    now: u64,
    new_rev: u64,
) -> Planned {
    let active = tracked.map(Tracked::last_active_ms);
    // Activity is decided on what is tracked (read from the object if it is not); only an expiry
    // reads the object.
    let read;
    let record = match tracked {
        Some(t) => Some(t),
        None => {
            read = old.and_then(|o| entry(o, None).map(|e| Tracked::of(&e, resource_version(o))));
            read.as_ref()
        }
    };
    if let Some(planned) = record.and_then(|t| activity(op, t, now)) {
        return planned;
    }
    let entry = old.and_then(|o| entry(o, active));
    match (op, entry) {
        (Op::SessionTouch { key, spec, uid }, None) => create(
            key,
            spec.clone(),
            SessionStatus::new(now),
            uid,
            now,
            new_rev,
        ),
        (Op::SessionActive { .. }, None) => Planned::Nothing(Action::NotFound),
        // Due: `Tracked::touched` decided every other case.
        (Op::SessionTouch { .. } | Op::SessionActive { .. }, Some(mut e)) => {
            e.status.expired_ms = Some(now);
            update(old, &e, false, new_rev)
        }
        (
            Op::SessionFailover {
                key,
                from,
                spec,
                uid,
            },
            None,
        ) => {
            let mut status = SessionStatus::new(now);
            status.failovers.push(FailoverRecord {
                from: from.clone(),
                to: spec.backend.clone(),
                at_ms: now,
            });
            create(key, spec.clone(), status, uid, now, new_rev)
        }
        (Op::SessionFailover { from, spec, .. }, Some(mut e)) => {
            if e.expired() {
                return Planned::Nothing(Action::Skipped);
            }
            if e.status.due(&e.spec, now) {
                e.status.expired_ms = Some(now);
                return update(old, &e, false, new_rev);
            }
            if e.spec.backend != *from {
                // Someone else's replacement committed first: it stands.
                return Planned::Nothing(Action::Unchanged);
            }
            e.status.failovers.push(FailoverRecord {
                from: from.clone(),
                to: spec.backend.clone(),
                at_ms: now,
            });
            e.spec.backend = spec.backend.clone();
            e.status.last_active_ms = now;
            update(old, &e, true, new_rev)
        }
        (Op::SessionExpire { .. }, None) => Planned::Nothing(Action::NotFound),
        (Op::SessionExpire { evict, .. }, Some(mut e)) => {
            if e.status.purgeable(&e.spec, now) {
                let mut obj = old.cloned().unwrap_or_default();
                obj["metadata"]["resourceVersion"] = json!(new_rev.to_string());
                return Planned::Delete(obj);
            }
            if e.expired() || !(*evict || e.status.due(&e.spec, now)) {
                return Planned::Nothing(Action::Skipped);
            }
            e.status.expired_ms = Some(now);
            update(old, &e, false, new_rev)
        }
        _ => unreachable!("not a session operation: {op:?}"),
    }
}

fn create(
    key: &gw_model::ObjectKey,
    spec: SessionSpec,
    status: SessionStatus,
    uid: &str,
    now: u64,
    new_rev: u64,
) -> Planned {
    // A token past its window may belong to a session that expired and was purged: it must not bring
    // it back.
    if now > spec.issued_ms.saturating_add(spec.window_ms()) {
        return Planned::Nothing(Action::Skipped);
    }
    let e = SessionEntry {
        namespace: key.namespace.clone(),
        id: key.name.clone(),
        spec,
        status,
    };
    let mut obj = e.to_object();
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(uid);
    meta["resourceVersion"] = json!(new_rev.to_string());
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!(rfc3339(now));
    Planned::Put(Action::Created, obj)
}

fn update(old: Option<&Value>, e: &SessionEntry, rebound: bool, new_rev: u64) -> Planned {
    let mut obj = e.to_object();
    let old_meta = old.map(|o| o["metadata"].clone()).unwrap_or_default();
    obj["metadata"] = old_meta;
    obj["metadata"]["resourceVersion"] = json!(new_rev.to_string());
    if rebound {
        let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        obj["metadata"]["generation"] = json!(generation);
    }
    Planned::Put(Action::Configured, obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_model::affinity::{CLOCK_SKEW_MS, key};

    fn spec(backend: &str, issued_ms: u64) -> SessionSpec {
        SessionSpec {
            scope: "HTTPRoute/d/r/rules/0".into(),
            backend: backend.into(),
            issued_ms,
            idle_timeout_ms: Some(2_000),
            absolute_timeout_ms: None,
        }
    }

    fn touch(backend: &str, issued_ms: u64) -> Op {
        Op::SessionTouch {
            key: key("d", "s1"),
            spec: spec(backend, issued_ms),
            uid: "u".into(),
        }
    }

    fn failover(from: &str, to: &str) -> Op {
        Op::SessionFailover {
            key: key("d", "s1"),
            from: from.into(),
            spec: spec(to, 1_000),
            uid: "u".into(),
        }
    }

    /// Planned with nothing tracked beside the entry (read from the object).
    fn at(op: &Op, old: Option<&Value>, now: u64, new_rev: u64) -> Planned {
        plan(op, old, None, now, new_rev)
    }

    /// The entry in `obj` as tracked, last active at `active`.
    fn tracked(obj: &Value, active: u64) -> Tracked {
        let mut t = Tracked::of(&SessionEntry::from_object(obj).unwrap(), 1);
        t.active(active);
        t
    }

    fn put(p: Planned) -> Value {
        match p {
            Planned::Put(_, v) => v,
            other => panic!("expected a put, got {other:?}"),
        }
    }

    fn backend(v: &Value) -> &str {
        v["spec"]["backend"].as_str().unwrap()
    }

    #[test]
    fn touch_creates_then_records_activity_beside_the_entry() {
        let v = put(at(&touch("a", 1_000), None, 1_100, 5));
        assert_eq!(v["status"]["createdMs"], 1_100);
        assert_eq!(v["metadata"]["resourceVersion"], "5");
        assert_eq!(v["metadata"]["uid"], "u");
        // Activity on a live entry is recorded beside it: no new object.
        assert_eq!(
            at(&touch("zzz", 1_000), Some(&v), 2_000, 6),
            Planned::Active(2_000)
        );
        let t = tracked(&v, 2_000);
        assert_eq!(
            plan(&touch("a", 1_000), Some(&v), Some(&t), 2_000, 7),
            Planned::Nothing(Action::Unchanged)
        );
        // The activity beside it keeps it live past the idle timeout counted from its creation, and
        // decides without the object ...
        assert_eq!(
            plan(&touch("a", 1_000), None, Some(&t), 3_500, 7),
            Planned::Active(3_500)
        );
        let active = Op::SessionActive {
            key: key("d", "s1"),
        };
        assert_eq!(
            plan(&active, None, Some(&t), 3_500, 7),
            Planned::Active(3_500)
        );
        assert_eq!(
            at(&active, None, 3_500, 7),
            Planned::Nothing(Action::NotFound)
        );
        // ... and an entry written for another reason carries it; a touch never rebinds.
        let moved = put(plan(
            &failover("a", "b"),
            Some(&v),
            Some(&tracked(&v, 3_500)),
            3_600,
            7,
        ));
        assert_eq!(moved["status"]["lastActiveMs"], 3_600);
        let late = put(plan(&touch("b", 1_000), Some(&v), Some(&t), 4_001, 8));
        assert_eq!(late["status"]["lastActiveMs"], 2_000);
        assert_eq!(late["status"]["expiredMs"], 4_001);
        assert_eq!(backend(&late), "a");
    }

    #[test]
    fn a_touch_after_the_idle_timeout_expires_instead_of_reviving() {
        let v = put(at(&touch("a", 1_000), None, 1_000, 5));
        let late = put(at(&touch("a", 1_000), Some(&v), 3_001, 6));
        assert_eq!(late["status"]["expiredMs"], 3_001);
        assert_eq!(
            at(&touch("a", 1_000), Some(&late), 3_002, 7),
            Planned::Nothing(Action::Skipped)
        );
    }

    #[test]
    fn old_tokens_do_not_create_entries() {
        assert_eq!(
            at(&touch("a", 1_000), None, 1_000 + 2_000 + 1, 5),
            Planned::Nothing(Action::Skipped)
        );
    }

    #[test]
    fn failover_is_first_writer_wins() {
        let v = put(at(&touch("a", 1_000), None, 1_000, 5));
        let first = put(at(&failover("a", "b"), Some(&v), 1_500, 6));
        assert_eq!(backend(&first), "b");
        assert_eq!(first["metadata"]["generation"], 2);
        assert_eq!(first["status"]["failovers"][0]["from"], "a");
        // A second node saw the same failure and proposed its own pick: it loses, and follows "b".
        assert_eq!(
            at(&failover("a", "c"), Some(&first), 1_600, 7),
            Planned::Nothing(Action::Unchanged)
        );
        // No entry yet (the session's first touch is still in a batch): the failover creates it.
        let created = put(at(&failover("a", "c"), None, 1_600, 7));
        assert_eq!(backend(&created), "c");
    }

    #[test]
    fn expiry_marks_then_purges_once_the_token_is_past_its_window() {
        let v = put(at(&touch("a", 1_000), None, 1_000, 5));
        let expire = |evict| Op::SessionExpire {
            key: key("d", "s1"),
            evict,
        };
        assert_eq!(
            at(&expire(false), Some(&v), 2_000, 6),
            Planned::Nothing(Action::Skipped)
        );
        // Idle past its timeout: marked, then purged once its token is past its window (and the
        // allowance for nodes' clocks).
        let expired = put(at(&expire(false), Some(&v), 3_001, 6));
        assert_eq!(expired["status"]["expiredMs"], 3_001);
        let purge = 1_000 + 2_000 + CLOCK_SKEW_MS;
        assert_eq!(
            at(&expire(false), Some(&expired), purge - 1, 7),
            Planned::Nothing(Action::Skipped)
        );
        match at(&expire(false), Some(&expired), purge, 7) {
            Planned::Delete(obj) => assert_eq!(obj["metadata"]["resourceVersion"], "7"),
            other => panic!("expected a purge, got {other:?}"),
        }
        // Evicted early: kept, expired, while its token could still bring it back.
        let evicted = put(at(&expire(true), Some(&v), 1_500, 6));
        assert_eq!(
            at(&expire(false), Some(&evicted), purge - 1, 7),
            Planned::Nothing(Action::Skipped)
        );
        assert!(matches!(
            at(&expire(false), Some(&evicted), purge, 7),
            Planned::Delete(_)
        ));
        assert_eq!(
            at(&expire(false), None, 9_000, 8),
            Planned::Nothing(Action::NotFound)
        );
    }

    #[test]
    fn eviction_expires_a_live_session_at_once() {
        let v = put(at(&touch("a", 1_000), None, 1_000, 5));
        let evict = Op::SessionExpire {
            key: key("d", "s1"),
            evict: true,
        };
        let evicted = put(at(&evict, Some(&v), 1_001, 6));
        assert_eq!(evicted["status"]["expiredMs"], 1_001);
        assert_eq!(
            at(&touch("a", 1_000), Some(&evicted), 1_002, 7),
            Planned::Nothing(Action::Skipped),
            "an evicted session is not revived by its token"
        );
    }
}
