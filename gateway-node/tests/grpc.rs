//! gRPC through gateway nodes, with a real gRPC client (tonic) and the conformance suite's gRPC echo
//! backends: GRPCRoute method and header matching over an h2c listener and over an HTTPS listener (h2
//! by ALPN), UNIMPLEMENTED from the gateway when no rule matches, and cookie and header session
//! persistence keeping a gRPC client on one backend across two nodes.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::echo::EchoServer;
use gw_testkit::grpc_echo::{self, BACKEND_UNIMPLEMENTED, Dial, GrpcEchoConfig, SERVICE};
use gw_testkit::procs::free_port;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

const PODS: [&str; 4] = ["g0", "g1", "g2", "g3"];
const TIMEOUT: Duration = Duration::from_secs(5);
const HOST: &str = "grpc.example.com";

async fn backend(pod: &str) -> EchoServer {
    grpc_echo::start(GrpcEchoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pod: pod.into(),
        namespace: "web".into(),
    })
    .await
    .unwrap()
}

/// Rules: EchoTwo to g3, with a request header added; Echo with `mode: cookie` / `mode: header` over g0
/// and g1 (g2 has weight 0) with cookie / header session persistence; any other Echo to g0. EchoThree
/// matches nothing.
fn grpc_route() -> String {
    let method = |m: &str| format!("method: {{service: {SERVICE}, method: {m}}}");
    let spread =
        "[{name: g0, port: 8080}, {name: g1, port: 8080}, {name: g2, port: 8080, weight: 0}]";
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: echo, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{{two}}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-routed, value: two}}]}}}}]\n    backendRefs: [{{name: g3, port: 8080}}]\n  - matches: [{{{echo}, headers: [{{name: mode, value: cookie}}]}}]\n    sessionPersistence: {{sessionName: grpc-sess}}\n    backendRefs: {spread}\n  - matches: [{{{echo}, headers: [{{name: mode, value: header}}]}}]\n    sessionPersistence: {{sessionName: x-grpc-session, type: Header}}\n    backendRefs: {spread}\n  - matches: [{{{echo}}}]\n    backendRefs: [{{name: g0, port: 8080}}]\n",
        two = method("EchoTwo"),
        echo = method("Echo"),
    )
}

/// The pod that answered, or the status's code and message.
async fn who(channel: &tonic::transport::Channel, method: &str, pairs: &[(&str, &str)]) -> String {
    match grpc_echo::call(channel.clone(), method, &md(pairs), TIMEOUT).await {
        Ok(r) => pod_of(r),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn pod_of(r: tonic::Response<grpc_echo::pb::EchoResponse>) -> String {
    r.into_inner().assertions.unwrap().context.unwrap().pod
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_routes_over_h2c_and_tls_and_sessions_stick_across_nodes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = store();
    let s = reach(&store);
    let mut backends = Vec::new();
    let mut yaml = CLASS.to_string();
    for p in PODS {
        let b = backend(p).await;
        yaml.push_str(&service(p, "web", b.addr, None));
        backends.push(b);
    }
    let (h2c_port, tls_port) = (free_port(), free_port());
    let (secret, _, cert_pem) = cert_secret("grpc-cert", HOST);
    yaml.push_str(&format!(
        "{secret}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners:\n  - {{name: h2c, port: {h2c_port}, protocol: HTTP}}\n  - {{name: tls, port: {tls_port}, protocol: HTTPS, hostname: {HOST}, tls: {{certificateRefs: [{{name: grpc-cert}}]}}}}\n"
    ));
    yaml.push_str(&grpc_route());
    apply(&s, &store.dir, &yaml);
    let _nodes = [
        NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a"),
        NodeProc::start(&s, "127.0.0.3", "gw", &store.dir, "b"),
    ];
    let plain = |ip: &str| {
        let addr: SocketAddr = format!("{ip}:{h2c_port}").parse().unwrap();
        grpc_echo::channel(addr, &Dial::default()).unwrap()
    };
    let nodes = [plain("127.0.0.2"), plain("127.0.0.3")];
    // Both nodes serve, and hand out session tokens (the signing key is in the store).
    for n in &nodes {
        eventually("both nodes route Echo and start sessions", || async {
            let started = grpc_echo::call(n.clone(), "Echo", &md(&[("mode", "header")]), TIMEOUT)
                .await
                .is_ok_and(|r| r.metadata().contains_key("x-grpc-session"));
            started && who(n, "Echo", &[]).await == "g0"
        })
        .await;
    }

    // Method matching (with the rule's filter), and a method no rule matches: UNIMPLEMENTED from the
    // gateway itself.
    let two = grpc_echo::call(nodes[0].clone(), "EchoTwo", &BTreeMap::new(), TIMEOUT)
        .await
        .unwrap()
        .into_inner()
        .assertions
        .unwrap();
    assert_eq!(two.context.unwrap().pod, "g3");
    assert!(
        two.headers
            .iter()
            .any(|h| h.key == "x-routed" && h.value == "two"),
        "the rule's RequestHeaderModifier: {:?}",
        two.headers
    );
    let unmatched = grpc_echo::call(nodes[1].clone(), "EchoThree", &BTreeMap::new(), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        unmatched.code(),
        tonic::Code::Unimplemented,
        "{unmatched:?}"
    );
    assert_ne!(unmatched.message(), BACKEND_UNIMPLEMENTED);
    let three = grpc_echo::full_method("EchoThree");
    for b in &backends {
        assert!(
            !b.seen.lock().unwrap().contains(&three),
            "no backend is called for a method no rule matches"
        );
    }

    // An HTTPS listener: gRPC over TLS, h2 negotiated by ALPN, the certificate checked for HOST.
    let tls_addr: SocketAddr = format!("127.0.0.2:{tls_port}").parse().unwrap();
    let tls = grpc_echo::channel(
        tls_addr,
        &Dial {
            authority: Some(HOST.into()),
            tls: Some((cert_pem, HOST.into())),
        },
    )
    .unwrap();
    assert_eq!(who(&tls, "EchoTwo", &[]).await, "g3");

    // Without a session, calls spread by weight: over g0 and g1, never g2 (weight 0).
    let spread: BTreeSet<String> = reached(&nodes[0], "Echo", &[("mode", "cookie")], 40).await;
    assert_eq!(
        spread,
        BTreeSet::from(["g0".to_string(), "g1".to_string()]),
        "40 session-less calls"
    );

    // Cookie persistence: the first answer sets the cookie; sent back as metadata, it keeps every
    // call, on either node, on the first call's backend, and starts no new session.
    let (set_cookie, backend) = start_session(&nodes[0], "cookie", "set-cookie").await;
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("grpc-sess="), "{set_cookie}");
    for i in 0..20 {
        let r = grpc_echo::call(
            nodes[i % 2].clone(),
            "Echo",
            &md(&[("mode", "cookie"), ("cookie", &cookie)]),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(
            r.metadata().get("set-cookie").is_none(),
            "call {i} started a new session"
        );
        assert_eq!(pod_of(r), backend, "cookie session, call {i}");
    }

    // Header persistence: the token comes back in x-grpc-session and is sent in it.
    let (token, backend) = start_session(&nodes[1], "header", "x-grpc-session").await;
    for i in 0..20 {
        let got = who(
            &nodes[i % 2],
            "Echo",
            &[("mode", "header"), ("x-grpc-session", &token)],
        )
        .await;
        assert_eq!(got, backend, "header session, call {i}");
    }
}

/// Starts a session on a rule (`mode`): the response metadata that carries its token, and the pod.
async fn start_session(
    channel: &tonic::transport::Channel,
    mode: &str,
    carrier: &str,
) -> (String, String) {
    let first = grpc_echo::call(channel.clone(), "Echo", &md(&[("mode", mode)]), TIMEOUT)
        .await
        .unwrap();
    let token = first
        .metadata()
        .get(carrier)
        .unwrap_or_else(|| panic!("{carrier} in the response metadata"))
        .to_str()
        .unwrap()
        .to_string();
    (token, pod_of(first))
}

fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The backends `n` calls reached.
async fn reached(
    channel: &tonic::transport::Channel,
    method: &str,
    md: &[(&str, &str)],
    n: usize,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(who(channel, method, md).await);
    }
    seen
}
