//! One Kubernetes cluster (a gw member serving the Kubernetes API, with its own CA), a store, an agent
//! and a gateway node, all real processes: what kubectl applies in the cluster is served by the node
//! and its status comes back to the cluster; a route deleted while the agent was down is gone after its
//! restart; an agent cut off from its cluster deletes nothing.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_client::{Identity, TlsArgs};
use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::echo::{EchoConfig, EchoServer, start};
use gw_testkit::procs::{Children, bin, free_port};
use gw_testkit::proxy::Proxy;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "app";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("KUBECACHEDIR", kubeconfig.with_extension("cache"))
        .output()
        .expect("running kubectl")
}

/// `GET /` with this Host on a new connection: the status code (0 if there is no answer) and body.
async fn get(port: u16, host: &str) -> (u16, String) {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return (0, String::new());
    };
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let response = text(&buf);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn status_of(port: u16, host: &str) -> u16 {
    get(port, host).await.0
}

/// Waits until `f` holds (checked every 100 ms), returning how long it took.
async fn until<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s");
}

fn manifests(listener: u16, backend: u16) -> String {
    format!(
        "\
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gw}}
spec: {{controllerName: gw.dev/gateway-node}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  gatewayClassName: gw
  listeners: [{{name: http, port: {listener}, protocol: HTTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS}}}
spec:
  ports: [{{name: http, port: 80, targetPort: {backend}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-a
  namespace: {NS}
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{{name: http, port: {backend}, protocol: TCP}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: {NS}}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [shop.example]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
"
    )
}

fn spawn_agent(children: &mut Children, store: &Cluster, cluster: &str, kubeconfig: &Path) {
    spawn_agent_with(children, store, cluster, kubeconfig, &[]);
}

/// An agent of `cluster` for every member of `store`, with `extra` flags.
fn spawn_agent_with(
    children: &mut Children,
    store: &Cluster,
    cluster: &str,
    kubeconfig: &Path,
    extra: &[&str],
) {
    let tls = store
        .pki()
        .issue(
            &format!("kube-sync-{cluster}"),
            &Identity::KubeSync {
                cluster: cluster.into(),
            },
        )
        .unwrap();
    let log = store
        .dir
        .join(format!("agent-{cluster}-{}.log", free_port()));
    children
        .spawn(
            "gw-kube-sync",
            &log,
            Command::new(bin("gw-kube-sync").unwrap())
                .args(["--cluster", cluster, "--store", &store.servers()])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(TlsArgs::of(&tls).to_args())
                .args(extra),
        )
        .unwrap();
}

/// The store side: a one-member store, a gateway node of class `gw`, an echo backend.
struct Fleet {
    store: Cluster,
    echo: EchoServer,
    node: Children,
}

impl Fleet {
    async fn start() -> Fleet {
        let store = Cluster::start(1, ClusterOptions::default()).unwrap();
        store
            .wait_for_leader(Duration::from_secs(20))
            .await
            .unwrap();
        let echo = start(EchoConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            pod: "echo-a".into(),
            namespace: NS.into(),
            h2c_only: false,
            log: false,
            tls: None,
        })
        .await
        .unwrap();
        let mut node = Children::default();
        node.spawn_node(
            store.addr(1),
            ("gw", "a"),
            "127.0.0.1",
            (&store.dir, store.pki()),
            &[],
        )
        .unwrap();
        Fleet { store, echo, node }
    }
}

/// Clusters `a` and `b` with their agents: the clusters, their kubeconfigs, the agents.
async fn two_clusters(store: &Cluster) -> (Cluster, Cluster, PathBuf, PathBuf, Children) {
    let a = Cluster::start_kube(1, &[]).await.unwrap();
    let b = Cluster::start_kube(1, &[]).await.unwrap();
    let (kc_a, kc_b) = (a.kubeconfig(1).unwrap(), b.kubeconfig(1).unwrap());
    let mut agents = Children::default();
    spawn_agent(&mut agents, store, "a", &kc_a);
    spawn_agent(&mut agents, store, "b", &kc_b);
    (a, b, kc_a, kc_b, agents)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_feeds_the_store_and_gets_status_back() {
    let Fleet {
        store,
        echo,
        node: _node,
    } = Fleet::start().await;
    let mut cluster = Cluster::start_kube(1, &[]).await.unwrap();
    let kubeconfig = cluster.kubeconfig(1).unwrap();
    let mut agent = Children::default();
    spawn_agent(&mut agent, &store, "a", &kubeconfig);

    // kubectl in the cluster; the node serves it.
    let port = free_port();
    let file = store.dir.join("app.yaml");
    std::fs::write(&file, manifests(port, echo.addr.port())).unwrap();
    let o = kubectl(&kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let took = until("the node serves the cluster's route", || async {
        status_of(port, "shop.example").await == 200
    })
    .await;
    eprintln!("served {took:?} after kubectl apply returned");

    // The status the node wrote, in the cluster, at the cluster's generation.
    let route_status = || {
        let o = kubectl(
            &kubeconfig,
            &["get", "httproute", "shop", "-n", NS, "-o", "json"],
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    until("the route's status in the cluster", || async {
        let r = route_status();
        let conditions = &r["status"]["parents"][0]["conditions"];
        conditions.as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Accepted"
                    && c["status"] == "True"
                    && c["observedGeneration"] == r["metadata"]["generation"]
            })
        })
    })
    .await;
    let gw = kubectl(
        &kubeconfig,
        &["get", "gateway", "web", "-n", NS, "-o", "yaml"],
    );
    assert!(
        text(&gw.stdout).contains("type: Programmed"),
        "{}",
        text(&gw.stdout)
    );

    // An agent cut off from its cluster deletes nothing.
    cluster.stop(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(port, "shop.example").await, 200);
    cluster.spawn(1).unwrap();

    // Deleted while the agent was down: gone after its restart.
    drop(agent);
    until("the cluster's API is back", || async {
        kubectl(&kubeconfig, &["get", "ns", NS]).status.success()
    })
    .await;
    let o = kubectl(&kubeconfig, &["delete", "httproute", "shop", "-n", NS]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        status_of(port, "shop.example").await,
        200,
        "no agent: the store still has the route"
    );
    let mut agent = Children::default();
    spawn_agent(&mut agent, &store, "a", &kubeconfig);
    let took = until("the route is gone from the node", || async {
        status_of(port, "shop.example").await == 404
    })
    .await;
    eprintln!("gone {took:?} after the agent restarted");
    let listed = store.gwadm(store.addr(1), &["get", "httproutes", "-A"]);
    assert!(
        !text(&listed.stdout).contains("shop"),
        "{}",
        text(&listed.stdout)
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_cluster_keeps_a_name_and_the_second_takes_over_when_it_goes() {
    let fleet = Fleet::start().await;
    let store = &fleet.store;
    let (_a, _b, kc_a, kc_b, _agents) = two_clusters(store).await;

    let port = free_port();
    let file = store.dir.join("a.yaml");
    std::fs::write(&file, manifests(port, fleet.echo.addr.port())).unwrap();
    let o = kubectl(&kc_a, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    until("A's route is served", || async {
        status_of(port, "shop.example").await == 200
    })
    .await;

    // The same route name in B: refused, visibly, and A's keeps serving.
    let route_b = store.dir.join("b.yaml");
    std::fs::write(
        &route_b,
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: shop, namespace: {NS}}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [b.example]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n---\n{}",
            // B's own endpoints of the Service (its route reaches B's only).
            manifests(port, fleet.echo.addr.port())
                .split("---\n")
                .find(|d| d.contains("kind: EndpointSlice"))
                .unwrap()
                .replace("echo-a", "echo-b")
        ),
    )
    .unwrap();
    let o = kubectl(&kc_b, &["apply", "-f", route_b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    until("B's route shows why it is not carried", || async {
        let o = kubectl(&kc_b, &["get", "httproute", "shop", "-n", NS, "-o", "yaml"]);
        let y = text(&o.stdout);
        y.contains("reason: OriginConflict") && y.contains("belongs to cluster")
    })
    .await;
    until("gwadm clusters lists the conflict", || async {
        let out = text(&store.gwadm(store.addr(1), &["clusters"]).stdout);
        out.lines()
            .any(|l| l.starts_with("b ") && l.trim_end().ends_with(" 1"))
            && out.contains("refused")
            && out.contains("HTTPRoute")
    })
    .await;
    assert_eq!(status_of(port, "shop.example").await, 200);
    assert_eq!(status_of(port, "b.example").await, 404);
    let by_origin = |cluster: &str| {
        text(
            &store
                .gwadm(
                    store.addr(1),
                    &["get", "httproutes", "-A", "--origin", cluster],
                )
                .stdout,
        )
    };
    let of_a = by_origin("a");
    assert!(
        of_a.lines().next().is_some_and(|h| h.contains("ORIGIN"))
            && of_a
                .lines()
                .any(|l| l.contains("shop") && l.contains(" a ")),
        "{of_a}"
    );
    assert!(!by_origin("b").contains("shop"));

    // A's copy goes: B's takes the name.
    let o = kubectl(&kc_a, &["delete", "httproute", "shop", "-n", NS]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let took = until("B's route is served", || async {
        status_of(port, "b.example").await == 200
    })
    .await;
    eprintln!("B's route served {took:?} after A's was deleted");
    until("B's route gets the node's status", || async {
        let o = kubectl(&kc_b, &["get", "httproute", "shop", "-n", NS, "-o", "yaml"]);
        let y = text(&o.stdout);
        y.contains("reason: Accepted") && !y.contains("OriginConflict")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_secrets_a_carried_gateway_references_are_carried() {
    let fleet = Fleet::start().await;
    let store = &fleet.store;
    let a = Cluster::start_kube(1, &[]).await.unwrap();
    let kc = a.kubeconfig(1).unwrap();
    let mut agents = Children::default();
    spawn_agent(&mut agents, store, "a", &kc);
    let gateway = |tls: bool| {
        let https = if tls {
            ", {name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}"
        } else {
            ""
        };
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}{https}]\n"
        )
    };
    let file = store.dir.join("secrets.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: {NS}}}\ntype: Opaque\nstringData: {{k: v}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: unrelated, namespace: {NS}}}\ntype: Opaque\nstringData: {{k: v}}\n---\n{}",
            gateway(true)
        ),
    )
    .unwrap();
    let o = kubectl(&kc, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let in_store = |name: &str| {
        store
            .gwadm(store.addr(1), &["get", "secret", name, "-n", NS])
            .status
            .success()
    };
    until("the referenced Secret is in the store", || async {
        in_store("cert")
    })
    .await;
    assert!(!in_store("unrelated"), "an unreferenced Secret was carried");

    // The reference goes: so does the Secret.
    let file = store.dir.join("gateway.yaml");
    std::fs::write(&file, gateway(false)).unwrap();
    let o = kubectl(&kc, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    until(
        "the Secret no longer referenced leaves the store",
        || async { !in_store("cert") },
    )
    .await;
    assert!(!in_store("unrelated"));
}

/// Exports of Service `echo` (KEP-1645).
const EXPORT: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: echo, namespace: app}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_service_reaches_its_routes_cluster_and_a_service_import_every_exporting_one() {
    let fleet = Fleet::start().await;
    let store = &fleet.store;
    let echo_b = start(EchoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pod: "echo-b".into(),
        namespace: NS.into(),
        h2c_only: false,
        log: false,
        tls: None,
    })
    .await
    .unwrap();
    let (_a, _b, kc_a, kc_b, _agents) = two_clusters(store).await;
    let port = free_port();
    let file = store.dir.join("a.yaml");
    // A: the Service exported, a route to the Service and one to its ServiceImport.
    let imported = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: imported, namespace: {NS}}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [import.example]\n  rules: [{{backendRefs: [{{group: multicluster.x-k8s.io, kind: ServiceImport, name: echo, port: 80}}]}}]\n"
    );
    std::fs::write(
        &file,
        format!(
            "{}---\n{EXPORT}---\n{imported}",
            manifests(port, fleet.echo.addr.port())
        ),
    )
    .unwrap();
    let o = kubectl(&kc_a, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // B has the same Service, exported, with its own endpoints (a slice of another name).
    let file = store.dir.join("b.yaml");
    let b_side = manifests(port, echo_b.addr.port()).replace("echo-a", "echo-b");
    let mut b_docs: Vec<&str> = b_side
        .split("---\n")
        .filter(|d| {
            d.contains("kind: Service")
                || d.contains("kind: EndpointSlice")
                || d.contains("kind: Namespace")
        })
        .collect();
    b_docs.push(EXPORT);
    std::fs::write(&file, b_docs.join("---\n")).unwrap();
    let o = kubectl(&kc_b, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    until("B's EndpointSlice is in the store", || async {
        store
            .gwadm(
                store.addr(1),
                &["get", "endpointslice", "echo-b.b", "-n", NS],
            )
            .status
            .success()
    })
    .await;
    until("A's route is served", || async {
        status_of(port, "shop.example").await == 200
    })
    .await;
    for _ in 0..20 {
        let (code, body) = get(port, "shop.example").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("echo-a") && !body.contains("echo-b"),
            "{body}"
        );
    }
    // The ServiceImport spreads over both clusters' endpoints.
    until("B's export is in the store", || async {
        let out = store.gwadm(store.addr(1), &["get", "serviceexports", "-A"]);
        text(&out.stdout).contains(" b ")
    })
    .await;
    let mut pods = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (code, body) = get(port, "import.example").await;
        assert_eq!(code, 200, "{body}");
        let pod = if body.contains("echo-a") { "a" } else { "b" };
        *pods.entry(pod).or_insert(0) += 1;
    }
    assert_eq!(pods.len(), 2, "both clusters' endpoints: {pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_is_recovered_by_relisting_without_spurious_deletes() {
    let fleet = Fleet::start().await;
    let store = &fleet.store;
    // The cluster keeps 10 revisions of history; the agent reaches it through a proxy it can lose.
    let a = Cluster::start_kube(1, &["--history-revisions", "10"])
        .await
        .unwrap();
    let kc = a.kubeconfig(1).unwrap();
    let proxy = Proxy::start(a.kube_addr(1).to_string()).await.unwrap();
    let mut via_proxy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kc).unwrap()).unwrap();
    via_proxy["clusters"][0]["cluster"]["server"] = format!("https://{}", proxy.addr).into();
    let kc_agent = store.dir.join("agent-kubeconfig.json");
    std::fs::write(&kc_agent, via_proxy.to_string()).unwrap();
    let mut agents = Children::default();
    spawn_agent(&mut agents, store, "a", &kc_agent);

    let port = free_port();
    let route = |name: &str, host: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"
        )
    };
    let file = store.dir.join("a.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            manifests(port, fleet.echo.addr.port()),
            route("keep", "keep.example")
        ),
    )
    .unwrap();
    let o = kubectl(&kc, &["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    until("both routes are served", || async {
        status_of(port, "shop.example").await == 200 && status_of(port, "keep.example").await == 200
    })
    .await;

    // Cut off: a route deleted, one created, and more revisions than the cluster keeps.
    proxy.set(false);
    let o = kubectl(&kc, &["delete", "httproute", "shop", "-n", NS]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let fresh = store.dir.join("fresh.yaml");
    std::fs::write(&fresh, route("fresh", "fresh.example")).unwrap();
    let o = kubectl(&kc, &["apply", "-f", fresh.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for i in 0..15 {
        let o = kubectl(
            &kc,
            &[
                "annotate",
                "--overwrite",
                "service",
                "echo",
                "-n",
                NS,
                &format!("churn={i}"),
            ],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert_eq!(
        status_of(port, "shop.example").await,
        200,
        "nothing deleted while cut off"
    );

    // Back: the watches' revisions are gone (410), the agent lists again and converges.
    proxy.set(true);
    until("the converged store is served", || async {
        status_of(port, "shop.example").await == 404
            && status_of(port, "fresh.example").await == 200
            && status_of(port, "keep.example").await == 200
    })
    .await;
    let logs: String = std::fs::read_dir(&store.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-a-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("Expired"), "the agent saw a 410: {logs}");
    for host in ["keep.example", "fresh.example", "shop.example"] {
        let want = if host == "shop.example" { 404 } else { 200 };
        assert_eq!(status_of(port, host).await, want, "{host}");
    }
}

/// With `--region`, an agent watches the store member of its region (its report says which: `gwadm
/// clusters`), the nearest other while that one is down, and its own again once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_in_a_region_watches_its_regions_member_and_the_nearest_other_while_it_is_down() {
    use gw_testkit::wan::{Matrix, THREE_REGIONS, Wan};
    let wan = Wan::new(Matrix::parse(THREE_REGIONS).unwrap());
    let run = std::process::id() % 250;
    let mut store = Cluster::start(
        3,
        ClusterOptions::in_regions(
            format!("127.68.{run}."),
            &wan,
            &["us-east", "eu-west", "ap-south"],
        ),
    )
    .unwrap();
    store
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let kube = Cluster::start_kube(1, &[]).await.unwrap();
    // The agent reaches the store from its own address, in eu-west.
    let ip = format!("127.68.{run}.20");
    wan.place(ip.parse().unwrap(), "eu-west");
    let mut agents = Children::default();
    spawn_agent_with(
        &mut agents,
        &store,
        "c",
        &kube.kubeconfig(1).unwrap(),
        &["--region", "eu-west", "--store-source-address", &ip],
    );
    let client = gw_client::Client::new(
        &[store.servers()],
        Duration::from_secs(30),
        &gw_client::Dialer::new(store.pki().admin_security()),
    )
    .unwrap();
    let watches = |member: String| {
        let client = client.clone();
        async move {
            until(&format!("the agent watches {member}"), || async {
                let report = client
                    .get_object(&gw_model::registry::report_key("c"))
                    .await
                    .ok()
                    .flatten();
                report
                    .and_then(|o| gw_model::registry::KubeSyncReport::from_object(&o))
                    .is_some_and(|(_, r)| r.watching == member)
            })
            .await
        }
    };
    let (us_east, eu_west) = (store.addr(1).to_string(), store.addr(2).to_string());
    watches(eu_west.clone()).await;
    // Its region's member down: the nearest other (us-east, 40 ms away; ap-south is 75 ms).
    store.kill(2);
    watches(us_east).await;
    store.spawn(2).unwrap();
    watches(eu_west).await;
}
