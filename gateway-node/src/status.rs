//! Writing status back through the store, by one node only: the nodes serving a GatewayClass elect a
//! writer with a lease object (`StatusWriterLease` named after the class, gw.dev, updated with
//! optimistic concurrency, like a Kubernetes Lease; not watched by nodes, so renewing it recompiles
//! nothing). A holder renews it; another node takes it over once it has not
//! changed for a whole lease period of that node's own (monotonic) clock. The writer compares the
//! compiled statuses with the committed ones and writes only the differences; since the compiler keeps
//! `lastTransitionTime` for unchanged conditions, writing converges.

#![allow(clippy::disallowed_methods)] // runtime: the lease is timed on this node's monotonic clock

use crate::compile::Statuses;
use crate::snapshot::Snapshot;
use gw_client::{Client, clock, object_ref};
use gw_model::ObjectKey;
use gw_model::registry::{self, StatusWriterLease};
use gw_proto as pb;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A lease not renewed for this long may be taken over.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Most status updates per request.
const BATCH: usize = 100;

struct Lease {
    /// The GatewayClass (the lease's name).
    class: String,
    holder: String,
    /// The last resourceVersion seen and when it was first seen (local clock).
    observed: Option<(u64, Instant)>,
    /// When this node last renewed it successfully.
    renewed: Option<Instant>,
}

fn lease_doc(class: &str, holder: &str, rv: u64) -> pb::Document {
    let lease = StatusWriterLease {
        holder: holder.into(),
        renewed_ms: clock::now_ms(),
    };
    pb::Document {
        json: lease.to_object(class, rv).to_string(),
        source: "status-writer".into(),
        index: 1,
    }
}

impl Lease {
    /// One step of the election; returns whether this node may write status now.
    async fn step(&mut self, client: &Client) -> bool {
        let key = registry::lease_key(&self.class);
        let (holder, rv) = match client.get_object(&key).await {
            Ok(Some(obj)) => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (obj["spec"]["holder"].as_str().unwrap_or("").to_string(), rv)
            }
            Ok(None) => (String::new(), 0),
            Err(_) => return self.still_holding(),
        };
        let now = Instant::now();
        let take = if holder == self.holder || holder.is_empty() {
            true
        } else {
            match self.observed {
                Some((seen_rv, since)) if seen_rv == rv => {
                    now.duration_since(since) >= LEASE_DURATION
                }
                _ => {
                    self.observed = Some((rv, now));
                    false
                }
            }
        };
        if !take {
            self.renewed = None;
            return false;
        }
        let doc = lease_doc(&self.class, &self.holder, rv);
        match client.apply(vec![doc], false).await {
            Ok(_) => {
                if holder != self.holder {
                    tracing::info!(class = %self.class, "became the status writer");
                }
                self.renewed = Some(now);
                true
            }
            Err(_) => self.still_holding(),
        }
    }

    fn still_holding(&self) -> bool {
        self.renewed
            .is_some_and(|r| r.elapsed() < LEASE_DURATION - RENEW_EVERY)
    }
}

/// The desired statuses with the committed objects they are compared with.
pub type Desired = Arc<(Arc<Snapshot>, Statuses)>;

/// Compares desired statuses with committed ones, each time only where either changed since the
/// last comparison (both keep their `Arc`s where unchanged), and where the last comparison found a
/// difference: thousands of routes are not compared again on every revision.
#[derive(Default)]
pub struct Differ {
    last: Option<Desired>,
    /// Keys found different last time (written since, or not).
    unsettled: BTreeSet<Arc<ObjectKey>>,
}

impl Differ {
    /// Forgets what was compared: the next diff compares every status.
    pub fn reset(&mut self) {
        *self = Differ::default();
    }

    /// The status updates that make the committed statuses equal the desired ones.
    pub fn diff(&mut self, now: &Desired) -> Vec<pb::StatusUpdate> {
        let (snap, desired) = (&now.0, &now.1);
        let candidates: Vec<Arc<ObjectKey>> = match self.last.take() {
            None => desired.keys().cloned().collect(),
            Some(last) => {
                let mut keys = std::mem::take(&mut self.unsettled);
                keys.extend(changed(&last.1, desired));
                let objects = snap.changes(&last.0);
                keys.extend(
                    objects.filter_map(|(k, _)| desired.get_key_value(k).map(|e| e.0.clone())),
                );
                keys.into_iter().collect()
            }
        };
        let mut out = Vec::new();
        for key in candidates {
            let (Some(d), Some(current)) = (desired.get(&key), snap.objects.get(&*key)) else {
                continue;
            };
            // Equal, or the object was replaced since this status was compiled for it.
            if current.get("status") == Some(&*d.status) || current["metadata"]["uid"] != *d.uid {
                continue;
            }
            out.push(pb::StatusUpdate {
                target: Some(object_ref(&key)),
                status_json: d.status.to_string(),
                expected_uid: d.uid.to_string(),
                expected_generation: d.generation,
                expected_resource_version: 0,
            });
            self.unsettled.insert(key);
        }
        self.last = Some(now.clone());
        out
    }
}

/// The keys whose desired status differs in `now` from `before` (or is new). Both in key order,
/// walked side by side; an entry kept from one compilation to the next has the same `Arc`s.
fn changed<'a>(
    before: &'a Statuses,
    now: &'a Statuses,
) -> impl Iterator<Item = Arc<ObjectKey>> + 'a {
    let mut old = before.iter().peekable();
    now.iter().filter_map(move |(k, d)| {
        if !old.peek().is_some_and(|(o, _)| Arc::ptr_eq(o, k)) {
            while old.next_if(|(o, _)| ***o < **k).is_some() {}
        }
        match old.next_if(|(o, _)| ***o == **k) {
            Some((_, was)) if *was == *d => None,
            _ => Some(k.clone()),
        }
    })
}

/// Runs the election and, while elected, writes statuses whenever they differ.
pub async fn run(
    client: Client,
    node_name: String,
    gateway_class: String,
    mut desired: watch::Receiver<Desired>,
    writer: Arc<AtomicBool>,
) {
    let mut lease = Lease {
        class: gateway_class.clone(),
        holder: node_name,
        observed: None,
        renewed: None,
    };
    let mut next_renew = Instant::now();
    let mut differ = Differ::default();
    loop {
        if Instant::now() >= next_renew {
            let elected = lease.step(&client).await;
            // Newly elected: compare everything (another writer wrote meanwhile).
            if !writer.swap(elected, Ordering::Relaxed) {
                differ.reset();
            }
            next_renew = Instant::now() + RENEW_EVERY;
        }
        if writer.load(Ordering::Relaxed) {
            // The shared pair, not a copy of its statuses (thousands of them for as many routes).
            let d = desired.borrow_and_update().clone();
            let updates = differ.diff(&d);
            for batch in updates.chunks(BATCH) {
                if let Err(e) = client.update_status(batch.to_vec()).await {
                    tracing::warn!(error = %e, "status update failed");
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), desired.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::DesiredStatus;
    use serde_json::{Value, json};

    fn route(name: &str) -> ObjectKey {
        ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", "ns", name)
    }

    fn object(uid: &str, status: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"uid": uid}, "status": status}))
    }

    fn desired(uid: &str, status: Value) -> DesiredStatus {
        DesiredStatus {
            status: Arc::new(status),
            generation: 1,
            uid: uid.into(),
        }
    }

    fn targets(updates: &[pb::StatusUpdate]) -> Vec<String> {
        updates
            .iter()
            .map(|u| u.target.as_ref().unwrap().name.clone())
            .collect()
    }

    #[test]
    fn the_diff_writes_what_differs_and_compares_again_only_what_changed() {
        let mut snap = Snapshot::default();
        snap.objects
            .insert(route("a"), object("ua", json!({"x": 1})));
        snap.objects
            .insert(route("b"), object("ub", json!({"x": 1})));
        snap.objects
            .insert(route("c"), object("uc", json!({"x": 1})));
        let mut want = Statuses::new();
        want.insert(Arc::new(route("a")), desired("ua", json!({"x": 1})));
        want.insert(Arc::new(route("b")), desired("ub", json!({"x": 2})));
        // Replaced since it was compiled: not written.
        want.insert(Arc::new(route("c")), desired("old", json!({"x": 2})));
        // Gone from the store: nothing to write.
        want.insert(Arc::new(route("d")), desired("ud", json!({"x": 2})));
        let pair =
            |snap: &Snapshot, want: &Statuses| Arc::new((Arc::new(snap.clone()), want.clone()));
        let mut differ = Differ::default();
        assert_eq!(targets(&differ.diff(&pair(&snap, &want))), ["b"]);
        // The write failed: still different, still written.
        assert_eq!(targets(&differ.diff(&pair(&snap, &want))), ["b"]);

        // The committed status of `a` changes (another writer), `b`'s write lands: `a` is compared
        // again and written back; `b` agrees.
        snap.objects
            .insert(route("a"), object("ua", json!({"x": 9})));
        snap.objects
            .insert(route("b"), object("ub", json!({"x": 2})));
        assert_eq!(targets(&differ.diff(&pair(&snap, &want))), ["a"]);
        // The desired status of `b` changes: `b` is compared again.
        want.insert(Arc::new(route("b")), desired("ub", json!({"x": 3})));
        assert_eq!(targets(&differ.diff(&pair(&snap, &want))), ["a", "b"]);
        // Elected anew: everything is compared again.
        differ.reset();
        assert_eq!(targets(&differ.diff(&pair(&snap, &want))), ["a", "b"]);
    }
}
