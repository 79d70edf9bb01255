//! The kinds gw serves: their group, versions (served and storage), scope, plural and short names, and
//! the key under which an object is stored.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// gw's own group: objects that gw writes itself (the replicated session affinity table, the node
/// registry, the status-writer leases, the kube sync agents' reports).
pub const GW_GROUP: &str = "gw.dev";
/// The label a store member stamps on what a kube sync agent writes: the agent's cluster.
pub const ORIGIN_LABEL: &str = "gw.dev/origin-cluster";
/// The label of an EndpointSlice carried from a cluster (the MCS API's): its cluster.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// The Multi-Cluster Services API group (KEP-1645): ServiceExport, and the ServiceImport backendRefs
/// name.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The label naming the Service of a ServiceExport carried from a cluster (stored as NAME.CLUSTER).
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";

/// Everything the store and the CLI need to know about one kind.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    /// API group; "" is the core group.
    pub group: &'static str,
    /// Served versions, the storage version first.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Whether `status` is a subresource (written only through UpdateStatus).
    pub status_subresource: bool,
    /// Whether the kind belongs to the experimental channel only.
    pub experimental: bool,
}

impl KindInfo {
    pub fn storage_version(&self) -> &'static str {
        self.versions[0]
    }

    /// `group/version` (or `version` for the core group) of the storage version.
    pub fn storage_api_version(&self) -> String {
        api_version(self.group, self.storage_version())
    }

    /// Whether the kind is gw's own bookkeeping: never applied by users, never compiled into routes.
    pub fn is_internal(&self) -> bool {
        self.group == GW_GROUP
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.contains(&version)
    }
}

/// Joins a group and a version the way `apiVersion` spells them.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Splits an `apiVersion` into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// BackendTLSPolicy v1alpha2 is not served by v1.1, but objects written for it are converted to v1alpha3
/// on the way in (see `policy::convert_backend_tls_policy_v1alpha2`).
pub const BACKEND_TLS_POLICY_LEGACY_VERSION: &str = "v1alpha2";

pub static KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "GatewayClass",
        group: GATEWAY_GROUP,
        versions: &["v1", "v1beta1"],
        plural: "gatewayclasses",
        short_names: &["gc"],
        namespaced: false,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "Gateway",
        group: GATEWAY_GROUP,
        versions: &["v1", "v1beta1"],
        plural: "gateways",
        short_names: &["gtw"],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "HTTPRoute",
        group: GATEWAY_GROUP,
        versions: &["v1", "v1beta1"],
        plural: "httproutes",
        short_names: &[],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "GRPCRoute",
        group: GATEWAY_GROUP,
        versions: &["v1", "v1alpha2"],
        plural: "grpcroutes",
        short_names: &[],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "TLSRoute",
        group: GATEWAY_GROUP,
        versions: &["v1alpha2"],
        plural: "tlsroutes",
        short_names: &[],
        namespaced: true,
        status_subresource: true,
        experimental: true,
    },
    KindInfo {
        kind: "TCPRoute",
        group: GATEWAY_GROUP,
        versions: &["v1alpha2"],
        plural: "tcproutes",
        short_names: &[],
        namespaced: true,
        status_subresource: true,
        experimental: true,
    },
    KindInfo {
        kind: "UDPRoute",
        group: GATEWAY_GROUP,
        versions: &["v1alpha2"],
        plural: "udproutes",
        short_names: &[],
        namespaced: true,
        status_subresource: true,
        experimental: true,
    },
    KindInfo {
        kind: "ReferenceGrant",
        group: GATEWAY_GROUP,
        versions: &["v1beta1", "v1alpha2"],
        plural: "referencegrants",
        short_names: &["refgrant"],
        namespaced: true,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "BackendLBPolicy",
        group: GATEWAY_GROUP,
        versions: &["v1alpha2"],
        plural: "backendlbpolicies",
        short_names: &["blbpolicy"],
        namespaced: true,
        status_subresource: true,
        experimental: true,
    },
    KindInfo {
        kind: "BackendTLSPolicy",
        group: GATEWAY_GROUP,
        versions: &["v1alpha3"],
        plural: "backendtlspolicies",
        short_names: &["btlspolicy"],
        namespaced: true,
        status_subresource: true,
        experimental: true,
    },
    KindInfo {
        kind: "Namespace",
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        short_names: &["ns"],
        namespaced: false,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "Service",
        group: "",
        versions: &["v1"],
        plural: "services",
        short_names: &["svc"],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    // Pods are the mesh's callers: a mesh node tells a caller's namespace by its pod IP
    // (`status.podIP`, `status.podIPs`). Only metadata, spec and status are kept.
    KindInfo {
        kind: "Pod",
        group: "",
        versions: &["v1"],
        plural: "pods",
        short_names: &["po"],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    // A Service exported from its cluster (KEP-1645): no spec. The clusters exporting a Service
    // make its ServiceImport, which a backendRef names (GEP-1748).
    KindInfo {
        kind: "ServiceExport",
        group: MCS_GROUP,
        versions: &["v1alpha1"],
        plural: "serviceexports",
        short_names: &["svcex"],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        short_names: &[],
        namespaced: true,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "Secret",
        group: "",
        versions: &["v1"],
        plural: "secrets",
        short_names: &[],
        namespaced: true,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "ConfigMap",
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        short_names: &["cm"],
        namespaced: true,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "SessionAffinity",
        group: GW_GROUP,
        versions: &["v1alpha1"],
        plural: "sessionaffinities",
        short_names: &["affinity"],
        namespaced: true,
        status_subresource: true,
        experimental: false,
    },
    KindInfo {
        kind: "GatewayNode",
        group: GW_GROUP,
        versions: &["v1alpha1"],
        plural: "gatewaynodes",
        short_names: &["gwnode"],
        namespaced: false,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "StatusWriterLease",
        group: GW_GROUP,
        versions: &["v1alpha1"],
        plural: "statuswriterleases",
        short_names: &[],
        namespaced: false,
        status_subresource: false,
        experimental: false,
    },
    KindInfo {
        kind: "KubeSyncReport",
        group: GW_GROUP,
        versions: &["v1alpha1"],
        plural: "kubesyncreports",
        short_names: &[],
        namespaced: false,
        status_subresource: false,
        experimental: false,
    },
];

/// Finds a kind by its `kind` name and group.
pub fn by_group_kind(group: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind && k.group == group)
}

/// Resolves a name as `gwadm get` accepts it: the kind (any case), its plural, a short name, optionally
/// qualified with `.group` (`httproutes.gateway.networking.k8s.io`).
pub fn resolve(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    KINDS.iter().find(|k| {
        let names_match = k.kind.to_ascii_lowercase() == base
            || k.plural == base
            || k.short_names.contains(&base.as_str());
        names_match && group.as_deref().is_none_or(|g| g == k.group)
    })
}

/// The identity of a stored object. Ordered so that a range scan walks one kind, then one namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    /// "" for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(group: &str, kind: &str, namespace: &str, name: &str) -> Self {
        ObjectKey {
            group: group.to_string(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn info(&self) -> Option<&'static KindInfo> {
        by_group_kind(&self.group, &self.kind)
    }

    /// The key of a stored object, read as it is from its apiVersion, kind and metadata.
    pub fn of_stored(obj: &serde_json::Value) -> ObjectKey {
        let (group, _) = split_api_version(obj["apiVersion"].as_str().unwrap_or(""));
        ObjectKey::new(
            group,
            obj["kind"].as_str().unwrap_or(""),
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap_or(""),
        )
    }

    /// The key a user's document names: its kind must be one gw serves, and a namespaced object without
    /// a namespace is in "default" (as kubectl does). `Err` says what is missing.
    pub fn of_document(obj: &serde_json::Value) -> Result<ObjectKey, String> {
        let kind = obj["kind"].as_str().ok_or("the document has no kind")?;
        let (group, _) = split_api_version(obj["apiVersion"].as_str().unwrap_or(""));
        let info = by_group_kind(group, kind)
            .ok_or_else(|| format!("{kind:?} in group {group:?} is not a kind gw serves"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or("the document has no metadata.name")?;
        let namespace = match (info.namespaced, obj["metadata"]["namespace"].as_str()) {
            (false, _) => "",
            (true, Some(ns)) if !ns.is_empty() => ns,
            (true, _) => "default",
        };
        Ok(ObjectKey::new(info.group, info.kind, namespace, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The `status` a new object gets when it is created, as the CRD's schema defaults give it (the
/// Gateway API CRDs default GatewayClass and Gateway conditions to "Waiting for controller").
pub fn default_status(group: &str, kind: &str) -> Option<serde_json::Value> {
    let pending = |t: &str, reason: &str| {
        serde_json::json!({
            "lastTransitionTime": "1970-01-01T00:00:00Z",
            "message": "Waiting for controller",
            "reason": reason,
            "status": "Unknown",
            "type": t,
        })
    };
    match (group, kind) {
        (GATEWAY_GROUP, "GatewayClass") => {
            Some(serde_json::json!({"conditions": [pending("Accepted", "Waiting")]}))
        }
        (GATEWAY_GROUP, "Gateway") => Some(serde_json::json!({
            "conditions": [pending("Accepted", "Pending"), pending("Programmed", "Pending")]
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_kubectl_style_names() {
        for (name, kind) in [
            ("httproute", "HTTPRoute"),
            ("httproutes", "HTTPRoute"),
            ("HTTPRoute", "HTTPRoute"),
            ("gtw", "Gateway"),
            ("gc", "GatewayClass"),
            ("svc", "Service"),
            ("httproutes.gateway.networking.k8s.io", "HTTPRoute"),
            ("endpointslices.discovery.k8s.io", "EndpointSlice"),
            ("blbpolicy", "BackendLBPolicy"),
        ] {
            assert_eq!(resolve(name).map(|k| k.kind), Some(kind), "{name}");
        }
        assert!(resolve("deployment").is_none());
        assert!(resolve("httproutes.example.com").is_none());
    }

    #[test]
    fn keys_of_stored_objects_and_of_documents() {
        let doc = serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}});
        assert_eq!(
            ObjectKey::of_document(&doc),
            Ok(ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "default", "r"))
        );
        assert_eq!(
            ObjectKey::of_stored(&doc),
            ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "", "r")
        );
        let gc = serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "c", "namespace": "x"}});
        assert_eq!(ObjectKey::of_document(&gc).unwrap().namespace, "");
        let deployment = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        assert!(
            ObjectKey::of_document(&deployment)
                .unwrap_err()
                .contains("Deployment")
        );
        let nameless = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {}});
        assert!(
            ObjectKey::of_document(&nameless)
                .unwrap_err()
                .contains("metadata.name")
        );
    }

    #[test]
    fn storage_version_is_served() {
        for k in KINDS {
            assert!(k.serves(k.storage_version()));
        }
        assert_eq!(
            by_group_kind(GATEWAY_GROUP, "GRPCRoute")
                .unwrap()
                .storage_api_version(),
            "gateway.networking.k8s.io/v1"
        );
    }
}
