//! The gRPC services of a member: Config (objects and watch), Affinity (the session table), Cluster
//! (status and membership) and Raft (the transport's server side). Every call is authenticated and
//! authorized first (`auth`, `authz`); a write is then carried out on the leader.

use crate::authz::{self, Action, ORIGIN_LABEL, StatusTarget, WriteTarget};
use crate::errors::ApiError;
use crate::node::{Node, now_ms};
use crate::watch;
use gw_client::{Client, Identity, MAX_APPLY_BYTES, Security, object_ref};
use gw_model::admit::{has_transition_rules, transition_errors};
use gw_model::affinity::SessionSpec;
use gw_model::affinity::token::{KEYS_NAMESPACE, KEYS_SECRET, key_secret};
use gw_model::kinds::{self, GATEWAY_GROUP, KindInfo};
use gw_model::{Document, DocumentError, ObjectKey, admit};
use gw_proto as pb;
use gw_store::state::resource_version;
use gw_store::types::{LogId, Member, NodeId, Op, Txn, TxnError, TxnOutcome};
use openraft::ChangeMembers;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

fn kind_info(group: &str, kind: &str) -> Result<&'static KindInfo, ApiError> {
    kinds::by_group_kind(group, kind)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown kind {kind:?} in group {group:?}")))
}

/// The key of a request's object reference, with the namespace defaulted as kubectl does.
fn key_of(r: &pb::ObjectRef) -> Result<ObjectKey, ApiError> {
    let info = kind_info(&r.group, &r.kind)?;
    if r.name.is_empty() {
        return Err(ApiError::BadRequest("object name is required".into()));
    }
    let namespace = match (info.namespaced, r.namespace.as_str()) {
        (true, "") => "default",
        (true, ns) => ns,
        (false, "") => "",
        (false, ns) => {
            return Err(ApiError::BadRequest(format!(
                "{} is cluster-scoped; namespace {ns:?} given",
                info.kind
            )));
        }
    };
    Ok(ObjectKey::new(info.group, info.kind, namespace, &r.name))
}

fn write_response(o: TxnOutcome) -> pb::WriteResponse {
    pb::WriteResponse {
        revision: o.revision,
        results: o
            .results
            .into_iter()
            .map(|r| pb::ObjectResult {
                target: Some(object_ref(&r.key)),
                action: r.action.as_str().into(),
                resource_version: r.resource_version,
            })
            .collect(),
    }
}

/// What a caller asked to see, and may.
struct View<'a> {
    who: &'a Identity,
    version: String,
    show_secret_values: bool,
}

impl<'a> View<'a> {
    fn of(who: &'a Identity, opts: Option<pb::ReadOptions>) -> View<'a> {
        let opts = opts.unwrap_or_default();
        View {
            who,
            version: opts.version,
            show_secret_values: opts.show_secret_values,
        }
    }

    /// A stored object at the requested version of its kind, a Secret's values redacted unless the
    /// caller may see them.
    fn render(&self, obj: &Value, key: &ObjectKey) -> Result<String, ApiError> {
        let redacted;
        let obj = if key.group.is_empty()
            && key.kind == "Secret"
            && !authz::secret_values_visible(self.who, self.show_secret_values, key)
        {
            redacted = authz::redact(obj);
            &redacted
        } else {
            obj
        };
        if self.version.is_empty() {
            return Ok(obj.to_string());
        }
        let info = kind_info(&key.group, &key.kind)?;
        gw_model::admit::convert_for_output(obj, info, &self.version)
            .map(|v| v.to_string())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{} is not served at version {:?}",
                    key.kind, self.version
                ))
            })
    }
}

/// Where the next page of a list starts: its revision, and the last key of the page before.
#[derive(Debug, PartialEq)]
struct ContinueToken {
    revision: u64,
    after: ObjectKey,
}

impl ContinueToken {
    /// `REVISION:GROUP/KIND/NAMESPACE/NAME` (none of the four may hold a `/`).
    fn encode(&self) -> String {
        let k = &self.after;
        format!(
            "{}:{}/{}/{}/{}",
            self.revision, k.group, k.kind, k.namespace, k.name
        )
    }

    fn decode(token: &str) -> Result<ContinueToken, ApiError> {
        let bad = || ApiError::BadRequest(format!("continue token {token:?} is malformed"));
        let (revision, key) = token.split_once(':').ok_or_else(bad)?;
        let parts: Vec<&str> = key.split('/').collect();
        let [group, kind, namespace, name] = parts[..] else {
            return Err(bad());
        };
        Ok(ContinueToken {
            revision: revision.parse().ok().filter(|r| *r > 0).ok_or_else(bad)?,
            after: ObjectKey::new(group, kind, namespace, name),
        })
    }
}

/// The origin label of a stored object (`None` if it does not exist).
fn current_origin(node: &Node, key: &ObjectKey) -> Option<Option<String>> {
    node.store.read(|a| {
        a.state.get(key).map(|o| {
            o["metadata"]["labels"][ORIGIN_LABEL]
                .as_str()
                .map(str::to_string)
        })
    })
}

/// What an apply touches, for authorization.
fn apply_targets(node: &Node, req: &pb::ApplyRequest) -> Result<Vec<WriteTarget>, Status> {
    req.documents
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(&d.json).map_err(|e| {
                Status::invalid_argument(format!(
                    "{}: document {}: not JSON: {e}",
                    d.source, d.index
                ))
            })?;
            let key = ObjectKey::of_document(&v).map_err(|e| {
                Status::invalid_argument(format!("{}: document {}: {e}", d.source, d.index))
            })?;
            Ok(WriteTarget {
                current_origin: current_origin(node, &key),
                new_origin: v["metadata"]["labels"][ORIGIN_LABEL]
                    .as_str()
                    .map(str::to_string),
                key,
            })
        })
        .collect()
}

/// What a status update touches, with the GatewayClass of Gateways.
fn status_targets(node: &Node, req: &pb::UpdateStatusRequest) -> Result<Vec<StatusTarget>, Status> {
    req.updates
        .iter()
        .map(|u| {
            let key = key_of(
                u.target
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("status update without ref"))?,
            )?;
            let class = match (key.group.as_str(), key.kind.as_str()) {
                (GATEWAY_GROUP, "Gateway") => node.store.read(|a| {
                    a.state
                        .get(&key)
                        .and_then(|g| g["spec"]["gatewayClassName"].as_str().map(str::to_string))
                }),
                _ => None,
            };
            Ok(StatusTarget { key, class })
        })
        .collect()
}

pub struct ConfigService {
    pub node: Arc<Node>,
}

impl ConfigService {
    /// Proposes a transaction, or previews it for a dry run (against linearizably read state).
    async fn commit(&self, txn: Txn, dry_run: bool) -> Result<pb::WriteResponse, ApiError> {
        let outcome = if dry_run {
            self.node.read_barrier().await?;
            self.node.store.read(|a| a.state.preview(&txn))?
        } else {
            self.node.propose(txn).await?
        };
        Ok(write_response(outcome))
    }

    /// Admits and stores documents. A kube sync agent's documents get its cluster as their origin.
    ///
    /// A kind with transition rules is checked against the stored version and the write pinned to
    /// it; when that version changes before the write commits (a status update, say), the check is
    /// made again against the new one, as kube-apiserver retries an update whose precondition it
    /// set itself. A resourceVersion the caller gave is never retried.
    async fn local_apply(
        &self,
        who: &Identity,
        req: &pb::ApplyRequest,
    ) -> Result<pb::WriteResponse, ApiError> {
        const ATTEMPTS: usize = 5;
        if req.documents.is_empty() {
            return Err(ApiError::BadRequest("no documents to apply".into()));
        }
        let documents = req
            .documents
            .iter()
            .map(|d| apply_document(who, d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut attempt = 1;
        loop {
            let (ops, pinned) = self.apply_ops(&documents)?;
            match self
                .commit(
                    Txn {
                        time_ms: now_ms(),
                        ops,
                    },
                    req.dry_run,
                )
                .await
            {
                Err(ApiError::Txn(TxnError::Conflict { key, .. }))
                    if attempt < ATTEMPTS && pinned.contains(&key) =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The puts of admitted documents, and the keys whose expected resourceVersion was pinned here
    /// to the stored version the transition rules were checked against.
    fn apply_ops(&self, documents: &[Document]) -> Result<(Vec<Op>, Vec<ObjectKey>), ApiError> {
        let mut ops = Vec::new();
        let mut pinned = Vec::new();
        let mut invalid = Vec::new();
        for doc in documents {
            match admit(doc) {
                Ok(a) => {
                    let mut expected_rv = a.expected_resource_version;
                    if has_transition_rules(&a.key.kind)
                        && let Some(old) = self.node.store.read(|s| s.state.get(&a.key).cloned())
                    {
                        let errors = transition_errors(&a.key.kind, &old, &a.object);
                        if !errors.is_empty() {
                            invalid.push(DocumentError {
                                source: doc.source.clone(),
                                index: doc.index,
                                kind: a.key.kind.clone(),
                                namespace: a.key.namespace.clone(),
                                name: a.key.name.clone(),
                                errors,
                            });
                            continue;
                        }
                        if expected_rv.is_none() {
                            expected_rv = Some(resource_version(&old));
                            pinned.push(a.key.clone());
                        }
                    }
                    ops.push(Op::Put {
                        key: a.key,
                        object: a.object,
                        expected_rv,
                        uid: uuid::Uuid::new_v4().to_string(),
                    });
                }
                Err(e) => invalid.push(*e),
            }
        }
        if invalid.is_empty() {
            Ok((ops, pinned))
        } else {
            Err(ApiError::Invalid(invalid))
        }
    }

    async fn local_delete(&self, req: &pb::DeleteRequest) -> Result<pb::WriteResponse, ApiError> {
        if !req.expected_resource_versions.is_empty()
            && req.expected_resource_versions.len() != req.refs.len()
        {
            return Err(ApiError::BadRequest(
                "expected_resource_versions must have one entry per ref".into(),
            ));
        }
        let mut ops = Vec::new();
        for (i, r) in req.refs.iter().enumerate() {
            ops.push(Op::Delete {
                key: key_of(r)?,
                expected_rv: req
                    .expected_resource_versions
                    .get(i)
                    .copied()
                    .filter(|rv| *rv != 0),
                ignore_missing: req.ignore_not_found,
            });
        }
        self.commit(
            Txn {
                time_ms: now_ms(),
                ops,
            },
            req.dry_run,
        )
        .await
    }

    async fn local_update_status(
        &self,
        req: &pb::UpdateStatusRequest,
    ) -> Result<pb::WriteResponse, ApiError> {
        let mut ops = Vec::new();
        for u in &req.updates {
            let r = u
                .target
                .as_ref()
                .ok_or_else(|| ApiError::BadRequest("status update without ref".into()))?;
            let status: Value = serde_json::from_str(&u.status_json).map_err(|e| {
                ApiError::BadRequest(format!("status of {}: not JSON: {e}", r.name))
            })?;
            if !status.is_object() {
                return Err(ApiError::BadRequest(format!(
                    "status of {}: must be an object",
                    r.name
                )));
            }
            ops.push(Op::Status {
                key: key_of(r)?,
                status,
                expected_uid: Some(u.expected_uid.clone()).filter(|s| !s.is_empty()),
                expected_generation: Some(u.expected_generation).filter(|g| *g != 0),
                expected_rv: Some(u.expected_resource_version).filter(|rv| *rv != 0),
            });
        }
        self.commit(
            Txn {
                time_ms: now_ms(),
                ops,
            },
            false,
        )
        .await
    }

    /// Makes a read linearizable unless the client asked for a serializable one.
    async fn barrier(&self, opts: &Option<pb::ReadOptions>) -> Result<bool, ApiError> {
        let serializable = opts.as_ref().is_some_and(|o| o.serializable);
        if !serializable {
            self.node.read_barrier().await?;
        }
        Ok(serializable)
    }
}

/// A document of an apply request, parsed; a kube sync agent's gets its cluster as its origin.
fn apply_document(who: &Identity, d: &pb::Document) -> Result<Document, ApiError> {
    let mut value = serde_json::from_str::<Value>(&d.json).map_err(|e| {
        ApiError::BadRequest(format!("{}: document {}: not JSON: {e}", d.source, d.index))
    })?;
    if let Identity::KubeSync { cluster } = who
        && value["metadata"].is_object()
    {
        value["metadata"]["labels"][ORIGIN_LABEL] = json!(cluster);
    }
    Ok(Document {
        source: d.source.clone(),
        index: d.index as usize,
        line: 0,
        value,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let size = prost::Message::encoded_len(request.get_ref());
        if size > MAX_APPLY_BYTES {
            let e = gw_client::Error::TooLarge {
                size,
                limit: MAX_APPLY_BYTES,
            };
            return Err(Status::invalid_argument(e.to_string()));
        }
        let targets = apply_targets(&self.node, request.get_ref())?;
        let who = self.node.auth.check(
            &request,
            Action::Write {
                verb: "apply",
                targets,
            },
        )?;
        let who = &who;
        self.node
            .on_leader(
                who,
                request,
                |r| async move { self.local_apply(who, &r).await },
                |c, r| async move { Client::config(c).apply(r).await },
            )
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let targets = request
            .get_ref()
            .refs
            .iter()
            .map(|r| {
                let key = key_of(r)?;
                Ok(WriteTarget {
                    current_origin: current_origin(&self.node, &key),
                    new_origin: None,
                    key,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let who = self.node.auth.check(
            &request,
            Action::Write {
                verb: "delete",
                targets,
            },
        )?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_delete(&r).await },
                |c, r| async move { Client::config(c).delete(r).await },
            )
            .await
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let targets = status_targets(&self.node, request.get_ref())?;
        let who = self
            .node
            .auth
            .check(&request, Action::UpdateStatus(targets))?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_update_status(&r).await },
                |c, r| async move { Client::config(c).update_status(r).await },
            )
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let who = self.node.auth.check(&request, Action::Read)?;
        let req = request.into_inner();
        let r = req
            .target
            .ok_or_else(|| Status::invalid_argument("ref is required"))?;
        let key = key_of(&r)?;
        let serializable = self.barrier(&req.options).await?;
        let view = View::of(&who, req.options);
        let (obj, revision) = self
            .node
            .store
            .read(|a| (a.state.get(&key).cloned(), a.state.revision()));
        let obj = obj.ok_or(ApiError::NotFound(key.clone()))?;
        Ok(Response::new(pb::GetResponse {
            object_json: view.render(&obj, &key)?,
            revision,
            serializable,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = self.node.auth.check(&request, Action::Read)?;
        let req = request.into_inner();
        if !req.kind.is_empty() {
            kind_info(&req.group, &req.kind)?;
        }
        let from = match req.continue_token.as_str() {
            "" => None,
            t => Some(ContinueToken::decode(t)?),
        };
        let at_revision = from.as_ref().map_or(req.at_revision, |c| c.revision);
        // A later page of a list is read at the first page's revision: this member must have it.
        let serializable = if at_revision > 0 {
            self.node.read_barrier().await?;
            false
        } else {
            self.barrier(&req.options).await?
        };
        let view = View::of(&who, req.options);
        // One more than asked for tells whether another page follows.
        let limit = match req.limit {
            0 => usize::MAX,
            n => n as usize + 1,
        };
        let (objects, revision) = self
            .node
            .store
            .read(|a| {
                let at = match at_revision {
                    0 => a.state.revision(),
                    r => r.min(a.state.revision()),
                };
                let after = from.as_ref().map(|c| &c.after);
                a.state
                    .page_at(at, &req.group, &req.kind, &req.namespace, after, limit)
                    .map(|objs| (objs, at))
            })
            .map_err(ApiError::from)?;
        let mut objects_json = Vec::with_capacity(objects.len().min(limit));
        let mut bytes = 0;
        let mut continue_token = String::new();
        for (i, (k, o)) in objects.iter().enumerate() {
            // A page ends at the limit, or early once it weighs a quarter of the message limit.
            let heavy = req.limit > 0 && i > 0 && bytes > gw_client::MAX_MESSAGE_BYTES / 4;
            if i + 1 == limit || heavy {
                continue_token = ContinueToken {
                    revision,
                    after: objects[i - 1].0.clone(),
                }
                .encode();
                break;
            }
            let json = view.render(o, k)?;
            bytes += json.len();
            objects_json.push(json);
        }
        Ok(Response::new(pb::ListResponse {
            objects_json,
            revision,
            serializable,
            continue_token,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.node.auth.check(&request, Action::Read)?;
        let req = request.into_inner();
        for k in &req.kinds {
            kind_info(&k.group, &k.kind)?;
        }
        let filter = watch::filter_from(&req, who);
        let bookmark = match req.bookmark_interval_ms {
            0 => Duration::from_millis(self.node.config.bookmark_ms),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(watch::run(
            self.node.clone(),
            tx,
            filter,
            req.after_revision,
            bookmark,
        ));
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::WatchStream
        ))
    }
}

pub struct ClusterService {
    pub node: Arc<Node>,
}

/// The members of the current membership, as the API presents them (without their own reports),
/// with how far each one's log is behind this member's (when it leads and knows).
fn members_of(node: &Node) -> Vec<pb::Member> {
    let metrics = node.raft.metrics().borrow().clone();
    node.store
        .members()
        .into_iter()
        .map(|(id, m, voter)| pb::Member {
            id,
            lag: lag_of(&metrics, id).map_or(-1, |l| l as i64),
            addr: m.addr,
            region: m.region,
            peer_addr: m.peer_addr,
            role: if voter { "voter" } else { "learner" }.into(),
            applied_revision: 0,
            reachable: false,
            raft_state: String::new(),
        })
        .collect()
}

/// How many entries member `id`'s log is behind the leader's, by the leader's replication metrics
/// (`None`: this member does not lead, or has no confirmed match for it).
fn lag_of(m: &openraft::RaftMetrics<NodeId, Member>, id: NodeId) -> Option<u64> {
    if m.current_leader == Some(id) && m.id == id {
        return Some(0);
    }
    let matched = m.replication.as_ref()?.get(&id)?.as_ref()?.index;
    Some(m.last_log_index.unwrap_or(0).saturating_sub(matched))
}

/// A learner is promoted only when its log is at most this many entries behind the leader's.
const PROMOTE_MAX_LAG: u64 = 100;
/// How long a promotion waits for a learner to catch up.
const PROMOTE_CATCH_UP: Duration = Duration::from_secs(5);

impl ClusterService {
    async fn change(
        &self,
        changes: ChangeMembers<NodeId, Member>,
    ) -> Result<pb::MembershipResponse, ApiError> {
        let retain = false;
        self.node.raft.change_membership(changes, retain).await?;
        Ok(pb::MembershipResponse {
            members: members_of(&self.node),
        })
    }

    async fn local_add_learner(
        &self,
        req: &pb::AddLearnerRequest,
    ) -> Result<pb::MembershipResponse, ApiError> {
        if req.id == 0 || req.addr.is_empty() {
            return Err(ApiError::BadRequest(
                "add-learner needs a positive --id and an --addr".into(),
            ));
        }
        let member = Member {
            addr: req.addr.clone(),
            region: req.region.clone(),
            peer_addr: req.peer_addr.clone(),
        };
        // Only a process holding member `id`'s certificate receives the cluster's data.
        if let Security::Mutual(_) = self.node.auth.security() {
            self.node
                .channels
                .probe(member.raft_addr(), req.id)
                .await
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "learner {} at {} does not answer as member {}: {e}",
                        req.id,
                        member.raft_addr(),
                        req.id
                    ))
                })?;
        }
        self.node.raft.add_learner(req.id, member, true).await?;
        Ok(pb::MembershipResponse {
            members: members_of(&self.node),
        })
    }

    /// Promotes a learner that has caught up: a voter that cannot replicate would stall every write
    /// (and a one-member cluster for good, in a joint configuration nothing can complete).
    async fn local_promote(
        &self,
        req: &pb::MemberRequest,
    ) -> Result<pb::MembershipResponse, ApiError> {
        if self.node.raft.metrics().borrow().current_leader != Some(self.node.id) {
            return Err(ApiError::NotLeader);
        }
        let Some(learner) = self
            .node
            .store
            .members()
            .into_iter()
            .find_map(|(id, m, voter)| (id == req.id && !voter).then_some(m))
        else {
            return Err(ApiError::BadRequest(format!(
                "member {} is not a learner of this cluster",
                req.id
            )));
        };
        // Answering now, as itself.
        self.node
            .channels
            .probe(learner.raft_addr(), req.id)
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "learner {} does not answer at {}: refusing to promote it ({e})",
                    req.id,
                    learner.raft_addr()
                ))
            })?;
        // A learner just added may still be catching up: give it a few seconds.
        let id = req.id;
        let metrics = self
            .node
            .raft
            .wait(Some(PROMOTE_CATCH_UP))
            .metrics(
                |m| lag_of(m, id).is_some_and(|l| l <= PROMOTE_MAX_LAG),
                "learner caught up",
            )
            .await
            .unwrap_or_else(|_| self.node.raft.metrics().borrow().clone());
        match lag_of(&metrics, req.id) {
            None => {
                return Err(ApiError::BadRequest(format!(
                    "learner {} has not replicated anything yet (unreachable, or just added): refusing to promote it",
                    req.id
                )));
            }
            Some(lag) if lag > PROMOTE_MAX_LAG => {
                return Err(ApiError::BadRequest(format!(
                    "learner {} is {lag} log entries behind the leader (more than {PROMOTE_MAX_LAG}): let it catch up first",
                    req.id
                )));
            }
            Some(_) => {}
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])))
            .await
    }

    async fn local_remove(
        &self,
        req: &pb::MemberRequest,
    ) -> Result<pb::MembershipResponse, ApiError> {
        let voter = self
            .node
            .store
            .members()
            .into_iter()
            .find(|(id, _, _)| *id == req.id)
            .map(|(_, _, v)| v);
        match voter {
            None => Err(ApiError::BadRequest(format!(
                "member {} is not in the cluster",
                req.id
            ))),
            Some(true) => {
                self.change(ChangeMembers::RemoveVoters(BTreeSet::from([req.id])))
                    .await
            }
            Some(false) => {
                self.change(ChangeMembers::RemoveNodes(BTreeSet::from([req.id])))
                    .await
            }
        }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.node.auth.check(&request, Action::ClusterStatus)?;
        let metrics = self.node.raft.metrics().borrow().clone();
        let mut members = members_of(&self.node);
        let reports = futures::future::join_all(members.iter().map(|m| {
            let node = self.node.clone();
            let (id, addr) = (m.id, m.addr.clone());
            async move {
                if id == node.id {
                    return Some(node.member_status());
                }
                let channel = node.channels.get(&addr, id).ok()?;
                let mut req = Request::new(pb::MemberStatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                Client::cluster(channel)
                    .member_status(req)
                    .await
                    .ok()
                    .map(Response::into_inner)
            }
        }))
        .await;
        for (m, report) in members.iter_mut().zip(reports) {
            if let Some(r) = report {
                m.reachable = true;
                m.applied_revision = r.applied_revision;
                m.raft_state = r.role;
                if m.region.is_empty() {
                    m.region = r.region;
                }
            }
        }
        let membership = metrics.membership_config.clone();
        let configs = membership
            .membership()
            .get_joint_config()
            .iter()
            .map(|voters| pb::VoterSet {
                voters: voters.iter().copied().collect(),
            })
            .collect();
        let committed = membership.log_id() <= &metrics.last_applied;
        Ok(Response::new(pb::ClusterStatus {
            leader: metrics.current_leader.unwrap_or(0),
            revision: self.node.store.read(|a| a.state.revision()),
            term: metrics.current_term,
            members,
            configs,
            membership_committed: committed,
            config_revision: self.node.store.read(|a| a.state.config_revision()),
        }))
    }

    async fn member_status(
        &self,
        request: Request<pb::MemberStatusRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        self.node.auth.check(&request, Action::ClusterStatus)?;
        Ok(Response::new(self.node.member_status()))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let who = self.node.auth.check(&request, Action::ChangeMembership)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_add_learner(&r).await },
                |c, r| async move { Client::cluster(c).add_learner(r).await },
            )
            .await
    }

    async fn promote(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let who = self.node.auth.check(&request, Action::ChangeMembership)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_promote(&r).await },
                |c, r| async move { Client::cluster(c).promote(r).await },
            )
            .await
    }

    async fn remove(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let who = self.node.auth.check(&request, Action::ChangeMembership)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_remove(&r).await },
                |c, r| async move { Client::cluster(c).remove(r).await },
            )
            .await
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.node.auth.check(&request, Action::ReadIndex)?;
        let read_log_id = self
            .node
            .read_index
            .read_log_id()
            .await
            .map_err(|e| Status::unavailable(format!("not able to serve a read index: {e}")))?;
        Ok(Response::new(pb::ReadIndexResponse {
            index: read_log_id.map(|l| l.index).unwrap_or(0),
        }))
    }

    async fn compact_log(
        &self,
        request: Request<pb::CompactLogRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        self.node.auth.check(&request, Action::CompactLog)?;
        let timeout = match request.get_ref().timeout_ms {
            0 => Duration::from_secs(30),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let raft = &self.node.raft;
        let Some(applied) = raft.metrics().borrow().last_applied else {
            return Ok(Response::new(self.node.member_status()));
        };
        let fatal = |e: openraft::error::Fatal<u64>| Status::unavailable(e.to_string());
        // Until the log id `at` reads from the metrics reaches what was applied.
        let reached =
            |what: &'static str,
             at: fn(&openraft::RaftMetrics<NodeId, Member>) -> Option<LogId>| {
                let wait = raft.wait(Some(timeout));
                async move {
                    wait.metrics(
                        move |m| at(m).is_some_and(|l| l.index >= applied.index),
                        what,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        Status::deadline_exceeded(format!(
                            "{what} up to index {} not done within {timeout:?}: {e}",
                            applied.index
                        ))
                    })
                }
            };
        raft.trigger().snapshot().await.map_err(fatal)?;
        reached("the snapshot", |m| m.snapshot).await?;
        raft.trigger()
            .purge_log(applied.index)
            .await
            .map_err(fatal)?;
        reached("the purge", |m| m.purged).await?;
        Ok(Response::new(self.node.member_status()))
    }
}

pub struct RaftService {
    pub node: Arc<Node>,
}

fn decode<T: serde::de::DeserializeOwned>(req: &Request<pb::RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.get_ref().data)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

impl RaftService {
    /// A Raft message is accepted only from the member whose vote it carries (the leader of an
    /// AppendEntries or InstallSnapshot, the candidate of a Vote), holding that member's certificate.
    fn check(
        &self,
        req: &Request<pb::RaftPayload>,
        vote: &openraft::Vote<NodeId>,
    ) -> Result<(), Status> {
        let member = vote.leader_id().voted_for().unwrap_or(0);
        self.node.auth.check(req, Action::Raft { member }).map(drop)
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<gw_store::types::TypeConfig> =
            decode(&request)?;
        self.check(&request, &rpc.vote)?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(&request)?;
        self.check(&request, &rpc.vote)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<gw_store::types::TypeConfig> =
            decode(&request)?;
        self.check(&request, &rpc.vote)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let ask: crate::prevote::PreVote = decode(&request)?;
        self.node.auth.check(
            &request,
            Action::Raft {
                member: ask.candidate,
            },
        )?;
        let answer = crate::prevote::answer(&self.node, &ask)
            .await
            .map_err(Status::unavailable)?;
        encode(&Ok::<_, openraft::error::RaftError<NodeId>>(answer))
    }
}

/// The session affinity table's writes: activity batches and first-writer-wins failovers.
pub struct AffinityService {
    pub node: Arc<Node>,
}

fn session_spec(s: &pb::Session) -> Result<(ObjectKey, SessionSpec), ApiError> {
    if s.namespace.is_empty() || s.id.is_empty() || s.scope.is_empty() || s.backend.is_empty() {
        return Err(ApiError::BadRequest(
            "a session needs namespace, id, scope and backend".into(),
        ));
    }
    Ok((
        gw_model::affinity::key(&s.namespace, &s.id),
        SessionSpec {
            scope: s.scope.clone(),
            backend: s.backend.clone(),
            issued_ms: s.issued_ms,
            idle_timeout_ms: s.idle_timeout_ms,
            absolute_timeout_ms: s.absolute_timeout_ms,
        },
    ))
}

impl AffinityService {
    async fn local_touch(&self, req: &pb::TouchRequest) -> Result<pb::WriteResponse, ApiError> {
        let mut touches = Vec::new();
        let mut seen = BTreeSet::new();
        for s in &req.sessions {
            let (key, spec) = session_spec(s)?;
            // One operation per session per transaction: a batch may name a session twice.
            if seen.insert(key.clone()) {
                touches.push((key, spec));
            }
        }
        // A session with an entry already (nearly every touch) is proposed by its key alone: a third
        // of the log's bytes. Should the entry be gone by the time it applies (purged, past its
        // window), a full touch would not have made it again either.
        let ops = self.node.store.read(|a| {
            touches
                .into_iter()
                .map(|(key, spec)| {
                    if a.state.has_session(&key) {
                        Op::SessionActive { key }
                    } else {
                        Op::SessionTouch {
                            key,
                            spec,
                            uid: uuid::Uuid::new_v4().to_string(),
                        }
                    }
                })
                .collect()
        });
        let outcome = self
            .node
            .propose(Txn {
                time_ms: now_ms(),
                ops,
            })
            .await?;
        Ok(write_response(outcome))
    }

    async fn local_failover(
        &self,
        req: &pb::FailoverRequest,
    ) -> Result<pb::FailoverResponse, ApiError> {
        let s = req
            .session
            .as_ref()
            .ok_or_else(|| ApiError::BadRequest("failover without a session".into()))?;
        let (key, spec) = session_spec(s)?;
        let outcome = self
            .node
            .propose(Txn {
                time_ms: now_ms(),
                ops: vec![Op::SessionFailover {
                    key: key.clone(),
                    from: req.from_backend.clone(),
                    spec,
                    uid: uuid::Uuid::new_v4().to_string(),
                }],
            })
            .await?;
        // The leader has applied the transaction: its state holds the committed entry (or a later one).
        let entry_json = self.node.store.read(|a| {
            a.state
                .get(&key)
                .filter(|o| o["status"]["expiredMs"].is_null())
                .map(|o| o.to_string())
                .unwrap_or_default()
        });
        Ok(pb::FailoverResponse {
            entry_json,
            revision: outcome.revision,
        })
    }
}

impl AffinityService {
    /// Creates the session keys if there are none (`rotate` false), or replaces the sealing key,
    /// keeping the current one accepted as `previous` (`rotate`). The key is made here, on the leader.
    async fn local_keys(&self, rotate: bool) -> Result<pb::WriteResponse, ApiError> {
        use ring::rand::SecureRandom;
        self.node.read_barrier().await?;
        let key = ObjectKey::new("", "Secret", KEYS_NAMESPACE, KEYS_SECRET);
        let (current, revision) = self
            .node
            .store
            .read(|a| (a.state.get(&key).cloned(), a.state.revision()));
        let (previous, rv) = match (&current, rotate) {
            (Some(_), false) => {
                return Ok(pb::WriteResponse {
                    revision,
                    results: vec![],
                });
            }
            (None, true) => {
                return Err(ApiError::BadRequest(
                    "there are no session keys yet: gateway nodes create them when a route first uses session persistence".into(),
                ));
            }
            (None, false) => (None, "0".to_string()),
            (Some(s), true) => (
                s["data"]["current"].as_str().map(str::to_string),
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string(),
            ),
        };
        let mut fresh = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut fresh)
            .map_err(|_| ApiError::Internal("no randomness for a session key".into()))?;
        let doc = Document {
            source: "session keys".into(),
            index: 1,
            line: 0,
            value: key_secret(&fresh, previous.as_deref(), &rv),
        };
        let a = admit(&doc).map_err(|e| ApiError::Invalid(vec![*e]))?;
        let outcome = self
            .node
            .propose(Txn {
                time_ms: now_ms(),
                ops: vec![Op::Put {
                    key: a.key,
                    object: a.object,
                    expected_rv: a.expected_resource_version,
                    uid: uuid::Uuid::new_v4().to_string(),
                }],
            })
            .await?;
        Ok(write_response(outcome))
    }

    async fn local_evict(&self, req: &pb::EvictRequest) -> Result<pb::WriteResponse, ApiError> {
        let keys: BTreeSet<ObjectKey> = req
            .sessions
            .iter()
            .map(|s| gw_model::affinity::key(&s.namespace, &s.id))
            .collect();
        if keys.is_empty() {
            return Err(ApiError::BadRequest("no sessions to evict".into()));
        }
        let ops = keys
            .into_iter()
            .map(|key| Op::SessionExpire { key, evict: true })
            .collect();
        let outcome = self
            .node
            .propose(Txn {
                time_ms: now_ms(),
                ops,
            })
            .await?;
        Ok(write_response(outcome))
    }
}

#[tonic::async_trait]
impl pb::affinity_server::Affinity for AffinityService {
    async fn evict(
        &self,
        request: Request<pb::EvictRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = self.node.auth.check(&request, Action::EvictSessions)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_evict(&r).await },
                |c, r| async move { Client::affinity(c).evict(r).await },
            )
            .await
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = self.node.auth.check(&request, Action::RecordSessions)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_touch(&r).await },
                |c, r| async move { Client::affinity(c).touch(r).await },
            )
            .await
    }

    async fn ensure_keys(
        &self,
        request: Request<pb::KeysRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = self.node.auth.check(&request, Action::EnsureSessionKeys)?;
        self.node
            .on_leader(
                &who,
                request,
                |_| async move { self.local_keys(false).await },
                |c, r| async move { Client::affinity(c).ensure_keys(r).await },
            )
            .await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::KeysRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = self.node.auth.check(&request, Action::RotateSessionKeys)?;
        self.node
            .on_leader(
                &who,
                request,
                |_| async move { self.local_keys(true).await },
                |c, r| async move { Client::affinity(c).rotate_key(r).await },
            )
            .await
    }

    async fn failover(
        &self,
        request: Request<pb::FailoverRequest>,
    ) -> Result<Response<pb::FailoverResponse>, Status> {
        let who = self.node.auth.check(&request, Action::RecordSessions)?;
        self.node
            .on_leader(
                &who,
                request,
                |r| async move { self.local_failover(&r).await },
                |c, r| async move { Client::affinity(c).failover(r).await },
            )
            .await
    }
}
