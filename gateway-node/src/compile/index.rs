//! The committed objects a compilation reads, indexed and typed once per revision.

use crate::snapshot::Snapshot;
use gw_model::ObjectKey;
use gw_model::core::{
    ConfigMapBody, EndpointSliceBody, REGION_LABEL, SERVICE_NAME_LABEL, SecretBody, ServiceSpec,
};
use gw_model::kinds::{
    GATEWAY_GROUP, GW_GROUP, MCS_GROUP, MCS_SERVICE_NAME_LABEL, ORIGIN_LABEL, SOURCE_CLUSTER_LABEL,
};
use gw_model::meta::parse_rfc3339;
use gw_model::policy::ReferenceGrantSpec;
use gw_model::registry::{KubeSyncReport, REPORT_KIND};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What the compiler needs of an object's metadata.
#[derive(Debug, Clone)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub created_ms: u64,
    /// The Kubernetes cluster its kube sync agent carried it from ("" if none).
    pub origin: String,
}

impl Meta {
    pub fn of(obj: &Value) -> Meta {
        let m = &obj["metadata"];
        Meta {
            namespace: m["namespace"].as_str().unwrap_or("").into(),
            name: m["name"].as_str().unwrap_or("").into(),
            uid: m["uid"].as_str().unwrap_or("").into(),
            generation: m["generation"].as_i64().unwrap_or(0),
            created_ms: m["creationTimestamp"]
                .as_str()
                .and_then(parse_rfc3339)
                .unwrap_or(0),
            origin: m["labels"][ORIGIN_LABEL].as_str().unwrap_or("").into(),
        }
    }

    /// `namespace/name`
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Parses the `spec` (or, with `field = None`, the whole object) of a stored object. Stored objects
/// were admitted, so this only fails if the store holds something gw did not write.
pub fn typed<T: DeserializeOwned>(obj: &Value, field: Option<&str>) -> Option<T> {
    let v = match field {
        Some(f) => obj.get(f)?,
        None => obj,
    };
    // From the borrowed value: no copy of it first.
    T::deserialize(v).ok()
}

/// Whether two versions of an object compile alike although they are not the same: a kube sync
/// agent's report, of which the compiler reads only the region (its heartbeat changes the rest).
pub fn compiles_alike(a: &Value, b: &Value) -> bool {
    match (
        KubeSyncReport::from_object(a),
        KubeSyncReport::from_object(b),
    ) {
        (Some((x, rx)), Some((y, ry))) => x == y && rx.region == ry.region,
        _ => false,
    }
}

/// Whose endpoints a backendRef reaches.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// A route's own cluster ("" for a route of no cluster: every cluster).
    Cluster(&'a str),
    /// The clusters exporting the Service.
    Exporters(&'a BTreeSet<String>),
}

/// An EndpointSlice with its source cluster ("" if none) and its region label, if any.
struct Slice {
    source: String,
    region: Option<String>,
    body: EndpointSliceBody,
}

pub struct Index<'a> {
    pub snap: &'a Snapshot,
    namespace_labels: HashMap<&'a str, BTreeMap<String, String>>,
    services: HashMap<(String, String), ServiceSpec>,
    /// By Service: its slices.
    slices: HashMap<(String, String), Vec<Slice>>,
    /// Each cluster's region, as its kube sync agent reports it.
    cluster_regions: HashMap<String, String>,
    /// By Service: the clusters exporting it (ServiceExports; "" for one of no cluster).
    exports: HashMap<(String, String), BTreeSet<String>>,
    grants: Vec<(&'a str, ReferenceGrantSpec)>,
}

impl<'a> Index<'a> {
    pub fn new(snap: &'a Snapshot) -> Index<'a> {
        let mut namespace_labels = HashMap::new();
        let mut services = HashMap::new();
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        let mut cluster_regions = HashMap::new();
        let mut grants = Vec::new();
        let mut exports: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
        for (k, obj) in &snap.objects {
            match (k.group.as_str(), k.kind.as_str()) {
                ("", "Namespace") => {
                    let labels = typed(&obj["metadata"], Some("labels")).unwrap_or_default();
                    namespace_labels.insert(k.name.as_str(), labels);
                }
                ("", "Service") => {
                    if let Some(s) = typed(obj, Some("spec")) {
                        services.insert((k.namespace.clone(), k.name.clone()), s);
                    }
                }
                ("discovery.k8s.io", "EndpointSlice") => {
                    let labels = &obj["metadata"]["labels"];
                    let svc = labels[SERVICE_NAME_LABEL].as_str();
                    if let (Some(svc), Some(body)) = (svc, typed::<EndpointSliceBody>(obj, None)) {
                        let source = labels[SOURCE_CLUSTER_LABEL].as_str().unwrap_or("");
                        let region = labels[REGION_LABEL].as_str().map(String::from);
                        slices
                            .entry((k.namespace.clone(), svc.to_string()))
                            .or_default()
                            .push(Slice {
                                source: source.to_string(),
                                region,
                                body,
                            });
                    }
                }
                (GW_GROUP, REPORT_KIND) => {
                    if let Some((cluster, report)) = KubeSyncReport::from_object(obj) {
                        cluster_regions.insert(cluster, report.region);
                    }
                }
                (MCS_GROUP, "ServiceExport") => {
                    let labels = &obj["metadata"]["labels"];
                    let origin = labels[ORIGIN_LABEL].as_str();
                    let service = labels[MCS_SERVICE_NAME_LABEL].as_str().unwrap_or(&k.name);
                    exports
                        .entry((k.namespace.clone(), service.to_string()))
                        .or_default()
                        .insert(origin.unwrap_or("").to_string());
                }
                (GATEWAY_GROUP, "ReferenceGrant") => {
                    if let Some(g) = typed(obj, Some("spec")) {
                        grants.push((k.namespace.as_str(), g));
                    }
                }
                _ => {}
            }
        }
        Index {
            snap,
            namespace_labels,
            services,
            slices,
            cluster_regions,
            exports,
            grants,
        }
    }

    /// Every object of one kind, oldest first, then by `namespace/name` (the Gateway API's tie-break).
    pub fn of_kind(&self, group: &str, kind: &str) -> Vec<(&'a ObjectKey, &'a Arc<Value>, Meta)> {
        let mut v: Vec<_> = self
            .range_of_kind(group, kind)
            .map(|(k, o)| (k, o, Meta::of(o)))
            .collect();
        v.sort_by(|a, b| {
            (a.2.created_ms, &a.0.namespace, &a.0.name).cmp(&(
                b.2.created_ms,
                &b.0.namespace,
                &b.0.name,
            ))
        });
        v
    }

    /// Every object of one kind, by key.
    pub fn range_of_kind<'k>(
        &self,
        group: &'k str,
        kind: &'k str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)> + 'k
    where
        'a: 'k,
    {
        // Keys order by group, then kind: one range of the map holds the kind.
        self.snap
            .objects
            .range(ObjectKey::new(group, kind, "", "")..)
            .take_while(move |(k, _)| k.group == group && k.kind == kind)
    }

    /// A namespace's labels; Kubernetes (1.22+) labels every namespace with its own name, so a
    /// namespace that has no object here still carries that label.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespace_labels.get(ns).cloned().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), ns.into());
        labels
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<&ServiceSpec> {
        self.services.get(&(ns.to_string(), name.to_string()))
    }

    /// A Service's EndpointSlices within a scope (GEP-1748): for a `Service` backendRef of a route
    /// from cluster C, C's slices and those of no cluster (every slice for a route of no cluster);
    /// for a `ServiceImport` backendRef, the slices of the clusters exporting the Service. Each with
    /// its endpoints' region: the slice's region label, else its source cluster's ("" if unknown).
    pub fn endpoint_slices(
        &self,
        ns: &str,
        service: &str,
        scope: Scope<'_>,
    ) -> Vec<(&EndpointSliceBody, &str)> {
        self.slices
            .get(&(ns.to_string(), service.to_string()))
            .into_iter()
            .flatten()
            .filter(|s| match scope {
                Scope::Cluster(origin) => {
                    origin.is_empty() || s.source.is_empty() || s.source == origin
                }
                Scope::Exporters(clusters) => clusters.contains(&s.source),
            })
            .map(|s| {
                let region = s
                    .region
                    .as_deref()
                    .or_else(|| self.cluster_regions.get(&s.source).map(String::as_str))
                    .unwrap_or("");
                (&s.body, region)
            })
            .collect()
    }

    /// The clusters exporting a Service (`None`: no ServiceExport names it).
    pub fn exporters(&self, ns: &str, service: &str) -> Option<&BTreeSet<String>> {
        self.exports.get(&(ns.to_string(), service.to_string()))
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<SecretBody> {
        let obj = self
            .snap
            .objects
            .get(&ObjectKey::new("", "Secret", ns, name))?;
        typed(obj, None)
    }

    pub fn config_map(&self, ns: &str, name: &str) -> Option<ConfigMapBody> {
        let obj = self
            .snap
            .objects
            .get(&ObjectKey::new("", "ConfigMap", ns, name))?;
        typed(obj, None)
    }

    /// Whether a ReferenceGrant in `to_ns` lets objects of `from_group/from_kind` in `from_ns` refer to
    /// `to_group/to_kind` named `to_name` (a grant without a name covers every object of that kind).
    pub fn grants(&self, from: (&str, &str, &str), to: (&str, &str, &str, &str)) -> bool {
        let (from_group, from_kind, from_ns) = from;
        let (to_group, to_kind, to_ns, to_name) = to;
        self.grants.iter().any(|(ns, g)| {
            *ns == to_ns
                && g.from
                    .iter()
                    .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                && g.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
    }
}
