use super::*;
use crate::parse::parse_documents;

fn admit_one(yaml: &str) -> Result<Admitted, Box<DocumentError>> {
    let docs = parse_documents("test.yaml", yaml).expect("test YAML parses");
    assert_eq!(docs.len(), 1);
    admit(&docs[0])
}

fn error_paths(yaml: &str) -> Vec<String> {
    admit_one(yaml)
        .expect_err("document must be refused")
        .errors
        .into_iter()
        .map(|e| e.path)
        .collect()
}

const ROUTE_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\n";

#[test]
fn applies_crd_defaults_to_httproute() {
    let a = admit_one(&format!("{ROUTE_HEAD}spec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: svc, port: 80}}]\n")).unwrap();
    let spec = &a.object["spec"];
    assert_eq!(spec["parentRefs"][0]["group"], "gateway.networking.k8s.io");
    assert_eq!(spec["parentRefs"][0]["kind"], "Gateway");
    assert_eq!(
        spec["rules"][0]["matches"][0]["path"],
        json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(spec["rules"][0]["backendRefs"][0]["weight"], 1);
    assert_eq!(spec["rules"][0]["backendRefs"][0]["kind"], "Service");
    assert_eq!(
        a.key,
        ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", "app", "r")
    );
    // An absent `rules` gets the CRD default rule.
    let a = admit_one(&format!("{ROUTE_HEAD}spec: {{}}\n")).unwrap();
    assert_eq!(
        a.object["spec"]["rules"][0]["matches"][0]["path"]["type"],
        "PathPrefix"
    );
}

#[test]
fn refuses_seventeen_backend_refs() {
    let refs: Vec<String> = (0..17)
        .map(|i| format!("{{name: s{i}, port: 80}}"))
        .collect();
    let yaml = format!(
        "{ROUTE_HEAD}spec:\n  rules:\n  - backendRefs: [{}]\n",
        refs.join(", ")
    );
    let err = admit_one(&yaml).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].path, "spec.rules[0].backendRefs");
    assert!(
        err.to_string().contains(
            "test.yaml: document 1 (HTTPRoute app/r): spec.rules[0].backendRefs: Too many: 17"
        ),
        "{err}"
    );
}

#[test]
fn refuses_permanent_cookie_without_absolute_timeout() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: '', kind: Service, name: s}]\n  sessionPersistence: {cookieConfig: {lifetimeType: Permanent}}\n";
    let err = admit_one(yaml).unwrap_err();
    assert_eq!(err.errors[0].path, "spec.sessionPersistence");
    assert!(
        err.errors[0]
            .message
            .contains("AbsoluteTimeout must be specified when cookie lifetimeType is Permanent")
    );
    let ok = yaml.replace(
        "lifetimeType: Permanent}",
        "lifetimeType: Permanent}, absoluteTimeout: 1h",
    );
    assert!(admit_one(&ok).is_ok());
}

#[test]
fn names_unknown_and_missing_fields() {
    assert_eq!(
        error_paths(&format!("{ROUTE_HEAD}spec:\n  rules: [{{matchs: []}}]\n")),
        vec!["spec.rules[0].matchs"]
    );
    assert_eq!(
        error_paths(&format!(
            "{ROUTE_HEAD}spec:\n  parentRefs: [{{sectionName: a}}]\n"
        )),
        vec!["spec.parentRefs[0]"]
    );
    assert_eq!(
        error_paths(&format!("{ROUTE_HEAD}spek: {{}}\n")),
        vec!["spek"]
    );
    assert_eq!(
        error_paths(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        ),
        vec!["spec"]
    );
}

#[test]
fn enforces_cel_rules() {
    let cases: &[(&str, &str)] = &[
        (
            "rules:\n  - backendRefs: [{name: s}]\n",
            "spec.rules[0].backendRefs[0]",
        ),
        (
            "rules:\n  - matches: [{path: {type: Exact, value: /a//b}}]\n",
            "spec.rules[0].matches[0].path",
        ),
        (
            "rules:\n  - filters: [{type: RequestRedirect}]\n",
            "spec.rules[0].filters[0]",
        ),
        (
            "rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {}}]\n    backendRefs: [{name: s, port: 1}]\n",
            "spec.rules[0]",
        ),
        (
            "rules:\n  - timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0].timeouts",
        ),
        (
            "rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n",
            "spec.rules[0]",
        ),
        ("parentRefs: [{name: gw}, {name: gw}]\n", "spec.parentRefs"),
        ("hostnames: ['*.Example.com']\n", "spec.hostnames[0]"),
        (
            "rules:\n  - matches: [{method: FETCH}]\n",
            "spec.rules[0].matches[0].method",
        ),
    ];
    for (spec, path) in cases {
        let paths = error_paths(&format!("{ROUTE_HEAD}spec:\n  {spec}"));
        assert!(
            paths.iter().any(|p| p == path),
            "{spec}: expected an error at {path}, got {paths:?}"
        );
    }
}

#[test]
fn gateway_listener_rules() {
    let head = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: gw\n  listeners:\n";
    let ok = admit_one(&format!(
        "{head}  - {{name: http, port: 80, protocol: HTTP}}\n"
    ))
    .unwrap();
    assert_eq!(
        ok.object["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"],
        "Same"
    );
    for (listeners, msg) in [
        (
            "  - {name: a, port: 80, protocol: HTTP}\n  - {name: a, port: 81, protocol: HTTP}\n",
            "Listener name must be unique",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTP}\n",
            "Combination of port, protocol and hostname",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS, tls: {mode: Terminate}}\n",
            "certificateRefs or options must be specified",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: c}]}}\n",
            "tls must not be specified",
        ),
        (
            "  - {name: a, port: 0, protocol: HTTP}\n",
            "greater than or equal to 1",
        ),
    ] {
        let err = admit_one(&format!("{head}{listeners}")).unwrap_err();
        assert!(err.to_string().contains(msg), "{listeners}: {err}");
    }
}

#[test]
fn grpcroute_v1alpha2_is_stored_as_v1() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules:\n  - matches: [{method: {service: foo.Bar, method: Baz}}]\n";
    let a = admit_one(yaml).unwrap();
    assert_eq!(a.object["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(
        a.object["spec"]["rules"][0]["matches"][0]["method"]["type"],
        "Exact"
    );
    let info = a.key.info().unwrap();
    let back = convert_for_output(&a.object, info, "v1alpha2").unwrap();
    assert_eq!(back["apiVersion"], "gateway.networking.k8s.io/v1alpha2");
    assert_eq!(back["spec"], a.object["spec"]);
    let bad = yaml.replace("service: foo.Bar", "service: 'foo/Bar'");
    assert!(admit_one(&bad).is_err());
}

#[test]
fn backend_tls_policy_v1alpha2_is_converted() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  targetRef: {group: '', kind: Service, name: s}\n  tls: {wellKnownCACerts: System, hostname: s.example.com}\n";
    let a = admit_one(yaml).unwrap();
    assert_eq!(a.object["apiVersion"], "gateway.networking.k8s.io/v1alpha3");
    assert_eq!(a.object["spec"]["targetRefs"][0]["name"], "s");
    assert_eq!(
        a.object["spec"]["validation"]["wellKnownCACertificates"],
        "System"
    );
}

#[test]
fn core_objects() {
    let svc = admit_one("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec:\n  selector: {app: web}\n  sessionAffinity: None\n  ports: [{port: 80, targetPort: 8080}]\n").unwrap();
    assert_eq!(
        svc.object["spec"]["sessionAffinity"], "None",
        "unknown core fields are kept"
    );
    let secret = admit_one(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\nstringData: {k: hello}\n",
    )
    .unwrap();
    assert_eq!(secret.object["data"]["k"], "aGVsbG8=");
    assert!(secret.object.get("stringData").is_none());
    let err = admit_one("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\n").unwrap_err();
    assert_eq!(err.errors[0].path, "data[tls.key]");
    let err = admit_one("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\n").unwrap_err();
    assert_eq!(err.errors[0].path, "endpoints[0].addresses[0]");
    let err =
        admit_one("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").unwrap_err();
    assert!(err.to_string().contains("not a kind gw serves"));
}

#[test]
fn metadata_rules() {
    assert_eq!(
        error_paths("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n"),
        vec!["metadata.name"]
    );
    assert_eq!(
        error_paths("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, resourceVersion: x}\n"),
        vec!["metadata.resourceVersion"]
    );
    let a = admit_one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, resourceVersion: '42', uid: u, creationTimestamp: null}\n").unwrap();
    assert_eq!(a.expected_resource_version, Some(42));
    assert_eq!(a.key.namespace, "default");
    assert_eq!(
        a.object["metadata"],
        json!({"name": "a", "namespace": "default"})
    );
}

#[test]
fn explicit_nulls_are_pruned_before_defaulting() {
    let a = admit_one(&format!(
        "{ROUTE_HEAD}spec:\n  hostnames: null\n  parentRefs: [{{name: gw, port: null}}]\n  rules:\n  - matches: null\n    backendRefs: [{{name: svc, port: 80, weight: null}}]\n"
    ))
    .unwrap();
    let spec = &a.object["spec"];
    assert!(
        spec.get("hostnames").is_none_or(|h| h == &json!([])),
        "{spec}"
    );
    assert!(spec["parentRefs"][0].get("port").is_none(), "{spec}");
    assert_eq!(
        spec["rules"][0]["matches"][0]["path"]["type"], "PathPrefix",
        "a null list gets the default"
    );
    assert_eq!(spec["rules"][0]["backendRefs"][0]["weight"], 1);
}

#[test]
fn gateway_ip_addresses_are_checked_as_ipv4_or_ipv6() {
    let gw = |value: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: app}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n  addresses: [{{type: IPAddress, value: \"{value}\"}}]\n"
        )
    };
    assert!(admit_one(&gw("10.0.0.1")).is_ok());
    assert!(admit_one(&gw("fd00::1")).is_ok());
    for bad in ["10.0.0.256", "not-an-ip", "10.0.0"] {
        assert_eq!(
            error_paths(&gw(bad)),
            vec!["spec.addresses[0].value"],
            "{bad}"
        );
    }
}

#[test]
fn gateway_class_controller_name_is_immutable() {
    let class = |controller: &str| {
        admit_one(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: c}}\nspec: {{controllerName: {controller}}}\n"
        ))
        .unwrap()
        .object
    };
    let (a, b) = (class("example.com/a"), class("example.com/b"));
    assert!(has_transition_rules("GatewayClass"));
    assert!(transition_errors("GatewayClass", &a, &a).is_empty());
    let errs = transition_errors("GatewayClass", &a, &b);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "spec.controllerName");
    assert!(errs[0].message.contains("Value is immutable"));
}
