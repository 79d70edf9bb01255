//! `gwadm bench store`: the store workloads of `../shared/bench/store-bench` (same parameters: 1 KiB
//! values over a 10 000-key space, closed loop, warm-up then a measured window, medians of repetitions),
//! driven against gw through its public API, so that gw and etcd can be compared on one machine.
//! A put is an apply of one ConfigMap whose data holds the value; a get reads it back.

#![allow(clippy::disallowed_methods)] // a benchmark: it times what it measures

pub mod etcd_wan;
pub mod failover;
pub mod sessions;

use crate::error::{Error, Result};
use gw_client::{Client, Dialer, kind_ref};
use gw_proto as pb;
use gw_proto::config_client::ConfigClient;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Member receiving writes and reads (put the leader here).
    #[arg(long)]
    pub endpoint: String,
    /// A follower, for the get-lin-follower workload.
    #[arg(long)]
    pub follower: Option<String>,
    #[arg(
        long,
        default_value = "seq-put,conc-put,get-lin,get-ser,conc-get-lin,get-lin-follower,watch",
        value_delimiter = ','
    )]
    pub workloads: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unrecorded warm-up seconds per run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    #[arg(long, default_value_t = 10_000)]
    pub keyspace: u64,
    #[arg(long, default_value_t = 300)]
    pub watch_events: usize,
    #[arg(long, default_value_t = 10)]
    pub watch_interval_ms: u64,
    /// Watchers of the watch workload, on the one member (a hundred streams to a connection); its
    /// latencies are every watcher's, from each put's acknowledgement to the event's arrival.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// Wait until the 1-minute load average is below this before each run (0: do not wait).
    #[arg(long, default_value_t = 0.6)]
    pub load_gate: f64,
    /// Seconds of waiting for the load gate, over the whole benchmark.
    #[arg(long, default_value_t = 2700.0)]
    pub load_budget: f64,
}

struct RunResult {
    ops: u64,
    errors: u64,
    elapsed_s: f64,
    lat_us: Vec<f64>,
    load1: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 50.0)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

async fn connect(dialer: &Dialer, addr: &str) -> Result<ConfigClient<Channel>> {
    Ok(Client::config(dialer.connect(addr).await?))
}

fn configmap(name: &str, value: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "bench"}, "data": {"v": value}})
        .to_string()
}

fn value(size: usize, tag: u64) -> String {
    let t = format!("{tag:016x}");
    let mut v = "x".repeat(size);
    v.replace_range(..t.len().min(size), &t[..t.len().min(size)]);
    v
}

async fn put(c: &mut ConfigClient<Channel>, name: &str, value: &str) -> Result<(), tonic::Status> {
    let doc = pb::Document {
        json: configmap(name, value),
        source: "bench".into(),
        index: 1,
    };
    apply(c, vec![doc]).await
}

/// Applies documents in one transaction.
async fn apply(
    c: &mut ConfigClient<Channel>,
    documents: Vec<pb::Document>,
) -> Result<(), tonic::Status> {
    c.apply(pb::ApplyRequest {
        documents,
        dry_run: false,
    })
    .await
    .map(|_| ())
}

async fn get(
    c: &mut ConfigClient<Channel>,
    name: &str,
    serializable: bool,
) -> Result<(), tonic::Status> {
    let target = pb::ObjectRef {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: "bench".into(),
        name: name.into(),
    };
    let options = Some(pb::ReadOptions {
        serializable,
        version: String::new(),
        show_secret_values: false,
    });
    c.get(pb::GetRequest {
        target: Some(target),
        options,
    })
    .await
    .map(|_| ())
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get { serializable: bool },
}

/// Closed loop: `inflight` workers over `clients`, each issuing its next request when the previous one
/// completes; requests started during the warm-up are not recorded.
async fn closed_loop(
    clients: &[ConfigClient<Channel>],
    inflight: usize,
    a: &StoreBenchArgs,
    op: Op,
) -> RunResult {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let deadline = measure_from + Duration::from_secs_f64(a.duration);
    let load = load1();
    let mut tasks = Vec::new();
    for w in 0..inflight {
        let mut c = clients[w % clients.len()].clone();
        let (vs, ks) = (a.value_size, a.keyspace);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errs, mut n, mut last) = (Vec::new(), 0u64, 0u64, measure_from);
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let r = match op {
                    Op::Put => {
                        let k = (w as u64).wrapping_mul(1_000_003).wrapping_add(n) % ks;
                        put(&mut c, &format!("k{k:08}"), &value(vs, n)).await
                    }
                    Op::Get { serializable } => get(&mut c, "get-key", serializable).await,
                };
                let t1 = Instant::now();
                n += 1;
                if t0 >= measure_from {
                    match r {
                        Ok(()) => lat.push((t1 - t0).as_secs_f64() * 1e6),
                        Err(e) => {
                            if errs == 0 {
                                eprintln!("  worker {w}: {e}");
                            }
                            errs += 1;
                        }
                    }
                    last = t1;
                }
            }
            (lat, errs, last)
        }));
    }
    let (mut lat_us, mut errors, mut end) = (Vec::new(), 0, measure_from);
    for t in tasks {
        let (l, e, last) = t.await.expect("bench worker");
        lat_us.extend(l);
        errors += e;
        end = end.max(last);
    }
    lat_us.sort_by(|a, b| a.total_cmp(b));
    RunResult {
        ops: lat_us.len() as u64,
        errors,
        elapsed_s: (end - measure_from).as_secs_f64(),
        lat_us,
        load1: load,
    }
}

/// Watch delivery: one watcher on its own connection, paced puts on another; latency = event received
/// minus put acknowledged (can be negative).
async fn watch_run(a: &StoreBenchArgs, dialer: &Dialer, run: u64) -> Result<RunResult> {
    let mut writer = connect(dialer, &a.endpoint).await?;
    let ns = format!("bench-watch-{}-{run}", std::process::id());
    let load = load1();
    let n = a.watch_events;
    let mut receivers = Vec::with_capacity(a.watchers);
    let mut conn = connect(dialer, &a.endpoint).await?;
    for w in 0..a.watchers.max(1) {
        if w > 0 && w % 100 == 0 {
            conn = connect(dialer, &a.endpoint).await?;
        }
        let req = pb::WatchRequest {
            after_revision: None,
            kinds: vec![kind_ref("", "ConfigMap")],
            namespace: ns.clone(),
            bookmark_interval_ms: 0,
            show_secret_values: false,
        };
        let mut stream = conn
            .watch(req)
            .await
            .map_err(gw_client::Error::from)?
            .into_inner();
        // The first message (the snapshot) proves the watch is established.
        stream.message().await.map_err(gw_client::Error::from)?;
        receivers.push(tokio::spawn(async move {
            let mut got = std::collections::HashMap::new();
            while got.len() < n {
                match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                    Ok(Ok(Some(m))) => {
                        let at = Instant::now();
                        if let Some(pb::watch_response::Body::Events(ev)) = m.body {
                            for e in ev.events {
                                if let Some(seq) = e.target.and_then(|t| {
                                    t.name
                                        .strip_prefix("w")
                                        .and_then(|s| s.parse::<usize>().ok())
                                }) {
                                    got.entry(seq).or_insert(at);
                                }
                            }
                        }
                    }
                    _ => break,
                }
            }
            got
        }));
    }
    let mut ack = Vec::with_capacity(n);
    let started = Instant::now();
    let mut next = started;
    for seq in 0..n {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_millis(a.watch_interval_ms);
        let doc = pb::Document {
            json: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w{seq}"), "namespace": ns},
                         "data": {"v": value(a.value_size, seq as u64)}}).to_string(),
            source: "bench".into(),
            index: 1,
        };
        writer
            .apply(pb::ApplyRequest {
                documents: vec![doc],
                dry_run: false,
            })
            .await
            .map_err(gw_client::Error::from)?;
        ack.push(Instant::now());
    }
    let mut received = Vec::with_capacity(receivers.len());
    for r in receivers {
        received.push(r.await.map_err(|e| Error::Usage(e.to_string()))?);
    }
    // Events per second delivered: from the first put sent to the last event received (the puts are
    // paced, so this is the pace when every event arrives), over every watcher.
    let last = received
        .iter()
        .flat_map(|got| got.values())
        .max()
        .copied()
        .unwrap_or(started);
    let elapsed_s = last.saturating_duration_since(started).as_secs_f64();
    let mut lat_us: Vec<f64> = received
        .iter()
        .flat_map(|got| {
            (0..n).filter_map(|s| {
                got.get(&s).map(|r| {
                    if *r >= ack[s] {
                        (*r - ack[s]).as_secs_f64() * 1e6
                    } else {
                        -((ack[s] - *r).as_secs_f64() * 1e6)
                    }
                })
            })
        })
        .collect();
    lat_us.sort_by(|a, b| a.total_cmp(b));
    Ok(RunResult {
        ops: lat_us.len() as u64,
        errors: (n * received.len() - lat_us.len()) as u64,
        elapsed_s,
        lat_us,
        load1: load,
    })
}

/// Waits for the load gate (shared budget across runs).
async fn gate(a: &StoreBenchArgs, budget_used: &mut f64) {
    if a.load_gate <= 0.0 {
        return;
    }
    while load1() >= a.load_gate && *budget_used < a.load_budget {
        eprintln!("  waiting for load1 {:.2} < {}", load1(), a.load_gate);
        tokio::time::sleep(Duration::from_secs(20)).await;
        *budget_used += 20.0;
    }
}

pub async fn run(a: StoreBenchArgs, tls: &gw_client::TlsArgs) -> Result<()> {
    let dialer = Dialer::new(tls.security().map_err(Error::Usage)?);
    let mut conns = Vec::new();
    for _ in 0..a.conns.max(1) {
        conns.push(connect(&dialer, &a.endpoint).await?);
    }
    let one = vec![conns[0].clone()];
    put(&mut conns[0].clone(), "get-key", &value(a.value_size, 0))
        .await
        .map_err(gw_client::Error::from)?;
    let follower = match &a.follower {
        Some(f) => Some(vec![connect(&dialer, f).await?]),
        None => None,
    };
    let mut rows = Vec::new();
    let mut budget = 0.0;
    for w in &a.workloads {
        let mut reps = Vec::new();
        for rep in 0..a.reps {
            gate(&a, &mut budget).await;
            eprintln!("{w} rep {}", rep + 1);
            let r = match w.as_str() {
                "seq-put" => closed_loop(&one, 1, &a, Op::Put).await,
                "conc-put" => closed_loop(&conns, a.inflight, &a, Op::Put).await,
                "get-lin" => {
                    closed_loop(
                        &one,
                        1,
                        &a,
                        Op::Get {
                            serializable: false,
                        },
                    )
                    .await
                }
                "get-ser" => closed_loop(&one, 1, &a, Op::Get { serializable: true }).await,
                "conc-get-lin" => {
                    closed_loop(
                        &conns,
                        a.inflight,
                        &a,
                        Op::Get {
                            serializable: false,
                        },
                    )
                    .await
                }
                "get-lin-follower" => match &follower {
                    Some(f) => {
                        closed_loop(
                            f,
                            1,
                            &a,
                            Op::Get {
                                serializable: false,
                            },
                        )
                        .await
                    }
                    None => continue,
                },
                "watch" => watch_run(&a, &dialer, rep as u64).await?,
                other => return Err(Error::Usage(format!("unknown workload {other:?}"))),
            };
            reps.push(r);
        }
        if reps.is_empty() {
            continue;
        }
        let inflight = match w.as_str() {
            "conc-put" | "conc-get-lin" => a.inflight,
            _ => 1,
        };
        let ops_s = median(
            reps.iter()
                .map(|r| {
                    if r.elapsed_s > 0.0 {
                        r.ops as f64 / r.elapsed_s
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        let p = |q: f64| {
            median(
                reps.iter()
                    .map(|r| percentile(&r.lat_us, q) / 1000.0)
                    .collect(),
            )
        };
        rows.push(json!({
            "workload": w, "inflight": inflight, "ops_per_s": ops_s,
            "p50_ms": p(50.0), "p90_ms": p(90.0), "p99_ms": p(99.0),
            "errors": reps.iter().map(|r| r.errors).sum::<u64>(),
            "load1": reps.iter().map(|r| r.load1).collect::<Vec<_>>(),
        }));
    }
    println!(
        "| workload | in flight | ops/s | p50 ms | p90 ms | p99 ms | errors | load1 per rep |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let loads: Vec<String> = r["load1"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|l| format!("{:.2}", l.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r["workload"].as_str().unwrap_or(""),
            r["inflight"],
            r["ops_per_s"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p90_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["errors"],
            loads.join(" ")
        );
    }
    println!(
        "JSON: {}",
        json!({"bench": "store", "backend": "gw", "results": rows})
    );
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct PropagationArgs {
    /// Route changes to time.
    #[arg(long, default_value_t = 200)]
    pub applies: usize,
    /// Addresses of the gateway nodes to start (each on its own loopback address).
    #[arg(long, default_value = "127.0.0.2,127.0.0.3", value_delimiter = ',')]
    pub nodes: Vec<std::net::IpAddr>,
    /// Measure a mesh node instead: the route's parent is the Service (at its clusterIP,
    /// `MESH_SERVICE_IP`), served by one `gw-node --mesh`.
    #[arg(long, conflicts_with = "nodes")]
    pub mesh: bool,
    /// HTTPRoutes in the table besides the one changed (`bg-N`: a path each, ten to a hostname).
    #[arg(long, default_value_t = 0)]
    pub routes: usize,
}

/// Background route `i` of `bench propagation --routes`: host `h{i/10}.bg.example`, path `/r{i}`.
fn background_route(i: usize, parent: &serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": format!("bg-{i}"), "namespace": "prop"},
           "spec": {"parentRefs": [parent], "hostnames": [format!("h{}.bg.example", i / 10)],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/r{i}")}}],
                               "backendRefs": [{"name": "echo", "port": 80}]}]}})
}

/// Mean microseconds of `n` requests for `host` and `path`, one after another on one keep-alive
/// connection to `node` (`None` if one is not a 200).
async fn request_cost(node: std::net::SocketAddr, host: &str, path: &str, n: usize) -> Option<f64> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut s = BufReader::new(tokio::net::TcpStream::connect(node).await.ok()?);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let t0 = Instant::now();
    for _ in 0..n {
        s.get_mut().write_all(req.as_bytes()).await.ok()?;
        let (mut line, mut length, mut ok) = (String::new(), 0usize, false);
        loop {
            line.clear();
            s.read_line(&mut line).await.ok()?;
            if line.starts_with("HTTP/1.1 ") {
                ok = line.starts_with("HTTP/1.1 200");
            } else if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().ok()?;
            } else if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        s.read_exact(&mut body).await.ok()?;
        if !ok {
            return None;
        }
    }
    Some(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// A node's `gw_node_table_compile_seconds` (sum, count), from its `/metrics`.
async fn compile_seconds(admin: std::net::SocketAddr) -> Option<(f64, f64)> {
    let text = gw_testkit::procs::scrape(&admin.to_string()).await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((
        value("gw_node_table_compile_seconds_sum")?,
        value("gw_node_table_compile_seconds_count")?,
    ))
}

/// Mean milliseconds of the compilations between two readings of `compile_seconds`.
fn mean_compile_ms(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    match (before, after) {
        (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => Some((s1 - s0) / (n1 - n0) * 1e3),
        _ => None,
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The clusterIP of the Service whose mesh route `bench propagation --mesh` changes.
const MESH_SERVICE_IP: &str = "127.98.0.10";

/// The `x-generation` response header a node answers with, if it answers.
async fn generation_served(addr: std::net::SocketAddr) -> Option<u64> {
    let request = "GET / HTTP/1.1\r\nHost: prop.example\r\nConnection: close\r\n\r\n";
    let (head, _) = http_exchange(addr, request).await.ok()?;
    header(&head, "x-generation")?.parse().ok()
}

/// One HTTP/1.1 exchange on a new connection (`request` whole, with `Connection: close`): the
/// answer's head and body, read until the server closes.
async fn http_exchange(
    addr: std::net::SocketAddr,
    request: &str,
) -> std::io::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    Ok((head.to_string(), body.to_string()))
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn bench_document(index: usize, v: serde_json::Value) -> pb::Document {
    pb::Document {
        json: v.to_string(),
        source: "bench".into(),
        index: index as u32,
    }
}

/// The route whose `x-generation` response header tells which change a node serves.
fn generation_route(generation: usize, parent: &serde_json::Value) -> pb::Document {
    bench_document(
        1,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "prop", "namespace": "prop"},
               "spec": {"parentRefs": [parent], "rules": [{"filters": [{"type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"set": [{"name": "x-generation", "value": generation.to_string()}]}}],
                        "backendRefs": [{"name": "echo", "port": 80}]}]}}),
    )
}

/// What the propagation benchmarks apply first: GatewayClass and Gateway `prop` (listener on
/// `listen_port`), Service `echo` (at `service_ip`, or none) over the echo backend on `backend_port`,
/// and the route at generation 0.
fn propagation_config(
    listen_port: u16,
    parent: &serde_json::Value,
    service_ip: serde_json::Value,
    backend_port: u16,
) -> Vec<pb::Document> {
    vec![
        bench_document(
            1,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "prop"}, "spec": {"controllerName": "gw.dev/gateway-node"}}),
        ),
        bench_document(
            2,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "prop", "namespace": "prop"},
                      "spec": {"gatewayClassName": "prop", "listeners": [{"name": "http", "port": listen_port, "protocol": "HTTP"}]}}),
        ),
        bench_document(
            3,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "prop"}, "spec": {"clusterIP": service_ip, "ports": [{"name": "http", "port": 80}]}}),
        ),
        bench_document(
            4,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "echo", "namespace": "prop", "labels": {"kubernetes.io/service-name": "echo"}},
                      "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port}], "endpoints": [{"addresses": ["127.0.0.1"]}]}),
        ),
        generation_route(0, parent),
    ]
}

/// The echo backend of the propagation benchmarks' Service `prop/echo`, answering as pod `pod`.
async fn propagation_backend(pod: &str) -> Result<gw_testkit::echo::EchoServer> {
    gw_testkit::echo::start(gw_testkit::echo::EchoConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        pod: pod.into(),
        namespace: "prop".into(),
        h2c_only: false,
        log: false,
        tls: None,
    })
    .await
    .map_err(|e| anyhow::Error::from(e).into())
}

/// How long after the call each node (by its listener address) first served `generation`; `None` if
/// one did not within `limit`.
async fn served_by(
    addrs: Vec<std::net::SocketAddr>,
    generation: u64,
    limit: Duration,
) -> Option<Vec<Duration>> {
    let start = Instant::now();
    let mut took: Vec<Option<Duration>> = vec![None; addrs.len()];
    while took.iter().any(Option::is_none) {
        let pending: Vec<usize> = (0..addrs.len()).filter(|i| took[*i].is_none()).collect();
        let results =
            futures::future::join_all(pending.iter().map(|i| generation_served(addrs[*i]))).await;
        for (i, g) in pending.into_iter().zip(results) {
            if g == Some(generation) {
                took[i] = Some(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            return None;
        }
    }
    took.into_iter().collect()
}

/// The mean time the node at `admin` took to compile after each of `n` changes to `doc` (a label
/// set), each waited for.
async fn full_compile_ms(
    client: &Client,
    admin: std::net::SocketAddr,
    doc: &pb::Document,
    n: usize,
) -> Result<Option<f64>> {
    let before = compile_seconds(admin).await;
    for i in 0..n {
        let count = compile_seconds(admin).await.map_or(0.0, |c| c.1);
        let mut v: serde_json::Value = serde_json::from_str(&doc.json)
            .map_err(|e| Error::Usage(format!("the Service document: {e}")))?;
        v["metadata"]["labels"] = json!({"gw.dev/bench-touch": i.to_string()});
        client.apply(vec![bench_document(1, v)], false).await?;
        let start = Instant::now();
        while !compile_seconds(admin).await.is_some_and(|c| c.1 > count) {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::Usage(
                    "the node did not compile a changed Service within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(mean_compile_ms(before, compile_seconds(admin).await))
}

/// Waits until the store's applied revision has not moved for `quiet` (polled every 100 ms).
async fn settle(client: &Client, quiet: Duration, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let (mut last, mut since) = (None, Instant::now());
    while start.elapsed() < limit {
        let revision = client.member_status_at(0).await?.applied_revision;
        if last != Some(revision) {
            (last, since) = (Some(revision), Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Usage(format!(
        "the store's revision still moved after {limit:?}"
    )))
}

/// `gwadm bench propagation`: a one-member store, gateway nodes on distinct loopback addresses (or, with
/// `--mesh`, one mesh node) and an echo backend; each iteration changes a route (the generation it
/// returns in `x-generation`) and measures the time from the apply's acknowledgement until every node
/// serves the change.
pub async fn propagation(a: PropagationArgs) -> Result<()> {
    use gw_testkit::procs::{Children, bin, free_port};
    let dir = tempfile::Builder::new()
        .prefix("gw-prop-")
        .tempdir()
        .map_err(anyhow::Error::from)?;
    let (store_port, listen_port) = (free_port(), free_port());
    let store = format!("127.0.0.1:{store_port}");
    let mut children = Children::default();
    let pki = gw_testkit::pki::Pki::create(&dir.path().join("pki"))?;
    children.spawn_store(&store, None, dir.path(), &pki)?;
    let backend = propagation_backend("prop").await?;
    let mesh_ip: std::net::IpAddr = MESH_SERVICE_IP.parse().expect("literal");
    let nodes = if a.mesh {
        vec![mesh_ip]
    } else {
        a.nodes.clone()
    };
    let mut node_procs = Vec::new();
    for ip in &nodes {
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls = pki.issue(
            &format!("node-{ip}"),
            &gw_client::Identity::Node {
                class: "prop".into(),
                name: ip.to_string(),
            },
        )?;
        let mut cmd = std::process::Command::new(bin("gw-node")?);
        cmd.args(gw_client::TlsArgs::of(&tls).to_args())
            .args([
                "--store",
                &store,
                "--gateway-class",
                "prop",
                "--bind-address",
                &ip.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.path().join(format!("node-{ip}")));
        if a.mesh {
            cmd.arg("--mesh");
        }
        let pid = children.spawn(
            "gw-node",
            &dir.path().join(format!("node-{ip}.log")),
            &mut cmd,
        )?;
        node_procs.push((pid, admin));
    }
    let (parent, service_ip, listen_port) = if a.mesh {
        (
            json!({"group": "", "kind": "Service", "name": "echo", "port": 80}),
            json!(MESH_SERVICE_IP),
            80,
        )
    } else {
        (json!({"name": "prop"}), json!(null), listen_port)
    };
    let client = Client::new(
        std::slice::from_ref(&store),
        Duration::from_secs(20),
        &Dialer::new(pki.admin_security()),
    )?;
    let base = propagation_config(listen_port, &parent, service_ip, backend.addr.port());
    // The Service, changed later to time a compilation of every route.
    let service = base[2].clone();
    client.apply(base, false).await?;
    let addrs: Vec<std::net::SocketAddr> = nodes
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, listen_port))
        .collect();
    let wait_all = |generation: u64, limit: Duration| {
        let addrs = addrs.clone();
        async move {
            let each = served_by(addrs, generation, limit).await?;
            each.into_iter().max()
        }
    };
    wait_all(0, Duration::from_secs(30)).await.ok_or_else(|| {
        Error::Usage(format!(
            "the nodes did not serve the base config (logs in {})",
            dir.path().display()
        ))
    })?;
    let mut cost_before = None;
    if a.routes > 0 {
        // The background routes, 500 to an apply.
        cost_before = request_cost(addrs[0], "prop.example", "/", 2000).await;
        let t0 = Instant::now();
        let all: Vec<usize> = (0..a.routes).collect();
        for chunk in all.chunks(500) {
            let docs = chunk
                .iter()
                .enumerate()
                .map(|(k, i)| bench_document(k + 1, background_route(*i, &parent)))
                .collect();
            client.apply(docs, false).await?;
        }
        let applied = t0.elapsed();
        // The changed route at a generation of its own: served once the nodes have compiled
        // everything before it (and written the routes' statuses, each one a write of its own).
        let settled = a.applies as u64 + 1;
        client
            .apply(vec![generation_route(settled as usize, &parent)], false)
            .await?;
        wait_all(settled, Duration::from_secs(600))
            .await
            .ok_or_else(|| {
                Error::Usage(format!(
                    "the nodes did not serve the background routes within 600 s (logs in {})",
                    dir.path().display()
                ))
            })?;
        let served = t0.elapsed();
        // The statuses of the background routes are still being written (a hundred to a write):
        // timing starts once they are, not in their midst.
        settle(&client, Duration::from_secs(1), Duration::from_secs(600)).await?;
        eprintln!(
            "applied {} background routes in {applied:?}; served by every node after {served:?}; \
             their statuses written after {:?}",
            a.routes,
            t0.elapsed()
        );
    }
    let compiles_before = compile_seconds(node_procs[0].1).await;
    let (mut propagation, mut acks) = (Vec::new(), Vec::new());
    for generation in 1..=a.applies {
        let t0 = Instant::now();
        client
            .apply(vec![generation_route(generation, &parent)], false)
            .await?;
        acks.push(t0.elapsed().as_secs_f64() * 1e3);
        let took = wait_all(generation as u64, Duration::from_secs(60))
            .await
            .ok_or_else(|| {
                Error::Usage(format!(
                    "generation {generation} not served by every node within 60 s"
                ))
            })?;
        propagation.push(took.as_secs_f64() * 1e3);
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (
            percentile(&v, 50.0),
            percentile(&v, 90.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let (p50, p90, p99, max) = stats(propagation.clone());
    let (a50, _, a99, _) = stats(acks);
    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| apply acknowledged → served by all {} {} | {} | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} |",
        nodes.len(),
        if a.mesh {
            "mesh node(s)"
        } else {
            "gateway nodes"
        },
        a.applies
    );
    println!(
        "| apply latency (for reference) | {} | {a50:.2} | | {a99:.2} | |",
        a.applies
    );
    // The table's size and what it costs the first node: compilations while timing, memory, and
    // requests one after another (before the background routes, when there are some, and after).
    let compile_ms = mean_compile_ms(compiles_before, compile_seconds(node_procs[0].1).await);
    let rss = rss_mib(node_procs[0].0);
    let cost = request_cost(addrs[0], "prop.example", "/", 2000).await;
    let last = a.routes.saturating_sub(1);
    let deep = if a.routes > 0 {
        request_cost(
            addrs[0],
            &format!("h{}.bg.example", last / 10),
            &format!("/r{last}"),
            2000,
        )
        .await
    } else {
        None
    };
    // A change to anything but a route (the Service, relabelled) has every route compiled again.
    let full_ms = full_compile_ms(&client, node_procs[0].1, &service, 5).await?;
    let show =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |x| format!("{x:.digits$}"));
    println!();
    println!(
        "| routes in the table | mean compile ms (a route changed) | mean compile ms (the Service changed: every route) | node RSS MiB | request µs (prop.example), before → after | request µs (last background route) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} → {} | {} |",
        a.routes + 1,
        show(compile_ms, 2),
        show(full_ms, 2),
        show(rss, 1),
        show(cost_before, 1),
        show(cost, 1),
        show(deep, 1),
    );
    println!(
        "JSON: {}",
        json!({"bench": "propagation", "mesh": a.mesh, "nodes": nodes.len(), "applies": a.applies, "routes": a.routes + 1, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max, "apply_p50_ms": a50, "apply_p99_ms": a99, "compile_mean_ms": compile_ms, "full_compile_mean_ms": full_ms, "node_rss_mib": rss, "request_us_before": cost_before, "request_us": cost, "request_us_last_background": deep})
    );
    drop(children);
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct RegionsArgs {
    /// One-way delays between regions (`A:B=DELAY,...[,jitter=D][,loss=P%]`): one voting member per
    /// region, and a client in each region beside its member.
    #[arg(long, default_value = gw_testkit::wan::THREE_REGIONS)]
    pub wan: String,
    /// Operations of each kind to time.
    #[arg(long, default_value_t = 100)]
    pub ops: usize,
    /// Milliseconds to wait between two operations (0: back to back).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// Also a non-voting learner per region (a regional read replica), and reads from it.
    #[arg(long)]
    pub learners: bool,
    /// Session failovers to time (the proposing node's region taken in turn; 0: none).
    #[arg(long, default_value_t = 15)]
    pub failovers: usize,
    /// Then, with gw stopped, etcd over the same WAN (one member per region; `etcd` on PATH, root):
    /// its applies acknowledged, timed the same way.
    #[arg(long)]
    pub etcd: bool,
    /// Times to kill (SIGKILL) the leader and time, from the kill, the first apply acknowledged by the
    /// member of the next region (restarted before the next kill); with `--etcd`, etcd's leader as
    /// many times (a fresh cluster each time). 0: none.
    #[arg(long, default_value_t = 0)]
    pub leader_kills: usize,
}

/// Milliseconds from now until a call of `op` is first answered with success: a call is started
/// every 100 ms (each given up to 10 s) without waiting for the ones before, so that a call stuck
/// on a member that is gone does not hold the measure up; an error after a minute.
async fn until_ok<F, Fut, E>(mut op: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let t0 = Instant::now();
    let mut calls = futures::stream::FuturesUnordered::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut why = String::from("no answer");
    while t0.elapsed() < Duration::from_secs(60) {
        tokio::select! {
            _ = every.tick() => calls.push(tokio::time::timeout(Duration::from_secs(10), op())),
            Some(answer) = calls.next() => match answer {
                Ok(Ok(())) => return Ok(t0.elapsed().as_secs_f64() * 1e3),
                Ok(Err(e)) => why = e.to_string(),
                Err(_) => why = "no answer within 10 s".into(),
            },
        }
    }
    Err(Error::Usage(format!("no success within a minute: {why}")))
}

/// Rows of leader kills timed by the killed leader's region (sorted; regions without one left out),
/// then all of them together ("any").
fn kill_rows(
    measure: &str,
    regions: &[String],
    by_region: Vec<Vec<f64>>,
) -> Vec<(String, String, Vec<f64>, Option<f64>)> {
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let all = sorted(by_region.concat());
    let mut rows: Vec<_> = regions
        .iter()
        .zip(by_region)
        .filter(|(_, v)| !v.is_empty())
        .map(|(r, v)| (measure.to_string(), r.clone(), sorted(v), None))
        .collect();
    if !all.is_empty() {
        rows.push((measure.to_string(), "any".into(), all, None));
    }
    rows
}

/// The `etcd: leader killed` rows of `gwadm bench regions --etcd --leader-kills N`: etcd's leader
/// killed in `kills` fresh clusters, timed as gw's is (by the killed leader's region).
async fn etcd_leader_kills(
    wan: &gw_testkit::wan::Wan,
    regions: &[String],
    run: u32,
    kills: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut by_region = vec![Vec::new(); regions.len()];
    let v = value(100, 0);
    for _ in 0..kills {
        let mut etcd = etcd_wan::start(wan, regions, run).await?;
        let leader = etcd.leader(Duration::from_secs(60)).await?;
        let survivor = etcd.clients[(leader + 1) % regions.len()];
        etcd_wan::put(survivor, "regions-warm-up", &v).await?;
        etcd.kill(leader);
        by_region[leader].push(until_ok(|| etcd_wan::put(survivor, "regions-kill", &v)).await?);
    }
    Ok(by_region)
}

/// The floor of an apply acknowledged by a leader in `leader`: the round trip to the nearest
/// majority of one member per region (the leader and the nearest `majority - 1` others).
fn apply_floor_ms(matrix: &gw_testkit::wan::Matrix, regions: &[String], leader: &str) -> f64 {
    let mut to_others: Vec<Duration> = regions
        .iter()
        .filter(|r| *r != leader)
        .map(|r| matrix.delay(leader, r))
        .collect();
    to_others.sort();
    let majority = regions.len() / 2 + 1;
    2.0 * to_others[majority - 2].as_secs_f64() * 1e3
}

/// The `etcd: apply acknowledged` row of `gwadm bench regions --etcd`: etcd over the same WAN, puts
/// of the same size as gw's applies, from the leader's region, timed like gw's.
async fn etcd_applies(
    wan: &gw_testkit::wan::Wan,
    regions: &[String],
    run: u32,
    ops: usize,
    pause: Duration,
) -> Result<(String, String, Vec<f64>, Option<f64>)> {
    let etcd = etcd_wan::start(wan, regions, run).await?;
    let leader = etcd.leader(Duration::from_secs(60)).await?;
    let addr = etcd.clients[leader];
    let v = value(100, 0);
    etcd_wan::put(addr, "regions-warm-up", &v).await?;
    let times = timed(ops, pause, |i| {
        let (name, v) = (format!("regions-{}", i % 16), v.clone());
        async move { etcd_wan::put(addr, &name, &v).await }
    })
    .await?;
    let region = regions[leader].clone();
    let floor = apply_floor_ms(&wan.matrix, regions, &region);
    Ok((
        "etcd: apply acknowledged".into(),
        region,
        times,
        Some(floor),
    ))
}

/// Sorted milliseconds of `n` runs of `op`, `pause` apart.
async fn timed<F, Fut, E>(n: usize, pause: Duration, mut op: F) -> Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        op(i)
            .await
            .map_err(|e| Error::Usage(format!("operation {i}: {e}")))?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(pause).await;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

/// `gwadm bench regions`: a store with one member (and, with `--learners`, one learner) per region of
/// a simulated WAN (user-space delays, `gw_testkit::wan`), a client and a gateway node in each region
/// talking to its own member from their own addresses. Times applies acknowledged (from the leader's
/// region, to the leader) against the floor — the round trip from the leader to the nearest majority
/// —, each region's node serving the change after the acknowledgement, and linearizable (ReadIndex)
/// and serializable reads in every region, from its member and its learner.
pub async fn regions(a: RegionsArgs) -> Result<()> {
    use gw_testkit::cluster::{Cluster, ClusterOptions, WanLayout};
    use gw_testkit::procs::{Children, bin, free_port};
    use gw_testkit::wan::{Matrix, Wan};
    let matrix = Matrix::parse(&a.wan).map_err(Error::Usage)?;
    let regions: Vec<String> = matrix.regions().into_iter().collect();
    if regions.len() < 2 {
        return Err(Error::Usage("--wan names fewer than two regions".into()));
    }
    let wan = Wan::new(matrix.clone());
    let run = std::process::id() % 250;
    let opts = ClusterOptions {
        ip_prefix: Some(format!("127.66.{run}.")),
        wan: Some(WanLayout {
            wan: wan.clone(),
            regions: regions.clone(),
        }),
        ..Default::default()
    };
    let mut cluster = Cluster::start(regions.len() as u64, opts)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    // Learners: member n+1+i in region i, added through the leader.
    let mut learners = Vec::new();
    if a.learners {
        let admin = Client::new(
            &[cluster.addr(leader).to_string()],
            Duration::from_secs(30),
            &Dialer::new(cluster.pki().admin_security()),
        )?;
        for (i, region) in regions.iter().enumerate() {
            let id = (regions.len() + 1 + i) as u64;
            let (addr, peer_addr) = cluster.add_process_in(id, region)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.member_status(id).await.is_none() {
                if Instant::now() > deadline {
                    return Err(Error::Usage(format!("learner {id} did not start")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            admin
                .add_learner(pb::AddLearnerRequest {
                    id,
                    addr,
                    region: region.clone(),
                    peer_addr,
                })
                .await?;
            learners.push(id);
        }
    }
    let leader_region = regions[leader as usize - 1].clone();
    let floor_ms = apply_floor_ms(&matrix, &regions, &leader_region);
    let (mut clients, mut learner_clients) = (Vec::new(), Vec::new());
    for (i, region) in regions.iter().enumerate() {
        let ip: std::net::IpAddr = format!("127.65.{run}.{}", i + 1)
            .parse()
            .map_err(|e| Error::Usage(format!("{e}")))?;
        wan.place(ip, region);
        let dialer = Dialer::new(cluster.pki().admin_security()).source(Some(ip));
        clients.push(connect(&dialer, cluster.addr(i as u64 + 1)).await?);
        if let Some(id) = learners.get(i) {
            learner_clients.push(connect(&dialer, cluster.addr(*id)).await?);
        }
    }
    // A gateway node in every region, reaching the store from its own address there (`--region`: it
    // watches its region's member), and an echo backend behind the route they serve.
    let backend = propagation_backend("regions").await?;
    let listen_port = free_port();
    let mut children = Children::default();
    let mut nodes = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let source = format!("127.65.{run}.{}", 101 + i);
        wan.place(
            source.parse().map_err(|e| Error::Usage(format!("{e}")))?,
            region,
        );
        let bind = format!("127.64.{run}.{}", i + 1);
        let name = format!("node-{region}");
        let tls = cluster.pki().issue(
            &name,
            &gw_client::Identity::Node {
                class: "prop".into(),
                name: name.clone(),
            },
        )?;
        children.spawn(
            "gw-node",
            &cluster.dir.join(format!("{name}.log")),
            std::process::Command::new(bin("gw-node")?)
                .args(gw_client::TlsArgs::of(&tls).to_args())
                .args(["--store", &cluster.servers(), "--gateway-class", "prop"])
                .args(["--bind-address", &bind, "--region", region])
                .args(["--store-source-address", &source])
                .arg("--data-dir")
                .arg(cluster.dir.join(&name)),
        )?;
        nodes.push(std::net::SocketAddr::new(
            bind.parse().map_err(|e| Error::Usage(format!("{e}")))?,
            listen_port,
        ));
    }
    let mut rows = Vec::new();
    let leader_client = &mut clients[leader as usize - 1];
    let parent = json!({"name": "prop"});
    let config = propagation_config(listen_port, &parent, json!(null), backend.addr.port());
    apply(leader_client, config)
        .await
        .map_err(|e| Error::Usage(format!("the base config: {}", e.message())))?;
    served_by(nodes.clone(), 0, Duration::from_secs(60))
        .await
        .ok_or_else(|| {
            Error::Usage(format!(
                "the nodes did not serve the base config (logs in {})",
                cluster.dir.display()
            ))
        })?;
    let mut served: Vec<Vec<f64>> = vec![Vec::new(); regions.len()];
    for generation in 1..=a.ops {
        apply(leader_client, vec![generation_route(generation, &parent)])
            .await
            .map_err(|e| Error::Usage(format!("route {generation}: {}", e.message())))?;
        let each = served_by(nodes.clone(), generation as u64, Duration::from_secs(20))
            .await
            .ok_or_else(|| {
                Error::Usage(format!(
                    "route {generation} not served by every node within 20 s"
                ))
            })?;
        for (v, t) in served.iter_mut().zip(each) {
            v.push(t.as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
    }
    for (region, mut v) in regions.iter().zip(served) {
        v.sort_by(|a, b| a.total_cmp(b));
        // After the leader commits, its region's node can have it at once; another region's, one
        // one-way delay later (the commit reaching that region's member).
        let floor = matrix.delay(&leader_region, region).as_secs_f64() * 1e3;
        rows.push((
            "apply acknowledged → served by the node".to_string(),
            region.clone(),
            v,
            Some(floor),
        ));
    }
    let (committed, followed) = if a.failovers > 0 {
        let sticky = failover::Sticky::start(run).await?;
        let mut generation = a.ops;
        failover::failovers(
            leader_client,
            &nodes,
            &sticky,
            &parent,
            a.failovers,
            &mut generation,
        )
        .await?
    } else {
        Default::default()
    };
    // (A region whose node proposed no failover, or followed none, has no row.)
    let timed_in = |v: Vec<Vec<f64>>| regions.iter().zip(v).filter(|(_, v)| !v.is_empty());
    for (region, v) in timed_in(committed) {
        // The proposing node's call reaches the leader, which commits on its nearest majority.
        let floor = 2.0 * matrix.delay(region, &leader_region).as_secs_f64() * 1e3 + floor_ms;
        rows.push((
            "session failover committed (the proposing node's request)".into(),
            region.clone(),
            v,
            Some(floor),
        ));
    }
    for (region, v) in timed_in(followed) {
        rows.push((
            "session failover → served by the node (after another region's)".into(),
            region.clone(),
            v,
            None,
        ));
    }
    put(leader_client, "regions", "warm-up")
        .await
        .map_err(|e| Error::Usage(format!("the first apply: {}", e.message())))?;
    let v = value(100, 0);
    let pause = Duration::from_millis(a.pause_ms);
    let applies = timed(a.ops, pause, |i| {
        let mut c = leader_client.clone();
        let name = format!("regions-{}", i % 16);
        let v = v.clone();
        async move { put(&mut c, &name, &v).await }
    })
    .await?;
    rows.push((
        "apply acknowledged".to_string(),
        leader_region.clone(),
        applies,
        Some(floor_ms),
    ));
    for (i, region) in regions.iter().enumerate() {
        let role = if i as u64 + 1 == leader {
            "leader"
        } else {
            "follower"
        };
        let mut members = vec![(role, clients[i].clone())];
        members.extend(learner_clients.get(i).map(|c| ("learner", c.clone())));
        for (role, c) in members {
            for serializable in [false, true] {
                let reads = timed(a.ops, pause, |_| {
                    let mut c = c.clone();
                    async move { get(&mut c, "regions", serializable).await }
                })
                .await?;
                let kind = if serializable {
                    "serializable read"
                } else {
                    "linearizable read"
                };
                rows.push((format!("{kind} ({role})"), region.clone(), reads, None));
            }
        }
    }
    let kill_row = "leader killed → an apply acknowledged (by the next region's member)";
    let mut killed: Vec<Vec<f64>> = vec![Vec::new(); regions.len()];
    for _ in 0..a.leader_kills {
        let victim = cluster.wait_for_leader(Duration::from_secs(60)).await?;
        let survivor = &clients[victim as usize % regions.len()];
        cluster.kill(victim);
        let ms = until_ok(|| {
            let mut c = survivor.clone();
            let v = v.clone();
            async move { put(&mut c, "regions-kill", &v).await }
        })
        .await?;
        killed[victim as usize - 1].push(ms);
        cluster.spawn(victim)?;
        let revision = cluster
            .member_status(victim % regions.len() as u64 + 1)
            .await;
        if let Some(r) = revision {
            cluster
                .wait_for_revision(victim, r.applied_revision, Duration::from_secs(60))
                .await?;
        }
    }
    rows.extend(kill_rows(kill_row, &regions, killed));
    drop(children);
    drop(cluster);
    if a.etcd {
        rows.push(etcd_applies(&wan, &regions, run, a.ops, pause).await?);
        let killed = etcd_leader_kills(&wan, &regions, run, a.leader_kills).await?;
        rows.extend(kill_rows(&format!("etcd: {kill_row}"), &regions, killed));
    }
    println!(
        "WAN (one-way): {}; leader in {leader_region}; floor of an apply: {floor_ms:.1} ms",
        a.wan
    );
    println!("| measure | region | n | p50 ms | p99 ms | floor ms | p50 / floor |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut json_rows = Vec::new();
    for (measure, region, v, floor) in &rows {
        let (p50, p99) = (percentile(v, 50.0), percentile(v, 99.0));
        let (f, ratio) = match floor {
            Some(f) if *f > 0.0 => (format!("{f:.1}"), format!("{:.2}", p50 / f)),
            Some(f) => (format!("{f:.1}"), String::new()),
            None => (String::new(), String::new()),
        };
        println!(
            "| {measure} | {region} | {} | {p50:.1} | {p99:.1} | {f} | {ratio} |",
            v.len()
        );
        json_rows.push(json!({"measure": measure, "region": region, "n": v.len(), "p50_ms": p50, "p99_ms": p99, "floor_ms": floor}));
    }
    println!(
        "JSON: {}",
        json!({"bench": "regions", "wan": a.wan, "pause_ms": a.pause_ms, "leader_region": leader_region, "rows": json_rows})
    );
    Ok(())
}
