//! The watch client: an explicit state machine (Empty → Snapshot(rev) → Streaming(rev)) over the
//! store's Watch stream. It applies whole snapshots atomically (a compacted resume is a full
//! replacement, never a merge), applies each revision's events together, resumes after a disconnect on
//! any member from the last revision it holds, and publishes every committed state it reaches. It also
//! persists the state it serves, so that a node restarted while the store is unreachable serves it
//! (static stability).

use crate::snapshot::{Snapshot, Stored};
use futures::FutureExt;
use gw_client::locality::{self, MemberCell};
use gw_client::{Client, kind_ref};
use gw_model::ObjectKey;
use gw_proto as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the watch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchState {
    /// Nothing received yet on this stream.
    Empty,
    /// Receiving the chunks of a snapshot at this revision.
    Snapshot { revision: u64 },
    /// Up to date at this revision, applying events as they come.
    Streaming { revision: u64 },
}

/// What one stream message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to publish yet (a snapshot chunk, an event already held, a bookmark).
    Nothing,
    /// A new committed state to publish.
    Publish,
    /// The stream broke the protocol (a gap): resynchronise with a fresh snapshot.
    Resync,
}

/// The pure part of the watch client: feeds stream messages into the object map.
pub struct WatchMachine<T = Value> {
    pub state: WatchState,
    pub snapshot: Snapshot<T>,
    pending: BTreeMap<ObjectKey, Arc<T>>,
    /// Highest revision the store reported (events or bookmarks).
    pub seen: u64,
}

impl<T: Stored> WatchMachine<T> {
    pub fn new(initial: Snapshot<T>) -> WatchMachine<T> {
        let seen = initial.revision;
        WatchMachine {
            state: WatchState::Empty,
            snapshot: initial,
            pending: BTreeMap::new(),
            seen,
        }
    }

    /// The `after_revision` to (re)open a stream with: resume after what is held, or ask for a snapshot.
    pub fn resume_from(&self) -> Option<u64> {
        (self.snapshot.revision > 0).then_some(self.snapshot.revision)
    }

    /// A new stream begins.
    pub fn reset_stream(&mut self) {
        self.state = WatchState::Empty;
        self.pending.clear();
    }

    pub fn feed(&mut self, body: pb::watch_response::Body) -> Step {
        use pb::watch_response::Body;
        match body {
            Body::Snapshot(chunk) => {
                if !matches!(self.state, WatchState::Snapshot { revision } if revision == chunk.revision)
                {
                    self.pending.clear();
                    self.state = WatchState::Snapshot {
                        revision: chunk.revision,
                    };
                }
                for o in &chunk.objects_json {
                    if let Ok(v) = serde_json::from_str::<Value>(o) {
                        let key = ObjectKey::of_stored(&v);
                        if let Some(t) = T::from_json(v) {
                            self.pending.insert(key, Arc::new(t));
                        }
                    }
                }
                self.seen = self.seen.max(chunk.revision);
                if !chunk.done {
                    return Step::Nothing;
                }
                // Replace everything at once: a snapshot is the whole state, not a delta.
                self.snapshot = Snapshot {
                    revision: chunk.revision,
                    objects: std::mem::take(&mut self.pending),
                };
                self.state = WatchState::Streaming {
                    revision: chunk.revision,
                };
                Step::Publish
            }
            Body::Events(ev) => {
                let WatchState::Streaming { revision } = self.state else {
                    // Events may only follow a complete snapshot or a resume on this stream.
                    if self.state == WatchState::Empty && self.resume_from().is_some() {
                        self.state = WatchState::Streaming {
                            revision: self.snapshot.revision,
                        };
                        return self.feed(Body::Events(ev));
                    }
                    return Step::Resync;
                };
                self.seen = self.seen.max(ev.revision);
                if ev.revision <= revision {
                    return Step::Nothing;
                }
                for e in ev.events {
                    let Some(r) = e.target else { continue };
                    let key = ObjectKey::new(&r.group, &r.kind, &r.namespace, &r.name);
                    let kept = (e.r#type != pb::EventType::Delete as i32)
                        .then(|| serde_json::from_str::<Value>(&e.object_json).ok())
                        .flatten()
                        .and_then(T::from_json);
                    match kept {
                        Some(t) => self.snapshot.objects.insert(key, Arc::new(t)),
                        None => self.snapshot.objects.remove(&key),
                    };
                }
                self.snapshot.revision = ev.revision;
                self.state = WatchState::Streaming {
                    revision: ev.revision,
                };
                Step::Publish
            }
            Body::Bookmark(b) => {
                self.seen = self.seen.max(b.revision);
                if self.state == WatchState::Empty && self.resume_from().is_some() {
                    self.state = WatchState::Streaming {
                        revision: self.snapshot.revision,
                    };
                }
                Step::Nothing
            }
        }
    }
}

/// The persisted form of a snapshot.
#[derive(Serialize, Deserialize)]
struct Persisted {
    revision: u64,
    objects: Vec<Arc<Value>>,
}

const SNAPSHOT_FILE: &str = "snapshot.json";

/// Loads the persisted snapshot, if any.
pub fn load(dir: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
    let p: Persisted = serde_json::from_slice(&bytes).ok()?;
    let objects = p
        .objects
        .into_iter()
        .map(|o| (ObjectKey::of_stored(&o), o))
        .collect();
    Some(Snapshot {
        revision: p.revision,
        objects,
    })
}

/// Writes a snapshot atomically (temporary file, fsync, rename).
pub fn save(dir: &Path, s: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let body = Persisted {
        revision: s.revision,
        objects: s.objects.values().cloned().collect(),
    };
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&body).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

/// Connection facts for the admin endpoint.
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// Highest revision the store reported.
    pub seen: AtomicU64,
    /// Revision of the last state published.
    pub published: AtomicU64,
    /// Milliseconds (since the node started) of the last message from the store; 0: never.
    pub last_contact_ms: AtomicU64,
    /// Milliseconds (since the node started) of the last bookmark: the store sends one only when the
    /// member has confirmed that the watcher has everything committed until then; 0: never.
    pub last_bookmark_ms: AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    /// The member (index into the node's `--store` list) the stream is on.
    pub watching: MemberCell,
    /// The member the locality prober wants the stream on.
    pub preferred: MemberCell,
    /// The longest round trip (ms) to a member that answered the prober's last round (kept on the
    /// config watch's health); 0: none yet, or no prober (the node has no `--region`).
    pub slowest_probe_ms: AtomicU64,
}

impl WatchHealth {
    /// The member (index into `--store`) the watch stream is on.
    pub fn watching(&self) -> Option<usize> {
        self.watching.get()
    }

    /// The member the locality prober prefers.
    pub fn preferred(&self) -> Option<usize> {
        self.preferred.get()
    }
}

/// Probes every member (its own status, asked of it alone) every `locality::PROBE_EVERY` and records,
/// for each watch (the config's first, then the affinity table's), which member it should be on
/// (`locality::choose`): the watches move there, and the node's calls start where the config watch
/// is. The config watch's health also keeps the longest round trip measured.
pub async fn follow_locality(client: Client, region: String, watches: [Arc<WatchHealth>; 2]) {
    loop {
        let probes = locality::probe(&client).await;
        if let Some(rtt) = probes.iter().flatten().map(|(_, rtt)| *rtt).max() {
            watches[0]
                .slowest_probe_ms
                .store(rtt.as_millis() as u64, Ordering::Relaxed);
        }
        let picks = watches.clone().map(|health| {
            let pick = locality::choose(&region, &probes, health.watching());
            health.preferred.set(pick);
            pick
        });
        // The node's other calls (status, leases) start at the config watch's member too: the
        // one a call that failed over left them on may be a region away. (Calls on a request's
        // path name it themselves: `Sessions::call_client`.)
        if let Some(p) = picks[0] {
            client.prefer(p);
        }
        tokio::time::sleep(locality::PROBE_EVERY).await;
    }
}

/// The kinds a watch asks for: the config (every kind users apply), or gw's session affinity table.
pub fn kinds(affinity: bool) -> Vec<pb::ObjectRef> {
    gw_model::kinds::KINDS
        .iter()
        .filter(|k| match affinity {
            true => k.group == gw_model::kinds::GW_GROUP && k.kind == gw_model::affinity::KIND,
            // Of gw's own kinds, the kube sync agents' reports: the region of each cluster's
            // endpoints.
            false => !k.is_internal() || k.kind == gw_model::registry::REPORT_KIND,
        })
        .map(|k| kind_ref(k.group, k.kind))
        .collect()
}

/// Runs the watch of `kinds` forever, publishing each committed state reached.
/// The null control `torn`: before a revision of several events is published whole, each of its
/// prefixes is published on its own under the revision's number, 50 ms apart — a node that serves
/// half of a multi-object apply.
async fn publish_torn<T: Stored>(
    m: &WatchMachine<T>,
    ev: &pb::RevisionEvents,
    publish: &watch::Sender<Arc<Snapshot<T>>>,
) {
    let WatchState::Streaming { revision } = m.state else {
        return;
    };
    for k in 1..ev.events.len() {
        let mut partial = WatchMachine::new(m.snapshot.clone());
        partial.state = WatchState::Streaming { revision };
        let prefix = pb::RevisionEvents {
            events: ev.events[..k].to_vec(),
            ..ev.clone()
        };
        if partial.feed(pb::watch_response::Body::Events(prefix)) == Step::Publish {
            let _ = publish.send(Arc::new(partial.snapshot));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Follows the store: publishes every committed state reached (`torn`: the null control, see
/// `publish_torn`).
pub async fn run<T: Stored>(
    client: Client,
    initial: Snapshot<T>,
    kinds: Vec<pb::ObjectRef>,
    publish: watch::Sender<Arc<Snapshot<T>>>,
    health: Arc<WatchHealth>,
    started: Instant,
    torn: bool,
) {
    let mut m = WatchMachine::new(initial);
    loop {
        m.reset_stream();
        let req = pb::WatchRequest {
            after_revision: m.resume_from(),
            kinds: kinds.clone(),
            namespace: String::new(),
            bookmark_interval_ms: 500,
            show_secret_values: false,
        };
        if let Some(p) = health.preferred() {
            client.prefer(p);
        }
        let mut stream = match client.watch_on(req).await {
            Ok((s, on)) => {
                health.watching.set(Some(on));
                // The preferred member did not take the watch (gone since it was probed): no
                // preference until the next probe, rather than leaving this stream for it again.
                if health.preferred().is_some_and(|p| p != on) {
                    health.preferred.set(None);
                }
                s
            }
            Err(e) => {
                health.watching.set(None);
                health.connected.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, revision = m.snapshot.revision, "store unreachable; serving the last committed state");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        health.connected.store(true, Ordering::Relaxed);
        // A state reached is published once no further message is already waiting (or once it has
        // waited `COALESCE_MS`): a burst of revisions (a table filling up, a resume) is applied first
        // and published once, since each publish copies the whole map (at a million session
        // entries, a fifth of a second each).
        let mut unpublished = false;
        let mut unpublished_at = 0;
        loop {
            let next = if unpublished {
                let waited = (started.elapsed().as_millis() as u64).saturating_sub(unpublished_at);
                match stream.message().now_or_never() {
                    Some(r) if waited < COALESCE_MS => Ok(r),
                    ready => {
                        unpublished = false;
                        publish_state(&m, &health, &publish);
                        match ready {
                            Some(r) => Ok(r),
                            None => continue,
                        }
                    }
                }
            } else {
                // A stream that stays silent longer than a few bookmark intervals is dead (e.g. a
                // partition).
                tokio::time::timeout(Duration::from_secs(5), stream.message()).await
            };
            let msg = match next {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            };
            let now = started.elapsed().as_millis() as u64;
            health.last_contact_ms.store(now, Ordering::Relaxed);
            let Some(body) = msg.body else { continue };
            if matches!(body, pb::watch_response::Body::Bookmark(_)) {
                // A bookmark vouches for what is served: what came before it is published first.
                if std::mem::take(&mut unpublished) {
                    publish_state(&m, &health, &publish);
                }
                health.last_bookmark_ms.store(now, Ordering::Relaxed);
            }
            if torn && let pb::watch_response::Body::Events(ev) = &body {
                publish_torn(&m, ev, &publish).await;
            }
            match m.feed(body) {
                Step::Nothing => {}
                Step::Publish if !unpublished => {
                    unpublished = true;
                    unpublished_at = now;
                }
                Step::Publish => {}
                Step::Resync => {
                    tracing::warn!("watch stream out of order; resynchronising");
                    if std::mem::take(&mut unpublished) {
                        publish_state(&m, &health, &publish);
                    }
                    m.snapshot.revision = 0;
                    break;
                }
            }
            // `seen` counts only what is published (see `NodeState::current_through`).
            if !unpublished {
                health.seen.store(m.seen, Ordering::SeqCst);
            }
            // The locality prober wants the watch elsewhere: resume there (from what is held).
            if let Some(p) = health.preferred()
                && health.watching() != Some(p)
            {
                tracing::info!(member = %client.servers()[p], "moving the watch to a nearer member");
                break;
            }
        }
        if unpublished {
            publish_state(&m, &health, &publish);
        }
        health.watching.set(None);
        health.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a state reached may wait for the messages already behind it before it is published.
const COALESCE_MS: u64 = 20;

/// Publishes the state the watch has reached, then counts the revisions it has seen.
fn publish_state<T: Stored>(
    m: &WatchMachine<T>,
    health: &WatchHealth,
    publish: &watch::Sender<Arc<Snapshot<T>>>,
) {
    // Before `seen` moves past it: see `NodeState::current_through`.
    health
        .published
        .store(m.snapshot.revision, Ordering::SeqCst);
    let _ = publish.send(Arc::new(m.snapshot.clone()));
    health.seen.store(m.seen, Ordering::SeqCst);
}

/// Persists every published state (coalescing bursts) under `dir`. After each save it rests 4 times as
/// long as the save took (at least 50 ms), so that a large config changing all the time (thousands of
/// routes whose statuses are being written) costs at most a fifth of a core; a node restarted meanwhile
/// resumes from the last state saved, a committed one all the same.
#[allow(clippy::disallowed_methods)] // runtime: times each save
pub async fn persist(dir: PathBuf, mut rx: watch::Receiver<Arc<Snapshot>>) {
    let mut saved = 0;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let snap = rx.borrow_and_update().clone();
        if snap.revision == saved {
            continue;
        }
        let dir2 = dir.clone();
        let s2 = snap.clone();
        let start = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || save(&dir2, &s2)).await {
            Ok(Ok(())) => saved = snap.revision,
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist the served snapshot"),
            Err(e) => tracing::error!(error = %e, "snapshot persister failed"),
        }
        tokio::time::sleep((start.elapsed() * 4).max(Duration::from_millis(50))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::watch_response::Body;

    fn obj(name: &str, rv: u64) -> String {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "d", "resourceVersion": rv.to_string()}}).to_string()
    }

    fn chunk(revision: u64, names: &[&str], done: bool) -> Body {
        Body::Snapshot(pb::SnapshotChunk {
            revision,
            objects_json: names.iter().map(|n| obj(n, revision)).collect(),
            done,
            compacted: false,
            compact_revision: 0,
        })
    }

    fn put(revision: u64, name: &str) -> Body {
        Body::Events(pb::RevisionEvents {
            revision,
            events: vec![pb::Event {
                r#type: pb::EventType::Put as i32,
                target: Some(pb::ObjectRef {
                    group: String::new(),
                    kind: "ConfigMap".into(),
                    namespace: "d".into(),
                    name: name.into(),
                }),
                object_json: obj(name, revision),
                created: false,
            }],
        })
    }

    #[test]
    fn snapshot_then_streaming_then_resync() {
        let mut m: WatchMachine = WatchMachine::new(Snapshot::default());
        assert_eq!(m.resume_from(), None);
        assert_eq!(m.feed(chunk(5, &["a", "b"], false)), Step::Nothing);
        assert_eq!(m.state, WatchState::Snapshot { revision: 5 });
        assert!(
            m.snapshot.objects.is_empty(),
            "a partial snapshot is never published"
        );
        assert_eq!(m.feed(chunk(5, &["c"], true)), Step::Publish);
        assert_eq!(
            (m.state.clone(), m.snapshot.objects.len()),
            (WatchState::Streaming { revision: 5 }, 3)
        );
        assert_eq!(m.feed(put(6, "d")), Step::Publish);
        assert_eq!(
            m.feed(put(6, "d")),
            Step::Nothing,
            "an event already applied is not applied twice"
        );
        assert_eq!(m.snapshot.revision, 6);
        // Reconnect elsewhere: resume after 6; a compacted answer replaces everything.
        m.reset_stream();
        assert_eq!(m.resume_from(), Some(6));
        assert_eq!(m.feed(chunk(9, &["z"], true)), Step::Publish);
        let names: Vec<&str> = m.snapshot.objects.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, vec!["z"], "a resync replaces, it does not merge");
    }

    #[test]
    fn the_affinity_view_keeps_only_session_entries() {
        use gw_model::affinity::{SessionEntry, SessionSpec, SessionStatus};
        let entry = |id: &str, backend: &str| SessionEntry {
            namespace: "d".into(),
            id: id.into(),
            spec: SessionSpec {
                scope: "HTTPRoute/d/r/rules/0".into(),
                backend: backend.into(),
                issued_ms: 1_000,
                idle_timeout_ms: None,
                absolute_timeout_ms: None,
            },
            status: SessionStatus::new(1_000),
        };
        let event = |revision, e: &SessionEntry, kind: pb::EventType| {
            let key = e.key();
            Body::Events(pb::RevisionEvents {
                revision,
                events: vec![pb::Event {
                    r#type: kind as i32,
                    target: Some(pb::ObjectRef {
                        group: key.group,
                        kind: key.kind,
                        namespace: key.namespace,
                        name: key.name,
                    }),
                    object_json: e.to_object().to_string(),
                    created: false,
                }],
            })
        };
        let mut m: WatchMachine<SessionEntry> = WatchMachine::new(Snapshot::default());
        let first = entry("s1", "b0");
        let snapshot = Body::Snapshot(pb::SnapshotChunk {
            revision: 5,
            objects_json: vec![first.to_object().to_string(), obj("not-a-session", 5)],
            done: true,
            compacted: false,
            compact_revision: 0,
        });
        assert_eq!(m.feed(snapshot), Step::Publish);
        let held: Vec<&SessionEntry> = m.snapshot.objects.values().map(|e| &**e).collect();
        assert_eq!(
            held,
            [&first],
            "only what parses as a session entry is kept"
        );
        let moved = entry("s1", "b1");
        assert_eq!(m.feed(event(6, &moved, pb::EventType::Put)), Step::Publish);
        assert_eq!(
            m.snapshot.objects.get(&moved.key()).map(|e| &**e),
            Some(&moved)
        );
        assert_eq!(
            m.feed(event(7, &moved, pb::EventType::Delete)),
            Step::Publish
        );
        assert!(m.snapshot.objects.is_empty());
    }

    #[test]
    fn events_before_any_snapshot_force_a_resync() {
        let mut m: WatchMachine = WatchMachine::new(Snapshot::default());
        assert_eq!(m.feed(put(3, "x")), Step::Resync);
    }

    #[test]
    fn persisted_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut m: WatchMachine = WatchMachine::new(Snapshot::default());
        m.feed(chunk(7, &["a", "b"], true));
        save(dir.path(), &m.snapshot).unwrap();
        assert_eq!(load(dir.path()).unwrap(), m.snapshot);
        assert!(load(&dir.path().join("nope")).is_none());
    }
}
