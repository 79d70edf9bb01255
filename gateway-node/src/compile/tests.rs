//! The compiler as a table of cases: objects go through the real admission and state machine (so they
//! carry store metadata and CRD defaults), then routing decisions and statuses are checked.

use super::*;
use crate::table::{MatchEntry, RequestView};
use gw_model::{admit, parse_documents};
use gw_store::state::State;
use gw_store::types::{Op, Txn};
use http::{HeaderMap, HeaderValue, Method};

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-node}
";

fn services(names: &[&str], ns: &str) -> String {
    let mut out = String::new();
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {n}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {n}}}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints: [{{addresses: [10.0.{}.1]}}]\n",
            i + 1
        ));
    }
    out
}

/// Applies the documents one at a time (so creation order is document order) and returns the snapshot.
fn snapshot(yaml: &str) -> Snapshot {
    let mut state = State::new(100);
    put_all(&mut state, yaml);
    snapshot_of(&state)
}

/// Applies the documents one at a time, a second apart.
fn put_all(state: &mut State, yaml: &str) {
    for d in parse_documents("t.yaml", yaml).unwrap().iter() {
        let a = admit(d).unwrap_or_else(|e| panic!("{e}"));
        let txn = Txn {
            time_ms: 1_000 * (state.revision() + 1),
            ops: vec![Op::Put {
                key: a.key,
                object: a.object,
                expected_rv: None,
                uid: format!("uid-{}", state.revision()),
            }],
        };
        state.apply_txn(&txn).0.unwrap();
    }
}

fn snapshot_of(state: &State) -> Snapshot {
    Snapshot {
        revision: state.revision(),
        objects: state
            .objects()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn opts() -> CompileOptions {
    CompileOptions {
        controller_name: "gw.dev/gateway-node".into(),
        gateway_class: "gw".into(),
        addressing: Addressing::Shared {
            bind: "127.0.0.1".parse().unwrap(),
            advertised: vec![],
        },
        now_ms: 5_000,
        fault_exact_as_prefix: false,
        mesh: None,
        placement: Placement::default(),
    }
}

fn build(yaml: &str) -> Compiled {
    compile(&snapshot(yaml), &opts())
}

/// Routes a request; returns `route id#rule` or "404".
fn route(
    c: &Compiled,
    port: u16,
    host: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> String {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    route_at(c, addr, None, host, (method, path_and_query, headers))
}

/// Routes a request to `addr` from a caller of `caller_ns`.
fn route_at(
    c: &Compiled,
    addr: SocketAddr,
    caller_ns: Option<&str>,
    host: &str,
    req: (&str, &str, &[(&str, &str)]),
) -> String {
    if !c.table.sockets.contains_key(&addr) {
        return "no socket".into();
    }
    let host = crate::hostname::normalize_host(host);
    match matched(c, addr, caller_ns, &host, req) {
        Some(e) => format!(
            "{}#{}",
            e.action.route.id.trim_start_matches("HTTPRoute "),
            e.action.rule_index
        ),
        None => "404".into(),
    }
}

/// The entry a request to `addr` for `host` (normalized) from a caller of `caller_ns` matches.
fn matched<'c>(
    c: &'c Compiled,
    addr: SocketAddr,
    caller_ns: Option<&str>,
    host: &'c str,
    (method, path_and_query, headers): (&str, &str, &[(&str, &str)]),
) -> Option<&'c MatchEntry> {
    let sock = c.table.sockets.get(&addr)?;
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let view = RequestView {
        method: &m,
        path,
        query,
        headers: &h,
    };
    sock.listener_for(host)?.route(host, &view, caller_ns)
}

fn status_of<'a>(c: &'a Compiled, kind: &str, ns: &str, name: &str) -> &'a Value {
    let key = ObjectKey::new(GATEWAY_GROUP, kind, ns, name);
    &c.statuses
        .get(&key)
        .unwrap_or_else(|| panic!("no status for {kind} {ns}/{name}"))
        .status
}

/// `Type=Status/Reason` of the first parent entry of a route.
fn parent_conditions(c: &Compiled, ns: &str, name: &str) -> Vec<String> {
    status_of(c, "HTTPRoute", ns, name)["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{}={}/{}",
                x["type"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
                x["reason"].as_str().unwrap()
            )
        })
        .collect()
}

fn gateway(listeners: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  gatewayClassName: gw\n  listeners:\n{listeners}"
    )
}

fn http_route(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

#[test]
fn match_precedence_across_and_within_routes() {
    let yaml = format!(
        "{CLASS}{}{}{}{}{}",
        gateway("  - {name: http, port: 80, protocol: HTTP}\n"),
        services(&["v1", "v2", "v3"], "infra"),
        http_route(
            "a",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{path: {type: Exact, value: /exact}}]\n    backendRefs: [{name: v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /api/}}]\n    backendRefs: [{name: v3, port: 8080}]\n"
        ),
        http_route(
            "b",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /api/}, method: POST}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /api/}, headers: [{name: version, value: two}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /api/}, headers: [{name: version, value: two}, {name: color, value: red}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}}]\n    backendRefs: [{name: v1, port: 8080}]\n"
        ),
        http_route(
            "c",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /api/}, headers: [{name: version, value: two}]}]\n    backendRefs: [{name: v1, port: 8080}]\n"
        ),
    );
    let c = build(&yaml);
    /// (method, path, headers, expected route#rule)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/exact", &[], "infra/a#1"), // Exact beats every prefix
        ("GET", "/exact/more", &[], "infra/a#0"), // ...but only matches exactly
        ("GET", "/api", &[], "infra/a#2"),   // "/api/" is the element prefix /api; older route a
        ("POST", "/api/x", &[], "infra/b#0"), // equal prefixes: method wins
        ("GET", "/api/x", &[("version", "two")], "infra/b#1"), // b older than c: age breaks the tie
        (
            "GET",
            "/api/x",
            &[("version", "two"), ("color", "red")],
            "infra/b#2",
        ), // more headers win
        ("GET", "/apis", &[], "infra/a#0"),  // element-wise prefix: /apis is not /api
        ("GET", "/q?animal=whale", &[], "infra/b#3"),
        ("GET", "/q?animal=dolphin", &[], "infra/a#0"),
        ("GET", "/v2/list", &[], "infra/b#4"), // regular expression, full match
        ("GET", "/x/v2/list", &[], "infra/a#0"),
    ];
    for (method, path, headers, want) in cases {
        assert_eq!(
            route(&c, 80, "example.com", method, path, headers),
            *want,
            "{method} {path} {headers:?}"
        );
    }
}

#[test]
fn listener_isolation_and_hostname_intersection() {
    let yaml = format!(
        "{CLASS}{}{}{}{}{}",
        gateway(
            "  - {name: empty, port: 80, protocol: HTTP}\n  - {name: wild, port: 80, protocol: HTTP, hostname: '*.wildcard.io'}\n  - {name: abc, port: 80, protocol: HTTP, hostname: abc.wildcard.io}\n"
        ),
        services(&["v1"], "infra"),
        http_route(
            "to-empty",
            "infra",
            "  parentRefs: [{name: gw, sectionName: empty}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n"
        ),
        http_route(
            "to-wild",
            "infra",
            "  parentRefs: [{name: gw, sectionName: wild}]\n  hostnames: ['*.wildcard.io', 'other.com']\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n"
        ),
        http_route(
            "to-abc",
            "infra",
            "  parentRefs: [{name: gw, sectionName: abc}]\n  hostnames: ['*.wildcard.io']\n  rules: [{matches: [{path: {type: PathPrefix, value: /abc}}], backendRefs: [{name: v1, port: 8080}]}]\n"
        ),
    );
    let c = build(&yaml);
    let cases = [
        ("zzz.example.com", "/", "infra/to-empty#0"),
        ("bar.wildcard.io", "/", "infra/to-wild#0"),
        ("foo.bar.wildcard.io:8080", "/", "infra/to-wild#0"),
        // abc.wildcard.io belongs to the most specific listener only: isolation.
        ("abc.wildcard.io", "/abc", "infra/to-abc#0"),
        ("abc.wildcard.io", "/", "404"),
        // other.com does not intersect *.wildcard.io: not served by to-wild; falls to the empty listener.
        ("other.com", "/", "infra/to-empty#0"),
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&c, 80, host, "GET", path, &[]), want, "{host}{path}");
    }
    let gw = status_of(&c, "Gateway", "infra", "gw");
    let attached: Vec<i64> = gw["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["attachedRoutes"].as_i64().unwrap())
        .collect();
    assert_eq!(attached, vec![1, 1, 1]);
}

#[test]
fn route_attachment_reasons() {
    let yaml = format!(
        "{CLASS}{}{}{}{}{}{}{}{}{}",
        gateway(
            "  - {name: http, port: 80, protocol: HTTP, hostname: a.example.com}\n  - name: http-8080\n    port: 8080\n    protocol: HTTP\n    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: blue}}}}\n"
        ),
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: blue-ns, labels: {team: blue}}\n",
        services(&["v1"], "infra"),
        http_route(
            "ok",
            "infra",
            "  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n"
        ),
        http_route(
            "wrong-section",
            "infra",
            "  parentRefs: [{name: gw, sectionName: nope}]\n"
        ),
        http_route(
            "wrong-port",
            "infra",
            "  parentRefs: [{name: gw, port: 9999}]\n"
        ),
        http_route(
            "wrong-host",
            "infra",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [b.example.com]\n"
        ),
        http_route(
            "other-ns",
            "elsewhere",
            "  parentRefs: [{name: gw, namespace: infra}]\n"
        ),
        http_route(
            "selected-ns",
            "blue-ns",
            "  parentRefs: [{name: gw, namespace: infra, port: 8080}]\n"
        ),
    );
    let c = build(&yaml);
    let cases = [
        (
            "infra",
            "ok",
            vec!["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"],
        ),
        (
            "infra",
            "wrong-section",
            vec![
                "Accepted=False/NoMatchingParent",
                "ResolvedRefs=True/ResolvedRefs",
            ],
        ),
        (
            "infra",
            "wrong-port",
            vec![
                "Accepted=False/NoMatchingParent",
                "ResolvedRefs=True/ResolvedRefs",
            ],
        ),
        (
            "infra",
            "wrong-host",
            vec![
                "Accepted=False/NoMatchingListenerHostname",
                "ResolvedRefs=True/ResolvedRefs",
            ],
        ),
        (
            "elsewhere",
            "other-ns",
            vec![
                "Accepted=False/NotAllowedByListeners",
                "ResolvedRefs=True/ResolvedRefs",
            ],
        ),
        (
            "blue-ns",
            "selected-ns",
            vec!["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"],
        ),
    ];
    for (ns, name, want) in cases {
        assert_eq!(parent_conditions(&c, ns, name), want, "{ns}/{name}");
    }
    let p = &status_of(&c, "HTTPRoute", "infra", "ok")["parents"][0];
    assert_eq!(p["controllerName"], "gw.dev/gateway-node");
    assert_eq!(p["parentRef"]["name"], "gw");
    assert_eq!(p["conditions"][0]["observedGeneration"], 1);
}

#[test]
fn backend_references_and_reference_grants() {
    let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: backends}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]\n  to: [{group: '', kind: Service, name: granted}]\n";
    let yaml = format!(
        "{CLASS}{}{}{}{grant}{}{}{}{}{}",
        gateway("  - {name: http, port: 80, protocol: HTTP}\n"),
        services(&["local"], "infra"),
        services(&["granted", "ungranted"], "backends"),
        http_route(
            "granted",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: granted, namespace: backends, port: 8080}]}]\n"
        ),
        http_route(
            "ungranted",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: ungranted, namespace: backends, port: 8080}]}]\n"
        ),
        http_route(
            "missing",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: nope, port: 8080}]}]\n"
        ),
        http_route(
            "bad-kind",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{group: example.com, kind: Pod, name: local, port: 8080}]}]\n"
        ),
        http_route(
            "bad-port",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: local, port: 1234}]}]\n"
        ),
    );
    let c = build(&yaml);
    for (name, want) in [
        ("granted", "ResolvedRefs=True/ResolvedRefs"),
        ("ungranted", "ResolvedRefs=False/RefNotPermitted"),
        ("missing", "ResolvedRefs=False/BackendNotFound"),
        ("bad-kind", "ResolvedRefs=False/InvalidKind"),
        ("bad-port", "ResolvedRefs=False/BackendNotFound"),
    ] {
        let conds = parent_conditions(&c, "infra", name);
        assert_eq!(conds[0], "Accepted=True/Accepted", "{name}");
        assert_eq!(conds[1], want, "{name}");
    }
    // The resolved backend carries the EndpointSlice's endpoint and port.
    let sock = &c.table.sockets[&"127.0.0.1:80".parse().unwrap()];
    let group = sock.listeners[0].routes.lookup("x").next().unwrap();
    let granted = group
        .iter()
        .find(|e| e.action.route.id.ends_with("/granted"))
        .unwrap();
    match &granted.action.backends.entries[0].target {
        crate::table::BackendTarget::Upstream(u) => {
            assert_eq!(u.endpoints, vec!["10.0.1.1:3000".parse().unwrap()])
        }
        crate::table::BackendTarget::Invalid(e) => panic!("{e}"),
    }
}

#[test]
fn endpoints_are_ordered_nearest_first() {
    // Cluster `east` reports region us-east; a slice may name its region itself.
    let slices = "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-east
  namespace: infra
  labels: {kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: east}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- {addresses: [10.0.0.1], zone: a}
- {addresses: [10.0.0.2], zone: b}
- {addresses: [10.0.0.3], zone: b, hints: {forZones: [{name: a}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-eu
  namespace: infra
  labels: {kubernetes.io/service-name: web, topology.kubernetes.io/region: eu-west}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- {addresses: [10.0.0.4], zone: a}
";
    let yaml = format!(
        "{CLASS}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: infra}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n{slices}{}",
        gateway("  - {name: http, port: 80, protocol: HTTP}\n"),
        http_route(
            "r",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"
        ),
    );
    let mut snap = snapshot(&yaml);
    let report = gw_model::registry::KubeSyncReport {
        region: "us-east".into(),
        ..Default::default()
    };
    snap.objects.insert(
        gw_model::registry::report_key("east"),
        Arc::new(report.to_object("east")),
    );
    let order = |region: &str, zone: &str| {
        let opts = CompileOptions {
            placement: Placement {
                locality: crate::table::Locality {
                    region: region.into(),
                    zone: zone.into(),
                },
                ..Placement::default()
            },
            ..opts()
        };
        let c = compile(&snap, &opts);
        let sock = &c.table.sockets[&"127.0.0.1:80".parse().unwrap()];
        let group = sock.listeners[0].routes.lookup("x").next().unwrap();
        match &group[0].action.backends.entries[0].target {
            BackendTarget::Upstream(u) => u
                .endpoints
                .iter()
                .map(|e| e.ip().to_string())
                .collect::<Vec<_>>(),
            BackendTarget::Invalid(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        order("us-east", "a"),
        ["10.0.0.1", "10.0.0.3", "10.0.0.2", "10.0.0.4"],
        "zone a (and the endpoint hinted for it), region us-east, the rest"
    );
    assert_eq!(
        order("eu-west", "a"),
        ["10.0.0.4", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "zone a of eu-west is not zone a of us-east"
    );
    assert_eq!(
        order("", ""),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
        "a node that does not know where it is"
    );
}

/// `status/reason` of condition `t` of a Gateway status's listener `l`.
fn listener_condition(gw: &Value, l: usize, t: &str) -> String {
    let c = gw["listeners"][l]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap();
    format!(
        "{}/{}",
        c["status"].as_str().unwrap(),
        c["reason"].as_str().unwrap()
    )
}

#[test]
fn listener_status_reasons() {
    let cert_grantless = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: certs}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==, tls.key: eA==}\n";
    let yaml = format!(
        "{CLASS}{cert_grantless}{}",
        gateway(
            "  - {name: missing-cert, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}]}}\n  - {name: cross-ns-cert, port: 444, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: certs}]}}\n  - {name: kinds, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TCPRoute}]}}\n  - {name: udp, port: 9000, protocol: UDP}\n"
        ),
    );
    let c = build(&yaml);
    let gw = status_of(&c, "Gateway", "infra", "gw");
    let cond = |l: usize, t: &str| listener_condition(gw, l, t);
    assert_eq!(cond(0, "ResolvedRefs"), "False/InvalidCertificateRef");
    assert_eq!(cond(0, "Programmed"), "False/Invalid");
    assert_eq!(cond(1, "ResolvedRefs"), "False/RefNotPermitted");
    assert_eq!(cond(2, "ResolvedRefs"), "False/InvalidRouteKinds");
    assert_eq!(
        gw["listeners"][2]["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
    );
    assert_eq!(cond(3, "Accepted"), "False/UnsupportedProtocol");
    assert_eq!(
        condition_summary(gw),
        json!({"Accepted": "True/ListenersNotValid", "Programmed": "True/Programmed"})
    );
    assert_eq!(
        gw["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    // Only the programmed HTTP listener gets a socket.
    let ports: Vec<u16> = c.table.sockets.keys().map(|a| a.port()).collect();
    assert_eq!(ports, vec![80]);
    let class = &c.statuses[&ObjectKey::new(GATEWAY_GROUP, "GatewayClass", "", "gw")].status;
    assert_eq!(
        condition_summary(class),
        json!({"Accepted": "True/Accepted"})
    );
}

#[test]
fn address_pool_allocation_is_sticky_and_honours_requests() {
    let two = format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: a, namespace: ns1}}\nspec: {{gatewayClassName: gw, listeners: [{{name: h, port: 80, protocol: HTTP}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: b, namespace: ns1}}\nspec:\n  gatewayClassName: gw\n  addresses: [{{value: 127.1.0.9}}]\n  listeners: [{{name: h, port: 80, protocol: HTTP}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: c, namespace: ns1}}\nspec:\n  gatewayClassName: gw\n  addresses: [{{value: 10.9.9.9}}, {{type: test/fake, value: x}}]\n  listeners: [{{name: h, port: 80, protocol: HTTP}}]\n"
    );
    let mut o = opts();
    o.addressing = Addressing::Pool {
        first: "127.1.0.1".parse().unwrap(),
        last: "127.1.0.20".parse().unwrap(),
    };
    let c = compile(&snapshot(&two), &o);
    let addr = |n: &str| status_of(&c, "Gateway", "ns1", n)["addresses"].clone();
    assert_eq!(
        addr("a"),
        json!([{"type": "IPAddress", "value": "127.1.0.1"}])
    );
    assert_eq!(
        addr("b"),
        json!([{"type": "IPAddress", "value": "127.1.0.9"}])
    );
    assert_eq!(
        condition_summary(status_of(&c, "Gateway", "ns1", "c"))["Accepted"],
        "False/UnsupportedAddress"
    );
    let sockets: Vec<String> = c.table.sockets.keys().map(|a| a.to_string()).collect();
    assert_eq!(sockets, vec!["127.1.0.1:80", "127.1.0.9:80"]);
}

/// The session persistence of the rule a request is routed to: its scope, or "none".
fn session_scope(c: &Compiled, port: u16, path: &str) -> String {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let h = HeaderMap::new();
    let view = RequestView {
        method: &Method::GET,
        path,
        query: None,
        headers: &h,
    };
    let sock = &c.table.sockets[&addr];
    let e = sock
        .listener_for("x")
        .and_then(|l| l.route("x", &view, None))
        .expect("routed");
    e.action
        .session
        .as_ref()
        .map(|s| s.scope.clone())
        .unwrap_or_else(|| "none".into())
}

#[test]
fn session_persistence_comes_from_the_rule_else_the_oldest_backend_lb_policy() {
    let policy = |name: &str, target: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: {target}}}]\n  sessionPersistence: {{sessionName: p}}\n"
        )
    };
    let c = build(&format!(
        "{CLASS}{}{}{}{}{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: app}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /own}}}}]\n    sessionPersistence: {{sessionName: own, type: Header}}\n    backendRefs: [{{name: a, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /pol}}}}]\n    backendRefs: [{{name: a, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /none}}}}]\n    backendRefs: [{{name: b, port: 8080}}]\n",
        gateway(
            "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n"
        ),
        services(&["a", "b"], "app"),
        policy("first", "a"),
        policy("second", "a"),
        policy("lost", "missing"),
    ));
    assert_eq!(session_scope(&c, 80, "/own"), "HTTPRoute/app/r/rules/0");
    assert_eq!(session_scope(&c, 80, "/pol"), "BackendLBPolicy/app/first");
    assert_eq!(session_scope(&c, 80, "/none"), "none");
    let reason = |name: &str| {
        let s = status_of(&c, "BackendLBPolicy", "app", name);
        let a = &s["ancestors"][0];
        assert_eq!(a["controllerName"], "gw.dev/gateway-node");
        format!(
            "{}/{}",
            a["conditions"][0]["status"].as_str().unwrap(),
            a["conditions"][0]["reason"].as_str().unwrap()
        )
    };
    assert_eq!(reason("first"), "True/Accepted");
    assert_eq!(reason("second"), "False/Conflicted");
    assert_eq!(reason("lost"), "False/TargetNotFound");
}

#[test]
fn frontend_validation_needs_resolved_client_cas_and_refuses_every_client_without_them() {
    let ca = gw_client::pki::Ca::generate().unwrap();
    let id = gw_client::Identity::Admin { name: "x".into() };
    let (crt, key) = ca.issue(&id, 1, &["a.example".into()]).unwrap();
    let doc = |v: Value| format!("---\n{v}\n");
    let objects = [
        doc(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert", "namespace": "infra"},
            "type": "kubernetes.io/tls", "stringData": {"tls.crt": crt, "tls.key": key}})),
        doc(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "infra"},
            "data": {"ca.crt": ca.cert_pem()}})),
        doc(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "other"},
            "data": {"ca.crt": ca.cert_pem()}})),
        doc(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "junk", "namespace": "infra"},
            "data": {"ca.crt": "not a certificate"}})),
    ]
    .concat();
    let listener = |name: &str, validation: &str| {
        format!(
            "  - {{name: {name}, port: 443, protocol: HTTPS, hostname: {name}.example, tls: {{certificateRefs: [{{name: cert}}]{validation}}}}}\n"
        )
    };
    let cas = |refs: &str| format!(", frontendValidation: {{caCertificateRefs: [{refs}]}}");
    let listeners = [
        listener("a", &cas("{group: '', kind: ConfigMap, name: ca}")),
        listener("b", ""),
        listener("c", &cas("{group: '', kind: ConfigMap, name: missing}")),
        listener(
            "d",
            &cas("{group: '', kind: ConfigMap, name: ca, namespace: other}"),
        ),
        listener("e", &cas("{group: '', kind: ConfigMap, name: junk}")),
        listener("f", &cas("{group: '', kind: Secret, name: cert}")),
    ]
    .concat();
    let c = build(&format!("{CLASS}{objects}{}", gateway(&listeners)));
    let gw = status_of(&c, "Gateway", "infra", "gw");
    let cond = |l: usize, t: &str| listener_condition(gw, l, t);
    for (l, resolved, programmed) in [
        (0, "True/ResolvedRefs", "True/Programmed"),
        (1, "True/ResolvedRefs", "True/Programmed"),
        (2, "False/InvalidCACertificateRef", "False/Invalid"),
        (3, "False/RefNotPermitted", "False/Invalid"),
        (4, "False/InvalidCACertificateRef", "False/Invalid"),
        (5, "False/InvalidCACertificateRef", "False/Invalid"),
    ] {
        assert_eq!(cond(l, "ResolvedRefs"), resolved, "listener {l}");
        assert_eq!(cond(l, "Programmed"), programmed, "listener {l}");
    }
    let socket = c.table.sockets.values().next().unwrap();
    let tls = |sni: &str| {
        socket.tls_for(Some(sni)).map(|(l, _)| {
            (
                l.id.rsplit('/').next().unwrap().to_string(),
                l.verifies_clients,
            )
        })
    };
    assert_eq!(tls("A.example"), Some(("a".into(), true)));
    assert_eq!(tls("b.example"), Some(("b".into(), false)));
    // Unresolved CAs: the listener keeps its hostname and refuses the handshake, so no other
    // listener of the port takes the name unchecked.
    for refused in ["c.example", "d.example", "e.example", "f.example"] {
        assert_eq!(tls(refused), None, "{refused}");
        assert!(socket.listener_for(refused).unwrap().verifies_clients);
    }
    assert_eq!(tls("nobody.example"), None);
    assert!(socket.tls_for(None).is_none());
}

const MESH_CIDR: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(127, 96, 0, 1), Ipv4Addr::new(127, 96, 0, 254));

fn mesh_opts() -> CompileOptions {
    CompileOptions {
        controller_name: mesh::MESH_CONTROLLER.into(),
        mesh: Some(mesh::MeshOptions {
            service_cidr: MESH_CIDR,
        }),
        ..opts()
    }
}

/// Services `color` (ports 80 and 8080) and `color2` (80) without clusterIPs and `db` (a TCP port) with
/// one, in namespace `shop`; a producer route splitting port 80 of `color` 50/50 between `color` and
/// `color2`; a consumer route of namespace `web` on `color2`, whose callers get a header; a pod of
/// `web`.
const MESH: &str = "apiVersion: v1
kind: Service
metadata: {name: color, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}, {name: http-alt, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: color2, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.0.0.7
  ports: [{name: postgres, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: color-1, namespace: shop, labels: {kubernetes.io/service-name: color}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: http-alt, port: 8080}]
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: color2-1, namespace: shop, labels: {kubernetes.io/service-name: color2}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.1.0.2]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: color, port: 80}]
  hostnames: [ignored.example.com]
  rules:
  - backendRefs: [{name: color, port: 80, weight: 50}, {name: color2, port: 80, weight: 50}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: web}
spec:
  parentRefs: [{group: '', kind: Service, name: color2, namespace: shop}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-consumer, value: web}]}}]
    backendRefs: [{name: color2, namespace: shop, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: sneaky, namespace: web}
spec:
  parentRefs: [{group: '', kind: Service, name: color2, namespace: shop, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /other}}]
    backendRefs: [{name: color, namespace: shop, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: nowhere, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: color, port: 9999}]
  rules: [{backendRefs: [{name: color, port: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: web}
spec: {containers: [{name: c, image: x}]}
";

fn with_status(mut snap: Snapshot, kind: &str, ns: &str, name: &str, status: Value) -> Snapshot {
    let key = ObjectKey::new("", kind, ns, name);
    let mut obj = (**snap.objects.get(&key).unwrap()).clone();
    obj["status"] = status;
    snap.objects.insert(key, Arc::new(obj));
    snap
}

fn mesh_snapshot() -> Snapshot {
    with_status(
        snapshot(MESH),
        "Pod",
        "web",
        "client",
        json!({"podIP": "10.9.0.1"}),
    )
}

fn mesh_parent(c: &Compiled, ns: &str, name: &str) -> (Value, Vec<String>) {
    let controller = status_of(c, "HTTPRoute", ns, name)["parents"][0]["controllerName"].clone();
    (controller, parent_conditions(c, ns, name))
}

#[test]
fn a_mesh_node_serves_each_service_at_its_address_through_its_producer_and_consumer_routes() {
    let c = compile(&mesh_snapshot(), &mesh_opts());
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let get = |addr: SocketAddr, caller: Option<&str>, path: &str| {
        route_at(&c, addr, caller, "whatever", ("GET", path, &[]))
    };
    // Addresses: the clusterIP, else the CIDR's first free ones, oldest Service first; recorded in
    // the Service's status (a Service with a clusterIP gets no status).
    let recorded = |name: &str| {
        let key = ObjectKey::new("", "Service", "shop", name);
        let svc = json!({"status": c.statuses.get(&key).map(|s| s.status.clone())});
        gw_model::core::recorded_mesh_address(&svc).map(|ip| ip.to_string())
    };
    assert_eq!(recorded("color").as_deref(), Some("127.96.0.1"));
    assert_eq!(recorded("color2").as_deref(), Some("127.96.0.2"));
    assert_eq!(recorded("db"), None);
    let sockets: Vec<String> = c.table.sockets.keys().map(|a| a.to_string()).collect();
    assert_eq!(
        sockets,
        [
            "10.0.0.7:5432",
            "127.96.0.1:80",
            "127.96.0.1:8080",
            "127.96.0.2:80"
        ]
    );
    assert!(
        c.table.sockets[&at("10.0.0.7", 5432)].l4,
        "a non-HTTP port forwards bytes"
    );

    // Port 80 of color: the producer route, whatever the Host (its hostnames are not matched), for
    // every caller; port 8080, which the route's `port` does not name: straight to color.
    assert_eq!(get(at("127.96.0.1", 80), None, "/"), "shop/canary#0");
    assert_eq!(
        get(at("127.96.0.1", 80), Some("web"), "/x"),
        "shop/canary#0"
    );
    assert_eq!(
        get(at("127.96.0.1", 8080), None, "/"),
        "Service shop/color:8080#0"
    );
    let split = &c.table.sockets[&at("127.96.0.1", 80)].listeners[0];
    let entry = split
        .route(
            "x",
            &RequestView {
                method: &Method::GET,
                path: "/",
                query: None,
                headers: &HeaderMap::new(),
            },
            None,
        )
        .unwrap();
    let weights: Vec<u64> = entry
        .action
        .backends
        .entries
        .iter()
        .map(|e| e.weight)
        .collect();
    assert_eq!(weights, [50, 50]);

    // color2: web's callers get web's consumer routes, everyone else the Service itself.
    assert_eq!(
        get(at("127.96.0.2", 80), Some("web"), "/"),
        "web/consumer#0"
    );
    assert_eq!(
        get(at("127.96.0.2", 80), Some("shop"), "/"),
        "Service shop/color2:80#0"
    );
    assert_eq!(
        get(at("127.96.0.2", 80), None, "/"),
        "Service shop/color2:80#0"
    );
    assert_eq!(
        c.table
            .callers
            .get(&"10.9.0.1".parse().unwrap())
            .map(String::as_str),
        Some("web")
    );

    // Route status under the mesh's controller: a backendRef to the route's own parent Service needs no
    // ReferenceGrant, to another Service of that namespace it does; a port the Service lacks matches
    // no parent.
    let mesh = json!(mesh::MESH_CONTROLLER);
    assert_eq!(
        mesh_parent(&c, "shop", "canary"),
        (
            mesh.clone(),
            vec![
                "Accepted=True/Accepted".into(),
                "ResolvedRefs=True/ResolvedRefs".into()
            ]
        )
    );
    assert_eq!(
        mesh_parent(&c, "web", "consumer"),
        (
            mesh.clone(),
            vec![
                "Accepted=True/Accepted".into(),
                "ResolvedRefs=True/ResolvedRefs".into()
            ]
        )
    );
    assert_eq!(
        mesh_parent(&c, "web", "sneaky").1[1],
        "ResolvedRefs=False/RefNotPermitted"
    );
    assert_eq!(
        mesh_parent(&c, "shop", "nowhere").1[0],
        "Accepted=False/NoMatchingParent"
    );

    // A gateway node ignores Service parents.
    let g = compile(&mesh_snapshot(), &opts());
    assert!(g.table.sockets.is_empty());
    assert!(!g.statuses.keys().any(|k| k.kind == "HTTPRoute"));
}

#[test]
fn a_mesh_address_once_recorded_stays_with_its_service() {
    // color2 was given .9 before; color, older, still takes the first free address.
    let snap = with_status(
        mesh_snapshot(),
        "Service",
        "shop",
        "color2",
        json!({"conditions": [{"type": gw_model::core::MESH_ADDRESS_CONDITION, "status": "True", "reason": "Allocated", "message": "127.96.0.9"}]}),
    );
    let c = compile(&snap, &mesh_opts());
    let sockets: Vec<String> = c.table.sockets.keys().map(|a| a.to_string()).collect();
    assert!(
        sockets.contains(&"127.96.0.1:80".to_string()),
        "{sockets:?}"
    );
    assert!(
        sockets.contains(&"127.96.0.9:80".to_string()),
        "{sockets:?}"
    );
    // An address outside the CIDR is not kept.
    let snap = with_status(
        mesh_snapshot(),
        "Service",
        "shop",
        "color2",
        json!({"conditions": [{"type": gw_model::core::MESH_ADDRESS_CONDITION, "status": "True", "reason": "Allocated", "message": "10.200.0.1"}]}),
    );
    let c = compile(&snap, &mesh_opts());
    assert!(
        c.table
            .sockets
            .contains_key(&"127.96.0.2:80".parse().unwrap())
    );
}

/// Compiles `snap` with `memo` and from scratch; asserts that both give every object the same status
/// and send each request of `hosts` (`GET /` and `GET /d/x`, port 80) to the same rule.
fn compile_both(snap: &Snapshot, o: &CompileOptions, memo: &mut Memo, hosts: &[&str]) -> Compiled {
    compile_both_for(snap, o, memo, hosts, &["/", "/d/x"])
}

/// `compile_both`, with requests for `paths`.
fn compile_both_for(
    snap: &Snapshot,
    o: &CompileOptions,
    memo: &mut Memo,
    hosts: &[&str],
    paths: &[&str],
) -> Compiled {
    let kept = compile_with(snap, o, memo);
    let fresh = compile(snap, o);
    assert_eq!(kept.statuses, fresh.statuses);
    for h in hosts {
        for path in paths {
            assert_eq!(
                route(&kept, 80, h, "GET", path, &[]),
                route(&fresh, 80, h, "GET", path, &[]),
                "{h}{path}"
            );
        }
    }
    kept
}

/// Whether the rule a request to `host` matches is the very entry it matched in `before` (kept, not
/// compiled again).
fn same_entry(before: &Compiled, after: &Compiled, host: &str) -> bool {
    let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let req = ("GET", "/", &[][..]);
    match (
        matched(before, addr, None, host, req),
        matched(after, addr, None, host, req),
    ) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

#[test]
fn a_compilation_keeps_the_routes_nothing_changed_and_agrees_with_one_from_scratch() {
    let route_to = |name: &str, host: &str, svc: &str| {
        http_route(
            name,
            "infra",
            &format!(
                "  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules:\n  - backendRefs: [{{name: {svc}, port: 8080}}]\n"
            ),
        )
    };
    let hosts = ["a.example", "b.example", "c.example"];
    let mut state = State::new(100);
    put_all(
        &mut state,
        &format!(
            "{CLASS}{}{}{}{}{}",
            gateway("  - {name: http, port: 80, protocol: HTTP}\n"),
            services(&["v1", "v2"], "infra"),
            route_to("a", "a.example", "v1"),
            route_to("b", "b.example", "v2"),
            http_route(
                "d",
                "infra",
                "  parentRefs: [{name: gw}]\n  hostnames: [a.example]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /d}}]\n    backendRefs: [{name: v1, port: 8080}]\n",
            ),
        ),
    );
    // The options a node compiles with: one health registry throughout.
    let o = opts();
    let mut memo = Memo::default();
    let first = compile_both(&snapshot_of(&state), &o, &mut memo, &hosts);
    assert_eq!(route(&first, 80, "a.example", "GET", "/", &[]), "infra/a#0");

    // One route changes, one is added: the other is kept as it was.
    put_all(
        &mut state,
        &format!(
            "{}{}",
            route_to("a", "a.example", "v2"),
            route_to("c", "c.example", "v1")
        ),
    );
    let second = compile_both(&snapshot_of(&state), &o, &mut memo, &hosts);
    assert!(same_entry(&first, &second, "b.example"));
    assert!(!same_entry(&first, &second, "a.example"));
    assert_eq!(
        route(&second, 80, "a.example", "GET", "/d/x", &[]),
        "infra/d#0"
    );
    assert_eq!(
        route(&second, 80, "c.example", "GET", "/", &[]),
        "infra/c#0"
    );

    // A status written to a route is a change of that route only.
    let key = ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "infra", "b");
    let status = Op::Status {
        key: key.clone(),
        status: (*second.statuses[&key].status).clone(),
        expected_uid: None,
        expected_generation: None,
        expected_rv: None,
    };
    let txn = Txn {
        time_ms: 99_000,
        ops: vec![status],
    };
    state.apply_txn(&txn).0.unwrap();
    let third = compile_both(&snapshot_of(&state), &o, &mut memo, &hosts);
    assert!(same_entry(&second, &third, "a.example"));
    assert!(!same_entry(&second, &third, "b.example"));

    // Anything else changing compiles every route again: v2 gone, its routes' references break.
    let delete = |kind: &str, name: &str| Op::Delete {
        key: ObjectKey::new("", kind, "infra", name),
        expected_rv: None,
        ignore_missing: false,
    };
    let txn = Txn {
        time_ms: 100_000,
        ops: vec![delete("Service", "v2")],
    };
    state.apply_txn(&txn).0.unwrap();
    let fourth = compile_both(&snapshot_of(&state), &o, &mut memo, &hosts);
    assert!(!same_entry(&third, &fourth, "c.example"));
    assert!(
        parent_conditions(&fourth, "infra", "b")
            .contains(&"ResolvedRefs=False/BackendNotFound".to_string())
    );

    // A route deleted is gone from the table and from what is kept.
    let txn = Txn {
        time_ms: 101_000,
        ops: vec![Op::Delete {
            key: ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "infra", "c"),
            expected_rv: None,
            ignore_missing: false,
        }],
    };
    state.apply_txn(&txn).0.unwrap();
    let fifth = compile_both(&snapshot_of(&state), &o, &mut memo, &hosts);
    assert_eq!(route(&fifth, 80, "c.example", "GET", "/", &[]), "404");
}

#[test]
fn a_mesh_compilation_keeps_consumer_routes_and_agrees_with_one_from_scratch() {
    let o = mesh_opts();
    let mut memo = Memo::default();
    let snap = mesh_snapshot();
    let first = compile_with(&snap, &o, &mut memo);
    let color2: SocketAddr = "127.96.0.2:80".parse().unwrap();
    let req = ("GET", "/", &[][..]);
    // A consumer route changes its path, then goes; the other consumer route is kept throughout.
    let key = ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "web", "sneaky");
    let mut changed = snap.clone();
    let mut obj = (**changed.objects.get(&key).unwrap()).clone();
    obj["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!("/elsewhere");
    changed.objects.insert(key.clone(), Arc::new(obj));
    let mut deleted = changed.clone();
    deleted.objects.remove(&key);
    for s in [&changed, &deleted] {
        let kept = compile_with(s, &o, &mut memo);
        let fresh = compile(s, &o);
        assert_eq!(kept.statuses, fresh.statuses);
        for (caller, path) in [
            (Some("web"), "/other"),
            (Some("web"), "/elsewhere"),
            (Some("web"), "/"),
            (None, "/other"),
        ] {
            let req = ("GET", path, &[][..]);
            assert_eq!(
                route_at(&kept, color2, caller, "whatever", req),
                route_at(&fresh, color2, caller, "whatever", req),
                "{caller:?} {path}"
            );
        }
        let (a, b) = (
            matched(&first, color2, Some("web"), "whatever", req),
            matched(&kept, color2, Some("web"), "whatever", req),
        );
        assert!(a.zip(b).is_some_and(|(a, b)| std::ptr::eq(a, b)));
    }
    let last = compile_with(&deleted, &o, &mut memo);
    let req = ("GET", "/elsewhere", &[][..]);
    assert_eq!(
        route_at(&last, color2, Some("web"), "whatever", req),
        "web/consumer#0"
    );
}

#[test]
fn a_report_heartbeat_keeps_the_routes_and_a_new_region_compiles_them_again() {
    let yaml = format!(
        "{CLASS}{}{}{}",
        gateway("  - {name: http, port: 80, protocol: HTTP}\n"),
        services(&["v1"], "infra"),
        http_route(
            "a",
            "infra",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n"
        ),
    );
    let report = |region: &str, last_contact_ms: u64| {
        let r = gw_model::registry::KubeSyncReport {
            region: region.into(),
            last_contact_ms,
            ..Default::default()
        };
        Arc::new(r.to_object("east"))
    };
    let key = gw_model::registry::report_key("east");
    let mut snap = snapshot(&yaml);
    snap.objects.insert(key.clone(), report("us-east", 1));
    let o = opts();
    let mut memo = Memo::default();
    let first = compile_both(&snap, &o, &mut memo, &["any.example"]);
    snap.objects.insert(key.clone(), report("us-east", 2));
    let heartbeat = compile_both(&snap, &o, &mut memo, &["any.example"]);
    assert!(same_entry(&first, &heartbeat, "any.example"));
    snap.objects.insert(key, report("eu-west", 3));
    let moved = compile_both(&snap, &o, &mut memo, &["any.example"]);
    assert!(!same_entry(&heartbeat, &moved, "any.example"));
}

#[test]
fn random_changes_compile_alike_kept_and_from_scratch() {
    // xorshift64: the same sequence on every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut draw = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let hosts = ["a.example", "b.example", "x.wild.example", "y.wild.example"];
    let paths = ["/", "/p0/x", "/p1", "/p2/y"];
    let o = opts();
    let mut state = State::new(100);
    put_all(
        &mut state,
        &format!(
            "{CLASS}{}{}",
            gateway(
                "  - {name: http, port: 80, protocol: HTTP}\n  - {name: wild, port: 80, protocol: HTTP, hostname: '*.wild.example'}\n"
            ),
            services(&["v1", "v2"], "infra"),
        ),
    );
    let mut memo = Memo::default();
    let mut last = compile_both_for(&snapshot_of(&state), &o, &mut memo, &hosts, &paths);
    let route_key = |i: u64| ObjectKey::new(GATEWAY_GROUP, "HTTPRoute", "infra", &format!("r{i}"));
    for step in 0..300u64 {
        let time_ms = 1_000_000 + step;
        match draw(7) {
            // A route put: hostnames, a listener, a path and a backend (v3 never exists) drawn.
            0..=2 => {
                let i = draw(8);
                let names = ["a.example", "x.wild.example", "*.wild.example"];
                let host_list: Vec<String> = names
                    .iter()
                    .filter(|_| draw(2) == 0)
                    .map(|h| format!("'{h}'"))
                    .collect();
                let section = if draw(3) == 0 {
                    ", sectionName: wild"
                } else {
                    ""
                };
                let spec = format!(
                    "  parentRefs: [{{name: gw{section}}}]\n  hostnames: [{}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /p{}}}}}]\n    backendRefs: [{{name: v{}, port: 8080}}]\n",
                    host_list.join(", "),
                    draw(3),
                    draw(3) + 1
                );
                put_all(&mut state, &http_route(&format!("r{i}"), "infra", &spec));
            }
            3 => {
                let txn = Txn {
                    time_ms,
                    ops: vec![Op::Delete {
                        key: route_key(draw(8)),
                        expected_rv: None,
                        ignore_missing: true,
                    }],
                };
                state.apply_txn(&txn).0.unwrap();
            }
            // A status written, as the status writer would.
            4 | 5 => {
                let key = route_key(draw(8));
                if let Some(d) = last.statuses.get(&key) {
                    let txn = Txn {
                        time_ms,
                        ops: vec![Op::Status {
                            key,
                            status: (*d.status).clone(),
                            expected_uid: Some(d.uid.to_string()),
                            expected_generation: Some(d.generation),
                            expected_rv: None,
                        }],
                    };
                    state.apply_txn(&txn).0.unwrap();
                }
            }
            // Service v2 comes or goes: every route compiled again.
            _ => {
                let v2 = ObjectKey::new("", "Service", "infra", "v2");
                if state.objects().any(|(k, _)| *k == v2) {
                    let txn = Txn {
                        time_ms,
                        ops: vec![Op::Delete {
                            key: v2,
                            expected_rv: None,
                            ignore_missing: false,
                        }],
                    };
                    state.apply_txn(&txn).0.unwrap();
                } else {
                    put_all(&mut state, &services(&["v2"], "infra"));
                }
            }
        }
        last = compile_both_for(&snapshot_of(&state), &o, &mut memo, &hosts, &paths);
    }
}
