//! What the data plane does with real traffic: HTTPS with the certificate chosen by SNI (and ALPN),
//! HTTP/2 cleartext to backends, WebSocket upgrades, and the HTTPRoute filters and timeouts.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::echo::ws;
use gw_testkit::procs::free_port;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use support::*;
use tokio::io::AsyncReadExt;

fn gateway(listeners: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners:\n{listeners}"
    )
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n{spec}"
    )
}

/// HTTPS listeners sharing a port: the certificate follows SNI; ALPN offers h2 and http/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn https_certificate_by_sni() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = store();
    let s = reach(&store);
    let v1 = echo("app-v1", "web", false).await;
    let port = free_port();
    let (sa, ca, _) = cert_secret("cert-a", "a.example.com");
    let (sb, cb, _) = cert_secret("cert-b", "b.example.com");
    let listeners = format!(
        "  - {{name: a, port: {port}, protocol: HTTPS, hostname: a.example.com, tls: {{certificateRefs: [{{name: cert-a}}]}}}}\n  - {{name: b, port: {port}, protocol: HTTPS, hostname: b.example.com, tls: {{certificateRefs: [{{name: cert-b}}]}}}}\n"
    );
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{sa}{sb}{}{}{}",
            gateway(&listeners),
            service("app-v1", "web", v1.addr, None),
            route(
                "r",
                "  rules: [{backendRefs: [{name: app-v1, port: 8080}]}]\n"
            )
        ),
    );
    let _n = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    for (host, cert, alpn) in [
        ("a.example.com", &ca, b"h2".to_vec()),
        ("b.example.com", &cb, b"http/1.1".to_vec()),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.clone()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let host_owned = host.to_string();
        let tls = eventually_value("a TLS handshake with the listener", || {
            let (connector, host) = (connector.clone(), host_owned.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                connector
                    .connect(ServerName::try_from(host).unwrap(), tcp)
                    .await
                    .ok()
            }
        })
        .await;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.peer_certificates().unwrap()[0],
            *cert,
            "{host} gets its own certificate"
        );
        assert_eq!(conn.alpn_protocol(), Some(alpn.as_slice()));
    }
}

/// Filters, timeouts, h2c backends and error statuses on one Gateway.
#[tokio::test(flavor = "multi_thread")]
async fn filters_timeouts_and_backend_protocols() {
    let store = store();
    let s = reach(&store);
    let (v1, v2, h2) = (
        echo("app-v1", "web", false).await,
        echo("app-v2", "web", false).await,
        echo("app-h2", "web", true).await,
    );
    let port = free_port();
    let rules = r#"  rules:
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: secure.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
    backendRefs: [{name: app-v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: app-v2, port: 8080}}}]
    backendRefs: [{name: app-v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /headers}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: s}], remove: [x-gone]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: r}]}}
    backendRefs: [{name: app-v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: app-v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /h2}}]
    backendRefs: [{name: app-h2, port: 8080}]
  - matches: [{path: {type: Exact, value: /broken}}]
    backendRefs: [{name: does-not-exist, port: 8080}]
"#;
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{}{}{}{}{}",
            gateway(&format!(
                "  - {{name: http, port: {port}, protocol: HTTP}}\n"
            )),
            service("app-v1", "web", v1.addr, None),
            service("app-v2", "web", v2.addr, None),
            service("app-h2", "web", h2.addr, Some("kubernetes.io/h2c")),
            route("r", rules)
        ),
    );
    let _n = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    eventually("served", || async {
        who(addr, "x.example", "/headers").await == "app-v1"
    })
    .await;

    let r = get(addr, "x.example", "/redirect/a/b?q=1", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://secure.example/moved/a/b?q=1"))
    );

    let r = get(addr, "x.example", "/rewrite/x?y=1", &[]).await.unwrap();
    assert_eq!(
        (r.json()["path"].as_str(), r.json()["host"].as_str()),
        (Some("/new/x?y=1"), Some("rewritten.example"))
    );

    let r = get(addr, "x.example", "/mirror", &[]).await.unwrap();
    assert_eq!(r.json()["pod"], "app-v1");
    eventually("the mirror received a copy", || async {
        v2.seen.lock().unwrap().iter().any(|p| p == "/mirror")
    })
    .await;

    let r = get(
        addr,
        "x.example",
        "/headers",
        &[("x-gone", "1"), ("x-set", "old")],
    )
    .await
    .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["X-Set"], serde_json::json!(["s"]));
    assert!(h.get("X-Gone").is_none());
    assert_eq!(r.header("x-resp"), Some("r"));

    assert_eq!(
        get(addr, "x.example", "/slow?delay=2s", &[])
            .await
            .unwrap()
            .status,
        504
    );
    assert_eq!(
        get(addr, "x.example", "/slow?delay=10ms", &[])
            .await
            .unwrap()
            .status,
        200
    );

    let r = get(addr, "x.example", "/h2", &[]).await.unwrap();
    assert_eq!(
        (r.status, r.json()["proto"].as_str()),
        (200, Some("HTTP/2.0")),
        "{}",
        r.body
    );

    assert_eq!(
        get(addr, "x.example", "/broken", &[]).await.unwrap().status,
        500,
        "a rule whose backends are all invalid"
    );
    assert_eq!(
        get(addr, "x.example", "/nothing-matches", &[])
            .await
            .unwrap()
            .status,
        404
    );
}

/// A WebSocket upgrade passes through to the backend, and messages are echoed over it.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_passes_through() {
    let store = store();
    let s = reach(&store);
    let v1 = echo("app-v1", "web", false).await;
    let port = free_port();
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}{}{}{}",
            gateway(&format!(
                "  - {{name: http, port: {port}, protocol: HTTP}}\n"
            )),
            service("app-v1", "web", v1.addr, Some("kubernetes.io/ws")),
            route(
                "r",
                "  rules: [{backendRefs: [{name: app-v1, port: 8080}]}]\n"
            )
        ),
    );
    let _n = NodeProc::start(&s, "127.0.0.2", "gw", &store.dir, "a");
    let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    eventually("served", || async {
        who(addr, "x.example", "/").await == "app-v1"
    })
    .await;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    ws::client_handshake(&mut c, "x.example", "/ws", None)
        .await
        .unwrap();
    ws::write_frame(&mut c, ws::TEXT, b"hello", Some([1, 2, 3, 4]))
        .await
        .unwrap();
    assert_eq!(
        ws::read_frame(&mut c).await.unwrap(),
        (ws::TEXT, b"hello".to_vec())
    );
    // The raw bytes of a server frame are unmasked.
    ws::write_frame(&mut c, ws::BINARY, &[7; 3], Some([9, 9, 9, 9]))
        .await
        .unwrap();
    let mut raw = [0u8; 5];
    c.read_exact(&mut raw).await.unwrap();
    assert_eq!(&raw, b"\x82\x03\x07\x07\x07");
}
