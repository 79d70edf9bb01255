//! ReferenceGrant, BackendLBPolicy (v1alpha2) and BackendTLSPolicy (v1alpha3, with v1alpha2 objects
//! converted on the way in).

use crate::route::LocalObjectReference;
use crate::route::SessionPersistence;
use crate::validate::{FieldError, Path, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ReferenceGrantSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        let fp = p.field("from");
        v.min_items(&fp, self.from.len(), 1);
        v.max_items(&fp, self.from.len(), 16);
        for (i, f) in self.from.iter().enumerate() {
            let ip = fp.index(i);
            v.group(&ip.field("group"), &f.group);
            v.kind(&ip.field("kind"), &f.kind);
            v.namespace(&ip.field("namespace"), &f.namespace);
        }
        let tp = p.field("to");
        v.min_items(&tp, self.to.len(), 1);
        v.max_items(&tp, self.to.len(), 16);
        for (i, t) in self.to.iter().enumerate() {
            let ip = tp.index(i);
            v.group(&ip.field("group"), &t.group);
            v.kind(&ip.field("kind"), &t.kind);
            if let Some(n) = &t.name {
                v.object_name(&ip.field("name"), n);
            }
        }
    }
}

/// `LocalPolicyTargetReference`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Only BackendTLSPolicy's targets carry a section name (a Service port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl PolicyTargetReference {
    fn validate(&self, v: &mut Validator, p: &Path) {
        v.group(&p.field("group"), &self.group);
        v.kind(&p.field("kind"), &self.kind);
        v.object_name(&p.field("name"), &self.name);
        if let Some(s) = &self.section_name {
            v.section_name(&p.field("sectionName"), s);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendLbPolicySpec {
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

impl BackendLbPolicySpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        let tp = p.field("targetRefs");
        v.min_items(&tp, self.target_refs.len(), 1);
        v.max_items(&tp, self.target_refs.len(), 16);
        for (i, t) in self.target_refs.iter().enumerate() {
            if t.section_name.is_some() {
                v.error(
                    &tp.index(i).field("sectionName"),
                    "Forbidden: BackendLBPolicy targets do not take a sectionName",
                );
            }
            t.validate(v, &tp.index(i));
        }
        let keys: Vec<String> = self
            .target_refs
            .iter()
            .map(|t| format!("{}/{}/{}", t.group, t.kind, t.name))
            .collect();
        v.unique_keys(&tp, keys.iter().map(String::as_str));
        if let Some(sp) = &self.session_persistence {
            sp.validate(v, &p.field("sessionPersistence"));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicySpec {
    pub target_refs: Vec<PolicyTargetReference>,
    pub validation: BackendTlsPolicyValidation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WellKnownCaCertificates {
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicyValidation {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "caCertificateRefs"
    )]
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "wellKnownCACertificates"
    )]
    pub well_known_ca_certificates: Option<WellKnownCaCertificates>,
    pub hostname: String,
}

impl BackendTlsPolicySpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        let tp = p.field("targetRefs");
        v.min_items(&tp, self.target_refs.len(), 1);
        v.max_items(&tp, self.target_refs.len(), 16);
        for (i, t) in self.target_refs.iter().enumerate() {
            t.validate(v, &tp.index(i));
        }
        let vp = p.field("validation");
        let val = &self.validation;
        let cp = vp.field("caCertificateRefs");
        v.max_items(&cp, val.ca_certificate_refs.len(), 8);
        for (i, r) in val.ca_certificate_refs.iter().enumerate() {
            r.validate(v, &cp.index(i));
        }
        v.precise_hostname(&vp.field("hostname"), &val.hostname);
        let has_refs = !val.ca_certificate_refs.is_empty();
        let has_well_known = val.well_known_ca_certificates.is_some();
        v.rule(
            &vp,
            !(has_refs && has_well_known),
            "must not contain both CACertificateRefs and WellKnownCACertificates",
        );
        v.rule(
            &vp,
            has_refs || has_well_known,
            "must specify either CACertificateRefs or WellKnownCACertificates",
        );
    }
}

/// Converts the `spec` of a BackendTLSPolicy written for v1alpha2 (Gateway API v1.0: one `targetRef`,
/// `tls.caCertRefs`, `tls.wellKnownCACerts`, `tls.hostname`) into the v1alpha3 shape (`targetRefs`,
/// `validation.caCertificateRefs`, `validation.wellKnownCACertificates`, `validation.hostname`).
/// Nothing is dropped silently: a field that has no v1alpha3 equivalent is an error.
pub fn convert_backend_tls_policy_v1alpha2(
    spec: &Value,
    policy_namespace: &str,
) -> Result<Value, FieldError> {
    let err = |path: &str, message: String| FieldError {
        path: path.to_string(),
        message,
    };
    let obj = spec
        .as_object()
        .ok_or_else(|| err("spec", "Invalid value: must be an object".into()))?;
    let mut out = Map::new();
    for (k, val) in obj {
        match k.as_str() {
            "targetRef" => {
                let mut t = val.as_object().cloned().ok_or_else(|| {
                    err("spec.targetRef", "Invalid value: must be an object".into())
                })?;
                if let Some(ns) = t.remove("namespace")
                    && ns.as_str() != Some(policy_namespace)
                {
                    return Err(err(
                        "spec.targetRef.namespace",
                        format!(
                            "Invalid value: {ns}: v1alpha3 policies can only target objects in their own namespace ({policy_namespace:?}); this v1alpha2 object cannot be converted"
                        ),
                    ));
                }
                out.insert("targetRefs".into(), json!([Value::Object(t)]));
            }
            "tls" => {
                let tls = val
                    .as_object()
                    .ok_or_else(|| err("spec.tls", "Invalid value: must be an object".into()))?;
                let mut validation = Map::new();
                for (tk, tv) in tls {
                    let new_key = match tk.as_str() {
                        "caCertRefs" => "caCertificateRefs",
                        "wellKnownCACerts" => "wellKnownCACertificates",
                        "hostname" => "hostname",
                        other => {
                            return Err(err(
                                &format!("spec.tls.{other}"),
                                "unknown field in BackendTLSPolicy v1alpha2".into(),
                            ));
                        }
                    };
                    validation.insert(new_key.into(), tv.clone());
                }
                out.insert("validation".into(), Value::Object(validation));
            }
            other => {
                return Err(err(
                    &format!("spec.{other}"),
                    "unknown field in BackendTLSPolicy v1alpha2 (expected targetRef, tls)".into(),
                ));
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_v1alpha2_backend_tls_policy() {
        let v1alpha2 = json!({
            "targetRef": {"group": "", "kind": "Service", "name": "api", "namespace": "prod", "sectionName": "https"},
            "tls": {"caCertRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}], "hostname": "api.example.com"}
        });
        let v1alpha3 = convert_backend_tls_policy_v1alpha2(&v1alpha2, "prod").unwrap();
        assert_eq!(
            v1alpha3,
            json!({
                "targetRefs": [{"group": "", "kind": "Service", "name": "api", "sectionName": "https"}],
                "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}], "hostname": "api.example.com"}
            })
        );
        let spec: BackendTlsPolicySpec = serde_json::from_value(v1alpha3).unwrap();
        let mut v = Validator::new();
        spec.validate(&mut v, &Path::root("spec"));
        assert!(v.is_empty(), "{:?}", v.into_errors());
    }

    #[test]
    fn refuses_cross_namespace_v1alpha2_target() {
        let v1alpha2 = json!({"targetRef": {"group": "", "kind": "Service", "name": "api", "namespace": "other"},
            "tls": {"wellKnownCACerts": "System", "hostname": "a.example"}});
        let e = convert_backend_tls_policy_v1alpha2(&v1alpha2, "prod").unwrap_err();
        assert_eq!(e.path, "spec.targetRef.namespace");
    }

    #[test]
    fn exactly_one_ca_source() {
        for (validation, errors) in [
            (json!({"hostname": "a.example"}), 1),
            (
                json!({"hostname": "a.example", "wellKnownCACertificates": "System"}),
                0,
            ),
            (
                json!({"hostname": "a.example", "wellKnownCACertificates": "System",
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}),
                1,
            ),
        ] {
            let spec: BackendTlsPolicySpec = serde_json::from_value(json!({
                "targetRefs": [{"group": "", "kind": "Service", "name": "s"}], "validation": validation
            })).unwrap();
            let mut v = Validator::new();
            spec.validate(&mut v, &Path::root("spec"));
            assert_eq!(v.into_errors().len(), errors);
        }
    }
}
