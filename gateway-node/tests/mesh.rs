//! The mesh data path: a mesh node (`gw-node --mesh`) serving Services at their addresses. The color
//! canary — an HTTPRoute whose parentRef is Service `color` port 80, splitting it 50/50 between `color`
//! and `color2` — splits port 80 and leaves port 8080 alone; a GRPCRoute whose parent is a gRPC
//! Service routes a real gRPC client's calls by method; the address the node gave a Service without a
//! clusterIP is recorded in its status.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::grpc_echo::{self, Dial, GrpcEchoConfig, SERVICE};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use support::*;

/// A Service in `web` over one echo backend, with these ports (`name: port`), each reaching the
/// backend's port.
fn service_ports(name: &str, backend: SocketAddr, ports: &[(&str, u16, Option<&str>)]) -> String {
    let svc: Vec<String> = ports
        .iter()
        .map(|(n, p, app)| {
            let app = app
                .map(|a| format!(", appProtocol: {a}"))
                .unwrap_or_default();
            format!("{{name: {n}, port: {p}{app}}}")
        })
        .collect();
    let slice: Vec<String> = ports
        .iter()
        .map(|(n, _, _)| format!("{{name: {n}, port: {}}}", backend.port()))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  ports: [{}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: web, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{}]\nendpoints: [{{addresses: ['{}']}}]\n",
        svc.join(", "),
        slice.join(", "),
        backend.ip()
    )
}

/// The address the mesh serves a Service at, once a mesh node recorded it.
async fn mesh_address(s: &Store, name: &str) -> IpAddr {
    eventually_value(&format!("Service {name} has a mesh address"), || async {
        let o = gwadm(s, &["get", "service", name, "-n", "web", "-o", "json"]);
        let svc: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        gw_model::core::mesh_address(&svc)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn color_canary_splits_port_80_only_and_grpc_routes_through_the_mesh() {
    let store = store();
    let s = reach(&store);
    let color = echo("color", "web", false).await;
    let color2 = echo("color2", "web", false).await;
    let mut grpc = Vec::new();
    for pod in ["g1", "g2"] {
        grpc.push(
            grpc_echo::start(GrpcEchoConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                pod: pod.into(),
                namespace: "web".into(),
            })
            .await
            .unwrap(),
        );
    }
    let mut yaml = String::new();
    yaml.push_str(&service_ports(
        "color",
        color.addr,
        &[("http", 80, None), ("http-alt", 8080, None)],
    ));
    yaml.push_str(&service_ports("color2", color2.addr, &[("http", 80, None)]));
    yaml.push_str(&service_ports(
        "echo",
        grpc[0].addr,
        &[("grpc", 7070, Some("grpc"))],
    ));
    yaml.push_str(&service_ports(
        "echo2",
        grpc[1].addr,
        &[("grpc", 7070, Some("grpc"))],
    ));
    yaml.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: color-canary, namespace: web}\nspec:\n  parentRefs: [{group: '', kind: Service, name: color, port: 80}]\n  rules:\n  - backendRefs: [{name: color, port: 80, weight: 50}, {name: color2, port: 80, weight: 50}]\n",
    );
    yaml.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: echo-two, namespace: web}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: echo}}]\n  rules:\n  - matches: [{{method: {{service: {SERVICE}, method: EchoTwo}}}}]\n    backendRefs: [{{name: echo2, port: 7070}}]\n  - backendRefs: [{{name: echo, port: 7070}}]\n"
    ));
    apply(&s, &store.dir, &yaml);
    let _mesh = NodeProc::start_with(
        &s,
        "127.0.0.1",
        "gw-mesh",
        &store.dir,
        "mesh",
        &["--mesh", "--service-cidr", "127.97.0.0/24"],
    );

    let vip = mesh_address(&s, "color").await;
    let port80 = SocketAddr::new(vip, 80);
    eventually("the mesh serves color:80", || async {
        who(port80, "color", "/").await.starts_with("color")
    })
    .await;
    let mut count: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        *count
            .entry(who(port80, "color.web", "/").await)
            .or_default() += 1;
    }
    eprintln!("1000 requests to color:80 through the mesh: {count:?}");
    let share = f64::from(count.get("color").copied().unwrap_or(0)) / 1000.0;
    assert!(
        (0.45..=0.55).contains(&share) && count.len() == 2,
        "port 80 splits 50/50: {count:?}"
    );
    // Port 8080 is not named by the route's `port`: every request reaches color itself.
    let port8080 = SocketAddr::new(vip, 8080);
    for _ in 0..50 {
        assert_eq!(who(port8080, "color", "/").await, "color");
    }

    // gRPC through the mesh: the GRPCRoute sends EchoTwo to echo2, the rest to echo.
    let grpc_vip = mesh_address(&s, "echo").await;
    let channel = grpc_echo::channel(
        SocketAddr::new(grpc_vip, 7070),
        &Dial {
            authority: Some("echo.web:7070".into()),
            tls: None,
        },
    )
    .unwrap();
    let pod = |method: &'static str| {
        let channel = channel.clone();
        async move {
            grpc_echo::call(channel, method, &BTreeMap::new(), Duration::from_secs(5))
                .await
                .ok()
                .and_then(|r| Some(r.into_inner().assertions?.context?.pod))
        }
    };
    eventually("gRPC through the mesh", || async {
        pod("Echo").await.as_deref() == Some("g1")
    })
    .await;
    assert_eq!(pod("EchoTwo").await.as_deref(), Some("g2"));

    // The route's status names the mesh.
    let o = gwadm(
        &s,
        &[
            "get",
            "httproute",
            "color-canary",
            "-n",
            "web",
            "-o",
            "json",
        ],
    );
    let route: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "gw.dev/mesh", "{route}");
    assert_eq!(parent["conditions"][0]["status"], "True", "{route}");
}
