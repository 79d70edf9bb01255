//! Listener client-certificate validation (`tls.frontendValidation`), driven with curl as a user
//! would: a listener whose CA ConfigMap a client's certificate chains to lets it in, every other
//! client fails the handshake, a listener on the same port without validation takes anyone, a
//! server name cannot smuggle requests past the check, and a new CA in the store takes effect on
//! new connections without a restart.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_client::Identity;
use gw_client::pki::Ca;
use gw_testkit::procs::free_port;
use serde_json::json;
use std::path::{Path, PathBuf};
use support::*;

/// A client's certificate and key files, issued by `ca`.
fn client_files(dir: &Path, ca: &Ca, name: &str) -> (PathBuf, PathBuf) {
    let id = Identity::Admin { name: name.into() };
    let files = ca.issue_to(&dir.join(name), name, &id, 1, &[]).unwrap();
    (files.cert, files.key)
}

fn ca_config_map(ca: &Ca) -> String {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "client-ca", "namespace": "web"}, "data": {"ca.crt": ca.cert_pem()}});
    format!("---\n{cm}\n")
}

/// What curl got for `https://HOST/` sent to `port` with server name `sni` (the Host header is
/// `host`): the status code, or `handshake failed` when curl could not complete TLS.
async fn curl(
    port: u16,
    server_ca: &Path,
    sni: &str,
    host: &str,
    client: Option<&(PathBuf, PathBuf)>,
) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .arg("--resolve")
    .arg(format!("{sni}:{port}:127.0.0.2"))
    .arg("--cacert")
    .arg(server_ca)
    .args(["-H", &format!("Host: {host}")]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .arg(format!("https://{sni}:{port}/"))
        .output()
        .await
        .unwrap();
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout).into_owned(),
        // 35: SSL connect error; 55/56: failure sending/receiving (with TLS 1.3 the server's
        // alert refusing the client's certificate arrives after the client's side of the handshake).
        Some(35 | 55 | 56) => "handshake failed".into(),
        // 7: nothing listens (yet).
        Some(7) => "connection refused".into(),
        other => panic!(
            "curl exited with {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_with_client_cas_admits_only_their_clients_and_follows_a_new_ca() {
    let store = store();
    let s = reach(&store);
    let dir = store.dir.join("client-certs");
    let server_ca = Ca::generate().unwrap();
    server_ca.save(&dir.join("server")).unwrap();
    let (crt, key) = server_ca
        .issue(
            &Identity::Admin { name: "gw".into() },
            1,
            &["a.example".into(), "b.example".into()],
        )
        .unwrap();
    let (ca1, ca2) = (Ca::generate().unwrap(), Ca::generate().unwrap());
    let (client1, client2) = (
        client_files(&dir, &ca1, "client1"),
        client_files(&dir, &ca2, "client2"),
    );
    let backend = echo("app", "web", false).await;
    let port = free_port();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "cert", "namespace": "web"}, "stringData": {"tls.crt": crt, "tls.key": key}});
    let gateway = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners:\n  - {{name: a, port: {port}, protocol: HTTPS, hostname: a.example, tls: {{certificateRefs: [{{name: cert}}], frontendValidation: {{caCertificateRefs: [{{group: '', kind: ConfigMap, name: client-ca}}]}}}}}}\n  - {{name: b, port: {port}, protocol: HTTPS, hostname: b.example, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
    );
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: app, port: 8080}]}]\n";
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}---\n{secret}\n{}{gateway}{}{route}",
            ca_config_map(&ca1),
            service("app", "web", backend.addr, None)
        ),
    );
    let _node = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let server_ca = dir.join("server/ca.crt");
    let get = |sni: &'static str, host: &'static str, client: Option<&(PathBuf, PathBuf)>| {
        let (server_ca, client) = (server_ca.clone(), client.cloned());
        async move { curl(port, &server_ca, sni, host, client.as_ref()).await }
    };
    eventually("client1 gets through listener a", || async {
        get("a.example", "a.example", Some(&client1)).await == "200"
    })
    .await;
    assert_eq!(
        get("a.example", "a.example", None).await,
        "handshake failed"
    );
    assert_eq!(
        get("a.example", "a.example", Some(&client2)).await,
        "handshake failed"
    );
    // Listener b shares the port and asks for nothing.
    assert_eq!(get("b.example", "b.example", None).await, "200");
    // A handshake for b cannot carry a request for a: 421 Misdirected Request.
    assert_eq!(get("b.example", "a.example", None).await, "421");

    // The CA changes in the store: new connections follow it, no restart.
    let started = std::time::Instant::now();
    apply(&s, &store.dir, &ca_config_map(&ca2));
    eventually("client2 gets through after the CA change", || async {
        get("a.example", "a.example", Some(&client2)).await == "200"
    })
    .await;
    println!(
        "the new client CA took effect {:?} after the apply returned",
        started.elapsed()
    );
    assert_eq!(
        get("a.example", "a.example", Some(&client1)).await,
        "handshake failed"
    );

    // A CA reference that cannot be resolved refuses every client, and the status says why.
    apply(
        &s,
        &store.dir,
        &gateway.replace("name: client-ca", "name: no-such-ca"),
    );
    eventually("an unresolved CA refuses even client2", || async {
        get("a.example", "a.example", Some(&client2)).await == "handshake failed"
    })
    .await;
    assert_eq!(
        get("a.example", "a.example", None).await,
        "handshake failed"
    );
    let status = eventually_value("listener a's ResolvedRefs", || async {
        let o = gwadm(&s, &["get", "gateway", "gw", "-n", "web", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let cond = v["status"]["listeners"][0]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")?
            .clone();
        (cond["reason"] == "InvalidCACertificateRef").then_some(cond)
    })
    .await;
    assert_eq!(status["status"], "False");
    assert_eq!(get("b.example", "b.example", None).await, "200");
}
