//! Gateways and their listeners: which Gateways this node serves, where (address allocation), each
//! listener's protocol, allowed routes, certificates and conflicts, and the resulting conditions.

use super::backends::RefError;
use super::conditions::{Cond, render};
use super::index::{Index, Meta, typed};
use super::tls::{ClientAuth, load_certificate, load_client_cas};
use super::{Addressing, CompileOptions};
use crate::table::{Backends, HostIndex, L4Mode, MatchEntry};
use gw_model::ObjectKey;
use gw_model::gateway::{FromNamespaces, GatewaySpec, RouteGroupKind, RouteNamespaces, TlsMode};
use gw_model::kinds::GATEWAY_GROUP;
use rustls::sign::CertifiedKey;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Route kinds a listener of each supported protocol can carry.
pub(super) const HTTP_ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute"];
const TLS_ROUTE_KINDS: &[&str] = &["TLSRoute"];
const TCP_ROUTE_KINDS: &[&str] = &["TCPRoute"];

/// What the listeners on one port must all be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketClass {
    Http,
    Https,
    Tls,
    Tcp,
}

pub struct ListenerCtx {
    pub name: String,
    pub port: u16,
    pub hostname: Option<String>,
    pub https: bool,
    /// The protocol is one gw serves.
    pub protocol_supported: bool,
    pub protocol: String,
    pub kinds: Vec<RouteGroupKind>,
    pub namespaces: RouteNamespaces,
    /// TLS and TCP listeners: how connections are forwarded.
    pub l4: Option<L4Mode>,
    /// TLS and TCP listeners: the attached routes' backends by hostname (TCP: `""` only); the
    /// oldest route wins a hostname.
    pub l4_routes: HostIndex<Arc<Backends>>,
    pub cert: Option<Arc<CertifiedKey>>,
    pub client_auth: ClientAuth,
    pub refs_error: Option<RefError>,
    pub conflict: Option<(&'static str, String)>,
    pub attached: u32,
    pub routes: HostIndex<Vec<Arc<MatchEntry>>>,
    /// A mesh Service port: the Service's namespace (routes of others are consumer routes)...
    pub service_namespace: Option<String>,
    /// ...and the consumer routes, by the namespace whose callers they are for.
    pub consumers: HashMap<String, HostIndex<Vec<Arc<MatchEntry>>>>,
}

impl ListenerCtx {
    pub fn allows_kind(&self, group: &str, kind: &str) -> bool {
        self.kinds
            .iter()
            .any(|k| k.group == group && k.kind == kind)
    }

    pub fn allows_namespace(&self, idx: &Index<'_>, gateway_ns: &str, route_ns: &str) -> bool {
        match self.namespaces.from {
            FromNamespaces::All => true,
            FromNamespaces::Same => gateway_ns == route_ns,
            FromNamespaces::Selector => self
                .namespaces
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&idx.namespace_labels(route_ns))),
        }
    }

    /// Carries traffic: accepted, certificates resolved, no conflict.
    pub fn programmed(&self) -> bool {
        self.protocol_supported
            && self.conflict.is_none()
            && (!self.terminates_tls() || self.cert.is_some())
    }

    /// Whether connections' TLS ends here (needing the listener's certificate).
    pub fn terminates_tls(&self) -> bool {
        self.https || self.l4 == Some(L4Mode::TlsTerminate)
    }

    /// Listeners of one class share a port (TLS of either mode: the server name tells them apart).
    fn socket_class(&self) -> SocketClass {
        match (self.https, self.l4) {
            (true, _) => SocketClass::Https,
            (false, None) => SocketClass::Http,
            (false, Some(L4Mode::Tcp)) => SocketClass::Tcp,
            (false, Some(_)) => SocketClass::Tls,
        }
    }
}

/// A Gateway this node serves — or, on a mesh node, a Service (its key's kind), whose ports are
/// its listeners.
pub struct GatewayCtx {
    pub key: ObjectKey,
    pub meta: Meta,
    pub previous_status: Value,
    /// Where its listeners are bound; `None` when it has no usable address.
    pub ip: Option<IpAddr>,
    /// Reported in `status.addresses`.
    pub addresses: Vec<IpAddr>,
    /// Accepted=False (reason, message) from its addresses.
    pub unsupported_address: Option<String>,
    /// Programmed=False (reason AddressNotUsable) message.
    pub unusable_address: Option<String>,
    /// The IP addresses of `spec.addresses`.
    pub requested: Vec<IpAddr>,
    pub listeners: Vec<ListenerCtx>,
}

impl GatewayCtx {
    /// A mesh Service rather than a Gateway.
    pub fn is_service(&self) -> bool {
        self.key.group.is_empty() && self.key.kind == "Service"
    }
}

/// The Gateways this node serves, with their listeners checked and addresses allocated.
pub fn collect(idx: &Index<'_>, opts: &CompileOptions, class_accepted: bool) -> Vec<GatewayCtx> {
    let mut out = Vec::new();
    if !class_accepted {
        return out;
    }
    for (key, obj, meta) in idx.of_kind(GATEWAY_GROUP, "Gateway") {
        let Some(spec) = typed::<GatewaySpec>(obj, Some("spec")) else {
            continue;
        };
        if spec.gateway_class_name != opts.gateway_class {
            continue;
        }
        let listeners = spec
            .listeners
            .iter()
            .map(|l| listener(idx, &meta.namespace, l))
            .collect();
        let mut g = GatewayCtx {
            key: key.clone(),
            meta,
            previous_status: obj.get("status").cloned().unwrap_or(Value::Null),
            ip: None,
            addresses: vec![],
            unsupported_address: None,
            unusable_address: None,
            requested: vec![],
            listeners,
        };
        check_requested_addresses(&mut g, &spec, &opts.addressing);
        out.push(g);
    }
    allocate_addresses(&mut out, &opts.addressing);
    mark_conflicts(&mut out);
    out
}

/// Route kinds of the Gateway API group, as a listener's `supportedKinds`.
pub(super) fn route_kinds(kinds: &[&str]) -> Vec<RouteGroupKind> {
    kinds
        .iter()
        .map(|k| RouteGroupKind {
            group: GATEWAY_GROUP.into(),
            kind: (*k).into(),
        })
        .collect()
}

fn listener(idx: &Index<'_>, ns: &str, l: &gw_model::gateway::Listener) -> ListenerCtx {
    let https = l.protocol == "HTTPS";
    let l4 = match l.protocol.as_str() {
        "TLS" => Some(match l.tls.as_ref().map(|t| t.mode) {
            Some(TlsMode::Passthrough) => L4Mode::TlsPassthrough,
            _ => L4Mode::TlsTerminate,
        }),
        "TCP" => Some(L4Mode::Tcp),
        _ => None,
    };
    let protocol_supported = https || l4.is_some() || l.protocol == "HTTP";
    let supported_kinds = match l4 {
        None => HTTP_ROUTE_KINDS,
        Some(L4Mode::Tcp) => TCP_ROUTE_KINDS,
        Some(_) => TLS_ROUTE_KINDS,
    };
    let mut refs_error = None;
    // Kinds: the requested ones gw supports (or, when none is requested, all it supports).
    let kinds: Vec<RouteGroupKind> = if l.allowed_routes.kinds.is_empty() {
        if protocol_supported {
            route_kinds(supported_kinds)
        } else {
            vec![]
        }
    } else {
        let ok: Vec<RouteGroupKind> = l
            .allowed_routes
            .kinds
            .iter()
            .filter(|k| {
                protocol_supported
                    && k.group == GATEWAY_GROUP
                    && supported_kinds.contains(&k.kind.as_str())
            })
            .cloned()
            .collect();
        if ok.len() < l.allowed_routes.kinds.len() {
            let bad: Vec<String> = l
                .allowed_routes
                .kinds
                .iter()
                .filter(|k| !ok.contains(k))
                .map(|k| format!("{}/{}", k.group, k.kind))
                .collect();
            refs_error = Some(RefError::new(
                "InvalidRouteKinds",
                format!("unsupported route kinds: {}", bad.join(", ")),
            ));
        }
        ok
    };
    let mut cert = None;
    let mut client_auth = ClientAuth::Off;
    if https || l4 == Some(L4Mode::TlsTerminate) {
        match l.tls.as_ref().map(|t| t.certificate_refs.as_slice()) {
            Some([first, ..]) => match load_certificate(idx, ns, first) {
                Ok(k) => cert = Some(k),
                Err(e) => refs_error = refs_error.or(Some(e)),
            },
            _ => {
                refs_error = refs_error.or(Some(RefError::new(
                    "InvalidCertificateRef",
                    "a listener that terminates TLS needs a certificateRef",
                )));
            }
        }
        if let Some(fv) = l.tls.as_ref().and_then(|t| t.frontend_validation.as_ref()) {
            client_auth = match load_client_cas(idx, ns, &fv.ca_certificate_refs) {
                Ok(v) => ClientAuth::Verify(v),
                Err(e) => {
                    refs_error = refs_error.or(Some(e));
                    ClientAuth::RefuseAll
                }
            };
        }
    }
    ListenerCtx {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        hostname: l.hostname.clone(),
        https,
        protocol_supported,
        protocol: l.protocol.clone(),
        kinds,
        namespaces: l.allowed_routes.namespaces.clone(),
        l4,
        l4_routes: HostIndex::default(),
        cert,
        client_auth,
        refs_error,
        conflict: None,
        attached: 0,
        routes: HostIndex::default(),
        service_namespace: None,
        consumers: HashMap::new(),
    }
}

fn pool_contains(addressing: &Addressing, ip: IpAddr) -> bool {
    match (addressing, ip) {
        (Addressing::Pool { first, last }, IpAddr::V4(v4)) => *first <= v4 && v4 <= *last,
        (Addressing::Pool { .. }, IpAddr::V6(_)) => false,
        (Addressing::Shared { bind, advertised }, ip) => ip == *bind || advertised.contains(&ip),
    }
}

/// Checks `spec.addresses`: unsupported types make the Gateway not accepted; addresses this node cannot
/// serve make it not programmed.
fn check_requested_addresses(g: &mut GatewayCtx, spec: &GatewaySpec, addressing: &Addressing) {
    let mut unusable = vec![];
    for a in &spec.addresses {
        match a.kind.as_str() {
            "IPAddress" => match a.value.parse::<IpAddr>() {
                Ok(ip) if pool_contains(addressing, ip) => g.requested.push(ip),
                Ok(ip) => unusable.push(ip.to_string()),
                Err(_) => {
                    g.unsupported_address = Some(format!("{:?} is not an IP address", a.value))
                }
            },
            other => {
                g.unsupported_address = Some(format!(
                    "address type {other:?} is not supported (only IPAddress)"
                ))
            }
        }
    }
    if !unusable.is_empty() {
        g.unusable_address = Some(format!(
            "addresses {} cannot be served by this gateway",
            unusable.join(", ")
        ));
    }
}

/// Gives every accepted Gateway an address: in shared mode the node's; in pool mode a requested address
/// in the pool, else the one its status already holds (addresses are sticky), else the first free one.
fn allocate_addresses(gateways: &mut [GatewayCtx], addressing: &Addressing) {
    match addressing {
        Addressing::Shared { bind, advertised } => {
            for g in gateways
                .iter_mut()
                .filter(|g| g.unsupported_address.is_none())
            {
                g.ip = Some(*bind);
                g.addresses = if advertised.is_empty() {
                    vec![*bind]
                } else {
                    advertised.clone()
                };
            }
        }
        Addressing::Pool { first, last } => {
            let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
            let status_ip = |g: &GatewayCtx| -> Option<Ipv4Addr> {
                g.previous_status["addresses"][0]["value"]
                    .as_str()?
                    .parse()
                    .ok()
            };
            let mut want: Vec<Option<Ipv4Addr>> = Vec::with_capacity(gateways.len());
            for g in gateways.iter() {
                let requested = g.requested.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                });
                want.push(requested.or_else(|| {
                    status_ip(g).filter(|ip| pool_contains(addressing, IpAddr::V4(*ip)))
                }));
            }
            for (g, w) in gateways.iter_mut().zip(want) {
                if g.unsupported_address.is_some() {
                    continue;
                }
                let ip = w.filter(|ip| !taken.contains(ip)).or_else(|| {
                    let (a, b) = (u32::from(*first), u32::from(*last));
                    (a..=b).map(Ipv4Addr::from).find(|ip| !taken.contains(ip))
                });
                if let Some(ip) = ip {
                    taken.insert(ip);
                    g.ip = Some(IpAddr::V4(ip));
                    g.addresses = vec![IpAddr::V4(ip)];
                } else {
                    g.unusable_address = Some("the address pool is exhausted".into());
                }
            }
        }
    }
}

/// Listeners sharing a socket must agree on the protocol and differ in hostname; the later one (older
/// Gateways first, then listener order) is Conflicted.
fn mark_conflicts(gateways: &mut [GatewayCtx]) {
    let mut sockets: HashMap<SocketAddr, (SocketClass, BTreeSet<String>)> = HashMap::new();
    for g in gateways.iter_mut() {
        let Some(ip) = g.ip else { continue };
        for l in g.listeners.iter_mut().filter(|l| l.protocol_supported) {
            let addr = SocketAddr::new(ip, l.port);
            let host = l.hostname.clone().unwrap_or_default();
            match sockets.get_mut(&addr) {
                None => {
                    sockets.insert(addr, (l.socket_class(), BTreeSet::from([host])));
                }
                Some((class, _)) if *class != l.socket_class() => {
                    l.conflict = Some((
                        "ProtocolConflict",
                        format!("port {} already serves another protocol", l.port),
                    ));
                }
                Some((_, hosts)) => {
                    if !hosts.insert(host) {
                        l.conflict = Some((
                            "HostnameConflict",
                            format!(
                                "another listener on port {} has hostname {:?}",
                                l.port,
                                l.hostname.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// The Gateway's conditions and status.
pub fn status(g: &GatewayCtx, now_ms: u64) -> Value {
    let programmed_listeners = g.listeners.iter().filter(|l| l.programmed()).count();
    let invalid_listeners = g
        .listeners
        .iter()
        .filter(|l| !l.protocol_supported || l.refs_error.is_some())
        .count();
    let accepted = if let Some(m) = &g.unsupported_address {
        Cond::fail("Accepted", "UnsupportedAddress", m.clone())
    } else if invalid_listeners > 0 {
        Cond::ok(
            "Accepted",
            "ListenersNotValid",
            "some listeners are not valid",
        )
    } else {
        Cond::ok("Accepted", "Accepted", "accepted by gw")
    };
    let programmed = if g.unsupported_address.is_some() {
        Cond::fail("Programmed", "Invalid", "the Gateway is not accepted")
    } else if let Some(m) = &g.unusable_address {
        Cond::fail("Programmed", "AddressNotUsable", m.clone())
    } else if programmed_listeners == 0 {
        Cond::fail("Programmed", "Invalid", "no listener can be programmed")
    } else {
        Cond::ok("Programmed", "Programmed", "serving")
    };
    let generation = g.meta.generation;
    let prev = &g.previous_status;
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let prev_l = prev["listeners"]
                .as_array()
                .and_then(|ls| ls.iter().find(|x| x["name"] == l.name.as_str()))
                .map(|x| x["conditions"].clone())
                .unwrap_or(Value::Null);
            let mut conds = vec![];
            conds.push(if l.protocol_supported {
                Cond::ok("Accepted", "Accepted", "")
            } else {
                Cond::fail("Accepted", "UnsupportedProtocol", format!("protocol {} is not supported", l.protocol))
            });
            conds.push(match &l.refs_error {
                Some(e) => Cond::fail("ResolvedRefs", e.reason, e.message.clone()),
                None => Cond::ok("ResolvedRefs", "ResolvedRefs", ""),
            });
            conds.push(match &l.conflict {
                Some((reason, m)) => Cond::ok("Conflicted", reason, m),
                None => Cond::fail("Conflicted", "NoConflicts", ""),
            });
            conds.push(if matches!(l.client_auth, ClientAuth::RefuseAll) {
                Cond::fail("Programmed", "Invalid", "the client CAs are not resolved: every TLS client is refused")
            } else if l.programmed() && g.ip.is_some() && g.unusable_address.is_none() {
                Cond::ok("Programmed", "Programmed", "")
            } else {
                Cond::fail("Programmed", "Invalid", "the listener cannot be programmed")
            });
            serde_json::json!({
                "name": l.name,
                "supportedKinds": l.kinds.iter().map(|k| serde_json::json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached,
                "conditions": render(&conds, &prev_l, generation, now_ms),
            })
        })
        .collect();
    let addresses: Vec<Value> = g
        .addresses
        .iter()
        .map(|a| serde_json::json!({"type": "IPAddress", "value": a.to_string()}))
        .collect();
    serde_json::json!({
        "addresses": addresses,
        "conditions": render(&[accepted, programmed], &prev["conditions"], generation, now_ms),
        "listeners": listeners,
    })
}
