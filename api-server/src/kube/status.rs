//! Errors as the Kubernetes API reports them: a `metav1.Status` with the HTTP code, the reason and the
//! details kubectl reads (`The HTTPRoute "x" is invalid: spec.rules[0]...` comes from `details.kind`,
//! `details.name` and `details.causes[].field`). Pure.

use gw_client::Error;
use gw_model::kinds::KindInfo;
use http::StatusCode;
use serde_json::{Value, json};

/// A `metav1.Status` failure and its HTTP code.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: StatusCode,
    pub body: Value,
}

impl Failure {
    pub fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            body: json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message.into(),
                "reason": reason,
                "code": code.as_u16(),
            }),
        }
    }

    pub fn with_details(mut self, details: Value) -> Failure {
        self.body["details"] = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Failure {
        Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// A revision older than the history (a list's continue token, or a watch's resourceVersion).
    pub fn expired(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::GONE, "Expired", message)
    }

    /// An object's failure, named as kube-apiserver names it (`httproutes.gateway.networking.k8s.io
    /// "x"`), from a store error.
    pub fn of(e: &Error, info: &KindInfo, name: &str) -> Failure {
        let resource = if info.group.is_empty() {
            info.plural.to_string()
        } else {
            format!("{}.{}", info.plural, info.group)
        };
        let details = json!({"name": name, "group": info.group, "kind": info.plural});
        match e {
            Error::Invalid(docs) => {
                let causes: Vec<Value> = docs
                    .iter()
                    .flat_map(|d| &d.errors)
                    .map(|f| {
                        json!({"reason": "FieldValueInvalid", "message": f.message, "field": f.path})
                    })
                    .collect();
                let list: Vec<String> = docs
                    .iter()
                    .flat_map(|d| &d.errors)
                    .map(|f| {
                        if f.path.is_empty() {
                            f.message.clone()
                        } else {
                            format!("{}: {}", f.path, f.message)
                        }
                    })
                    .collect();
                let message = match list.as_slice() {
                    [one] => format!("{} {name:?} is invalid: {one}", qualified(info)),
                    many => format!(
                        "{} {name:?} is invalid: [{}]",
                        qualified(info),
                        many.join(", ")
                    ),
                };
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message).with_details(
                    json!({"name": name, "group": info.group, "kind": info.kind, "causes": causes}),
                )
            }
            Error::Conflict { expected: 0, .. } => Failure::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{resource} {name:?} already exists"),
            )
            .with_details(details),
            Error::Conflict { .. } => Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                ),
            )
            .with_details(details),
            Error::NotFound { .. } => {
                Failure::not_found(format!("{resource} {name:?} not found")).with_details(details)
            }
            Error::Compacted {
                requested,
                compact_revision,
            } => Failure::expired(format!(
                "too old resource version: {requested} ({compact_revision})"
            )),
            Error::BadRequest(m) => Failure::bad_request(m.clone()),
            Error::TooLarge { .. } => {
                Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", e.to_string())
            }
            Error::OutcomeUnknown { .. } => {
                Failure::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", e.to_string())
            }
            Error::NoLeader { .. } | Error::Unavailable { .. } => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e.to_string())
            }
            Error::Other { code, message } => match code {
                tonic::Code::PermissionDenied => Failure::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("{resource} {name:?} is forbidden: {message}"),
                )
                .with_details(details),
                tonic::Code::Unauthenticated => Failure::unauthorized(message.clone()),
                tonic::Code::Unavailable => Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    message.clone(),
                ),
                tonic::Code::DeadlineExceeded => {
                    Failure::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message.clone())
                }
                _ => Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    message.clone(),
                ),
            },
            Error::Config(m) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m.clone())
            }
        }
    }
}

/// `Kind.group` as kube-apiserver names a kind in messages (`HTTPRoute.gateway.networking.k8s.io`).
fn qualified(info: &KindInfo) -> String {
    if info.group.is_empty() {
        info.kind.to_string()
    } else {
        format!("{}.{}", info.kind, info.group)
    }
}

/// The `Status` of a successful delete.
pub fn deleted(info: &KindInfo, name: &str, uid: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": info.group, "kind": info.plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_client::{FieldError, InvalidDocument};
    use gw_model::ObjectKey;

    fn route() -> &'static KindInfo {
        gw_model::kinds::by_group_kind(gw_model::kinds::GATEWAY_GROUP, "HTTPRoute").unwrap()
    }

    #[test]
    fn store_errors_become_the_statuses_kubectl_knows() {
        let key = ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", "d", "x");
        let f = Failure::of(
            &Error::Conflict {
                key: key.clone(),
                expected: 0,
                current: 4,
            },
            route(),
            "x",
        );
        assert_eq!(
            (f.code.as_u16(), f.body["reason"].as_str()),
            (409, Some("AlreadyExists"))
        );
        assert_eq!(
            f.body["message"],
            "httproutes.gateway.networking.k8s.io \"x\" already exists"
        );
        let f = Failure::of(
            &Error::Conflict {
                key: key.clone(),
                expected: 3,
                current: 4,
            },
            route(),
            "x",
        );
        assert_eq!(f.body["reason"], "Conflict");
        let f = Failure::of(&Error::NotFound { key }, route(), "x");
        assert_eq!(
            (f.code.as_u16(), &f.body["details"]["kind"]),
            (404, &json!("httproutes"))
        );
        let f = Failure::of(
            &Error::Invalid(vec![InvalidDocument {
                source: "-".into(),
                index: 1,
                kind: "HTTPRoute".into(),
                namespace: "d".into(),
                name: "x".into(),
                errors: vec![FieldError {
                    path: "spec.rules[0].backendRefs".into(),
                    message: "Too many: 17: must have at most 16 items".into(),
                }],
            }]),
            route(),
            "x",
        );
        assert_eq!(f.code.as_u16(), 422);
        assert_eq!(
            f.body["message"],
            "HTTPRoute.gateway.networking.k8s.io \"x\" is invalid: spec.rules[0].backendRefs: Too many: 17: must have at most 16 items"
        );
        assert_eq!(
            f.body["details"]["causes"][0]["field"],
            "spec.rules[0].backendRefs"
        );
        let f = Failure::of(
            &Error::Other {
                code: tonic::Code::PermissionDenied,
                message: "spiffe://gw/node/gw/a may not apply".into(),
            },
            route(),
            "x",
        );
        assert_eq!(
            (f.code.as_u16(), f.body["reason"].as_str()),
            (403, Some("Forbidden"))
        );
        let f = Failure::of(
            &Error::Compacted {
                requested: 3,
                compact_revision: 9,
            },
            route(),
            "x",
        );
        assert_eq!(
            (f.code.as_u16(), f.body["reason"].as_str()),
            (410, Some("Expired"))
        );
    }
}
