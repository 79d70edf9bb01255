//! Discovery documents, from the kind registry: `/version`, the legacy `/api`, `/apis`, group and
//! group-version lists, and the aggregated discovery (`apidiscovery.k8s.io/v2`) that kubectl 1.30+ asks
//! for first. Pure.

use gw_model::kinds::{self, KindInfo};
use serde_json::{Value, json};

/// The Kubernetes version gw's API corresponds to (kubectl warns about a skew of more than one minor).
pub const MAJOR: &str = "1";
pub const MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0-gw.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// The kinds a user may write through the Kubernetes API (gw's own tables are read-only there).
pub fn writable(info: &KindInfo) -> bool {
    !info.is_internal()
}

fn verbs(info: &KindInfo) -> Vec<&'static str> {
    if writable(info) {
        vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    } else {
        vec!["get", "list", "watch"]
    }
}

fn singular(info: &KindInfo) -> String {
    info.kind.to_lowercase()
}

fn categories(info: &KindInfo) -> Vec<&'static str> {
    if info.group == kinds::GATEWAY_GROUP {
        vec!["gateway-api"]
    } else {
        vec![]
    }
}

/// Groups in the order discovery lists them: the core group, then named groups as first registered.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in kinds::KINDS {
        if !out.contains(&k.group) {
            out.push(k.group);
        }
    }
    out
}

/// The versions of a group, the preferred (storage) one first.
fn versions(group: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in kinds::KINDS.iter().filter(|k| k.group == group) {
        for v in k.versions {
            if !out.contains(v) {
                out.push(v);
            }
        }
    }
    out
}

fn kinds_in(group: &str, version: &str) -> impl Iterator<Item = &'static KindInfo> {
    kinds::KINDS
        .iter()
        .filter(move |k| k.group == group && k.serves(version))
}

/// `/api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": versions(""),
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group_doc(group: &str) -> Value {
    let vs = versions(group);
    let gv = |v: &str| json!({"groupVersion": kinds::api_version(group, v), "version": v});
    json!({
        "name": group,
        "versions": vs.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(vs[0]),
    })
}

/// `/apis`.
pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().filter(|g| !g.is_empty()).map(group_doc).collect::<Vec<_>>(),
    })
}

/// `/apis/GROUP`.
pub fn group(group: &str) -> Value {
    let mut g = group_doc(group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/api/v1`, `/apis/GROUP/VERSION`.
pub fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for k in kinds_in(group, version) {
        resources.push(json!({
            "name": k.plural,
            "singularName": singular(k),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": verbs(k),
            "shortNames": k.short_names,
            "categories": categories(k),
        }));
        if k.status_subresource && writable(k) {
            resources.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kinds::api_version(group, version),
        "resources": resources,
    })
}

/// The aggregated discovery of the core group (`/api`) or of every named group (`/apis`).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(|g| {
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": versions(g).iter().map(|v| json!({
                    "version": v,
                    "resources": kinds_in(g, v).map(|k| aggregated_resource(k, v)).collect::<Vec<_>>(),
                    "freshness": "Current",
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resource(k: &KindInfo, version: &str) -> Value {
    let kind = json!({"group": k.group, "version": version, "kind": k.kind});
    let mut r = json!({
        "resource": k.plural,
        "responseKind": kind,
        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": singular(k),
        "verbs": verbs(k),
        "shortNames": k.short_names,
        "categories": categories(k),
    });
    if k.status_subresource && writable(k) {
        r["subresources"] = json!([{
            "subresource": "status",
            "responseKind": kind,
            "verbs": ["get", "patch", "update"],
        }]);
    }
    r
}

/// Whether a request's `Accept` asks for the aggregated discovery format (v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| {
        a.contains("as=APIGroupDiscoveryList")
            && a.contains("g=apidiscovery.k8s.io")
            && a.contains("v=v2")
            && !a.contains("v=v2beta1")
    })
}

/// The `Content-Type` of the aggregated discovery format.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_discoverable_at_every_version() {
        for k in kinds::KINDS {
            for v in k.versions {
                let list = resource_list(k.group, v);
                assert!(
                    list["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["name"] == k.plural && r["kind"] == k.kind),
                    "{} {v}",
                    k.kind
                );
            }
        }
        let agg = aggregated(false);
        let gateway = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == kinds::GATEWAY_GROUP)
            .unwrap();
        assert_eq!(gateway["versions"][0]["version"], "v1");
        assert_eq!(aggregated(true)["items"][0]["metadata"]["name"], "");
    }

    #[test]
    fn the_preferred_version_is_the_storage_version() {
        assert_eq!(
            group(kinds::GATEWAY_GROUP)["preferredVersion"]["version"],
            "v1"
        );
        assert!(
            group_list()["groups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["name"] != "")
        );
    }

    #[test]
    fn kubectl_accept_headers() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }
}
