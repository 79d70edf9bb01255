//! gw-client: the store client every part of gw uses (gwadm, gateway nodes, the conformance harness, the
//! fault-injection suite). It knows several members and tries them in turn: it sticks to the member that
//! answered last, moves on when one is unreachable or has no leader, and keeps trying for a while during
//! elections. Errors come back typed (`Error`), decoded once from the status and its `ErrorDetail`.

pub mod clock;
pub mod connect;
mod convert;
mod error;
pub mod kubeconfig;
pub mod locality;
#[cfg(feature = "pki")]
pub mod pki;
pub mod tls;

pub use connect::Dialer;
pub use convert::{MAX_APPLY_BYTES, MAX_MESSAGE_BYTES, key_of_ref, kind_ref, object_ref};
pub use error::{Error, FieldError, InvalidDocument};
pub use tls::{Expect, Identity, Security, TlsArgs, TlsFiles, TlsMaterial};

use gw_model::ObjectKey;
use gw_proto as pb;
use gw_proto::affinity_client::AffinityClient;
use gw_proto::cluster_client::ClusterClient;
use gw_proto::config_client::ConfigClient;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// Whether a call changes the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Objects per page of a list (`Client::list_paged`); members also end a page early by size, so a page
/// stays under the message limit whatever its objects weigh.
pub const LIST_PAGE: u32 = 500;

/// A client of the store. Cheap to clone: clones share the members' connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Deadline of each attempt of a call on one member (`None`: none).
    call_timeout: Option<Duration>,
    /// The member each call tries first (`None`: the last one that answered).
    first: Option<usize>,
}

struct Inner {
    servers: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    /// How long a call keeps retrying while no member can serve it (e.g. during a leader election).
    retry_for: Duration,
}

impl Client {
    /// `servers`: `HOST:PORT` entries (a comma-separated entry is split), dialed with `dialer`.
    pub fn new(servers: &[String], retry_for: Duration, dialer: &Dialer) -> Result<Client> {
        let servers: Vec<String> = servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(Error::Config(
                "no store member given (--server HOST:PORT or GW_SERVER)".into(),
            ));
        }
        let channels = servers
            .iter()
            .map(|s| dialer.lazy(s))
            .collect::<Result<_>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                servers,
                channels,
                current: AtomicUsize::new(0),
                retry_for,
            }),
            call_timeout: None,
            first: None,
        })
    }

    /// The same client whose calls give each member at most `timeout` (a paused member accepts
    /// connections and never answers) before trying the next.
    pub fn with_call_timeout(&self, timeout: Duration) -> Client {
        Client {
            call_timeout: Some(timeout),
            ..self.clone()
        }
    }

    /// The same client whose calls try member `first` (an index into `servers`) first, whichever
    /// member answered last (`None`: that one, as usual).
    pub fn trying_first(&self, first: Option<usize>) -> Client {
        Client {
            first: first.filter(|i| *i < self.inner.servers.len()),
            ..self.clone()
        }
    }

    pub fn config(channel: Channel) -> ConfigClient<Channel> {
        ConfigClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
    }

    pub fn affinity(channel: Channel) -> AffinityClient<Channel> {
        AffinityClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Makes member `i` (an index into `servers`) the one tried first.
    pub fn prefer(&self, i: usize) {
        if i < self.inner.servers.len() {
            self.inner.current.store(i, Ordering::Relaxed);
        }
    }

    /// Member `i`'s own status, asked of that member alone (once, with this client's deadline).
    pub async fn member_status_at(&self, i: usize) -> Result<pb::MemberStatus> {
        let channel = self
            .inner
            .channels
            .get(i)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no member {i}")))?;
        Client::cluster(channel)
            .member_status(self.request(pb::MemberStatusRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(Error::from)
    }

    /// The member tried first, then the others in order.
    fn order(&self) -> Vec<usize> {
        let n = self.inner.servers.len();
        let start = self
            .first
            .unwrap_or_else(|| self.inner.current.load(Ordering::Relaxed));
        (0..n).map(|i| (start + i) % n).collect()
    }

    /// A request carrying this client's per-call deadline.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.call_timeout {
            r.set_timeout(t);
        }
        r
    }

    /// Calls `f` (a read) on the members in turn until one answers with anything but "unavailable";
    /// while none can, keeps trying for the client's retry period (an election takes a second or two).
    /// Returns the answer and the index of the member that gave it.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<(T, usize)>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.attempt(Effect::Read, f).await
    }

    /// `call`, for a read or a write. A write that failed as unavailable after it was sent may have
    /// been carried out: it is tried again (applying the same documents again is idempotent, and a
    /// conditional write is refused rather than applied twice); if no member ever answers, or the
    /// retry is refused as a conflict or a missing object (perhaps because of the first attempt), the
    /// error is `OutcomeUnknown`, not a failure.
    #[allow(clippy::disallowed_methods)] // runtime: the retry deadline
    async fn attempt<T, F, Fut>(&self, effect: Effect, f: F) -> Result<(T, usize)>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.retry_for;
        let mut last = String::new();
        let mut no_leader = false;
        let mut maybe_applied = false;
        loop {
            for i in self.order() {
                match f(self.inner.channels[i].clone()).await {
                    Ok(v) => {
                        self.inner.current.store(i, Ordering::Relaxed);
                        return Ok((v, i));
                    }
                    Err(s) if Error::is_retryable(&s) => {
                        no_leader = Error::is_no_leader(&s);
                        maybe_applied |= effect == Effect::Write && !Error::was_not_sent(&s);
                        last = format!("{}: {}", self.inner.servers[i], s.message());
                    }
                    Err(s) => {
                        let e = Error::from(s);
                        // A retry refused as a conflict (or a delete as not found) may be refused
                        // because the first attempt was applied.
                        return Err(match e {
                            Error::Conflict { .. } | Error::NotFound { .. } if maybe_applied => {
                                Error::OutcomeUnknown {
                                    tried: self.inner.servers.join(", "),
                                    last: format!("{last}; then, retried: {e}"),
                                }
                            }
                            e => e,
                        });
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let tried = self.inner.servers.join(", ");
                return Err(if maybe_applied {
                    Error::OutcomeUnknown { tried, last }
                } else if no_leader {
                    Error::NoLeader { tried, last }
                } else {
                    Error::Unavailable { tried, last }
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One unary read through `call`, with this client's per-call deadline.
    async fn unary<Req, Resp, F, Fut>(&self, req: Req, rpc: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.unary_as(Effect::Read, req, rpc).await
    }

    /// One unary write (see `attempt`), with this client's per-call deadline.
    async fn write<Req, Resp, F, Fut>(&self, req: Req, rpc: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.unary_as(Effect::Write, req, rpc).await
    }

    async fn unary_as<Req, Resp, F, Fut>(&self, effect: Effect, req: Req, rpc: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.attempt(effect, |c| rpc(c, self.request(req.clone())))
            .await
            .map(|(r, _)| r.into_inner())
    }

    /// Admits and stores documents in one transaction.
    pub async fn apply(
        &self,
        documents: Vec<pb::Document>,
        dry_run: bool,
    ) -> Result<pb::WriteResponse> {
        let req = pb::ApplyRequest { documents, dry_run };
        let size = prost::Message::encoded_len(&req);
        if size > MAX_APPLY_BYTES {
            return Err(Error::TooLarge {
                size,
                limit: MAX_APPLY_BYTES,
            });
        }
        self.write(req, |c, r| async move { Client::config(c).apply(r).await })
            .await
    }

    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::WriteResponse> {
        self.write(req, |c, r| async move { Client::config(c).delete(r).await })
            .await
    }

    pub async fn update_status(&self, updates: Vec<pb::StatusUpdate>) -> Result<pb::WriteResponse> {
        let req = pb::UpdateStatusRequest { updates };
        self.write(req, |c, r| async move {
            Client::config(c).update_status(r).await
        })
        .await
    }

    pub async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse> {
        self.unary(req, |c, r| async move { Client::config(c).get(r).await })
            .await
    }

    /// An object, read linearizably; `None` if it does not exist.
    pub async fn get_object(&self, key: &ObjectKey) -> Result<Option<Value>> {
        let req = pb::GetRequest {
            target: Some(object_ref(key)),
            options: None,
        };
        match self.get(req).await {
            Ok(r) => serde_json::from_str(&r.object_json)
                .map(Some)
                .map_err(|e| Error::Other {
                    code: tonic::Code::Internal,
                    message: format!("{key}: the store sent malformed JSON: {e}"),
                }),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse> {
        self.unary(req, |c, r| async move { Client::config(c).list(r).await })
            .await
    }

    /// The objects of one kind (in one namespace, or every one with ""), read linearizably.
    pub async fn list_objects(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let req = pb::ListRequest {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        self.list_paged(req, |page| {
            out.extend(
                page.objects_json
                    .iter()
                    .filter_map(|s| serde_json::from_str(s).ok()),
            )
        })
        .await?;
        Ok(out)
    }

    /// A list read page by page (`LIST_PAGE` objects each, all at the first page's revision), each page
    /// handed to `each` as it comes: no list is bounded by one message, nor held whole by the caller.
    /// The revision of the list.
    pub async fn list_paged(
        &self,
        mut req: pb::ListRequest,
        mut each: impl FnMut(pb::ListResponse),
    ) -> Result<u64> {
        req.limit = LIST_PAGE;
        loop {
            let page = self.list(req.clone()).await?;
            let (revision, next) = (page.revision, page.continue_token.clone());
            each(page);
            if next.is_empty() {
                return Ok(revision);
            }
            req.continue_token = next;
        }
    }

    /// Opens a watch on the first member that accepts it.
    pub async fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> Result<tonic::Streaming<pb::WatchResponse>> {
        self.watch_on(req).await.map(|(s, _)| s)
    }

    /// `watch`, and the member (an index into `servers`) whose stream it is.
    pub async fn watch_on(
        &self,
        req: pb::WatchRequest,
    ) -> Result<(tonic::Streaming<pb::WatchResponse>, usize)> {
        self.call(|c| {
            let req = req.clone();
            async move { Client::config(c).watch(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Records activity on sessions (creating their entries).
    pub async fn touch(&self, sessions: Vec<pb::Session>) -> Result<pb::WriteResponse> {
        let req = pb::TouchRequest { sessions };
        self.write(
            req,
            |c, r| async move { Client::affinity(c).touch(r).await },
        )
        .await
    }

    /// Proposes a session's replacement backend; answers with the committed entry, whoever won.
    pub async fn failover(&self, req: pb::FailoverRequest) -> Result<pb::FailoverResponse> {
        self.write(
            req,
            |c, r| async move { Client::affinity(c).failover(r).await },
        )
        .await
    }

    pub async fn evict(&self, sessions: Vec<pb::SessionRef>) -> Result<pb::WriteResponse> {
        let req = pb::EvictRequest { sessions };
        self.write(
            req,
            |c, r| async move { Client::affinity(c).evict(r).await },
        )
        .await
    }

    /// Asks the leader to create the session keys if there are none.
    pub async fn ensure_keys(&self) -> Result<pb::WriteResponse> {
        self.write(pb::KeysRequest {}, |c, r| async move {
            Client::affinity(c).ensure_keys(r).await
        })
        .await
    }

    /// Asks the leader for a new session token key (the current one stays accepted).
    pub async fn rotate_key(&self) -> Result<pb::WriteResponse> {
        self.write(pb::KeysRequest {}, |c, r| async move {
            Client::affinity(c).rotate_key(r).await
        })
        .await
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatus> {
        self.unary(pb::ClusterStatusRequest {}, |c, r| async move {
            Client::cluster(c).status(r).await
        })
        .await
    }

    /// Snapshots the first reachable member's state and purges its log up to the snapshot (a client of
    /// one server chooses the member); waits up to `timeout` for both.
    pub async fn compact_log(&self, timeout: Duration) -> Result<pb::MemberStatus> {
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        self.unary(pb::CompactLogRequest { timeout_ms }, |c, r| async move {
            Client::cluster(c).compact_log(r).await
        })
        .await
    }

    pub async fn add_learner(&self, req: pb::AddLearnerRequest) -> Result<pb::MembershipResponse> {
        self.write(req, |c, r| async move {
            Client::cluster(c).add_learner(r).await
        })
        .await
    }

    pub async fn promote(&self, id: u64) -> Result<pb::MembershipResponse> {
        self.write(pb::MemberRequest { id }, |c, r| async move {
            Client::cluster(c).promote(r).await
        })
        .await
    }

    pub async fn remove(&self, id: u64) -> Result<pb::MembershipResponse> {
        self.write(pb::MemberRequest { id }, |c, r| async move {
            Client::cluster(c).remove(r).await
        })
        .await
    }

    /// The address of member `i` (as `call` numbers them).
    pub fn server(&self, i: usize) -> &str {
        &self.inner.servers[i]
    }

    pub fn servers(&self) -> &[String] {
        &self.inner.servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_trying_a_member_first_keeps_to_it_whichever_answered_last() {
        let servers: Vec<String> = (1..=3).map(|p| format!("127.0.0.1:{p}")).collect();
        let c = Client::new(&servers, Duration::ZERO, &Dialer::new(Security::Insecure)).unwrap();
        c.prefer(1);
        assert_eq!(c.order(), [1, 2, 0]);
        let pinned = c.trying_first(Some(2));
        assert_eq!(pinned.order(), [2, 0, 1]);
        c.prefer(0);
        assert_eq!(
            pinned.order(),
            [2, 0, 1],
            "the shared member moved, not this one"
        );
        assert_eq!(c.trying_first(None).order(), [0, 1, 2]);
        assert_eq!(c.trying_first(Some(7)).order(), [0, 1, 2], "no such member");
    }
}
