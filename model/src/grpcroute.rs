//! GRPCRoute (gateway.networking.k8s.io/v1; v1alpha2 has the same schema and is served from the same
//! stored object).

use crate::httproute::{StringMatchType, validate_mirror};
use crate::route::{
    BackendRef, HeaderModifier, LocalObjectReference, ParentReference, RequestMirror,
    SessionPersistence, validate_hostnames, validate_parent_refs,
};
use crate::validate::{Path, RE_GRPC_METHOD, RE_GRPC_SERVICE, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<GrpcRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef<GrpcRouteFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<GrpcHeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: StringMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: StringMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GrpcRouteFilterType {
    ResponseHeaderModifier,
    RequestHeaderModifier,
    RequestMirror,
    ExtensionRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteFilter {
    #[serde(rename = "type")]
    pub kind: GrpcRouteFilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectReference>,
}

impl GrpcRouteSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        validate_parent_refs(v, &p.field("parentRefs"), &self.parent_refs);
        validate_hostnames(v, &p.field("hostnames"), &self.hostnames);
        let rp = p.field("rules");
        v.max_items(&rp, self.rules.len(), 16);
        for (i, r) in self.rules.iter().enumerate() {
            let p = rp.index(i);
            let mp = p.field("matches");
            v.max_items(&mp, r.matches.len(), 8);
            for (j, m) in r.matches.iter().enumerate() {
                m.validate(v, &mp.index(j));
            }
            validate_filters(v, &p.field("filters"), &r.filters);
            let bp = p.field("backendRefs");
            v.max_items(&bp, r.backend_refs.len(), 16);
            for (j, b) in r.backend_refs.iter().enumerate() {
                b.validate_ref(v, &bp.index(j));
                validate_filters(v, &bp.index(j).field("filters"), &b.filters);
            }
            if let Some(sp) = &r.session_persistence {
                sp.validate(v, &p.field("sessionPersistence"));
            }
        }
    }
}

impl GrpcRouteMatch {
    fn validate(&self, v: &mut Validator, p: &Path) {
        if let Some(m) = &self.method {
            let mp = p.field("method");
            if let Some(s) = &m.service {
                v.len(&mp.field("service"), s, 0, 1024);
            }
            if let Some(s) = &m.method {
                v.len(&mp.field("method"), s, 0, 1024);
            }
            v.rule(
                &mp,
                m.service.is_some() || m.method.is_some(),
                "One or both of 'service' or 'method' must be specified",
            );
            if m.kind == StringMatchType::Exact {
                if let Some(s) = &m.service {
                    v.rule(
                        &mp,
                        RE_GRPC_SERVICE.is_match(s),
                        "service must only contain valid characters (matching ^(?i)\\.?[a-z_][a-z_0-9]*(\\.[a-z_][a-z_0-9]*)*$)",
                    );
                }
                if let Some(s) = &m.method {
                    v.rule(
                        &mp,
                        RE_GRPC_METHOD.is_match(s),
                        "method must only contain valid characters (matching ^[A-Za-z_][A-Za-z_0-9]*$)",
                    );
                }
            }
        }
        let hp = p.field("headers");
        v.max_items(&hp, self.headers.len(), 16);
        for (i, h) in self.headers.iter().enumerate() {
            v.header_name(&hp.index(i).field("name"), &h.name);
            v.len(&hp.index(i).field("value"), &h.value, 1, 4096);
        }
        v.unique_keys(&hp, self.headers.iter().map(|h| h.name.as_str()));
    }
}

fn validate_filters(v: &mut Validator, p: &Path, filters: &[GrpcRouteFilter]) {
    use GrpcRouteFilterType as T;
    v.max_items(p, filters.len(), 16);
    for (t, name) in [
        (T::RequestHeaderModifier, "RequestHeaderModifier"),
        (T::ResponseHeaderModifier, "ResponseHeaderModifier"),
    ] {
        v.rule(
            p,
            filters.iter().filter(|f| f.kind == t).count() <= 1,
            &format!("{name} filter cannot be repeated"),
        );
    }
    for (i, f) in filters.iter().enumerate() {
        let fp = p.index(i);
        let fields: [(T, bool, &str, &str); 4] = [
            (
                T::RequestHeaderModifier,
                f.request_header_modifier.is_some(),
                "requestHeaderModifier",
                "RequestHeaderModifier",
            ),
            (
                T::ResponseHeaderModifier,
                f.response_header_modifier.is_some(),
                "responseHeaderModifier",
                "ResponseHeaderModifier",
            ),
            (
                T::RequestMirror,
                f.request_mirror.is_some(),
                "requestMirror",
                "RequestMirror",
            ),
            (
                T::ExtensionRef,
                f.extension_ref.is_some(),
                "extensionRef",
                "ExtensionRef",
            ),
        ];
        for (t, present, field, name) in fields {
            v.rule(
                &fp,
                !(present && f.kind != t),
                &format!("filter.{field} must be nil if the filter.type is not {name}"),
            );
            v.rule(
                &fp,
                present || f.kind != t,
                &format!("filter.{field} must be specified for {name} filter.type"),
            );
        }
        if let Some(m) = &f.request_header_modifier {
            m.validate(v, &fp.field("requestHeaderModifier"));
        }
        if let Some(m) = &f.response_header_modifier {
            m.validate(v, &fp.field("responseHeaderModifier"));
        }
        if let Some(m) = &f.request_mirror {
            validate_mirror(v, &fp.field("requestMirror"), &m.backend_ref);
        }
        if let Some(e) = &f.extension_ref {
            e.validate(v, &fp.field("extensionRef"));
        }
    }
}
