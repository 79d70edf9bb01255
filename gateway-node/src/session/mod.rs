//! Session persistence (route rule `sessionPersistence`, BackendLBPolicy), consistent across nodes: the
//! runtime around the pure decision (`decide`). It reads the clock and draws randomness, looks the
//! session up in this node's copy of the replicated affinity table (or, when that copy may be stale,
//! in the store), proposes failovers, records activity in batches and keeps the token keys.
//!
//! - A new session gets a backend by the rule's weighted choice and a sealed token (cookie or header)
//!   naming the session and, opaque to the client, its scope and the backend's stable identity. No
//!   store write is on its path, and none follows it: the session's entry is made when the client
//!   comes back with its token (so clients that never do, e.g. a flood of cookie-less requests, leave
//!   nothing in the table), and at most `--session-creations-per-second` entries a second are
//!   proposed by one node (past it, a session binds by its token alone until a later request).
//! - A request with a valid token goes where the replicated affinity table says (the committed
//!   failover, if any), else where the token says, even to a backend whose weight is now 0.
//! - When that backend is gone, this node proposes a replacement with a first-writer-wins
//!   compare-and-set and follows whatever committed, its own pick or another node's.
//! - Expiry (idle and absolute timeouts) is decided by the store at committed time; an expired entry
//!   no longer binds and its client starts a new session.

pub mod decide;

use crate::metrics::{DecisionLabels, Metrics};
use crate::rng;
use crate::snapshot::Snapshot;
use crate::table::{Backends, SessionConfig};
use crate::watcher::WatchHealth;
use arc_swap::ArcSwapOption;
use decide::{Decision, Inputs, Known, decide, identity};
use gw_client::{Client, Error, clock};
use gw_model::ObjectKey;
use gw_model::affinity::token::{KEYS_NAMESPACE, KEYS_SECRET, Keys, Token};
use gw_model::affinity::{self, BATCH_INTERVAL, SessionEntry, TOUCHES_PER_CALL};
use gw_proto as pb;
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The affinity view is followed only while its watch has had a bookmark this recently (one comes
/// every 500 ms, each sent only once the member has confirmed it is current). Past it, a session's
/// entry is read from the store (linearizably) before the session is followed.
const FRESH_MS: u64 = 1_000;
/// Each store call on a request's path gives a member this long before trying the next (a paused
/// member accepts connections and never answers), plus four times the longest round trip to a
/// member the locality prober measured (`--region`): across a WAN a write from a far region (to its
/// member, on to the leader, committed on a quorum) takes several round trips, and cutting it short
/// would only send it again elsewhere.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// After a store call on a request's path found no member able to answer (a region cut off, no
/// quorum), the calls of the next requests are not made until the affinity watch has a bookmark
/// again, or this long has passed: those requests start new sessions at once rather than each waiting
/// out the members' timeouts (over a WAN, seconds).
const UNREACHABLE_MS: u64 = 5_000;

/// Where a request goes: `backends.entries[entry]`, that upstream's endpoint `endpoint`.
#[derive(Debug)]
pub struct Chosen {
    pub entry: usize,
    pub endpoint: usize,
    /// The token header to add to the response: a new session's, or an updated one for a session
    /// that moved to another backend.
    pub issue: Option<(HeaderName, HeaderValue)>,
    /// The session the request belongs to.
    pub token: Token,
    /// How: `new`, `followed` (the node's view of the table), `confirmed` (followed after reading the
    /// store), `failed-over`.
    pub decision: &'static str,
}

pub enum Selection {
    Chosen(Chosen),
    /// The rule has nothing to choose from (or no key to seal tokens with): route as without persistence.
    Fallback,
    /// The session's committed backend is not known to this node yet.
    Unavailable(String),
}

pub struct Sessions {
    keys: ArcSwapOption<Keys>,
    /// The replicated affinity table, as this node has it, and how recently its watch spoke.
    view: watch::Receiver<Arc<Snapshot<SessionEntry>>>,
    view_health: Arc<WatchHealth>,
    started: Instant,
    /// Activity (and new sessions) not yet sent to the store.
    pending: Mutex<HashMap<ObjectKey, pb::Session>>,
    /// The store, for calls on a request's path (each member gets `call_timeout`).
    client: Client,
    /// The config watch's health: the round trips its locality prober measures.
    probes: Arc<WatchHealth>,
    /// New entries this node may propose in one second, and how many it has this second.
    creations: Mutex<Creations>,
    metrics: Arc<Metrics>,
    /// The `sessions_total` counter of each decision, looked up once (not per request).
    decisions: [(&'static str, Counter); 4],
    /// The null control (see `NodeConfig::unsafe_local_failover`).
    local_failover: bool,
    /// When (ms since `started`, plus 1) a store call on a request's path last found no member able
    /// to answer; 0: the last one did not (`on_path`).
    store_out_of_reach_at: AtomicU64,
}

/// How many session entries may be created, per node and second.
struct Creations {
    per_second: u64,
    second: u64,
    count: u64,
}

/// How a node runs sessions.
pub struct SessionOptions {
    /// Session entries this node proposes at most per second.
    pub creations_per_second: u64,
    /// The null control (see `NodeConfig::unsafe_local_failover`).
    pub local_failover: bool,
    /// The config watch's health, whose locality prober measures the round trips to the members.
    pub probes: Arc<WatchHealth>,
}

impl Sessions {
    pub fn new(
        view: (
            watch::Receiver<Arc<Snapshot<SessionEntry>>>,
            Arc<WatchHealth>,
            Instant,
        ),
        client: &Client,
        metrics: Arc<Metrics>,
        options: SessionOptions,
    ) -> Sessions {
        let (view, view_health, started) = view;
        Sessions {
            keys: ArcSwapOption::empty(),
            view,
            view_health,
            started,
            pending: Mutex::new(HashMap::new()),
            client: client.clone(),
            probes: options.probes,
            creations: Mutex::new(Creations {
                per_second: options.creations_per_second,
                second: 0,
                count: 0,
            }),
            decisions: ["new", "followed", "confirmed", "failed-over"].map(|decision| {
                let counter = metrics.sessions.get_or_create(&DecisionLabels { decision });
                (decision, counter.clone())
            }),
            metrics,
            local_failover: options.local_failover,
            store_out_of_reach_at: AtomicU64::new(0),
        }
    }

    /// Where a request of a rule with session persistence goes: the decision, with the store calls it
    /// asks for carried out (at most one read and one failover proposal).
    pub async fn select(
        &self,
        cfg: &SessionConfig,
        headers: &HeaderMap,
        backends: &Backends,
        https: bool,
    ) -> Selection {
        let token = |keys: &Keys| {
            cfg.token(headers)
                .and_then(|t| keys.verify(t))
                .filter(|t| t.scope == cfg.scope)
        };
        self.decide_for(cfg, token, backends, https, "").await
    }

    /// The choice `refused` made refused the request's connection (nothing was sent): where the
    /// request goes instead. A session that was bound fails over now (first writer wins; where no
    /// failover can be committed, it starts anew elsewhere), so that this request and the session's
    /// next ones, on any node, go where the cluster agrees; a session that was new starts on another
    /// backend.
    pub async fn reselect(
        &self,
        cfg: &SessionConfig,
        refused: &Chosen,
        backends: &Backends,
        https: bool,
    ) -> Selection {
        let token = (refused.decision != "new").then(|| refused.token.clone());
        let failed = identity(backends, refused.entry, refused.endpoint);
        self.decide_for(cfg, |_| token, backends, https, &failed)
            .await
    }

    /// `select` for the request's verified token (if any, from `token`), avoiding the backend
    /// `refused` (empty: none).
    async fn decide_for(
        &self,
        cfg: &SessionConfig,
        token: impl FnOnce(&Keys) -> Option<Token>,
        backends: &Backends,
        https: bool,
        refused: &str,
    ) -> Selection {
        let Some(keys) = self.keys.load_full() else {
            return Selection::Fallback;
        };
        let token = token(&keys);
        let key = token
            .as_ref()
            .map(|t| affinity::key(&cfg.namespace, &t.session));
        let mut known = match &key {
            Some(k) if self.view_fresh() => Known::Entry(self.in_view(k)),
            Some(_) => Known::Unconfirmed,
            None => Known::Entry(None),
        };
        // What the store was asked for on the way (for the decision's name).
        let mut asked = "followed";
        // Each store call is asked for at most once, so this ends within three rounds.
        for _ in 0..3 {
            let inputs = Inputs {
                cfg,
                token: token.as_ref(),
                known: &known,
                backends,
                now_ms: clock::now_ms(),
                local_failover: self.local_failover,
                refused,
            };
            match (decide(&inputs, &mut rng::draw), &token, &key) {
                (Decision::Confirm, _, Some(key)) => {
                    asked = "confirmed";
                    known = match self.on_path(self.read_entry(key)).await {
                        Ok(e) => Known::Entry(e),
                        Err(e) => {
                            if let Some(e) = e {
                                tracing::warn!(error = %e, "session binding cannot be confirmed; starting a new session");
                            }
                            Known::Unreachable
                        }
                    }
                }
                (Decision::ProposeFailover { from, to }, Some(t), _) => {
                    asked = "failed-over";
                    known = match self.on_path(self.failover(cfg, t, &from, &to)).await {
                        Ok(e) => Known::FailedOver(e),
                        Err(e) => {
                            // No failover can be committed from here: rather than serve this session
                            // from a backend no other node would follow, start a new one.
                            if let Some(e) = e {
                                tracing::warn!(error = %e, scope = %cfg.scope, "session failover not committed");
                            }
                            Known::FailoverFailed
                        }
                    }
                }
                (Decision::Follow { entry, endpoint }, Some(t), _) => {
                    // Without an entry, this touch creates it.
                    self.touch(cfg, t, known == Known::Entry(None));
                    // A session moved by a failover: the client's token is brought up to date (same
                    // session, same issue time), so that a node that finds no entry for it (expired
                    // early by a committed clock ahead of its own, or not yet in its view) binds it
                    // where it was last, not where it began.
                    let followed = identity(backends, entry, endpoint);
                    let (token, issue) = if followed == t.backend {
                        (t.clone(), None)
                    } else {
                        let moved = Token {
                            backend: followed,
                            ..t.clone()
                        };
                        let issue = cfg.issue(&keys.issue(&moved, rng::nonce()), https);
                        (moved, issue)
                    };
                    return self.chosen(Chosen {
                        entry,
                        endpoint,
                        issue,
                        token,
                        decision: asked,
                    });
                }
                (
                    Decision::New {
                        entry,
                        endpoint,
                        token,
                    },
                    _,
                    _,
                ) => {
                    return self.chosen(Chosen {
                        entry,
                        endpoint,
                        issue: cfg.issue(&keys.issue(&token, rng::nonce()), https),
                        token,
                        decision: "new",
                    });
                }
                (Decision::Unavailable(why), _, _) => return Selection::Unavailable(why),
                _ => return Selection::Fallback,
            }
        }
        Selection::Fallback
    }

    /// A choice made, counted by decision.
    fn chosen(&self, c: Chosen) -> Selection {
        if let Some((_, counter)) = self.decisions.iter().find(|(d, _)| *d == c.decision) {
            counter.inc();
        }
        Selection::Chosen(c)
    }

    /// How many entries this node's copy of the affinity table holds, and the revision it is at.
    pub fn view_size(&self) -> (usize, u64) {
        let view = self.view.borrow();
        (view.objects.len(), view.revision)
    }

    /// The affinity view's staleness: ms since its watch last had a bookmark (`None`: never).
    pub fn view_age_ms(&self) -> Option<u64> {
        let contact = self.view_health.last_bookmark_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        (contact > 0).then(|| now.saturating_sub(contact))
    }

    /// The store client for one call: the member the locality prober picked first (a call that
    /// failed over may have left the shared client on a member a region away), each member given
    /// `times` the call timeout.
    fn call_client(&self, times: u32) -> Client {
        let slowest = self.probes.slowest_probe_ms.load(Ordering::Relaxed);
        self.client
            .trying_first(self.probes.preferred())
            .with_call_timeout((CALL_TIMEOUT + Duration::from_millis(4 * slowest)) * times)
    }

    fn in_view(&self, key: &ObjectKey) -> Option<SessionEntry> {
        self.view
            .borrow()
            .objects
            .get(key)
            .map(|e| SessionEntry::clone(e))
    }

    fn view_fresh(&self) -> bool {
        self.view_age_ms().is_some_and(|age| age <= FRESH_MS)
    }

    /// A store call on a request's path (`call`), unless one found no member able to answer since the
    /// affinity watch's last bookmark (less than `UNREACHABLE_MS` ago): then it is not made
    /// (`Err(None)`), and its request goes on at once as if it had failed, instead of waiting out
    /// every member's timeout again. A bookmark (the store reachable and current again) or
    /// `UNREACHABLE_MS` ends that.
    async fn on_path<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Option<Error>> {
        // Ms since `started`, from 1 (0: no call has failed).
        let now = || self.started.elapsed().as_millis() as u64 + 1;
        let failed = self.store_out_of_reach_at.load(Ordering::Relaxed);
        if failed != 0
            && now() < failed + UNREACHABLE_MS
            && self.view_health.last_bookmark_ms.load(Ordering::Relaxed) < failed
        {
            self.metrics.session_store_calls_skipped.inc();
            return Err(None);
        }
        let result = call.await;
        let out_of_reach = matches!(
            result,
            Err(Error::Unavailable { .. } | Error::NoLeader { .. } | Error::OutcomeUnknown { .. })
        );
        self.store_out_of_reach_at
            .store(if out_of_reach { now() } else { 0 }, Ordering::Relaxed);
        result.map_err(Some)
    }

    /// A session's entry, read linearizably from the store (`None`: it has none).
    async fn read_entry(&self, key: &ObjectKey) -> Result<Option<SessionEntry>, Error> {
        Ok(self
            .call_client(1)
            .get_object(key)
            .await?
            .and_then(|o| SessionEntry::from_object(&o)))
    }

    /// Records activity, sent with the next batch; `creates`: the session has no entry yet, and this
    /// touch makes it (unless this node is past its creations for this second).
    fn touch(&self, cfg: &SessionConfig, t: &Token, creates: bool) {
        let key = affinity::key(&cfg.namespace, &t.session);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains_key(&key) {
            return;
        }
        if creates {
            let second = self.started.elapsed().as_secs();
            let mut c = self.creations.lock().unwrap_or_else(|p| p.into_inner());
            if c.second != second {
                (c.second, c.count) = (second, 0);
            }
            if c.count >= c.per_second {
                self.metrics.session_creations_deferred.inc();
                return;
            }
            c.count += 1;
            self.metrics.session_creations.inc();
        }
        pending.insert(key, session_message(cfg, t));
    }

    /// Proposes `to` as the replacement of `from` and returns the committed entry (`None`: expired).
    async fn failover(
        &self,
        cfg: &SessionConfig,
        t: &Token,
        from: &str,
        to: &str,
    ) -> Result<Option<SessionEntry>, Error> {
        let mut session = session_message(cfg, t);
        session.backend = to.to_string();
        let resp = self
            .call_client(1)
            .failover(pb::FailoverRequest {
                session: Some(session),
                from_backend: from.to_string(),
            })
            .await?;
        if resp.entry_json.is_empty() {
            return Ok(None);
        }
        Ok(serde_json::from_str(&resp.entry_json)
            .ok()
            .and_then(|o| SessionEntry::from_object(&o)))
    }

    /// Sends the recorded activity in batches, forever. A batch that fails is merged back.
    pub async fn run_batches(self: Arc<Self>) {
        let mut tick = tokio::time::interval(BATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            let batch: Vec<(ObjectKey, pb::Session)> = batch.into_iter().collect();
            for chunk in batch.chunks(TOUCHES_PER_CALL) {
                let sessions = chunk.iter().map(|(_, s)| s.clone()).collect();
                if let Err(e) = self.call_client(4).touch(sessions).await {
                    tracing::warn!(error = %e, sessions = chunk.len(), "session activity not recorded; will retry");
                    let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    for (k, s) in chunk {
                        pending.entry(k.clone()).or_insert_with(|| s.clone());
                    }
                }
            }
        }
    }

    /// Follows the session keys in the config snapshots; creates them when a route or policy uses
    /// session persistence and the store has none yet.
    pub async fn follow_keys(
        self: Arc<Self>,
        client: Client,
        mut config: watch::Receiver<Arc<Snapshot>>,
    ) {
        let keys_key = ObjectKey::new("", "Secret", KEYS_NAMESPACE, KEYS_SECRET);
        let mut last_rv = None;
        // The objects asking for sessions, followed through each snapshot's changes (thousands of
        // routes are not read again on every revision).
        let mut users = HashSet::new();
        let mut before = Arc::new(Snapshot::default());
        loop {
            let snap = config.borrow_and_update().clone();
            for (key, obj) in snap.changes(&before) {
                if obj.is_some_and(|o| asks_for_sessions(key, o)) {
                    users.insert(key.clone());
                } else {
                    users.remove(key);
                }
            }
            before = snap.clone();
            match snap.objects.get(&keys_key) {
                Some(s) => {
                    let rv = s["metadata"]["resourceVersion"].clone();
                    if last_rv.as_ref() != Some(&rv) {
                        let keys = Keys::from_secret(s);
                        if keys.is_none() {
                            tracing::error!(
                                "Secret {KEYS_NAMESPACE}/{KEYS_SECRET} has no usable `current` key"
                            );
                        }
                        self.keys.store(keys.map(Arc::new));
                        last_rv = Some(rv);
                    }
                }
                None if snap.revision > 0 && !users.is_empty() => {
                    // The leader makes them (once); the watch brings them.
                    if let Err(e) = client.ensure_keys().await {
                        tracing::warn!(error = %e, "cannot create the session keys yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
                None => {}
            }
            if config.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Whether an object is a route with a rule, or a BackendLBPolicy, that asks for session persistence.
fn asks_for_sessions(k: &ObjectKey, o: &serde_json::Value) -> bool {
    match k.kind.as_str() {
        "HTTPRoute" | "GRPCRoute" => o["spec"]["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| !r["sessionPersistence"].is_null())),
        "BackendLBPolicy" => !o["spec"]["sessionPersistence"].is_null(),
        _ => false,
    }
}

fn session_message(cfg: &SessionConfig, t: &Token) -> pb::Session {
    pb::Session {
        namespace: cfg.namespace.clone(),
        id: t.session.clone(),
        scope: t.scope.clone(),
        backend: t.backend.clone(),
        issued_ms: t.issued_ms,
        idle_timeout_ms: cfg.idle_timeout_ms,
        absolute_timeout_ms: cfg.absolute_timeout_ms,
    }
}
