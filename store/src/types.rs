//! The Raft type configuration of the store, its member (node) description, and the commands and
//! responses that travel through the log.

use gw_model::ObjectKey;
use gw_model::affinity::SessionSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::io::Cursor;

/// A member's identifier (`--id`).
pub type NodeId = u64;

/// What the cluster knows about a member: where to reach its API and its Raft transport, and its
/// region label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The client API (`HOST:PORT`).
    pub addr: String,
    #[serde(default)]
    pub region: String,
    /// The Raft transport, when it has a port of its own (`--peer-listen`); empty: the API's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_addr: String,
}

impl Member {
    /// Where Raft messages for this member go.
    pub fn raft_addr(&self) -> &str {
        if self.peer_addr.is_empty() {
            &self.addr
        } else {
            &self.peer_addr
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if !self.peer_addr.is_empty() {
            write!(f, "/{}", self.peer_addr)?;
        }
        if !self.region.is_empty() {
            write!(f, "@{}", self.region)?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// The store's Raft types.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Entry = openraft::Entry<TypeConfig>;

/// A write proposed to the log. Everything the state machine needs to apply it deterministically on
/// every member is in the command: the proposer's clock reading and the uids of objects it may create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Independent transactions of config writes, applied in order, each with its own revision. The
    /// proposer batches the transactions that arrive together into one log entry (one sync, one
    /// replication round); a transaction's operations apply all or none, whatever its neighbours do.
    Txns(Vec<Txn>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// The proposer's wall clock (ms since the epoch). The committed time is the maximum seen so far,
    /// so it never goes backwards.
    pub time_ms: u64,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Create or update an object (an admitted document). `status` is never taken from it.
    Put {
        key: ObjectKey,
        object: Value,
        /// Precondition: the stored object's resourceVersion (0: the object must not exist yet).
        expected_rv: Option<u64>,
        /// The uid the object gets if this creates it.
        uid: String,
    },
    Delete {
        key: ObjectKey,
        expected_rv: Option<u64>,
        /// A missing object is a result ("not found") instead of a failure.
        ignore_missing: bool,
    },
    /// Replace an object's status (the status subresource). Advisory: when the object is gone or its
    /// preconditions no longer hold, the operation is skipped rather than failing the transaction.
    Status {
        key: ObjectKey,
        status: Value,
        expected_uid: Option<String>,
        expected_generation: Option<i64>,
        /// Precondition of the whole transaction (unlike uid and generation, which skip): the stored
        /// object's resourceVersion.
        #[serde(default)]
        expected_rv: Option<u64>,
    },
    /// Session affinity: records activity on a session at committed time, creating its entry from
    /// `spec` if it has none yet (and its token is recent enough). Never fails the transaction.
    SessionTouch {
        key: ObjectKey,
        spec: SessionSpec,
        uid: String,
    },
    /// Session affinity: records activity on a session that has an entry (a touch the leader found
    /// recorded already: no spec to carry). Nothing when the entry is gone. Never fails the
    /// transaction.
    SessionActive { key: ObjectKey },
    /// First-writer-wins failover: the session moves to `spec.backend` only if it is still bound to
    /// `from` (or has no entry yet). Whoever comes second finds it moved and follows.
    SessionFailover {
        key: ObjectKey,
        from: String,
        spec: SessionSpec,
        uid: String,
    },
    /// Marks the session expired if it is due at committed time (or at once when `evict`); deletes
    /// it once purgeable.
    SessionExpire { key: ObjectKey, evict: bool },
}

impl Op {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key, .. }
            | Op::Status { key, .. }
            | Op::SessionTouch { key, .. }
            | Op::SessionActive { key }
            | Op::SessionFailover { key, .. }
            | Op::SessionExpire { key, .. } => key,
        }
    }
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Entries without a command (blank, membership).
    None,
    /// One result per transaction of a `Command::Txns`, in order.
    Txns(Vec<Result<TxnOutcome, TxnError>>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// The revision of this transaction, or the current revision if it changed nothing.
    pub revision: u64,
    pub results: Vec<OpResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpResult {
    pub key: ObjectKey,
    pub action: Action,
    /// The object's resourceVersion after the operation (0 when it does not exist).
    pub resource_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    NotFound,
    StatusUpdated,
    Skipped,
    /// A delete held by finalizers: the object is marked (`deletionTimestamp`) and goes when its last
    /// finalizer is removed.
    Terminating,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::NotFound => "not found",
            Action::StatusUpdated => "status updated",
            Action::Skipped => "skipped",
            Action::Terminating => "deletion pending",
        }
    }
}

/// Why a transaction was refused as a whole (nothing of it applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    /// Optimistic concurrency: the stored resourceVersion is not the expected one (0: no object).
    #[error("conflict on {key}: expected resourceVersion {expected}, found {actual}")]
    Conflict {
        key: ObjectKey,
        expected: u64,
        actual: u64,
    },
    #[error("{key} not found")]
    NotFound { key: ObjectKey },
    /// The same object appears twice in one transaction.
    #[error("{key} appears more than once in the transaction")]
    Duplicate { key: ObjectKey },
}
