//! Session persistence (route rule `sessionPersistence`, BackendLBPolicy), consistent across nodes.
//!
//! - A new session gets a backend by the rule's weighted choice and a signed token (cookie or header)
//!   naming the session, its scope and the backend's stable identity. No store write is on its path:
//!   its first activity is recorded in the next batch.
//! - A request with a valid token goes where the replicated affinity table says (the committed
//!   failover, if any), else where the token says, even to a backend whose weight is now 0.
//! - When that backend is gone, this node proposes a replacement with a first-writer-wins
//!   compare-and-set and follows whatever committed, its own pick or another node's.
//! - Expiry (idle and absolute timeouts) is decided by the store at committed time; an expired entry
//!   no longer binds and its client starts a new session.

pub mod token;

use crate::compile::Snapshot;
use crate::node::now_ms;
use crate::store_client::{Client, ClientError};
use crate::table::{BackendTarget, Backends};
use crate::watcher::WatchHealth;
use arc_swap::ArcSwapOption;
use gw_model::ObjectKey;
use gw_model::affinity::{self, SessionEntry};
use gw_proto as pb;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use token::{Keys, Token};
use tokio::sync::watch;

/// The cookie or header name when `sessionName` is not given.
pub const DEFAULT_NAME: &str = "gw-session";
/// A token whose session has no entry yet binds while it is younger than this (its first activity
/// is on its way to the store). Kept well inside the store's creation window.
const GRACE_MS: u64 = affinity::CREATE_WINDOW_MS / 2;
/// How often activity is sent to the store.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(250);
/// The affinity view is followed only while its watch has had a bookmark this recently (one comes
/// every 500 ms, each sent only once the member has confirmed it is current). Past it, a session's
/// entry is read from the store (linearizably) before the session is followed.
const FRESH_MS: u64 = 1_000;
/// Each store call on a request's path gives a member this long before trying the next (a paused
/// member accepts connections and never answers).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// How the token travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// `Set-Cookie` on the response that starts the session; the `Cookie` header after that.
    Cookie {
        name: String,
        path: String,
        /// Only for `lifetimeType: Permanent` (the absolute timeout).
        max_age_s: Option<u64>,
    },
    /// A response header that the client sends back as a request header of the same name.
    Header(HeaderName),
}

/// The session persistence of one route rule (or of the BackendLBPolicy that applies to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// `HTTPRoute/ns/name/rules/N` or `BackendLBPolicy/ns/name`: two scopes never share a session.
    pub scope: String,
    /// Where the sessions' entries live (the route's or the policy's namespace).
    pub namespace: String,
    pub carrier: Carrier,
    pub idle_timeout_ms: Option<u64>,
    pub absolute_timeout_ms: Option<u64>,
}

impl SessionConfig {
    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        match &self.carrier {
            Carrier::Header(name) => headers.get(name)?.to_str().ok(),
            Carrier::Cookie { name, .. } => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim_matches('"')),
        }
    }

    /// The response header that hands `token` to the client.
    fn issue(&self, token: &str, https: bool) -> Option<(HeaderName, HeaderValue)> {
        match &self.carrier {
            Carrier::Header(name) => Some((name.clone(), HeaderValue::from_str(token).ok()?)),
            Carrier::Cookie {
                name,
                path,
                max_age_s,
            } => {
                let mut c = format!("{name}={token}; Path={path}; HttpOnly");
                if let Some(s) = max_age_s {
                    c.push_str(&format!("; Max-Age={s}"));
                }
                if https {
                    c.push_str("; Secure");
                }
                Some((SET_COOKIE, HeaderValue::from_str(&c).ok()?))
            }
        }
    }
}

/// Where a request goes: `backends.entries[entry]`, that upstream's endpoint `endpoint`.
#[derive(Debug)]
pub struct Chosen {
    pub entry: usize,
    pub endpoint: usize,
    /// The token header of a new session, to add to the response.
    pub issue: Option<(HeaderName, HeaderValue)>,
    /// The session the request belongs to.
    pub token: Token,
}

pub enum Selection {
    Chosen(Chosen),
    /// The rule has nothing to choose from (or no key to sign with): route as without persistence.
    Fallback,
    /// The session's committed backend is not known to this node yet.
    Unavailable(String),
}

/// What the table says about a token's session.
enum Binding {
    Bound(String),
    /// Expired, unknown past the grace period, or of another scope: start a new session.
    Gone,
}

pub struct Sessions {
    keys: ArcSwapOption<Keys>,
    /// The replicated affinity table, as this node has it, and how recently its watch spoke.
    view: watch::Receiver<Arc<Snapshot>>,
    view_health: Arc<WatchHealth>,
    started: Instant,
    /// Activity (and new sessions) not yet sent to the store.
    pending: Mutex<HashMap<ObjectKey, pb::Session>>,
    client: Arc<Client>,
    /// The null control (see `NodeConfig::unsafe_local_failover`).
    local_failover: bool,
}

impl Sessions {
    pub fn new(
        view: (watch::Receiver<Arc<Snapshot>>, Arc<WatchHealth>, Instant),
        client: Arc<Client>,
        local_failover: bool,
    ) -> Sessions {
        let (view, view_health, started) = view;
        Sessions {
            keys: ArcSwapOption::empty(),
            view,
            view_health,
            started,
            pending: Mutex::new(HashMap::new()),
            client,
            local_failover,
        }
    }

    pub fn set_keys(&self, keys: Option<Arc<Keys>>) {
        self.keys.store(keys);
    }

    pub async fn select(
        &self,
        cfg: &SessionConfig,
        headers: &HeaderMap,
        backends: &Backends,
        https: bool,
    ) -> Selection {
        let Some(keys) = self.keys.load_full() else {
            return Selection::Fallback;
        };
        let token = cfg
            .token(headers)
            .and_then(|t| keys.verify(t))
            .filter(|t| t.scope == cfg.scope);
        if let Some(t) = token
            && let Binding::Bound(backend) = self.binding(cfg, &t).await
        {
            if let Some((entry, endpoint)) = find(backends, &backend) {
                self.touch(cfg, &t);
                return Selection::Chosen(Chosen {
                    entry,
                    endpoint,
                    issue: None,
                    token: t,
                });
            }
            let Some((e, p)) = fresh(backends, &backend) else {
                return Selection::Fallback;
            };
            if self.local_failover {
                return Selection::Chosen(Chosen {
                    entry: e,
                    endpoint: p,
                    issue: None,
                    token: t,
                });
            }
            match self
                .failover(cfg, &t, &backend, &identity(backends, e, p))
                .await
            {
                Ok(Some(entry)) => {
                    let Some((entry_idx, endpoint)) = find(backends, &entry.spec.backend) else {
                        return Selection::Unavailable(format!(
                            "the session's committed backend {} is not known to this node yet",
                            entry.spec.backend
                        ));
                    };
                    return Selection::Chosen(Chosen {
                        entry: entry_idx,
                        endpoint,
                        issue: None,
                        token: t,
                    });
                }
                // Expired meanwhile: a new session.
                Ok(None) => {}
                Err(e) => {
                    // No failover can be committed from here: rather than serve this session from a
                    // backend no other node would follow, start a new one.
                    tracing::warn!(error = %e, scope = %cfg.scope, "session failover not committed");
                }
            }
        }
        let Some((entry, endpoint)) = fresh(backends, "") else {
            return Selection::Fallback;
        };
        let t = Token {
            session: new_session_id(),
            scope: cfg.scope.clone(),
            backend: identity(backends, entry, endpoint),
            issued_ms: now_ms(),
        };
        self.touch(cfg, &t);
        Selection::Chosen(Chosen {
            entry,
            endpoint,
            issue: cfg.issue(&keys.issue(&t), https),
            token: t,
        })
    }

    /// The session's backend refused the connection: propose a replacement (first writer wins), so
    /// that the session's next request, on any node, goes where the cluster agrees.
    pub fn backend_failed(
        self: &Arc<Self>,
        cfg: &Arc<SessionConfig>,
        chosen: &Chosen,
        backends: &Backends,
    ) {
        let from = identity(backends, chosen.entry, chosen.endpoint);
        let Some((e, p)) = fresh(backends, &from) else {
            return;
        };
        if self.local_failover {
            return;
        }
        let to = identity(backends, e, p);
        let (me, cfg, t) = (self.clone(), cfg.clone(), chosen.token.clone());
        tokio::spawn(async move {
            if let Err(e) = me.failover(&cfg, &t, &from, &to).await {
                tracing::warn!(error = %e, scope = %cfg.scope, "session failover not committed");
            }
        });
    }

    async fn binding(&self, cfg: &SessionConfig, t: &Token) -> Binding {
        let key = affinity::key(&cfg.namespace, &t.session);
        let from_view = || {
            self.view
                .borrow()
                .objects
                .get(&key)
                .and_then(|o| SessionEntry::from_object(o))
        };
        let stored = if self.view_fresh() {
            from_view()
        } else {
            // A stale view (its watch broke, the node just started) may miss a failover or an
            // expiry: ask the store. If the store cannot answer, the binding cannot be confirmed:
            // another node may have moved the session meanwhile, so it is not followed (agreement
            // before stickiness) and the client gets a new session.
            match self.read_entry(&key).await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(error = %e, "session binding cannot be confirmed; starting a new session");
                    return Binding::Gone;
                }
            }
        };
        match stored {
            Some(e) if e.expired() || e.spec.scope != t.scope => Binding::Gone,
            Some(e) => Binding::Bound(e.spec.backend),
            None => {
                let age = now_ms().saturating_sub(t.issued_ms);
                let pending = self.pending_has(&key);
                let too_old = cfg.absolute_timeout_ms.is_some_and(|a| age > a);
                if !too_old && (pending || age < GRACE_MS) {
                    Binding::Bound(t.backend.clone())
                } else {
                    Binding::Gone
                }
            }
        }
    }

    fn view_fresh(&self) -> bool {
        let contact = self.view_health.last_bookmark_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        contact > 0 && now.saturating_sub(contact) <= FRESH_MS
    }

    /// A session's entry, read linearizably from the store (`None`: it has none).
    async fn read_entry(&self, key: &ObjectKey) -> Result<Option<SessionEntry>, String> {
        let target = pb::ObjectRef {
            group: key.group.clone(),
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let res = self
            .client
            .call(|c| {
                let mut req = tonic::Request::new(pb::GetRequest {
                    target: Some(target.clone()),
                    options: None,
                });
                req.set_timeout(CALL_TIMEOUT);
                async move { Client::config(c).get(req).await.map(|r| r.into_inner()) }
            })
            .await;
        match res {
            Ok((r, _)) => Ok(serde_json::from_str(&r.object_json)
                .ok()
                .and_then(|o| SessionEntry::from_object(&o))),
            Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn pending_has(&self, key: &ObjectKey) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Records activity, sent with the next batch.
    fn touch(&self, cfg: &SessionConfig, t: &Token) {
        let key = affinity::key(&cfg.namespace, &t.session);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .entry(key)
            .or_insert_with(|| session_message(cfg, t));
    }

    /// Proposes `to` as the replacement of `from` and returns the committed entry (`None`: expired).
    async fn failover(
        &self,
        cfg: &SessionConfig,
        t: &Token,
        from: &str,
        to: &str,
    ) -> Result<Option<SessionEntry>, String> {
        let mut session = session_message(cfg, t);
        session.backend = to.to_string();
        let req = pb::FailoverRequest {
            session: Some(session),
            from_backend: from.to_string(),
        };
        let (resp, _) = self
            .client
            .call(|c| {
                let mut req = tonic::Request::new(req.clone());
                req.set_timeout(CALL_TIMEOUT * 2);
                async move {
                    pb::affinity_client::AffinityClient::new(c)
                        .failover(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        if resp.entry_json.is_empty() {
            return Ok(None);
        }
        let obj: serde_json::Value =
            serde_json::from_str(&resp.entry_json).map_err(|e| e.to_string())?;
        Ok(SessionEntry::from_object(&obj))
    }

    /// Sends the recorded activity in batches, forever. A batch that fails is merged back.
    pub async fn run_batches(self: Arc<Self>) {
        let mut tick = tokio::time::interval(BATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                continue;
            }
            let req = pb::TouchRequest {
                sessions: batch.values().cloned().collect(),
            };
            let sent = self
                .client
                .call(|c| {
                    let mut req = tonic::Request::new(req.clone());
                    req.set_timeout(CALL_TIMEOUT * 4);
                    async move { pb::affinity_client::AffinityClient::new(c).touch(req).await }
                })
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, sessions = batch.len(), "session activity not recorded; will retry");
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (k, s) in batch {
                    pending.entry(k).or_insert(s);
                }
            }
        }
    }

    /// Follows the session keys in the config snapshots; creates them when a route or policy uses
    /// session persistence and the store has none yet.
    pub async fn follow_keys(self: Arc<Self>, mut config: watch::Receiver<Arc<Snapshot>>) {
        let mut last_rv = None;
        loop {
            let snap = config.borrow_and_update().clone();
            let secret = snap.objects.get(&ObjectKey::new(
                "",
                "Secret",
                token::KEYS_NAMESPACE,
                token::KEYS_SECRET,
            ));
            match secret {
                Some(s) => {
                    let rv = s["metadata"]["resourceVersion"].clone();
                    if last_rv.as_ref() != Some(&rv) {
                        let keys = keys_from_secret(s);
                        if keys.is_none() {
                            tracing::error!(
                                "Secret {}/{} has no usable `current` key",
                                token::KEYS_NAMESPACE,
                                token::KEYS_SECRET
                            );
                        }
                        self.set_keys(keys.map(Arc::new));
                        last_rv = Some(rv);
                    }
                }
                None if snap.revision > 0 && uses_sessions(&snap) => {
                    if let Err(e) = self.create_keys().await {
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

    async fn create_keys(&self) -> Result<(), String> {
        match store_new_key(&self.client, None, "0", "gw-node").await {
            Ok(_) => Ok(()),
            // Another node created them first: the watch brings them.
            Err(ClientError::Status(s)) if s.code() == tonic::Code::Aborted => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Writes a new signing key to the store, keeping `previous` (the key it replaces) accepted. With
/// `resource_version` "0" it only creates the Secret; otherwise it replaces that version of it.
pub async fn store_new_key(
    client: &Client,
    previous: Option<&str>,
    resource_version: &str,
    source: &str,
) -> Result<pb::WriteResponse, ClientError> {
    let doc = key_secret(&token::new_key_data(), previous, resource_version);
    let req = pb::ApplyRequest {
        documents: vec![pb::Document {
            json: doc.to_string(),
            source: source.into(),
            index: 1,
        }],
        dry_run: false,
    };
    let (resp, _) = client
        .call(|c| {
            let req = req.clone();
            async move { Client::config(c).apply(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    Ok(resp)
}

/// The key Secret as a document: `current` signs, `previous` is still accepted. `resource_version`
/// "0" creates it only if it does not exist; otherwise it is the version being replaced.
fn key_secret(current: &str, previous: Option<&str>, resource_version: &str) -> serde_json::Value {
    let mut data = serde_json::json!({"current": current});
    if let Some(p) = previous {
        data["previous"] = serde_json::json!(p);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token::KEYS_SECRET, "namespace": token::KEYS_NAMESPACE, "resourceVersion": resource_version},
        "type": "Opaque",
        "data": data,
    })
}

fn keys_from_secret(s: &serde_json::Value) -> Option<Keys> {
    use base64::Engine;
    let decode = |field: &str| {
        s["data"][field]
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .filter(|k| !k.is_empty())
    };
    let current = decode("current")?;
    Some(Keys::new(&current, decode("previous").as_deref()))
}

/// Whether any route rule or BackendLBPolicy asks for session persistence.
fn uses_sessions(snap: &Snapshot) -> bool {
    snap.objects.iter().any(|(k, o)| match k.kind.as_str() {
        "HTTPRoute" | "GRPCRoute" => o["spec"]["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| !r["sessionPersistence"].is_null())),
        "BackendLBPolicy" => !o["spec"]["sessionPersistence"].is_null(),
        _ => false,
    })
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

fn new_session_id() -> String {
    use rand::RngExt;
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The entry and endpoint of the backend with this identity, whatever its weight.
fn find(backends: &Backends, identity: &str) -> Option<(usize, usize)> {
    backends
        .entries
        .iter()
        .enumerate()
        .find_map(|(i, e)| match &e.target {
            BackendTarget::Upstream(u) => u.find(identity).map(|p| (i, p)),
            BackendTarget::Invalid(_) => None,
        })
}

/// The rule's weighted choice among the backends that have a ready endpoint other than `exclude`
/// (`None`: none has; let the normal path answer).
fn fresh(backends: &Backends, exclude: &str) -> Option<(usize, usize)> {
    (0..8)
        .filter_map(|_| weighted(backends))
        .find(|&(e, p)| identity(backends, e, p) != exclude)
}

fn weighted(backends: &Backends) -> Option<(usize, usize)> {
    use rand::RngExt;
    let ready = |e: &crate::table::BackendEntry| match &e.target {
        BackendTarget::Upstream(u) if !u.endpoints.is_empty() => e.weight,
        _ => 0,
    };
    let total: u64 = backends.entries.iter().map(ready).sum();
    if total == 0 {
        return None;
    }
    let mut r = rand::rng().random_range(0..total);
    let i = backends.entries.iter().position(|e| {
        let w = ready(e);
        if r < w {
            return true;
        }
        r -= w;
        false
    })?;
    match &backends.entries[i].target {
        BackendTarget::Upstream(u) => u.pick_index().map(|p| (i, p)),
        BackendTarget::Invalid(_) => None,
    }
}

fn identity(backends: &Backends, entry: usize, endpoint: usize) -> String {
    match &backends.entries[entry].target {
        BackendTarget::Upstream(u) => u.identities[endpoint].clone(),
        BackendTarget::Invalid(_) => String::new(),
    }
}

#[cfg(test)]
mod tests;
