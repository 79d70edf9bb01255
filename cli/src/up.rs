//! `gwadm up`: a local all-in-one gw — a single-member store, one gateway node, one mesh node and four
//! echo backends — configured with `deploy/examples/demo.yaml`; prints the commands that show it
//! working and stops everything on Ctrl-C.

#![allow(clippy::disallowed_methods)] // runtime: waits for the demo to be served

mod regions;

use crate::error::{Error, Result};
use gw_client::{Client, Dialer, Identity, TlsArgs};
use gw_proto as pb;
use gw_testkit::echo::{EchoConfig, start as start_echo};
use gw_testkit::pki::Pki;
use gw_testkit::procs::{Children, bin, ensure_free};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const DEMO: &str = include_str!("../../deploy/examples/demo.yaml");

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the store and the node keep their data (default: a new temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of the demo Gateway's listener.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port of the store's API.
    #[arg(long, default_value_t = 7001)]
    pub store_port: u16,
    /// Port of the node's admin endpoint.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Port of the store's Kubernetes API (for kubectl: the kubeconfig is written beside the data).
    #[arg(long, default_value_t = 6443)]
    pub kube_port: u16,
    /// Spread gw over the regions of a simulated WAN instead (one-way delays,
    /// `A:B=DELAY,...[,jitter=D][,loss=P%]`; without a value, three regions): a store member, a
    /// gateway node and a backend per region (see deploy/examples/multi-region).
    #[arg(long, num_args = 0..=1, default_missing_value = gw_testkit::wan::THREE_REGIONS)]
    pub wan: Option<String>,
}

/// The demo documents, with the listener port and the echo backends' EndpointSlices filled in (every
/// port of a backend's Service reaches the backend's one port).
fn demo_documents(port: u16, backends: &[(&str, SocketAddr)]) -> Result<Vec<pb::Document>> {
    let docs = gw_model::parse_documents("deploy/examples/demo.yaml", DEMO)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let mut out: Vec<Value> = docs.into_iter().map(|d| d.value).collect();
    for d in &mut out {
        if d["kind"] == "Gateway" {
            d["spec"]["listeners"][0]["port"] = json!(port);
        }
    }
    for (svc, addr) in backends {
        let ports: Vec<Value> = out
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == *svc)
            .and_then(|d| d["spec"]["ports"].as_array())
            .into_iter()
            .flatten()
            .map(|p| json!({"name": p["name"], "port": addr.port()}))
            .collect();
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": svc, "namespace": "demo", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
        }));
    }
    Ok(documents(out, "gwadm up"))
}

/// Documents to apply, numbered from 1 in `source`.
fn documents(values: Vec<Value>, source: &str) -> Vec<pb::Document> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| pb::Document {
            json: v.to_string(),
            source: source.into(),
            index: i as u32 + 1,
        })
        .collect()
}

pub async fn run(a: UpArgs) -> Result<()> {
    let ports = if a.wan.is_some() {
        vec![a.port]
    } else {
        vec![a.port, a.store_port, a.admin_port, a.kube_port]
    };
    for p in ports {
        ensure_free(p)
            .map_err(|e| Error::Usage(format!("{e:#}; pick another with the flags of gwadm up")))?;
    }
    let tmp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("gw-up-")
                .tempdir()
                .map_err(anyhow::Error::from)?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    if let Some(wan) = &a.wan {
        return regions::run(wan, a.port, &dir).await;
    }
    let store_addr = format!("127.0.0.1:{}", a.store_port);
    // Mutual TLS as everywhere: a CA of the demo's own, a member, a node and an admin certificate.
    let pki = Pki::create(&dir.join("pki"))?;
    let node_tls = pki.issue(
        "node",
        &Identity::Node {
            class: "gw-demo".into(),
            name: "demo".into(),
        },
    )?;
    let mut children = Children::default();
    let kube_addr = format!("127.0.0.1:{}", a.kube_port);
    children.spawn_store(&store_addr, Some(&kube_addr), &dir, &pki)?;
    let kubeconfig = dir.join("kubeconfig.json");
    let kc = gw_client::kubeconfig::kubeconfig(&kube_addr, &pki.admin(), "gw-demo")
        .map_err(Error::Usage)?;
    std::fs::write(&kubeconfig, kc.to_string())
        .map_err(|e| Error::Usage(format!("{}: {e}", kubeconfig.display())))?;
    let echo = |pod: &str| EchoConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        pod: pod.into(),
        namespace: "demo".into(),
        h2c_only: false,
        log: false,
        tls: None,
    };
    let v1 = start_echo(echo("app-v1"))
        .await
        .map_err(anyhow::Error::from)?;
    let v2 = start_echo(echo("app-v2"))
        .await
        .map_err(anyhow::Error::from)?;
    let color = start_echo(echo("color"))
        .await
        .map_err(anyhow::Error::from)?;
    let color2 = start_echo(echo("color2"))
        .await
        .map_err(anyhow::Error::from)?;
    children.spawn(
        "gw-node",
        &dir.join("node.log"),
        Command::new(bin("gw-node")?)
            .args(TlsArgs::of(&node_tls).to_args())
            .args([
                "--store",
                &store_addr,
                "--gateway-class",
                "gw-demo",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--admin", &format!("127.0.0.1:{}", a.admin_port)])
            .arg("--data-dir")
            .arg(dir.join("node")),
    )?;
    // The mesh node: Services at their addresses (binding port 80 of the canary needs root).
    children.spawn_node(
        &store_addr,
        ("gw-demo-mesh", "demo-mesh"),
        "127.0.0.1",
        (&dir, &pki),
        &["--mesh"],
    )?;
    let client = Client::new(
        std::slice::from_ref(&store_addr),
        Duration::from_secs(20),
        &Dialer::new(pki.admin_security()),
    )?;
    let documents = demo_documents(
        a.port,
        &[
            ("app-v1", v1.addr),
            ("app-v2", v2.addr),
            ("color", color.addr),
            ("color2", color2.addr),
        ],
    )?;
    let resp = client.apply(documents, false).await?;
    eprintln!("applied the demo config (revision {})", resp.revision);
    wait_until_served(
        SocketAddr::from(([127, 0, 0, 1], a.port)),
        "/app",
        "node.log",
    )
    .await?;
    let url = format!("http://127.0.0.1:{}", a.port);
    println!(
        "\ngw is up: store {store_addr}, gateway node on 127.0.0.1:{port}, admin http://127.0.0.1:{admin}/status, logs in {dir}\n\n\
         Try:\n\
         \x20 curl -s -H 'Host: app.demo.example' {url}/app/hello            # JSON from app-v1 (90%) or app-v2 (10%); note the x-gw-demo header\n\
         \x20 for i in $(seq 100); do curl -s -H 'Host: app.demo.example' {url}/app | grep -o '\"pod\":\"[^\"]*\"'; done | sort | uniq -c   # the 90/10 split\n\
         \x20 curl -si -H 'Host: app.demo.example' {url}/elsewhere | head -1   # 404: no rule matches\n\
         \x20 c=$(curl -si -H 'Host: app.demo.example' {url}/sticky | sed -n 's/^set-cookie: \\([^;]*\\).*/\\1/Ip')   # a session cookie\n\
         \x20 for i in $(seq 10); do curl -s -H 'Host: app.demo.example' -H \"Cookie: $c\" {url}/sticky | grep -o '\"pod\":\"[^\"]*\"'; done | uniq -c   # one backend\n\
         \x20 export GW_SERVER={store_addr} GW_TLS_CA={pki}/ca.crt GW_TLS_CERT={pki}/admin.crt GW_TLS_KEY={pki}/admin.key   # gwadm as the demo's admin (mutual TLS)\n\
         \x20 gwadm affinity ls                                              # the replicated session table\n\
         \x20 gwadm get httproutes -A                                        # the route and its status\n\
         \x20 kubectl --kubeconfig {kubeconfig} get httproutes -A -o yaml   # the same, through the store's Kubernetes API\n\
         \x20 curl -s http://127.0.0.1:{admin}/status                          # revision served, staleness\n\
         \x20 for i in $(seq 100); do curl -s http://127.96.0.10/ | grep -o '\"pod\":\"[^\"]*\"'; done | sort | uniq -c   # the mesh: the color canary, 50/50 on port 80\n\
         \x20 for i in $(seq 10); do curl -s http://127.96.0.10:8080/ | grep -o '\"pod\":\"[^\"]*\"'; done | uniq -c   # port 8080 of color: not split\n\n\
         Press Ctrl-C to stop.",
        port = a.port,
        admin = a.admin_port,
        dir = dir.display(),
        pki = pki.dir().display(),
        kubeconfig = kubeconfig.display(),
    );
    until_stopped().await?;
    drop(children);
    drop((v1, v2, color, color2));
    Ok(())
}

/// Returns on Ctrl-C or SIGTERM.
async fn until_stopped() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(anyhow::Error::from)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Waits until the node at `node` routes `path` of the demo host (`log`: the node's log, named in
/// the error).
async fn wait_until_served(node: SocketAddr, path: &str, log: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: app.demo.example\r\nConnection: close\r\n\r\n");
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(node).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(request.as_bytes()).await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Usage(format!(
        "the gateway node {node} did not start serving within 30 s (see {log})"
    )))
}
