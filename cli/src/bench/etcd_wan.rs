//! etcd over the same simulated WAN as `gwadm bench regions` (`gwadm bench regions --etcd`): three
//! (or as many as the matrix has regions) etcd members, one per region, whose Raft traffic crosses
//! `gw_testkit::wan` ingresses. etcd dials its peers from an address it does not let us choose, so
//! each member is given, through an `/etc/hosts` of its own (a private mount namespace: `unshare`,
//! root), the address of an ingress reserved for its region in front of every other member: the
//! same peer URL leads member A to the A→B ingress and member C to the C→B one. Clients talk to a
//! member directly (they are in its region). Applies go through etcd's JSON gateway (`/v3/kv/put`),
//! one connection per call, beside the leader.

use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gw_testkit::procs::{Children, free_port};
use gw_testkit::wan::{Ingress, Wan};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A running etcd cluster, one member per region; stopped when dropped.
pub struct EtcdWan {
    /// Each member's client URL address, by region index.
    pub clients: Vec<SocketAddr>,
    children: Children,
    _ingresses: Vec<Ingress>,
    _dir: tempfile::TempDir,
}

/// Starts one etcd member per region (`etcd` from `PATH`), its peers behind the WAN; `run` keeps
/// the loopback addresses of concurrent runs apart.
pub async fn start(wan: &Wan, regions: &[String], run: u32) -> Result<EtcdWan> {
    let dir = tempfile::tempdir().map_err(anyhow::Error::from)?;
    let n = regions.len();
    let real: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 63, run as u8, i as u8 + 1], free_port())))
        .collect();
    let clients: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 63, run as u8, i as u8 + 1], free_port())))
        .collect();
    let host = |i: usize| format!("etcd-{i}.gw-bench");
    let cluster = (0..n)
        .map(|i| format!("m{i}=http://{}:{}", host(i), real[i].port()))
        .collect::<Vec<_>>()
        .join(",");
    let mut ingresses = Vec::new();
    let mut children = Children::default();
    for (j, from) in regions.iter().enumerate() {
        // Member j's view of every peer: itself, or the ingress for region j in front of it.
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for (i, to) in regions.iter().enumerate() {
            let addr = if i == j {
                real[i]
            } else {
                let listen =
                    SocketAddr::from(([127, 62, run as u8, (j * n + i) as u8 + 1], real[i].port()));
                let ingress = wan
                    .ingress_from(listen, Some(from), to, real[i])
                    .map_err(|e| Error::Usage(format!("an ingress on {listen}: {e}")))?;
                ingresses.push(ingress);
                listen
            };
            hosts.push_str(&format!("{} {}\n", addr.ip(), host(i)));
        }
        let hosts_file = dir.path().join(format!("hosts-{j}"));
        std::fs::write(&hosts_file, hosts).map_err(anyhow::Error::from)?;
        let (peer, client) = (real[j], clients[j]);
        let mut cmd = std::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(&hosts_file)
        .arg("etcd")
        .args(["--name", &format!("m{j}")])
        .arg("--data-dir")
        .arg(dir.path().join(format!("m{j}")))
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://{}:{}", host(j), peer.port()),
        ])
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args([
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
        ])
        .args(["--initial-cluster-token", &format!("gw-bench-{run}")])
        // As gw's members in `gwadm bench regions`: timers well above the longest round trip.
        .args(["--heartbeat-interval", "300", "--election-timeout", "3000"]);
        children
            .spawn(
                &format!("etcd-{j}"),
                &dir.path().join(format!("m{j}.log")),
                &mut cmd,
            )
            .map_err(|e| {
                Error::Usage(format!("{e:#} (needs etcd on PATH, and root for unshare)"))
            })?;
    }
    let etcd = EtcdWan {
        clients,
        children,
        _ingresses: ingresses,
        _dir: dir,
    };
    Ok(etcd)
}

impl EtcdWan {
    /// Kills (SIGKILL) the member of region `i`.
    pub fn kill(&mut self, i: usize) {
        self.children.kill(&format!("etcd-{i}"));
    }

    /// The region index of the leader, once every member answers and agrees on one.
    pub async fn leader(&self, limit: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            let mut ids = Vec::new();
            for c in &self.clients {
                match call(*c, "/v3/maintenance/status", &json!({})).await {
                    Ok(s) => ids.push((s["header"]["member_id"].clone(), s["leader"].clone())),
                    Err(_) => break,
                }
            }
            if ids.len() == self.clients.len()
                && let Some(i) = ids.iter().position(|(me, leader)| me == leader)
                && ids.iter().all(|(_, l)| *l == ids[i].1)
            {
                return Ok(i);
            }
            if start.elapsed() > limit {
                return Err(Error::Usage(format!(
                    "etcd: no leader all members agree on within {limit:?} ({ids:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Puts `value` under `key` through the member at `addr`, acknowledged once committed.
pub async fn put(addr: SocketAddr, key: &str, value: &str) -> Result<()> {
    call(
        addr,
        "/v3/kv/put",
        &json!({"key": B64.encode(key), "value": B64.encode(value)}),
    )
    .await
    .map(drop)
}

/// POSTs `body` to etcd's JSON gateway at `path` (one connection per call: no WAN between a client and
/// its member, and a loopback connection costs far less than the round trips measured).
async fn call(addr: SocketAddr, path: &str, body: &Value) -> Result<Value> {
    let fail = |what: String| Error::Usage(format!("etcd at {addr}{path}: {what}"));
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (head, payload) = super::http_exchange(addr, &request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fail(format!("{head}: {payload}")));
    }
    serde_json::from_str(&payload).map_err(|e| fail(format!("{e}: {payload:?}")))
}
