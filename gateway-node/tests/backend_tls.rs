//! BackendTLSPolicy: requests through a plain HTTP listener reach a Service's HTTPS endpoints over
//! TLS with the policy's server name, verified against its CA ConfigMap (HTTP/1.1 and, for an HTTP/2
//! Service port, h2 by ALPN); a certificate that does not verify gives 502 and an upstream error of
//! kind `tls`, never a plaintext request; the policy's status names the Gateway using it.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_client::Identity;
use gw_client::pki::Ca;
use gw_testkit::procs::free_port;
use serde_json::json;
use support::*;

/// An HTTPS echo backend with a certificate for `name`, issued by `ca`.
async fn https_echo(pod: &str, ca: &Ca, name: &str) -> gw_testkit::echo::EchoServer {
    let issued = ca
        .issue(&Identity::Admin { name: pod.into() }, 1, &[name.into()])
        .unwrap();
    echo_tls(pod, Some(issued)).await
}

/// The first ancestor in BackendTLSPolicy `name`'s status, once `ready` holds for it.
async fn first_ancestor(
    s: &Store,
    name: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually_value(&format!("an ancestor of policy {name}"), || async {
        let o = gwadm(
            s,
            &["get", "backendtlspolicy", name, "-n", "web", "-o", "json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["status"]["ancestors"]
            .as_array()?
            .first()
            .filter(|a| ready(a))
            .cloned()
    })
    .await
}

fn policy(name: &str, service: &str, hostname: &str) -> String {
    let p = json!({"apiVersion": "gateway.networking.k8s.io/v1alpha3", "kind": "BackendTLSPolicy",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": service}],
                 "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "backend-ca"}],
                                "hostname": hostname}}});
    format!("---\n{p}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_tls_policy_makes_the_node_speak_verified_tls_to_the_backend() {
    let store = store();
    let s = reach(&store);
    let ca = Ca::generate().unwrap();
    let h1 = https_echo("tls-v1", &ca, "backend.example").await;
    let h2 = https_echo("tls-h2", &ca, "backend.example").await;
    let port = free_port();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "backend-ca", "namespace": "web"}, "data": {"ca.crt": ca.cert_pem()}});
    let gateway = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners:\n  - {{name: http, port: {port}, protocol: HTTP}}\n"
    );
    let routes = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /h1}}]\n    backendRefs: [{name: secure, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /h2}}]\n    backendRefs: [{name: secure-h2, port: 8080}]\n";
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}---\n{cm}\n{gateway}{}{}{}{}{routes}",
            service("secure", "web", h1.addr, None),
            service("secure-h2", "web", h2.addr, Some("kubernetes.io/h2c")),
            policy("secure", "secure", "backend.example"),
            policy("secure-h2", "secure-h2", "backend.example"),
        ),
    );
    let node = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let addr = format!("127.0.0.2:{port}").parse().unwrap();
    for (path, alpn, proto) in [("/h1", "http/1.1", "HTTP/1.1"), ("/h2", "h2", "HTTP/2.0")] {
        let r = eventually_value(&format!("{path} answered over TLS"), || async {
            get(addr, "app.example", path, &[])
                .await
                .ok()
                .filter(|r| r.status == 200)
        })
        .await;
        let echo = r.json();
        assert_eq!(echo["tls"]["sni"], "backend.example", "{path}: {echo}");
        assert_eq!(echo["tls"]["alpn"], alpn, "{path}: {echo}");
        assert_eq!(echo["proto"], proto, "{path}: {echo}");
    }

    // The policy's status: the Gateway whose route uses the Service, accepted and resolved.
    let ancestor = first_ancestor(&s, "secure", |_| true).await;
    assert_eq!(ancestor["ancestorRef"]["kind"], "Gateway");
    assert_eq!(ancestor["ancestorRef"]["name"], "gw");
    let conds: Vec<String> = ancestor["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}/{}",
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        conds,
        ["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"]
    );

    // A server name the backend's certificate does not carry: 502, an upstream error of kind tls.
    apply(&s, &store.dir, &policy("secure", "secure", "other.example"));
    eventually("a certificate for another name is refused", || async {
        get(addr, "app.example", "/h1", &[])
            .await
            .is_ok_and(|r| r.status == 502)
    })
    .await;
    let metrics = get(node.admin, "admin", "/metrics", &[]).await.unwrap();
    let text = metrics.body;
    assert!(
        text.lines()
            .any(|l| l.starts_with("gw_node_upstream_errors_total")
                && l.contains("kind=\"tls\"")
                && l.contains("web/secure:8080")),
        "no tls upstream error in:\n{text}"
    );
    // The other Service keeps working.
    assert_eq!(
        get(addr, "app.example", "/h2", &[]).await.unwrap().status,
        200
    );

    // A CA that cannot be resolved: the policy says so, and nothing is sent in plaintext.
    apply(
        &s,
        &store.dir,
        &policy("secure", "secure", "backend.example").replace("backend-ca", "no-such-ca"),
    );
    let ancestor = first_ancestor(&s, "secure", |a| {
        a["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "ResolvedRefs" && c["status"] == "False")
    })
    .await;
    assert!(
        ancestor.to_string().contains("InvalidCACertificateRef"),
        "{ancestor}"
    );
    assert_eq!(
        get(addr, "app.example", "/h1", &[]).await.unwrap().status,
        502
    );
}
