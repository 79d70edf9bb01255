//! Writing status back through the store, by one node only: the nodes serving a GatewayClass elect a
//! writer with a lease object (`StatusWriterLease` named after the class, gw.dev, updated with
//! optimistic concurrency, like a Kubernetes Lease; not watched by nodes, so renewing it recompiles
//! nothing). A holder renews it; another node takes it over once it has not
//! changed for a whole lease period of that node's own (monotonic) clock. The writer compares the
//! compiled statuses with the committed ones and writes only the differences; since the compiler keeps
//! `lastTransitionTime` for unchanged conditions, writing converges.

#![allow(clippy::disallowed_methods)] // runtime: the lease is timed on this node's monotonic clock

use crate::compile::DesiredStatus;
use crate::snapshot::Snapshot;
use gw_client::{Client, clock, object_ref};
use gw_model::ObjectKey;
use gw_model::registry::{self, StatusWriterLease};
use gw_proto as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A lease not renewed for this long may be taken over.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Most status updates per request.
const BATCH: usize = 100;

pub type Statuses = BTreeMap<ObjectKey, DesiredStatus>;

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

/// The status updates that make the committed statuses equal the desired ones.
pub fn diff(desired: &Statuses, snap: &Snapshot) -> Vec<pb::StatusUpdate> {
    desired
        .iter()
        .filter_map(|(key, d)| {
            let current = snap.objects.get(key)?;
            if current.get("status") == Some(&d.status)
                || current["metadata"]["uid"] != d.uid.as_str()
            {
                return None;
            }
            Some(pb::StatusUpdate {
                target: Some(object_ref(key)),
                status_json: d.status.to_string(),
                expected_uid: d.uid.clone(),
                expected_generation: d.generation,
                expected_resource_version: 0,
            })
        })
        .collect()
}

/// Runs the election and, while elected, writes statuses whenever they differ.
pub async fn run(
    client: Client,
    node_name: String,
    gateway_class: String,
    mut desired: watch::Receiver<Arc<(Arc<Snapshot>, Statuses)>>,
    writer: Arc<AtomicBool>,
) {
    let mut lease = Lease {
        class: gateway_class.clone(),
        holder: node_name,
        observed: None,
        renewed: None,
    };
    let mut next_renew = Instant::now();
    loop {
        if Instant::now() >= next_renew {
            writer.store(lease.step(&client).await, Ordering::Relaxed);
            next_renew = Instant::now() + RENEW_EVERY;
        }
        if writer.load(Ordering::Relaxed) {
            // The shared pair, not a copy of its statuses (thousands of them for as many routes).
            let d = desired.borrow_and_update().clone();
            let updates = diff(&d.1, &d.0);
            for batch in updates.chunks(BATCH) {
                if let Err(e) = client.update_status(batch.to_vec()).await {
                    tracing::warn!(error = %e, "status update failed");
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), desired.changed()).await;
    }
}
