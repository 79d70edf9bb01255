//! TLS and TCP listeners, driven with curl (and openssl s_client): TLS Passthrough routes connections by the ClientHello's
//! server name to each TLSRoute's backend, which terminates TLS with its own certificate; TLS
//! Terminate ends TLS with the listener's certificate and forwards plaintext; a TCP listener
//! forwards to its TCPRoute's backend; UDPRoutes are stored and told they are not served.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_client::Identity;
use gw_client::pki::Ca;
use gw_testkit::procs::free_port;
use serde_json::json;
use std::path::Path;
use support::*;

/// The echo's JSON for `https://NAME:PORT/` (or `http://` without `ca`), the name resolved to the
/// node; `None` when curl got no answer.
async fn curl(scheme: &str, name: &str, port: u16, ca: Option<&Path>) -> Option<serde_json::Value> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.2"));
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd
        .arg(format!("{scheme}://{name}:{port}/"))
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The base64 of the first PEM certificate in `text`, whitespace removed.
fn first_pem(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("-----BEGIN CERTIFICATE-----")?;
    let (pem, _) = rest.split_once("-----END CERTIFICATE-----")?;
    Some(pem.split_whitespace().collect())
}

fn l4_route(kind: &str, name: &str, section: &str, hostnames: &[&str], backend: &str) -> String {
    let mut spec = json!({"parentRefs": [{"name": "gw", "sectionName": section}],
        "rules": [{"backendRefs": [{"name": backend, "port": 8080}]}]});
    if !hostnames.is_empty() {
        spec["hostnames"] = json!(hostnames);
    }
    let r = json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": kind,
        "metadata": {"name": name, "namespace": "web"}, "spec": spec});
    format!("---\n{r}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_passthrough_tls_terminate_and_tcp_listeners_forward_to_their_routes() {
    let store = store();
    let s = reach(&store);
    let dir = store.dir.join("l4");
    let ca = Ca::generate().unwrap();
    ca.save(&dir).unwrap();
    let issue = |name: &str| {
        ca.issue(&Identity::Admin { name: "x".into() }, 1, &[name.into()])
            .unwrap()
    };
    let (a_pair, b_pair) = (issue("a.example"), issue("b.example"));
    let a = echo_tls("tls-a", Some(a_pair.clone())).await;
    let b = echo_tls("tls-b", Some(b_pair.clone())).await;
    let plain = echo_tls("plain", None).await;
    let (crt, key) = issue("term.example");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "term", "namespace": "web"}, "stringData": {"tls.crt": crt, "tls.key": key}});
    let (pass, term, tcp) = (free_port(), free_port(), free_port());
    let gateway = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners:\n  - {{name: pass, port: {pass}, protocol: TLS, tls: {{mode: Passthrough}}}}\n  - {{name: term, port: {term}, protocol: TLS, hostname: term.example, tls: {{mode: Terminate, certificateRefs: [{{name: term}}]}}}}\n  - {{name: tcp, port: {tcp}, protocol: TCP}}\n  - {{name: udp, port: {tcp}, protocol: UDP}}\n"
    );
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}---\n{secret}\n{gateway}{}{}{}{}{}{}{}{}",
            service("a", "web", a.addr, None),
            service("b", "web", b.addr, None),
            service("plain", "web", plain.addr, None),
            l4_route("TLSRoute", "ra", "pass", &["a.example"], "a"),
            l4_route("TLSRoute", "rb", "pass", &["b.example"], "b"),
            l4_route("TLSRoute", "rt", "term", &[], "plain"),
            l4_route("TCPRoute", "rtcp", "tcp", &[], "plain"),
            l4_route("UDPRoute", "rudp", "udp", &[], "plain"),
        ),
    );
    let _node = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let ca_file = dir.join("ca.crt");

    // Passthrough: each name reaches its own backend, which terminated TLS with its certificate
    // (curl verified it for that name) and saw the name.
    for (name, pod) in [("a.example", "tls-a"), ("b.example", "tls-b")] {
        let echo = eventually_value(&format!("{name} through the passthrough listener"), || {
            curl("https", name, pass, Some(&ca_file))
        })
        .await;
        assert_eq!(echo["pod"], pod, "{echo}");
        assert_eq!(echo["tls"]["sni"], name, "{echo}");
    }
    // And as an operator would look: `openssl s_client -servername` is shown each backend's own
    // certificate, verified for that name.
    for (name, (backend_crt, _)) in [("a.example", &a_pair), ("b.example", &b_pair)] {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.2:{pass}")])
            .args(["-servername", name, "-verify_hostname", name, "-CAfile"])
            .arg(&ca_file)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{name}: {text}"
        );
        let served =
            first_pem(&text).unwrap_or_else(|| panic!("{name}: no certificate shown: {text}"));
        assert_eq!(
            Some(served),
            first_pem(backend_crt),
            "{name}: the backend's own certificate"
        );
    }
    assert!(
        curl("https", "c.example", pass, Some(&ca_file))
            .await
            .is_none(),
        "a name no TLSRoute takes is not forwarded"
    );

    // Terminate: the listener's certificate, then plaintext to the backend.
    let echo = eventually_value("term.example through the terminating listener", || {
        curl("https", "term.example", term, Some(&ca_file))
    })
    .await;
    assert_eq!(echo["pod"], "plain", "{echo}");
    assert!(echo["tls"].is_null(), "the backend got plaintext: {echo}");

    // TCP: the bytes as they are.
    let echo = eventually_value("the TCP listener", || {
        curl("http", "any.example", tcp, None)
    })
    .await;
    assert_eq!(echo["pod"], "plain", "{echo}");

    // Statuses.
    let status = |kind: &'static str, name: &'static str| {
        let s = s.clone();
        async move {
            let o = gwadm(&s, &["get", kind, name, "-n", "web", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            let c = v["status"]["parents"][0]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted")?
                .clone();
            Some(format!(
                "{}/{}",
                c["status"].as_str()?,
                c["reason"].as_str()?
            ))
        }
    };
    let written = eventually_value("the routes' statuses", || async {
        Some((
            status("tlsroute", "ra").await?,
            status("tcproute", "rtcp").await?,
            status("udproute", "rudp").await?,
        ))
    })
    .await;
    assert_eq!(
        written,
        (
            "True/Accepted".to_string(),
            "True/Accepted".to_string(),
            "False/UnsupportedValue".to_string()
        )
    );
}
