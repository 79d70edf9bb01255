//! The node registry: each gateway node keeps a lease object (kind `GatewayNode`, group gw.dev,
//! cluster-scoped, named after the node) saying where it is and which revision it serves. The node
//! renews it off the request path and whenever it installs a new routing table; a lease not renewed
//! within its duration is expired (the node is gone, frozen or cut off). `gwadm status` and
//! `gwadm apply --wait` read them.
//!
//! Also here: the status-writer lease of a GatewayClass (kind `StatusWriterLease`, named after the
//! class), through which the nodes of a class elect the one that writes status; and each kube sync
//! agent's report (kind `KubeSyncReport`, named after its cluster: `gwadm clusters`). All are gw's own
//! bookkeeping (group gw.dev): gateway nodes do not watch them, so renewing them makes no node
//! recompile its routing table.

use crate::kinds::{GW_GROUP, ObjectKey, api_version};
use crate::validate::Validator;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const KIND: &str = "GatewayNode";
pub const LEASE_KIND: &str = "StatusWriterLease";
pub const REPORT_KIND: &str = "KubeSyncReport";
pub const VERSION: &str = "v1alpha1";

/// What a node says about itself. Times are milliseconds since the Unix epoch on the node's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLease {
    pub gateway_class: String,
    #[serde(default)]
    pub region: String,
    /// The sockets it serves traffic on.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its admin endpoint (`/status`, `/metrics`), when it has one.
    #[serde(default)]
    pub admin: String,
    /// The store revision of the routing table it serves.
    pub revision_served: u64,
    /// Every config change up to this revision is in the table it serves (the store has confirmed
    /// that nothing it watches changed between `revision_served` and this one).
    pub current_through: u64,
    /// When it started serving `revision_served`.
    pub serving_since_ms: u64,
    pub store_connected: bool,
    /// Sockets it should listen on and cannot (e.g. the port is taken).
    #[serde(default)]
    pub failed_sockets: Vec<String>,
    pub started_ms: u64,
    pub renew_time_ms: u64,
    pub lease_duration_seconds: u32,
}

impl NodeLease {
    pub fn validate(&self, v: &mut Validator, p: &crate::validate::Path) {
        if self.gateway_class.is_empty() {
            v.error(&p.field("gatewayClass"), "Required value");
        }
        if self.lease_duration_seconds == 0 {
            v.error(&p.field("leaseDurationSeconds"), "must be at least 1");
        }
        if self.current_through < self.revision_served {
            v.error(
                &p.field("currentThrough"),
                "must not be below revisionServed",
            );
        }
    }

    /// Whether the lease was renewed within its duration, as of `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.renew_time_ms + u64::from(self.lease_duration_seconds) * 1000
    }

    /// Whether the node serves every config change up to `revision`.
    pub fn serves(&self, revision: u64) -> bool {
        self.current_through.max(self.revision_served) >= revision
    }

    /// The lease as the object a node applies.
    pub fn to_object(&self, node: &str) -> Value {
        object(KIND, node, self)
    }

    /// A stored lease object's name and spec.
    pub fn from_object(o: &Value) -> Option<(String, NodeLease)> {
        named_spec(o)
    }
}

/// A gw.dev object of `kind`, named `name`, with `spec`.
fn object(kind: &str, name: &str, spec: &impl Serialize) -> Value {
    json!({
        "apiVersion": api_version(GW_GROUP, VERSION),
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// A stored object's name and its spec, typed.
fn named_spec<T: DeserializeOwned>(o: &Value) -> Option<(String, T)> {
    let name = o["metadata"]["name"].as_str()?.to_string();
    let spec = serde_json::from_value(o["spec"].clone()).ok()?;
    Some((name, spec))
}

pub fn key(node: &str) -> ObjectKey {
    ObjectKey::new(GW_GROUP, KIND, "", node)
}

/// Who writes the status of a GatewayClass's objects, and when they last said so (their clock, ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusWriterLease {
    pub holder: String,
    pub renewed_ms: u64,
}

impl StatusWriterLease {
    pub fn validate(&self, v: &mut Validator, p: &crate::validate::Path) {
        if self.holder.is_empty() {
            v.error(&p.field("holder"), "Required value");
        }
    }

    /// The lease of `class` as a document, to be written only over `resource_version` (0: only if
    /// there is none).
    pub fn to_object(&self, class: &str, resource_version: u64) -> Value {
        let mut o = object(LEASE_KIND, class, self);
        o["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        o
    }
}

/// What a kube sync agent last said: its region, when (its clock, ms), what the store refused of its
/// cluster's objects (`KIND ns/name: why`), and the store member its status watch is on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeSyncReport {
    #[serde(default)]
    pub region: String,
    pub last_contact_ms: u64,
    #[serde(default)]
    pub conflicts: Vec<String>,
    /// `HOST:PORT` as the agent's `--store` names it; "" when its watch is on none.
    #[serde(default)]
    pub watching: String,
}

impl KubeSyncReport {
    pub fn validate(&self, _: &mut Validator, _: &crate::validate::Path) {}

    pub fn to_object(&self, cluster: &str) -> Value {
        object(REPORT_KIND, cluster, self)
    }

    /// A stored report's cluster and content.
    pub fn from_object(o: &Value) -> Option<(String, KubeSyncReport)> {
        named_spec(o)
    }
}

/// The report of a cluster's kube sync agent.
pub fn report_key(cluster: &str) -> ObjectKey {
    ObjectKey::new(GW_GROUP, REPORT_KIND, "", cluster)
}

/// The status-writer lease of a GatewayClass.
pub fn lease_key(class: &str) -> ObjectKey {
    ObjectKey::new(GW_GROUP, LEASE_KIND, "", class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_and_say_what_they_serve() {
        let l = NodeLease {
            gateway_class: "gw".into(),
            revision_served: 10,
            current_through: 14,
            renew_time_ms: 1_000,
            lease_duration_seconds: 5,
            ..Default::default()
        };
        assert!(l.live(5_999));
        assert!(!l.live(6_000));
        assert!(l.serves(14) && l.serves(3));
        assert!(!l.serves(15));
        let (name, back) = NodeLease::from_object(&l.to_object("n1")).unwrap();
        assert_eq!((name.as_str(), back), ("n1", l));
    }
}
