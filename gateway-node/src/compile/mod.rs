//! The compiler: committed objects at one revision → the routing table this node serves and the status
//! every object should have. Pure: the clock reading and addressing come in through `CompileOptions`,
//! so the same inputs give the same table and statuses on every node.

mod backend_tls;
pub mod backends;
pub mod conditions;
mod gateways;
pub mod index;
pub mod mesh;
mod routes;
mod sessions;
pub mod tls;

use crate::snapshot::Snapshot;
use crate::table::{BackendTarget, HostIndex, ListenerTable, Placement, RoutingTable, SocketTable};
use conditions::{Cond, render};
use gw_model::ObjectKey;
use gw_model::gateway::GatewayClassSpec;
use gw_model::kinds::GATEWAY_GROUP;
pub use index::Index;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// How Gateways get addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// Every Gateway is served on `bind`; `advertised` (default: `bind`) is what Gateway status reports,
    /// e.g. the addresses of every node serving the class.
    Shared {
        bind: IpAddr,
        advertised: Vec<IpAddr>,
    },
    /// Each Gateway gets its own IPv4 address from `first..=last`: a requested `spec.addresses` entry in
    /// the pool, else the address its status already holds, else the first free one.
    Pool { first: Ipv4Addr, last: Ipv4Addr },
}

#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// `spec.controllerName` of the GatewayClasses gw implements.
    pub controller_name: String,
    /// The GatewayClass this node serves.
    pub gateway_class: String,
    pub addressing: Addressing,
    /// The wall clock, for `lastTransitionTime` of conditions that change.
    pub now_ms: u64,
    /// A deliberate fault (see `NodeConfig::fault_exact_as_prefix`).
    pub fault_exact_as_prefix: bool,
    /// A mesh node: it serves the mesh's Services instead of the class's Gateways.
    pub mesh: Option<mesh::MeshOptions>,
    /// Where the node is, and the health of the endpoints it sends to.
    pub placement: Placement,
}

/// A status the store should hold, with the preconditions of the write.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredStatus {
    /// Shared with the compilation kept for the next one (see `Memo`).
    pub status: Arc<Value>,
    pub generation: i64,
    pub uid: Arc<str>,
}

impl DesiredStatus {
    pub fn new(status: Value, meta: index::Meta) -> DesiredStatus {
        DesiredStatus {
            status: Arc::new(status),
            generation: meta.generation,
            uid: meta.uid.into(),
        }
    }
}

/// The status every object should have, by key (shared with what a compilation keeps: copying one
/// costs two reference counts, not a copy of the key).
pub type Statuses = BTreeMap<Arc<ObjectKey>, DesiredStatus>;

pub struct Compiled {
    pub table: RoutingTable,
    pub statuses: Statuses,
}

/// The GatewayClass annotation that, set to `"true"`, has its nodes add the revision of the routing
/// table that served each response as the `gw-revision` header.
pub const REVISION_HEADER_ANNOTATION: &str = "gw.dev/revision-header";

/// What a compilation keeps for the next one: each HTTPRoute's and GRPCRoute's compiled rules, where
/// they went and their status, with the inputs they came from. The next compilation compiles again
/// only the routes whose objects changed, as long as every other object and the options (the clock
/// aside) are the same (or compile alike: `index::compiles_alike`); when anything else changed, it
/// compiles every route.
#[derive(Default)]
pub struct Memo {
    /// The options and every other object, as the kept routes were compiled with them (holding the
    /// objects also keeps their addresses from being reused by new ones).
    inputs: Option<(CompileOptions, Vec<Arc<Value>>)>,
    routes: routes::Kept,
}

impl Memo {
    /// Drops the kept routes unless everything they were compiled from, but their own objects, is
    /// unchanged.
    fn check(&mut self, snap: &Snapshot, opts: &CompileOptions) {
        let others = || {
            snap.objects
                .iter()
                .filter(|(k, _)| {
                    !(k.group == GATEWAY_GROUP && routes::MEMOIZED.contains(&k.kind.as_str()))
                })
                .map(|(_, o)| o)
        };
        // Whether every other object is the same (`Some(true)`: alike, some in new `Arc`s).
        let same = self.inputs.as_ref().and_then(|(o, objects)| {
            let (mut now, mut kept, mut renewed) = (others(), objects.iter(), false);
            loop {
                match (now.next(), kept.next()) {
                    (None, None) => break same_but_clock(o, opts).then_some(renewed),
                    (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                    (Some(a), Some(b)) if index::compiles_alike(a, b) => renewed = true,
                    _ => break None,
                }
            }
        });
        if same.is_none() {
            self.routes.clear();
        }
        if same != Some(false) {
            self.inputs = Some((opts.clone(), others().cloned().collect()));
        }
    }
}

/// Whether two option sets compile alike, whatever their clocks.
fn same_but_clock(a: &CompileOptions, b: &CompileOptions) -> bool {
    let CompileOptions {
        controller_name,
        gateway_class,
        addressing,
        now_ms: _,
        fault_exact_as_prefix,
        mesh,
        placement,
    } = a;
    *controller_name == b.controller_name
        && *gateway_class == b.gateway_class
        && *addressing == b.addressing
        && *fault_exact_as_prefix == b.fault_exact_as_prefix
        && *mesh == b.mesh
        && placement.locality == b.placement.locality
        && Arc::ptr_eq(&placement.health, &b.placement.health)
}

/// Compiles one revision from scratch.
pub fn compile(snap: &Snapshot, opts: &CompileOptions) -> Compiled {
    compile_with(snap, opts, &mut Memo::default())
}

/// Compiles one revision, reusing what `memo` kept of the last one (and keeping this one's).
pub fn compile_with(snap: &Snapshot, opts: &CompileOptions, memo: &mut Memo) -> Compiled {
    memo.check(snap, opts);
    let idx = Index::new(snap);
    // Besides the routes' kept statuses: in order (a later status for a key replaces an earlier one).
    let mut statuses = Vec::new();
    let mut class_accepted = false;
    let mut revision_header = false;
    for (key, obj, meta) in idx.of_kind(GATEWAY_GROUP, "GatewayClass") {
        let Some(spec) = index::typed::<GatewayClassSpec>(obj, Some("spec")) else {
            continue;
        };
        // Every class of gw's controller gets its Accepted condition (the suite creates its own classes);
        // only the configured one has its Gateways served by this node.
        if spec.controller_name != opts.controller_name {
            continue;
        }
        let cond = if spec.parameters_ref.is_some() {
            Cond::fail(
                "Accepted",
                "InvalidParameters",
                "gw's GatewayClass takes no parametersRef",
            )
        } else {
            Cond::ok("Accepted", "Accepted", "handled by gw")
        };
        if key.name == opts.gateway_class {
            class_accepted = cond.status;
            revision_header = obj["metadata"]["annotations"][REVISION_HEADER_ANNOTATION] == "true";
        }
        let prev = obj.get("status").cloned().unwrap_or(Value::Null);
        let mut status = prev.as_object().cloned().unwrap_or_default();
        status.insert(
            "conditions".into(),
            render(&[cond], &prev["conditions"], meta.generation, opts.now_ms),
        );
        statuses.push((
            Arc::new(key.clone()),
            DesiredStatus::new(Value::Object(status), meta),
        ));
    }

    let mut gateways = match &opts.mesh {
        Some(m) => mesh::services(&idx, m),
        None => gateways::collect(&idx, opts, class_accepted),
    };
    let mut upstreams = backends::Upstreams::new(
        backend_tls::BackendTlsPolicies::collect(&idx),
        opts.placement.clone(),
    );
    let policies = sessions::policy_statuses(&idx, &opts.controller_name, opts.now_ms);
    routes::process(
        &idx,
        &mut gateways,
        &mut upstreams,
        opts,
        &mut memo.routes,
        &mut statuses,
    );
    if opts.mesh.is_some() {
        mesh::default_routes(&idx, &mut gateways, &mut upstreams);
    }
    let tls_policies = upstreams.tls_policies.statuses(
        &idx,
        &opts.controller_name,
        opts.now_ms,
        &tls_policy_users(&gateways),
    );
    let others = policies.into_iter().chain(tls_policies);
    statuses.extend(
        others.map(|(key, status, meta)| (Arc::new(key), DesiredStatus::new(status, meta))),
    );
    for g in &gateways {
        let status = if g.is_service() {
            let Some(service) = snap.objects.get(&g.key) else {
                continue;
            };
            match mesh::status(g, service, opts.now_ms) {
                Some(s) => s,
                None => continue,
            }
        } else {
            gateways::status(g, opts.now_ms)
        };
        statuses.push((
            Arc::new(g.key.clone()),
            DesiredStatus::new(status, g.meta.clone()),
        ));
    }
    let mut table = build_table(snap.revision, gateways);
    table.revision_header = revision_header;
    if opts.mesh.is_some() {
        table.callers = mesh::callers(snap);
    }
    let mut all = memo.routes.statuses.clone();
    all.extend(statuses);
    Compiled {
        table,
        statuses: all,
    }
}

/// The Gateways whose routes send to a Service port with a BackendTLSPolicy, by policy
/// (`namespace/name`): the policies' ancestors.
fn tls_policy_users(gateways: &[gateways::GatewayCtx]) -> HashMap<String, BTreeSet<ObjectKey>> {
    let mut out: HashMap<String, BTreeSet<ObjectKey>> = HashMap::new();
    for g in gateways {
        let entries = g.listeners.iter().flat_map(|l| l.routes.values()).flatten();
        for e in entries {
            let action = &e.action;
            let upstreams = action
                .backends
                .entries
                .iter()
                .flat_map(|b| match &b.target {
                    BackendTarget::Upstream(u) => Some(u),
                    BackendTarget::Invalid(_) => None,
                })
                .chain(&action.filters.mirrors);
            for u in upstreams {
                if let Some((_, policy)) = &u.tls {
                    out.entry(policy.clone()).or_default().insert(g.key.clone());
                }
            }
        }
    }
    out
}

/// Groups the programmed listeners by socket.
fn build_table(revision: u64, gateways: Vec<gateways::GatewayCtx>) -> RoutingTable {
    struct Building {
        https: bool,
        l4: bool,
        listeners: Vec<ListenerTable>,
        by_host: HostIndex<usize>,
    }
    let mut sockets: BTreeMap<SocketAddr, Building> = BTreeMap::new();
    for g in gateways {
        let (Some(ip), None) = (g.ip, &g.unusable_address) else {
            continue;
        };
        for l in g.listeners {
            if !l.programmed() {
                continue;
            }
            let addr = SocketAddr::new(ip, l.port);
            let b = sockets.entry(addr).or_insert_with(|| Building {
                https: l.https,
                l4: l.l4.is_some(),
                listeners: vec![],
                by_host: HostIndex::default(),
            });
            // HTTP listeners offer h2 and http/1.1; a TLS listener forwards bytes it does not read.
            let alpn = l.https;
            let (tls, verifies_clients) = match (l.cert.clone(), l.client_auth) {
                (None, _) => (None, false),
                (Some(cert), tls::ClientAuth::Off) => {
                    (Some(tls::server_config(cert, None, alpn)), false)
                }
                (Some(cert), tls::ClientAuth::Verify(v)) => {
                    (Some(tls::server_config(cert, Some(v), alpn)), true)
                }
                (Some(_), tls::ClientAuth::RefuseAll) => (None, true),
            };
            let i = b.listeners.len();
            *b.by_host.entry(l.hostname.as_deref().unwrap_or(""), || i) = i;
            b.listeners.push(ListenerTable {
                id: format!("{}/{}/{}", g.key.namespace, g.key.name, l.name),
                port: l.port,
                https: l.https,
                tls,
                verifies_clients,
                routes: l.routes,
                consumers: l.consumers,
                l4: l.l4.map(|m| (m, l.l4_routes)),
            });
        }
    }
    let sockets = sockets
        .into_iter()
        .map(|(addr, b)| {
            (
                addr,
                Arc::new(SocketTable {
                    addr,
                    https: b.https,
                    l4: b.l4,
                    listeners: b.listeners,
                    by_host: b.by_host,
                }),
            )
        })
        .collect();
    RoutingTable {
        revision,
        sockets,
        revision_header: false,
        callers: HashMap::new(),
    }
}

/// A compact summary of a status for logs and tests: `{type: status/reason}` of its top-level
/// conditions.
pub fn condition_summary(status: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for c in status["conditions"].as_array().into_iter().flatten() {
        let k = c["type"].as_str().unwrap_or("").to_string();
        out.insert(
            k,
            json!(format!(
                "{}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests;
