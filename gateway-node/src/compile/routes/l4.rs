//! TLSRoutes and TCPRoutes: their weighted backends, attached to TLS and TCP listeners by the rules
//! of every route (sectionName, port, allowed kinds and namespaces, hostname intersection for
//! TLSRoute's server names). UDPRoutes are stored and told that gw does not serve UDP.

use super::{Attachment, RouteInput, attach};
use crate::compile::backends::{RefError, Referrer, Upstreams};
use crate::compile::gateways::{GatewayCtx, ListenerCtx};
use crate::compile::index::{Index, Meta, typed};
use crate::table::{BackendEntry, BackendTarget, Backends, Filters};
use gw_model::ObjectKey;
use gw_model::kinds::GATEWAY_GROUP;
use gw_model::l4route::{L4RouteRule, TcpRouteSpec, TlsRouteSpec};
use serde_json::Value;
use std::sync::Arc;

/// The backends of every rule of a route, together (layer-4 rules have nothing to tell them
/// apart); the first reference problem in `ref_error`.
fn backends(
    idx: &Index<'_>,
    upstreams: &mut Upstreams,
    kind: &str,
    meta: &Meta,
    rules: &[L4RouteRule],
    ref_error: &mut Option<RefError>,
) -> Backends {
    let route_kind = if kind == "TLSRoute" {
        "TLSRoute"
    } else {
        "TCPRoute"
    };
    let mut entries = Vec::new();
    for br in rules.iter().flat_map(|r| &r.backend_refs) {
        let from = Referrer {
            kind: route_kind,
            namespace: &meta.namespace,
            origin: &meta.origin,
            parent_services: &[],
        };
        let target = match upstreams.resolve(idx, from, &br.object_ref(), false) {
            Ok(u) => BackendTarget::Upstream(u),
            Err(e) => {
                let msg = e.message.clone();
                ref_error.get_or_insert(e);
                BackendTarget::Invalid(msg)
            }
        };
        entries.push(BackendEntry {
            weight: u64::try_from(br.weight).unwrap_or(0),
            target,
            filters: Filters::default(),
        });
    }
    Backends::new(entries)
}

/// Processes every TLSRoute, TCPRoute and UDPRoute, oldest first; returns their statuses.
pub fn process(
    idx: &Index<'_>,
    gateways: &mut [GatewayCtx],
    upstreams: &mut Upstreams,
    controller: &str,
    now_ms: u64,
) -> Vec<(ObjectKey, Value, Meta)> {
    let mut out = Vec::new();
    for kind in ["TLSRoute", "TCPRoute", "UDPRoute"] {
        for (key, obj, meta) in idx.of_kind(GATEWAY_GROUP, kind) {
            let (parent_refs, hostnames, rules) = if kind == "TLSRoute" {
                let Some(s) = typed::<TlsRouteSpec>(obj, Some("spec")) else {
                    continue;
                };
                (s.parent_refs, s.hostnames, s.rules)
            } else {
                let Some(s) = typed::<TcpRouteSpec>(obj, Some("spec")) else {
                    continue;
                };
                (s.parent_refs, vec![], s.rules)
            };
            let mut ref_error = None;
            let udp = kind == "UDPRoute";
            let backends = if udp {
                Arc::new(Backends::default())
            } else {
                Arc::new(backends(
                    idx,
                    upstreams,
                    kind,
                    &meta,
                    &rules,
                    &mut ref_error,
                ))
            };
            let input = RouteInput::new(key, obj, meta, parent_refs, hostnames);
            let attachment = Attachment {
                ref_error: ref_error.as_ref(),
                unsupported: None,
                refused: udp.then_some("gw does not serve UDP: UDPRoutes are stored, not served"),
            };
            // The oldest route keeps a server name (TCP: the listener).
            let mut place = |l: &mut ListenerCtx, _: (usize, usize), patterns: &[String]| {
                l.attached += 1;
                for host in patterns {
                    l.l4_routes.entry(host, || backends.clone());
                }
            };
            if let Some(status) = attach(
                idx,
                gateways,
                &input,
                &attachment,
                &mut place,
                controller,
                now_ms,
            ) {
                out.push((key.clone(), status, input.meta));
            }
        }
    }
    out
}
