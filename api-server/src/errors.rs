//! Errors of the API and their gRPC form: a status code callers can branch on, a one-line message, and
//! an `ErrorDetail` in the status details with the structured facts (which document and field, which
//! object and revisions).

use gw_client::object_ref;
use gw_model::{DocumentError, ObjectKey};
use gw_proto as pb;
use gw_store::types::{Member, NodeId, TxnError};
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{}", invalid_message(.0))]
    Invalid(Vec<DocumentError>),
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("{0}")]
    BadRequest(String),
    #[error("no leader is known to this member (election in progress or quorum lost)")]
    NoLeader,
    #[error("this member is not the leader and the request was already forwarded once")]
    NotLeader,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Compacted(#[from] gw_store::state::Compacted),
}

fn invalid_message(docs: &[DocumentError]) -> String {
    let mut msg = docs
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    if docs.len() > 1 {
        msg = format!("{} documents are invalid:\n{msg}", docs.len());
    }
    msg
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, Member>>> for ApiError {
    /// openraft's refusal of a write or membership change: leadership moved (the caller forwards), the
    /// change itself is not possible now (the message says why), or Raft stopped.
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ApiError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ApiError::NotLeader,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ApiError::BadRequest(c.to_string())
            }
            RaftError::Fatal(f) => ApiError::Unavailable(f.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        use pb::error_detail::Detail;
        let msg = e.to_string();
        let (code, detail) = match e {
            ApiError::Invalid(docs) => (
                Code::InvalidArgument,
                Some(Detail::Invalid(pb::InvalidDocuments {
                    documents: docs
                        .into_iter()
                        .map(|d| pb::InvalidDocument {
                            source: d.source,
                            index: d.index as u32,
                            kind: d.kind,
                            namespace: d.namespace,
                            name: d.name,
                            errors: d
                                .errors
                                .into_iter()
                                .map(|f| pb::FieldError {
                                    path: f.path,
                                    message: f.message,
                                })
                                .collect(),
                        })
                        .collect(),
                })),
            ),
            ApiError::Txn(TxnError::Conflict {
                key,
                expected,
                actual,
            }) => (
                Code::Aborted,
                Some(Detail::Conflict(pb::Conflict {
                    target: Some(object_ref(&key)),
                    reason: "resourceVersion mismatch".into(),
                    expected,
                    actual,
                })),
            ),
            ApiError::Txn(TxnError::NotFound { key }) | ApiError::NotFound(key) => (
                Code::NotFound,
                Some(Detail::NotFound(pb::NotFound {
                    target: Some(object_ref(&key)),
                })),
            ),
            ApiError::Txn(TxnError::Duplicate { .. }) | ApiError::BadRequest(_) => {
                (Code::InvalidArgument, None)
            }
            ApiError::NoLeader | ApiError::NotLeader => {
                (Code::Unavailable, Some(Detail::NoLeader(pb::NoLeader {})))
            }
            ApiError::Unavailable(_) => (Code::Unavailable, None),
            ApiError::Internal(_) => (Code::Internal, None),
            ApiError::Compacted(c) => (
                Code::OutOfRange,
                Some(Detail::Compacted(pb::Compacted {
                    requested: c.requested,
                    compact_revision: c.compact_revision,
                })),
            ),
        };
        match detail {
            Some(d) => {
                let bytes = pb::ErrorDetail { detail: Some(d) }.encode_to_vec();
                Status::with_details(code, msg, bytes.into())
            }
            None => Status::new(code, msg),
        }
    }
}
