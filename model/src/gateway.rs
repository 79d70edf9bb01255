//! GatewayClass and Gateway (gateway.networking.k8s.io/v1), including the experimental listener
//! `tls.frontendValidation`.

use crate::meta::LabelSelector;
use crate::route::gateway_group;
use crate::validate::{Path, RE_ADDRESS_TYPE, RE_HOSTNAME, RE_PROTOCOL, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<ParametersReference>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParametersReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl GatewayClassSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        v.controller_name(&p.field("controllerName"), &self.controller_name);
        if let Some(d) = &self.description {
            v.len(&p.field("description"), d, 0, 64);
        }
        if let Some(r) = &self.parameters_ref {
            let rp = p.field("parametersRef");
            v.group(&rp.field("group"), &r.group);
            v.kind(&rp.field("kind"), &r.kind);
            v.object_name(&rp.field("name"), &r.name);
            if let Some(ns) = &r.namespace {
                v.namespace(&rp.field("namespace"), ns);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<GatewayInfrastructure>,
}

fn ip_address() -> String {
    "IPAddress".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddress {
    #[serde(default = "ip_address", rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayInfrastructure {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: i64,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTlsConfig>,
    #[serde(default)]
    pub allowed_routes: AllowedRoutes,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: RouteNamespaces,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FromNamespaces {
    All,
    Selector,
    #[default]
    Same,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteNamespaces {
    #[serde(default)]
    pub from: FromNamespaces,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteGroupKind {
    #[serde(default = "gateway_group")]
    pub group: String,
    pub kind: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TlsMode {
    #[default]
    Terminate,
    Passthrough,
}

fn secret_kind() -> String {
    "Secret".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretObjectReference {
    #[serde(default)]
    pub group: String,
    #[serde(default = "secret_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_validation: Option<FrontendTlsValidation>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendTlsValidation {
    #[serde(default)]
    pub ca_certificate_refs: Vec<ObjectReference>,
}

/// `ObjectReference` (group, kind, name, optional namespace), as frontendValidation uses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl GatewaySpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        v.len(
            &p.field("gatewayClassName"),
            &self.gateway_class_name,
            1,
            253,
        );
        let lp = p.field("listeners");
        v.min_items(&lp, self.listeners.len(), 1);
        v.max_items(&lp, self.listeners.len(), 64);
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(v, &lp.index(i));
        }
        let ls = &self.listeners;
        v.rule(
            &lp,
            ls.iter()
                .all(|l| !matches!(l.protocol.as_str(), "HTTP" | "TCP" | "UDP") || l.tls.is_none()),
            "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
        );
        v.rule(
            &lp,
            ls.iter().all(|l| {
                l.protocol != "HTTPS" || l.tls.as_ref().is_none_or(|t| t.mode == TlsMode::Terminate)
            }),
            "tls mode must be Terminate for protocol HTTPS",
        );
        v.rule(
            &lp,
            ls.iter().all(|l| {
                !matches!(l.protocol.as_str(), "TCP" | "UDP")
                    || l.hostname.as_deref().unwrap_or("").is_empty()
            }),
            "hostname must not be specified for protocols ['TCP', 'UDP']",
        );
        v.rule(
            &lp,
            ls.iter()
                .all(|a| ls.iter().filter(|b| a.name == b.name).count() == 1),
            "Listener name must be unique within the Gateway",
        );
        v.rule(
            &lp,
            ls.iter().all(|a| {
                ls.iter()
                    .filter(|b| {
                        a.port == b.port && a.protocol == b.protocol && a.hostname == b.hostname
                    })
                    .count()
                    == 1
            }),
            "Combination of port, protocol and hostname must be unique for each listener",
        );
        let ap = p.field("addresses");
        v.max_items(&ap, self.addresses.len(), 16);
        for (i, a) in self.addresses.iter().enumerate() {
            let ip = ap.index(i);
            v.string(&ip.field("type"), &a.kind, 1, 253, &RE_ADDRESS_TYPE);
            v.len(&ip.field("value"), &a.value, 1, 253);
            // The CRD's `anyOf: [{format: ipv4}, {format: ipv6}]` for IPAddress values.
            v.rule(
                &ip.field("value"),
                a.kind != "IPAddress" || a.value.parse::<std::net::IpAddr>().is_ok(),
                "must be an IPv4 or IPv6 address (formats ipv4, ipv6)",
            );
            v.rule(
                &ip,
                a.kind != "Hostname" || RE_HOSTNAME.is_match(&a.value),
                "Hostname value must only contain valid characters (matching ^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$)",
            );
        }
        for (t, msg) in [
            ("IPAddress", "IPAddress values must be unique"),
            ("Hostname", "Hostname values must be unique"),
        ] {
            let addrs = &self.addresses;
            v.rule(
                &ap,
                addrs.iter().filter(|a| a.kind == t).all(|a| {
                    addrs
                        .iter()
                        .filter(|b| b.kind == a.kind && b.value == a.value)
                        .count()
                        == 1
                }),
                msg,
            );
        }
        if let Some(inf) = &self.infrastructure {
            let ip = p.field("infrastructure");
            for (field, map) in [("labels", &inf.labels), ("annotations", &inf.annotations)] {
                if map.len() > 8 {
                    v.error(
                        &ip.field(field),
                        format!("Too many: {}: must have at most 8 items", map.len()),
                    );
                }
                for (k, val) in map {
                    v.len(&ip.field(field).key(k), val, 0, 4096);
                }
            }
        }
    }
}

impl Listener {
    fn validate(&self, v: &mut Validator, p: &Path) {
        v.section_name(&p.field("name"), &self.name);
        if let Some(h) = &self.hostname {
            v.hostname(&p.field("hostname"), h);
        }
        v.port(&p.field("port"), self.port);
        v.string(&p.field("protocol"), &self.protocol, 1, 255, &RE_PROTOCOL);
        if let Some(tls) = &self.tls {
            let tp = p.field("tls");
            let cp = tp.field("certificateRefs");
            v.max_items(&cp, tls.certificate_refs.len(), 64);
            for (i, c) in tls.certificate_refs.iter().enumerate() {
                let ip = cp.index(i);
                v.group(&ip.field("group"), &c.group);
                v.kind(&ip.field("kind"), &c.kind);
                v.object_name(&ip.field("name"), &c.name);
                if let Some(ns) = &c.namespace {
                    v.namespace(&ip.field("namespace"), ns);
                }
            }
            if tls.options.len() > 16 {
                v.error(
                    &tp.field("options"),
                    format!(
                        "Too many: {}: must have at most 16 items",
                        tls.options.len()
                    ),
                );
            }
            for (k, val) in &tls.options {
                v.len(&tp.field("options").key(k), val, 0, 4096);
            }
            v.rule(
                &tp,
                tls.mode != TlsMode::Terminate
                    || !tls.certificate_refs.is_empty()
                    || !tls.options.is_empty(),
                "certificateRefs or options must be specified when mode is Terminate",
            );
            if let Some(fv) = &tls.frontend_validation {
                let fp = tp.field("frontendValidation").field("caCertificateRefs");
                v.min_items(&fp, fv.ca_certificate_refs.len(), 1);
                v.max_items(&fp, fv.ca_certificate_refs.len(), 8);
                for (i, r) in fv.ca_certificate_refs.iter().enumerate() {
                    let ip = fp.index(i);
                    v.group(&ip.field("group"), &r.group);
                    v.kind(&ip.field("kind"), &r.kind);
                    v.object_name(&ip.field("name"), &r.name);
                    if let Some(ns) = &r.namespace {
                        v.namespace(&ip.field("namespace"), ns);
                    }
                }
            }
        }
        let ar = p.field("allowedRoutes");
        let kp = ar.field("kinds");
        v.max_items(&kp, self.allowed_routes.kinds.len(), 8);
        for (i, k) in self.allowed_routes.kinds.iter().enumerate() {
            v.group(&kp.index(i).field("group"), &k.group);
            v.kind(&kp.index(i).field("kind"), &k.kind);
        }
        if let Some(sel) = &self.allowed_routes.namespaces.selector {
            sel.validate(v, &ar.field("namespaces").field("selector"));
        }
    }
}
