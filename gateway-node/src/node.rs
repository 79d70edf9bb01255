//! A gateway node: configuration (flags of `gw-node`), and the tasks it runs — the watch client, the
//! snapshot persister, the compile loop that swaps routing tables and reconciles sockets, the status
//! writer, the admin endpoint.

use crate::access_log::AccessLog;
use crate::admin::{self, NodeState};
use crate::compile::mesh::{MESH_CONTROLLER, MeshOptions};
use crate::compile::{Addressing, CompileOptions, Memo, Statuses, compile_with};
use crate::health_check;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry;
use crate::server::{Limits, Sockets};
use crate::session::{SessionOptions, Sessions};
use crate::snapshot::Snapshot;
use crate::status;
use crate::table::{Health, Locality, Placement, RoutingTable};
use crate::watcher::{self, WatchHealth};
use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use gw_client::{Client, clock};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gw-node",
    version,
    about = "A gw gateway node: serves the Gateways of one GatewayClass from the store's committed state"
)]
pub struct NodeConfig {
    /// Store members (HOST:PORT, comma-separated), tried in turn.
    #[arg(long, env = "GW_SERVER", value_delimiter = ',', required = true)]
    pub store: Vec<String>,
    /// Mutual TLS with the store: the CA, and this node's certificate, which names
    /// `spiffe://gw/node/<--gateway-class>/NAME` (see `gwadm pki`).
    #[command(flatten)]
    pub tls: gw_client::TlsArgs,
    /// Directory where the node keeps the last committed snapshot it served.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The GatewayClass whose Gateways this node serves (with `--mesh`: the mesh's name, which
    /// names its status-writer lease and its nodes' certificates).
    #[arg(long)]
    pub gateway_class: String,
    /// The `spec.controllerName` gw answers to (a mesh node's is `gw.dev/mesh`).
    #[arg(long, default_value = "gw.dev/gateway-node")]
    pub controller_name: String,
    /// Run as a node-local mesh proxy (GAMMA) instead of a gateway: serve every Service at its
    /// address (its clusterIP, else one from `--service-cidr`) on each of its ports, through the
    /// HTTPRoutes and GRPCRoutes whose parentRef is the Service.
    #[arg(long)]
    pub mesh: bool,
    /// Addresses for Services without a clusterIP (a mesh node), as an IPv4 CIDR.
    #[arg(long, default_value = "127.96.0.0/16", value_parser = parse_cidr)]
    pub service_cidr: (Ipv4Addr, Ipv4Addr),
    /// Address every listener is bound to (shared addressing).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Connections to the store leave from this address (default: the system's choice), e.g. so that
    /// firewall rules can tell this node's traffic apart.
    #[arg(long)]
    pub store_source_address: Option<IpAddr>,
    /// Connections to backends (and their health checks) leave from this address (default: the
    /// system's choice), e.g. so that firewall rules can tell this node's traffic apart.
    #[arg(long)]
    pub upstream_source_address: Option<IpAddr>,
    /// Check every endpoint of the routing table with a TCP connection this often (milliseconds; 0:
    /// no active health checks). An endpoint that does not accept one is left until one connects
    /// again, and a session bound to it fails over (README "Health checks").
    #[arg(long, default_value_t = 0)]
    pub health_check_interval_ms: u64,
    /// How long a health check's connection may take (milliseconds).
    #[arg(long, default_value_t = 1_000)]
    pub health_check_timeout_ms: u64,
    /// Give each Gateway its own IPv4 address from FIRST-LAST instead (e.g. 127.1.0.1-127.1.0.254).
    #[arg(long, value_parser = parse_pool)]
    pub address_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Addresses Gateway status reports with shared addressing (default: the bind address, or
    /// 127.0.0.1 when binding every address).
    #[arg(long, value_delimiter = ',')]
    pub advertise_address: Vec<IpAddr>,
    /// This node's region: its watch prefers the store members of this region, and its requests
    /// the endpoints of this region (the EndpointSlice's `topology.kubernetes.io/region` label, else
    /// its source cluster's region).
    #[arg(long, default_value = "")]
    pub region: String,
    /// This node's zone: its requests prefer the endpoints of this zone (EndpointSlice `zone`, or
    /// topology hints naming it), then of its region, then the rest.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Admin endpoint (HOST:PORT): /status, /metrics, /healthz.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Name of this node, under which it registers (default: its certificate's name; with
    /// `--insecure`, host name and bind address).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Worker threads of the data plane (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Connections open at once on one listener socket; past it, new ones wait in the backlog.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Seconds a client has for the TLS handshake and for each HTTP/1.1 request head (an HTTP/1.1
    /// connection idle this long between requests is closed too).
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds after which a connection that moves no byte is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Write an access log line per request (JSON, README "Access log") to this file; `-`: stdout.
    #[arg(long)]
    pub access_log: Option<String>,
    /// The share of requests logged (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub access_log_sample: f64,
    /// Session entries this node proposes to the store at most per second (each is one replicated
    /// write); past it, a returning session binds by its token alone until a later request.
    #[arg(long, default_value_t = 1_000)]
    pub session_creations_per_second: u64,

    /// FAULT for the conformance harness's self-test: serve `Exact` path matches as `PathPrefix`.
    #[arg(long, hide = true, env = "GW_FAULT_EXACT_AS_PREFIX")]
    pub fault_exact_as_prefix: bool,
    /// NULL CONTROL for the fault-injection suite, never for production: when a session's backend is
    /// gone, follow this node's own pick instead of the committed failover.
    #[arg(long, hide = true, env = "GW_UNSAFE_LOCAL_FAILOVER")]
    pub unsafe_local_failover: bool,
    /// NULL CONTROL for the fault-injection suite, never for production: serve each part of a
    /// multi-object revision on its own before the whole (a torn revision).
    #[arg(long, hide = true, env = "GW_UNSAFE_TORN_REVISIONS")]
    pub unsafe_torn_revisions: bool,
}

fn parse_pool(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 127.1.0.1-127.1.0.254")?;
    let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if a > b {
        return Err("the pool's first address is after its last".into());
    }
    Ok((a, b))
}

/// An IPv4 CIDR as its first and last usable address (the network and broadcast addresses left out
/// when the block has more than two).
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (net, bits) = s
        .split_once('/')
        .ok_or("expected ADDRESS/BITS, e.g. 127.96.0.0/16")?;
    let net: Ipv4Addr = net.trim().parse().map_err(|e| format!("{net}: {e}"))?;
    let bits: u32 = bits
        .trim()
        .parse()
        .ok()
        .filter(|b| *b <= 32)
        .ok_or_else(|| format!("{bits}: the prefix length must be 0 to 32"))?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let (first, last) = (u32::from(net) & mask, u32::from(net) | !mask);
    let (first, last) = if last - first > 1 {
        (first + 1, last - 1)
    } else {
        (first, last)
    };
    Ok((Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.gateway_class.is_empty() {
            return Err("--gateway-class must not be empty".into());
        }
        if self.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        if self.health_check_interval_ms > 0 && self.health_check_timeout_ms == 0 {
            return Err("--health-check-timeout-ms must be positive".into());
        }
        if self.max_connections == 0 || self.header_read_timeout == 0 || self.idle_timeout == 0 {
            return Err(
                "--max-connections, --header-read-timeout and --idle-timeout must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// The TLS material; a node's certificate must be for this node's class (and name, when
    /// `--node-name` is given: the node registers under it).
    pub fn security(&self) -> Result<gw_client::Security, String> {
        let s = self.tls.security()?;
        match s.identity() {
            None => Ok(s),
            Some(gw_client::Identity::Node { name, .. })
                if self.node_name.as_ref().is_some_and(|n| n != &name) =>
            {
                Err(format!(
                    "--tls-cert names node {name:?}, but --node-name is {:?} (a node registers under its certificate's name)",
                    self.node_name.as_deref().unwrap_or("")
                ))
            }
            Some(gw_client::Identity::Node { class, .. }) if class == self.gateway_class => Ok(s),
            Some(other) => Err(format!(
                "--tls-cert names {other}, but this node serves GatewayClass {:?} (issue one with `gwadm pki issue node --class {} --name NAME`)",
                self.gateway_class, self.gateway_class
            )),
        }
    }

    pub fn addressing(&self) -> Addressing {
        match self.address_pool {
            Some((first, last)) => Addressing::Pool { first, last },
            None => {
                let advertised = if !self.advertise_address.is_empty() {
                    self.advertise_address.clone()
                } else if self.bind_address.is_unspecified() {
                    vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
                } else {
                    vec![self.bind_address]
                };
                Addressing::Shared {
                    bind: self.bind_address,
                    advertised,
                }
            }
        }
    }

    /// The controller name its statuses carry: a mesh node's is the mesh's.
    pub fn controller(&self) -> String {
        if self.mesh {
            MESH_CONTROLLER.to_string()
        } else {
            self.controller_name.clone()
        }
    }

    /// The node's name: `--node-name`, else its certificate's, else host name and bind address.
    pub fn name(&self, security: &gw_client::Security) -> String {
        if let Some(gw_client::Identity::Node { name, .. }) = security.identity() {
            return name.clone();
        }
        self.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "node".into());
            format!("{}-{}", host.trim(), self.bind_address)
        })
    }
}

/// Runs a node until the process is told to stop.
#[allow(clippy::disallowed_methods)] // the composition root: the node's monotonic start time
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let security = cfg.security().map_err(anyhow::Error::msg)?;
    if matches!(security, gw_client::Security::Insecure) {
        tracing::warn!("--insecure: plaintext to the store, no authentication");
    }
    if let Some(f) = gw_client::clock::skew_from_env(&cfg.name(&security)) {
        tracing::warn!(file = %f.display(), "TEST ONLY: the wall clock follows a skew file");
    }
    let client = Client::new(
        &cfg.store,
        Duration::from_secs(2),
        &gw_client::Dialer::new(security.clone()).source(cfg.store_source_address),
    )?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let initial = watcher::load(&cfg.data_dir).unwrap_or_default();
    if initial.revision > 0 {
        tracing::info!(
            revision = initial.revision,
            objects = initial.objects.len(),
            "serving the persisted snapshot until the store answers"
        );
    }
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let (affinity_tx, affinity_rx) = watch::channel(Arc::new(Snapshot::default()));
    let affinity_health = Arc::new(WatchHealth::default());
    tokio::spawn(watcher::run(
        client.clone(),
        Snapshot::default(),
        watcher::kinds(true),
        affinity_tx,
        affinity_health.clone(),
        started,
        false,
    ));
    let health = Arc::new(WatchHealth::default());
    let sessions = Arc::new(Sessions::new(
        (affinity_rx, affinity_health.clone(), started),
        &client,
        metrics.clone(),
        SessionOptions {
            creations_per_second: cfg.session_creations_per_second,
            local_failover: cfg.unsafe_local_failover,
            probes: health.clone(),
        },
    ));
    tokio::spawn(sessions.clone().run_batches());
    let mut proxy = Proxy::new(table.clone(), metrics.clone(), Some(sessions.clone()))
        .with_upstream_source(cfg.upstream_source_address);
    if let Some(path) = &cfg.access_log {
        let log = AccessLog::open(path, cfg.access_log_sample, metrics.clone())
            .with_context(|| format!("opening the access log {path}"))?;
        proxy = proxy.with_access_log(Arc::new(log));
    }
    let proxy = Arc::new(proxy);
    let endpoint_health = Arc::new(match cfg.health_check_interval_ms {
        0 => Health::default(),
        _ => Health::with_checks(),
    });
    if cfg.health_check_interval_ms > 0 {
        tokio::spawn(health_check::run(
            endpoint_health.clone(),
            health_check::Checks {
                interval: Duration::from_millis(cfg.health_check_interval_ms),
                timeout: Duration::from_millis(cfg.health_check_timeout_ms),
                source: cfg.upstream_source_address,
            },
        ));
    }
    let writer = Arc::new(AtomicBool::new(false));
    let state = Arc::new(NodeState {
        name: cfg.name(&security),
        gateway_class: cfg.gateway_class.clone(),
        region: cfg.region.clone(),
        zone: cfg.zone.clone(),
        endpoint_health: endpoint_health.clone(),
        started,
        store: client.servers().to_vec(),
        revision_served: Default::default(),
        status_writer: writer.clone(),
        watch: health.clone(),
        sockets: Default::default(),
        failed_sockets: Default::default(),
        metrics: metrics.clone(),
        admin: cfg.admin,
        sessions: sessions.clone(),
        started_ms: clock::now_ms(),
        serving_since_ms: Default::default(),
        table_changed: Default::default(),
    });

    let (snap_tx, snap_rx) = watch::channel(Arc::new(initial.clone()));
    tokio::spawn(watcher::run(
        client.clone(),
        initial,
        watcher::kinds(false),
        snap_tx,
        health.clone(),
        started,
        cfg.unsafe_torn_revisions,
    ));
    tokio::spawn(watcher::persist(cfg.data_dir.clone(), snap_rx.clone()));
    // With a region, the watches follow the nearest member: of its own region first.
    if !cfg.region.is_empty() {
        tokio::spawn(watcher::follow_locality(
            client.clone(),
            cfg.region.clone(),
            [health, affinity_health],
        ));
    }
    tokio::spawn(sessions.follow_keys(client.clone(), snap_rx.clone()));
    let (desired_tx, desired_rx) =
        watch::channel(Arc::new((Arc::new(Snapshot::default()), Statuses::new())));
    let template = CompileOptions {
        controller_name: cfg.controller(),
        gateway_class: cfg.gateway_class.clone(),
        addressing: cfg.addressing(),
        now_ms: 0,
        fault_exact_as_prefix: cfg.fault_exact_as_prefix,
        mesh: cfg.mesh.then_some(MeshOptions {
            service_cidr: cfg.service_cidr,
        }),
        placement: Placement {
            locality: Locality {
                region: cfg.region.clone(),
                zone: cfg.zone.clone(),
            },
            health: endpoint_health,
        },
    };
    tokio::spawn(compile_loop(
        snap_rx,
        template,
        table,
        Sockets::new(
            proxy,
            Limits {
                max_connections: cfg.max_connections,
                header_read_timeout: Duration::from_secs(cfg.header_read_timeout),
                idle_timeout: Duration::from_secs(cfg.idle_timeout),
            },
        ),
        desired_tx,
        state.clone(),
    ));
    tokio::spawn(registry::run(client.clone(), state.clone()));
    tokio::spawn(status::run(
        client.clone(),
        state.name.clone(),
        cfg.gateway_class.clone(),
        desired_rx,
        writer,
    ));
    if let Some(addr) = cfg.admin {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(addr, state).await {
                tracing::error!(%addr, error = %e, "admin endpoint failed");
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    registry::deregister(&client, &state.name).await;
    Ok(())
}

/// Compiles every committed state the watch publishes (coalescing bursts), swaps the routing table
/// atomically (requests in flight keep the table they started with), and reconciles sockets.
#[allow(clippy::disallowed_methods)] // runtime: times each compilation, for the metrics
async fn compile_loop(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    template: CompileOptions,
    table: Arc<ArcSwap<RoutingTable>>,
    mut sockets: Sockets,
    desired: watch::Sender<status::Desired>,
    state: Arc<NodeState>,
) {
    let mut memo = Some(Memo::default());
    loop {
        let snap = rx.borrow_and_update().clone();
        let opts = CompileOptions {
            now_ms: clock::now_ms(),
            ..template.clone()
        };
        let s2 = snap.clone();
        let mut kept = memo.take().unwrap_or_default();
        let timed = move || {
            let start = Instant::now();
            let c = compile_with(&s2, &opts, &mut kept);
            (c, kept, start.elapsed())
        };
        // A compilation that panicked leaves nothing kept: the next one starts from scratch.
        let compiled = match tokio::task::spawn_blocking(timed).await {
            Ok((c, kept, took)) => {
                state.metrics.compile_seconds.observe(took.as_secs_f64());
                memo = Some(kept);
                Ok(c)
            }
            Err(e) => Err(e),
        };
        let compiled = match compiled {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "compilation panicked; keeping the previous table");
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        table.store(Arc::new(compiled.table));
        sockets.reconcile(&table.load());
        if state.revision_served.swap(snap.revision, Ordering::SeqCst) != snap.revision {
            state
                .serving_since_ms
                .store(clock::now_ms(), Ordering::SeqCst);
        }
        state.metrics.revision_served.set(snap.revision);
        state.metrics.table_swaps.inc();
        *state.sockets.lock().unwrap_or_else(|p| p.into_inner()) =
            table.load().sockets.keys().map(|a| a.to_string()).collect();
        *state
            .failed_sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sockets
            .failed
            .iter()
            .map(|(a, e)| (a.to_string(), e.clone()))
            .collect();
        state.table_changed.notify_one();
        let _ = desired.send(Arc::new((snap, compiled.statuses)));
        if rx.changed().await.is_err() {
            return;
        }
    }
}
