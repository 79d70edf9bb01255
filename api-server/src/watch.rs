//! Serving one Watch stream from a member's applied state (etcd's six watch guarantees): ordered,
//! unique, reliable (no gaps), atomic per revision, resumable after any revision still in history, and
//! bookmarked. A resume from a compacted revision, a lagging subscriber and a snapshot install on this
//! member all get an explicit snapshot marked `compacted`, never a silent skip.

use crate::authz::{redact, secret_values_visible};
use crate::node::Node;
use gw_client::{Identity, object_ref};
use gw_model::ObjectKey;
use gw_proto as pb;
use gw_store::state::{EventKind, RevisionEvents};
use gw_store::storage::{HubMsg, StoreHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// Objects per snapshot message.
const SNAPSHOT_CHUNK: usize = 500;

/// What a watcher asked for, and who it is (for what it may see of Secrets).
pub struct Filter {
    pub kinds: Vec<(String, String)>,
    pub namespace: String,
    pub who: Identity,
    pub show_secret_values: bool,
}

impl Filter {
    /// An object as this watcher may see it.
    fn present(&self, k: &ObjectKey, obj: &serde_json::Value) -> String {
        if k.group.is_empty()
            && k.kind == "Secret"
            && !secret_values_visible(&self.who, self.show_secret_values, k)
        {
            redact(obj).to_string()
        } else {
            obj.to_string()
        }
    }

    fn matches(&self, k: &ObjectKey) -> bool {
        (self.kinds.is_empty()
            || self
                .kinds
                .iter()
                .any(|(g, kind)| *g == k.group && *kind == k.kind))
            && (self.namespace.is_empty() || self.namespace == k.namespace)
    }
}

type Tx = mpsc::Sender<Result<pb::WatchResponse, Status>>;

fn wrap(body: pb::watch_response::Body) -> Result<pb::WatchResponse, Status> {
    Ok(pb::WatchResponse { body: Some(body) })
}

/// Sends the whole (filtered) state at its current revision and returns that revision.
async fn send_snapshot(
    tx: &Tx,
    store: &StoreHandle,
    filter: &Filter,
    compacted: bool,
) -> Option<u64> {
    let (revision, compact, objects) = store.read(|a| {
        let objs: Vec<String> = a
            .state
            .objects()
            .filter(|(k, _)| filter.matches(k))
            .map(|(k, o)| filter.present(k, o))
            .collect();
        (a.state.revision(), a.state.compact_revision(), objs)
    });
    let mut chunks: Vec<Vec<String>> = objects
        .chunks(SNAPSHOT_CHUNK)
        .map(<[String]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(vec![]);
    }
    let last = chunks.len() - 1;
    for (i, objects_json) in chunks.into_iter().enumerate() {
        let chunk = pb::SnapshotChunk {
            revision,
            objects_json,
            done: i == last,
            compacted,
            compact_revision: compact,
        };
        tx.send(wrap(pb::watch_response::Body::Snapshot(chunk)))
            .await
            .ok()?;
    }
    Some(revision)
}

/// Sends one revision's events (those the filter selects; none at all if it selects none).
async fn send_events(tx: &Tx, ev: &RevisionEvents, filter: &Filter) -> Option<()> {
    let events: Vec<pb::Event> = ev
        .events
        .iter()
        .filter(|e| filter.matches(&e.key))
        .map(|e| pb::Event {
            r#type: match e.kind {
                EventKind::Put => pb::EventType::Put as i32,
                EventKind::Delete => pb::EventType::Delete as i32,
            },
            target: Some(object_ref(&e.key)),
            object_json: filter.present(&e.key, &e.object),
            created: e.kind == EventKind::Put && e.prev.is_none(),
        })
        .collect();
    if events.is_empty() {
        return Some(());
    }
    tx.send(wrap(pb::watch_response::Body::Events(pb::RevisionEvents {
        revision: ev.revision,
        events,
    })))
    .await
    .ok()
}

/// Sends everything after `last_sent` from history, or a compacted snapshot if history no longer
/// reaches back that far. Returns the new last revision sent.
async fn catch_up(tx: &Tx, store: &StoreHandle, filter: &Filter, last_sent: u64) -> Option<u64> {
    match store.read(|a| a.state.events_after(last_sent)) {
        Ok(events) => {
            let mut last = last_sent;
            for ev in events {
                send_events(tx, &ev, filter).await?;
                last = ev.revision;
            }
            Some(last)
        }
        Err(_) => send_snapshot(tx, store, filter, true).await,
    }
}

/// Runs a watch until the client goes away. A bookmark is a promise that the watcher has been sent
/// everything committed until then: it is sent only after this member has confirmed that it is
/// current (a ReadIndex barrier). A member that cannot confirm it for `2 × election timeout` (cut
/// off from the cluster) ends the stream with UNAVAILABLE, so that the client resumes on a member
/// that sees new commits instead of idling on a stale one.
#[allow(clippy::disallowed_methods)] // runtime: how long this member has been out of contact
pub async fn run(node: Arc<Node>, tx: Tx, filter: Filter, after: Option<u64>, bookmark: Duration) {
    node.metrics.watchers.inc();
    serve(&node, &tx, &filter, after, bookmark).await;
    node.metrics.watchers.dec();
}

#[allow(clippy::disallowed_methods)] // runtime: how long this member has been out of contact
async fn serve(node: &Arc<Node>, tx: &Tx, filter: &Filter, after: Option<u64>, bookmark: Duration) {
    let store = node.store.clone();
    let give_up = Duration::from_millis(node.config.election_timeout_ms * 2);
    let mut unconfirmed_since: Option<tokio::time::Instant> = None;
    // Subscribe before reading the state: every revision applied after the read is then delivered.
    let mut rx = store.subscribe();
    let start = match after {
        None => send_snapshot(tx, &store, filter, false).await,
        Some(after) => catch_up(tx, &store, filter, after).await,
    };
    let Some(mut last_sent) = start else { return };
    let mut ticker = tokio::time::interval(bookmark);
    ticker.tick().await;
    loop {
        let next = tokio::select! {
            msg = rx.recv() => msg,
            _ = ticker.tick() => {
                if !matches!(tokio::time::timeout(bookmark, node.read_barrier()).await, Ok(Ok(()))) {
                    let since = *unconfirmed_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= give_up {
                        let why = "this member lost contact with the cluster; resume the watch on another member";
                        let _ = tx.send(Err(Status::unavailable(why))).await;
                        return;
                    }
                    continue;
                }
                unconfirmed_since = None;
                let bm = pb::Bookmark { revision: last_sent };
                if tx.send(wrap(pb::watch_response::Body::Bookmark(bm))).await.is_err() {
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        let sent = match next {
            Ok(HubMsg::Events(ev)) if ev.revision <= last_sent => Some(last_sent),
            Ok(HubMsg::Events(ev)) if ev.revision == last_sent + 1 => {
                let applied = store.read(|a| a.state.revision());
                node.metrics
                    .watch_lag
                    .observe(applied.saturating_sub(ev.revision) as f64);
                send_events(tx, &ev, filter).await.map(|_| ev.revision)
            }
            // A gap (this subscriber missed a message) or a lag: resume from history.
            Ok(HubMsg::Events(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up(tx, &store, filter, last_sent).await
            }
            // The member installed a snapshot. A watcher that already has everything up to it (it
            // resumed here from a member that was ahead) must not be sent back in time: it gets the
            // events after what it has, from history, or a compacted snapshot if they are gone.
            Ok(HubMsg::Reset { .. }) => catch_up(tx, &store, filter, last_sent).await,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match sent {
            Some(rev) => last_sent = rev,
            None => return,
        }
    }
}

/// Filters from a request's kinds and namespace.
pub fn filter_from(req: &pb::WatchRequest, who: Identity) -> Filter {
    Filter {
        kinds: req
            .kinds
            .iter()
            .map(|r| (r.group.clone(), r.kind.clone()))
            .collect(),
        namespace: req.namespace.clone(),
        who,
        show_secret_values: req.show_secret_values,
    }
}
