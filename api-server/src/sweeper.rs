//! Session expiry, enforced by the cluster: while this member leads, it takes the session entries that
//! are due (idle or absolute timeout passed) or purgeable from the state's sweep index, and proposes
//! their expiry. The state machine decides again at committed time, so a touch that commits first
//! keeps the session alive.

use crate::node::{Node, now_ms};
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
                .sessions_to_sweep(now, SWEEP_BATCH)
                .into_iter()
                .map(|key| Op::SessionExpire { key, evict: false })
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
