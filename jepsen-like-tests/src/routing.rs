//! The routing workload: what gateway nodes serve, under faults.
//!
//! Two `gw-node` processes serve one route over three echo backends (`r0`..`r2`). A writer changes the
//! routing in generations, each one apply of two objects together: generation `g` points the
//! HTTPRoute at Service `s{g % 2}` and sets the response header `x-generation: g` (first document),
//! and points that Service's EndpointSlice at backend `r{g % 3}` (second document). A node that served
//! the route of one generation with the endpoints of another — a torn revision — answers with a
//! backend the generation does not name. The route's GatewayClass asks for the revision header, so
//! every answer also says which store revision the node served it from.
//!
//! Clients send requests through every node. The checker (`check`) verifies: no torn revision; every
//! answer's generation committed at or before the revision the node says it served, and not replaced
//! by then; per node, revisions never go backwards (between requests that do not overlap); and after
//! healing, every node serves the store's last generation.

use crate::affinity::{Answer, Proc, echo, gateway, gwadm_apply, request};
use crate::checker::{Validity, Verdict};
use crate::history::{Kind, Op, Recorder};
use crate::nemesis::Rng;
use gw_proto as pb;
use gw_testkit::cluster::Cluster;
use gw_testkit::procs::free_port;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Client processes of this workload start here in the history; the writer is `WRITER`.
pub const PROCESSES: i64 = 300_000;
const WRITER: i64 = PROCESSES - 1;
const BACKENDS: u64 = 3;
const GATEWAYS: usize = 2;
const NS: &str = "jepsen-routing";
const HOST: &str = "routing.jepsen";
const CLASS: &str = "jepsen-routing";
const GENERATION: &str = "x-generation";
/// The node's revision header (`gw.dev/revision-header` on the class).
const REVISION: &str = "gw-revision";

fn node_name(g: usize) -> String {
    format!("routing-{g}")
}

/// The backend generation `g` routes to.
fn backend_of(g: u64) -> String {
    format!("r{}", g % BACKENDS)
}

fn route(g: u64) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "routing", "namespace": NS},
        "spec": {"parentRefs": [{"name": "routing"}], "hostnames": [HOST],
            "rules": [{"backendRefs": [{"name": format!("s{}", g % 2), "port": 80}],
                "filters": [{"type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"set": [{"name": GENERATION, "value": g.to_string()}]}}]}]}})
}

fn slice(service: u64, backend: SocketAddr, pod: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{service}"), "namespace": NS,
            "labels": {"kubernetes.io/service-name": format!("s{service}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.port()}],
        "endpoints": [{"addresses": [backend.ip().to_string()],
            "targetRef": {"kind": "Pod", "namespace": NS, "name": pod}}]})
}

/// The gateway nodes, the backends, and the writer's connections to the store.
pub struct Routing {
    _processes: Vec<Proc>,
    pub addrs: Vec<SocketAddr>,
    pub backend_addrs: Vec<SocketAddr>,
    chans: Vec<(u64, Channel)>,
    pub rec: Recorder,
}

impl Routing {
    /// Starts the backends and the gateway nodes and applies generation 0; `ip_prefix` as the
    /// store's (gateway nodes on .110 and .111, backends on .90 to .92).
    pub async fn start(
        cluster: &Cluster,
        dir: &Path,
        ip_prefix: &str,
        gateway_env: &[(String, String)],
        chans: Vec<(u64, Channel)>,
        rec: Recorder,
    ) -> anyhow::Result<Routing> {
        let dir: PathBuf = dir.join("routing");
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let mut backends = Vec::new();
        let mut backend_addrs = Vec::new();
        for i in 0..BACKENDS {
            let addr: SocketAddr = format!("{ip_prefix}{}:{}", 90 + i, free_port()).parse()?;
            backends.push(echo(&dir, &format!("r{i}"), NS, addr)?);
            backend_addrs.push(addr);
        }
        let mut docs = vec![
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": CLASS, "annotations": {"gw.dev/revision-header": "true"}},
                "spec": {"controllerName": "gw.dev/gateway-node"}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "routing", "namespace": NS},
                "spec": {"gatewayClassName": CLASS,
                    "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}),
        ];
        for s in 0..2 {
            docs.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{s}"), "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80}]}}));
        }
        // Generation 0, and s1 on a backend generation 1 does not name (so that a torn generation 1
        // shows too).
        docs.push(route(0));
        docs.push(slice(0, backend_addrs[0], &backend_of(0)));
        docs.push(slice(1, backend_addrs[2], &backend_of(2)));
        let yaml: String = docs
            .iter()
            .map(|d| format!("---\n{d}\n"))
            .collect::<Vec<_>>()
            .concat();
        gwadm_apply(&dir, &cluster.servers(), &cluster.pki().admin(), &yaml).await?;
        let addrs: Vec<SocketAddr> = (0..GATEWAYS)
            .map(|g| format!("{ip_prefix}{}:{port}", 110 + g).parse())
            .collect::<Result<_, _>>()?;
        let mut gateways = Vec::new();
        for (g, addr) in addrs.iter().enumerate() {
            gateways.push(gateway(
                cluster,
                &dir,
                CLASS,
                &node_name(g),
                *addr,
                "",
                gateway_env,
            )?);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in &addrs {
            while !request(*addr, HOST, "")
                .await
                .is_ok_and(|a| a.status == 200 && a.header(GENERATION).is_some())
            {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "gateway node {addr} does not serve the routing workload's route"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        backends.extend(gateways);
        Ok(Routing {
            _processes: backends,
            addrs,
            backend_addrs,
            chans,
            rec,
        })
    }

    /// The gateway nodes' names.
    pub fn names(&self) -> Vec<String> {
        (0..GATEWAYS).map(node_name).collect()
    }

    /// The writer: generation after generation until `until`, each one apply of the route and the
    /// EndpointSlice it points at, through a random member.
    pub async fn writer(&self, seed: u64, until: Instant) {
        let mut rng = Rng::new(seed);
        let mut g = 0;
        while Instant::now() < until {
            g += 1;
            let service = g % 2;
            let b = (g % BACKENDS) as usize;
            let documents = [
                route(g),
                slice(service, self.backend_addrs[b], &backend_of(g)),
            ]
            .iter()
            .enumerate()
            .map(|(i, d)| pb::Document {
                json: d.to_string(),
                source: "jepsen-routing".into(),
                index: i as u32 + 1,
            })
            .collect();
            let (node, ch) = &self.chans[rng.below(self.chans.len() as u64) as usize];
            let mut inv = Recorder::event(WRITER, Kind::Invoke, "generation", None, json!(g));
            inv.node = Some(*node);
            self.rec.record(inv);
            let req = pb::ApplyRequest {
                documents,
                dry_run: false,
            };
            let res = tokio::time::timeout(
                Duration::from_millis(1500),
                gw_client::Client::config(ch.clone()).apply(req),
            )
            .await;
            let mut e = match res {
                Ok(Ok(r)) => {
                    let mut e = Recorder::event(WRITER, Kind::Ok, "generation", None, json!(g));
                    e.revision = Some(r.into_inner().revision);
                    e
                }
                Ok(Err(s)) => {
                    let err = gw_client::Error::from(s);
                    let kind = if err.is_definite() {
                        Kind::Fail
                    } else {
                        Kind::Info
                    };
                    let mut e = Recorder::event(WRITER, kind, "generation", None, json!(g));
                    e.error = Some(err.to_string());
                    e
                }
                Err(_) => {
                    let mut e = Recorder::event(WRITER, Kind::Info, "generation", None, json!(g));
                    e.error = Some("timeout".into());
                    e
                }
            };
            e.node = Some(*node);
            let kind = e.kind;
            self.rec.record(e);
            // The writer is one process: after an unknown outcome it goes on as the same writer (its
            // generations stay ordered; an unknown one may commit late, which the checker allows).
            if kind != Kind::Ok {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One client: requests through random nodes until `until`.
    pub async fn client(&self, process: i64, seed: u64, until: Instant) {
        let mut rng = Rng::new(seed);
        while Instant::now() < until {
            let g = rng.below(GATEWAYS as u64) as usize;
            let mut inv = Recorder::event(process, Kind::Invoke, "request", None, json!(g));
            inv.node = Some(g as u64);
            self.rec.record(inv);
            let mut e = match request(self.addrs[g], HOST, "").await {
                // The revision is the node's (in the value), not a store read's: the store's
                // revisions-monotonic checker does not apply to it.
                Ok(a) => Recorder::event(process, Kind::Ok, "request", None, served(&a)),
                Err(err) => {
                    let mut e = Recorder::event(process, Kind::Info, "request", None, json!(null));
                    e.error = Some(err.to_string());
                    e
                }
            };
            e.node = Some(g as u64);
            self.rec.record(e);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After healing: waits (up to 60 s) until every node serves `generation` (the store's last),
    /// and returns, per node, what it served last.
    pub async fn converge(&self, generation: u64) -> (bool, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = vec![Value::Null; self.addrs.len()];
        let mut done = vec![false; self.addrs.len()];
        while Instant::now() < deadline && done.iter().any(|d| !d) {
            for (i, addr) in self.addrs.iter().enumerate() {
                if done[i] {
                    continue;
                }
                if let Ok(a) = request(*addr, HOST, "").await {
                    let v = served(&a);
                    done[i] = a.status == 200 && v["generation"] == json!(generation);
                    last[i] = v;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (done.iter().all(|d| *d), last)
    }
}

/// What an answer says: status, generation, backend, and the revision served.
fn served(a: &Answer) -> Value {
    json!({
        "status": a.status,
        "generation": a.header(GENERATION).and_then(|g| g.parse::<u64>().ok()),
        "backend": a.pod,
        "revision": a.header(REVISION).and_then(|r| r.parse::<u64>().ok()),
    })
}

/// The generation the store holds (the route's header value), read linearizably.
pub async fn stored_generation(ch: &Channel) -> Result<u64, String> {
    let req = pb::GetRequest {
        target: Some(pb::ObjectRef {
            group: "gateway.networking.k8s.io".into(),
            kind: "HTTPRoute".into(),
            namespace: NS.into(),
            name: "routing".into(),
        }),
        options: None,
    };
    let r = gw_client::Client::config(ch.clone())
        .get(req)
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let obj: Value = serde_json::from_str(&r.object_json).map_err(|e| e.to_string())?;
    obj["spec"]["rules"][0]["filters"][0]["responseHeaderModifier"]["set"][0]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "the stored route has no generation header".to_string())
}

/// The checks described in the module's documentation, over the paired history; `converged` is
/// what `Routing::converge` found after healing.
pub fn check(ops: &[Op], converged: (bool, Vec<Value>), final_generation: u64) -> Verdict {
    // Generations: committed ones by revision, and those certainly never committed.
    let mut committed: BTreeMap<u64, u64> = BTreeMap::new(); // revision → generation
    let mut revision_of: BTreeMap<u64, u64> = BTreeMap::new(); // generation → revision
    let mut failed = Vec::new();
    let mut attempted = 0;
    for op in ops.iter().filter(|o| o.invoke.process == WRITER) {
        let g = op.invoke.value.as_u64().unwrap_or(0);
        attempted = attempted.max(g);
        match (&op.complete, op.outcome()) {
            (Some(c), Kind::Ok) => {
                if let Some(r) = c.revision {
                    committed.insert(r, g);
                    revision_of.insert(g, r);
                }
            }
            (_, Kind::Fail) => failed.push(g),
            _ => {}
        }
    }
    let requests: Vec<&Op> = ops
        .iter()
        .filter(|o| o.invoke.process >= PROCESSES && o.invoke.f == "request")
        .collect();
    let mut anomalies = Vec::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut checked = 0;
    for op in &requests {
        let Some(c) = op.complete.as_ref().filter(|c| c.kind == Kind::Ok) else {
            *statuses.entry("no answer".into()).or_default() += 1;
            continue;
        };
        let v = &c.value;
        *statuses
            .entry(v["status"].as_u64().unwrap_or(0).to_string())
            .or_default() += 1;
        if v["status"] != json!(200) {
            continue;
        }
        checked += 1;
        let excerpt = || json!({"request": c.index, "node": c.node, "answer": v});
        let Some(g) = v["generation"].as_u64() else {
            anomalies.push(json!({"anomaly": "no-generation", "at": excerpt()}));
            continue;
        };
        if v["backend"].as_str() != Some(backend_of(g).as_str()) {
            anomalies.push(json!({"anomaly": "torn-revision", "why": format!("generation {g} routes to {}", backend_of(g)), "at": excerpt()}));
        }
        if g > attempted || failed.contains(&g) {
            anomalies.push(json!({"anomaly": "never-committed", "at": excerpt()}));
        }
        let (Some(rev), Some(rg)) = (v["revision"].as_u64(), revision_of.get(&g)) else {
            continue;
        };
        if rev < *rg {
            anomalies.push(json!({"anomaly": "served-before-its-revision", "committed_at": rg, "at": excerpt()}));
        } else if let Some((rh, h)) = committed.range(..=rev).next_back()
            && *h != g
            && rh > rg
        {
            anomalies.push(json!({"anomaly": "served-after-it-was-replaced", "replaced_by": h, "at_revision": rh, "at": excerpt()}));
        }
    }
    // Per node, in real time: an answer begun after another one ended never has an older revision.
    let mut floor: BTreeMap<u64, (u64, usize)> = BTreeMap::new(); // node → highest completed revision
    let mut starts: BTreeMap<usize, (u64, usize)> = BTreeMap::new(); // invoke index → floor then
    let mut events: Vec<(usize, bool, &Op)> = Vec::new();
    for op in &requests {
        events.push((op.invoke.index, true, op));
        if let Some(c) = &op.complete {
            events.push((c.index, false, op));
        }
    }
    events.sort_by_key(|(i, _, _)| *i);
    for (i, is_invoke, op) in events {
        let node = op.invoke.node.unwrap_or(0);
        if is_invoke {
            if let Some(f) = floor.get(&node) {
                starts.insert(i, *f);
            }
            continue;
        }
        let Some(rev) = op
            .complete
            .as_ref()
            .and_then(|c| c.value["revision"].as_u64())
        else {
            continue;
        };
        if let Some((before, at)) = starts.get(&op.invoke.index)
            && rev < *before
        {
            anomalies.push(json!({"anomaly": "node-revision-went-back", "node": node, "revision": rev, "earlier": before, "earlier_request": at, "request": i}));
        }
        let f = floor.entry(node).or_insert((rev, i));
        if rev > f.0 {
            *f = (rev, i);
        }
    }
    let (all_converged, last) = converged;
    if !all_converged {
        anomalies.push(json!({"anomaly": "not-converged", "why": format!("60 s after healing, not every node serves the store's last generation {final_generation}"), "last_served": last}));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in &anomalies {
        *counts
            .entry(a["anomaly"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    anomalies.truncate(50);
    Verdict {
        valid: if anomalies.is_empty() {
            Validity::True
        } else {
            Validity::False
        },
        ops: requests.len(),
        details: json!({
            "anomaly_counts": counts,
            "anomalies": anomalies,
            "answers": statuses,
            "checked_200s": checked,
            "generations_attempted": attempted,
            "generations_committed": revision_of.len(),
            "final_generation": final_generation,
            "last_served": last,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, pair};

    struct H(Vec<Event>);

    impl H {
        fn push(&mut self, process: i64, kind: Kind, f: &str, value: Value, revision: Option<u64>) {
            let mut e = Recorder::event(process, kind, f, None, value);
            e.index = self.0.len();
            e.revision = revision;
            e.node = Some(0);
            self.0.push(e);
        }
        fn write(&mut self, g: u64, revision: u64) {
            self.push(WRITER, Kind::Invoke, "generation", json!(g), None);
            self.push(WRITER, Kind::Ok, "generation", json!(g), Some(revision));
        }
        fn request(&mut self, g: u64, backend: &str, revision: u64) {
            let answer =
                json!({"status": 200, "generation": g, "backend": backend, "revision": revision});
            self.push(PROCESSES, Kind::Invoke, "request", json!(0), None);
            self.push(PROCESSES, Kind::Ok, "request", answer, None);
        }
        fn check(&self) -> Verdict {
            check(&pair(&self.0), (true, vec![]), 2)
        }
    }

    fn kinds(v: &Verdict) -> Vec<String> {
        v.details["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["anomaly"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn answers_consistent_with_the_committed_generations_pass() {
        let mut h = H(vec![]);
        h.write(1, 10);
        h.request(0, "r0", 9);
        h.request(1, "r1", 10);
        h.write(2, 12);
        h.request(1, "r1", 11);
        h.request(2, "r2", 12);
        let v = h.check();
        assert_eq!(v.valid, Validity::True, "{}", v.details);
        assert_eq!(v.details["checked_200s"], json!(4));
    }

    #[test]
    fn a_torn_answer_a_stale_label_and_a_node_going_back_are_each_caught() {
        let mut h = H(vec![]);
        h.write(1, 10);
        h.write(2, 12);
        // Generation 2's route with generation 1's endpoints.
        h.request(2, "r1", 12);
        // Generation 1 still served at a revision where generation 2 had replaced it.
        h.request(1, "r1", 13);
        // Generation 2 labelled with a revision before it committed.
        h.request(2, "r2", 11);
        let v = h.check();
        assert_eq!(v.valid, Validity::False);
        assert_eq!(
            kinds(&v),
            [
                "torn-revision",
                "served-after-it-was-replaced",
                "served-before-its-revision",
                "node-revision-went-back"
            ]
        );
    }

    #[test]
    fn a_node_that_never_converges_fails_the_run() {
        let mut h = H(vec![]);
        h.write(1, 10);
        let v = check(&pair(&h.0), (false, vec![json!({"generation": 0})]), 1);
        assert_eq!(kinds(&v), ["not-converged"]);
    }
}
