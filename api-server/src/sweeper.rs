//! Session expiry, enforced by the cluster: while this member leads, it looks for session entries that
//! are due (idle or absolute timeout passed) or purgeable, and proposes their expiry. The state machine
//! decides again at committed time, so a touch that commits first keeps the session alive.

use crate::node::{Node, now_ms};
use gw_model::affinity::{KIND, SessionEntry};
use gw_model::kinds::GW_GROUP;
use gw_store::types::{Op, Txn};
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks for expired sessions: expiry lands at most this late.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Expiries proposed per transaction.
const SWEEP_BATCH: usize = 1000;

pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.raft.metrics().borrow().current_leader != Some(node.id) {
            continue;
        }
        let now = now_ms();
        let due: Vec<Op> = node.store.read(|a| {
            a.state
                .list(GW_GROUP, KIND, "")
                .filter_map(|(_, o)| SessionEntry::from_object(o))
                .filter(|e| {
                    e.status.purgeable(&e.spec, now) || (!e.expired() && e.status.due(&e.spec, now))
                })
                .take(SWEEP_BATCH)
                .map(|e| Op::SessionExpire {
                    key: e.key(),
                    evict: false,
                })
                .collect()
        });
        if due.is_empty() {
            continue;
        }
        if let Err(e) = node
            .propose(Txn {
                time_ms: now,
                ops: due,
            })
            .await
        {
            tracing::debug!(error = %e, "session expiry not proposed");
        }
    }
}
