//! The core Kubernetes objects that Gateway API resources refer to: Namespace, Service, EndpointSlice,
//! Secret and ConfigMap. Only the fields gw uses are typed; other fields of real manifests are kept as
//! they are (these kinds are not ours, and `kubectl get -o yaml` output must apply cleanly).

use crate::validate::{Path, RE_DNS1035_LABEL, Validator};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
}

/// `targetPort`: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServiceSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        if let Some(t) = &self.kind
            && !matches!(
                t.as_str(),
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            )
        {
            v.error(
                    &p.field("type"),
                    format!("Unsupported value: {t:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                );
        }
        let pp = p.field("ports");
        for (i, port) in self.ports.iter().enumerate() {
            let ip = pp.index(i);
            v.port(&ip.field("port"), port.port);
            if let Some(proto) = &port.protocol
                && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
            {
                v.error(
                    &ip.field("protocol"),
                    format!(
                        "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                    ),
                );
            }
            match &port.name {
                Some(n) if !n.is_empty() => {
                    v.string(&ip.field("name"), n, 1, 63, &RE_DNS1035_LABEL)
                }
                _ if self.ports.len() > 1 => v.required(&ip.field("name")),
                _ => {}
            }
            if let Some(IntOrString::Int(tp)) = port.target_port {
                v.port(&ip.field("targetPort"), tp);
            }
        }
        v.unique_keys(&pp, self.ports.iter().filter_map(|p| p.name.as_deref()));
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<EndpointHints>,
}

/// Topology-aware routing hints (Kubernetes): the zones whose clients should use this endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    #[serde(default)]
    pub for_zones: Vec<ForZone>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ForZone {
    pub name: String,
}

/// The label an EndpointSlice may carry to name its endpoints' region (gw's own convention; the
/// region of a slice without it is its source cluster's, as that cluster's kube sync agent reports).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Endpoint readiness. Absent `ready` means ready (Kubernetes: "should be interpreted as true").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// The top-level fields of an EndpointSlice (it has no `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceBody {
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// The condition a mesh node records in the status of a Service without a `clusterIP`: its
/// `message` is the virtual address the mesh gave the Service.
pub const MESH_ADDRESS_CONDITION: &str = "gw.dev/MeshAddress";

/// The address a mesh node recorded for a Service (`MESH_ADDRESS_CONDITION`), if any.
pub fn recorded_mesh_address(service: &Value) -> Option<IpAddr> {
    service["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == MESH_ADDRESS_CONDITION && c["status"] == "True")?["message"]
        .as_str()?
        .parse()
        .ok()
}

/// A Service's `spec.clusterIP` when it is an address (not `None`, not empty).
pub fn cluster_ip(service: &Value) -> Option<IpAddr> {
    service["spec"]["clusterIP"].as_str()?.parse().ok()
}

/// Where the mesh serves a Service: its `clusterIP`, else the address a mesh node recorded.
pub fn mesh_address(service: &Value) -> Option<IpAddr> {
    cluster_ip(service).or_else(|| recorded_mesh_address(service))
}

/// A Pod's addresses: `status.podIPs`, else `status.podIP`.
pub fn pod_ips(pod: &Value) -> Vec<IpAddr> {
    let listed: Vec<IpAddr> = pod["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["ip"].as_str()?.parse().ok())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect()
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSliceBody {
    pub fn validate(&self, v: &mut Validator) {
        if !matches!(self.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
            v.error(
                &Path::root("addressType"),
                format!(
                    "Unsupported value: {:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                    self.address_type
                ),
            );
        }
        let ep = Path::root("endpoints");
        v.max_items(&ep, self.endpoints.len(), 1000);
        for (i, e) in self.endpoints.iter().enumerate() {
            let ap = ep.index(i).field("addresses");
            v.min_items(&ap, e.addresses.len(), 1);
            v.max_items(&ap, e.addresses.len(), 100);
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match self.address_type.as_str() {
                    "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => !a.is_empty(),
                };
                if !ok {
                    v.invalid(
                        &ap.index(j),
                        a,
                        format!("must be a valid {} address", self.address_type),
                    );
                }
            }
        }
        let pp = Path::root("ports");
        v.max_items(&pp, self.ports.len(), 100);
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(port) = p.port {
                v.port(&pp.index(i).field("port"), port);
            }
        }
    }
}

/// A Secret's payload after admission: `stringData` merged into base64 `data`, as the API server does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretBody {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// Data keys of Secrets and ConfigMaps.
fn validate_data_key(v: &mut Validator, p: &Path, key: &str) {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        v.invalid(
            p,
            key,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
        );
    }
}

impl SecretBody {
    /// Validates the payload and folds `stringData` into `data`.
    pub fn admit(mut self, v: &mut Validator) -> SecretBody {
        for (k, val) in &self.data {
            let p = Path::root("data").key(k);
            validate_data_key(v, &p, k);
            if B64.decode(val).is_err() {
                v.invalid(&p, "<value>", "must be base64-encoded");
            }
        }
        for (k, val) in std::mem::take(&mut self.string_data) {
            validate_data_key(v, &Path::root("stringData").key(&k), &k);
            self.data.insert(k, B64.encode(val.as_bytes()));
        }
        if self.kind.as_deref() == Some("kubernetes.io/tls") {
            for key in ["tls.crt", "tls.key"] {
                if !self.data.contains_key(key) {
                    v.error(
                        &Path::root("data").key(key),
                        "Required value: a kubernetes.io/tls Secret must hold tls.crt and tls.key",
                    );
                }
            }
        }
        self
    }

    /// The decoded bytes of one key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.data.get(key).and_then(|v| B64.decode(v).ok())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapBody {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// ConfigMaps are limited to 1 MiB of data, as in Kubernetes.
pub const CONFIG_MAP_MAX_BYTES: usize = 1024 * 1024;

impl ConfigMapBody {
    pub fn validate(&self, v: &mut Validator) {
        let mut total = 0;
        for (k, val) in &self.data {
            validate_data_key(v, &Path::root("data").key(k), k);
            total += val.len();
        }
        for (k, val) in &self.binary_data {
            let p = Path::root("binaryData").key(k);
            validate_data_key(v, &p, k);
            if self.data.contains_key(k) {
                v.error(&p, "Duplicate value: key is also present in data");
            }
            match B64.decode(val) {
                Ok(b) => total += b.len(),
                Err(_) => v.invalid(&p, "<value>", "must be base64-encoded"),
            }
        }
        if total > CONFIG_MAP_MAX_BYTES {
            v.error(
                &Path::root("data"),
                format!("Too long: must have at most {CONFIG_MAP_MAX_BYTES} bytes"),
            );
        }
    }
}
