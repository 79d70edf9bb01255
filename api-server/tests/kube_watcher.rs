//! kube-rs (`kube::runtime::watcher`) against the Kubernetes API of a 3-member store: every change is
//! seen once and in order while its member restarts, and a watch whose revision left the history gets a
//! 410 and recovers by listing again. The watcher talks to member 1 through a proxy the test can cut,
//! so that the 410 comes at a known moment (after member 1 has applied the missed revisions).

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use futures::StreamExt;
use gw_testkit::cluster::Cluster;
use gw_testkit::proxy::Proxy;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a restarted member may take to catch up.
const ELECTION: Duration = Duration::from_secs(20);
const NS: &str = "watched";
/// Revisions of events each member keeps (`--history-revisions`).
const HISTORY: u64 = 20;

async fn client(c: &Cluster, id: u64, server: Option<&str>) -> kube::Client {
    let mut kc = Kubeconfig::read_from(c.kubeconfig(id).unwrap()).unwrap();
    if let Some(s) = server {
        for cl in &mut kc.clusters {
            if let Some(cluster) = cl.cluster.as_mut() {
                cluster.server = Some(format!("https://{s}"));
            }
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn routes(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client, NS, &ar)
}

fn route(name: &str, host: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hostnames": [host], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]},
    }))
    .unwrap()
}

/// What the watcher reported, simplified: `(event, name, resourceVersion)`.
type Seen = (String, String, u64);

fn seen(e: &watcher::Event<DynamicObject>) -> Seen {
    let of = |o: &DynamicObject| {
        (
            o.metadata.name.clone().unwrap_or_default(),
            o.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    };
    let (kind, (name, rv)) = match e {
        watcher::Event::Apply(o) => ("Apply", of(o)),
        watcher::Event::Delete(o) => ("Delete", of(o)),
        watcher::Event::Init => ("Init", (String::new(), 0)),
        watcher::Event::InitApply(o) => ("InitApply", of(o)),
        watcher::Event::InitDone => ("InitDone", (String::new(), 0)),
    };
    (kind.to_string(), name, rv)
}

fn rv_of(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Receives events until `done` holds for one, with a deadline; returns them all.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Result<Seen, String>>,
    what: &str,
    mut done: impl FnMut(&Seen) -> bool,
) -> (Vec<Seen>, Vec<String>) {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(s))) => {
                let stop = done(&s);
                events.push(s);
                if stop {
                    return (events, errors);
                }
            }
            Ok(Some(Err(e))) => errors.push(e),
            Ok(None) => panic!("the watcher ended; saw {events:?} {errors:?}"),
            Err(_) => panic!("{what}: not seen within 60 s; saw {events:?}, errors {errors:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_sees_every_change_once_across_a_restart_and_relists_after_410() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut c = Cluster::start_kube(3, &["--history-revisions", &HISTORY.to_string()])
        .await
        .unwrap();
    let direct2 = routes(client(&c, 2, None).await);
    let ns: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .unwrap();
    let namespaces: Api<DynamicObject> = Api::all_with(
        client(&c, 2, None).await,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        ),
    );
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    direct2
        .create(&PostParams::default(), &route("before", "before.example"))
        .await
        .unwrap();

    // The watcher, on member 1 through the proxy.
    let proxy = Proxy::start(c.kube_addr(1).to_string()).await.unwrap();
    let via_proxy = routes(client(&c, 1, Some(&proxy.addr)).await);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = stopped.clone();
    let watching = tokio::spawn(async move {
        let mut events = watcher(via_proxy, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(e) = events.next().await {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let _ = tx.send(e.map(|e| seen(&e)).map_err(|e| e.to_string()));
        }
    });
    let (init, _) = until(&mut rx, "the initial list", |s| s.0 == "InitDone").await;
    assert_eq!(
        init.iter()
            .map(|s| (s.0.as_str(), s.1.as_str()))
            .collect::<Vec<_>>(),
        vec![("Init", ""), ("InitApply", "before"), ("InitDone", "")]
    );

    // Writes through member 1, then member 1 restarts while writes go on through member 2, then more
    // through member 1: each seen once, in order.
    let direct1 = routes(client(&c, 1, None).await);
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut rvs: Vec<u64> = Vec::new();
    for i in 0..3 {
        let o = direct1
            .create(
                &PostParams::default(),
                &route(&format!("a{i}"), "a.example"),
            )
            .await
            .unwrap();
        rvs.push(rv_of(&o));
        expected.push(("Apply".into(), format!("a{i}")));
    }
    c.stop(1);
    for i in 0..3 {
        let o = direct2
            .patch(
                &format!("a{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"hostnames": [format!("b{i}.example")]}})),
            )
            .await
            .unwrap();
        rvs.push(rv_of(&o));
        expected.push(("Apply".into(), format!("a{i}")));
    }
    direct2
        .delete("a0", &DeleteParams::default())
        .await
        .unwrap();
    expected.push(("Delete".into(), "a0".into()));
    c.spawn(1).unwrap();
    // Member 1 takes a moment to listen again.
    let mut tries = 0;
    let after = loop {
        match direct1
            .create(&PostParams::default(), &route("after", "after.example"))
            .await
        {
            Ok(o) => break o,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("member 1 did not come back: {e}"),
        }
    };
    rvs.push(rv_of(&after));
    expected.push(("Apply".into(), "after".into()));
    let (events, _) = until(&mut rx, "the write after the restart", |s| s.1 == "after").await;
    assert_eq!(
        events
            .iter()
            .map(|s| (s.0.clone(), s.1.clone()))
            .collect::<Vec<_>>(),
        expected,
        "every change once, in order, no relist"
    );
    let applied: Vec<u64> = events
        .iter()
        .filter(|s| s.0 == "Apply")
        .map(|s| s.2)
        .collect();
    assert_eq!(applied, rvs, "the revisions written");
    assert!(events.windows(2).all(|w| w[0].2 < w[1].2), "{events:?}");

    // Cut the watcher off; write past member 1's history; let member 1 apply it all; reconnect.
    proxy.set(false);
    let mut last = 0;
    for i in 0..HISTORY + 5 {
        last = rv_of(
            &direct2
                .patch(
                    "a1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
                )
                .await
                .unwrap(),
        );
    }
    c.wait_for_revision(1, last, ELECTION).await.unwrap();
    proxy.set(true);
    let (relisted, errors) = until(&mut rx, "the relist", |s| s.0 == "InitDone").await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("410") || e.contains("Expired")),
        "a 410 before the relist: {errors:?}"
    );
    let listed: Vec<(String, String, u64)> = relisted
        .iter()
        .skip_while(|s| s.0 != "Init")
        .cloned()
        .collect();
    let mut names: Vec<&str> = listed
        .iter()
        .filter(|s| s.0 == "InitApply")
        .map(|s| s.1.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a1", "a2", "after", "before"], "{relisted:?}");
    assert!(
        listed.iter().any(|s| s.1 == "a1" && s.2 == last),
        "the relist shows the latest a1 (revision {last}): {listed:?}"
    );
    // And the watch goes on from there.
    let o = direct1
        .create(&PostParams::default(), &route("final", "f.example"))
        .await
        .unwrap();
    let (tail, _) = until(&mut rx, "the write after the relist", |s| s.1 == "final").await;
    assert_eq!(
        tail.last().unwrap(),
        &("Apply".to_string(), "final".to_string(), rv_of(&o))
    );
    assert_eq!(tail.len(), 1, "{tail:?}");
    stopped.store(true, Ordering::Relaxed);
    watching.abort();
}
