//! HTTPRoutes and GRPCRoutes: their rules compiled into matchers and actions, their attachment to
//! listeners (sectionName, port, allowed namespaces and kinds, hostname intersection), and their
//! `status.parents`.

use super::backends::{RefError, Referrer, Upstreams};
use super::conditions::{Cond, object, render};
use super::gateways::{GatewayCtx, ListenerCtx};
use super::index::{Index, Meta, typed};
use super::sessions::{RuleRef, session_config};
use super::{CompileOptions, DesiredStatus, Statuses};
use crate::hostname;
use crate::table::{
    BackendEntry, BackendTarget, Backends, Filters, HeaderMod, HostIndex, MatchEntry, PathMatch,
    PathModifier, Precedence, Redirect, RequestMatcher, Rewrite, RouteInfo, RuleAction, Timeouts,
    ValueMatch, full_match_regex,
};
use gw_model::ObjectKey;
use gw_model::duration;
use gw_model::grpcroute::{GrpcRouteFilter, GrpcRouteFilterType, GrpcRouteSpec};
use gw_model::httproute::{
    HttpPathModifier, HttpRouteFilter, HttpRouteFilterType, HttpRouteSpec, PathMatchType,
    StringMatchType,
};
use gw_model::kinds::GATEWAY_GROUP;
use gw_model::route::{BackendRef, HeaderModifier, ParentReference};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod l4;

/// A rule ready to be placed on listeners.
struct CompiledRule {
    action: Arc<RuleAction>,
    /// One matcher per match of the rule, with its precedence class.
    matchers: Vec<(RequestMatcher, Vec<i64>)>,
}

/// What the rules of a route came to.
struct CompiledRoute {
    rules: Vec<CompiledRule>,
    /// First reference problem (ResolvedRefs=False).
    ref_error: Option<RefError>,
    /// A value gw cannot implement (Accepted=False, UnsupportedValue).
    unsupported: Option<String>,
}

/// The parts of a route attachment and status that do not depend on its kind.
pub struct RouteInput<'a> {
    pub key: &'a ObjectKey,
    pub meta: Meta,
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub previous_status: &'a Value,
}

impl<'a> RouteInput<'a> {
    /// Route `key`, stored as `obj`.
    pub fn new(
        key: &'a ObjectKey,
        obj: &'a Value,
        meta: Meta,
        parent_refs: Vec<ParentReference>,
        hostnames: Vec<String>,
    ) -> RouteInput<'a> {
        RouteInput {
            key,
            meta,
            parent_refs,
            hostnames,
            previous_status: &obj["status"],
        }
    }
}

/// The kinds whose compilations are kept (`Kept`): they read every other object, and nothing
/// else reads them.
pub const MEMOIZED: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// What one compilation keeps of HTTPRoutes and GRPCRoutes for the next. Valid only while every other
/// object and the options are unchanged (`super::Memo` checks that and clears it otherwise): then a
/// route whose object is the same `Arc` compiles to the same entries, placements and status.
#[derive(Default)]
pub struct Kept {
    routes: BTreeMap<ObjectKey, Memoized>,
    /// The kept routes' desired statuses.
    pub statuses: Statuses,
    /// Every listener's route entries (by gateway, then listener) as the kept routes left them.
    placed: Option<Vec<Vec<Placed>>>,
}

impl Kept {
    pub fn clear(&mut self) {
        self.routes.clear();
        self.statuses.clear();
        self.placed = None;
    }
}

/// A listener's HTTP route entries and its count of attached routes.
#[derive(Clone)]
struct Placed {
    routes: HostIndex<Vec<Arc<MatchEntry>>>,
    consumers: HashMap<String, HostIndex<Vec<Arc<MatchEntry>>>>,
    attached: u32,
}

/// One route's compilation (its status aside): its match entries (hostname independent) and where
/// they were placed (gateway and listener indices, hostname patterns).
struct Memoized {
    obj: Arc<Value>,
    namespace: String,
    entries: Vec<Arc<MatchEntry>>,
    placements: Vec<((usize, usize), Vec<String>)>,
}

impl Memoized {
    /// Puts the route's entries on the listeners that accepted it, each in precedence order.
    fn place(&self, gateways: &mut [GatewayCtx]) {
        for ((g, l), patterns) in &self.placements {
            let l = &mut gateways[*g].listeners[*l];
            l.attached += 1;
            let routes = route_groups(l, &self.namespace);
            for host in patterns {
                let group = routes.entry(host, Vec::new);
                for e in &self.entries {
                    let at = group.partition_point(|x| x.precedence <= e.precedence);
                    group.insert(at, e.clone());
                }
            }
        }
    }

    /// Takes the route's entries off the listeners `place` put them on.
    fn unplace(&self, gateways: &mut [GatewayCtx]) {
        for ((g, l), patterns) in &self.placements {
            let l = &mut gateways[*g].listeners[*l];
            l.attached -= 1;
            let routes = route_groups(l, &self.namespace);
            for host in patterns {
                let Some(group) = routes.get_mut(host) else {
                    continue;
                };
                group.retain(|x| !self.entries.iter().any(|e| Arc::ptr_eq(e, x)));
                if group.is_empty() {
                    routes.remove(host);
                }
            }
            l.consumers.retain(|_, c| c.values().next().is_some());
        }
    }
}

/// Where a route's entries go on a listener: on a mesh Service port, a route of another namespace
/// than the Service's is a consumer route, for the callers of its own namespace only.
fn route_groups<'l>(
    l: &'l mut ListenerCtx,
    route_ns: &str,
) -> &'l mut HostIndex<Vec<Arc<MatchEntry>>> {
    let consumer = l
        .service_namespace
        .as_ref()
        .is_some_and(|ns| ns != route_ns);
    if consumer {
        l.consumers.entry(route_ns.to_string()).or_default()
    } else {
        &mut l.routes
    }
}

/// Processes every HTTPRoute and GRPCRoute (their desired statuses kept in `kept.statuses`), then the
/// layer-4 routes (theirs added to `out`). What `kept` holds is reused: a route whose object has not
/// changed is not compiled again, and when the listeners' entries were kept too, only the changed
/// routes' entries are taken off and put back.
pub fn process(
    idx: &Index<'_>,
    gateways: &mut [GatewayCtx],
    upstreams: &mut Upstreams,
    opts: &CompileOptions,
    kept: &mut Kept,
    out: &mut Vec<(Arc<ObjectKey>, DesiredStatus)>,
) {
    let (controller, now_ms) = (opts.controller_name.as_str(), opts.now_ms);
    // The same options and objects make the same listeners: the kept entries fit them.
    let patching = match kept.placed.take() {
        Some(placed) => {
            for (g, placed) in gateways.iter_mut().zip(placed) {
                for (l, p) in g.listeners.iter_mut().zip(placed) {
                    (l.routes, l.consumers, l.attached) = (p.routes, p.consumers, p.attached);
                }
            }
            true
        }
        None => false,
    };
    let (mut changed, mut stale) = (Vec::new(), Vec::new());
    for kind in MEMOIZED {
        // The kept routes and the snapshot's, both in key order, walked side by side.
        let mut walk = kept
            .routes
            .range(ObjectKey::new(GATEWAY_GROUP, kind, "", "")..)
            .take_while(|(k, _)| k.group == GATEWAY_GROUP && k.kind == kind)
            .peekable();
        for (key, obj) in idx.range_of_kind(GATEWAY_GROUP, kind) {
            // The same `Arc` is the same key: compare keys only where the two walks part.
            if !walk.peek().is_some_and(|(_, m)| Arc::ptr_eq(&m.obj, obj)) {
                while let Some((gone, _)) = walk.next_if(|(k, _)| *k < key) {
                    stale.push(gone.clone());
                }
            }
            if let Some((_, m)) = walk.next_if(|(_, m)| Arc::ptr_eq(&m.obj, obj)) {
                if !patching {
                    m.place(gateways);
                }
                continue;
            }
            if let Some((k, _)) = walk.next_if(|(k, _)| *k == key) {
                stale.push(k.clone());
            }
            changed.push((key, obj));
        }
        stale.extend(walk.map(|(k, _)| k.clone()));
    }
    for key in stale {
        kept.statuses.remove(&key);
        if let Some(m) = kept.routes.remove(&key)
            && patching
        {
            m.unplace(gateways);
        }
    }
    for (key, obj) in changed {
        let Some((m, status)) = compile_route(idx, gateways, upstreams, opts, key, obj) else {
            continue;
        };
        m.place(gateways);
        if let Some(status) = status {
            kept.statuses.insert(Arc::new(key.clone()), status);
        }
        kept.routes.insert(key.clone(), m);
    }
    kept.placed = Some(
        gateways
            .iter()
            .map(|g| {
                g.listeners
                    .iter()
                    .map(|l| Placed {
                        routes: l.routes.clone(),
                        consumers: l.consumers.clone(),
                        attached: l.attached,
                    })
                    .collect()
            })
            .collect(),
    );
    let l4 = l4::process(idx, gateways, upstreams, controller, now_ms);
    out.extend(
        l4.into_iter()
            .map(|(k, status, meta)| (Arc::new(k), DesiredStatus::new(status, meta))),
    );
}

/// Compiles one HTTPRoute or GRPCRoute and finds the listeners that accept it, without placing it
/// (`Memoized::place` does); with its status, if it names a parent this node serves. `None` for an
/// object that does not parse as its kind.
fn compile_route(
    idx: &Index<'_>,
    gateways: &mut [GatewayCtx],
    upstreams: &mut Upstreams,
    opts: &CompileOptions,
    key: &ObjectKey,
    obj: &Arc<Value>,
) -> Option<(Memoized, Option<DesiredStatus>)> {
    let meta = Meta::of(obj);
    let (parent_refs, hostnames, compiled) = if key.kind == "GRPCRoute" {
        let spec = typed::<GrpcRouteSpec>(obj, Some("spec"))?;
        let c = compile_grpc(idx, upstreams, &meta, &spec);
        (spec.parent_refs, spec.hostnames, c)
    } else {
        let spec = typed::<HttpRouteSpec>(obj, Some("spec"))?;
        let c = compile_http(idx, upstreams, &meta, &spec, opts.fault_exact_as_prefix);
        (spec.parent_refs, spec.hostnames, c)
    };
    let input = RouteInput::new(key, obj, meta, parent_refs, hostnames);
    let attachment = Attachment {
        ref_error: compiled.ref_error.as_ref(),
        unsupported: compiled.unsupported.as_deref(),
        refused: None,
    };
    let mut placements = Vec::new();
    let mut place = |_: &mut ListenerCtx, at: (usize, usize), patterns: &[String]| {
        placements.push((at, patterns.to_vec()));
    };
    let status = attach(
        idx,
        gateways,
        &input,
        &attachment,
        &mut place,
        &opts.controller_name,
        opts.now_ms,
    );
    let m = Memoized {
        obj: obj.clone(),
        entries: match_entries(&compiled, &input.meta),
        namespace: input.meta.namespace.clone(),
        placements,
    };
    Some((m, status.map(|s| DesiredStatus::new(s, input.meta))))
}

/// What a route's attachment needs to know of its compiled rules.
pub struct Attachment<'a> {
    /// First reference problem (ResolvedRefs=False).
    pub ref_error: Option<&'a RefError>,
    /// A value gw cannot implement (Accepted=False, UnsupportedValue), once a listener accepts it.
    pub unsupported: Option<&'a str>,
    /// A kind gw stores but does not serve (Accepted=False, UnsupportedValue, on any parent).
    pub refused: Option<&'a str>,
}

/// Notes a listener that accepted a route (its gateway's and its own index) and the hostname
/// patterns to place the route's rules under; the listener's `attached` count is the caller's.
pub type Place<'p> = dyn FnMut(&mut ListenerCtx, (usize, usize), &[String]) + 'p;

/// One entry per match of each rule of a route, in rule order.
fn match_entries(compiled: &CompiledRoute, meta: &Meta) -> Vec<Arc<MatchEntry>> {
    let mut out = Vec::new();
    for (ri, rule) in compiled.rules.iter().enumerate() {
        for (mi, (m, class)) in rule.matchers.iter().enumerate() {
            out.push(Arc::new(MatchEntry {
                matcher: m.clone(),
                action: rule.action.clone(),
                precedence: Precedence {
                    class: class.clone(),
                    created_ms: meta.created_ms,
                    route: meta.id(),
                    rule: ri,
                    index: mi,
                },
            }));
        }
    }
    out
}

/// Attaches a route to the listeners its parentRefs select (`place` puts it on each); returns its
/// new status if any parentRef names a Gateway this node serves.
pub fn attach(
    idx: &Index<'_>,
    gateways: &mut [GatewayCtx],
    r: &RouteInput<'_>,
    compiled: &Attachment<'_>,
    place: &mut Place<'_>,
    controller: &str,
    now_ms: u64,
) -> Option<Value> {
    let route_ns = r.meta.namespace.as_str();
    let mut ours = Vec::new();
    for pr in &r.parent_refs {
        // A Gateway this node serves, or a Service of the mesh a mesh node serves.
        let gw_ns = pr.namespace.as_deref().unwrap_or(route_ns);
        let Some(gi) = gateways.iter().position(|g| {
            g.key.group == pr.group
                && g.key.kind == pr.kind
                && g.key.namespace == gw_ns
                && g.key.name == pr.name
        }) else {
            continue;
        };
        let accepted = match compiled.refused {
            Some(why) => Cond::fail("Accepted", "UnsupportedValue", why),
            None => attach_to_gateway(
                idx,
                (gi, &mut gateways[gi]),
                r,
                compiled.unsupported,
                pr,
                place,
            ),
        };
        let resolved = match compiled.ref_error {
            Some(e) => Cond::fail("ResolvedRefs", e.reason, e.message.clone()),
            None => Cond::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
        };
        ours.push((pr.clone(), accepted, resolved));
    }
    if ours.is_empty() {
        return None;
    }
    // Keep other controllers' entries (and ours for Gateways this node does not serve).
    let served: Vec<&ObjectKey> = gateways.iter().map(|g| &g.key).collect();
    let mut parents: Vec<Value> = r.previous_status["parents"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p["controllerName"] != controller || {
                        let pr = &p["parentRef"];
                        let group = pr["group"].as_str().unwrap_or(GATEWAY_GROUP);
                        let kind = pr["kind"].as_str().unwrap_or("Gateway");
                        let ns = pr["namespace"].as_str().unwrap_or(route_ns);
                        let name = pr["name"].as_str().unwrap_or("");
                        !served.iter().any(|k| {
                            k.group == group
                                && k.kind == kind
                                && k.namespace == ns
                                && k.name == name
                        })
                    }
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for (pr, accepted, resolved) in ours {
        let pr = serde_json::to_value(&pr).unwrap_or(Value::Null);
        let prev = r.previous_status["parents"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["controllerName"] == controller && p["parentRef"] == pr)
            })
            .map(|p| &p["conditions"])
            .unwrap_or(&Value::Null);
        let conditions = render(&[accepted, resolved], prev, r.meta.generation, now_ms);
        parents.push(object([
            ("parentRef", pr),
            ("controllerName", controller.into()),
            ("conditions", conditions),
        ]));
    }
    Some(object([("parents", Value::Array(parents))]))
}

/// The Accepted condition of one parentRef to a served Gateway, attaching the route's rules to every
/// listener that accepts it.
fn attach_to_gateway(
    idx: &Index<'_>,
    (gi, g): (usize, &mut GatewayCtx),
    r: &RouteInput<'_>,
    unsupported: Option<&str>,
    pr: &ParentReference,
    place: &mut Place<'_>,
) -> Cond {
    let candidates: Vec<usize> = g
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| pr.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| pr.port.is_none_or(|p| p == i64::from(l.port)))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Cond::fail(
            "Accepted",
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port",
        );
    }
    // A mesh route applies to the Service it names whatever Host its callers send: its hostnames
    // are not matched (GAMMA).
    let route_hosts: &[String] = if g.is_service() { &[] } else { &r.hostnames };
    let mut allowed_any = false;
    let mut attached = Vec::new();
    for i in candidates {
        let l = &g.listeners[i];
        if !l.protocol_supported
            || !l.allows_kind(&r.key.group, &r.key.kind)
            || !l.allows_namespace(idx, &g.key.namespace, &r.meta.namespace)
        {
            continue;
        }
        allowed_any = true;
        if let Some(hosts) = hostname::effective(l.hostname.as_deref(), route_hosts) {
            attached.push((i, hosts));
        }
    }
    if attached.is_empty() {
        return if allowed_any {
            Cond::fail(
                "Accepted",
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames",
            )
        } else {
            Cond::fail(
                "Accepted",
                "NotAllowedByListeners",
                "the listeners do not allow this route (namespace or kind)",
            )
        };
    }
    if let Some(why) = unsupported {
        return Cond::fail("Accepted", "UnsupportedValue", why);
    }
    for (i, hosts) in attached {
        let patterns: Vec<String> = if hosts.is_empty() {
            vec![String::new()]
        } else {
            hosts
        };
        place(&mut g.listeners[i], (gi, i), &patterns);
    }
    Cond::ok("Accepted", "Accepted", "accepted by the gateway")
}

/// The Services among a route's parents (`namespace`, `name`): the route is a mesh route for them.
fn parent_services(refs: &[ParentReference], route_ns: &str) -> Vec<(String, String)> {
    refs.iter()
        .filter(|p| is_service_parent(p))
        .map(|p| {
            (
                p.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
                p.name.clone(),
            )
        })
        .collect()
}

/// Whether a parentRef names a Service (GAMMA), not a Gateway.
fn is_service_parent(p: &ParentReference) -> bool {
    p.group.is_empty() && p.kind == "Service"
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|e| format!("header name {name:?}: {e}"))
}

fn header_mod(m: &HeaderModifier) -> Result<HeaderMod, String> {
    let pairs =
        |list: &[gw_model::route::HttpHeader]| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
            list.iter()
                .map(|h| {
                    Ok((
                        header_name(&h.name)?,
                        HeaderValue::from_str(&h.value)
                            .map_err(|e| format!("header value of {}: {e}", h.name))?,
                    ))
                })
                .collect()
        };
    Ok(HeaderMod {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(m: &HttpPathModifier) -> Option<PathModifier> {
    match m.kind {
        gw_model::httproute::PathModifierType::ReplaceFullPath => {
            m.replace_full_path.clone().map(PathModifier::Full)
        }
        gw_model::httproute::PathModifierType::ReplacePrefixMatch => {
            m.replace_prefix_match.clone().map(PathModifier::Prefix)
        }
    }
}

/// What resolving a route's references needs.
struct RefContext<'a, 'b> {
    idx: &'a Index<'b>,
    upstreams: &'a mut Upstreams,
    from: Referrer<'a>,
    grpc: bool,
}

/// Route-kind independent filter parts, accumulated while walking a filter list.
struct FilterBuilder<'c, 'a, 'b> {
    ctx: &'c mut RefContext<'a, 'b>,
    filters: Filters,
    ref_error: Option<RefError>,
}

impl<'c, 'a, 'b> FilterBuilder<'c, 'a, 'b> {
    fn new(ctx: &'c mut RefContext<'a, 'b>) -> Self {
        FilterBuilder {
            ctx,
            filters: Filters::default(),
            ref_error: None,
        }
    }
}

impl FilterBuilder<'_, '_, '_> {
    fn headers(&mut self, request: Option<&HeaderModifier>, response: Option<&HeaderModifier>) {
        for (m, target) in [(request, true), (response, false)] {
            let Some(m) = m else { continue };
            match header_mod(m) {
                Ok(h) if target => self.filters.request_headers = h,
                Ok(h) => self.filters.response_headers = h,
                Err(e) => self.filters.invalid = Some(e),
            }
        }
    }

    fn mirror(&mut self, b: &gw_model::route::BackendObjectReference) {
        let c = &mut *self.ctx;
        match c.upstreams.resolve(c.idx, c.from, b, c.grpc) {
            Ok(u) => self.filters.mirrors.push(u),
            Err(e) => {
                self.ref_error.get_or_insert(e);
            }
        }
    }

    fn extension_ref(&mut self, e: &gw_model::route::LocalObjectReference) {
        let msg = format!(
            "ExtensionRef filter {}/{} {:?} is not supported",
            e.group, e.kind, e.name
        );
        self.ref_error
            .get_or_insert(RefError::new("InvalidKind", msg.clone()));
        self.filters.invalid = Some(msg);
    }
}

fn http_filters(b: &mut FilterBuilder<'_, '_, '_>, list: &[HttpRouteFilter]) {
    for f in list {
        match f.kind {
            HttpRouteFilterType::RequestHeaderModifier
            | HttpRouteFilterType::ResponseHeaderModifier => b.headers(
                f.request_header_modifier.as_ref(),
                f.response_header_modifier.as_ref(),
            ),
            HttpRouteFilterType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    b.mirror(&m.backend_ref);
                }
            }
            HttpRouteFilterType::RequestRedirect => {
                if let Some(r) = &f.request_redirect {
                    b.filters.redirect = Some(Redirect {
                        scheme: r.scheme.map(|s| s.as_str()),
                        hostname: r.hostname.clone(),
                        port: r.port.and_then(|p| u16::try_from(p).ok()),
                        path: r.path.as_ref().and_then(path_modifier),
                        status: StatusCode::from_u16(r.status_code as u16)
                            .unwrap_or(StatusCode::FOUND),
                    });
                }
            }
            HttpRouteFilterType::UrlRewrite => {
                if let Some(r) = &f.url_rewrite {
                    let hostname = match r.hostname.as_deref().map(HeaderValue::from_str) {
                        Some(Ok(v)) => Some(v),
                        Some(Err(e)) => {
                            b.filters.invalid = Some(format!("rewrite hostname: {e}"));
                            None
                        }
                        None => None,
                    };
                    b.filters.rewrite = Some(Rewrite {
                        hostname,
                        path: r.path.as_ref().and_then(path_modifier),
                    });
                }
            }
            HttpRouteFilterType::ExtensionRef => {
                if let Some(e) = &f.extension_ref {
                    b.extension_ref(e);
                }
            }
        }
    }
}

fn grpc_filters(b: &mut FilterBuilder<'_, '_, '_>, list: &[GrpcRouteFilter]) {
    for f in list {
        match f.kind {
            GrpcRouteFilterType::RequestHeaderModifier
            | GrpcRouteFilterType::ResponseHeaderModifier => b.headers(
                f.request_header_modifier.as_ref(),
                f.response_header_modifier.as_ref(),
            ),
            GrpcRouteFilterType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    b.mirror(&m.backend_ref);
                }
            }
            GrpcRouteFilterType::ExtensionRef => {
                if let Some(e) = &f.extension_ref {
                    b.extension_ref(e);
                }
            }
        }
    }
}

/// Compiles the weighted backends of a rule, each with its own filters.
fn backends<F>(
    ctx: &mut RefContext<'_, '_>,
    refs: &[BackendRef<F>],
    ref_error: &mut Option<RefError>,
    apply_filters: impl Fn(&mut FilterBuilder<'_, '_, '_>, &[F]),
) -> Backends {
    let mut entries = Vec::with_capacity(refs.len());
    for br in refs {
        let target = match ctx
            .upstreams
            .resolve(ctx.idx, ctx.from, &br.object_ref(), ctx.grpc)
        {
            Ok(u) => BackendTarget::Upstream(u),
            Err(e) => {
                let msg = e.message.clone();
                ref_error.get_or_insert(e);
                BackendTarget::Invalid(msg)
            }
        };
        let mut fb = FilterBuilder::new(ctx);
        apply_filters(&mut fb, &br.filters);
        if let Some(e) = fb.ref_error {
            ref_error.get_or_insert(e);
        }
        entries.push(BackendEntry {
            weight: u64::try_from(br.weight).unwrap_or(0),
            target,
            filters: fb.filters,
        });
    }
    Backends::new(entries)
}

fn value_match(kind: StringMatchType, value: &str) -> Result<ValueMatch, String> {
    match kind {
        StringMatchType::Exact => Ok(ValueMatch::Exact(value.to_string())),
        StringMatchType::RegularExpression => full_match_regex(value)
            .map(ValueMatch::Regex)
            .map_err(|e| format!("regular expression {value:?}: {e}")),
    }
}

fn compile_http(
    idx: &Index<'_>,
    upstreams: &mut Upstreams,
    meta: &Meta,
    spec: &HttpRouteSpec,
    exact_as_prefix: bool,
) -> CompiledRoute {
    let route = Arc::new(RouteInfo::new(format!("HTTPRoute {}", meta.id()), false));
    let parents = parent_services(&spec.parent_refs, &meta.namespace);
    let mut out = CompiledRoute {
        rules: vec![],
        ref_error: None,
        unsupported: None,
    };
    for (ri, rule) in spec.rules.iter().enumerate() {
        let mut ctx = RefContext {
            idx,
            upstreams: &mut *upstreams,
            from: Referrer {
                kind: "HTTPRoute",
                namespace: &meta.namespace,
                origin: &meta.origin,
                parent_services: &parents,
            },
            grpc: false,
        };
        let mut fb = FilterBuilder::new(&mut ctx);
        http_filters(&mut fb, &rule.filters);
        let (filters, filter_err) = (fb.filters, fb.ref_error);
        if let Some(e) = filter_err {
            out.ref_error.get_or_insert(e);
        }
        let backends = backends(
            &mut ctx,
            &rule.backend_refs,
            &mut out.ref_error,
            http_filters,
        );
        let timeouts = rule.timeouts.as_ref().map(|t| Timeouts {
            request: t
                .request
                .as_deref()
                .and_then(duration::parse)
                .filter(|d| !d.is_zero()),
            backend: t
                .backend_request
                .as_deref()
                .and_then(duration::parse)
                .filter(|d| !d.is_zero()),
        });
        let prefix = rule
            .matches
            .iter()
            .find(|m| m.path.kind == PathMatchType::PathPrefix)
            .map(|m| m.path.value.clone());
        let paths: Vec<&str> = rule
            .matches
            .iter()
            .filter(|m| m.path.kind != PathMatchType::RegularExpression)
            .map(|m| m.path.value.as_str())
            .collect();
        let cookie_path = match paths.first() {
            Some(p) if paths.len() == rule.matches.len() && paths.iter().all(|q| q == p) => p,
            _ => "/",
        };
        let session = session_config(
            idx,
            &RuleRef {
                route_kind: "HTTPRoute",
                meta,
                index: ri,
                path: cookie_path,
            },
            rule.session_persistence.as_ref(),
            &rule.backend_refs,
        );
        let action = Arc::new(RuleAction {
            route: route.clone(),
            rule_index: ri,
            filters,
            backends,
            timeouts: timeouts.unwrap_or_default(),
            prefix,
            session,
        });
        let mut matchers = Vec::new();
        for m in &rule.matches {
            let path = match m.path.kind {
                PathMatchType::Exact if exact_as_prefix => Ok(PathMatch::Prefix(
                    m.path.value.trim_end_matches('/').to_string(),
                )),
                PathMatchType::Exact => Ok(PathMatch::Exact(m.path.value.clone())),
                PathMatchType::PathPrefix => Ok(PathMatch::Prefix(
                    m.path.value.trim_end_matches('/').to_string(),
                )),
                PathMatchType::RegularExpression => full_match_regex(&m.path.value)
                    .map(PathMatch::Regex)
                    .map_err(|e| format!("path regular expression {:?}: {e}", m.path.value)),
            };
            let headers: Result<Vec<_>, String> = m
                .headers
                .iter()
                .map(|h| Ok((header_name(&h.name)?, value_match(h.kind, &h.value)?)))
                .collect();
            let query: Result<Vec<_>, String> = m
                .query_params
                .iter()
                .map(|q| Ok((q.name.clone(), value_match(q.kind, &q.value)?)))
                .collect();
            match (path, headers, query) {
                (Ok(path), Ok(headers), Ok(query)) => {
                    let class = vec![
                        // Regular-expression precedence is implementation-specific: gw puts it after
                        // Exact and before every PathPrefix (a catch-all "/" must not hide it).
                        match m.path.kind {
                            PathMatchType::Exact => 0,
                            PathMatchType::RegularExpression => 1,
                            PathMatchType::PathPrefix => 2,
                        },
                        -(m.path.value.len() as i64),
                        i64::from(m.method.is_none()),
                        -(headers.len() as i64),
                        -(query.len() as i64),
                    ];
                    let method = m.method.map(|x| {
                        Method::from_bytes(x.as_str().as_bytes()).expect("standard method")
                    });
                    matchers.push((
                        RequestMatcher {
                            path,
                            method,
                            headers,
                            query,
                        },
                        class,
                    ));
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    out.unsupported.get_or_insert(e);
                }
            }
        }
        out.rules.push(CompiledRule { action, matchers });
    }
    out
}

fn compile_grpc(
    idx: &Index<'_>,
    upstreams: &mut Upstreams,
    meta: &Meta,
    spec: &GrpcRouteSpec,
) -> CompiledRoute {
    let route = Arc::new(RouteInfo::new(format!("GRPCRoute {}", meta.id()), true));
    let parents = parent_services(&spec.parent_refs, &meta.namespace);
    let mut out = CompiledRoute {
        rules: vec![],
        ref_error: None,
        unsupported: None,
    };
    // A GRPCRoute without rules still matches every request of its hostnames.
    let default_rule = gw_model::grpcroute::GrpcRouteRule {
        matches: vec![],
        filters: vec![],
        backend_refs: vec![],
        session_persistence: None,
    };
    let rules: Vec<&gw_model::grpcroute::GrpcRouteRule> = if spec.rules.is_empty() {
        vec![&default_rule]
    } else {
        spec.rules.iter().collect()
    };
    for (ri, rule) in rules.into_iter().enumerate() {
        let mut ctx = RefContext {
            idx,
            upstreams: &mut *upstreams,
            from: Referrer {
                kind: "GRPCRoute",
                namespace: &meta.namespace,
                origin: &meta.origin,
                parent_services: &parents,
            },
            grpc: true,
        };
        let mut fb = FilterBuilder::new(&mut ctx);
        grpc_filters(&mut fb, &rule.filters);
        let (filters, filter_err) = (fb.filters, fb.ref_error);
        if let Some(e) = filter_err {
            out.ref_error.get_or_insert(e);
        }
        let backends = backends(
            &mut ctx,
            &rule.backend_refs,
            &mut out.ref_error,
            grpc_filters,
        );
        let session = session_config(
            idx,
            &RuleRef {
                route_kind: "GRPCRoute",
                meta,
                index: ri,
                path: "/",
            },
            rule.session_persistence.as_ref(),
            &rule.backend_refs,
        );
        let action = Arc::new(RuleAction {
            route: route.clone(),
            rule_index: ri,
            filters,
            backends,
            timeouts: Timeouts::default(),
            prefix: None,
            session,
        });
        let all = gw_model::grpcroute::GrpcRouteMatch {
            method: None,
            headers: vec![],
        };
        let matches: Vec<&gw_model::grpcroute::GrpcRouteMatch> = if rule.matches.is_empty() {
            vec![&all]
        } else {
            rule.matches.iter().collect()
        };
        let mut matchers = Vec::new();
        for m in matches {
            let (service, method) = m
                .method
                .as_ref()
                .map(|x| (x.service.clone(), x.method.clone()))
                .unwrap_or((None, None));
            let regex = m
                .method
                .as_ref()
                .is_some_and(|x| x.kind == StringMatchType::RegularExpression);
            // gRPC requests are POSTs to /<package.Service>/<Method>.
            let path = match (regex, &service, &method) {
                (false, Some(s), Some(me)) => Ok(PathMatch::Exact(format!("/{s}/{me}"))),
                (false, Some(s), None) => Ok(PathMatch::Prefix(format!("/{s}"))),
                (false, None, Some(me)) => {
                    full_match_regex(&format!("/[^/]+/{}", regex::escape(me)))
                        .map(PathMatch::Regex)
                        .map_err(|e| e.to_string())
                }
                (false, None, None) => Ok(PathMatch::Prefix(String::new())),
                (true, s, me) => full_match_regex(&format!(
                    "/{}/{}",
                    s.as_deref().unwrap_or("[^/]+"),
                    me.as_deref().unwrap_or("[^/]+")
                ))
                .map(PathMatch::Regex)
                .map_err(|e| format!("gRPC method regular expression: {e}")),
            };
            let headers: Result<Vec<_>, String> = m
                .headers
                .iter()
                .map(|h| Ok((header_name(&h.name)?, value_match(h.kind, &h.value)?)))
                .collect();
            match (path, headers) {
                (Ok(path), Ok(headers)) => {
                    let class = vec![
                        -(service.as_deref().map_or(0, str::len) as i64),
                        -(method.as_deref().map_or(0, str::len) as i64),
                        -(headers.len() as i64),
                    ];
                    matchers.push((
                        RequestMatcher {
                            path,
                            method: None,
                            headers,
                            query: vec![],
                        },
                        class,
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    out.unsupported.get_or_insert(e);
                }
            }
        }
        out.rules.push(CompiledRule { action, matchers });
    }
    out
}
