//! Admission of one document: identify its kind and version, validate it as the Kubernetes API server
//! would with the v1.1 CRDs (schema and CEL rules), apply the CRD defaults, convert it to the storage
//! version, and produce the object to store. Every error names the file, the document, the object and
//! the field.

use crate::core::{ConfigMapBody, EndpointSliceBody, SecretBody, ServiceSpec};
use crate::gateway::{GatewayClassSpec, GatewaySpec};
use crate::grpcroute::GrpcRouteSpec;
use crate::httproute::HttpRouteSpec;
use crate::kinds::{self, BACKEND_TLS_POLICY_LEGACY_VERSION, KindInfo, ObjectKey};
use crate::l4route::{TcpRouteSpec, TlsRouteSpec, UdpRouteSpec};
use crate::meta::{
    InputMeta, NameRule, validate_annotations, validate_finalizers, validate_labels, validate_name,
};
use crate::parse::Document;
use crate::policy::{
    BackendLbPolicySpec, BackendTlsPolicySpec, ReferenceGrantSpec,
    convert_backend_tls_policy_v1alpha2,
};
use crate::registry::{KubeSyncReport, NodeLease, StatusWriterLease};
use crate::validate::{FieldError, Path, Validator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::fmt;

/// A document that passed admission.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub key: ObjectKey,
    /// The object to store: storage apiVersion, defaults applied, `metadata` reduced to what a user may
    /// set (name, namespace, labels, annotations, finalizers, managedFields), no `status`.
    pub object: Value,
    /// `metadata.resourceVersion` of the document, a precondition of the write.
    pub expected_resource_version: Option<u64>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    pub source: String,
    pub index: usize,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.index)?;
        if !self.kind.is_empty() {
            let obj = if self.namespace.is_empty() {
                self.name.clone()
            } else {
                format!("{}/{}", self.namespace, self.name)
            };
            write!(f, " ({} {obj})", self.kind)?;
        }
        write!(f, ": ")?;
        let msgs: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        write!(f, "{}", msgs.join("; "))
    }
}

impl std::error::Error for DocumentError {}

/// Top-level fields that are never part of what is stored from a document.
const ENVELOPE: &[&str] = &["apiVersion", "kind", "metadata", "status"];

/// Admits one document.
/// Admits one document. The error is boxed: it is large, and the success path is the common one.
pub fn admit(doc: &Document) -> Result<Admitted, Box<DocumentError>> {
    // As kube-apiserver does for custom resources: explicit nulls are pruned before defaulting
    // (`hostnames: null` is no hostnames), and validation sees the pruned object.
    let pruned = prune_nulls(&doc.value);
    let obj = pruned.as_object();
    let get_str = |k: &str| {
        obj.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let api_version = get_str("apiVersion");
    let kind = get_str("kind");
    let meta_value = obj
        .and_then(|o| o.get("metadata"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut err = DocumentError {
        source: doc.source.clone(),
        index: doc.index,
        kind: kind.to_string(),
        namespace: String::new(),
        name: meta_value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        errors: vec![],
    };
    let fail = |mut err: DocumentError, path: &str, message: String| {
        err.errors.push(FieldError {
            path: path.to_string(),
            message,
        });
        Err(Box::new(err))
    };
    if api_version.is_empty() {
        return fail(err, "apiVersion", "Required value".into());
    }
    if kind.is_empty() {
        return fail(err, "kind", "Required value".into());
    }
    let (group, version) = kinds::split_api_version(api_version);
    let Some(info) = kinds::by_group_kind(group, kind) else {
        let served: Vec<&str> = kinds::KINDS.iter().map(|k| k.kind).collect();
        return fail(
            err,
            "kind",
            format!(
                "{kind} ({api_version}) is not a kind gw serves; served kinds: {}",
                served.join(", ")
            ),
        );
    };
    let legacy_tls_policy =
        info.kind == "BackendTLSPolicy" && version == BACKEND_TLS_POLICY_LEGACY_VERSION;
    if !info.serves(version) && !legacy_tls_policy {
        return fail(
            err,
            "apiVersion",
            format!(
                "Unsupported value: {api_version:?}: {kind} is served as {}",
                info.versions
                    .iter()
                    .map(|v| kinds::api_version(info.group, v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }

    let mut v = Validator::new();
    let meta: InputMeta = match typed(&meta_value, "metadata") {
        Ok(m) => m,
        Err(e) => return fail(err, &e.path, e.message),
    };
    let namespace = if info.namespaced {
        let ns = meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        validate_name(
            &mut v,
            &Path::root("metadata.namespace"),
            &ns,
            NameRule::Label,
        );
        ns
    } else {
        String::new()
    };
    err.namespace = namespace.clone();
    let name_rule = match info.kind {
        "Namespace" => NameRule::Label,
        "Service" => NameRule::Label1035,
        _ => NameRule::Subdomain,
    };
    validate_name(&mut v, &Path::root("metadata.name"), &meta.name, name_rule);
    validate_labels(&mut v, &Path::root("metadata.labels"), &meta.labels);
    validate_annotations(
        &mut v,
        &Path::root("metadata.annotations"),
        &meta.annotations,
    );
    validate_finalizers(&mut v, &Path::root("metadata.finalizers"), &meta.finalizers);
    let expected_resource_version = match meta.resource_version.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                v.invalid(
                    &Path::root("metadata.resourceVersion"),
                    s,
                    "must be a decimal revision",
                );
                None
            }
        },
    };

    let body = obj.cloned().unwrap_or_default();
    let body_result = admit_body(info, body, &namespace, legacy_tls_policy, &mut v);
    let mut errors = v.into_errors();
    let content = match body_result {
        Ok(c) => c,
        Err(e) => {
            errors.push(e);
            Map::new()
        }
    };
    if !errors.is_empty() {
        err.errors = errors;
        return Err(Box::new(err));
    }

    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(meta.name));
    if !namespace.is_empty() {
        metadata.insert("namespace".into(), json!(namespace));
    }
    if !meta.labels.is_empty() {
        metadata.insert("labels".into(), json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        metadata.insert("annotations".into(), json!(meta.annotations));
    }
    if !meta.finalizers.is_empty() {
        metadata.insert("finalizers".into(), json!(meta.finalizers));
    }
    if let Some(m) = meta.managed_fields {
        metadata.insert("managedFields".into(), Value::Array(m));
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(info.storage_api_version()));
    object.insert("kind".into(), json!(info.kind));
    object.insert("metadata".into(), Value::Object(metadata));
    object.extend(content);
    Ok(Admitted {
        key: ObjectKey::new(info.group, info.kind, &namespace, &meta.name),
        object: Value::Object(object),
        expected_resource_version,
    })
}

/// The object without its `null` fields (in objects at any depth; list items stay).
fn prune_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), prune_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune_nulls).collect()),
        other => other.clone(),
    }
}

/// Whether a kind has rules over its previous version (the CRDs' transition rules, `oldSelf`).
pub fn has_transition_rules(kind: &str) -> bool {
    kind == "GatewayClass"
}

/// The transition rules of an update from `old` to `new` (admitted objects of one kind), as the
/// CRDs state them: a GatewayClass's `spec.controllerName` is immutable.
pub fn transition_errors(kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
    match kind {
        "GatewayClass" if old["spec"]["controllerName"] != new["spec"]["controllerName"] => {
            vec![FieldError {
                path: "spec.controllerName".into(),
                message: "Invalid value: \"string\": Value is immutable".into(),
            }]
        }
        _ => vec![],
    }
}

/// Deserializes `value` into `T`, reporting the failing field's path under `prefix`.
fn typed<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, FieldError> {
    let value = if value.is_null() {
        json!({})
    } else {
        value.clone()
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == "." || inner.is_empty()) {
            (_, true) => prefix.to_string(),
            (true, false) => inner,
            (false, false) => format!("{prefix}.{inner}"),
        };
        FieldError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("model types serialize to JSON")
}

/// Parses, validates and normalises a `spec` of a Gateway API kind.
fn admit_spec<T, F>(
    body: &Map<String, Value>,
    v: &mut Validator,
    validate: F,
) -> Result<Map<String, Value>, FieldError>
where
    T: DeserializeOwned + Serialize,
    F: FnOnce(&T, &mut Validator, &Path),
{
    for k in body.keys() {
        if !ENVELOPE.contains(&k.as_str()) && k != "spec" {
            return Err(FieldError {
                path: k.clone(),
                message: format!("unknown field {k:?}"),
            });
        }
    }
    let spec = body.get("spec").ok_or_else(|| FieldError {
        path: "spec".into(),
        message: "Required value".into(),
    })?;
    let typed_spec: T = typed(spec, "spec")?;
    validate(&typed_spec, v, &Path::root("spec"));
    let mut out = Map::new();
    out.insert("spec".into(), to_value(&typed_spec));
    Ok(out)
}

/// Returns the stored content of the document: everything but apiVersion, kind, metadata and status.
fn admit_body(
    info: &KindInfo,
    mut body: Map<String, Value>,
    namespace: &str,
    legacy_tls_policy: bool,
    v: &mut Validator,
) -> Result<Map<String, Value>, FieldError> {
    match info.kind {
        "GatewayClass" => admit_spec::<GatewayClassSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "Gateway" => admit_spec::<GatewaySpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "HTTPRoute" => admit_spec::<HttpRouteSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "GRPCRoute" => admit_spec::<GrpcRouteSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "TLSRoute" => admit_spec::<TlsRouteSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "TCPRoute" => admit_spec::<TcpRouteSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "UDPRoute" => admit_spec::<UdpRouteSpec, _>(&body, v, |s, v, p| s.validate(v, p)),
        "ReferenceGrant" => {
            admit_spec::<ReferenceGrantSpec, _>(&body, v, |s, v, p| s.validate(v, p))
        }
        "BackendLBPolicy" => {
            admit_spec::<BackendLbPolicySpec, _>(&body, v, |s, v, p| s.validate(v, p))
        }
        "BackendTLSPolicy" => {
            if legacy_tls_policy && let Some(spec) = body.get("spec") {
                let converted = convert_backend_tls_policy_v1alpha2(spec, namespace)?;
                body.insert("spec".into(), converted);
            }
            admit_spec::<BackendTlsPolicySpec, _>(&body, v, |s, v, p| s.validate(v, p))
        }
        "Namespace" => {
            body.retain(|k, _| k == "spec");
            Ok(body)
        }
        // Its name and namespace are the whole of it.
        "ServiceExport" => Ok(Map::new()),
        // Not gw's: kept as it is (its IPs, in status, are what gw reads).
        "Pod" => Ok(keep(body, &["spec"])),
        "Service" => {
            let spec_value = body.get("spec").cloned().unwrap_or_else(|| json!({}));
            let spec: ServiceSpec = typed(&spec_value, "spec")?;
            spec.validate(v, &Path::root("spec"));
            Ok(keep(body, &["spec"]))
        }
        "EndpointSlice" => {
            let b: EndpointSliceBody = typed(
                &Value::Object(keep(body.clone(), &["addressType", "endpoints", "ports"])),
                "",
            )?;
            b.validate(v);
            Ok(keep(body, &["addressType", "endpoints", "ports"]))
        }
        "Secret" => {
            let b: SecretBody = typed(
                &Value::Object(keep(body, &["type", "data", "stringData", "immutable"])),
                "",
            )?;
            let b = b.admit(v);
            Ok(to_value(&b).as_object().cloned().unwrap_or_default())
        }
        "ConfigMap" => {
            let kept = keep(body, &["data", "binaryData", "immutable"]);
            let b: ConfigMapBody = typed(&Value::Object(kept.clone()), "")?;
            b.validate(v);
            Ok(kept)
        }
        "SessionAffinity" => Err(FieldError {
            path: "kind".into(),
            message: "SessionAffinity entries are written by gateway nodes only \
                      (inspect them with `gwadm affinity ls`, remove them with `gwadm affinity evict`)"
                .into(),
        }),
        "GatewayNode" => admit_spec::<NodeLease, _>(&body, v, |s, v, p| s.validate(v, p)),
        "KubeSyncReport" => admit_spec::<KubeSyncReport, _>(&body, v, |s, v, p| s.validate(v, p)),
        "StatusWriterLease" => {
            admit_spec::<StatusWriterLease, _>(&body, v, |s, v, p| s.validate(v, p))
        }
        other => unreachable!("kind {other} is in the registry but has no admission"),
    }
}

/// The listed top-level fields of `body`.
fn keep(mut body: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    body.retain(|k, _| fields.contains(&k.as_str()));
    body
}

/// Presents a stored object at another served version of its kind. In v1.1 every alternative served
/// version has the storage version's schema, so only `apiVersion` changes.
pub fn convert_for_output(object: &Value, info: &KindInfo, version: &str) -> Option<Value> {
    if !info.serves(version) {
        return None;
    }
    let mut out = object.clone();
    out["apiVersion"] = json!(kinds::api_version(info.group, version));
    Some(out)
}

#[cfg(test)]
mod tests;
