//! Gateway nodes against a real store: several nodes serve the same Gateway and converge on every
//! committed change; nodes keep serving, and restart, while the store is down; status is written back.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::procs::free_port;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

fn gateway(port: u16) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n"
    )
}

fn route(backend: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
    )
}

/// A store with Services app-v1 and app-v2 and a route to app-v1, and two nodes serving it: a on
/// 127.0.0.2, b on 127.0.0.3 (`addrs`: their listener).
struct TwoNodes {
    store: gw_testkit::cluster::Cluster,
    s: Store,
    a: NodeProc,
    b: NodeProc,
    addrs: Vec<SocketAddr>,
    backends: (gw_testkit::echo::EchoServer, gw_testkit::echo::EchoServer),
}

/// `extra`: more flags for node a.
async fn two_nodes_serving_app_v1(extra: &[&str]) -> TwoNodes {
    let store = store();
    let s = reach(&store);
    let (v1, v2) = (
        echo("app-v1", "web", false).await,
        echo("app-v2", "web", false).await,
    );
    let port = free_port();
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{}{}{}{}",
            gateway(port),
            service("app-v1", "web", v1.addr, None),
            service("app-v2", "web", v2.addr, None),
            route("app-v1")
        ),
    );
    let a = NodeProc::start_with(&s, "127.0.0.2", "gw", &store.dir, "a", extra);
    let b = NodeProc::start(&s, "127.0.0.3", "gw", &store.dir, "b");
    let addrs: Vec<SocketAddr> = [&a, &b]
        .iter()
        .map(|n| format!("{}:{port}", n.bind).parse().unwrap())
        .collect();
    for addr in &addrs {
        eventually(&format!("{addr} serves app-v1"), || async {
            who(*addr, "x.example", "/").await == "app-v1"
        })
        .await;
    }
    TwoNodes {
        store,
        s,
        a,
        b,
        addrs,
        backends: (v1, v2),
    }
}

/// Two nodes on 127.0.0.2 and 127.0.0.3 serve the same route; a changed route is served by both once
/// the apply is acknowledged (the time it took is printed; the propagation benchmark measures it).
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_serve_the_same_route_and_follow_changes() {
    let env = two_nodes_serving_app_v1(&[]).await;
    let (store, s, a, b, addrs) = (&env.store, &env.s, &env.a, &env.b, &env.addrs);
    apply(s, &store.dir, &route("app-v2"));
    let took = eventually("both nodes serve app-v2", || async {
        who(addrs[0], "x.example", "/").await == "app-v2"
            && who(addrs[1], "x.example", "/").await == "app-v2"
    })
    .await;
    eprintln!("change served by both nodes {took:?} after the apply was acknowledged");
    // Each node reports the revision it serves, and catches up with the last one it saw (its own
    // status writes add revisions after every change).
    for n in [&a, &b] {
        eventually("the node serves the last revision it saw", || async {
            let r = get(n.admin, "admin", "/status", &[]).await.unwrap();
            let j = r.json();
            j["revisionsBehind"] == 0 && j["revisionServed"].as_u64() > Some(0)
        })
        .await;
    }
}

/// With every store member down both nodes keep serving the last committed state; a node restarted
/// while the store is still down serves the snapshot it persisted.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_survive_a_store_outage_and_restart_from_their_snapshot() {
    let mut store = store();
    let s = reach(&store);
    let v1 = echo("app-v1", "web", false).await;
    let port = free_port();
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{}{}{}",
            gateway(port),
            service("app-v1", "web", v1.addr, None),
            route("app-v1")
        ),
    );
    let mut a = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let b = NodeProc::start(&s, "127.0.0.3", "gw", &store.dir, "b");
    let (aa, ba): (SocketAddr, SocketAddr) = (
        format!("127.0.0.2:{port}").parse().unwrap(),
        format!("127.0.0.3:{port}").parse().unwrap(),
    );
    for addr in [aa, ba] {
        eventually("served", || async move {
            who(addr, "x.example", "/").await == "app-v1"
        })
        .await;
    }
    // Let the persister write the served state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in store.ids() {
        store.kill(id);
    }
    for addr in [aa, ba] {
        for _ in 0..5 {
            assert_eq!(
                who(addr, "x.example", "/").await,
                "app-v1",
                "{addr} keeps serving without the store"
            );
        }
    }
    a.stop();
    a.spawn();
    eventually(
        "the restarted node serves its persisted snapshot",
        || async move { who(aa, "x.example", "/").await == "app-v1" },
    )
    .await;
    let r = get(a.admin, "admin", "/status", &[]).await.unwrap();
    assert_eq!(r.json()["storeConnected"], false, "{}", r.body);
    drop(b);
}

/// Route status written back through the store: an accepted route, a route whose backend does not
/// exist, a route the listener does not allow.
#[tokio::test(flavor = "multi_thread")]
async fn route_status_is_written_back() {
    let store = store();
    let s = reach(&store);
    let v1 = echo("app-v1", "web", false).await;
    let port = free_port();
    let other_ns_route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: foreign, namespace: other}\nspec:\n  parentRefs: [{name: gw, namespace: web}]\n";
    let missing = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: missing, namespace: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: nope, port: 8080}]}]\n";
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{}{}{}{missing}{other_ns_route}",
            gateway(port),
            service("app-v1", "web", v1.addr, None),
            route("app-v1")
        ),
    );
    let _n = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let cases = [
        ("web", "app", "Accepted", "True", "Accepted"),
        ("web", "app", "ResolvedRefs", "True", "ResolvedRefs"),
        ("web", "missing", "Accepted", "True", "Accepted"),
        ("web", "missing", "ResolvedRefs", "False", "BackendNotFound"),
        (
            "other",
            "foreign",
            "Accepted",
            "False",
            "NotAllowedByListeners",
        ),
    ];
    for (ns, name, t, status, reason) in cases {
        let s = s.clone();
        eventually(&format!("{ns}/{name}: {t}={status} ({reason})"), || {
            let s = s.clone();
            async move {
                let o = gwadm(&s, &["get", "httproute", name, "-n", ns, "-o", "yaml"]);
                let yaml = String::from_utf8_lossy(&o.stdout).to_string();
                let Ok(v) = serde_saphyr::from_str::<serde_json::Value>(&yaml) else {
                    return false;
                };
                v["status"]["parents"][0]["conditions"]
                    .as_array()
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"] == t
                                && c["status"] == status
                                && c["reason"] == reason
                                && c["observedGeneration"] == 1
                        })
                    })
            }
        })
        .await;
    }
    let o = gwadm(&s, &["get", "gateway", "gw", "-n", "web", "-o", "json"]);
    let gw: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        gw["status"]["listeners"][0]["attachedRoutes"], 2,
        "app and missing are attached; foreign is not"
    );
    assert_eq!(gw["status"]["addresses"][0]["value"], "127.0.0.2");
}

/// `gwadm apply --wait` returns once both nodes serve the change (so both answer with it at once); with
/// one node frozen it names that node and fails after its timeout, and `gwadm status` shows that node
/// behind; thawed, it catches up and a stopped node removes its registration.
#[tokio::test(flavor = "multi_thread")]
async fn apply_wait_knows_which_nodes_serve_a_change() {
    let mut env = two_nodes_serving_app_v1(&[]).await;
    let (store, s, addrs) = (&env.store, &env.s, env.addrs.clone());
    let write = |name: &str, yaml: &str| {
        let f = store.dir.join(name);
        std::fs::write(&f, yaml).unwrap();
        f.display().to_string()
    };
    let to_v2 = write("v2.yaml", &route("app-v2"));
    let o = gwadm(s, &["apply", "-f", &to_v2, "--wait=20s"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("; served by 2/2 nodes in "), "{out}");
    for addr in &addrs {
        assert_eq!(
            who(*addr, "x.example", "/").await,
            "app-v2",
            "{addr} serves what --wait said"
        );
    }

    env.b.signal(nix::sys::signal::Signal::SIGSTOP);
    let to_v1 = write("v1.yaml", &route("app-v1"));
    let o = gwadm(s, &["apply", "-f", &to_v1, "--wait=1500ms"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(!o.status.success(), "a frozen node cannot serve: {out}");
    assert!(out.contains("; served by 1/2 nodes in "), "{out}");
    assert!(err.contains("node b: serves revision "), "{err}");
    let o = gwadm(s, &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let node = |name: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("node {name} in {status}"))
            .clone()
    };
    assert_eq!(node("a")["revisionsBehind"], 0, "{status}");
    assert!(node("b")["revisionsBehind"].as_u64() > Some(0), "{status}");
    let table = String::from_utf8_lossy(&gwadm(s, &["status"]).stdout).into_owned();
    assert!(table.contains("NODE") && table.contains("gw "), "{table}");

    env.b.signal(nix::sys::signal::Signal::SIGCONT);
    let o = gwadm(s, &["apply", "-f", &to_v1, "--wait=20s"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("; served by 2/2 nodes in "), "{out}");
    env.b.stop();
    let o = gwadm(s, &["get", "gatewaynodes", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a"], "a stopped node deregisters");
    // The status writer's lease is gw's bookkeeping too (no node recompiles when it is renewed).
    let o = gwadm(s, &["get", "statuswriterleases", "gw", "-o", "json"]);
    let lease: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        ["a", "b"].contains(&lease["spec"]["holder"].as_str().unwrap()),
        "{lease}"
    );
}

/// A class with the `gw.dev/revision-header` annotation has its responses carry `gw-revision`, the
/// revision of the table that served them; the access log line of each request names the same
/// revision, its listener, route, rule, backend and endpoint. Without the annotation, no header.
#[tokio::test(flavor = "multi_thread")]
async fn responses_and_access_log_lines_name_the_revision_that_served_them() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let env = two_nodes_serving_app_v1(&["--access-log", log.to_str().unwrap()]).await;
    let (store, s, node, addr) = (&env.store, &env.s, &env.a, env.addrs[0]);
    let v1 = &env.backends.0;
    let plain = get(addr, "x.example", "/plain", &[]).await.unwrap();
    assert_eq!(
        plain.header("gw-revision"),
        None,
        "off unless the class asks"
    );
    apply(
        s,
        &store.dir,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gw, annotations: {gw.dev/revision-header: \"true\"}}\nspec: {controllerName: gw.dev/gateway-node}\n",
    );
    let revision = eventually_value("responses carry gw-revision", || async {
        let r = get(addr, "x.example", "/marked", &[]).await.ok()?;
        r.header("gw-revision")?.parse::<u64>().ok()
    })
    .await;
    let status = get(node.admin, "admin", "/status", &[])
        .await
        .unwrap()
        .json();
    assert!(
        status["revisionServed"].as_u64() >= Some(revision),
        "{status}"
    );
    eventually(
        "gw_node_revision_seen is /status's revisionSeen",
        || async {
            let metrics = get(node.admin, "admin", "/metrics", &[])
                .await
                .unwrap()
                .body;
            let seen = get(node.admin, "admin", "/status", &[])
                .await
                .unwrap()
                .json()["revisionSeen"]
                .as_u64();
            let metric = metrics
                .lines()
                .find_map(|l| l.strip_prefix("gw_node_revision_seen "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            seen > Some(0) && metric == seen
        },
    )
    .await;
    get(addr, "x.example", "/last", &[]).await.unwrap();
    // The lines are written when each response ends, by a writer thread.
    let lines = eventually_value("the access log has the requests", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines.iter().any(|l| l["path"] == "/last").then_some(lines)
    })
    .await;
    let marked = lines
        .iter()
        .rev()
        .find(|l| l["path"] == "/marked")
        .expect("the marked request is logged");
    assert_eq!(marked["revision"], revision, "{marked}");
    assert_eq!(marked["route"], "HTTPRoute web/app", "{marked}");
    assert_eq!(marked["rule"], 0, "{marked}");
    assert_eq!(marked["backend"], "web/app-v1:8080", "{marked}");
    assert_eq!(marked["endpoint"], v1.addr.to_string(), "{marked}");
    assert_eq!(
        (marked["status"].as_u64(), marked["completed"].as_bool()),
        (Some(200), Some(true))
    );
    assert!(marked["responseBytes"].as_u64() > Some(0), "{marked}");
    assert_eq!(marked["listener"], "web/gw/http", "{marked}");
    let plain = lines.iter().find(|l| l["path"] == "/plain").unwrap();
    assert!(plain["revision"].as_u64() < Some(revision), "{plain}");
}
