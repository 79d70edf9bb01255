//! JSON schemas (OpenAPI 3.0 dialect) of the kinds gw serves, generated from the same Rust types that
//! admission deserializes and validates (`schemars`), so that what the Kubernetes API publishes for
//! `kubectl explain` is what `gwadm apply` and the API accept. Documentation comments on the types
//! become the descriptions.

use crate::core::{ConfigMapBody, EndpointSliceBody, SecretBody, ServiceSpec};
use crate::gateway::{GatewayClassSpec, GatewaySpec};
use crate::grpcroute::GrpcRouteSpec;
use crate::httproute::HttpRouteSpec;
use crate::kinds::{KindInfo, api_version};
use crate::l4route::{TcpRouteSpec, TlsRouteSpec};
use crate::policy::{BackendLbPolicySpec, BackendTlsPolicySpec, ReferenceGrantSpec};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

/// A kind's schema and the schemas it refers to (`#/components/schemas/NAME`).
pub struct KindSchema {
    pub schema: Value,
    pub components: Map<String, Value>,
}

fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3().into_generator()
}

/// The properties of a type's schema (for kinds whose fields sit beside `metadata`).
fn properties_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Map<String, Value> {
    let root: Schema = g.root_schema_for::<T>();
    root.as_value()["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn spec<T: JsonSchema>(g: &mut SchemaGenerator) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("spec".into(), g.subschema_for::<T>().to_value());
    m
}

/// An object whose fields are not described (kept as given).
fn open(description: &str) -> Value {
    json!({"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": true})
}

fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    let map = |d: &str| json!({"type": "object", "description": d, "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "description": "Standard object metadata.",
        "properties": {
            "name": s("Unique within a namespace (cluster-wide for cluster-scoped kinds)."),
            "generateName": s("A prefix from which the server makes a unique name, when name is not given."),
            "namespace": s("The namespace of a namespaced object (default: \"default\")."),
            "labels": map("Key/value pairs that selectors match."),
            "annotations": map("Key/value pairs kept for tools."),
            "finalizers": {"type": "array", "items": {"type": "string"},
                "description": "While not empty, a delete only marks the object (deletionTimestamp)."},
            "uid": s("Set by the store when the object is created."),
            "resourceVersion": s("The store revision of the object's last change; a precondition when given."),
            "generation": {"type": "integer", "format": "int64", "description": "Incremented when the spec changes."},
            "creationTimestamp": s("When the object was created (RFC 3339)."),
            "deletionTimestamp": s("When a delete held by finalizers was asked for."),
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "description": "Which field manager owns which fields (server-side apply)."},
        },
    })
}

/// The schema of a kind at one of its versions.
pub fn kind_schema(info: &KindInfo, version: &str) -> KindSchema {
    let mut g = generator();
    let mut body = match info.kind {
        "GatewayClass" => spec::<GatewayClassSpec>(&mut g),
        "Gateway" => spec::<GatewaySpec>(&mut g),
        "HTTPRoute" => spec::<HttpRouteSpec>(&mut g),
        "GRPCRoute" => spec::<GrpcRouteSpec>(&mut g),
        "TLSRoute" => spec::<TlsRouteSpec>(&mut g),
        "TCPRoute" | "UDPRoute" => spec::<TcpRouteSpec>(&mut g),
        "ReferenceGrant" => spec::<ReferenceGrantSpec>(&mut g),
        "BackendLBPolicy" => spec::<BackendLbPolicySpec>(&mut g),
        "BackendTLSPolicy" => spec::<BackendTlsPolicySpec>(&mut g),
        "Service" => spec::<ServiceSpec>(&mut g),
        "EndpointSlice" => properties_of::<EndpointSliceBody>(&mut g),
        "Secret" => properties_of::<SecretBody>(&mut g),
        "ConfigMap" => properties_of::<ConfigMapBody>(&mut g),
        _ => {
            let mut m = Map::new();
            m.insert("spec".into(), open("The object's specification."));
            m
        }
    };
    if info.status_subresource {
        body.insert(
            "status".into(),
            open("The object's status, written by gw's gateway nodes."),
        );
    }
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": format!("{}", api_version(info.group, version))}),
    );
    properties.insert(
        "kind".into(),
        json!({"type": "string", "description": info.kind}),
    );
    properties.insert(
        "metadata".into(),
        json!({"$ref": "#/components/schemas/ObjectMeta"}),
    );
    properties.extend(body);
    let mut components = g.take_definitions(true);
    components.insert("ObjectMeta".into(), object_meta());
    KindSchema {
        schema: json!({
            "type": "object",
            "description": format!("{} ({}).", info.kind, api_version(info.group, version)),
            "properties": properties,
            "x-kubernetes-group-version-kind": [{"group": info.group, "kind": info.kind, "version": version}],
        }),
        components,
    }
}

impl KindSchema {
    /// Removes from `obj`'s `spec` the fields its schema does not declare (objects with
    /// `additionalProperties: false`: the types admission denies unknown fields in), and returns
    /// their paths (`spec.rules[0].colour`): `fieldValidation=Warn|Ignore` of the Kubernetes API.
    pub fn prune_unknown(&self, obj: &mut Value) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(spec), Some(v)) = (self.schema["properties"].get("spec"), obj.get_mut("spec"))
        {
            self.prune(spec, v, "spec", &mut out);
        }
        out
    }

    /// The schema a `$ref`, `allOf` or nullable `anyOf` stands for.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        if let Some(name) = schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            return self
                .components
                .get(name)
                .map_or(schema, |s| self.resolve(s));
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            if let Some(first) = schema[combinator].as_array().and_then(|alternatives| {
                alternatives
                    .iter()
                    .find(|a| a.get("$ref").is_some() || a.get("properties").is_some())
            }) {
                return self.resolve(first);
            }
        }
        schema
    }

    fn prune(&self, schema: &Value, v: &mut Value, path: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        match v {
            Value::Object(m) => {
                let properties = schema["properties"].as_object();
                let closed = schema["additionalProperties"] == Value::Bool(false);
                let unknown: Vec<String> = m
                    .keys()
                    .filter(|k| closed && !properties.is_some_and(|p| p.contains_key(*k)))
                    .cloned()
                    .collect();
                for k in unknown {
                    m.remove(&k);
                    out.push(format!("{path}.{k}"));
                }
                for (k, child) in m.iter_mut() {
                    let at = format!("{path}.{k}");
                    match properties.and_then(|p| p.get(k)) {
                        Some(s) => self.prune(s, child, &at, out),
                        None if schema["additionalProperties"].is_object() => {
                            self.prune(&schema["additionalProperties"], child, &at, out)
                        }
                        None => {}
                    }
                }
            }
            Value::Array(items) if schema.get("items").is_some() => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.prune(&schema["items"], item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{self, GATEWAY_GROUP};

    #[test]
    fn unknown_fields_are_pruned_and_named() {
        let info = kinds::by_group_kind(GATEWAY_GROUP, "HTTPRoute").unwrap();
        let s = kind_schema(info, "v1");
        let mut obj = json!({"spec": {
            "colour": "blue",
            "hostnames": ["a.example"],
            "parentRefs": [{"name": "gw", "sectionNmae": "http"}],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/", "x": 1}}],
                       "backendRefs": [{"name": "svc", "port": 80}]}],
        }});
        let mut unknown = s.prune_unknown(&mut obj);
        unknown.sort();
        assert_eq!(
            unknown,
            vec![
                "spec.colour",
                "spec.parentRefs[0].sectionNmae",
                "spec.rules[0].matches[0].path.x"
            ]
        );
        assert_eq!(
            obj["spec"],
            json!({"hostnames": ["a.example"], "parentRefs": [{"name": "gw"}],
                   "rules": [{"matches": [{"path": {"type": "Exact", "value": "/"}}],
                              "backendRefs": [{"name": "svc", "port": 80}]}]})
        );
    }

    #[test]
    fn an_httproute_schema_describes_its_rules_down_to_the_matches() {
        let info = kinds::by_group_kind(GATEWAY_GROUP, "HTTPRoute").unwrap();
        let k = kind_schema(info, "v1");
        let spec = k.resolve(&k.schema["properties"]["spec"]);
        let rules = &spec["properties"]["rules"];
        assert_eq!(rules["type"], "array");
        let rule = k.resolve(&rules["items"]);
        assert!(rule["properties"]["matches"].is_object(), "{rule}");
        assert!(rule["properties"]["backendRefs"].is_object());
        assert!(k.components.contains_key("ObjectMeta"));
        // Every reference resolves.
        let text = serde_json::to_string(&k.components).unwrap() + &k.schema.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(k.components.contains_key(name), "{name}");
        }
    }

    #[test]
    fn every_kind_has_a_schema() {
        for info in kinds::KINDS {
            let k = kind_schema(info, info.storage_version());
            assert!(
                k.schema["properties"]["metadata"].is_object(),
                "{}",
                info.kind
            );
        }
        let cm = kinds::by_group_kind("", "ConfigMap").unwrap();
        assert!(kind_schema(cm, "v1").schema["properties"]["data"].is_object());
    }
}
