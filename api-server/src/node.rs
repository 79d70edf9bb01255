//! A running store member: its Raft instance, its storage, and the operations the services build on
//! (proposing transactions, linearizable read barriers, leader discovery).

use crate::auth::{Auth, ON_BEHALF_OF};
use crate::config::ServerConfig;
use crate::errors::ApiError;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::network::Channels;
use gw_client::{Client, Identity};
use gw_proto as pb;
use gw_store::storage::{LogStore, StoreHandle};
use gw_store::types::{Command, LogId, Member, NodeId, Raft, Response, Txn, TxnOutcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

/// Marks a request that a member forwarded to the leader, so that it is never forwarded twice.
const FORWARDED: &str = "x-gw-forwarded";

/// How long a request waits for a leader to be elected before failing as unavailable.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a follower waits to apply up to a read index.
const READ_INDEX_WAIT: Duration = Duration::from_secs(5);
/// How long a caller waits for its write to commit.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub id: NodeId,
    /// How this member is reached (API, Raft transport) and its region.
    pub member: Member,
    pub raft: Raft,
    /// The Raft log (its last entry decides pre-votes: `crate::prevote`).
    pub log: LogStore,
    pub store: StoreHandle,
    pub channels: Channels,
    /// Who is calling, and whether they may.
    pub auth: Auth,
    pub config: ServerConfig,
    pub proposer: Proposer,
    pub read_index: ReadIndexRounds,
    pub metrics: Arc<Metrics>,
}

/// What a read index round gives the reads that share it: the log id they must see applied, or why
/// leadership could not be confirmed.
type ReadIndex = Result<Option<LogId>, String>;

/// The leader's read indexes (Raft §8: confirm leadership with a quorum, then read at the commit
/// index), one round of heartbeats for every read waiting when the round starts. A read always joins
/// a round that starts after it arrived, so the quorum it is confirmed by was contacted after it began.
/// Up to [`ROUNDS_IN_FLIGHT`] rounds run at once: a read arriving while fewer run starts one at once
/// (with one at a time, a read arriving mid-round waited for that round and then its own: two round
/// trips over a WAN instead of one); otherwise it waits for the next round to start. With 64 reads in
/// flight, that is one round of heartbeats per batch instead of one per read.
#[derive(Clone)]
pub struct ReadIndexRounds {
    /// One round: confirm leadership, give the read index.
    round: Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ReadIndex> + Send>> + Send + Sync>,
    rounds: Arc<std::sync::Mutex<Rounds>>,
}

/// Leadership confirmations running at once, at most.
const ROUNDS_IN_FLIGHT: usize = 4;

#[derive(Default)]
struct Rounds {
    /// The reads waiting for the next round to start.
    waiting: Vec<oneshot::Sender<ReadIndex>>,
    /// Rounds running.
    running: usize,
}

impl ReadIndexRounds {
    pub fn new(raft: Raft) -> Self {
        Self::with_round(move || {
            let raft = raft.clone();
            Box::pin(async move {
                raft.get_read_log_id()
                    .await
                    .map(|(read, _)| read)
                    .map_err(|e| e.to_string())
            })
        })
    }

    fn with_round(
        round: impl Fn() -> Pin<Box<dyn Future<Output = ReadIndex> + Send>> + Send + Sync + 'static,
    ) -> Self {
        ReadIndexRounds {
            round: Arc::new(round),
            rounds: Arc::default(),
        }
    }

    /// The log id a read that arrives now must see applied, confirmed by a round that starts after now.
    pub async fn read_log_id(&self) -> ReadIndex {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.lock();
            rounds.waiting.push(tx);
            let start = rounds.running < ROUNDS_IN_FLIGHT;
            rounds.running += usize::from(start);
            start
        };
        if start {
            let rounds = self.clone();
            tokio::spawn(async move { rounds.run().await });
        }
        rx.await
            .unwrap_or_else(|_| Err("the read index round stopped".into()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs rounds until no read is waiting.
    async fn run(&self) {
        loop {
            let batch = {
                let mut rounds = self.lock();
                if rounds.waiting.is_empty() {
                    rounds.running -= 1;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let index = (self.round)().await;
            for read in batch {
                let _ = read.send(index.clone());
            }
        }
    }
}

/// Transactions waiting to be proposed, each with where its result goes.
type Pending = (Txn, oneshot::Sender<Result<TxnOutcome, ApiError>>);

/// Most transactions proposed in one log entry.
const MAX_BATCH: usize = 256;
/// Log entries being replicated at once: while they are, new transactions queue up and the next entry
/// carries all of them (adaptive batching: no waiting when the store is idle).
const IN_FLIGHT_ENTRIES: usize = 2;

/// Batches the transactions that arrive together into one `Command::Txns` entry.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Proposer {
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_ENTRIES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let raft = raft.clone();
                tokio::spawn(async move {
                    let (txns, waiters): (Vec<Txn>, Vec<_>) = batch.into_iter().unzip();
                    let n = txns.len();
                    let results: Vec<Result<TxnOutcome, ApiError>> = match raft
                        .client_write(Command::Txns(txns))
                        .await
                    {
                        Ok(resp) => match resp.data {
                            Response::Txns(rs) if rs.len() == n => {
                                rs.into_iter().map(|r| r.map_err(ApiError::from)).collect()
                            }
                            _ => (0..n)
                                .map(|_| Err(ApiError::Internal("malformed batch result".into())))
                                .collect(),
                        },
                        Err(e) => {
                            let e = ApiError::from(e);
                            (0..n).map(|_| Err(e.clone())).collect()
                        }
                    };
                    for (w, r) in waiters.into_iter().zip(results) {
                        let _ = w.send(r);
                    }
                    drop(slot);
                });
            }
        });
        Proposer { tx }
    }
}

/// Where a write goes.
pub enum Route {
    Local,
    Leader(NodeId, Member),
}

/// The wall clock, read at the edge: it only seeds `Txn::time_ms`; the state machine makes committed time
/// monotonic.
pub use gw_client::clock::now_ms;

impl Node {
    /// The current leader, waiting up to `LEADER_WAIT` for one to be elected.
    pub async fn leader(&self) -> Result<(NodeId, Member), ApiError> {
        let find = |m: &openraft::RaftMetrics<NodeId, Member>| {
            m.current_leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .cloned()
                    .map(|n| (l, n))
            })
        };
        if let Some(l) = find(&self.raft.metrics().borrow()) {
            return Ok(l);
        }
        let m = self
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| find(m).is_some(), "leader known")
            .await
            .map_err(|_| ApiError::NoLeader)?;
        find(&m).ok_or(ApiError::NoLeader)
    }

    pub async fn route(&self) -> Result<Route, ApiError> {
        let (id, member) = self.leader().await?;
        Ok(if id == self.id {
            Route::Local
        } else {
            Route::Leader(id, member)
        })
    }

    /// Runs a write of `who` on the leader: `local` when this member leads, else the request is
    /// forwarded (once) to the leader with `forward`, on behalf of `who`. While leadership moves it
    /// tries again, three times in all.
    pub async fn on_leader<Req, Resp, L, LF, F, FF>(
        &self,
        who: &Identity,
        request: tonic::Request<Req>,
        local: L,
        forward: F,
    ) -> Result<tonic::Response<Resp>, Status>
    where
        Req: Clone,
        L: Fn(Arc<Req>) -> LF,
        LF: Future<Output = Result<Resp, ApiError>>,
        F: FnOnce(Channel, tonic::Request<Req>) -> FF,
        FF: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let req = Arc::new(request.into_inner());
        let mut result = Err(ApiError::NoLeader);
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match self.route().await {
                Err(e) => {
                    result = Err(e);
                    break;
                }
                Ok(Route::Local) => {
                    result = local(req.clone()).await;
                    if !matches!(result, Err(ApiError::NotLeader)) {
                        break;
                    }
                }
                Ok(Route::Leader(leader, member)) => {
                    if forwarded {
                        result = Err(ApiError::NotLeader);
                        break;
                    }
                    let channel = self
                        .channels
                        .get(&member.addr, leader)
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    let mut fwd = tonic::Request::new(Arc::unwrap_or_clone(req));
                    let on_behalf = who
                        .uri()
                        .parse()
                        .map_err(|_| Status::internal("an identity is not a metadata value"))?;
                    fwd.metadata_mut()
                        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                    fwd.metadata_mut().insert(ON_BEHALF_OF, on_behalf);
                    return forward(channel, fwd).await;
                }
            }
        }
        result.map(tonic::Response::new).map_err(Status::from)
    }

    /// Proposes a transaction on this member, which must be the leader. `NotLeader` means leadership
    /// moved: the caller forwards.
    #[allow(clippy::disallowed_methods)] // runtime: the proposal's latency, for the metrics
    pub async fn propose(&self, txn: Txn) -> Result<TxnOutcome, ApiError> {
        let (tx, rx) = oneshot::channel();
        let closed = || ApiError::Unavailable("the member is shutting down".into());
        if self.config.unsafe_early_ack {
            let outcome = self.store.read(|a| a.state.preview(&txn))?;
            self.proposer
                .tx
                .send((txn, tx))
                .await
                .map_err(|_| closed())?;
            return Ok(outcome);
        }
        let start = std::time::Instant::now();
        self.proposer
            .tx
            .send((txn, tx))
            .await
            .map_err(|_| closed())?;
        let (outcome, result) = match tokio::time::timeout(COMMIT_WAIT, rx).await {
            Ok(Ok(Ok(o))) => ("committed", Ok(o)),
            Ok(Ok(Err(e))) => ("refused", Err(e)),
            Ok(Err(_)) => ("unknown", Err(closed())),
            // A leader cut off from its quorum does not know it yet: rather than hold the caller for
            // ever, say that the write may or may not commit.
            Err(_) => (
                "unknown",
                Err(ApiError::Unavailable(format!(
                    "the write was proposed but not committed within {COMMIT_WAIT:?} (no quorum reachable?): it may still commit"
                ))),
            ),
        };
        self.metrics
            .proposals
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if outcome == "committed" {
            self.metrics
                .proposal_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        result
    }

    /// Makes the next local read linearizable (Raft §8, ReadIndex): the leader confirms its leadership
    /// with a quorum and waits to apply up to its commit index; a follower obtains that index from the
    /// leader and waits until it has applied it.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        if self.config.unsafe_stale_reads {
            return Ok(());
        }
        let (leader, member) = self.leader().await?;
        if leader == self.id {
            let index = self
                .read_index
                .read_log_id()
                .await
                .map_err(|e| ApiError::Unavailable(format!("read index: {e}")))?;
            return self.applied(index.map_or(0, |l| l.index)).await;
        }
        let channel = self
            .channels
            .get(&member.addr, leader)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut client = Client::cluster(channel);
        let mut req = tonic::Request::new(pb::ReadIndexRequest {});
        req.set_timeout(READ_INDEX_WAIT);
        let index = client
            .read_index(req)
            .await
            .map_err(|s| {
                ApiError::Unavailable(format!("read index from leader {leader}: {}", s.message()))
            })?
            .into_inner()
            .index;
        self.applied(index).await
    }

    /// Waits until this member has applied the entry at `index`.
    async fn applied(&self, index: u64) -> Result<(), ApiError> {
        self.raft
            .wait(Some(READ_INDEX_WAIT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(format!("waiting to apply read index {index}: {e}")))
    }

    /// This member's own report.
    pub fn member_status(&self) -> pb::MemberStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let (revision, compact, hash) = self.store.read(|a| {
            (
                a.state.revision(),
                a.state.compact_revision(),
                a.state.hash(),
            )
        });
        pb::MemberStatus {
            id: self.id,
            addr: self.member.addr.clone(),
            region: self.member.region.clone(),
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader.unwrap_or(0),
            applied_revision: revision,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            compact_revision: compact,
            state_hash: format!("{hash:016x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Yields until `started` reaches `n`.
    async fn rounds_reach(started: &AtomicU64, n: u64) {
        while started.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn reads_share_rounds_a_few_run_at_once_and_a_read_never_joins_a_round_already_running() {
        let started = Arc::new(AtomicU64::new(0));
        // Each round gives its own number as the read index, once the test lets it end (rounds end
        // in the order they started: the semaphore is fair).
        let gate = Arc::new(Semaphore::new(0));
        let rounds = {
            let (started, gate) = (started.clone(), gate.clone());
            ReadIndexRounds::with_round(move || {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                let gate = gate.clone();
                Box::pin(async move {
                    gate.acquire().await.expect("open").forget();
                    Ok(Some(openraft::testing::log_id(1, 1, n)))
                })
            })
        };
        let read = |r: &ReadIndexRounds| {
            let r = r.clone();
            tokio::spawn(async move { r.read_log_id().await.map(|l| l.map(|l| l.index)) })
        };
        let settle = || async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        // Each read finding fewer than ROUNDS_IN_FLIGHT rounds running starts one at once.
        let k = ROUNDS_IN_FLIGHT as u64;
        let mut alone = Vec::new();
        for n in 1..=k {
            alone.push(read(&rounds));
            rounds_reach(&started, n).await;
        }
        // All running: the next reads wait for a round to start, and share it.
        let waiting: Vec<_> = (0..3).map(|_| read(&rounds)).collect();
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), k, "{k} rounds at most");
        gate.add_permits(1);
        let mut alone = alone.into_iter();
        assert_eq!(alone.next().unwrap().await.unwrap(), Ok(Some(1)));
        // Round 1's end starts the next round, for the waiting reads.
        rounds_reach(&started, k + 1).await;
        gate.add_permits(ROUNDS_IN_FLIGHT - 1);
        for (n, r) in (2..).zip(alone) {
            assert_eq!(r.await.unwrap(), Ok(Some(n)));
        }
        gate.add_permits(1);
        for r in waiting {
            assert_eq!(
                r.await.unwrap(),
                Ok(Some(k + 1)),
                "not a round already running when the read came"
            );
        }
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            k + 1,
            "three reads, one round"
        );
        // Idle again: the next read starts a round of its own.
        let last = read(&rounds);
        rounds_reach(&started, k + 2).await;
        gate.add_permits(1);
        assert_eq!(last.await.unwrap(), Ok(Some(k + 2)));
    }
}
