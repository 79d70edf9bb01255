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
    #[serde(with = "compact_ops")]
    pub ops: Vec<Op>,
}

/// How a transaction's operations are written to the log and sent to followers: each as itself,
/// except that a run of `SessionActive` of affinity entries in one namespace (a node's activity
/// call: up to `gw_model::affinity::TOUCHES_PER_CALL` of them) is written as one `SessionsActive`
/// item naming the namespace once and the sessions by id: about 12 bytes a session instead of 110,
/// so that session activity (10 000 touches/s is 1.1 MB/s of log the other way) costs a ninth of
/// the bytes to encode, sync, replicate and decode. Reading gives back the same operations in the
/// same order; logs written before this form are read as they are.
mod compact_ops {
    use super::Op;
    use gw_model::ObjectKey;
    use gw_model::affinity;
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    const RUN: &str = "SessionsActive";

    #[derive(Serialize, Deserialize)]
    struct Run<S> {
        namespace: S,
        ids: Vec<S>,
    }

    /// The affinity entry `op` records activity on, if it is a `SessionActive` of one.
    fn session(op: &Op) -> Option<&ObjectKey> {
        match op {
            Op::SessionActive { key }
                if key.group == gw_model::kinds::GW_GROUP && key.kind == affinity::KIND =>
            {
                Some(key)
            }
            _ => None,
        }
    }

    pub fn serialize<S: Serializer>(ops: &[Op], s: S) -> Result<S::Ok, S::Error> {
        /// The compact item (its name is `RUN`).
        #[derive(Serialize)]
        enum Written<'a> {
            SessionsActive(Run<&'a str>),
        }
        let mut seq = s.serialize_seq(None)?;
        let mut rest = ops;
        while let Some(first) = rest.first() {
            match session(first) {
                Some(key) => {
                    let n = rest
                        .iter()
                        .take_while(|op| session(op).is_some_and(|k| k.namespace == key.namespace))
                        .count();
                    let ids = rest[..n]
                        .iter()
                        .filter_map(session)
                        .map(|k| k.name.as_str())
                        .collect();
                    seq.serialize_element(&Written::SessionsActive(Run {
                        namespace: key.namespace.as_str(),
                        ids,
                    }))?;
                    rest = &rest[n..];
                }
                None => {
                    seq.serialize_element(first)?;
                    rest = &rest[1..];
                }
            }
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Op>, D::Error> {
        d.deserialize_seq(Ops)
    }

    struct Ops;

    impl<'de> Visitor<'de> for Ops {
        type Value = Vec<Op>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of operations")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Op>, A::Error> {
            let mut ops = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while seq.next_element_seed(Item(&mut ops))?.is_some() {}
            Ok(ops)
        }
    }

    /// One item of the list, appended to the operations.
    struct Item<'a>(&'a mut Vec<Op>);

    impl<'de> DeserializeSeed<'de> for Item<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Item<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an operation")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some(tag) = map.next_key::<String>()? else {
                return Err(de::Error::custom("an operation without its name"));
            };
            if tag == RUN {
                let run: Run<String> = map.next_value()?;
                self.0.extend(run.ids.iter().map(|id| Op::SessionActive {
                    key: affinity::key(&run.namespace, id),
                }));
            } else {
                // Any other operation is read as itself, its name already taken from the map.
                let tagged = Tagged {
                    tag: Some(tag),
                    map,
                };
                self.0
                    .push(Op::deserialize(de::value::MapAccessDeserializer::new(
                        tagged,
                    ))?);
            }
            Ok(())
        }
    }

    /// A map whose first key was read already: gives it back first.
    struct Tagged<A> {
        tag: Option<String>,
        map: A,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Tagged<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            match self.tag.take() {
                Some(tag) => seed.deserialize(tag.into_deserializer()).map(Some),
                None => self.map.next_key_seed(seed),
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.map.next_value_seed(seed)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use gw_model::affinity;
    use serde_json::json;

    fn active(namespace: &str, id: &str) -> Op {
        Op::SessionActive {
            key: affinity::key(namespace, id),
        }
    }

    #[test]
    fn session_activity_is_written_compactly_and_read_back_as_the_same_operations() {
        let spec = SessionSpec {
            scope: "HTTPRoute/a/r/rules/0".into(),
            backend: "a/svc:80|p|127.0.0.1:1".into(),
            issued_ms: 5,
            idle_timeout_ms: Some(1_000),
            absolute_timeout_ms: None,
        };
        let txn = Txn {
            time_ms: 7,
            ops: vec![
                Op::Put {
                    key: ObjectKey::new("", "ConfigMap", "a", "cm"),
                    object: json!({"data": {"k": "v"}}),
                    expected_rv: None,
                    uid: "u0".into(),
                },
                active("a", "s1"),
                active("a", "s2"),
                active("b", "s3"),
                Op::SessionTouch {
                    key: affinity::key("a", "s4"),
                    spec,
                    uid: "u".into(),
                },
                active("a", "s5"),
                // Not an affinity entry: written as itself.
                Op::SessionActive {
                    key: ObjectKey::new("", "ConfigMap", "a", "s6"),
                },
            ],
        };
        let text = serde_json::to_string(&txn).unwrap();
        assert_eq!(text.matches("SessionsActive").count(), 3, "{text}");
        assert_eq!(text.matches("\"SessionActive\"").count(), 1, "{text}");
        assert_eq!(serde_json::from_str::<Txn>(&text).unwrap(), txn);

        // As logs written before the compact form hold them.
        let old = json!({"time_ms": 7, "ops": [
            {"SessionActive": {"key": {"group": "gw.dev", "kind": "SessionAffinity",
                "namespace": "a", "name": "s1"}}},
            {"Delete": {"key": {"group": "", "kind": "ConfigMap", "namespace": "a", "name": "cm"},
                "expected_rv": null, "ignore_missing": true}}
        ]});
        let read: Txn = serde_json::from_value(old).unwrap();
        assert_eq!(read.ops[0], active("a", "s1"));
        assert!(matches!(
            read.ops[1],
            Op::Delete {
                ignore_missing: true,
                ..
            }
        ));

        // A few bytes a session.
        let many = Txn {
            time_ms: 7,
            ops: (0..2_500)
                .map(|i| active("shop", &format!("s{i:07x}")))
                .collect(),
        };
        let bytes = serde_json::to_vec(&many).unwrap().len();
        assert!(bytes < 2_500 * 12, "{bytes} bytes");
        assert_eq!(
            serde_json::from_slice::<Txn>(&serde_json::to_vec(&many).unwrap()).unwrap(),
            many
        );

        let bad = serde_json::from_value::<Txn>(json!({"time_ms": 1, "ops": [{}]})).unwrap_err();
        assert!(
            bad.to_string().contains("an operation without its name"),
            "{bad}"
        );
    }
}
