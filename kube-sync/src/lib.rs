//! gw-kube-sync: the agent of one Kubernetes cluster. It carries the cluster's Gateway API objects,
//! Namespaces, Services and EndpointSlices into the gw store (each written as this cluster's: the member
//! stamps the origin label from the agent's certificate, and refuses to let it touch another cluster's
//! objects), and carries the status gateway nodes write back to the origin objects' `status`.
//!
//! - Cluster → store (`carry`): one kube-runtime watcher per kind (list, then watch; a relist after a 410;
//!   backoff on errors). Every object seen is applied; an object deleted is deleted; after each full list,
//!   the store's objects of this origin that the list did not show are deleted (deleted while the agent
//!   was away). An agent that cannot list its cluster deletes nothing.
//! - Store → cluster (`status`): a store watch of the kinds with status; a status on an object of this
//!   origin is written to the cluster's object when it differs, its `observedGeneration`s translated
//!   from the store's generation to the cluster's.
//! - Secrets and ConfigMaps: only those a carried object references (`referenced`).
//! - Conflicts: an object another cluster already has in the store (same kind, namespace and name) is
//!   refused by the store; the first origin keeps it. The refused object gets an `Accepted: False`
//!   condition (reason `OriginConflict`) in its cluster, is listed in the agent's report in the store
//!   (`gwadm clusters`), and is tried again every few seconds: when the holder's copy goes, it is taken.

mod referenced;

use anyhow::Context;
use futures::StreamExt;
use gw_client::locality::{self, MemberCell};
use gw_client::{Client, Error, kind_ref, object_ref};
use gw_model::ObjectKey;
use gw_model::kinds::{
    self, GATEWAY_GROUP, KindInfo, MCS_GROUP, MCS_SERVICE_NAME_LABEL, ORIGIN_LABEL,
    SOURCE_CLUSTER_LABEL,
};
use gw_model::registry::KubeSyncReport;
use gw_proto as pb;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cluster's generation of a carried object (the store keeps its own).
pub const ORIGIN_GENERATION: &str = "gw.dev/origin-generation";
/// How often refused objects are tried again (and the report written if its conflicts changed).
const RETRY: Duration = Duration::from_secs(2);
/// The report is written at least every this many `RETRY`s (the agent's heartbeat: 30 s).
const HEARTBEAT_RETRIES: u32 = 15;

/// The kinds carried into the store, in the order they are started (referenced kinds first).
const CARRIED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Service"),
    (MCS_GROUP, "ServiceExport"),
    ("discovery.k8s.io", "EndpointSlice"),
    (GATEWAY_GROUP, "GatewayClass"),
    (GATEWAY_GROUP, "Gateway"),
    (GATEWAY_GROUP, "ReferenceGrant"),
    (GATEWAY_GROUP, "HTTPRoute"),
    (GATEWAY_GROUP, "GRPCRoute"),
    (GATEWAY_GROUP, "TLSRoute"),
    (GATEWAY_GROUP, "TCPRoute"),
    (GATEWAY_GROUP, "UDPRoute"),
    (GATEWAY_GROUP, "BackendLBPolicy"),
    (GATEWAY_GROUP, "BackendTLSPolicy"),
];

#[derive(Debug, clap::Parser)]
#[command(
    name = "gw-kube-sync",
    about = "Carries one Kubernetes cluster's Gateway API objects into the gw store, and their status back"
)]
pub struct Args {
    /// This cluster's name (its objects' origin in the store; must match the agent's certificate).
    #[arg(long)]
    pub cluster: String,
    /// The cluster's kubeconfig (default: the pod's service account when run in the cluster, else
    /// `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Store members (HOST:PORT, comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub store: Vec<String>,
    /// The cluster's region (shown by `gwadm clusters`). With a region, the agent talks to a store
    /// member of its region, else to the nearest by round trip, and moves back when its region's
    /// returns.
    #[arg(long, default_value = "")]
    pub region: String,
    /// The address the agent's connections to the store leave from (default: the system's choice).
    #[arg(long)]
    pub store_source_address: Option<std::net::IpAddr>,
    /// Carry only these namespaces (comma-separated; default: every one). Cluster-scoped kinds
    /// (GatewayClass) are carried whatever the namespaces; Namespaces only those listed.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub tls: gw_client::TlsArgs,
    /// NULL CONTROL for the fault-injection suite, never for production: after a full list, keep
    /// what the store holds of this cluster and the list did not show (deleted while away).
    #[arg(long, hide = true, env = "GW_UNSAFE_KEEP_STALE")]
    pub unsafe_keep_stale: bool,
}

/// What the carrying and status tasks share.
struct Agent {
    cluster: String,
    region: String,
    /// The namespaces carried (empty: every one).
    namespaces: BTreeSet<String>,
    store: Client,
    kube: kube::Client,
    /// Objects the store refused because another cluster holds them: the object, and why.
    refused: Mutex<BTreeMap<ObjectKey, (&'static KindInfo, DynamicObject, String)>>,
    /// The null control: no deletions after a full list.
    keep_stale: bool,
    /// The Secrets and ConfigMaps carried objects reference, and what wakes their reconciliation.
    referenced: Mutex<referenced::Referenced>,
    wake: tokio::sync::Notify,
    /// The member (index into `--store`) the status watch is on, and the one the locality prober
    /// wants it on (`--region`).
    watching: MemberCell,
    preferred: MemberCell,
}

fn info(group: &str, kind: &str) -> &'static KindInfo {
    kinds::by_group_kind(group, kind).expect("a kind gw stores")
}

fn api_resource(info: &KindInfo) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(info.group, info.storage_version(), info.kind),
        info.plural,
    )
}

/// Runs the agent until it fails to start (it does not stop on its own).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let security = args.tls.security().map_err(anyhow::Error::msg)?;
    let store = Client::new(
        &args.store,
        Duration::from_secs(10),
        &gw_client::Dialer::new(security).source(args.store_source_address),
    )?;
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context(
            "no --kubeconfig, and neither an in-cluster service account nor a kubeconfig found",
        )?,
    };
    let agent = Arc::new(Agent {
        cluster: args.cluster,
        region: args.region,
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        store,
        kube: kube::Client::try_from(config)?,
        refused: Mutex::default(),
        keep_stale: args.unsafe_keep_stale,
        referenced: Mutex::default(),
        wake: tokio::sync::Notify::new(),
        watching: MemberCell::default(),
        preferred: MemberCell::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (group, kind) in CARRIED {
        tasks.spawn(carry(agent.clone(), info(group, kind)));
    }
    tasks.spawn(status(agent.clone()));
    tasks.spawn(retry_and_report(agent.clone()));
    for kind in ["Secret", "ConfigMap"] {
        tasks.spawn(referenced::watch(agent.clone(), info("", kind)));
    }
    tasks.spawn(referenced::reconcile(agent.clone()));
    if !agent.region.is_empty() {
        tasks.spawn(follow_locality(agent.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a task of the agent panicked")?;
    }
    Ok(())
}

/// The store's copy of a cluster's object: name, namespace, labels and annotations (the cluster's
/// generation among them), and its content; no status (the gateway nodes write that).
fn store_document(info: &KindInfo, obj: &DynamicObject, cluster: &str) -> Value {
    let mut doc = serde_json::to_value(obj).unwrap_or_default();
    let meta = &obj.metadata;
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    if let Some(g) = meta.generation {
        annotations.insert(ORIGIN_GENERATION.into(), g.to_string());
    }
    doc["apiVersion"] = json!(info.storage_api_version());
    doc["kind"] = json!(info.kind);
    let mut labels = meta.labels.clone().unwrap_or_default();
    match info.kind {
        // EndpointSlices stay per cluster (a Service backendRef reaches its route's cluster only).
        "EndpointSlice" => {
            labels.insert(SOURCE_CLUSTER_LABEL.into(), cluster.into());
        }
        // Every cluster exporting a Service has its own export of it in the store.
        "ServiceExport" => {
            labels.insert(
                MCS_SERVICE_NAME_LABEL.into(),
                meta.name.clone().unwrap_or_default(),
            );
        }
        _ => {}
    }
    doc["metadata"] = json!({
        "name": stored_name(info, meta.name.as_deref().unwrap_or(""), cluster),
        "namespace": meta.namespace,
        "labels": labels,
        "annotations": annotations,
    });
    if let Some(o) = doc.as_object_mut() {
        o.remove("status");
    }
    doc
}

/// The store's name of a cluster's object: its own, but for the kinds every cluster has its own of
/// (ServiceExports, EndpointSlices): `NAME.CLUSTER`.
fn stored_name(info: &KindInfo, name: &str, cluster: &str) -> String {
    if matches!(info.kind, "ServiceExport" | "EndpointSlice") {
        format!("{name}.{cluster}")
    } else {
        name.to_string()
    }
}

/// Whether an object is in `namespaces` (empty: every one): a namespaced object by its namespace, a
/// Namespace by its name; other cluster-scoped objects always.
fn in_namespaces(namespaces: &BTreeSet<String>, info: &KindInfo, obj: &DynamicObject) -> bool {
    let name = |n: &Option<String>| n.clone().unwrap_or_default();
    namespaces.is_empty()
        || if info.namespaced {
            namespaces.contains(&name(&obj.metadata.namespace))
        } else if info.kind == "Namespace" {
            namespaces.contains(&name(&obj.metadata.name))
        } else {
            true
        }
}

/// An object's key in its cluster.
fn key_of(info: &KindInfo, obj: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        info.group,
        info.kind,
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or(""),
    )
}

/// Retries a store write until it is done or definitely refused (the store may be electing a
/// leader, or out of reach: the cluster's watch waits meanwhile). `Some(why)`: held by another
/// cluster.
async fn until_done<F, Fut>(what: &str, mut write: F) -> Option<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<pb::WriteResponse, Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(_) => return None,
            Err(e @ (Error::Invalid(_) | Error::BadRequest(_) | Error::TooLarge { .. })) => {
                tracing::warn!(%what, error = %e, "refused by the store");
                return None;
            }
            Err(Error::Other {
                code: tonic::Code::PermissionDenied,
                message,
            }) => {
                // Another cluster's object of the same name: the first origin keeps it.
                tracing::warn!(%what, %message, "held by another cluster");
                return Some(message);
            }
            Err(e) => {
                tracing::info!(%what, error = %e, "store write failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Agent {
    /// An object's key in the store.
    fn store_key(&self, info: &KindInfo, obj: &DynamicObject) -> ObjectKey {
        let mut key = key_of(info, obj);
        key.name = stored_name(info, &key.name, &self.cluster);
        key
    }

    async fn put(&self, info: &'static KindInfo, obj: &DynamicObject) {
        let key = self.store_key(info, obj);
        let doc = pb::Document {
            json: store_document(info, obj, &self.cluster).to_string(),
            source: format!("cluster {}", self.cluster),
            index: 1,
        };
        let held = until_done(&key.to_string(), || {
            self.store.apply(vec![doc.clone()], false)
        })
        .await;
        let was_refused = {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            match &held {
                Some(why) => refused
                    .insert(key.clone(), (info, obj.clone(), why.clone()))
                    .is_some_and(|(_, old, w)| {
                        old.metadata.generation == obj.metadata.generation && &w == why
                    }),
                None => {
                    refused.remove(&key);
                    false
                }
            }
        };
        if let Some(why) = held
            && !was_refused
        {
            self.mark_refused(info, obj, &why).await;
        }
    }

    /// Tells the cluster why its object is not carried: an `Accepted: False` condition (reason
    /// `OriginConflict`), per parent for routes.
    async fn mark_refused(&self, info: &KindInfo, obj: &DynamicObject, why: &str) {
        if !info.status_subresource {
            return;
        }
        let condition = json!({
            "type": "Accepted",
            "status": "False",
            "reason": "OriginConflict",
            "message": format!("not carried into the gw store: {why}"),
            "observedGeneration": obj.metadata.generation.unwrap_or(0),
            "lastTransitionTime": gw_model::meta::rfc3339(gw_client::clock::now_ms()),
        });
        let status = match info.kind {
            "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" | "UDPRoute" => {
                let parents: Vec<Value> = obj.data["spec"]["parentRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        json!({"parentRef": p, "controllerName": "gw.dev/kube-sync", "conditions": [condition]})
                    })
                    .collect();
                json!({ "parents": parents })
            }
            _ => json!({ "conditions": [condition] }),
        };
        let name = obj.metadata.name.as_deref().unwrap_or("");
        let ar = api_resource(info);
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) if info.namespaced => Api::namespaced_with(self.kube.clone(), ns, &ar),
            _ => Api::all_with(self.kube.clone(), &ar),
        };
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            tracing::info!(kind = info.kind, %name, error = %e, "marking a conflict failed");
        }
    }

    async fn delete(&self, keys: Vec<ObjectKey>) {
        if keys.is_empty() {
            return;
        }
        {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            for k in &keys {
                refused.remove(k);
            }
        }
        let what = format!("deleting {} objects", keys.len());
        let req = pb::DeleteRequest {
            refs: keys.iter().map(object_ref).collect(),
            dry_run: false,
            ignore_not_found: true,
            expected_resource_versions: vec![],
        };
        until_done(&what, || self.store.delete(req.clone())).await;
    }

    /// What the store refused, and why.
    fn conflicts(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, (_, _, why))| format!("{k}: {why}"))
            .collect()
    }

    /// The member the status watch is on (`--store`'s `HOST:PORT`; "" none).
    fn watching(&self) -> String {
        self.watching
            .get()
            .and_then(|i| self.store.servers().get(i).cloned())
            .unwrap_or_default()
    }

    /// Writes the agent's report in the store (`gwadm clusters`): when it last wrote, what was
    /// refused, the member it watches. Whether it was written.
    async fn report(&self, conflicts: &[String], watching: &str) -> bool {
        let doc = KubeSyncReport {
            region: self.region.clone(),
            last_contact_ms: gw_client::clock::now_ms(),
            conflicts: conflicts.to_vec(),
            watching: watching.to_string(),
        }
        .to_object(&self.cluster);
        let doc = pb::Document {
            json: doc.to_string(),
            source: format!("cluster {} report", self.cluster),
            index: 1,
        };
        match self.store.apply(vec![doc], false).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(error = %e, "writing the report failed");
                false
            }
        }
    }

    /// The store's objects of this kind and origin.
    async fn owned(&self, info: &KindInfo) -> Result<Vec<ObjectKey>, Error> {
        let objects = self.store.list_objects(info.group, info.kind, "").await?;
        Ok(objects
            .iter()
            .filter(|o| o["metadata"]["labels"][ORIGIN_LABEL] == self.cluster.as_str())
            .map(|o| {
                ObjectKey::new(
                    info.group,
                    info.kind,
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                )
            })
            .collect())
    }

    /// After a full list: deletes what the store holds of this origin and the list did not show.
    async fn delete_missing(&self, info: &KindInfo, seen: &BTreeSet<ObjectKey>) {
        if self.keep_stale {
            tracing::warn!("GW_UNSAFE_KEEP_STALE: nothing deleted after a full list");
            return;
        }
        let mut pause = Duration::from_millis(100);
        let owned = loop {
            match self.owned(info).await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::info!(kind = info.kind, error = %e, "listing the store failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        };
        let gone: Vec<ObjectKey> = owned.into_iter().filter(|k| !seen.contains(k)).collect();
        if !gone.is_empty() {
            tracing::info!(kind = info.kind, count = gone.len(), "deleted while away");
        }
        self.delete(gone).await;
    }
}

/// Tries the refused objects again every `RETRY`, and writes the report when its conflicts changed
/// or the heartbeat is due, for ever.
async fn retry_and_report(agent: Arc<Agent>) {
    let mut written: Option<(Vec<String>, String)> = None;
    let mut since = 0;
    loop {
        tokio::time::sleep(RETRY).await;
        let refused: Vec<(&'static KindInfo, DynamicObject)> = agent
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(info, obj, _)| (*info, obj.clone()))
            .collect();
        for (info, obj) in refused {
            agent.put(info, &obj).await;
        }
        since += 1;
        let now = (agent.conflicts(), agent.watching());
        if (written.as_ref() != Some(&now) || since >= HEARTBEAT_RETRIES)
            && agent.report(&now.0, &now.1).await
        {
            written = Some(now);
            since = 0;
        }
    }
}

/// Carries one kind from the cluster into the store, for ever.
async fn carry(agent: Arc<Agent>, info: &'static KindInfo) {
    let api: Api<DynamicObject> = Api::all_with(agent.kube.clone(), &api_resource(info));
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // The keys of the list in progress (between Init and InitDone).
    let mut listing: Option<BTreeSet<ObjectKey>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            // Outside the carried namespaces: as if it did not exist.
            Ok(
                watcher::Event::InitApply(ref o)
                | watcher::Event::Apply(ref o)
                | watcher::Event::Delete(ref o),
            ) if !in_namespaces(&agent.namespaces, info, o) => continue,
            other => other,
        };
        match event {
            Ok(watcher::Event::Init) => listing = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(seen) = listing.as_mut() {
                    seen.insert(agent.store_key(info, &o));
                }
                agent.references(info, &o, false);
                agent.put(info, &o).await;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = listing.take() {
                    if referenced::REFERRERS.contains(&info.kind) {
                        agent
                            .referenced
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .listed(info.kind, &seen);
                        agent.wake.notify_one();
                    }
                    agent.delete_missing(info, &seen).await;
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                agent.references(info, &o, false);
                agent.put(info, &o).await;
            }
            Ok(watcher::Event::Delete(o)) => {
                agent.references(info, &o, true);
                agent.delete(vec![agent.store_key(info, &o)]).await;
            }
            Err(e) => tracing::info!(kind = info.kind, error = %e, "cluster watch failed"),
        }
    }
}

impl Agent {
    /// Records what a carried object references (`gone`: nothing any more) and wakes the
    /// reconciliation of the referenced Secrets and ConfigMaps.
    fn references(&self, info: &KindInfo, obj: &DynamicObject, gone: bool) {
        if !referenced::REFERRERS.contains(&info.kind) {
            return;
        }
        let refs = if gone {
            BTreeSet::new()
        } else {
            referenced::refs_of(info, obj)
        };
        self.referenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_refs(key_of(info, obj), refs);
        self.wake.notify_one();
    }
}

/// A status with the store's generation replaced by the cluster's in every `observedGeneration`
/// that refers to the store's current one (older ones are left: they are stale either way).
fn translated(status: &Value, store_generation: &Value, origin_generation: i64) -> Value {
    match status {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if k == "observedGeneration" && v == store_generation {
                        json!(origin_generation)
                    } else {
                        translated(v, store_generation, origin_generation)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| translated(v, store_generation, origin_generation))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Agent {
    /// Writes a store object's status to the cluster's object, if it is this cluster's and differs.
    async fn write_back(&self, obj: &Value) {
        let meta = &obj["metadata"];
        if meta["labels"][ORIGIN_LABEL] != self.cluster.as_str() || obj["status"].is_null() {
            return;
        }
        let (group, _) = kinds::split_api_version(obj["apiVersion"].as_str().unwrap_or(""));
        let Some(info) = kinds::by_group_kind(group, obj["kind"].as_str().unwrap_or("")) else {
            return;
        };
        let Some(origin_generation) = meta["annotations"][ORIGIN_GENERATION]
            .as_str()
            .and_then(|g| g.parse::<i64>().ok())
        else {
            return;
        };
        let name = meta["name"].as_str().unwrap_or("");
        let ar = api_resource(info);
        let api: Api<DynamicObject> = match meta["namespace"].as_str() {
            Some(ns) if info.namespaced => Api::namespaced_with(self.kube.clone(), ns, &ar),
            _ => Api::all_with(self.kube.clone(), &ar),
        };
        let status = translated(&obj["status"], &meta["generation"], origin_generation);
        match api.get_opt(name).await {
            Ok(Some(current)) if current.data.get("status") == Some(&status) => {}
            Ok(Some(current)) if current.metadata.generation != Some(origin_generation) => {
                // The cluster's object has moved on: the store's status is for an older version.
            }
            Ok(Some(_)) => {
                let patch = Patch::Merge(json!({ "status": status }));
                if let Err(e) = api
                    .patch_status(name, &PatchParams::default(), &patch)
                    .await
                {
                    tracing::info!(kind = info.kind, %name, error = %e, "status write-back failed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(kind = info.kind, %name, error = %e, "reading the cluster failed")
            }
        }
    }
}

/// Carries status from the store to the cluster, for ever: a store watch of the kinds with status,
/// resumed after the last revision (a fresh snapshot after an error it cannot resume from).
async fn status(agent: Arc<Agent>) {
    let kinds: Vec<pb::ObjectRef> = CARRIED
        .iter()
        .map(|(g, k)| info(g, k))
        .filter(|i| i.status_subresource)
        .map(|i| kind_ref(i.group, i.kind))
        .collect();
    let mut after: Option<u64> = None;
    loop {
        let req = pb::WatchRequest {
            after_revision: after,
            kinds: kinds.clone(),
            namespace: String::new(),
            // Bookmarks wake the loop up to move to a nearer member.
            bookmark_interval_ms: 1000,
            show_secret_values: false,
        };
        if let Some(p) = agent.preferred.get() {
            agent.store.prefer(p);
        }
        let mut stream = match agent.store.watch_on(req).await {
            Ok((s, on)) => {
                agent.watching.set(Some(on));
                s
            }
            Err(e) => {
                tracing::info!(error = %e, "store watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { break };
            match msg.body {
                Some(pb::watch_response::Body::Snapshot(s)) => {
                    for o in &s.objects_json {
                        if let Ok(v) = serde_json::from_str::<Value>(o) {
                            agent.write_back(&v).await;
                        }
                    }
                    if s.done {
                        after = Some(s.revision);
                    }
                }
                Some(pb::watch_response::Body::Events(r)) => {
                    for e in &r.events {
                        if e.r#type == pb::EventType::Put as i32
                            && let Ok(v) = serde_json::from_str::<Value>(&e.object_json)
                        {
                            agent.write_back(&v).await;
                        }
                    }
                    after = Some(r.revision);
                }
                Some(pb::watch_response::Body::Bookmark(b)) => after = Some(b.revision),
                None => {}
            }
            // The locality prober wants the watch elsewhere: resume there.
            if let Some(p) = agent.preferred.get()
                && agent.watching.get() != Some(p)
            {
                tracing::info!(member = %agent.store.servers()[p], "moving the store watch to a nearer member");
                break;
            }
        }
        agent.watching.set(None);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With `--region`: probes every store member every `locality::PROBE_EVERY` and keeps the agent's
/// calls and its status watch on the one `locality::choose` picks (its region's, else the nearest).
async fn follow_locality(agent: Arc<Agent>) {
    loop {
        let probes = locality::probe(&agent.store).await;
        let pick = locality::choose(&agent.region, &probes, agent.watching.get());
        agent.preferred.set(pick);
        if let Some(p) = pick {
            agent.store.prefer(p);
        }
        tokio::time::sleep(locality::PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_namespaces_are_carried() {
        let obj = |kind: &str, ns: Option<&str>, name: &str| -> DynamicObject {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"name": name, "namespace": ns}}))
            .unwrap()
        };
        let some: BTreeSet<String> = ["app".to_string()].into_iter().collect();
        let route = info(GATEWAY_GROUP, "HTTPRoute");
        let ns = info("", "Namespace");
        let class = info(GATEWAY_GROUP, "GatewayClass");
        assert!(in_namespaces(
            &some,
            route,
            &obj("HTTPRoute", Some("app"), "r")
        ));
        assert!(!in_namespaces(
            &some,
            route,
            &obj("HTTPRoute", Some("other"), "r")
        ));
        assert!(in_namespaces(&some, ns, &obj("Namespace", None, "app")));
        assert!(!in_namespaces(&some, ns, &obj("Namespace", None, "other")));
        assert!(in_namespaces(
            &some,
            class,
            &obj("GatewayClass", None, "gw")
        ));
        assert!(in_namespaces(
            &BTreeSet::new(),
            route,
            &obj("HTTPRoute", Some("x"), "r")
        ));
    }

    #[test]
    fn observed_generations_are_translated_to_the_clusters() {
        let status = json!({"parents": [{"conditions": [
            {"type": "Accepted", "observedGeneration": 3},
            {"type": "Old", "observedGeneration": 2},
        ]}]});
        let t = translated(&status, &json!(3), 7);
        assert_eq!(t["parents"][0]["conditions"][0]["observedGeneration"], 7);
        assert_eq!(t["parents"][0]["conditions"][1]["observedGeneration"], 2);
    }

    #[test]
    fn the_store_copy_keeps_content_and_identity_only() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "app", "generation": 4, "uid": "u",
                         "resourceVersion": "99", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"hostnames": ["x.example"]},
            "status": {"parents": []},
        }))
        .unwrap();
        let doc = store_document(info(GATEWAY_GROUP, "HTTPRoute"), &obj, "a");
        assert_eq!(
            doc["metadata"],
            json!({"name": "r", "namespace": "app", "labels": {"a": "b"},
                   "annotations": {ORIGIN_GENERATION: "4"}})
        );
        assert_eq!(doc["spec"]["hostnames"][0], "x.example");
        assert!(doc.get("status").is_none());
    }
}
