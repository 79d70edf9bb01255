//! Locality-aware load balancing: Service `web` has two endpoints in each of zones a and b of region
//! us-east and zone c of eu-west (each a `gwadm echo-server` process, which can be killed). Node A
//! (`--region us-east --zone a`) sends to zone a while it is up; when zone a's endpoints refuse
//! connections, to zone b from the next request on, with no request failing (a refused connection is
//! retried on another endpoint, and the endpoint ejected); then to eu-west; and back to zone a once an
//! endpoint there answers again. A session bound to a zone-b endpoint (started through node B, in zone
//! b) stays on it through node A. Zone b's slices name no region: they come from cluster `east`, whose
//! kube sync agent reports region us-east (the nodes watch the reports).

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_model::kinds::SOURCE_CLUSTER_LABEL;
use gw_model::registry::KubeSyncReport;
use gw_testkit::procs::free_port;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;
use support::*;

/// (region, zone, pods)
const ZONES: [(&str, &str, [&str; 2]); 3] = [
    ("us-east", "a", ["a1", "a2"]),
    ("us-east", "b", ["b1", "b2"]),
    ("eu-west", "c", ["c1", "c2"]),
];

fn zone_of(pod: &str) -> &str {
    ZONES
        .iter()
        .find(|(_, _, pods)| pods.contains(&pod))
        .map(|(_, z, _)| *z)
        .unwrap_or("?")
}

/// One EndpointSlice per endpoint (each backend listens on a port of its own), with its zone and
/// region; zone b's by their source cluster `east` instead.
fn slice(pod: &str, region: &str, zone: &str, addr: SocketAddr) -> String {
    let whence = match zone {
        "b" => format!("{SOURCE_CLUSTER_LABEL}: east"),
        _ => format!("topology.kubernetes.io/region: {region}"),
    };
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{pod}\n  namespace: web\n  labels: {{kubernetes.io/service-name: web, {whence}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: ['{}'], zone: {zone}, targetRef: {{kind: Pod, name: {pod}}}}}]\n",
        addr.port(),
        addr.ip()
    )
}

/// The Gateway (an HTTP listener on `port`) and Service `web` of every test here.
fn gateway_and_service(port: u16) -> String {
    format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: web}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n"
    )
}

/// Cluster `east`'s kube sync report (region us-east), and the routes of every test here: `plain`, and
/// `sticky` with cookie session persistence.
fn report_and_routes() -> String {
    let report = KubeSyncReport {
        region: "us-east".into(),
        ..Default::default()
    };
    format!("---\n{}\n", report.to_object("east"))
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: plain, namespace: web}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [plain]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: sticky, namespace: web}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [sticky]\n  rules: [{sessionPersistence: {sessionName: gw-sess}, backendRefs: [{name: web, port: 8080}]}]\n"
}

/// `n` requests to `host` through `node`: pods by zone, and the requests not served.
async fn spread(node: SocketAddr, host: &str, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut zones = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(node, host, "/", &[]).await {
            Ok(r) if r.status == 200 => {
                let pod = r.json()["pod"].as_str().unwrap_or("?").to_string();
                *zones.entry(zone_of(&pod).to_string()).or_default() += 1;
            }
            _ => failed += 1,
        }
    }
    (zones, failed)
}

#[tokio::test(flavor = "multi_thread")]
async fn nearest_zone_first_then_region_then_elsewhere_and_sessions_stay() {
    let store = store();
    let s = reach(&store);
    let port = free_port();
    let mut yaml = gateway_and_service(port);
    let mut backends: BTreeMap<&str, EchoProc> = BTreeMap::new();
    for (region, zone, pods) in ZONES {
        for pod in pods {
            let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            yaml.push_str(&slice(pod, region, zone, addr));
            backends.insert(pod, EchoProc::start(pod, addr).await);
        }
    }
    yaml.push_str(&report_and_routes());
    apply(&s, &store.dir, &yaml);
    let nodes = [
        NodeProc::start_with(
            &s,
            "127.0.0.2",
            "gw",
            &store.dir,
            "a",
            &["--region", "us-east", "--zone", "a"],
        ),
        NodeProc::start_with(
            &s,
            "127.0.0.3",
            "gw",
            &store.dir,
            "b",
            &["--region", "us-east", "--zone", "b"],
        ),
    ];
    let [a, b]: [SocketAddr; 2] =
        [0, 1].map(|i| format!("{}:{port}", nodes[i].bind).parse().unwrap());
    for node in [a, b] {
        eventually("the node serves the route and starts sessions", || async {
            get(node, "sticky", "/", &[])
                .await
                .is_ok_and(|r| r.status == 200 && r.header("set-cookie").is_some())
        })
        .await;
    }

    // Each node keeps to its own zone while it is up.
    let (zones, failed) = spread(a, "plain", 200).await;
    println!("node A (zone a), every endpoint up: {zones:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert!(zones.get("a").copied().unwrap_or(0) >= 190, "{zones:?}");
    let (zones, _) = spread(b, "plain", 200).await;
    println!("node B (zone b), every endpoint up: {zones:?}");
    assert!(zones.get("b").copied().unwrap_or(0) >= 190, "{zones:?}");

    // A session started through node B is bound to a zone-b endpoint; node A keeps it there.
    let first = get(b, "sticky", "/", &[]).await.unwrap();
    let bound = first.json()["pod"].as_str().unwrap().to_string();
    assert_eq!(zone_of(&bound), "b", "{first:?}");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let on_a = |cookie: String| async move {
        let r = get(a, "sticky", "/", &[("cookie", &cookie)]).await.unwrap();
        r.json()["pod"].as_str().unwrap_or("?").to_string()
    };
    for _ in 0..20 {
        assert_eq!(
            on_a(cookie.clone()).await,
            bound,
            "the session stays in zone b"
        );
    }

    // Zone a fails: from the next request on, zone b (same region) takes its traffic.
    for pod in ["a1", "a2"] {
        backends.get_mut(pod).unwrap().kill();
    }
    let killed = Instant::now();
    let r = get(a, "plain", "/", &[]).await.unwrap();
    println!(
        "zone a killed: first request answered by {} after {:?}",
        r.json()["pod"],
        killed.elapsed()
    );
    let (zones, failed) = spread(a, "plain", 100).await;
    println!("node A, zone a down: {zones:?}, {failed} failed");
    assert_eq!(zone_of(r.json()["pod"].as_str().unwrap_or("?")), "b");
    assert_eq!(failed, 0, "a refused connection is retried elsewhere");
    assert_eq!(zones.get("b"), Some(&100), "{zones:?}");
    let status = get(nodes[0].admin, "admin", "/status", &[]).await.unwrap();
    let ejected = status.json()["ejectedEndpoints"].clone();
    assert!(
        ejected
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == &backends["a1"].addr.to_string())),
        "{ejected}"
    );
    assert_eq!(on_a(cookie.clone()).await, bound, "the session stays put");

    // Zone b fails too: the other region.
    for pod in ["b1", "b2"] {
        backends.get_mut(pod).unwrap().kill();
    }
    let (zones, failed) = spread(a, "plain", 100).await;
    println!("node A, zones a and b down: {zones:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(zones.get("c"), Some(&100), "{zones:?}");

    // An endpoint of zone a answers again: once its ejection ends, zone a has the traffic back.
    let a1 = backends["a1"].addr;
    backends.insert("a1", EchoProc::start("a1", a1).await);
    let back = eventually("zone a serves again", || async {
        who(a, "plain", "/").await == "a1"
    })
    .await;
    println!("a1 restarted: served again after {back:?}");
    let (zones, failed) = spread(a, "plain", 100).await;
    println!("node A, a1 back: {zones:?}, {failed} failed");
    assert_eq!(failed, 0);
    // One healthy endpoint of two keeps 70 % of the traffic in zone a (the overprovisioning factor,
    // 1.4); the rest spills past dead zone b to eu-west.
    assert!(zones.get("a").copied().unwrap_or(0) >= 50, "{zones:?}");
    assert_eq!(zones.get("b"), None, "{zones:?}");
}

/// Active health checks: zone a's endpoints stop answering node A at all (its packets to them dropped
/// by iptables, as a partition does; a killed process would refuse at once, which passive health
/// already catches). Within a check interval and timeout they are down: the first request after the
/// cut is answered by zone b well before the 5 s connect timeout it would otherwise wait (the
/// connection being attempted is given up), a session bound to zone a fails over to zone b, and `/status`
/// lists the endpoints as down; once the packets flow again, zone a has its traffic back. Needs root
/// and iptables.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_that_answer_nothing_are_found_down_by_the_health_check_and_sessions_fail_over() {
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let store = store();
    let s = reach(&store);
    let port = free_port();
    let mut yaml = gateway_and_service(port);
    // Zone a's endpoints on addresses of their own, which the firewall cuts.
    let mut backends = Vec::new();
    for (pod, ip) in [
        ("a1", "127.0.9.1"),
        ("a2", "127.0.9.2"),
        ("b1", "127.0.0.1"),
        ("b2", "127.0.0.1"),
    ] {
        let addr: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        yaml.push_str(&slice(pod, "us-east", zone_of(pod), addr));
        backends.push(EchoProc::start(pod, addr).await);
    }
    yaml.push_str(&report_and_routes());
    apply(&s, &store.dir, &yaml);
    let node = NodeProc::start_with(
        &s,
        "127.0.0.2",
        "gw",
        &store.dir,
        "a",
        &[
            "--region",
            "us-east",
            "--zone",
            "a",
            "--upstream-source-address",
            "127.0.0.2",
            "--health-check-interval-ms",
            "200",
            "--health-check-timeout-ms",
            "300",
        ],
    );
    let a: SocketAddr = format!("{}:{port}", node.bind).parse().unwrap();
    eventually("the node serves the route and starts sessions", || async {
        get(a, "sticky", "/", &[])
            .await
            .is_ok_and(|r| r.status == 200 && r.header("set-cookie").is_some())
    })
    .await;
    let (zones, failed) = spread(a, "plain", 100).await;
    println!("node A, every endpoint answering: {zones:?}, {failed} failed");
    assert_eq!((zones.get("a"), failed), (Some(&100), 0), "{zones:?}");
    let first = get(a, "sticky", "/", &[]).await.unwrap();
    let bound = first.json()["pod"].as_str().unwrap().to_string();
    assert_eq!(zone_of(&bound), "a", "{first:?}");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();

    // Node A's packets to zone a are dropped.
    let fw = gw_testkit::firewall::Firewall::new("gwhc").expect("iptables (needs root)");
    for ip in ["127.0.9.1", "127.0.9.2"] {
        fw.drop("127.0.0.2", ip).unwrap();
    }
    let cut = Instant::now();
    let r = get(a, "plain", "/", &[]).await.unwrap();
    let took = cut.elapsed();
    println!(
        "zone a cut off: first request answered by {} ({}) after {took:?}",
        r.json()["pod"],
        r.status
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(zone_of(r.json()["pod"].as_str().unwrap_or("?")), "b");
    assert!(
        took < CONNECT_TIMEOUT,
        "the attempt was given up when the check found the endpoint down, not at the connect timeout"
    );
    let (zones, failed) = spread(a, "plain", 100).await;
    println!("node A, zone a cut off: {zones:?}, {failed} failed");
    assert_eq!((zones.get("b"), failed), (Some(&100), 0), "{zones:?}");
    let status = get(node.admin, "admin", "/status", &[]).await.unwrap();
    let down = status.json()["downEndpoints"].clone();
    println!("/status downEndpoints: {down}");
    assert_eq!(down.as_array().map(Vec::len), Some(2), "{down}");

    // The session bound to zone a fails over to zone b, and stays there.
    let sticky = |cookie: String| async move {
        let r = get(a, "sticky", "/", &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["pod"].as_str().unwrap_or("?").to_string()
    };
    let moved = sticky(cookie.clone()).await;
    println!("the session bound to {bound} is now on {moved}");
    assert_eq!(zone_of(&moved), "b");
    for _ in 0..10 {
        assert_eq!(sticky(cookie.clone()).await, moved, "the failover holds");
    }

    // The packets flow again: zone a is up at the next check.
    fw.heal().unwrap();
    let back = eventually("zone a serves again", || async {
        zone_of(&who(a, "plain", "/").await) == "a"
    })
    .await;
    println!("healed: zone a served again after {back:?}");
    let status = get(node.admin, "admin", "/status", &[]).await.unwrap();
    assert_eq!(status.json()["downEndpoints"], serde_json::json!([]));
}
