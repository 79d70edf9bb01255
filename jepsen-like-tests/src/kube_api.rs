//! The register workload and its watch collectors through the Kubernetes API (`--via kube`), with
//! kube-rs as the client, the way a controller would talk to gw: a read is a list of the one object
//! (field selector on its name; the list's resourceVersion is the read's revision), a write is a forced
//! server-side apply, a compare-and-set a replace at the resourceVersion read (409 when it moved). The
//! collectors watch ConfigMaps with bookmarks, resume from the last resourceVersion on another member
//! after any error or silence, and list again after a 410. The checks are the register workload's.

use crate::watch::{Collected, SILENCE};
use futures::StreamExt;
use gw_client::Error;
use gw_testkit::cluster::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "jepsen";

/// The ConfigMaps of the register, on each member's Kubernetes API.
pub async fn apis(cluster: &Cluster) -> anyhow::Result<Vec<(u64, Api<ConfigMap>)>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut out = Vec::new();
    for id in cluster.ids() {
        let kc = Kubeconfig::read_from(cluster.kubeconfig(id)?)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        config.connect_timeout = Some(Duration::from_millis(300));
        let client = kube::Client::try_from(config)?;
        out.push((id, Api::namespaced(client, NAMESPACE)));
    }
    Ok(out)
}

/// A kube-rs error as the store client's: a 4xx is definite (the write did not happen); a 5xx
/// (timeouts, no leader) or a broken connection may hide a write that happened.
fn error(e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) => {
            Error::BadRequest(format!("{} {}: {}", s.code, s.reason, s.message))
        }
        other => Error::OutcomeUnknown {
            tried: "the Kubernetes API".into(),
            last: other.to_string(),
        },
    }
}

fn resource_version(cm: &ConfigMap) -> String {
    cm.metadata.resource_version.clone().unwrap_or_default()
}

/// A linearizable read: the value, the object's resourceVersion, and the revision read at.
pub async fn read(api: &Api<ConfigMap>, key: &str) -> Result<(Option<i64>, String, u64), Error> {
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={key}")))
        .await
        .map_err(error)?;
    let revision = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(match list.items.first() {
        Some(cm) => (
            cm.data
                .as_ref()
                .and_then(|d| d.get("value"))
                .and_then(|v| v.parse().ok()),
            resource_version(cm),
            revision,
        ),
        None => (None, String::new(), revision),
    })
}

/// Writes `value`: unconditionally (server-side apply, forced), or only if the object is still at `rv`
/// (replace with that resourceVersion). Returns the write's revision.
pub async fn write(
    api: &Api<ConfigMap>,
    key: &str,
    value: i64,
    rv: Option<&str>,
) -> Result<u64, Error> {
    let mut doc = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": key, "namespace": NAMESPACE}, "data": {"value": value.to_string()}});
    let written = match rv {
        None => {
            let params = PatchParams::apply("jepsen").force();
            api.patch(key, &params, &Patch::Apply(&doc)).await
        }
        Some(rv) => {
            doc["metadata"]["resourceVersion"] = json!(rv);
            let cm: ConfigMap = serde_json::from_value(doc).expect("a ConfigMap");
            api.replace(key, &PostParams::default(), &cm).await
        }
    }
    .map_err(error)?;
    resource_version(&written)
        .parse()
        .map_err(|_| Error::BadRequest("the written object has no resourceVersion".into()))
}

/// Collects until `deadline`, or until it has received `stop_at` (once set, non-zero).
pub async fn collector(
    apis: Arc<Vec<(u64, Api<ConfigMap>)>>,
    start: usize,
    stop_at: Arc<AtomicU64>,
    deadline: Instant,
) -> Collected {
    let mut out = Collected::default();
    let mut last: Option<u64> = None;
    let mut member = start;
    let done = |last: Option<u64>| {
        let target = stop_at.load(Ordering::Relaxed);
        Instant::now() >= deadline || (target != 0 && last.is_some_and(|l| l >= target))
    };
    while !done(last) {
        let (id, api) = &apis[member % apis.len()];
        out.members_used.insert(*id);
        // The start, and after a 410: a list gives the revision the watch goes on from.
        let from = match last {
            Some(l) => l,
            None => match tokio::time::timeout(SILENCE, api.list(&ListParams::default())).await {
                Ok(Ok(list)) => {
                    let at = list
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if !out.revisions.is_empty() {
                        out.resets.push(at);
                    }
                    last = Some(at);
                    at
                }
                _ => {
                    out.reconnects += 1;
                    member += 1;
                    continue;
                }
            },
        };
        let params = WatchParams::default(); // with bookmarks
        if let Ok(Ok(stream)) =
            tokio::time::timeout(SILENCE, api.watch(&params, &from.to_string())).await
        {
            let mut stream = stream.boxed();
            // Revisions received on this connection (a revision's events arrive one by one).
            let mut this_connection = 0;
            loop {
                if done(last) {
                    return out;
                }
                let event = match tokio::time::timeout(SILENCE, stream.next()).await {
                    Ok(Some(Ok(e))) => e,
                    _ => break,
                };
                let (cm, deleted) = match event {
                    WatchEvent::Added(cm) | WatchEvent::Modified(cm) => (cm, false),
                    WatchEvent::Deleted(cm) => (cm, true),
                    WatchEvent::Bookmark(b) => {
                        let at = b.metadata.resource_version.parse().unwrap_or(0);
                        out.bookmarks.push((at, last.unwrap_or(0)));
                        last = last.max(Some(at));
                        continue;
                    }
                    WatchEvent::Error(e) if e.code == 410 => {
                        last = None;
                        break;
                    }
                    WatchEvent::Error(_) => break,
                };
                let rev: u64 = resource_version(&cm).parse().unwrap_or(0);
                let name = cm.metadata.name.clone().unwrap_or_default();
                let value = (!deleted).then(|| {
                    cm.data
                        .as_ref()
                        .and_then(|d| d.get("value").cloned())
                        .unwrap_or_default()
                });
                // One revision may change several objects: its events arrive one after another. An
                // object twice in one revision, or a revision again on a new connection, stays a
                // separate entry, for the checker to see.
                match out.revisions.last_mut() {
                    Some((r, events))
                        if *r == rev && this_connection > 0 && !events.contains_key(&name) =>
                    {
                        events.insert(name, value);
                    }
                    _ => {
                        out.revisions
                            .push((rev, [(name, value)].into_iter().collect()));
                        this_connection += 1;
                    }
                }
                last = last.max(Some(rev));
            }
        }
        out.reconnects += 1;
        member += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}
