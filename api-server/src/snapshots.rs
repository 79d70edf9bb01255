//! When this member builds a snapshot. openraft's own rule (every `--snapshot-logs` entries) costs a
//! snapshot's whole encoding per so many entries however large the state is: with a million session
//! entries (a snapshot of ~840 MB of JSON) and a few hundred small entries a second (config writes,
//! session activity), that was one multi-second encoding every minute or so, and the writes around
//! each one waited longer (bench/results/sessions-activity-20261201.md). Here a snapshot is due once
//! there are `--snapshot-logs` entries since the last one *and* the log since it holds at least a
//! quarter of its bytes: encoding costs at most four bytes per byte written to the log, and a
//! restart replays about a quarter of a snapshot's bytes after loading it (up to twice that after
//! restarts: the log written before this member started is not counted).

use crate::node::Node;
use std::sync::Arc;

/// A snapshot waits for the log since the last one to hold 1 / `GROWTH` of its bytes.
pub const GROWTH: u64 = 4;

/// Whether a snapshot is due: `entries` and `bytes` appended since the last one (of
/// `snapshot_bytes`, 0 without one), at least `min_entries` entries between snapshots.
pub fn due(entries: u64, bytes: u64, min_entries: u64, snapshot_bytes: u64) -> bool {
    entries >= min_entries && bytes.saturating_mul(GROWTH) >= snapshot_bytes
}

/// How long a trigger is left to take effect before it is sent again (while a snapshot is being
/// built, openraft ignores triggers; one lost with a failed build is sent again after this).
const RETRIGGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Triggers snapshots as they come due, as entries are applied; until the member stops.
#[allow(clippy::disallowed_methods)] // runtime: when the last trigger was sent
pub async fn run(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    // The snapshot (its last index) a trigger was sent after, and when.
    let mut sent: Option<(u64, std::time::Instant)> = None;
    loop {
        let (entries, covered) = {
            let m = metrics.borrow_and_update();
            let applied = m.last_applied.map_or(0, |l| l.index + 1);
            let covered = m.snapshot.map_or(0, |l| l.index + 1);
            (applied.saturating_sub(covered), covered)
        };
        let (bytes, snapshot_bytes) = node.store.log_growth();
        let waiting = sent.is_some_and(|(after, at)| after == covered && at.elapsed() < RETRIGGER);
        if !waiting && due(entries, bytes, node.config.snapshot_logs, snapshot_bytes) {
            if node.raft.trigger().snapshot().await.is_err() {
                return;
            }
            sent = Some((covered, std::time::Instant::now()));
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_its_entries_and_for_a_quarter_of_the_last_ones_bytes() {
        // No snapshot yet: entries alone.
        assert!(!due(4_999, 10, 5_000, 0));
        assert!(due(5_000, 10, 5_000, 0));
        // A small state: the entries decide (a quarter of 40 kB is soon written).
        assert!(due(5_000, 10_000, 5_000, 40_000));
        assert!(!due(4_999, 10_000, 5_000, 40_000));
        // A large one (840 MB): thousands of entries of a few hundred bytes are not enough.
        assert!(!due(50_000, 20_000_000, 5_000, 840_000_000));
        assert!(due(50_000, 210_000_000, 5_000, 840_000_000));
    }
}
