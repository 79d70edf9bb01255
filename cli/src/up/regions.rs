//! `gwadm up --wan`: a local gw spread over the regions of a simulated WAN — one store member per
//! region (members reach each other through user-space delays, `gw_testkit::wan`), one gateway node per
//! region (`--region R --zone R-1`, its store traffic leaving from an address placed in R) and one
//! echo backend per region (a process of its own, which can be killed), all behind one route.
//! Each node watches its own region's member and sends to its own region's backend; the printed
//! commands show it, and what happens when a member or a backend stops.

use crate::error::{Error, Result};
use gw_client::{Client, Dialer};
use gw_testkit::cluster::{Cluster, ClusterOptions, WanLayout};
use gw_testkit::procs::{Children, bin, free_port};
use gw_testkit::wan::{Matrix, Wan};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One region of the layout.
struct Region {
    name: String,
    member: u64,
    node: SocketAddr,
    admin: SocketAddr,
    backend: (SocketAddr, u32),
}

/// The config: a class, a Gateway on `port`, Service `app` with one EndpointSlice per region (its
/// region label, zone `R-1`), and a route to it (with a session-persistent path, `/sticky`).
fn config(port: u16, regions: &[Region]) -> Vec<Value> {
    let mut docs = vec![
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "gw-demo"}, "spec": {"controllerName": "gw.dev/gateway-node"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "demo", "namespace": "demo"},
               "spec": {"gatewayClassName": "gw-demo",
                        "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "demo"},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "app", "namespace": "demo"},
               "spec": {"parentRefs": [{"name": "demo"}], "hostnames": ["app.demo.example"],
                        "rules": [
                            {"backendRefs": [{"name": "app", "port": 8080}]},
                            {"matches": [{"path": {"type": "PathPrefix", "value": "/sticky"}}],
                             "sessionPersistence": {"sessionName": "gw-session"},
                             "backendRefs": [{"name": "app", "port": 8080}]}]}}),
    ];
    for r in regions {
        let (addr, _) = r.backend;
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("app-{}", r.name), "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "app",
                                    gw_model::core::REGION_LABEL: r.name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": addr.port()}],
            "endpoints": [{"addresses": [addr.ip().to_string()], "zone": format!("{}-1", r.name),
                           "targetRef": {"kind": "Pod", "name": format!("app-{}", r.name)}}],
        }));
    }
    docs
}

pub async fn run(wan_spec: &str, port: u16, dir: &Path) -> Result<()> {
    let matrix = Matrix::parse(wan_spec).map_err(Error::Usage)?;
    let names: Vec<String> = matrix.regions().into_iter().collect();
    if names.len() < 2 {
        return Err(Error::Usage("--wan names fewer than two regions".into()));
    }
    let wan = Wan::new(matrix);
    let cluster = Cluster::start(
        names.len() as u64,
        ClusterOptions {
            dir: Some(dir.join("store")),
            ip_prefix: Some("127.66.0.".into()),
            wan: Some(WanLayout {
                wan: wan.clone(),
                regions: names.clone(),
            }),
            ..Default::default()
        },
    )?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let mut children = Children::default();
    let mut regions = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let backend: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let pid = children.spawn(
            &format!("echo app-{name}"),
            &dir.join(format!("echo-{name}.log")),
            Command::new(bin("gwadm")?)
                .args(["echo-server", "--listen", &backend.to_string()])
                .args(["--name", &format!("app-{name}"), "--namespace", "demo"]),
        )?;
        let source = format!("127.65.0.{}", 101 + i);
        wan.place(
            source.parse().map_err(|e| Error::Usage(format!("{e}")))?,
            name,
        );
        let bind = format!("127.64.0.{}", i + 1);
        let (admin, _) = children.spawn_node(
            &cluster.servers(),
            ("gw-demo", &format!("node-{name}")),
            &bind,
            (dir, cluster.pki()),
            &[
                "--region",
                name,
                "--zone",
                &format!("{name}-1"),
                "--store-source-address",
                &source,
                "--health-check-interval-ms",
                "1000",
            ],
        )?;
        regions.push(Region {
            name: name.clone(),
            member: i as u64 + 1,
            node: SocketAddr::new(
                bind.parse().map_err(|e| Error::Usage(format!("{e}")))?,
                port,
            ),
            admin,
            backend: (backend, pid),
        });
    }
    let client = Client::new(
        &[cluster.addr(leader).to_string()],
        Duration::from_secs(20),
        &Dialer::new(cluster.pki().admin_security()),
    )?;
    let resp = client
        .apply(
            super::documents(config(port, &regions), "gwadm up --wan"),
            false,
        )
        .await?;
    eprintln!("applied the demo config (revision {})", resp.revision);
    for r in &regions {
        super::wait_until_served(r.node, "/", &format!("node-{}.log", r.name)).await?;
    }
    let mut table = String::new();
    for r in &regions {
        let m = cluster.member(r.member);
        table.push_str(&format!(
            "  {:<10} member {} at {} (pid {}), gateway node http://{}/ (admin http://{}/status), backend app-{} (pid {})\n",
            r.name,
            r.member,
            m.reach,
            m.pid().map(|p| p.to_string()).unwrap_or_default(),
            r.node,
            r.admin,
            r.name,
            r.backend.1,
        ));
    }
    let first = &regions[0];
    let second = &regions[1];
    println!(
        "\ngw is up over {n} regions (one-way delays {wan_text}); leader: member {leader}; logs in {dir}\n\n{table}\n\
         Try:\n\
         \x20 curl -s -H 'Host: app.demo.example' http://{n1}/   # served by app-{r1}: each node sends to its own region\n\
         \x20 curl -s http://{a1}/status | grep -o '\"watching\": \"[^\"]*\"'   # the member of its own region\n\
         \x20 kill -STOP {m1pid}   # pause {r1}'s member: node-{r1} moves its watch to the nearest other member (see /status); kill -CONT {m1pid} and it comes back\n\
         \x20 kill {b1pid}   # stop app-{r1}: node-{r1} sends to the other regions from its next request on, none fails\n\
         \x20 c=$(curl -si -H 'Host: app.demo.example' http://{n2}/sticky | sed -n 's/^set-cookie: \\([^;]*\\).*/\\1/Ip')   # a session started in {r2}\n\
         \x20 curl -s -H 'Host: app.demo.example' -H \"Cookie: $c\" http://{n1}/sticky   # ... stays on app-{r2} through node-{r1}\n\
         \x20 export GW_SERVER={servers} GW_TLS_CA={pki}/ca.crt GW_TLS_CERT={pki}/admin.crt GW_TLS_KEY={pki}/admin.key\n\
         \x20 gwadm cluster status   # members, their regions, the leader\n\n\
         Press Ctrl-C to stop.",
        n = regions.len(),
        wan_text = wan_spec,
        dir = dir.display(),
        n1 = first.node,
        r1 = first.name,
        a1 = first.admin,
        m1pid = cluster
            .member(first.member)
            .pid()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        b1pid = first.backend.1,
        n2 = second.node,
        r2 = second.name,
        servers = cluster.servers(),
        pki = cluster.pki().dir().display(),
    );
    super::until_stopped().await?;
    drop(children);
    drop(cluster);
    Ok(())
}
