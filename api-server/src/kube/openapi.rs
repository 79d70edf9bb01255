//! OpenAPI v3 documents, as kube-apiserver publishes them: `/openapi/v3` lists the group versions, each
//! with its own document of paths (with the operations' group-version-kind, so that kubectl sees that
//! the server validates fields itself: `fieldValidation` among PATCH's parameters) and component
//! schemas (with the kind's group-version-kind, for `kubectl explain`; generated from the types
//! admission uses, `gw_model::schema`). Pure.

use gw_model::kinds::{self, KindInfo};
use serde_json::{Map, Value, json};

/// The name of a kind's schema in `components.schemas`.
fn schema_name(info: &KindInfo, version: &str) -> String {
    let group = if info.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        info.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{version}.{}", info.kind)
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for k in kinds::KINDS {
        for v in k.versions {
            if !out.contains(&(k.group, *v)) {
                out.push((k.group, *v));
            }
        }
    }
    out
}

/// The path of a group version's document, below `/openapi/v3/`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is (the hash changes with gw's version, for
/// clients that cache them).
pub fn index() -> Value {
    let hash = format!("gw-{}", env!("CARGO_PKG_VERSION"));
    let paths: Map<String, Value> = group_versions()
        .into_iter()
        .map(|(g, v)| {
            let p = gv_path(g, v);
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// Whether a kind is one of Kubernetes' own (not a custom resource there).
pub fn builtin(info: &KindInfo) -> bool {
    info.group.is_empty() || info.group == "discovery.k8s.io"
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(info: &KindInfo, version: &str, action: &str, id: &str, params: Vec<Value>) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(info, version))});
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": version, "kind": info.kind},
    });
    if matches!(action, "put" | "post" | "patch") {
        // Strategic merge patch for the built-in kinds only, as for custom resources in Kubernetes:
        // kubectl computes one exactly when the PATCH operation takes it.
        let types: &[&str] = match (action, builtin(info)) {
            ("patch", true) => &[
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ],
            ("patch", false) => &[
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
            ],
            _ => &["application/json"],
        };
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        query("dryRun", "All: validate and report, store nothing"),
        query("fieldManager", "the name of the actor making the change"),
        query(
            "fieldValidation",
            "Strict (the only mode gw has): unknown or duplicate fields are errors",
        ),
    ]
}

/// The document of one group version.
pub fn group_version(group: &str, version: &str) -> Option<Value> {
    let in_gv: Vec<&KindInfo> = kinds::KINDS
        .iter()
        .filter(|k| k.group == group && k.serves(version))
        .collect();
    if in_gv.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for info in in_gv {
        let base = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", info.plural)
        } else {
            format!("{prefix}/{}", info.plural)
        };
        let kind = info.kind;
        let mut list = json!({"get": operation(info, version, "list", &format!("list{kind}"), vec![
            query("labelSelector", "a label selector"),
            query("fieldSelector", "metadata.name and metadata.namespace"),
            query("limit", "at most this many items; the rest with continue"),
            query("continue", "the token of the previous page"),
            query("resourceVersion", "0: any recent state; a revision"),
            query("watch", "stream the changes"),
        ])});
        let mut item =
            json!({"get": operation(info, version, "get", &format!("read{kind}"), vec![])});
        if super::discovery::writable(info) {
            list["post"] = operation(
                info,
                version,
                "post",
                &format!("create{kind}"),
                write_params(),
            );
            item["put"] = operation(
                info,
                version,
                "put",
                &format!("replace{kind}"),
                write_params(),
            );
            item["delete"] = operation(
                info,
                version,
                "delete",
                &format!("delete{kind}"),
                vec![query("dryRun", "All")],
            );
            let mut patch = write_params();
            patch.push(query(
                "force",
                "server-side apply: take fields other managers own",
            ));
            item["patch"] = operation(info, version, "patch", &format!("patch{kind}"), patch);
            if info.status_subresource {
                paths.insert(
                    format!("{base}/{{name}}/status"),
                    json!({
                        "get": operation(info, version, "get", &format!("read{kind}Status"), vec![]),
                        "put": operation(info, version, "put", &format!("replace{kind}Status"), write_params()),
                        "patch": operation(info, version, "patch", &format!("patch{kind}Status"), write_params()),
                    }),
                );
            }
        }
        paths.insert(base.clone(), list);
        paths.insert(format!("{base}/{{name}}"), item);
        let k = gw_model::schema::kind_schema(info, version);
        schemas.extend(k.components);
        schemas.insert(schema_name(info, version), k.schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "gw", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_and_patch_says_fields_are_validated() {
        let index = index();
        for (g, v) in group_versions() {
            let p = gv_path(g, v);
            assert!(index["paths"][&p]["serverRelativeURL"].is_string(), "{p}");
            let doc = group_version(g, v).unwrap();
            for k in kinds::KINDS.iter().filter(|k| k.group == g && k.serves(v)) {
                assert!(doc["components"]["schemas"][schema_name(k, v)]["x-kubernetes-group-version-kind"].is_array());
                if !super::super::discovery::writable(k) {
                    continue;
                }
                let patch = doc["paths"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(|p| p.get("patch"))
                    .find(|op| op["x-kubernetes-group-version-kind"]["kind"] == k.kind)
                    .unwrap();
                assert!(
                    patch["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == "fieldValidation")
                );
            }
        }
        assert!(group_version("apps", "v1").is_none());
    }
}
