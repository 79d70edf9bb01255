//! The routing table a gateway node serves: built by the compiler from one committed revision, swapped
//! atomically, read by every request. Lookup is pure: socket → listener (most specific hostname, the
//! Gateway API's listener isolation) → route rules (hostname precedence, then match precedence).

mod locality;
mod persistence;

use locality::Tiers;
pub use locality::{EndpointHealth, EndpointInfo, Health, Locality, Placement};
pub use persistence::{Carrier, DEFAULT_NAME, SessionConfig};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Everything a node serves at one revision.
#[derive(Default)]
pub struct RoutingTable {
    pub revision: u64,
    /// One entry per socket to listen on.
    pub sockets: BTreeMap<SocketAddr, Arc<SocketTable>>,
    /// Whether responses carry `gw-revision` (the class's `gw.dev/revision-header` annotation).
    pub revision_header: bool,
    /// A mesh node's callers: the namespace of each pod address (consumer routes apply to the
    /// callers of their namespace).
    pub callers: HashMap<IpAddr, String>,
}

/// How a TLS or TCP listener forwards connections (a TCPRoute's or TLSRoute's backend gets the
/// byte stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Mode {
    /// TLS, chosen by the ClientHello's server name and forwarded untouched (the backend
    /// terminates it).
    TlsPassthrough,
    /// TLS terminated here (the listener's certificate); the plaintext stream is forwarded.
    TlsTerminate,
    /// Plain TCP.
    Tcp,
}

/// The listeners served on one socket (several Gateways' listeners may share a port).
pub struct SocketTable {
    pub addr: SocketAddr,
    /// An HTTPS socket: every connection starts with a TLS handshake (see `tls_for`).
    pub https: bool,
    /// A TLS or TCP socket: connections are forwarded to the backends of TLSRoutes and TCPRoutes
    /// (see `ListenerTable::l4`).
    pub l4: bool,
    pub listeners: Vec<ListenerTable>,
    pub by_host: HostIndex<usize>,
}

impl SocketTable {
    /// The listener a TLS handshake is for — its server name (SNI) picks it as a Host does, a
    /// handshake without one gets the listener without hostname — and that listener's TLS
    /// configuration; `None` when the handshake must be refused.
    pub fn tls_for(
        &self,
        server_name: Option<&str>,
    ) -> Option<(&ListenerTable, Arc<rustls::ServerConfig>)> {
        let name = server_name.map(str::to_ascii_lowercase).unwrap_or_default();
        let l = self.listener_for(&name)?;
        Some((l, l.tls.clone()?))
    }

    /// The listener that owns a request's host: the most specific listener hostname wins.
    pub fn listener_for(&self, host: &str) -> Option<&ListenerTable> {
        self.by_host
            .lookup(host)
            .next()
            .map(|i| &self.listeners[*i])
    }
}

/// One Gateway listener with the routes attached to it.
pub struct ListenerTable {
    /// `namespace/gateway/listener`, for metrics and logs.
    pub id: String,
    pub port: u16,
    pub https: bool,
    /// An HTTPS listener's TLS configuration (`None`: its client CAs are not resolved, every
    /// handshake is refused).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Clients must present a certificate (`frontendValidation`): a request reaches this listener
    /// only on a connection whose handshake was for it.
    pub verifies_clients: bool,
    pub routes: HostIndex<Vec<Arc<MatchEntry>>>,
    /// A mesh Service port: the consumer routes, by the namespace whose callers they apply to
    /// instead of `routes` (GAMMA).
    pub consumers: HashMap<String, HostIndex<Vec<Arc<MatchEntry>>>>,
    /// TLS and TCP listeners: the mode, and the routes' backends by server name (TCP: `""`).
    pub l4: Option<(L4Mode, HostIndex<Arc<Backends>>)>,
}

impl ListenerTable {
    /// The action of the highest-precedence rule matching the request, if any; a caller of a
    /// namespace with consumer routes gets those instead of the producer's.
    pub fn route<'a>(
        &'a self,
        host: &'a str,
        req: &RequestView<'_>,
        caller_namespace: Option<&str>,
    ) -> Option<&'a MatchEntry> {
        caller_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.routes)
            .lookup(host)
            .flat_map(|group| group.iter())
            .find(|e| e.matcher.matches(req))
            .map(|e| &**e)
    }
}

/// An index by hostname: exact names, then wildcards (most characters first), then "any".
#[derive(Clone)]
pub struct HostIndex<T> {
    exact: HashMap<String, T>,
    /// `(".suffix", T)`, longest suffix first.
    wildcard: Vec<(String, T)>,
    any: Option<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: None,
        }
    }
}

impl<T> HostIndex<T> {
    /// The entry for a hostname pattern (`""` = any), created with `init` if missing.
    pub fn entry(&mut self, pattern: &str, init: impl FnOnce() -> T) -> &mut T {
        if pattern.is_empty() {
            return self.any.get_or_insert_with(init);
        }
        if let Some(suffix) = pattern.strip_prefix('*') {
            let pos = match self.wildcard.iter().position(|(s, _)| s == suffix) {
                Some(p) => p,
                None => {
                    // Keep longest-first order.
                    let at = self
                        .wildcard
                        .iter()
                        .position(|(s, _)| s.len() < suffix.len())
                        .unwrap_or(self.wildcard.len());
                    self.wildcard.insert(at, (suffix.to_string(), init()));
                    at
                }
            };
            return &mut self.wildcard[pos].1;
        }
        // Most calls find the name (one per route of a hostname): no key to build for those.
        if !self.exact.contains_key(pattern) {
            self.exact.insert(pattern.to_string(), init());
        }
        self.exact.get_mut(pattern).expect("inserted above")
    }

    /// The entry for a hostname pattern, if it has one.
    pub fn get_mut(&mut self, pattern: &str) -> Option<&mut T> {
        if pattern.is_empty() {
            return self.any.as_mut();
        }
        match pattern.strip_prefix('*') {
            Some(suffix) => self
                .wildcard
                .iter_mut()
                .find(|(s, _)| s == suffix)
                .map(|(_, t)| t),
            None => self.exact.get_mut(pattern),
        }
    }

    /// Removes the entry for a hostname pattern.
    pub fn remove(&mut self, pattern: &str) {
        if pattern.is_empty() {
            self.any = None;
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            self.wildcard.retain(|(s, _)| s != suffix);
        } else {
            self.exact.remove(pattern);
        }
    }

    /// Entries whose pattern matches `host`, most specific first.
    pub fn lookup<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        self.exact
            .get(host)
            .into_iter()
            .chain(
                self.wildcard
                    .iter()
                    .filter(move |(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, t)| t),
            )
            .chain(self.any.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, t)| t))
            .chain(self.any.iter())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact
            .values_mut()
            .chain(self.wildcard.iter_mut().map(|(_, t)| t))
            .chain(self.any.iter_mut())
    }
}

/// What the matcher needs of a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// One `HTTPRouteMatch` (or GRPCRouteMatch, expressed on the request path) and the rule it leads to.
pub struct MatchEntry {
    pub matcher: RequestMatcher,
    pub action: Arc<RuleAction>,
    /// Sort key: lower is higher precedence.
    pub precedence: Precedence,
}

/// Precedence of a match among those on one hostname (Gateway API "match precedence"): the class key
/// first (for HTTPRoute: Exact before RegularExpression before PathPrefix, longer paths first, method,
/// more header matches, more query matches; for GRPCRoute: longer service, longer method, more header
/// matches), then the oldest route, then `namespace/name`, then rule order, then match order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    pub class: Vec<i64>,
    pub created_ms: u64,
    pub route: String,
    pub rule: usize,
    pub index: usize,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash ("/" is stored as "").
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// Compiles a Gateway API regular expression as a full match (RE2 semantics, as Envoy applies it).
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

#[derive(Debug, Clone)]
pub struct RequestMatcher {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

impl RequestMatcher {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        self.path.matches(r.path)
            && self.method.as_ref().is_none_or(|m| m == r.method)
            && self.headers.iter().all(|(name, m)| {
                // Several values of one header are compared joined, as HTTP folds them.
                let values: Vec<&str> = r
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                !values.is_empty() && m.matches(&values.join(","))
            })
            && self.query.iter().all(|(name, m)| {
                // The first value of a repeated parameter is the one matched (Gateway API recommendation).
                first_query_value(r.query, name).is_some_and(|v| m.matches(&v))
            })
    }
}

/// The first value of a query parameter (percent-decoded), if present.
pub fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Identifies a route for metrics and logs.
#[derive(Debug)]
pub struct RouteInfo {
    /// `HTTPRoute ns/name`
    pub id: String,
    pub grpc: bool,
    /// Its metric handles, resolved on first use.
    pub metrics: std::sync::OnceLock<crate::metrics::RouteMetrics>,
}

impl RouteInfo {
    pub fn new(id: String, grpc: bool) -> RouteInfo {
        RouteInfo {
            id,
            grpc,
            metrics: std::sync::OnceLock::new(),
        }
    }
}

/// What happens to a request matched by one rule.
pub struct RuleAction {
    pub route: Arc<RouteInfo>,
    pub rule_index: usize,
    pub filters: Filters,
    pub backends: Backends,
    pub timeouts: Timeouts,
    /// The rule's PathPrefix value (ReplacePrefixMatch replaces it).
    pub prefix: Option<String>,
    /// Session persistence, from the rule or a BackendLBPolicy.
    pub session: Option<Arc<SessionConfig>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole request: from receiving it to the end of the response headers.
    pub request: Option<Duration>,
    /// Each request to a backend.
    pub backend: Option<Duration>,
}

/// Header changes (set replaces, add appends, remove deletes; names are case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct HeaderMod {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMod {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

impl PathModifier {
    /// The new path for `path` (which matched `prefix`, if the rule has one).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix(replacement) => {
                let prefix = prefix.unwrap_or("").trim_end_matches('/');
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let joined = if replacement.ends_with('/') && rest.starts_with('/') {
                    format!("{replacement}{}", &rest[1..])
                } else {
                    format!("{replacement}{rest}")
                };
                if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<&'static str>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

/// Filters of a rule or of one backendRef.
#[derive(Default)]
pub struct Filters {
    pub request_headers: HeaderMod,
    pub response_headers: HeaderMod,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Arc<Upstream>>,
    /// A filter gw cannot apply (e.g. an unresolved ExtensionRef): the request gets a 500.
    pub invalid: Option<String>,
}

impl Filters {
    /// Whether these (a backendRef's) leave the request itself as it is: a request prepared for one
    /// backend whose filters do can go to another whose filters do too.
    pub fn keep_requests(&self) -> bool {
        self.request_headers.is_empty() && self.rewrite.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (appProtocol `kubernetes.io/h2c`, and gRPC backends).
    H2c,
}

/// TLS to a Service port's endpoints, as a BackendTLSPolicy asks.
#[derive(Debug)]
pub enum UpstreamTls {
    Verify(TlsTarget),
    /// The policy's CA certificates cannot be used: no request is sent (never in plaintext).
    Unusable(String),
}

/// How to connect over TLS: the server name sent (SNI) and verified, and the client configuration
/// (the policy's CAs; ALPN offers the upstream's protocol).
#[derive(Debug)]
pub struct TlsTarget {
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub config: Arc<rustls::ClientConfig>,
    /// Equal for equal settings across routing-table rebuilds: pooled connections are kept by it.
    pub pool_key: Arc<str>,
}

/// A Service port's endpoints.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/service:port`
    pub id: String,
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (a BackendTLSPolicy), with the policy's `namespace/name`.
    pub tls: Option<(UpstreamTls, String)>,
    pub endpoints: Vec<SocketAddr>,
    /// The stable identity of each endpoint (`upstream|pod|ip:port`, the pod by its uid when the
    /// EndpointSlice names it): what a session is bound to, so that a new pod reusing an IP is
    /// another backend.
    pub identities: Vec<String>,
    /// `ip:port` of each endpoint, ready for request URIs.
    authorities: Vec<http::uri::Authority>,
    /// The endpoints by locality (nearest first), with their health.
    tiers: Tiers,
    next: AtomicUsize,
}

impl Upstream {
    /// `endpoints` in any order: they are kept nearest to `placement`'s locality first.
    pub fn new(
        id: String,
        protocol: UpstreamProtocol,
        mut endpoints: Vec<EndpointInfo>,
        placement: &Placement,
    ) -> Upstream {
        let tiers = Tiers::sort(&mut endpoints, placement);
        let authorities = endpoints
            .iter()
            .map(|e| {
                http::uri::Authority::try_from(e.addr.to_string())
                    .expect("a socket address is an authority")
            })
            .collect();
        let identities = endpoints
            .iter()
            .map(|e| format!("{id}|{}|{}", e.pod, e.addr))
            .collect();
        Upstream {
            id,
            protocol,
            tls: None,
            endpoints: endpoints.into_iter().map(|e| e.addr).collect(),
            identities,
            authorities,
            tiers,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint the next request goes to (`locality`: the nearest healthy ones, in turn), but
    /// `exclude`; `draw` uniform over `u64`. `None`: there is none.
    pub fn pick_index(&self, draw: u64, now_ms: u64, exclude: Option<usize>) -> Option<usize> {
        let rr = self.next.fetch_add(1, Ordering::Relaxed);
        self.tiers.pick(rr, draw, now_ms, exclude)
    }

    /// An endpoint for a new session: as `pick_index`, but at random among the nearest healthy ones
    /// (`draw` uniform over `u64`).
    pub fn pick_at_random(
        &self,
        draw: &mut impl FnMut() -> u64,
        now_ms: u64,
        exclude: Option<usize>,
    ) -> Option<usize> {
        self.tiers.pick(draw() as usize, draw(), now_ms, exclude)
    }

    /// Endpoint `i`'s address and authority.
    pub fn endpoint(&self, i: usize) -> (SocketAddr, &http::uri::Authority) {
        (self.endpoints[i], &self.authorities[i])
    }

    /// What the node observed of endpoint `i`.
    pub fn health(&self, i: usize) -> &EndpointHealth {
        self.tiers.health(i)
    }

    /// Endpoint `i` refused a connection at `now_ms` (it is ejected for a while).
    pub fn connect_failed(&self, i: usize, now_ms: u64) {
        self.tiers.failed(i, now_ms);
    }

    /// Endpoint `i` accepted a connection.
    pub fn connected(&self, i: usize) {
        self.tiers.succeeded(i);
    }

    /// The endpoint with this identity, if it is still ready.
    pub fn find(&self, identity: &str) -> Option<usize> {
        self.identities.iter().position(|i| i == identity)
    }
}

pub enum BackendTarget {
    Upstream(Arc<Upstream>),
    /// A backendRef that cannot be used (not found, not permitted, unsupported kind): its share of the
    /// traffic gets a 500, as the spec requires.
    Invalid(String),
}

pub struct BackendEntry {
    pub weight: u64,
    pub target: BackendTarget,
    pub filters: Filters,
}

#[derive(Default)]
pub struct Backends {
    pub entries: Vec<BackendEntry>,
    pub total_weight: u64,
}

impl Backends {
    pub fn new(entries: Vec<BackendEntry>) -> Backends {
        let total_weight = entries.iter().map(|e| e.weight).sum();
        Backends {
            entries,
            total_weight,
        }
    }

    /// The total weight of the entries `eligible` admits.
    pub fn weight_where(&self, eligible: impl Fn(&BackendEntry) -> bool) -> u64 {
        self.entries
            .iter()
            .filter(|e| eligible(e))
            .map(|e| e.weight)
            .sum()
    }

    /// The weighted choice among the entries `eligible` admits: each with probability proportional to
    /// its weight, for `draw` uniform over `u64`. The index of the entry; `None` when their weights sum
    /// to 0. The one weighted choice of the data plane: plain requests and new sessions use it.
    pub fn choose_where(
        &self,
        draw: u64,
        eligible: impl Fn(&BackendEntry) -> bool,
    ) -> Option<usize> {
        let total = self.weight_where(&eligible);
        if total == 0 {
            return None;
        }
        let mut r = uniform_below(draw, total);
        self.entries.iter().position(|e| {
            if !eligible(e) || e.weight == 0 {
                return false;
            }
            if r < e.weight {
                return true;
            }
            r -= e.weight;
            false
        })
    }
}

/// Maps `draw`, uniform over `u64`, to a value uniform in `[0, n)` (multiply-shift: no modulo bias
/// worth the name for the small `n` of weights and endpoints).
pub fn uniform_below(draw: u64, n: u64) -> u64 {
    ((u128::from(draw) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests;
