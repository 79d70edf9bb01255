//! The data plane treats every client as hostile (DESIGN.md, Security): paths are normalized before
//! they are matched (and the backend gets the normalized path), what cannot be normalized is refused,
//! malformed requests and bodies get 400, a client that sends half a request head is cut off. The
//! requests are written byte for byte on raw connections: an HTTP client library would normalize or
//! refuse them itself.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::procs::free_port;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `raw` on a new connection and reads the answer until the node closes it (or 10 s pass).
async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `/public` and `/admin` rules to two backends; the traversal requests of the issue either reach only
/// the rule of their normalized path (and the backend sees that path) or are refused with 400; two
/// Host headers, a Host that disagrees with an absolute-form target, and a bad chunk size are 400.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_are_normalized_or_refused() {
    let store = store();
    let s = reach(&store);
    let (public, admin) = (
        echo("public", "web", false).await,
        echo("admin", "web", false).await,
    );
    let port = free_port();
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n{}{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /public}}}}]\n    backendRefs: [{{name: public, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /admin}}}}]\n    backendRefs: [{{name: admin, port: 8080}}]\n",
            service("public", "web", public.addr, None),
            service("admin", "web", admin.addr, None),
        ),
    );
    let _n = NodeProc::start_with(
        &s,
        "127.0.0.2",
        "gw",
        &store.dir,
        "a",
        &["--header-read-timeout", "1"],
    );
    let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    eventually("the node serves the route", || async {
        who(addr, "a.example", "/public/x").await == "public"
    })
    .await;

    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/./../admin/x",
    ] {
        let resp = exchange(addr, &get(path)).await;
        let r = parse(resp.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{path}: {resp}");
        assert_eq!(
            r.json()["pod"],
            "admin",
            "{path} goes where its normalized path leads"
        );
        assert_eq!(
            r.json()["path"],
            "/admin/x",
            "{path}: the backend sees the normalized path"
        );
    }
    for path in [
        "/public/..%2fadmin",
        "/public/..%2Fadmin/x",
        "/public/%zz",
        "/public/..%5cadmin",
    ] {
        let resp = exchange(addr, &get(path)).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp}");
    }
    let two_hosts =
        "GET /public/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        status_of(&exchange(addr, two_hosts).await),
        400,
        "two Host headers"
    );
    let absolute =
        "GET http://a.example/admin/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        status_of(&exchange(addr, absolute).await),
        400,
        "Host against the target"
    );
    let agreeing =
        "GET http://a.example/public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&exchange(addr, agreeing).await), 200);
    let bad_chunk = "POST /public/x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        status_of(&exchange(addr, bad_chunk).await),
        400,
        "a bad chunk size"
    );

    // Half a request head: the node closes the connection once the header timeout (1 s) passes.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /public/x HTTP/1.1\r\nHost: a.exa")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the slow client is still connected after 5 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed at the timeout, not before: {:?}",
        started.elapsed()
    );
}

/// A backend that closes each connection as soon as it has answered, without saying so (no
/// `Connection: close`): the node pools the connection, and the next request finds it closed. A
/// request that had not been written to it yet is sent again on a new connection, so every request
/// is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_closed_by_the_backend_is_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"pod":"closer"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let store = store();
    let s = reach(&store);
    let port = free_port();
    apply(
        &s,
        &store.dir,
        &format!(
            "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: closer, port: 8080}}]\n",
            service("closer", "web", backend, None),
        ),
    );
    let _n = NodeProc::start_with(&s, "127.0.0.2", "gw", &store.dir, "a", &[]);
    let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    eventually("the node serves the route", || async {
        who(addr, "a.example", "/").await == "closer"
    })
    .await;
    // Sixteen clients at once: connections come back to the pool while others close.
    let failed: Vec<(usize, u16, String)> =
        futures::future::join_all((0..16).map(|c| async move {
            let mut failed = Vec::new();
            for i in 0..100 {
                let r = get(addr, "a.example", "/", &[]).await.unwrap();
                if r.status != 200 {
                    failed.push((c * 100 + i, r.status, r.body.clone()));
                }
            }
            failed
        }))
        .await
        .concat();
    assert!(failed.is_empty(), "requests not answered: {failed:?}");
}
