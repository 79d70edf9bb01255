//! The store's errors as callers branch on them: the gRPC status and its `ErrorDetail` are decoded once,
//! here, into variants that carry the facts (which document and field, which object and revisions).

use crate::convert::key_of_ref;
use gw_model::ObjectKey;
use gw_proto as pb;
use prost::Message;
use tonic::{Code, Status};

/// One field of an invalid document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.rules[0].matches[0].path.value`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

/// A document the store refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDocument {
    /// The file it came from (`-` for standard input).
    pub source: String,
    /// 1-based index of the document in that file.
    pub index: u32,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

/// A failed call to the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Documents failed validation; nothing was stored.
    #[error("{}", invalid_message(.0))]
    Invalid(Vec<InvalidDocument>),
    /// A `resourceVersion` precondition did not hold: `current` is the object's resourceVersion, 0 if
    /// it does not exist.
    #[error("{}", conflict_message(.key, *.expected, *.current))]
    Conflict {
        key: ObjectKey,
        expected: u64,
        current: u64,
    },
    #[error("{}", not_found_message(.key))]
    NotFound { key: ObjectKey },
    /// A revision older than the history the store keeps (a list page or a watch resumed too late).
    #[error("revision {requested} is compacted (the history starts after {compact_revision})")]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    /// No member could name a leader for as long as the client kept trying (an election that did not
    /// end, or no quorum).
    #[error("no leader in the store cluster (tried {tried}): {last}")]
    NoLeader { tried: String, last: String },
    /// No member answered for as long as the client kept trying.
    #[error("no store member reachable (tried {tried}): {last}")]
    Unavailable { tried: String, last: String },
    /// A write was sent, and no answer came back for as long as the client kept trying: it may or may
    /// not have been carried out.
    #[error(
        "the outcome is unknown: the write was sent but no answer came back (tried {tried}: {last}); it may have been applied — read the objects back before retrying a change that is not idempotent"
    )]
    OutcomeUnknown { tried: String, last: String },
    /// The request is larger than the store takes; nothing was sent.
    #[error(
        "the request is {size} bytes, over the store's limit of {limit} bytes for one apply: split the documents into several applies"
    )]
    TooLarge { size: usize, limit: usize },
    /// The request itself is wrong (unknown kind, missing name, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client was given something unusable (no member, a malformed address).
    #[error("{0}")]
    Config(String),
    /// Any other status.
    #[error("{message} ({code:?})")]
    Other { code: Code, message: String },
}

impl Error {
    /// Whether the call certainly had no effect: the store answered with a refusal. A call that lost
    /// contact (unavailable, no leader, a deadline) may or may not have been carried out.
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_)
                | Error::Conflict { .. }
                | Error::NotFound { .. }
                | Error::Compacted { .. }
                | Error::BadRequest(_)
                | Error::Config(_)
                | Error::TooLarge { .. }
        )
    }

    /// Whether a retryable failure happened before the request left for a member: no connection
    /// could be made, or the member answered that it knows no leader (so nothing was proposed).
    pub(crate) fn was_not_sent(s: &Status) -> bool {
        Error::is_no_leader(s) || (s.code() == Code::Unavailable && connect_failure(s))
    }

    /// Whether another member may be able to serve the call (the client moves on and retries).
    pub(crate) fn is_retryable(s: &Status) -> bool {
        matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
        )
    }

    /// Whether the status says that no leader is known.
    pub(crate) fn is_no_leader(s: &Status) -> bool {
        matches!(detail(s), Some(pb::error_detail::Detail::NoLeader(_)))
    }
}

/// Whether the status is the channel's failure to connect (its message or source chain names the
/// connect step; "connection reset" and the like are not: they may come after the request was sent).
fn connect_failure(s: &Status) -> bool {
    const CONNECT: [&str; 2] = ["tcp connect error", crate::connect::CONNECT_FAILED];
    let mut texts = vec![s.message().to_string()];
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        texts.push(e.to_string());
        source = e.source();
    }
    texts.iter().any(|t| CONNECT.iter().any(|c| t.contains(c)))
}

fn detail(s: &Status) -> Option<pb::error_detail::Detail> {
    pb::ErrorDetail::decode(s.details()).ok()?.detail
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        use pb::error_detail::Detail;
        match detail(&s) {
            Some(Detail::Invalid(inv)) => Error::Invalid(
                inv.documents
                    .into_iter()
                    .map(|d| InvalidDocument {
                        source: d.source,
                        index: d.index,
                        kind: d.kind,
                        namespace: d.namespace,
                        name: d.name,
                        errors: d
                            .errors
                            .into_iter()
                            .map(|e| FieldError {
                                path: e.path,
                                message: e.message,
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            Some(Detail::Conflict(c)) => Error::Conflict {
                key: key_of_ref(&c.target.unwrap_or_default()),
                expected: c.expected,
                current: c.actual,
            },
            Some(Detail::NotFound(n)) => Error::NotFound {
                key: key_of_ref(&n.target.unwrap_or_default()),
            },
            Some(Detail::Compacted(c)) => Error::Compacted {
                requested: c.requested,
                compact_revision: c.compact_revision,
            },
            _ if s.code() == Code::InvalidArgument => Error::BadRequest(s.message().to_string()),
            _ => Error::Other {
                code: s.code(),
                message: s.message().to_string(),
            },
        }
    }
}

fn invalid_message(docs: &[InvalidDocument]) -> String {
    docs.iter()
        .flat_map(|d| {
            let obj = match (d.kind.is_empty(), d.namespace.is_empty()) {
                (true, _) => String::new(),
                (false, true) => format!(" ({} {})", d.kind, d.name),
                (false, false) => format!(" ({} {}/{})", d.kind, d.namespace, d.name),
            };
            d.errors.iter().map(move |e| {
                let field = if e.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.path)
                };
                format!(
                    "invalid: {}: document {}{obj}: {field}{}",
                    d.source, d.index, e.message
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn qualified(key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        format!("{} {}", key.kind, key.name)
    } else {
        format!("{} {}/{}", key.kind, key.namespace, key.name)
    }
}

fn conflict_message(key: &ObjectKey, expected: u64, current: u64) -> String {
    if current == 0 {
        format!(
            "conflict: {}: expected resourceVersion {expected}, but the object does not exist",
            qualified(key)
        )
    } else {
        format!(
            "conflict: {}: expected resourceVersion {expected}, found {current} (it was changed since you read it)",
            qualified(key)
        )
    }
}

fn not_found_message(key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        format!("not found: {} {:?}", key.kind, key.name)
    } else {
        format!(
            "not found: {} {:?} in namespace {:?}",
            key.kind, key.name, key.namespace
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::object_ref;

    fn status(code: Code, detail: pb::error_detail::Detail) -> Status {
        let bytes = pb::ErrorDetail {
            detail: Some(detail),
        }
        .encode_to_vec();
        Status::with_details(code, "msg", bytes.into())
    }

    #[test]
    fn details_decode_into_variants() {
        use pb::error_detail::Detail;
        let key = ObjectKey::new("", "Secret", "gw-system", "k");
        let e = Error::from(status(
            Code::Aborted,
            Detail::Conflict(pb::Conflict {
                target: Some(object_ref(&key)),
                reason: String::new(),
                expected: 0,
                actual: 7,
            }),
        ));
        assert!(
            matches!(&e, Error::Conflict { key: k, expected: 0, current: 7 } if *k == key),
            "{e:?}"
        );
        assert!(e.to_string().contains("found 7"));
        let e = Error::from(status(
            Code::NotFound,
            Detail::NotFound(pb::NotFound {
                target: Some(object_ref(&key)),
            }),
        ));
        assert!(matches!(&e, Error::NotFound { key: k } if *k == key));
        let e = Error::from(status(
            Code::InvalidArgument,
            Detail::Invalid(pb::InvalidDocuments {
                documents: vec![pb::InvalidDocument {
                    source: "f.yaml".into(),
                    index: 2,
                    kind: "HTTPRoute".into(),
                    namespace: "d".into(),
                    name: "r".into(),
                    errors: vec![pb::FieldError {
                        path: "spec.rules[0]".into(),
                        message: "bad".into(),
                    }],
                }],
            }),
        ));
        assert_eq!(
            e.to_string(),
            "invalid: f.yaml: document 2 (HTTPRoute d/r): spec.rules[0]: bad"
        );
        assert!(Error::is_no_leader(&status(
            Code::Unavailable,
            Detail::NoLeader(pb::NoLeader {})
        )));
        assert!(matches!(
            Error::from(Status::invalid_argument("unknown kind")),
            Error::BadRequest(_)
        ));
        assert!(matches!(
            Error::from(Status::internal("x")),
            Error::Other {
                code: Code::Internal,
                ..
            }
        ));
    }
}
