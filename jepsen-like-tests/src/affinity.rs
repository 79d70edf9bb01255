//! The affinity workload: session persistence across gateway nodes, under faults.
//!
//! Two `gw-node` processes serve one route with Cookie session persistence over four echo backends
//! (`gwadm echo-server` processes). Clients open sessions through random gateway nodes and keep using
//! them (and now and then an old one) through random nodes, while the store's nemeses run and the
//! workload's own churn removes backends from their EndpointSlice (and restores them), kills backend
//! processes (and restarts them) and restarts gateway nodes. Every request records which backend served
//! it, on which session, and the wall-clock times, comparable with the committed times in the
//! replicated affinity table that the checker reads after healing.

use crate::checker::{Validity, Verdict};
use crate::history::{Kind, NEMESIS, Op, Recorder};
use crate::nemesis::Rng;
use anyhow::Context;
use gw_model::affinity::SessionEntry;
use gw_model::affinity::token::session_of;
use gw_proto as pb;
use gw_testkit::cluster::Cluster;
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
/// from the cluster's CA, its data and log under `dir`.
pub(crate) fn gateway(
    cluster: &Cluster,
    dir: &Path,
    class: &str,
    name: &str,
    addr: SocketAddr,
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
        "--node-name".into(),
        name.into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
    ]);
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
    pub backend_addrs: Vec<SocketAddr>,
    dir: PathBuf,
    store: String,
    /// gwadm's flags (the cluster's admin certificate).
    admin: gw_client::TlsArgs,
    pub rec: Recorder,
}

fn slice(i: usize, addr: Option<SocketAddr>) -> String {
    let endpoints = match addr {
        Some(a) => format!(
            "[{{addresses: ['{}'], targetRef: {{kind: Pod, namespace: jepsen, name: b{i}}}}}]",
            a.ip()
        ),
        None => "[]".into(),
    };
    let port = addr.map_or(1, |a| a.port());
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: b{i}, namespace: jepsen, labels: {{kubernetes.io/service-name: b{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: {endpoints}\n"
    )
}

impl Fleet {
    /// Starts the backends and gateway nodes and applies the config; `ip_prefix` as the store's.
    pub async fn start(
        cluster: &Cluster,
        dir: &Path,
        ip_prefix: &str,
        gateway_env: Vec<(String, String)>,
        rec: Recorder,
    ) -> anyhow::Result<Fleet> {
        let dir = dir.join("affinity");
        std::fs::create_dir_all(&dir)?;
        let store = cluster.servers();
        let admin = cluster.pki().admin();
        let port = free_port();
        let mut backends = Vec::new();
        let mut backend_addrs = Vec::new();
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: jepsen}}\nspec: {{controllerName: gw.dev/gateway-node}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: jepsen}}\nspec:\n  gatewayClassName: jepsen\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n"
        );
        let mut refs = Vec::new();
        for i in 0..BACKENDS {
            let addr: SocketAddr = format!("{ip_prefix}{}:{}", 80 + i, free_port()).parse()?;
            backends.push(echo(&dir, &format!("b{i}"), "jepsen", addr)?);
            backend_addrs.push(addr);
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: b{i}, namespace: jepsen}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
            ));
            yaml.push_str(&slice(i, Some(addr)));
            refs.push(format!("{{name: b{i}, port: 80}}"));
        }
        yaml.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: jepsen}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - sessionPersistence: {{sessionName: {COOKIE}, idleTimeout: {IDLE_TIMEOUT_S}s}}\n    backendRefs: [{}]\n",
            refs.join(", ")
        ));
        let fleet = Fleet {
            gateways: Mutex::new(Vec::new()),
            backends: Mutex::new(backends),
            addrs: (0..GATEWAYS)
                .map(|g| format!("{ip_prefix}{}:{port}", 100 + g).parse())
                .collect::<Result<_, _>>()?,
            backend_addrs,
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
        (0..GATEWAYS).map(|g| format!("gateway-{g}")).collect()
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
                    format!("gateway-{}", rng.below(GATEWAYS as u64)),
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
                "backend-remove" => self.apply(&slice(i, None)).await.is_ok(),
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
                "backend-remove" => self
                    .apply(&slice(i, Some(self.backend_addrs[i])))
                    .await
                    .is_ok(),
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

    /// One client: opens sessions through random gateway nodes and uses them.
    pub async fn client(&self, process: i64, seed: u64, until: Instant) {
        let mut rng = Rng::new(seed);
        let mut live: Vec<String> = Vec::new();
        let mut retired: Vec<String> = Vec::new();
        while Instant::now() < until {
            let g = rng.below(GATEWAYS as u64) as usize;
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
                    let v = json!({"gateway": g, "backend": r.pod, "new_session": new,
                        "invoked_wall_ms": invoked, "done_wall_ms": done});
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
        let all: String = (0..BACKENDS)
            .map(|i| slice(i, Some(self.backend_addrs[i])))
            .collect();
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

/// Watches the affinity table on the store members in turn (resuming after the last revision seen)
/// until `until`, recording when each failover and expiry was first seen.
pub async fn observe(chans: Vec<tonic::transport::Channel>, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let mut after = 0;
    let mut member = 0;
    while Instant::now() < until {
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
            if Instant::now() >= until {
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
