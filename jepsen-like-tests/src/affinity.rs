//! The affinity workload: session persistence across gateway nodes, under faults.
//!
//! Two `gw-node` processes (over a WAN, one per region, placed in it) serve one route with Cookie
//! session persistence over four echo backends
//! (`gwadm echo-server` processes). Clients open sessions through random gateway nodes and keep using
//! them (and now and then an old one) through random nodes, while the store's nemeses run and the
//! workload's own churn removes backends from their EndpointSlice (and restores them), kills backend
//! processes (and restarts them) and restarts gateway nodes. Every request records which backend served
//! it, on which session, and the wall-clock times, comparable with the committed times in the
//! replicated affinity table that the checker reads after healing — and which version of the route
//! served it: the route is rewritten every second, and every version must reach every node once
//! the faults in its way are over (`config_served`); over a WAN, the nodes of a region cut off keep
//! answering meanwhile (`static_stability`).

use crate::checker::{Validity, Verdict};
use crate::history::{Kind, NEMESIS, Op, Recorder};
use crate::nemesis::Rng;
use anyhow::Context;
use gw_model::affinity::SessionEntry;
use gw_model::affinity::token::session_of;
use gw_proto as pb;
use gw_testkit::cluster::{Cluster, WanLayout};
use gw_testkit::procs::{bin, free_port};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client processes of this workload start here in the history.
pub const PROCESSES: i64 = 200_000;
const BACKENDS: usize = 4;
const GATEWAYS: usize = 2;
const COOKIE: &str = "gw-jepsen";
/// The history's name for a new version of the route (`Fleet::reconfigure`).
const ROUTE_CHANGE: &str = "route-change";
/// The response header naming the version of the route that served a request (`route`).
const CONFIG_HEADER: &str = "x-jepsen-config";
/// Sessions a client keeps using; older ones are retired and only used now and then.
const LIVE_SESSIONS: usize = 4;
const IDLE_TIMEOUT_S: u64 = 4;
/// How long after healing the nodes get to send their last activity and failovers.
pub const SETTLE: Duration = Duration::from_secs(2);

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process the workload runs (a gateway node or a backend), restartable with the same arguments.
pub(crate) struct Proc {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// A process not started yet.
    pub(crate) fn new(
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Proc {
        Proc {
            program,
            args,
            env,
            log,
            child: None,
        }
    }

    pub(crate) fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        gw_testkit::procs::die_with_me(&child);
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a gateway node of `class` named `name`, serving on `addr`'s IP, with its own certificate
/// from the cluster's CA, its data and log under `dir`; in `region` unless it is empty.
pub(crate) fn gateway(
    cluster: &Cluster,
    dir: &Path,
    class: &str,
    name: &str,
    addr: SocketAddr,
    region: &str,
    env: &[(String, String)],
) -> anyhow::Result<Proc> {
    let tls = cluster.pki().issue(
        name,
        &gw_client::Identity::Node {
            class: class.into(),
            name: name.into(),
        },
    )?;
    let mut args = gw_client::TlsArgs::of(&tls).to_args();
    args.extend([
        "--store".into(),
        cluster.servers(),
        "--gateway-class".into(),
        class.into(),
        "--bind-address".into(),
        addr.ip().to_string(),
        "--store-source-address".into(),
        addr.ip().to_string(),
        "--upstream-source-address".into(),
        addr.ip().to_string(),
        "--node-name".into(),
        name.into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
    ]);
    // In a region of a WAN, other regions' backends can be cut off (packets dropped): the node
    // checks its endpoints' health, and finds them down within a check.
    if !region.is_empty() {
        args.extend(
            [
                "--region",
                region,
                "--health-check-interval-ms",
                "200",
                "--health-check-timeout-ms",
                "300",
            ]
            .map(String::from),
        );
    }
    let mut p = Proc::new(
        bin("gw-node")?,
        args,
        env.to_vec(),
        dir.join(format!("{name}.log")),
    );
    p.spawn()?;
    Ok(p)
}

/// Starts an echo backend (`gwadm echo-server`) that answers as pod `name` in `namespace`.
pub(crate) fn echo(
    dir: &Path,
    name: &str,
    namespace: &str,
    addr: SocketAddr,
) -> anyhow::Result<Proc> {
    let mut p = Proc::new(
        bin("gwadm")?,
        [
            "echo-server",
            "--listen",
            &addr.to_string(),
            "--name",
            name,
            "--namespace",
            namespace,
        ]
        .map(String::from)
        .to_vec(),
        vec![],
        dir.join(format!("backend-{name}.log")),
    );
    p.spawn()?;
    Ok(p)
}

/// `gwadm apply` of `yaml` as the cluster's admin (gwadm retries for 30 s while the store is
/// unavailable). Every document this suite applies this way is the whole object, so applying it again
/// after an unknown outcome is safe: up to three attempts.
pub(crate) async fn gwadm_apply(
    dir: &Path,
    store: &str,
    admin: &gw_client::TlsArgs,
    yaml: &str,
) -> anyhow::Result<()> {
    let f = dir.join(format!("apply-{}.yaml", free_port()));
    std::fs::write(&f, yaml)?;
    let mut last = String::new();
    for _ in 0..3 {
        let o = tokio::process::Command::new(bin("gwadm")?)
            .args(admin.to_args())
            .args(["--server", store, "--retry-for", "30", "apply", "-f"])
            .arg(&f)
            .output()
            .await?;
        if o.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("gwadm apply (3 attempts): {last}")
}

/// The gateway nodes, the backends, and the config that ties them to the store.
pub struct Fleet {
    gateways: Mutex<Vec<Proc>>,
    backends: Mutex<Vec<Proc>>,
    /// Where each gateway node serves the route.
    pub addrs: Vec<SocketAddr>,
    /// Each gateway node's region of the WAN (empty without one).
    pub regions: Vec<String>,
    pub backend_addrs: Vec<SocketAddr>,
    /// Each backend's region of the WAN (empty without one).
    pub backend_regions: Vec<String>,
    dir: PathBuf,
    store: String,
    /// gwadm's flags (the cluster's admin certificate).
    admin: gw_client::TlsArgs,
    pub rec: Recorder,
}

/// Backend `i`'s EndpointSlice, labelled with its region when it has one.
fn slice(i: usize, addr: Option<SocketAddr>, region: &str) -> String {
    let endpoints = match addr {
        Some(a) => format!(
            "[{{addresses: ['{}'], targetRef: {{kind: Pod, namespace: jepsen, name: b{i}}}}}]",
            a.ip()
        ),
        None => "[]".into(),
    };
    let port = addr.map_or(1, |a| a.port());
    let region = match region {
        "" => String::new(),
        r => format!(", topology.kubernetes.io/region: {r}"),
    };
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: b{i}, namespace: jepsen, labels: {{kubernetes.io/service-name: b{i}{region}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: {endpoints}\n"
    )
}

/// The workload's route, over every backend; each answer carries the route's version `config`
/// (header `CONFIG_HEADER`), so that a request shows which config the node served it from.
fn route(config: u64) -> String {
    let refs: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{{name: b{i}, port: 80}}"))
        .collect();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: jepsen}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - sessionPersistence: {{sessionName: {COOKIE}, idleTimeout: {IDLE_TIMEOUT_S}s}}\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: {CONFIG_HEADER}, value: '{config}'}}]}}}}]\n    backendRefs: [{}]\n",
        refs.join(", ")
    )
}

impl Fleet {
    /// Backend `i`'s EndpointSlice: with its endpoint, or (`present` false) empty.
    fn slice(&self, i: usize, present: bool) -> String {
        slice(
            i,
            present.then_some(self.backend_addrs[i]),
            &self.backend_regions[i],
        )
    }

    /// Starts the backends and gateway nodes and applies the config; `ip_prefix` as the store's. Over
    /// a WAN, a gateway node in each of its regions (at least two nodes), each placed in its region
    /// (`--region`, and its address in the WAN: its watch, reads and writes cross the WAN's links,
    /// and a region partition cuts it off), and each backend in one of them too (its EndpointSlice
    /// labelled with it: nodes prefer their region's backends, and a region partition cuts the
    /// region's nodes from other regions' backends and theirs from it).
    pub async fn start(
        cluster: &Cluster,
        dir: &Path,
        ip_prefix: &str,
        wan: Option<&WanLayout>,
        gateway_env: Vec<(String, String)>,
        rec: Recorder,
    ) -> anyhow::Result<Fleet> {
        let dir = dir.join("affinity");
        std::fs::create_dir_all(&dir)?;
        let store = cluster.servers();
        let admin = cluster.pki().admin();
        let port = free_port();
        let names: Vec<String> =
            wan.map_or(vec![], |w| w.wan.matrix.regions().into_iter().collect());
        // Over a WAN, each node and each backend in a region, in turn; the WAN knows them by address
        // (a region partition cuts nodes from the backends of other regions).
        let place = |i: usize, ip: std::net::IpAddr| match wan {
            Some(w) => {
                let region = names[i % names.len()].clone();
                w.wan.place(ip, &region);
                region
            }
            None => String::new(),
        };
        let mut backends = Vec::new();
        let mut backend_addrs = Vec::new();
        let mut backend_regions = Vec::new();
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: jepsen}}\nspec: {{controllerName: gw.dev/gateway-node}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: jepsen}}\nspec:\n  gatewayClassName: jepsen\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n"
        );
        for i in 0..BACKENDS {
            let addr: SocketAddr = format!("{ip_prefix}{}:{}", 80 + i, free_port()).parse()?;
            backends.push(echo(&dir, &format!("b{i}"), "jepsen", addr)?);
            backend_addrs.push(addr);
            backend_regions.push(place(i, addr.ip()));
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: b{i}, namespace: jepsen}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
            ));
            yaml.push_str(&slice(i, Some(addr), &backend_regions[i]));
        }
        yaml.push_str(&route(0));
        let addrs: Vec<SocketAddr> = (0..GATEWAYS.max(names.len()))
            .map(|g| format!("{ip_prefix}{}:{port}", 100 + g).parse())
            .collect::<Result<_, _>>()?;
        let regions = addrs
            .iter()
            .enumerate()
            .map(|(g, a)| place(g, a.ip()))
            .collect();
        let fleet = Fleet {
            gateways: Mutex::new(Vec::new()),
            backends: Mutex::new(backends),
            addrs,
            regions,
            backend_addrs,
            backend_regions,
            dir: dir.clone(),
            store,
            admin,
            rec,
        };
        fleet.apply(&yaml).await?;
        for (g, addr) in fleet.addrs.iter().enumerate() {
            let p = gateway(
                cluster,
                &dir,
                "jepsen",
                &format!("gateway-{g}"),
                *addr,
                &fleet.regions[g],
                &gateway_env,
            )?;
            fleet.lock_gateways().push(p);
        }
        // Both nodes serve and start sessions.
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in &fleet.addrs {
            loop {
                if get(*addr, None)
                    .await
                    .is_ok_and(|r| r.status == 200 && r.set_cookie().is_some())
                {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "gateway {addr} does not start sessions"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(fleet)
    }

    /// The gateway nodes' names.
    pub fn names(&self) -> Vec<String> {
        (0..self.addrs.len())
            .map(|g| format!("gateway-{g}"))
            .collect()
    }

    fn lock_gateways(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.gateways.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_backends(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        gwadm_apply(&self.dir, &self.store, &self.admin, yaml).await
    }

    /// The workload's own faults, in turn until the end: a backend removed from its EndpointSlice
    /// (then restored), a backend process killed (then restarted), a gateway node restarted.
    pub async fn churn(&self, schedule: (Duration, Duration), seed: u64, until: Instant) {
        let (interval, hold) = schedule;
        let mut rng = Rng::new(seed);
        let mut turn = 0;
        while Instant::now() + interval + hold < until {
            tokio::time::sleep(interval).await;
            let i = rng.below(BACKENDS as u64) as usize;
            let (what, target) = match turn % 3 {
                0 => ("backend-remove", format!("b{i}")),
                1 => ("backend-kill", format!("b{i}")),
                _ => (
                    "gateway-restart",
                    format!("gateway-{}", rng.below(self.addrs.len() as u64)),
                ),
            };
            turn += 1;
            self.rec.record(crate::history::Recorder::event(
                NEMESIS,
                Kind::Invoke,
                what,
                None,
                json!([target]),
            ));
            let took = match what {
                "backend-remove" => self.apply(&self.slice(i, false)).await.is_ok(),
                "backend-kill" => {
                    self.lock_backends()[i].kill();
                    true
                }
                _ => {
                    let g: usize = target.trim_start_matches("gateway-").parse().unwrap_or(0);
                    self.lock_gateways()[g].kill();
                    true
                }
            };
            tokio::time::sleep(hold).await;
            let healed = match what {
                "backend-remove" => self.apply(&self.slice(i, true)).await.is_ok(),
                "backend-kill" => self.lock_backends()[i].spawn().is_ok(),
                _ => {
                    let g: usize = target.trim_start_matches("gateway-").parse().unwrap_or(0);
                    self.lock_gateways()[g].spawn().is_ok()
                }
            };
            self.rec.record(crate::history::Recorder::event(
                NEMESIS,
                Kind::Ok,
                what,
                None,
                json!({"nodes": [target], "took_effect": took, "healed": healed}),
            ));
        }
    }

    /// Writes a new version of the route (`route`: versions 1, 2, ...) every `every` until `end`,
    /// each recorded as a `route-change` whose end is when the apply was acknowledged (or failed: its
    /// version may then be committed or not).
    pub async fn reconfigure(&self, every: Duration, end: End) {
        let mut version = 0;
        while Instant::now() + every < end.at() {
            tokio::time::sleep(every).await;
            version += 1;
            self.rec.record(crate::history::Recorder::event(
                NEMESIS,
                Kind::Invoke,
                ROUTE_CHANGE,
                None,
                json!({"version": version}),
            ));
            let applied = self.apply(&route(version)).await.is_ok();
            self.rec.record(crate::history::Recorder::event(
                NEMESIS,
                Kind::Ok,
                ROUTE_CHANGE,
                None,
                json!({"version": version, "took_effect": applied}),
            ));
        }
    }

    /// One client: opens sessions through random gateway nodes and uses them.
    pub async fn client(&self, process: i64, seed: u64, end: End) {
        let mut rng = Rng::new(seed);
        let mut live: Vec<String> = Vec::new();
        let mut retired: Vec<String> = Vec::new();
        while Instant::now() < end.at() {
            let g = rng.below(self.addrs.len() as u64) as usize;
            let roll = rng.below(20);
            let token = if live.is_empty() || roll < 3 {
                None
            } else if roll == 3 && !retired.is_empty() {
                Some(retired[rng.below(retired.len() as u64) as usize].clone())
            } else {
                Some(live[rng.below(live.len() as u64) as usize].clone())
            };
            let session = token.as_deref().and_then(session_of);
            let mut inv = Recorder::event(
                process,
                Kind::Invoke,
                "session",
                session.as_deref(),
                json!({"gateway": g}),
            );
            inv.node = Some(g as u64);
            self.rec.record(inv);
            let invoked = wall_ms();
            let result = get(self.addrs[g], token.as_deref()).await;
            let done = wall_ms();
            let (kind, value, error) = match result {
                Ok(r) if r.status == 200 => {
                    let issued = r.set_cookie();
                    // A token naming the same session is that session's, updated after a
                    // failover; only another session is a new one.
                    let new = issued
                        .as_deref()
                        .and_then(session_of)
                        .filter(|s| Some(s) != session.as_ref());
                    if let Some(t) = issued {
                        if let Some(old) = &token {
                            live.retain(|l| l != old);
                        }
                        live.push(t);
                        if live.len() > LIVE_SESSIONS {
                            retired.push(live.remove(0));
                        }
                    }
                    let config = r.header(CONFIG_HEADER).and_then(|v| v.parse::<u64>().ok());
                    let v = json!({"gateway": g, "backend": r.pod, "new_session": new,
                        "config": config, "invoked_wall_ms": invoked, "done_wall_ms": done});
                    (Kind::Ok, v, None)
                }
                // A status is an answer: the request was not served by a backend.
                Ok(r) => (
                    Kind::Fail,
                    json!({"gateway": g}),
                    Some(r.status.to_string()),
                ),
                Err(e) => (Kind::Info, json!({"gateway": g}), Some(e.to_string())),
            };
            let mut e = Recorder::event(process, kind, "session", session.as_deref(), value);
            e.node = Some(g as u64);
            e.error = error;
            self.rec.record(e);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// Restores everything (processes and EndpointSlices) after the run.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for p in self.lock_backends().iter_mut() {
            if p.child.is_none() {
                p.spawn()?;
            }
        }
        for p in self.lock_gateways().iter_mut() {
            if p.child.is_none() {
                p.spawn()?;
            }
        }
        let all: String = (0..BACKENDS).map(|i| self.slice(i, true)).collect();
        self.apply(&all).await
    }
}

/// An answer to one request.
pub(crate) struct Answer {
    pub status: u16,
    /// The backend that answered (the echo server's `pod`), empty when none did.
    pub pod: String,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The session token the gateway issued, if any.
    fn set_cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .and_then(|v| v.split(';').next())
            .and_then(|c| c.strip_prefix(&format!("{COOKIE}=")))
            .map(str::to_string)
    }
}

/// One `GET /` for `host` on a new connection, with extra header lines (each ending in CRLF).
pub(crate) async fn request(addr: SocketAddr, host: &str, extra: &str) -> std::io::Result<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let pod = serde_json::from_str::<Value>(body.trim())
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(Answer {
        status,
        pod,
        headers,
    })
}

/// One request of this workload, with the session cookie if any.
async fn get(addr: SocketAddr, token: Option<&str>) -> std::io::Result<Answer> {
    let cookie = token
        .map(|t| format!("Cookie: {COOKIE}={t}\r\n"))
        .unwrap_or_default();
    request(addr, "jepsen", &cookie).await
}

/// A watch of the affinity table after `after`.
fn table_watch(after: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        after_revision: Some(after),
        kinds: vec![gw_client::kind_ref(
            gw_model::kinds::GW_GROUP,
            gw_model::affinity::KIND,
        )],
        namespace: String::new(),
        bookmark_interval_ms: 500,
        show_secret_values: false,
    }
}

/// Every session the replicated affinity table ever held, each as its last committed version (for a
/// purged one: as it was when purged), read from a store member after healing by watching the table
/// from revision 0 up to `upto` (the runs keep the whole history).
pub async fn table_history(
    ch: &tonic::transport::Channel,
    upto: u64,
) -> Result<Vec<SessionEntry>, String> {
    let mut stream = gw_client::Client::config(ch.clone())
        .max_decoding_message_size(256 << 20)
        .watch(table_watch(0))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut last: BTreeMap<String, SessionEntry> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut revision = 0;
    while revision < upto {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| format!("the table's history did not reach revision {upto}"))?
            .map_err(|e| e.to_string())?
            .ok_or("the table's watch ended")?;
        match msg.body {
            Some(pb::watch_response::Body::Events(r)) => {
                revision = r.revision;
                for e in r.events {
                    let entry = serde_json::from_str::<Value>(&e.object_json)
                        .ok()
                        .and_then(|o| SessionEntry::from_object(&o));
                    if let Some(entry) = entry {
                        last.insert(entry.id.clone(), entry);
                    }
                }
            }
            Some(pb::watch_response::Body::Bookmark(b)) => revision = revision.max(b.revision),
            Some(pb::watch_response::Body::Snapshot(_)) => {
                return Err("the table's history was compacted: raise --history-revisions".into());
            }
            None => {}
        }
    }
    Ok(last.into_values().collect())
}

/// When (wall clock) each committed change of a session was first seen on a store watch. The times
/// in the table are the proposer's clock when the change was proposed; a proposal held up (a leader
/// cut off, then healed) commits later, so the checker measures a node's lag from when the change was
/// first visible, not from when it was proposed.
#[derive(Debug, Default)]
pub struct Seen {
    /// (session, number of failovers) → first seen with that many.
    failovers: BTreeMap<(String, usize), u64>,
    expired: BTreeMap<String, u64>,
}

/// When the workload's clients and config writer stop: a while after the last fault has healed, so
/// that the run ends with every node clear of faults for long enough to be due a version
/// (`config_served`). Faults that overlap to the end of a run (the catchup fault holds until the
/// leader has purged its log: 19 s once) would otherwise leave nothing to check. A bound at first,
/// set once the faults are over (`settle`).
#[derive(Clone)]
pub struct End(std::sync::Arc<Mutex<Instant>>);

impl End {
    pub fn new(bound: Instant) -> Self {
        End(std::sync::Arc::new(Mutex::new(bound)))
    }

    pub fn at(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faults are over: the workload runs on for `tail`.
    pub fn settle(&self, tail: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + tail;
    }
}

/// Watches the affinity table on the store members in turn (resuming after the last revision seen)
/// until 3 s after the workload's `end`, recording when each failover and expiry was first seen.
pub async fn observe(chans: Vec<tonic::transport::Channel>, end: End) -> Seen {
    let until = || end.at() + Duration::from_secs(3);
    let mut seen = Seen::default();
    let mut after = 0;
    let mut member = 0;
    while Instant::now() < until() {
        let ch = chans[member % chans.len()].clone();
        member += 1;
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            gw_client::Client::config(ch)
                .max_decoding_message_size(256 << 20)
                .watch(table_watch(after)),
        )
        .await;
        let Ok(Ok(resp)) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(3), stream.message()).await
        {
            let objects: Vec<String> = match m.body {
                Some(pb::watch_response::Body::Events(r)) => {
                    after = r.revision;
                    r.events.into_iter().map(|e| e.object_json).collect()
                }
                Some(pb::watch_response::Body::Snapshot(c)) => {
                    if c.done {
                        after = c.revision;
                    }
                    c.objects_json
                }
                _ => vec![],
            };
            let now = wall_ms();
            for e in objects
                .iter()
                .filter_map(|o| serde_json::from_str::<Value>(o).ok())
                .filter_map(|o| SessionEntry::from_object(&o))
            {
                for n in 1..=e.status.failovers.len() {
                    seen.failovers.entry((e.id.clone(), n)).or_insert(now);
                }
                if e.expired() {
                    seen.expired.entry(e.id.clone()).or_insert(now);
                }
            }
            if Instant::now() >= until() {
                break;
            }
        }
    }
    seen
}

/// The pod behind a backend identity (`upstream|pod|ip:port`).
fn pod_of(identity: &str) -> &str {
    identity.split('|').nth(1).unwrap_or(identity)
}

/// A request served on a session: when (wall clock) and by whom.
struct Served {
    invoked: u64,
    done: u64,
    pod: String,
    index: usize,
    /// The request that started the session.
    created: bool,
}

/// Checks the sessions against the committed table:
/// - **failover chain** (exactly once, first writer wins): each committed failover moves the session
///   from the backend it was bound to at that point, starting from the backend its token named;
/// - **agreement / stickiness**: every request served on a session went to the backend committed for it
///   at the time — the one bound when the request completed, or one superseded less than `allowance_ms`
///   before the request began (a node follows a commit once it has seen it);
/// - **expiry**: no request begun `allowance_ms` after the session expired was served on it.
///
/// "Superseded" and "expired" count from when the change was first seen (`seen`), or, if it never
/// was, from its committed time.
pub fn check(ops: &[Op], entries: &[SessionEntry], seen: &Seen, allowance_ms: u64) -> Verdict {
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut served: BTreeMap<String, Vec<Served>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.invoke.f == "session") {
        let Some(c) = op.complete.as_ref().filter(|c| c.kind == Kind::Ok) else {
            continue;
        };
        let v = &c.value;
        let s = Served {
            invoked: v["invoked_wall_ms"].as_u64().unwrap_or(0),
            done: v["done_wall_ms"].as_u64().unwrap_or(0),
            pod: v["backend"].as_str().unwrap_or("").to_string(),
            index: c.index,
            created: v["new_session"].is_string(),
        };
        match v["new_session"].as_str() {
            Some(new) => {
                origin.insert(new.to_string(), s.pod.clone());
                served.entry(new.to_string()).or_default().push(s);
            }
            None => {
                if let Some(k) = &op.invoke.key {
                    served.entry(k.clone()).or_default().push(s);
                }
            }
        }
    }
    let by_id: BTreeMap<&str, &SessionEntry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut anomalies = Vec::new();
    let mut failovers = 0;
    let mut checked = 0;
    for (id, requests) in &served {
        let entry = by_id.get(id.as_str());
        let Some(first) = origin.get(id) else {
            continue;
        };
        // The chain of bindings: (pod, committed from, first seen).
        let mut chain: Vec<(String, u64, u64)> = vec![(first.clone(), 0, 0)];
        if let Some(e) = entry {
            let mut current = e
                .status
                .failovers
                .first()
                .map_or(e.spec.backend.as_str(), |f| f.from.as_str());
            if pod_of(current) != first {
                anomalies.push(json!({"session": id, "anomaly": "entry-disagrees-with-token", "token_backend": first, "entry_backend": current}));
            }
            for f in &e.status.failovers {
                if f.from != current {
                    anomalies.push(json!({"session": id, "anomaly": "failover-not-from-the-bound-backend", "bound": current, "failover": f}));
                }
                failovers += 1;
                let first_seen = seen
                    .failovers
                    .get(&(id.clone(), chain.len()))
                    .copied()
                    .unwrap_or(f.at_ms);
                // In force from the proposer's time, or when it was first seen if that is earlier
                // (the proposer's clock may be ahead: the clock nemesis); superseded from the later.
                chain.push((
                    pod_of(&f.to).to_string(),
                    f.at_ms.min(first_seen),
                    first_seen.max(f.at_ms),
                ));
                current = &f.to;
            }
        }
        let expired = entry
            .and_then(|e| e.status.expired_ms)
            .map(|x| seen.expired.get(id).copied().unwrap_or(x).max(x));
        for r in requests {
            checked += 1;
            let ok = chain.iter().enumerate().any(|(j, (pod, from, _))| {
                let superseded = chain.get(j + 1).map(|(_, _, t)| *t);
                *pod == r.pod
                    && *from <= r.done
                    && superseded.is_none_or(|t| t + allowance_ms > r.invoked)
            });
            if !ok {
                anomalies.push(json!({"session": id, "anomaly": "served-by-a-backend-not-bound", "backend": r.pod, "history_index": r.index, "chain": chain}));
            }
            if let Some(x) = expired
                && !r.created
                && r.invoked > x + allowance_ms
            {
                anomalies.push(json!({"session": id, "anomaly": "expired-session-followed", "expired_ms": x, "history_index": r.index}));
            }
        }
    }
    Verdict {
        valid: if anomalies.is_empty() {
            Validity::True
        } else {
            Validity::False
        },
        ops: checked,
        details: json!({
            "sessions": served.len(),
            "entries": entries.len(),
            "failovers": failovers,
            "expired": entries.iter().filter(|e| e.expired()).count(),
            "allowance_ms": allowance_ms,
            "anomalies": anomalies.iter().take(20).collect::<Vec<_>>(),
            "anomaly_count": anomalies.len(),
        }),
    }
}

/// How long a restarted gateway node gets to serve again (from its persisted snapshot) before its
/// requests count.
const RESTART_GRACE_MS: f64 = 3_000.0;

/// One fault (or route change) of the history, from its start event to its end event.
struct Span {
    f: String,
    /// The values of its start and end events.
    begun: Value,
    ended: Value,
    /// Ms into the run.
    start: f64,
    end: f64,
}

impl Span {
    fn overlaps(&self, from: f64, to: f64) -> bool {
        from < self.end && to > self.start
    }

    /// Whether this span's start event names `name` (the workload's churn: `["gateway-0"]`).
    fn names(&self, name: &str) -> bool {
        self.begun
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n.as_str() == Some(name)))
    }
}

/// Every span of the history's nemesis process (the store's faults, the workload's churn and route
/// changes), each fault's start paired with the next end of the same fault (each kind runs one at a
/// time), in order of their end.
fn spans(events: &[crate::history::Event]) -> Vec<Span> {
    let mut open: BTreeMap<&str, (Value, f64)> = BTreeMap::new();
    let mut spans = Vec::new();
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        if e.kind == Kind::Invoke {
            open.insert(&e.f, (e.value.clone(), e.time_ms));
        } else if let Some((begun, start)) = open.remove(e.f.as_str()) {
            spans.push(Span {
                f: e.f.clone(),
                begun,
                ended: e.value.clone(),
                start,
                end: e.time_ms,
            });
        }
    }
    spans
}

/// p50, p99 and the largest of `v` (sorted in place).
fn percentiles(v: &mut [f64]) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    json!({"p50": at(0.5), "p99": at(0.99), "max": v.last()})
}

/// **Static stability** across a region partition: while a region is cut off from the others
/// (`partition-region`), the gateway nodes placed in it (`regions[g]`) keep answering every request
/// from their last committed config — even when restarted during the cut (from the snapshot they
/// persist). Counted: the requests to a cut-off node begun within the cut, except while that node
/// was being restarted by the workload (and for `RESTART_GRACE_MS` after); the details give how
/// long the answered ones took.
/// Sessions are not held to their bindings here (DESIGN.md: a node that cannot confirm a binding
/// within 1 s of its last confirmation starts a new session); the details count how many were
/// followed and how many renewed, and `check` holds the followed ones to the committed table.
/// Nor is a node held to answer when no backend is left for it (`backend_regions[i]`: where backend
/// `bi` is; empty: not placed): a cut that also cuts backends (`partition-region-backends`) leaves a
/// node its own region's only, and the workload's churn may have taken every one of those out —
/// killed, or removed from its EndpointSlice before the cut (the node cannot learn of its return
/// until the cut heals). Such requests are counted apart (`no_backend_left`).
pub fn static_stability(
    events: &[crate::history::Event],
    ops: &[Op],
    regions: &[String],
    backend_regions: &[String],
) -> Verdict {
    let all = spans(events);
    let cuts: Vec<&Span> = all.iter().filter(|s| s.f == "partition-region").collect();
    let restarting = |g: usize, from: f64, to: f64| {
        all.iter().any(|s| {
            s.f == "gateway-restart"
                && s.names(&format!("gateway-{g}"))
                && s.overlaps(from - RESTART_GRACE_MS, to)
        })
    };
    // Whether backend `b`, reachable across `cut` or not, is out for a request from `from` to `to`.
    let out = |b: usize, cut: &Span, from: f64, to: f64| {
        let name = format!("b{b}");
        let reachable = cut.ended["backend_cuts"].as_u64().unwrap_or(0) == 0
            || backend_regions[b] == cut.begun["region"].as_str().unwrap_or_default();
        !reachable
            || all.iter().any(|s| {
                s.names(&name)
                    && match s.f.as_str() {
                        "backend-kill" => s.overlaps(from, to),
                        "backend-remove" => s.start < cut.start && s.end > cut.start,
                        _ => false,
                    }
            })
    };
    let none_left = |cut: &Span, from: f64, to: f64| {
        !backend_regions.is_empty() && (0..backend_regions.len()).all(|b| out(b, cut, from, to))
    };
    let mut none_left_count = 0;
    let (mut answered, mut followed, mut renewed) = (0, 0, 0);
    // How long each answered request took (ms).
    let mut took: Vec<f64> = Vec::new();
    let mut cut_nodes = 0;
    let mut unanswered = Vec::new();
    for cut in &cuts {
        let (start, end) = (&cut.start, &cut.end);
        let region = cut.begun["region"].as_str().unwrap_or_default();
        let nodes: Vec<usize> = (0..regions.len())
            .filter(|g| regions[*g] == region)
            .collect();
        cut_nodes += nodes.len();
        for op in ops.iter().filter(|o| o.invoke.f == "session") {
            let Some(c) = &op.complete else { continue };
            let Some(g) = op.invoke.node.map(|n| n as usize) else {
                continue;
            };
            if !nodes.contains(&g)
                || op.invoke.time_ms < *start
                || op.invoke.time_ms > *end
                || restarting(g, op.invoke.time_ms, c.time_ms)
            {
                continue;
            }
            if c.kind != Kind::Ok && none_left(cut, op.invoke.time_ms, c.time_ms) {
                none_left_count += 1;
                continue;
            }
            if c.kind == Kind::Ok {
                answered += 1;
                took.push(c.time_ms - op.invoke.time_ms);
                if op.invoke.key.is_some() {
                    if c.value["new_session"].is_string() {
                        renewed += 1;
                    } else {
                        followed += 1;
                    }
                }
            } else {
                unanswered.push(
                    json!({"region": region, "gateway": g, "history_index": c.index,
                    "outcome": c.kind, "error": c.error, "ms_into_cut": c.time_ms - start}),
                );
            }
        }
    }
    Verdict {
        valid: Validity::of(unanswered.len(), answered),
        ops: answered + unanswered.len(),
        details: json!({
            "cuts": cuts.len(),
            "cut_off_nodes": cut_nodes,
            "answered": answered,
            "sessions_followed": followed,
            "sessions_renewed": renewed,
            "answer_ms": percentiles(&mut took),
            "unanswered": unanswered.iter().take(20).collect::<Vec<_>>(),
            "unanswered_count": unanswered.len(),
            "no_backend_left": none_left_count,
        }),
    }
}

/// **New config reaches every node once it can**: each version of the route (`Fleet::reconfigure`)
/// acknowledged at `t` is served by every node for requests begun `allowance_ms` after a moment
/// (after `t`) when the store is seen committing — a version acknowledged then — and that node has
/// nothing in its way for `allowance_ms` from there. In its way: any fault of the store (a region
/// partition only for the nodes of the region cut off), and a restart of the node (and
/// `RESTART_GRACE_MS` after). So a node of a region cut off while a version was written serves it
/// within `allowance_ms` of the healing, once the store commits. The details give, for each version
/// and node, how long after that moment it was first served there.
pub fn config_served(
    events: &[crate::history::Event],
    ops: &[Op],
    regions: &[String],
    allowance_ms: u64,
) -> Verdict {
    let all = spans(events);
    let allowance = allowance_ms as f64;
    let blocked = |g: usize, s: &Span| match s.f.as_str() {
        ROUTE_CHANGE | "backend-remove" | "backend-kill" => None,
        "gateway-restart" if s.names(&format!("gateway-{g}")) => {
            Some((s.start, s.end + RESTART_GRACE_MS))
        }
        "gateway-restart" => None,
        "partition-region" if s.begun["region"].as_str() != Some(regions[g].as_str()) => None,
        _ => Some((s.start, s.end)),
    };
    // The first time from `t` on when node `g` has `allowance` clear of every span in its way.
    let clear = |g: usize, t: f64| {
        let mut ways: Vec<(f64, f64)> = all.iter().filter_map(|s| blocked(g, s)).collect();
        ways.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut clear = t;
        for (start, end) in ways {
            if start < clear + allowance && end > clear {
                clear = end;
            }
        }
        clear
    };
    let versions: Vec<(u64, f64)> = all
        .iter()
        .filter(|s| s.f == ROUTE_CHANGE && s.ended["took_effect"] == json!(true))
        .filter_map(|s| Some((s.begun["version"].as_u64()?, s.end)))
        .collect();
    // When node `g` is due to serve a version acknowledged at `t`: `allowance` after a moment, once
    // it is clear, when the store is seen committing (a version acknowledged: after faults a store
    // may be without a leader for a while, and then delivers nothing) with `allowance` clear from
    // there. `None`: never during the run.
    let due = |g: usize, t: f64| {
        let mut from = clear(g, t);
        loop {
            let committing = versions.iter().map(|(_, a)| *a).find(|a| *a >= from)?;
            from = clear(g, committing);
            if from <= committing {
                return Some(committing + allowance);
            }
        }
    };
    // When each node is due to serve each version.
    let dues: Vec<Vec<Option<f64>>> = (0..regions.len())
        .map(|g| versions.iter().map(|(_, t)| due(g, *t)).collect())
        .collect();
    let mut checked = 0;
    let mut stale = Vec::new();
    // (version, node) → ms from when the node was clear to take the version (acknowledged, and
    // nothing in its way) to its first request served with it (0: served before).
    let mut caught_up: BTreeMap<(u64, usize), f64> = BTreeMap::new();
    let mut after_a_cut = 0;
    for op in ops.iter().filter(|o| o.invoke.f == "session") {
        let Some(c) = op.complete.as_ref().filter(|c| c.kind == Kind::Ok) else {
            continue;
        };
        let Some(g) = op
            .invoke
            .node
            .map(|n| n as usize)
            .filter(|g| *g < regions.len())
        else {
            continue;
        };
        let served = c.value["config"].as_u64().unwrap_or(0);
        for (i, (v, t)) in versions.iter().enumerate() {
            if let Some(due) = dues[g][i]
                && *v <= served
                && *t <= c.time_ms
            {
                // The earliest answer with it (ops are in order of invocation, not completion).
                let lag = (c.time_ms - (due - allowance)).max(0.0);
                caught_up
                    .entry((*v, g))
                    .and_modify(|l| *l = l.min(lag))
                    .or_insert(lag);
            }
        }
        let Some((expected, t)) = versions
            .iter()
            .enumerate()
            .filter(|(i, _)| dues[g][*i].is_some_and(|d| d <= op.invoke.time_ms))
            .map(|(_, vt)| vt)
            .max_by_key(|(v, _)| *v)
        else {
            continue;
        };
        checked += 1;
        // Whether a version this request must show was written while the node's region was cut off.
        let cut_meanwhile = versions.iter().any(|(v, at)| {
            v <= expected
                && all.iter().any(|s| {
                    s.f == "partition-region"
                        && s.begun["region"].as_str() == Some(regions[g].as_str())
                        && s.overlaps(*at, *at)
                })
        });
        if cut_meanwhile {
            after_a_cut += 1;
        }
        if served < *expected {
            stale.push(
                json!({"gateway": g, "history_index": c.index, "served": served,
                "expected": expected, "ms_since_acknowledged": op.invoke.time_ms - t,
                "cut_off_meanwhile": cut_meanwhile}),
            );
        }
    }
    let lags: Vec<f64> = caught_up.values().copied().collect();
    Verdict {
        valid: Validity::of(stale.len(), checked),
        ops: checked,
        details: json!({
            "versions_acknowledged": versions.len(),
            "allowance_ms": allowance_ms,
            "checked_written_while_cut_off": after_a_cut,
            "caught_up_ms_max": lags.iter().copied().fold(0.0, f64::max),
            "stale": stale.iter().take(20).collect::<Vec<_>>(),
            "stale_count": stale.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, pair};

    /// A history written event by event, each at the time given (ms into the run).
    #[derive(Default)]
    struct H(Vec<Event>);

    impl H {
        fn at(
            &mut self,
            time_ms: f64,
            process: i64,
            kind: Kind,
            f: &str,
            value: Value,
        ) -> &mut Event {
            let mut e = Recorder::event(process, kind, f, None, value);
            (e.index, e.time_ms) = (self.0.len(), time_ms);
            self.0.push(e);
            self.0.last_mut().unwrap()
        }
        fn fault(&mut self, f: &str, (start, end): (f64, f64), begun: Value, ended: Value) {
            self.at(start, NEMESIS, Kind::Invoke, f, begun);
            self.at(end, NEMESIS, Kind::Ok, f, ended);
        }
        fn route(&mut self, version: u64, (start, end): (f64, f64)) {
            let v = json!({"version": version});
            self.fault(
                ROUTE_CHANGE,
                (start, end),
                v,
                json!({"version": version, "took_effect": true}),
            );
        }
        fn cut(&mut self, region: &str, span: (f64, f64)) {
            let v = json!({"region": region, "members": [1]});
            self.fault("partition-region", span, v.clone(), v);
        }
        /// A request to gateway `g` from `start` to `end`: served (with the route's version `config`),
        /// or answered `error`.
        fn request(&mut self, g: u64, (start, end): (f64, f64), answer: Result<u64, &str>) {
            let p = PROCESSES + self.0.len() as i64;
            self.at(start, p, Kind::Invoke, "session", json!({"gateway": g}))
                .node = Some(g);
            let (kind, value, error) = match answer {
                Ok(config) => (
                    Kind::Ok,
                    json!({"gateway": g, "backend": "b0", "config": config}),
                    None,
                ),
                Err(e) => (Kind::Fail, json!({"gateway": g}), Some(e.to_string())),
            };
            let e = self.at(end, p, kind, "session", value);
            (e.node, e.error) = (Some(g), error);
        }
    }

    fn regions() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn a_version_must_reach_each_node_once_it_has_been_clear_for_the_allowance() {
        let mut h = H::default();
        h.route(1, (1_000.0, 1_100.0));
        h.cut("b", (1_050.0, 5_000.0));
        // Node 0 (region a) is due at 2100. Node 1 (cut off) only after the healing and a commit
        // seen after it (version 2, at 5500): at 6500.
        h.request(0, (2_200.0, 2_210.0), Ok(1));
        h.request(0, (2_000.0, 2_010.0), Ok(0));
        h.request(1, (4_000.0, 4_010.0), Ok(0));
        h.request(1, (6_100.0, 6_110.0), Ok(0));
        h.route(2, (5_400.0, 5_500.0));
        h.request(1, (6_600.0, 6_610.0), Ok(2));
        let v = config_served(&h.0, &pair(&h.0), &regions(), 1_000);
        assert_eq!(v.valid, Validity::True, "{}", v.details);
        assert_eq!(
            (v.ops, v.details["checked_written_while_cut_off"].clone()),
            (2, json!(1))
        );
        // Stale answers: node 0 after its due time; node 1 after the healing, the commit and its
        // allowance.
        h.request(0, (2_300.0, 2_310.0), Ok(0));
        h.request(1, (6_700.0, 6_710.0), Ok(1));
        let v = config_served(&h.0, &pair(&h.0), &regions(), 1_000);
        assert_eq!(v.valid, Validity::False);
        let stale: Vec<(Value, Value)> = v.details["stale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["gateway"].clone(), s["cut_off_meanwhile"].clone()))
            .collect();
        assert_eq!(stale, [(json!(0), json!(false)), (json!(1), json!(true))]);
    }

    #[test]
    fn a_cut_off_node_must_answer_except_while_it_restarts() {
        let mut h = H::default();
        h.cut("b", (1_000.0, 5_000.0));
        let target = json!(["gateway-1"]);
        h.fault(
            "gateway-restart",
            (2_000.0, 2_500.0),
            target.clone(),
            json!({"nodes": target}),
        );
        h.request(1, (1_200.0, 1_210.0), Ok(0));
        // Node 0 is not in the region cut off; node 1 is restarting until 2500 (+3 s).
        h.request(0, (1_500.0, 1_510.0), Err("502"));
        h.request(1, (2_600.0, 2_610.0), Err("Connection refused"));
        let v = static_stability(&h.0, &pair(&h.0), &regions(), &[]);
        assert_eq!(v.valid, Validity::True, "{}", v.details);
        assert_eq!(v.details["answered"], json!(1));
        h.request(1, (1_500.0, 1_510.0), Err("502"));
        let v = static_stability(&h.0, &pair(&h.0), &regions(), &[]);
        assert_eq!(v.valid, Validity::False);
        assert_eq!(v.details["unanswered_count"], json!(1));
        assert_eq!(v.details["unanswered"][0]["error"], json!("502"));
    }

    #[test]
    fn a_cut_off_node_with_no_backend_left_is_not_held_to_answer() {
        // b0 in region a, b1 in region b; region b cut off from a's backends too.
        let backends: Vec<String> = vec!["a".into(), "b".into()];
        let mut h = H::default();
        let cut = json!({"region": "b", "members": [1]});
        h.fault(
            "partition-region",
            (1_000.0, 5_000.0),
            cut,
            json!({"region": "b", "members": [1], "backend_cuts": 4}),
        );
        // b1 removed from its EndpointSlice before the cut, restored during it: node 1 cannot
        // learn of its return before the healing.
        let b1 = json!(["b1"]);
        h.fault("backend-remove", (500.0, 3_000.0), b1.clone(), b1.clone());
        h.request(1, (2_000.0, 2_010.0), Err("502"));
        h.request(1, (4_000.0, 4_010.0), Err("502"));
        let v = static_stability(&h.0, &pair(&h.0), &regions(), &backends);
        assert_eq!(v.valid, Validity::Unknown, "{}", v.details);
        assert_eq!(v.details["no_backend_left"], json!(2));
        // Without the backend cut, b0 was there for it: both count as unanswered.
        let mut plain = H::default();
        plain.cut("b", (1_000.0, 5_000.0));
        plain.fault("backend-remove", (500.0, 3_000.0), b1.clone(), b1.clone());
        plain.request(1, (2_000.0, 2_010.0), Err("502"));
        let v = static_stability(&plain.0, &pair(&plain.0), &regions(), &backends);
        assert_eq!(v.details["unanswered_count"], json!(1));
        // A removal begun during the cut is not seen by the node, which still has b1: held to it.
        let mut during = H::default();
        during.fault(
            "partition-region",
            (1_000.0, 5_000.0),
            json!({"region": "b", "members": [1]}),
            json!({"region": "b", "members": [1], "backend_cuts": 4}),
        );
        during.fault("backend-remove", (1_500.0, 3_000.0), b1.clone(), b1);
        during.request(1, (2_000.0, 2_010.0), Err("502"));
        let v = static_stability(&during.0, &pair(&during.0), &regions(), &backends);
        assert_eq!(v.details["unanswered_count"], json!(1));
    }
}
