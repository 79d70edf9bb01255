//! The mesh (GAMMA), compiled on a mesh node (`gw-node --mesh`): every Service with an address is
//! served at that address, one socket per Service port, as if the Service were a Gateway whose
//! listeners are its ports. HTTP ports carry the HTTPRoutes and GRPCRoutes whose parentRef is the
//! Service (`port` selects one Service port; a route of the Service's namespace applies to every
//! caller, a route of another namespace to that namespace's callers only) and, with none, send to the
//! Service's own endpoints; other ports forward the byte stream to the endpoints.
//!
//! A Service's address is its `clusterIP`. A Service without one (written to gw directly, not carried
//! from a Kubernetes cluster) gets one from the node's service CIDR: the one its status records
//! (`MESH_ADDRESS_CONDITION`), else the first free one, oldest Service first. The status writer
//! records it, so that it stays, and every mesh node and client agrees on it.

use super::backends::{Referrer, Upstreams};
use super::conditions::{Cond, render};
use super::gateways::{GatewayCtx, HTTP_ROUTE_KINDS, ListenerCtx, route_kinds};
use super::index::Index;
use super::tls::ClientAuth;
use crate::snapshot::Snapshot;
use crate::table::{
    BackendEntry, BackendTarget, Backends, Filters, HostIndex, L4Mode, MatchEntry, PathMatch,
    Precedence, RequestMatcher, RouteInfo, RuleAction,
};
use gw_model::core::{
    MESH_ADDRESS_CONDITION, ServicePort, cluster_ip, pod_ips, recorded_mesh_address,
};
use gw_model::gateway::{FromNamespaces, RouteNamespaces};
use gw_model::route::BackendObjectReference;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The `controllerName` of the mesh in route status.
pub const MESH_CONTROLLER: &str = "gw.dev/mesh";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshOptions {
    /// Addresses for Services without a `clusterIP`, first to last.
    pub service_cidr: (Ipv4Addr, Ipv4Addr),
}

/// appProtocol values of ports the mesh serves as HTTP (h2c and gRPC included).
const HTTP_APP_PROTOCOLS: &[&str] = &["http", "http2", "h2c", "kubernetes.io/h2c", "grpc"];

/// Whether the mesh reads a port's traffic as HTTP: by its appProtocol, else by its name (`http`,
/// `grpc`, `h2c` or one of them followed by `-...`, as meshes name ports); an unnamed port is HTTP.
/// Anything else is forwarded as a byte stream.
fn speaks_http(p: &ServicePort) -> bool {
    if let Some(a) = &p.app_protocol {
        return HTTP_APP_PROTOCOLS.contains(&a.as_str());
    }
    match &p.name {
        None => true,
        Some(n) => ["http", "grpc", "h2c"]
            .iter()
            .any(|k| n == k || n.starts_with(&format!("{k}-"))),
    }
}

/// A Service port that uses gRPC (its default route speaks HTTP/2 to the endpoints).
fn grpc_port(p: &ServicePort) -> bool {
    p.app_protocol.as_deref() == Some("grpc")
        || p.name
            .as_deref()
            .is_some_and(|n| n == "grpc" || n.starts_with("grpc-"))
}

fn port_listener(ns: &str, p: &ServicePort) -> ListenerCtx {
    let http = speaks_http(p);
    ListenerCtx {
        name: p.name.clone().unwrap_or_else(|| p.port.to_string()),
        port: u16::try_from(p.port).unwrap_or(0),
        hostname: None,
        https: false,
        protocol_supported: true,
        protocol: if http { "HTTP" } else { "TCP" }.into(),
        kinds: if http {
            route_kinds(HTTP_ROUTE_KINDS)
        } else {
            vec![]
        },
        // Consumer routes come from any namespace.
        namespaces: RouteNamespaces {
            from: FromNamespaces::All,
            selector: None,
        },
        l4: (!http).then_some(L4Mode::Tcp),
        l4_routes: HostIndex::default(),
        cert: None,
        client_auth: ClientAuth::Off,
        refs_error: None,
        conflict: None,
        attached: 0,
        routes: HostIndex::default(),
        service_namespace: Some(ns.to_string()),
        consumers: HashMap::new(),
    }
}

/// The Services the mesh serves, with their addresses, as parents routes attach to.
pub fn services(idx: &Index<'_>, opts: &MeshOptions) -> Vec<GatewayCtx> {
    let (first, last) = (
        u32::from(opts.service_cidr.0),
        u32::from(opts.service_cidr.1),
    );
    let in_cidr =
        |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if (first..=last).contains(&u32::from(v4)));
    let all = idx.of_kind("", "Service");
    let served: Vec<_> = all
        .into_iter()
        .filter_map(|(key, obj, meta)| {
            let spec = idx.service(&meta.namespace, &meta.name)?;
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let external = spec.kind.as_deref() == Some("ExternalName");
            (!headless && !external).then_some((key, obj, meta, spec))
        })
        .collect();
    // Cluster IPs first, then addresses already recorded (kept), then the first free ones.
    let mut taken: BTreeSet<IpAddr> = served
        .iter()
        .filter_map(|(_, o, _, _)| cluster_ip(o))
        .collect();
    let mut addresses: Vec<Option<IpAddr>> = served
        .iter()
        .map(|(_, o, _, _)| {
            cluster_ip(o).or_else(|| {
                let ip =
                    recorded_mesh_address(o).filter(|ip| in_cidr(*ip) && !taken.contains(ip))?;
                taken.insert(ip);
                Some(ip)
            })
        })
        .collect();
    for a in addresses.iter_mut().filter(|a| a.is_none()) {
        *a = (first..=last)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
            .find(|ip| !taken.contains(ip));
        if let Some(ip) = a {
            taken.insert(*ip);
        }
    }
    served
        .into_iter()
        .zip(addresses)
        .map(|((key, obj, meta, spec), ip)| {
            let listeners = spec
                .ports
                .iter()
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .map(|p| port_listener(&meta.namespace, p))
                .collect();
            GatewayCtx {
                key: key.clone(),
                previous_status: obj.get("status").cloned().unwrap_or(Value::Null),
                ip,
                addresses: ip.into_iter().collect(),
                unsupported_address: None,
                unusable_address: ip
                    .is_none()
                    .then(|| "the service CIDR is exhausted".to_string()),
                requested: vec![],
                listeners,
                meta,
            }
        })
        .collect()
}

/// Ports without routes of their Service's namespace send every request to the Service's own
/// endpoints (consumer routes still apply to their callers); other ports forward to them.
pub fn default_routes(idx: &Index<'_>, services: &mut [GatewayCtx], upstreams: &mut Upstreams) {
    for g in services.iter_mut().filter(|g| g.is_service()) {
        let Some(spec) = idx.service(&g.key.namespace, &g.key.name) else {
            continue;
        };
        for l in g.listeners.iter_mut() {
            let Some(port) = spec.ports.iter().find(|p| p.port == i64::from(l.port)) else {
                continue;
            };
            let from = Referrer {
                kind: "Service",
                namespace: &g.key.namespace,
                origin: "",
                parent_services: &[],
            };
            let own = BackendObjectReference {
                group: String::new(),
                kind: "Service".into(),
                name: g.key.name.clone(),
                namespace: None,
                port: Some(port.port),
            };
            let grpc = grpc_port(port);
            let target = match upstreams.resolve(idx, from, &own, grpc) {
                Ok(u) => BackendTarget::Upstream(u),
                Err(e) => BackendTarget::Invalid(e.message),
            };
            let backends = Backends::new(vec![BackendEntry {
                weight: 1,
                target,
                filters: Filters::default(),
            }]);
            if l.l4.is_some() {
                let backends = Arc::new(backends);
                l.l4_routes.entry("", || backends);
                continue;
            }
            if l.routes.values().next().is_some() {
                continue;
            }
            let id = format!("Service {}/{}:{}", g.key.namespace, g.key.name, l.port);
            l.routes.entry("", Vec::new).push(Arc::new(MatchEntry {
                matcher: RequestMatcher {
                    path: PathMatch::Prefix(String::new()),
                    method: None,
                    headers: vec![],
                    query: vec![],
                },
                action: Arc::new(RuleAction {
                    route: Arc::new(RouteInfo::new(id.clone(), grpc)),
                    rule_index: 0,
                    filters: Filters::default(),
                    backends,
                    timeouts: Default::default(),
                    prefix: None,
                    session: None,
                }),
                precedence: Precedence {
                    class: vec![],
                    created_ms: 0,
                    route: id,
                    rule: 0,
                    index: 0,
                },
            }));
        }
    }
}

/// The status of a Service whose address the mesh allocated: its other conditions, and
/// `MESH_ADDRESS_CONDITION` with the address (`None` for a Service with a `clusterIP`).
pub fn status(g: &GatewayCtx, service: &Value, now_ms: u64) -> Option<Value> {
    if cluster_ip(service).is_some() {
        return None;
    }
    let cond = match g.ip {
        Some(ip) => Cond::ok(MESH_ADDRESS_CONDITION, "Allocated", &ip.to_string()),
        None => Cond::fail(
            MESH_ADDRESS_CONDITION,
            "NoAddress",
            "the mesh's service CIDR is exhausted",
        ),
    };
    let prev = &g.previous_status;
    let mut conditions: Vec<Value> = prev["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != MESH_ADDRESS_CONDITION)
        .cloned()
        .collect();
    if let Value::Array(ours) = render(&[cond], &prev["conditions"], g.meta.generation, now_ms) {
        conditions.extend(ours);
    }
    let mut status = prev.as_object().cloned().unwrap_or_default();
    status.insert("conditions".into(), json!(conditions));
    Some(Value::Object(status))
}

/// The namespace of every pod address (the callers of consumer routes).
pub fn callers(snap: &Snapshot) -> HashMap<IpAddr, String> {
    snap.objects
        .iter()
        .filter(|(k, _)| k.group.is_empty() && k.kind == "Pod")
        .flat_map(|(k, pod)| pod_ips(pod).into_iter().map(|ip| (ip, k.namespace.clone())))
        .collect()
}
