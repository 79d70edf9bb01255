//! The Raft transport over tonic: openraft's `RaftNetwork` on the client side (JSON-encoded openraft
//! messages in a `RaftPayload`) and a cache of one mutual-TLS HTTP/2 channel per peer, shared with request
//! forwarding. A commit notice (an AppendEntries that only moves the commit index over a log the
//! member has confirmed) is sent without holding the replication stream for its answer, and only if
//! no other AppendEntries has carried its commit index within [`NOTICE_DELAY`].

use gw_client::{Dialer, Expect, MAX_APPLY_BYTES, MAX_MESSAGE_BYTES, Security};
use gw_proto::RaftPayload;
use gw_proto::raft_client::RaftClient;
use gw_store::types::{LogId, Member, NodeId, TypeConfig, Vote};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// One lazily connected channel per (address, member expected there), dialed with this member's own
/// certificate from its own listen address.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<(String, u64), Channel>>>,
    dialer: Dialer,
}

impl Channels {
    /// Channels whose connections leave from `listen`'s address (unless it is unspecified: on a
    /// multi-homed host, peers see connections come from the address they know).
    pub fn new(security: Security, listen: std::net::SocketAddr) -> Channels {
        let ip = listen.ip();
        Channels {
            inner: Arc::default(),
            dialer: Dialer::new(security)
                .source((!ip.is_unspecified()).then_some(ip))
                .connect_timeout(Duration::from_millis(500))
                .keep_alive(Duration::from_secs(5)),
        }
    }

    /// A channel to member `id` at `addr`: its certificate must name that member.
    pub fn get(&self, addr: &str, id: u64) -> Result<Channel, gw_client::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (addr.to_string(), id);
        if let Some(c) = map.get(&k) {
            return Ok(c.clone());
        }
        let channel = self.dialer.clone().expect(Expect::Member(id)).lazy(addr)?;
        map.insert(k, channel.clone());
        Ok(channel)
    }

    /// Connects to `addr` now and checks that member `id` answers there (a handshake only).
    pub async fn probe(&self, addr: &str, id: u64) -> Result<(), gw_client::Error> {
        self.dialer
            .clone()
            .expect(Expect::Member(id))
            .connect(addr)
            .await
            .map(drop)
    }
}

/// Creates a connection object per target member.
#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerConnection {
            peer: Peer {
                target,
                addr: node.raft_addr().to_string(),
                channels: self.channels.clone(),
            },
            seen: Seen::default(),
            notices: Arc::default(),
        }
    }
}

/// A connection to one member. openraft keeps one per replication stream (and makes a new one for
/// each leadership check), and waits for each call's answer before the next call on it.
pub struct PeerConnection {
    peer: Peer,
    seen: Seen,
    notices: Arc<Mutex<Notices>>,
}

/// How long a commit notice waits for the next AppendEntries to carry its commit index instead. When
/// writes come one after another, the next one's entries follow the commit within a fraction of a
/// millisecond and tell the member the same thing: waiting spares a call (and its wake-ups on both
/// sides) per write. A member learns a commit at most this much later when nothing follows.
const NOTICE_DELAY: Duration = Duration::from_millis(1);

/// The commit notices of one connection: at most one waiting (the newest), at most one on the way.
#[derive(Default)]
struct Notices {
    /// The newest notice neither sent nor carried by a later call.
    pending: Option<(AppendEntriesRequest<TypeConfig>, RPCOption)>,
    /// Whether a task is sending them.
    sending: bool,
}

impl Notices {
    /// Queues `rpc`, replacing an older notice; true if a sender task must be started.
    fn queue(&mut self, rpc: AppendEntriesRequest<TypeConfig>, option: RPCOption) -> bool {
        self.pending = Some((rpc, option));
        !std::mem::replace(&mut self.sending, true)
    }

    /// A call telling the member `commit` is being sent: a waiting notice of no newer commit goes.
    fn carried(&mut self, commit: Option<LogId>) {
        if self
            .pending
            .as_ref()
            .is_some_and(|(n, _)| n.leader_commit <= commit)
        {
            self.pending = None;
        }
    }

    /// The notice to send next; `None` (and the sender stops) if there is none.
    fn next(&mut self) -> Option<(AppendEntriesRequest<TypeConfig>, RPCOption)> {
        let next = self.pending.take();
        self.sending = next.is_some();
        next
    }
}

/// What one connection has sent a member and heard back.
#[derive(Default)]
struct Seen {
    /// The last AppendEntries the member answered with success on this connection: the vote it
    /// carried and the log id the member's log then matched up to.
    confirmed: Option<(Vote, Option<LogId>)>,
    /// The highest commit index sent on this connection.
    told_commit: Option<LogId>,
}

impl Seen {
    /// Whether `rpc` carries nothing but a newer commit index, on top of the log this connection has
    /// seen the member confirm, under the same vote. (A leadership check is never one: openraft makes
    /// a new connection for each, which has confirmed nothing.) Records what it tells.
    fn commit_notice(&mut self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        let notice = rpc.entries.is_empty()
            && rpc.leader_commit > self.told_commit
            && self.confirmed.as_ref() == Some(&(rpc.vote, rpc.prev_log_id));
        self.told_commit = self.told_commit.max(rpc.leader_commit);
        notice
    }

    /// Records the member's answer to `rpc`.
    fn answered(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        answer: Option<&AppendEntriesResponse<NodeId>>,
    ) {
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        self.confirmed = match answer {
            Some(AppendEntriesResponse::Success) => Some((rpc.vote, last)),
            Some(AppendEntriesResponse::PartialSuccess(matching)) => Some((rpc.vote, *matching)),
            _ => None,
        };
    }
}

fn lock(notices: &Mutex<Notices>) -> std::sync::MutexGuard<'_, Notices> {
    notices.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a member's Raft transport is, and how to reach it.
#[derive(Clone)]
struct Peer {
    target: NodeId,
    addr: String,
    channels: Channels,
}

/// The most bytes of entries one AppendEntries carries when it carries several (openraft 0.9 gives the
/// call one heartbeat interval, including the follower's sync).
const APPEND_BUDGET_BYTES: usize = MAX_APPLY_BYTES;

/// Which Raft RPC to call.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    PreVote,
}

impl Peer {
    /// Sends one openraft request and decodes the remote `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        entries: u64,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channels
            .get(&self.addr, self.target)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if entries > 1 && data.len() > APPEND_BUDGET_BYTES {
            // Too many (big) entries for one call to finish within its heartbeat: openraft sends
            // fewer next time. One entry always goes (an apply is at most MAX_APPLY_BYTES).
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(
                    (entries * APPEND_BUDGET_BYTES as u64 / data.len() as u64)
                        .clamp(1, entries - 1),
                ),
            ));
        }
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
            Rpc::PreVote => client.pre_vote(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        if self.seen.commit_notice(&rpc) {
            // It only tells the member a new commit index, at a point of its log it has already
            // confirmed to this leader, so the answer can teach the leader nothing it needs: no log
            // position changes, and a higher vote will answer the next call. openraft 0.9 waits for
            // it all the same before sending the next entries, which made applies sent back to back
            // cost two round trips to the quorum (an entry, then its commit notice) instead of one.
            // So it goes in the background, and the leader is answered at once.
            let start = lock(&self.notices).queue(rpc, option);
            if start {
                let (peer, notices) = (self.peer.clone(), self.notices.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(NOTICE_DELAY).await;
                        let Some((rpc, option)) = lock(&notices).next() else {
                            return;
                        };
                        let answer: Result<AppendEntriesResponse<NodeId>, _> = peer
                            .call::<_, _, Infallible>(Rpc::AppendEntries, &rpc, 0, &option)
                            .await;
                        if let Err(e) = answer {
                            tracing::debug!(target = peer.target, error = %e, "a commit notice failed");
                        }
                    }
                });
            }
            return Ok(AppendEntriesResponse::Success);
        }
        lock(&self.notices).carried(rpc.leader_commit);
        let answer = self
            .peer
            .call(Rpc::AppendEntries, &rpc, entries, &option)
            .await;
        self.seen.answered(&rpc, answer.as_ref().ok());
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.seen.confirmed = None;
        self.peer.call(Rpc::InstallSnapshot, &rpc, 0, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.peer.call(Rpc::Vote, &rpc, 0, &option).await
    }
}

/// Asks member `target` at `addr` for its pre-vote (`crate::prevote`), waiting at most `timeout`.
pub async fn pre_vote(
    channels: &Channels,
    target: NodeId,
    addr: &str,
    ask: &crate::prevote::PreVote,
    timeout: Duration,
) -> Result<crate::prevote::Answer, String> {
    let peer = Peer {
        target,
        addr: addr.to_string(),
        channels: channels.clone(),
    };
    peer.call::<_, _, Infallible>(Rpc::PreVote, ask, 0, &RPCOption::new(timeout))
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn append(
        vote: Vote,
        prev: u64,
        entries: &[u64],
        commit: u64,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(prev)),
            entries: entries
                .iter()
                .map(|i| Entry {
                    log_id: log_id(*i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    #[test]
    fn only_a_newer_commit_on_a_confirmed_log_under_the_same_vote_is_a_commit_notice() {
        let vote = Vote::new_committed(2, 1);
        let mut seen = Seen::default();
        // A new connection (a leadership check) has confirmed nothing.
        assert!(!seen.commit_notice(&append(vote, 4, &[], 4)));
        let entries = append(vote, 4, &[5, 6], 4);
        assert!(!seen.commit_notice(&entries));
        seen.answered(&entries, Some(&AppendEntriesResponse::Success));
        // The commit of 6, told at 6: a notice; told again (a heartbeat): a real call.
        assert!(seen.commit_notice(&append(vote, 6, &[], 6)));
        assert!(!seen.commit_notice(&append(vote, 6, &[], 6)));
        // Not at the confirmed point, or under another vote.
        assert!(!seen.commit_notice(&append(vote, 5, &[], 7)));
        assert!(!seen.commit_notice(&append(Vote::new_committed(3, 1), 6, &[], 8)));
        // A refusal (or no answer) forgets what was confirmed.
        let next = append(vote, 6, &[7], 6);
        seen.answered(&next, Some(&AppendEntriesResponse::Conflict));
        assert!(!seen.commit_notice(&append(vote, 7, &[], 9)));
        seen.answered(
            &next,
            Some(&AppendEntriesResponse::PartialSuccess(Some(log_id(7)))),
        );
        assert!(seen.commit_notice(&append(vote, 7, &[], 10)));
        seen.answered(&next, None);
        assert!(!seen.commit_notice(&append(vote, 7, &[], 11)));
    }

    #[test]
    fn a_waiting_commit_notice_is_replaced_by_a_newer_one_and_dropped_once_a_call_carries_its_commit()
     {
        let vote = Vote::new_committed(2, 1);
        let option = || RPCOption::new(Duration::from_secs(1));
        let mut notices = Notices::default();
        assert!(
            notices.queue(append(vote, 6, &[], 5), option()),
            "starts a sender"
        );
        assert!(
            !notices.queue(append(vote, 6, &[], 6), option()),
            "one sender"
        );
        // A call telling an older commit leaves it; one telling its commit carries it.
        notices.carried(Some(log_id(5)));
        assert!(notices.pending.is_some());
        notices.carried(Some(log_id(6)));
        assert!(
            notices.next().is_none(),
            "nothing left to send: the sender stops"
        );
        assert!(
            notices.queue(append(vote, 7, &[], 7), option()),
            "a new sender"
        );
        let (sent, _) = notices.next().expect("the newest notice");
        assert_eq!(sent.leader_commit, Some(log_id(7)));
        assert!(notices.sending, "until it finds nothing left");
        assert!(notices.next().is_none());
        assert!(!notices.sending);
    }
}
