//! Pre-vote (Raft thesis §9.6), which openraft 0.9 lacks. A voter that has heard from no leader for
//! its election timeout first asks the other voters whether they would vote for it at its next term,
//! and starts an election (`Trigger::elect`) only if a majority would; openraft's own election on
//! timeout is off (`Config::enable_elect`). A voter would if it leads nothing, has not heard from a
//! leader within the leader lease, and the candidate's log is at least as up to date as its own: the
//! checks openraft makes of a real vote, without raising anybody's term.
//!
//! Why: a member cut off from the others (a partition, its region cut off, a follower isolated for
//! the catchup fault) raised its term at every election timeout, and when it could reach them again,
//! its higher term deposed the leader they had had all along; the store then took no write until a
//! new leader was elected (6 s in one of CI's power-loss,catchup runs). With pre-vote, a member that
//! cannot reach a majority never raises its term, and a member that rejoins follows the leader.
//!
//! The timing is Raft's: a voter asks once it has heard nothing for its election timeout (drawn
//! between `--election-timeout-ms` and twice it) from its leader, or from the candidate it last voted
//! for; a round that finds no majority is tried again after another timeout. openraft 0.9's own timer
//! waited the leader lease (twice the minimum timeout) on top for a voter that had followed a leader:
//! 4.5 to 6 s with the defaults. The lease, during which a voter that has heard from its leader
//! refuses to vote, is now one minimum timeout (`ServerConfig::raft_config`).

use crate::network::pre_vote;
use crate::node::Node;
use gw_store::types::{LogId, NodeId, Vote};
use openraft::ServerState;
use openraft::storage::RaftLogStorage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Would you vote for `candidate`, whose log ends at `last_log_id`?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVote {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// The answer to a [`PreVote`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Answer {
    pub granted: bool,
}

/// What decides a member's pre-votes, given and asked.
#[derive(Debug, Clone, Default)]
struct View {
    vote: Vote,
    leader: bool,
    /// Whether its vote is for a leader it has heard from (committed), not only for a candidate.
    following: bool,
    /// How long ago its vote was last refreshed (by its leader's messages, or by voting); `None`:
    /// not since it started.
    quiet: Option<Duration>,
    /// The voter sets a majority must be found in (two while the membership changes).
    quorums: Vec<Vec<NodeId>>,
    /// Every voter's Raft address.
    addrs: BTreeMap<NodeId, String>,
}

impl View {
    async fn of(node: &Node) -> Result<View, String> {
        node.raft
            .with_raft_state(|st| {
                let membership = st.membership_state.effective();
                View {
                    vote: *st.vote_ref(),
                    leader: st.server_state == ServerState::Leader,
                    following: st.vote_ref().is_committed(),
                    quiet: st.vote_last_modified().map(|t| t.elapsed()),
                    quorums: membership
                        .membership()
                        .get_joint_config()
                        .iter()
                        .map(|c| c.iter().copied().collect())
                        .collect(),
                    addrs: membership
                        .voter_ids()
                        .filter_map(|id| {
                            Some((id, membership.get_node(&id)?.raft_addr().to_string()))
                        })
                        .collect(),
                }
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn is_voter(&self, id: NodeId) -> bool {
        self.addrs.contains_key(&id)
    }
}

/// Whether a member that sees `me`, its log ending at `my_log`, would vote for `ask`'s candidate
/// (openraft's checks of a vote request: the leader lease, then the logs).
fn would_vote(me: &View, my_log: Option<LogId>, ask: &PreVote, lease: Duration) -> bool {
    let lease_held = me.following && me.quiet.is_some_and(|q| q <= lease);
    !me.leader && !lease_held && ask.last_log_id >= my_log
}

/// Whether `granted` (the candidate included) holds a majority of every voter set in `quorums`.
fn majority(quorums: &[Vec<NodeId>], granted: &[NodeId]) -> bool {
    quorums
        .iter()
        .all(|q| q.iter().filter(|v| granted.contains(v)).count() * 2 > q.len())
}

/// Whether a voter seeing `view` is due to ask for pre-votes: quiet for its election `timeout`, and
/// `timeout` since its last round.
fn due(view: &View, timeout: Duration, since_round: Duration) -> bool {
    !view.leader && view.quiet.is_none_or(|q| q >= timeout) && since_round >= timeout
}

/// Whether a voter that saw `before` when its round began, and sees `after` once a majority granted
/// it, may still start its election: its vote unchanged (it has voted for no other candidate, heard of
/// no new leader meanwhile) and still due. Without this, two voters whose timers fired together could
/// each grant the other's round, one win and the other depose it at once (a 10 s failover seen).
fn still_due(before: &View, after: &View, timeout: Duration) -> bool {
    after.vote == before.vote && due(after, timeout, Duration::MAX)
}

/// The bounds election timeouts are drawn between; the lower is also the leader lease.
fn timeouts(node: &Node) -> (Duration, Duration) {
    let min = Duration::from_millis(node.config.election_timeout_ms);
    (min, min * 2)
}

/// This member's answer to a pre-vote.
pub async fn answer(node: &Node, ask: &PreVote) -> Result<Answer, String> {
    let view = View::of(node).await?;
    let mut log = node.log.clone();
    let my_log = log
        .get_log_state()
        .await
        .map_err(|e| e.to_string())?
        .last_log_id;
    let (lease, _) = timeouts(node);
    let granted = would_vote(&view, my_log, ask, lease);
    tracing::debug!(candidate = ask.candidate, granted, "pre-vote");
    Ok(Answer { granted })
}

/// Asks every other voter for its pre-vote; whether a majority granted it (the round ends as soon as
/// one has, or after `patience`).
async fn canvass(node: &Node, view: &View, patience: Duration) -> bool {
    use futures::StreamExt;
    let mut log = node.log.clone();
    let Ok(state) = log.get_log_state().await else {
        return false;
    };
    let ask = PreVote {
        candidate: node.id,
        last_log_id: state.last_log_id,
    };
    let mut granted = vec![node.id];
    if majority(&view.quorums, &granted) {
        return true;
    }
    let mut answers: futures::stream::FuturesUnordered<_> = view
        .addrs
        .iter()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, addr)| {
            let ask = ask.clone();
            async move {
                let answer = pre_vote(&node.channels, *id, addr, &ask, patience).await;
                (*id, answer)
            }
        })
        .collect();
    let round = async {
        while let Some((id, answer)) = answers.next().await {
            match answer {
                Ok(Answer { granted: true }) => {
                    granted.push(id);
                    if majority(&view.quorums, &granted) {
                        return true;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(member = id, error = %e, "no pre-vote"),
            }
        }
        false
    };
    tokio::time::timeout(patience, round).await.unwrap_or(false)
}

/// A duration drawn uniformly from `[min, max)`.
fn draw(min: Duration, max: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_or(0, |()| u64::from_le_bytes(b));
    let span = (max - min).as_micros().max(1) as u64;
    min + Duration::from_micros(r % span)
}

/// Elects this member when it is due and a majority would vote for it; until Raft shuts down.
#[allow(clippy::disallowed_methods)] // runtime: the election timer
pub async fn run(node: Arc<Node>) {
    let (min, max) = timeouts(&node);
    let tick = min / 20;
    let mut timeout = draw(min, max);
    // The first round waits a timeout from the start.
    let mut last_round = std::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let view = match View::of(&node).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "the election timer stops: Raft is shut down");
                return;
            }
        };
        if !view.is_voter(node.id) || !due(&view, timeout, last_round.elapsed()) {
            continue;
        }
        last_round = std::time::Instant::now();
        let used = std::mem::replace(&mut timeout, draw(min, max));
        if !canvass(&node, &view, min).await {
            tracing::debug!("no majority would vote for this member: no election");
            continue;
        }
        match View::of(&node).await {
            Ok(after) if still_due(&view, &after, used) => {
                tracing::info!("a majority would vote for this member: starting an election");
                if node.raft.trigger().elect().await.is_err() {
                    return;
                }
            }
            Ok(_) => tracing::info!("its vote changed during the pre-vote round: no election"),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn ask(last: Option<LogId>) -> PreVote {
        PreVote {
            candidate: 2,
            last_log_id: last,
        }
    }

    const LEASE: Duration = Duration::from_millis(1500);

    fn follower(quiet_ms: Option<u64>) -> View {
        View {
            following: true,
            quiet: quiet_ms.map(Duration::from_millis),
            ..View::default()
        }
    }

    #[test]
    fn a_member_that_hears_from_its_leader_or_leads_refuses() {
        // Heard from its leader 100 ms ago: the candidate would depose a live leader.
        assert!(!would_vote(
            &follower(Some(100)),
            log(2, 10),
            &ask(log(2, 10)),
            LEASE
        ));
        let leader = View {
            leader: true,
            following: true,
            quiet: Some(Duration::from_secs(60)),
            ..View::default()
        };
        assert!(!would_vote(&leader, log(2, 10), &ask(log(2, 20)), LEASE));
    }

    #[test]
    fn a_member_whose_leader_is_silent_grants_a_candidate_as_up_to_date() {
        for me in [
            follower(Some(1501)),
            follower(None),
            // Voted for a candidate (not following a leader): no lease holds it.
            View {
                quiet: Some(Duration::from_millis(10)),
                ..View::default()
            },
        ] {
            assert!(would_vote(&me, log(2, 10), &ask(log(2, 10)), LEASE));
            assert!(would_vote(&me, log(2, 10), &ask(log(3, 4)), LEASE));
            // Behind: a shorter log of the same term, or a log of an older term however long.
            assert!(!would_vote(&me, log(2, 10), &ask(log(2, 9)), LEASE));
            assert!(!would_vote(&me, log(3, 4), &ask(log(2, 10)), LEASE));
            assert!(!would_vote(&me, log(2, 10), &ask(None), LEASE));
        }
    }

    #[test]
    fn a_round_granted_after_the_vote_changed_starts_no_election() {
        let t = Duration::from_millis(2000);
        let before = follower(Some(2500));
        // Nothing happened meanwhile: the round's answers took 100 ms.
        let after = follower(Some(2600));
        assert!(still_due(&before, &after, t));
        // It voted for another candidate meanwhile, or heard from a new leader.
        let voted = View {
            vote: Vote::new(3, 3),
            following: false,
            quiet: Some(Duration::from_millis(50)),
            ..View::default()
        };
        assert!(!still_due(&before, &voted, t));
        let led = View {
            vote: Vote::new_committed(3, 3),
            quiet: Some(Duration::from_millis(50)),
            ..follower(None)
        };
        assert!(!still_due(&before, &led, t));
        // Its leader, heard from again (same vote, quiet again).
        assert!(!still_due(&before, &follower(Some(10)), t));
    }

    #[test]
    fn a_majority_is_needed_in_every_voter_set() {
        let one = vec![vec![1, 2, 3]];
        assert!(!majority(&one, &[1]));
        assert!(majority(&one, &[1, 3]));
        assert!(majority(&[vec![1]], &[1]));
        // While 3 is replaced by 4: a majority of both {1,2,3} and {1,2,4}.
        let joint = vec![vec![1, 2, 3], vec![1, 2, 4]];
        assert!(!majority(&joint, &[1, 3]));
        assert!(majority(&joint, &[1, 2]));
        assert!(majority(&joint, &[1, 3, 4]));
    }

    #[test]
    fn a_voter_asks_after_its_timeout_and_not_again_before_another() {
        let t = Duration::from_millis(2000);
        let long = Duration::from_secs(60);
        // Whether it followed a leader or voted for a candidate, or heard nothing since it started.
        for following in [true, false] {
            let quiet = |ms| View {
                following,
                quiet: Some(Duration::from_millis(ms)),
                ..View::default()
            };
            assert!(!due(&quiet(1999), t, long));
            assert!(due(&quiet(2000), t, long));
        }
        assert!(due(&follower(None), t, long));
        // A round that found no majority is not tried again before another timeout.
        assert!(!due(&follower(None), t, Duration::from_millis(1999)));
        let leader = View {
            leader: true,
            ..follower(None)
        };
        assert!(!due(&leader, t, long));
    }
}
