//! The experimental layer-4 routes (gateway.networking.k8s.io/v1alpha2): TLSRoute (by the TLS
//! server name, on TLS listeners), TCPRoute and UDPRoute (on TCP and UDP listeners). Their rules
//! hold weighted backends and nothing else.

use crate::route::{BackendRef, ParentReference, validate_hostnames, validate_parent_refs};
use crate::validate::{Path, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Layer-4 backends take no filters: no value of this type exists, so any filter is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum NoFilter {}

pub type L4BackendRef = BackendRef<NoFilter>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteRule {
    pub backend_refs: Vec<L4BackendRef>,
}

/// TLSRoute's spec; TCPRoute and UDPRoute have no `hostnames`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<L4RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    pub rules: Vec<L4RouteRule>,
}

/// UDPRoute has TCPRoute's shape.
pub type UdpRouteSpec = TcpRouteSpec;

fn validate_rules(v: &mut Validator, p: &Path, rules: &[L4RouteRule]) {
    v.min_items(p, rules.len(), 1);
    v.max_items(p, rules.len(), 16);
    for (i, r) in rules.iter().enumerate() {
        let bp = p.index(i).field("backendRefs");
        v.min_items(&bp, r.backend_refs.len(), 1);
        v.max_items(&bp, r.backend_refs.len(), 16);
        for (j, b) in r.backend_refs.iter().enumerate() {
            b.validate_ref(v, &bp.index(j));
        }
    }
}

impl TlsRouteSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        validate_parent_refs(v, &p.field("parentRefs"), &self.parent_refs);
        validate_hostnames(v, &p.field("hostnames"), &self.hostnames);
        validate_rules(v, &p.field("rules"), &self.rules);
    }
}

impl TcpRouteSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        validate_parent_refs(v, &p.field("parentRefs"), &self.parent_refs);
        validate_rules(v, &p.field("rules"), &self.rules);
    }
}
