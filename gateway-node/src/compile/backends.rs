//! Resolution of backend references: Service (core group) → the Service port → the EndpointSlices of the
//! Service → the ready endpoints' addresses and port; with the ReferenceGrant check for references into
//! other namespaces. Results are shared per (Service, port, protocol) so that round-robin state is too.
//! Across clusters (GEP-1748): a `Service` reaches its route's cluster's endpoints; a `ServiceImport`
//! (multicluster.x-k8s.io) those of every cluster exporting the Service (a ServiceExport).

use super::backend_tls::BackendTlsPolicies;
use super::index::{Index, Scope};
use crate::table::{EndpointInfo, Locality, Placement, Upstream, UpstreamProtocol};
use gw_model::core::{IntOrString, ServicePort};
use gw_model::kinds::{GATEWAY_GROUP, MCS_GROUP};
use gw_model::route::BackendObjectReference;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Why a reference cannot be used: a Gateway API `ResolvedRefs` reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefError {
    pub reason: &'static str,
    pub message: String,
}

impl RefError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> RefError {
        RefError {
            reason,
            message: message.into(),
        }
    }
}

/// Who refers to a backend: a route's kind, namespace and cluster of origin ("" if none), and the
/// Services it has as parents (a mesh route); a reference to one of those needs no ReferenceGrant
/// (GAMMA: a consumer route sends its callers on to the Service they called).
#[derive(Debug, Clone, Copy)]
pub struct Referrer<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub origin: &'a str,
    pub parent_services: &'a [(String, String)],
}

/// The appProtocol values (Gateway API GEP-1911) that select HTTP/2 cleartext to the backend.
const H2C_APP_PROTOCOLS: &[&str] = &["kubernetes.io/h2c"];

pub struct Upstreams {
    cache: HashMap<(String, String, i64, bool, String), Arc<Upstream>>,
    pub tls_policies: BackendTlsPolicies,
    placement: Placement,
}

impl Upstreams {
    pub fn new(tls_policies: BackendTlsPolicies, placement: Placement) -> Upstreams {
        Upstreams {
            cache: HashMap::new(),
            tls_policies,
            placement,
        }
    }

    /// Resolves `r`, referenced `from` a route. `grpc` forces HTTP/2.
    pub fn resolve(
        &mut self,
        idx: &Index<'_>,
        from: Referrer<'_>,
        r: &BackendObjectReference,
        grpc: bool,
    ) -> Result<Arc<Upstream>, RefError> {
        let (route_kind, route_ns, route_origin) = (from.kind, from.namespace, from.origin);
        let import = match (r.group.as_str(), r.kind.as_str()) {
            ("", "Service") => false,
            (MCS_GROUP, "ServiceImport") => true,
            _ => {
                return Err(RefError::new(
                    "InvalidKind",
                    format!(
                        "backendRef {}/{} {:?}: only core Services and ServiceImports ({MCS_GROUP}) are supported",
                        r.group, r.kind, r.name
                    ),
                ));
            }
        };
        let ns = r.namespace.as_deref().unwrap_or(route_ns);
        let parent = !import
            && from
                .parent_services
                .iter()
                .any(|(pns, pname)| pns == ns && *pname == r.name);
        if ns != route_ns
            && !parent
            && !idx.grants(
                (GATEWAY_GROUP, route_kind, route_ns),
                (&r.group, &r.kind, ns, &r.name),
            )
        {
            return Err(RefError::new(
                "RefNotPermitted",
                format!(
                    "backendRef to {} {ns}/{} is not permitted by any ReferenceGrant",
                    r.kind, r.name
                ),
            ));
        }
        let scope = if import {
            match idx.exporters(ns, &r.name) {
                Some(clusters) => Scope::Exporters(clusters),
                None => {
                    return Err(RefError::new(
                        "BackendNotFound",
                        format!(
                            "ServiceImport {ns}/{}: no cluster exports Service {}",
                            r.name, r.name
                        ),
                    ));
                }
            }
        } else {
            Scope::Cluster(route_origin)
        };
        let Some(svc) = idx.service(ns, &r.name) else {
            return Err(RefError::new(
                "BackendNotFound",
                format!("Service {ns}/{} not found", r.name),
            ));
        };
        let Some(port) = r.port else {
            return Err(RefError::new(
                "BackendNotFound",
                format!("backendRef to Service {ns}/{} has no port", r.name),
            ));
        };
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return Err(RefError::new(
                "BackendNotFound",
                format!("Service {ns}/{} has no port {port}", r.name),
            ));
        };
        let key = (
            ns.to_string(),
            r.name.clone(),
            port,
            grpc,
            if import {
                "ServiceImport".to_string()
            } else {
                route_origin.to_string()
            },
        );
        if let Some(u) = self.cache.get(&key) {
            return Ok(u.clone());
        }
        let h2c = grpc
            || sp
                .app_protocol
                .as_deref()
                .is_some_and(|a| H2C_APP_PROTOCOLS.contains(&a));
        let protocol = if h2c {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::Http1
        };
        let mut upstream = Upstream::new(
            format!(
                "{}{ns}/{}:{port}",
                if import { "import " } else { "" },
                r.name
            ),
            protocol,
            endpoints(idx, ns, &r.name, sp, scope),
            &self.placement,
        );
        let alpn: &[u8] = if h2c { b"h2" } else { b"http/1.1" };
        upstream.tls = self
            .tls_policies
            .for_port(ns, &r.name, sp.name.as_deref(), alpn);
        let upstream = Arc::new(upstream);
        self.cache.insert(key, upstream.clone());
        Ok(upstream)
    }
}

/// The ready endpoints of a Service port, from its EndpointSlices (the slice port with the Service port's
/// name; an unnamed single-port Service matches the unnamed slice port), with where each is.
fn endpoints(
    idx: &Index<'_>,
    ns: &str,
    svc: &str,
    sp: &ServicePort,
    scope: Scope<'_>,
) -> Vec<EndpointInfo> {
    let name = sp.name.as_deref().unwrap_or("");
    let mut out: Vec<EndpointInfo> = Vec::new();
    for (slice, region) in idx.endpoint_slices(ns, svc, scope) {
        let port = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == name)
            .and_then(|p| p.port)
            .or(match &sp.target_port {
                Some(IntOrString::Int(p)) => Some(*p),
                None => Some(sp.port),
                Some(IntOrString::String(_)) => None,
            });
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in &slice.endpoints {
            // Kubernetes: an unset `ready` is to be interpreted as ready.
            if e.conditions.ready == Some(false) {
                continue;
            }
            let pod = e
                .target_ref
                .as_ref()
                .and_then(|r| r["uid"].as_str().or(r["name"].as_str()))
                .unwrap_or("");
            let locality = Locality {
                region: region.to_string(),
                zone: e.zone.clone().unwrap_or_default(),
            };
            let for_zones: Vec<String> = e
                .hints
                .iter()
                .flat_map(|h| h.for_zones.iter().map(|z| z.name.clone()))
                .collect();
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(EndpointInfo {
                        addr: SocketAddr::new(ip, port),
                        pod: pod.to_string(),
                        locality: locality.clone(),
                        for_zones: for_zones.clone(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| (a.addr, &a.pod).cmp(&(b.addr, &b.pod)));
    out.dedup_by(|a, b| a.addr == b.addr);
    out
}
