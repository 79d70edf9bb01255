//! Types shared by HTTPRoute and GRPCRoute (and the policies): parent and backend references, header
//! modifiers, request mirrors, session persistence, and their CRD validation rules.

use crate::duration;
use crate::kinds::GATEWAY_GROUP;
use crate::validate::{Path, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub(crate) fn gateway_group() -> String {
    GATEWAY_GROUP.to_string()
}
fn gateway_kind() -> String {
    "Gateway".to_string()
}
fn service_kind() -> String {
    "Service".to_string()
}
fn weight_one() -> i64 {
    1
}

/// `ParentReference`: the Gateway (or, for mesh routes, the Service) a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    #[serde(default = "gateway_group")]
    pub group: String,
    #[serde(default = "gateway_kind")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

impl ParentReference {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        v.group(&p.field("group"), &self.group);
        v.kind(&p.field("kind"), &self.kind);
        v.object_name(&p.field("name"), &self.name);
        if let Some(ns) = &self.namespace {
            v.namespace(&p.field("namespace"), ns);
        }
        if let Some(s) = &self.section_name {
            v.section_name(&p.field("sectionName"), s);
        }
        if let Some(port) = self.port {
            v.port(&p.field("port"), port);
        }
    }

    fn same_parent(&self, o: &ParentReference) -> bool {
        let ns = |r: &ParentReference| r.namespace.clone().unwrap_or_default();
        self.group == o.group && self.kind == o.kind && self.name == o.name && ns(self) == ns(o)
    }
}

/// `CommonRouteSpec.parentRefs`, with the experimental channel's uniqueness rules (sectionName or port).
pub fn validate_parent_refs(v: &mut Validator, p: &Path, refs: &[ParentReference]) {
    v.max_items(p, refs.len(), 32);
    for (i, r) in refs.iter().enumerate() {
        r.validate(v, &p.index(i));
    }
    let empty_section = |r: &ParentReference| r.section_name.as_deref().unwrap_or("").is_empty();
    let empty_port = |r: &ParentReference| r.port.unwrap_or(0) == 0;
    let specified = refs.iter().all(|a| {
        refs.iter().all(|b| {
            !a.same_parent(b)
                || (empty_section(a) == empty_section(b) && empty_port(a) == empty_port(b))
        })
    });
    v.rule(
        p,
        specified,
        "sectionName or port must be specified when parentRefs includes 2 or more references to the same parent",
    );
    let unique = refs.iter().all(|a| {
        refs.iter()
            .filter(|b| {
                a.same_parent(b)
                    && a.section_name.as_deref().unwrap_or("")
                        == b.section_name.as_deref().unwrap_or("")
                    && a.port.unwrap_or(0) == b.port.unwrap_or(0)
            })
            .count()
            == 1
    });
    v.rule(
        p,
        unique,
        "sectionName or port must be unique when parentRefs includes 2 or more references to the same parent",
    );
}

/// `BackendObjectReference`: a Service (by default) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectReference {
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

impl BackendObjectReference {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        validate_backend_object_ref(
            v,
            p,
            &self.group,
            &self.kind,
            &self.name,
            self.namespace.as_deref(),
            self.port,
        );
    }
}

fn validate_backend_object_ref(
    v: &mut Validator,
    p: &Path,
    group: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    port: Option<i64>,
) {
    v.group(&p.field("group"), group);
    v.kind(&p.field("kind"), kind);
    v.object_name(&p.field("name"), name);
    if let Some(ns) = namespace {
        v.namespace(&p.field("namespace"), ns);
    }
    if let Some(port) = port {
        v.port(&p.field("port"), port);
    }
    v.rule(
        p,
        !(group.is_empty() && kind == "Service") || port.is_some(),
        "Must have port for Service reference",
    );
}

/// A weighted backend of a route rule, with its own filters (`F` is the route's filter type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef<F> {
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default = "weight_one")]
    pub weight: i64,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub filters: Vec<F>,
}

impl<F> BackendRef<F> {
    /// The reference without weight and filters.
    pub fn object_ref(&self) -> BackendObjectReference {
        BackendObjectReference {
            group: self.group.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
        }
    }

    /// Validates the reference and weight; the caller validates `filters`.
    pub fn validate_ref(&self, v: &mut Validator, p: &Path) {
        validate_backend_object_ref(
            v,
            p,
            &self.group,
            &self.kind,
            &self.name,
            self.namespace.as_deref(),
            self.port,
        );
        v.range(&p.field("weight"), self.weight, 0, 1_000_000);
    }
}

/// A header name and value, as header modifiers use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// `HTTPHeaderFilter`: RequestHeaderModifier and ResponseHeaderModifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        for (field, list) in [("set", &self.set), ("add", &self.add)] {
            let lp = p.field(field);
            v.max_items(&lp, list.len(), 16);
            for (i, h) in list.iter().enumerate() {
                v.header_name(&lp.index(i).field("name"), &h.name);
                v.len(&lp.index(i).field("value"), &h.value, 1, 4096);
            }
            v.unique_keys(&lp, list.iter().map(|h| h.name.as_str()));
        }
        let rp = p.field("remove");
        v.max_items(&rp, self.remove.len(), 16);
        v.unique_keys(&rp, self.remove.iter().map(String::as_str));
    }
}

/// `HTTPRequestMirrorFilter` (v1.1: no percent or fraction yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend_ref: BackendObjectReference,
}

/// `LocalObjectReference` (extensionRef, caCertificateRefs of BackendTLSPolicy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

impl LocalObjectReference {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        v.group(&p.field("group"), &self.group);
        v.kind(&p.field("kind"), &self.kind);
        v.object_name(&p.field("name"), &self.name);
    }
}

/// Whether the session is carried in a cookie or a header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SessionPersistenceType {
    #[default]
    Cookie,
    Header,
}

/// Whether a persistence cookie lives for the browser session or carries an expiry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CookieLifetimeType {
    #[default]
    Session,
    Permanent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieConfig {
    #[serde(default)]
    pub lifetime_type: CookieLifetimeType,
}

/// `SessionPersistence` (GEP-1619), on route rules and in BackendLBPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: SessionPersistenceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

impl SessionPersistence {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        if let Some(n) = &self.session_name {
            v.len(&p.field("sessionName"), n, 0, 128);
        }
        validate_duration(
            v,
            &p.field("absoluteTimeout"),
            self.absolute_timeout.as_deref(),
        );
        validate_duration(v, &p.field("idleTimeout"), self.idle_timeout.as_deref());
        let permanent = self
            .cookie_config
            .as_ref()
            .is_some_and(|c| c.lifetime_type == CookieLifetimeType::Permanent);
        v.rule(
            p,
            !permanent || self.absolute_timeout.is_some(),
            "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent",
        );
    }

    pub fn lifetime(&self) -> CookieLifetimeType {
        self.cookie_config
            .as_ref()
            .map(|c| c.lifetime_type)
            .unwrap_or_default()
    }
}

/// Checks an optional GEP-2257 duration field.
pub fn validate_duration(v: &mut Validator, p: &Path, value: Option<&str>) {
    if let Some(s) = value
        && duration::parse(s).is_none()
    {
        v.invalid(
            p,
            s,
            "must match the duration pattern '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
        );
    }
}

/// Validates route hostnames (`spec.hostnames`).
pub fn validate_hostnames(v: &mut Validator, p: &Path, hostnames: &[String]) {
    v.max_items(p, hostnames.len(), 16);
    for (i, h) in hostnames.iter().enumerate() {
        v.hostname(&p.index(i), h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pref(name: &str, section: Option<&str>, port: Option<i64>) -> ParentReference {
        ParentReference {
            group: gateway_group(),
            kind: "Gateway".into(),
            namespace: None,
            name: name.into(),
            section_name: section.map(str::to_string),
            port,
        }
    }

    fn check(refs: &[ParentReference]) -> usize {
        let mut v = Validator::new();
        validate_parent_refs(&mut v, &Path::root("spec.parentRefs"), refs);
        v.into_errors().len()
    }

    #[test]
    fn parent_ref_uniqueness_rules() {
        assert_eq!(check(&[pref("a", None, None), pref("b", None, None)]), 0);
        assert_eq!(
            check(&[pref("a", Some("x"), None), pref("a", Some("y"), None)]),
            0
        );
        assert_eq!(
            check(&[pref("a", None, Some(80)), pref("a", None, Some(81))]),
            0
        );
        // Same parent twice with nothing to tell them apart.
        assert_eq!(check(&[pref("a", None, None), pref("a", None, None)]), 1);
        // One names a section, the other does not.
        assert_eq!(
            check(&[pref("a", Some("x"), None), pref("a", None, None)]),
            1
        );
        // Same section twice.
        assert_eq!(
            check(&[pref("a", Some("x"), None), pref("a", Some("x"), None)]),
            1
        );
        // One sets a port, the other does not.
        assert_eq!(
            check(&[pref("a", Some("x"), Some(80)), pref("a", Some("y"), None)]),
            1
        );
    }

    #[test]
    fn permanent_cookie_needs_absolute_timeout() {
        let mut sp = SessionPersistence {
            cookie_config: Some(CookieConfig {
                lifetime_type: CookieLifetimeType::Permanent,
            }),
            ..Default::default()
        };
        let mut v = Validator::new();
        sp.validate(&mut v, &Path::root("spec.sessionPersistence"));
        assert_eq!(v.into_errors().len(), 1);
        sp.absolute_timeout = Some("1h".into());
        let mut v = Validator::new();
        sp.validate(&mut v, &Path::root("spec.sessionPersistence"));
        assert!(v.is_empty());
    }
}
