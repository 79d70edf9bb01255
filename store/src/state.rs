//! The state machine's data and its deterministic apply: objects, the global revision, committed time,
//! and the bounded history of events that watches are served from. Pure: no I/O, no clock.

use crate::session;
use crate::types::{Action, Op, OpResult, Txn, TxnError, TxnOutcome};
use gw_model::ObjectKey;
use gw_model::affinity;
use gw_model::kinds::GW_GROUP;
use gw_model::kinds::default_status;
use gw_model::meta::rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One object's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub key: ObjectKey,
    /// After the change; for a delete, the last state with resourceVersion set to the delete's revision.
    pub object: Arc<Value>,
    /// Before the change (`None`: the change created it), so that the state at an earlier revision can
    /// be rebuilt (lists at one revision, page after page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Arc<Value>>,
}

/// Every change of one committed transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// The requested history is gone: the watcher needs a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} is compacted; history starts after revision {compact_revision}")]
pub struct Compacted {
    pub requested: u64,
    pub compact_revision: u64,
}

/// The config state at one revision.
#[derive(Debug, Clone)]
pub struct State {
    revision: u64,
    time_ms: u64,
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    /// Events of the revisions in `(compact_revision, revision]`, oldest first.
    history: VecDeque<Arc<RevisionEvents>>,
    compact_revision: u64,
    history_limit: usize,
    /// What is tracked of each session entry (see `session::Tracked`), derived from the objects
    /// (maintained as they change, rebuilt from a snapshot), and its latest activity: where that is
    /// later than the entry records, it is committed state (`crate::session`), in snapshots and the
    /// state hash, never in the watch. Hashed, not ordered: every touch looks its key up, and
    /// comparing keys (four strings, three the same for every entry) is an ordered map's cost.
    session_tracked: HashMap<Arc<ObjectKey>, Indexed>,
    /// Session entries by when the sweeper next has to look at them, each under its own slot
    /// number among entries due at the same time (compared faster than keys).
    session_sweeps: BTreeMap<(u64, u64), Arc<ObjectKey>>,
    /// The slot the next indexed session entry takes.
    next_slot: u64,
}

/// A session entry's record and its place in the sweep index.
#[derive(Debug, Clone)]
struct Indexed {
    tracked: session::Tracked,
    slot: u64,
}

impl Indexed {
    fn sweep(&self) -> (u64, u64) {
        (self.tracked.sweep_at(), self.slot)
    }
}

/// What one operation changes.
enum Change {
    Event(Event),
    /// A session's latest activity, recorded beside its entry (no event, no new revision).
    Activity(u64),
}

/// The serialized form of the state in a Raft snapshot: the objects and the watch history, so that a
/// member restarted from a snapshot (or one that installed it) still serves resumes within the window.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    revision: u64,
    time_ms: u64,
    compact_revision: u64,
    objects: Vec<Arc<Value>>,
    history: Vec<Arc<RevisionEvents>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    session_activity: Vec<(Arc<ObjectKey>, u64)>,
}

/// Reads `metadata.resourceVersion` of a stored object.
pub fn resource_version(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The part of an object a user writes: everything but `status` and the store-maintained metadata.
fn user_content(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "name"
                        | "namespace"
                        | "labels"
                        | "annotations"
                        | "finalizers"
                        | "managedFields"
                )
            });
        }
    }
    out
}

/// Whether an object is being deleted (it had finalizers when it was deleted).
fn terminating(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
}

/// Whether an object has finalizers left.
fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// The content that `generation` tracks: everything but metadata and status.
fn spec_content(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("status");
        map.remove("metadata");
    }
    out
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        State {
            revision: 0,
            time_ms: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compact_revision: 0,
            history_limit: history_limit.max(1),
            session_tracked: HashMap::new(),
            session_sweeps: BTreeMap::new(),
            next_slot: 0,
        }
    }

    /// Up to `limit` session entries due for expiry or purge at `now`, soonest first.
    pub fn sessions_to_sweep(&self, now: u64, limit: usize) -> Vec<ObjectKey> {
        self.session_sweeps
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .take(limit)
            .map(|(_, k)| (**k).clone())
            .collect()
    }

    /// Keeps the session records and the sweep index in step with a session entry (`None`:
    /// deleted). A written entry carries its latest activity.
    fn index_session(&mut self, key: &ObjectKey, obj: Option<&Value>) {
        if key.group != GW_GROUP || key.kind != affinity::KIND {
            return;
        }
        let shared = match self.session_tracked.remove_entry(key) {
            Some((shared, old)) => {
                self.session_sweeps.remove(&old.sweep());
                shared
            }
            None => Arc::new(key.clone()),
        };
        if let Some(obj) = obj
            && let Some(e) = session::entry(obj, None)
        {
            let indexed = Indexed {
                tracked: session::Tracked::of(&e, resource_version(obj)),
                slot: self.next_slot,
            };
            self.next_slot += 1;
            self.session_sweeps.insert(indexed.sweep(), shared.clone());
            self.session_tracked.insert(shared, indexed);
        }
    }

    /// Records a session's activity at `at`, beside its entry.
    fn session_active(&mut self, key: &ObjectKey, at: u64) {
        if let Some(i) = self.session_tracked.get_mut(key)
            && let Some(shared) = self.session_sweeps.remove(&i.sweep())
        {
            i.tracked.active(at);
            self.session_sweeps.insert(i.sweep(), shared);
        }
    }

    /// Whether the affinity table has an entry under `key` (a hashed lookup).
    pub fn has_session(&self, key: &ObjectKey) -> bool {
        self.session_tracked.contains_key(key)
    }

    /// The sessions' activity recorded beside their entries.
    fn session_activity(&self) -> impl Iterator<Item = (&Arc<ObjectKey>, u64)> {
        self.session_tracked
            .iter()
            .filter_map(|(k, i)| i.tracked.unrecorded_activity().map(|at| (k, at)))
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The committed time (ms since the epoch): the largest proposer clock reading applied so far.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    pub fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Objects of one kind (or every kind when `kind` is empty), optionally of one namespace, in key
    /// order.
    pub fn list<'a>(
        &'a self,
        group: &'a str,
        kind: &'a str,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)> + 'a {
        self.objects.iter().filter(move |(k, _)| {
            (kind.is_empty() || (k.group == group && k.kind == kind))
                && (namespace.is_empty() || k.namespace == namespace)
        })
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<Value>)> {
        self.objects.iter()
    }

    /// `list` as it was at `revision` (at most the current one), rebuilt from the current objects by
    /// undoing the changes after it; `Compacted` when those changes have left the history.
    pub fn list_at(
        &self,
        revision: u64,
        group: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Vec<(ObjectKey, Arc<Value>)>, Compacted> {
        self.page_at(revision, group, kind, namespace, None, usize::MAX)
    }

    /// One page of `list_at`: at most `limit` objects, those after the key `after` (exclusive) when
    /// given. Costs the page and the changes since `revision`, not the whole collection.
    pub fn page_at(
        &self,
        revision: u64,
        group: &str,
        kind: &str,
        namespace: &str,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, Arc<Value>)>, Compacted> {
        let wanted = |k: &ObjectKey| {
            (kind.is_empty() || (k.group == group && k.kind == kind))
                && (namespace.is_empty() || k.namespace == namespace)
                && after.is_none_or(|a| k > a)
        };
        // What each key changed since `revision` was at `revision` (None: it did not exist).
        let mut undo: BTreeMap<&ObjectKey, Option<&Arc<Value>>> = BTreeMap::new();
        for rev in self.events_after_ref(revision)?.iter().rev() {
            for e in rev.events.iter().rev().filter(|e| wanted(&e.key)) {
                undo.insert(&e.key, e.prev.as_ref());
            }
        }
        // Undoing removes at most `undo.len()` of the current objects: that many more are enough.
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        let mut at: BTreeMap<&ObjectKey, &Arc<Value>> = self
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(k, _)| wanted(k))
            .take(limit.saturating_add(undo.len()))
            .collect();
        for (k, prev) in undo {
            match prev {
                Some(p) => at.insert(k, p),
                None => at.remove(k),
            };
        }
        Ok(at
            .into_iter()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// The latest revision that changed a config object (any kind but gw's own bookkeeping, the kinds
    /// gateway nodes watch): the newest resourceVersion of one, or a delete of one still in the
    /// history (a delete older than the history is not known).
    pub fn config_revision(&self) -> u64 {
        let config = |k: &ObjectKey| k.group != GW_GROUP;
        let stored = self
            .objects
            .iter()
            .filter(|(k, _)| config(k))
            .map(|(_, v)| resource_version(v))
            .max()
            .unwrap_or(0);
        let deleted = self
            .history
            .iter()
            .rev()
            .find(|r| {
                r.events
                    .iter()
                    .any(|e| config(&e.key) && e.kind == EventKind::Delete)
            })
            .map_or(0, |r| r.revision);
        stored.max(deleted)
    }

    /// The events of every revision after `after`, oldest first.
    pub fn events_after(&self, after: u64) -> Result<Vec<Arc<RevisionEvents>>, Compacted> {
        Ok(self.events_after_ref(after)?.into_iter().cloned().collect())
    }

    fn events_after_ref(&self, after: u64) -> Result<Vec<&Arc<RevisionEvents>>, Compacted> {
        if after >= self.revision {
            return Ok(vec![]);
        }
        if after < self.compact_revision {
            return Err(Compacted {
                requested: after,
                compact_revision: self.compact_revision,
            });
        }
        let skip = self.history.partition_point(|e| e.revision <= after);
        Ok(self.history.iter().skip(skip).collect())
    }

    /// A 64-bit FNV-1a hash of the revision and every object, to compare members' states.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(&self.revision.to_be_bytes());
        for (k, v) in &self.objects {
            feed(format!("{}/{}/{}/{}", k.group, k.kind, k.namespace, k.name).as_bytes());
            feed(v.to_string().as_bytes());
        }
        let mut activity: Vec<_> = self.session_activity().collect();
        activity.sort_unstable();
        for (k, at) in activity {
            feed(format!("{}/{}/{}", k.namespace, k.name, at).as_bytes());
        }
        h
    }

    /// Applies one transaction. Either every operation applies and (if anything changed) the revision
    /// advances by one, or nothing changes and the error says why.
    pub fn apply_txn(
        &mut self,
        txn: &Txn,
    ) -> (Result<TxnOutcome, TxnError>, Option<Arc<RevisionEvents>>) {
        self.time_ms = self.time_ms.max(txn.time_ms);
        if let Err(e) = self.check(txn) {
            return (Err(e), None);
        }
        let new_rev = self.revision + 1;
        let mut results = Vec::with_capacity(txn.ops.len());
        let mut events = Vec::new();
        let mut activity = Vec::new();
        for op in &txn.ops {
            let (result, change) = self.plan(op, new_rev);
            match change {
                Some(Change::Event(e)) => events.push(e),
                Some(Change::Activity(at)) => activity.push((op.key(), at)),
                None => {}
            }
            results.push(result);
        }
        for (key, at) in activity {
            self.session_active(key, at);
        }
        if events.is_empty() {
            return (
                Ok(TxnOutcome {
                    revision: self.revision,
                    results,
                }),
                None,
            );
        }
        for e in &events {
            match e.kind {
                EventKind::Put => {
                    self.objects.insert(e.key.clone(), e.object.clone());
                    self.index_session(&e.key, Some(&e.object));
                }
                EventKind::Delete => {
                    self.objects.remove(&e.key);
                    self.index_session(&e.key, None);
                }
            }
        }
        self.revision = new_rev;
        let rev_events = Arc::new(RevisionEvents {
            revision: new_rev,
            events,
        });
        self.push_history(rev_events.clone());
        (
            Ok(TxnOutcome {
                revision: new_rev,
                results,
            }),
            Some(rev_events),
        )
    }

    /// What `apply_txn` would do, without doing it (dry runs).
    pub fn preview(&self, txn: &Txn) -> Result<TxnOutcome, TxnError> {
        self.check(txn)?;
        let new_rev = self.revision + 1;
        let planned: Vec<_> = txn.ops.iter().map(|op| self.plan(op, new_rev)).collect();
        let changed = planned
            .iter()
            .any(|(_, c)| matches!(c, Some(Change::Event(_))));
        Ok(TxnOutcome {
            revision: if changed { new_rev } else { self.revision },
            results: planned.into_iter().map(|(r, _)| r).collect(),
        })
    }

    fn push_history(&mut self, events: Arc<RevisionEvents>) {
        self.history.push_back(events);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compact_revision = old.revision;
            }
        }
    }

    /// Preconditions of the whole transaction, checked before anything changes.
    fn check(&self, txn: &Txn) -> Result<(), TxnError> {
        let mut seen = HashSet::new();
        for op in &txn.ops {
            let key = op.key();
            if !seen.insert(key) {
                return Err(TxnError::Duplicate { key: key.clone() });
            }
            let expected = match op {
                Op::Put { expected_rv, .. }
                | Op::Delete { expected_rv, .. }
                | Op::Status { expected_rv, .. } => *expected_rv,
                _ => None,
            };
            let must_exist = matches!(
                op,
                Op::Delete {
                    ignore_missing: false,
                    ..
                }
            );
            if expected.is_none() && !must_exist {
                continue;
            }
            let current = self.objects.get(key).map(|o| resource_version(o));
            // Expected resourceVersion 0 means "must not exist yet" (create-only).
            if let Some(exp) = expected {
                let holds = if exp == 0 {
                    current.is_none()
                } else {
                    current == Some(exp)
                };
                if !holds {
                    return Err(TxnError::Conflict {
                        key: key.clone(),
                        expected: exp,
                        actual: current.unwrap_or(0),
                    });
                }
            }
            if must_exist && current.is_none() {
                return Err(TxnError::NotFound { key: key.clone() });
            }
        }
        Ok(())
    }

    /// The result of one operation and what it changes, without changing the state.
    fn plan(&self, op: &Op, new_rev: u64) -> (OpResult, Option<Change>) {
        let (result, event) = match op {
            Op::SessionTouch { .. }
            | Op::SessionActive { .. }
            | Op::SessionFailover { .. }
            | Op::SessionExpire { .. } => {
                return self.plan_session(op, new_rev);
            }
            _ => self.plan_object(op, new_rev),
        };
        (result, event.map(Change::Event))
    }

    /// `plan` of a session operation.
    fn plan_session(&self, op: &Op, new_rev: u64) -> (OpResult, Option<Change>) {
        let key = op.key();
        let tracked = self.session_tracked.get(key).map(|i| &i.tracked);
        // Activity on a tracked entry is decided on its record: the object is not looked up.
        let decided = tracked.and_then(|t| {
            session::activity(op, t, self.time_ms).map(|p| (p, t.resource_version(), None))
        });
        let (planned, rv, stored) = decided.unwrap_or_else(|| {
            let stored = self.objects.get(key);
            let old = stored.map(|o| &**o);
            (
                session::plan(op, old, tracked, self.time_ms, new_rev),
                old.map(resource_version).unwrap_or(0),
                stored,
            )
        });
        match planned {
            session::Planned::Put(action, obj) => (
                result(key, action, new_rev),
                Some(Change::Event(put(key, obj, stored))),
            ),
            session::Planned::Delete(obj) => (
                result(key, Action::Deleted, new_rev),
                Some(Change::Event(Event {
                    kind: EventKind::Delete,
                    key: key.clone(),
                    object: Arc::new(obj),
                    prev: stored.cloned(),
                })),
            ),
            session::Planned::Active(at) => (
                result(key, Action::Configured, rv),
                Some(Change::Activity(at)),
            ),
            session::Planned::Nothing(action) => (result(key, action, rv), None),
        }
    }

    /// `plan` of an operation on an object (not a session operation).
    fn plan_object(&self, op: &Op, new_rev: u64) -> (OpResult, Option<Event>) {
        let rv_str = json!(new_rev.to_string());
        match op {
            Op::Put {
                key, object, uid, ..
            } => {
                let mut obj = object.clone();
                obj.as_object_mut().map(|m| m.remove("status"));
                let old = self.objects.get(key);
                // A document without managedFields leaves them as they are (only the Kubernetes API
                // maintains them).
                if let Some(m) = old.and_then(|o| o["metadata"].get("managedFields"))
                    && obj["metadata"].get("managedFields").is_none()
                {
                    obj["metadata"]["managedFields"] = m.clone();
                }
                match old {
                    None => {
                        let meta = &mut obj["metadata"];
                        meta["uid"] = json!(uid);
                        meta["resourceVersion"] = rv_str;
                        meta["generation"] = json!(1);
                        meta["creationTimestamp"] = json!(rfc3339(self.time_ms));
                        if let Some(status) = default_status(&key.group, &key.kind) {
                            obj["status"] = status;
                        }
                        (
                            result(key, Action::Created, new_rev),
                            Some(put(key, obj, None)),
                        )
                    }
                    Some(old) if user_content(old) == user_content(&obj) => {
                        (result(key, Action::Unchanged, resource_version(old)), None)
                    }
                    Some(old) => {
                        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1)
                            + i64::from(spec_content(old) != spec_content(&obj));
                        let meta = &mut obj["metadata"];
                        for kept in [
                            "uid",
                            "creationTimestamp",
                            "deletionTimestamp",
                            "deletionGracePeriodSeconds",
                        ] {
                            if let Some(v) = old["metadata"].get(kept) {
                                meta[kept] = v.clone();
                            }
                        }
                        meta["resourceVersion"] = rv_str;
                        meta["generation"] = json!(generation);
                        if let Some(status) = old.get("status") {
                            obj["status"] = status.clone();
                        }
                        // The last finalizer of an object being deleted is gone: it goes.
                        if terminating(old) && !has_finalizers(&obj) {
                            return (
                                result(key, Action::Deleted, new_rev),
                                Some(Event {
                                    kind: EventKind::Delete,
                                    key: key.clone(),
                                    object: Arc::new(obj),
                                    prev: Some(old.clone()),
                                }),
                            );
                        }
                        (
                            result(key, Action::Configured, new_rev),
                            Some(put(key, obj, Some(old))),
                        )
                    }
                }
            }
            Op::Delete { key, .. } => match self.objects.get(key) {
                None => (result(key, Action::NotFound, 0), None),
                // Finalizers hold a delete: the object is marked, and goes when the last one is removed.
                Some(old) if terminating(old) => (
                    result(key, Action::Terminating, resource_version(old)),
                    None,
                ),
                Some(old) if has_finalizers(old) => {
                    let mut obj = (**old).clone();
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    let meta = &mut obj["metadata"];
                    meta["deletionTimestamp"] = json!(rfc3339(self.time_ms));
                    meta["deletionGracePeriodSeconds"] = json!(0);
                    meta["generation"] = json!(generation);
                    meta["resourceVersion"] = rv_str;
                    (
                        result(key, Action::Terminating, new_rev),
                        Some(put(key, obj, Some(old))),
                    )
                }
                Some(old) => {
                    let mut obj = (**old).clone();
                    obj["metadata"]["resourceVersion"] = rv_str;
                    let event = Event {
                        kind: EventKind::Delete,
                        key: key.clone(),
                        object: Arc::new(obj),
                        prev: Some(old.clone()),
                    };
                    (result(key, Action::Deleted, new_rev), Some(event))
                }
            },
            Op::Status {
                key,
                status,
                expected_uid,
                expected_generation,
                ..
            } => {
                let Some(old) = self.objects.get(key) else {
                    return (result(key, Action::Skipped, 0), None);
                };
                let uid_ok = expected_uid
                    .as_deref()
                    .is_none_or(|u| old["metadata"]["uid"] == u);
                let gen_ok = expected_generation.is_none_or(|g| old["metadata"]["generation"] == g);
                if !uid_ok || !gen_ok {
                    return (result(key, Action::Skipped, resource_version(old)), None);
                }
                if old.get("status") == Some(status) {
                    return (result(key, Action::Unchanged, resource_version(old)), None);
                }
                let mut obj = (**old).clone();
                obj["status"] = status.clone();
                obj["metadata"]["resourceVersion"] = rv_str;
                (
                    result(key, Action::StatusUpdated, new_rev),
                    Some(put(key, obj, Some(old))),
                )
            }
            Op::SessionTouch { .. }
            | Op::SessionActive { .. }
            | Op::SessionFailover { .. }
            | Op::SessionExpire { .. } => {
                unreachable!("session operations are planned by plan_session")
            }
        }
    }

    /// Serializes the state, with its watch history, for a Raft snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        self.snapshot_image().encode()
    }

    /// The state as a snapshot will hold it, taken cheaply (shared objects and events): encode it
    /// without holding whatever guards this state.
    pub fn snapshot_image(&self) -> SnapshotImage {
        SnapshotImage(SnapshotBody {
            revision: self.revision,
            time_ms: self.time_ms,
            compact_revision: self.compact_revision,
            objects: self.objects.values().cloned().collect(),
            history: self.history.iter().cloned().collect(),
            session_activity: self
                .session_activity()
                .map(|(k, at)| (k.clone(), at))
                .collect(),
        })
    }

    /// Replaces this state with a snapshot's (history included, trimmed to this member's window).
    pub fn install_snapshot(&mut self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        self.install_image(SnapshotImage::decode(bytes)?);
        Ok(())
    }

    /// `install_snapshot` of a snapshot decoded beforehand (`SnapshotImage::decode`, without
    /// holding whatever guards this state).
    pub fn install_image(&mut self, image: SnapshotImage) {
        let body = image.0;
        let mut objects = BTreeMap::new();
        for obj in body.objects {
            objects.insert(ObjectKey::of_stored(&obj), obj);
        }
        self.revision = body.revision;
        self.time_ms = body.time_ms;
        self.session_sweeps.clear();
        self.session_tracked.clear();
        for (k, o) in &objects {
            self.index_session(k, Some(o));
        }
        for (k, at) in &body.session_activity {
            self.session_active(k, *at);
        }
        self.objects = objects;
        self.history = body.history.into();
        self.compact_revision = body.compact_revision;
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compact_revision = old.revision;
            }
        }
    }
}

/// A snapshot's contents, between the state and its bytes.
pub struct SnapshotImage(SnapshotBody);

impl SnapshotImage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("state serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotImage, serde_json::Error> {
        serde_json::from_slice(bytes).map(SnapshotImage)
    }
}

fn result(key: &ObjectKey, action: Action, resource_version: u64) -> OpResult {
    OpResult {
        key: key.clone(),
        action,
        resource_version,
    }
}

fn put(key: &ObjectKey, obj: Value, prev: Option<&Arc<Value>>) -> Event {
    Event {
        kind: EventKind::Put,
        key: key.clone(),
        object: Arc::new(obj),
        prev: prev.cloned(),
    }
}

#[cfg(test)]
mod tests;
