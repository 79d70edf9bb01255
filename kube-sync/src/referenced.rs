//! The Secrets and ConfigMaps of a cluster that a carried object references — a Gateway's listener
//! certificates (`tls.certificateRefs`) and client CAs (`tls.frontendValidation.caCertificateRefs`),
//! a BackendTLSPolicy's CAs (`validation.caCertificateRefs`) — and only those, never every Secret of
//! the cluster. The agent watches both kinds into a cache; whenever the references or the cache change,
//! what is referenced and present is put into the store, and (once every kind involved has been listed
//! in full) what the store holds of this origin and is no longer referenced is deleted.

use crate::{Agent, api_resource, info, key_of};
use futures::StreamExt;
use gw_model::ObjectKey;
use gw_model::kinds::{GATEWAY_GROUP, KindInfo};
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The kinds that reference Secrets and ConfigMaps.
pub(crate) const REFERRERS: [&str; 2] = ["Gateway", "BackendTLSPolicy"];
/// The kinds whose full lists deletions wait for: the referrers and the referenced.
const LISTED_BEFORE_DELETING: [&str; 4] = ["Gateway", "BackendTLSPolicy", "Secret", "ConfigMap"];

#[derive(Default)]
pub(crate) struct Referenced {
    /// Referrer → what it references.
    refs: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The cluster's Secrets and ConfigMaps, as watched.
    cache: BTreeMap<ObjectKey, DynamicObject>,
    /// What was put into the store, at the cluster's resourceVersion.
    carried: BTreeMap<ObjectKey, String>,
    /// Kinds whose first full list is done.
    listed: BTreeSet<&'static str>,
}

impl Referenced {
    /// Records what a referrer references now (nothing: it is gone).
    pub(crate) fn set_refs(&mut self, referrer: ObjectKey, refs: BTreeSet<ObjectKey>) {
        if refs.is_empty() {
            self.refs.remove(&referrer);
        } else {
            self.refs.insert(referrer, refs);
        }
    }

    /// After a full list of a referrer kind: the referrers of that kind it did not show are gone.
    pub(crate) fn listed(&mut self, kind: &'static str, seen: &BTreeSet<ObjectKey>) {
        self.refs.retain(|k, _| k.kind != kind || seen.contains(k));
        self.listed.insert(kind);
    }

    fn wanted(&self) -> BTreeSet<&ObjectKey> {
        self.refs.values().flatten().collect()
    }
}

/// A reference's key: `group`/`kind` as given (defaults applied by the caller), the referrer's
/// namespace unless it names another.
fn reference(r: &Value, default_kind: &str, namespace: &str) -> Option<ObjectKey> {
    let group = r["group"].as_str().unwrap_or("");
    let kind = r["kind"].as_str().unwrap_or(default_kind);
    let name = r["name"].as_str()?;
    (group.is_empty() && matches!(kind, "Secret" | "ConfigMap"))
        .then(|| ObjectKey::new("", kind, r["namespace"].as_str().unwrap_or(namespace), name))
}

/// What a carried object references (only Gateways and BackendTLSPolicies reference any).
pub(crate) fn refs_of(info: &KindInfo, obj: &DynamicObject) -> BTreeSet<ObjectKey> {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("");
    let spec = &obj.data["spec"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match (info.group, info.kind) {
        (GATEWAY_GROUP, "Gateway") => list(&spec["listeners"])
            .iter()
            .flat_map(|l| {
                let tls = &l["tls"];
                list(&tls["certificateRefs"])
                    .iter()
                    .filter_map(|r| reference(r, "Secret", ns))
                    .chain(
                        list(&tls["frontendValidation"]["caCertificateRefs"])
                            .iter()
                            .filter_map(|r| reference(r, "ConfigMap", ns)),
                    )
                    .collect::<Vec<_>>()
            })
            .collect(),
        (GATEWAY_GROUP, "BackendTLSPolicy") => list(&spec["validation"]["caCertificateRefs"])
            .iter()
            .filter_map(|r| reference(&without_namespace(r), "ConfigMap", ns))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// A local reference (no namespace of its own, whatever it says).
fn without_namespace(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("namespace");
    }
    r
}

/// Watches one of the referenced kinds into the cache, for ever.
pub(crate) async fn watch(agent: Arc<Agent>, info: &'static KindInfo) {
    let api: Api<DynamicObject> = Api::all_with(agent.kube.clone(), &api_resource(info));
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<BTreeMap<ObjectKey, DynamicObject>> = None;
    while let Some(event) = events.next().await {
        {
            let mut r = agent.referenced.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(o)) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(key_of(info, &o), o);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        r.cache.retain(|k, _| k.kind != info.kind);
                        r.cache.extend(l);
                        r.listed.insert(info.kind);
                    }
                }
                Ok(watcher::Event::Apply(o)) => {
                    r.cache.insert(key_of(info, &o), o);
                }
                Ok(watcher::Event::Delete(o)) => {
                    r.cache.remove(&key_of(info, &o));
                }
                Err(e) => tracing::info!(kind = info.kind, error = %e, "cluster watch failed"),
            }
        }
        agent.wake.notify_one();
    }
}

/// Puts what is referenced into the store and deletes what no longer is, whenever woken (and every
/// few seconds), for ever.
pub(crate) async fn reconcile(agent: Arc<Agent>) {
    loop {
        tokio::select! {
            _ = agent.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (puts, wanted, ready) = {
            let r = agent.referenced.lock().unwrap_or_else(|p| p.into_inner());
            let wanted: BTreeSet<ObjectKey> = r
                .wanted()
                .into_iter()
                .filter(|k| r.cache.contains_key(*k))
                .cloned()
                .collect();
            let puts: Vec<DynamicObject> = wanted
                .iter()
                .filter_map(|k| r.cache.get(k))
                .filter(|o| {
                    r.carried.get(&key_of(kind_info(o), o)) != o.metadata.resource_version.as_ref()
                })
                .cloned()
                .collect();
            let ready = LISTED_BEFORE_DELETING.iter().all(|k| r.listed.contains(k));
            (puts, wanted, ready)
        };
        for o in puts {
            let info = kind_info(&o);
            agent.put(info, &o).await;
            let rv = o.metadata.resource_version.clone().unwrap_or_default();
            agent
                .referenced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .carried
                .insert(key_of(info, &o), rv);
        }
        if !ready {
            continue;
        }
        let mut gone = Vec::new();
        for kind in ["Secret", "ConfigMap"] {
            match agent.owned(info("", kind)).await {
                Ok(keys) => gone.extend(keys.into_iter().filter(|k| !wanted.contains(k))),
                Err(e) => tracing::info!(kind, error = %e, "listing the store failed"),
            }
        }
        if !gone.is_empty() {
            {
                let mut r = agent.referenced.lock().unwrap_or_else(|p| p.into_inner());
                for k in &gone {
                    r.carried.remove(k);
                }
            }
            agent.delete(gone).await;
        }
    }
}

/// Secret or ConfigMap, by the object's own `kind`.
fn kind_info(o: &DynamicObject) -> &'static KindInfo {
    let kind = o.types.as_ref().map_or("", |t| t.kind.as_str());
    info(
        "",
        if kind == "ConfigMap" {
            "ConfigMap"
        } else {
            "Secret"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateways_and_backend_tls_policies_reference_secrets_and_config_maps() {
        let gw: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "app"},
            "spec": {"gatewayClassName": "gw", "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {
                    "certificateRefs": [{"name": "cert"}, {"name": "other", "namespace": "certs"},
                                        {"group": "example.com", "kind": "Vault", "name": "v"}],
                    "frontendValidation": {"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "ca"}]}}},
                {"name": "http", "port": 80, "protocol": "HTTP"}]},
        }))
        .unwrap();
        let refs = refs_of(info(GATEWAY_GROUP, "Gateway"), &gw);
        let want: BTreeSet<ObjectKey> = [
            ObjectKey::new("", "Secret", "app", "cert"),
            ObjectKey::new("", "Secret", "certs", "other"),
            ObjectKey::new("", "ConfigMap", "app", "ca"),
        ]
        .into_iter()
        .collect();
        assert_eq!(refs, want);
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1alpha3", "kind": "BackendTLSPolicy",
            "metadata": {"name": "p", "namespace": "app"},
            "spec": {"validation": {"hostname": "x", "caCertificateRefs": [
                {"group": "", "kind": "ConfigMap", "name": "backend-ca"}]}},
        }))
        .unwrap();
        assert_eq!(
            refs_of(info(GATEWAY_GROUP, "BackendTLSPolicy"), &policy),
            [ObjectKey::new("", "ConfigMap", "app", "backend-ca")]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn a_full_list_forgets_the_referrers_it_did_not_show() {
        let mut r = Referenced::default();
        let a = ObjectKey::new(GATEWAY_GROUP, "Gateway", "app", "a");
        let b = ObjectKey::new(GATEWAY_GROUP, "Gateway", "app", "b");
        let s = ObjectKey::new("", "Secret", "app", "s");
        r.set_refs(a.clone(), [s.clone()].into_iter().collect());
        r.set_refs(b.clone(), [s.clone()].into_iter().collect());
        r.listed("Gateway", &[b.clone()].into_iter().collect());
        assert_eq!(r.wanted(), [&s].into_iter().collect());
        r.set_refs(b, BTreeSet::new());
        assert!(r.wanted().is_empty());
    }
}
