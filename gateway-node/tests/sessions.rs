//! Session persistence across gateway nodes: two nodes (127.0.0.2, 127.0.0.3) over one store, a route
//! over 4 backends. A session started on one node sticks to its backend on both; a removed backend is
//! replaced by one committed failover that both nodes follow; weight 0 keeps existing sessions; idle
//! sessions expire by committed time; tampered tokens are no session; a session has an entry only once
//! its client comes back, so requests without tokens leave nothing in the table.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::procs::free_port;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

const PODS: [&str; 4] = ["b0", "b1", "b2", "b3"];

/// An echo backend: in this process, or in a process of its own (which can be killed, taking its
/// connections with it).
enum Backend {
    // Held so that it keeps serving until the test ends.
    #[allow(dead_code)]
    InProcess(gw_testkit::echo::EchoServer),
    Process(EchoProc),
}

async fn backend(pod: &str, process: bool) -> (Backend, SocketAddr) {
    if !process {
        let e = echo(pod, "web", false).await;
        let addr = e.addr;
        return (Backend::InProcess(e), addr);
    }
    let p = EchoProc::start(pod, format!("127.0.0.1:{}", free_port()).parse().unwrap()).await;
    let addr = p.addr;
    (Backend::Process(p), addr)
}

struct Env {
    store: gw_testkit::cluster::Cluster,
    nodes: Vec<NodeProc>,
    addrs: Vec<SocketAddr>,
    backends: Vec<Backend>,
}

impl Env {
    fn s(&self) -> Store {
        reach(&self.store)
    }
}

fn route(rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

/// A rule on `prefix` over the 4 backends, with these weights and this sessionPersistence.
fn rule(prefix: &str, persistence: &str, weights: [u32; 4]) -> String {
    let refs: Vec<String> = PODS
        .iter()
        .zip(weights)
        .map(|(p, w)| format!("{{name: {p}, port: 8080, weight: {w}}}"))
        .collect();
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    sessionPersistence: {persistence}\n    backendRefs: [{}]\n",
        refs.join(", ")
    )
}

async fn setup(rules: &str, processes: bool) -> Env {
    setup_with(rules, processes, &[]).await
}

/// `setup`, node `a` started with these extra flags.
async fn setup_with(rules: &str, processes: bool, node_a: &[&str]) -> Env {
    let store = store();
    let s = reach(&store);
    let mut backends = Vec::new();
    let mut yaml = CLASS.to_string();
    let port = free_port();
    yaml.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: web}}\nspec:\n  gatewayClassName: gw\n  listeners: [{{name: http, port: {port}, protocol: HTTP}}]\n"
    ));
    for p in PODS {
        let (b, addr) = backend(p, processes).await;
        yaml.push_str(&service(p, "web", addr, None));
        backends.push(b);
    }
    yaml.push_str(&route(rules));
    apply(&s, &store.dir, &yaml);
    let nodes = vec![
        NodeProc::start_with(&s, "127.0.0.2", "gw", &store.dir, "a", node_a),
        NodeProc::start(&s, "127.0.0.3", "gw", &store.dir, "b"),
    ];
    let addrs: Vec<SocketAddr> = nodes
        .iter()
        .map(|n| format!("{}:{port}", n.bind).parse().unwrap())
        .collect();
    let env = Env {
        store,
        nodes,
        addrs,
        backends,
    };
    // Both nodes serve, and hand out session tokens (the signing key is in the store).
    for addr in &env.addrs {
        eventually(&format!("{addr} starts sessions"), || async {
            get(*addr, "x", "/c", &[])
                .await
                .is_ok_and(|r| r.status == 200 && r.header("set-cookie").is_some())
        })
        .await;
    }
    env
}

/// Waits until both nodes serve the revision of an apply (gwadm's last line: "revision N").
async fn served_by_both(env: &Env, apply_output: &str) {
    let rev: u64 = apply_output
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("revision "))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in {apply_output:?}"));
    for n in &env.nodes {
        eventually("the node serves the change", || async {
            let r = get(n.admin, "admin", "/status", &[]).await.unwrap();
            r.json()["revisionServed"].as_u64() >= Some(rev)
        })
        .await;
    }
}

/// The session cookie a response set (`name=value`).
fn cookie(r: &Resp) -> String {
    r.header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a Set-Cookie")
        .to_string()
}

fn pod(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["pod"].as_str().unwrap().to_string()
}

/// Starts a session on node `on`: (the backend, the cookie).
async fn start(env: &Env, on: usize, path: &str) -> (String, String) {
    let r = get(env.addrs[on], "x", path, &[]).await.unwrap();
    (pod(&r), cookie(&r))
}

async fn with_cookie(env: &Env, on: usize, path: &str, cookie: &str) -> Resp {
    get(env.addrs[on], "x", path, &[("cookie", cookie)])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_stick_across_nodes_by_cookie_and_by_header() {
    let rules = [
        rule("/c", "{sessionName: gw-sess}", [1, 1, 1, 1]),
        rule("/h", "{sessionName: X-Session, type: Header}", [1, 1, 1, 1]),
        rule(
            "/p",
            "{sessionName: keep, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}",
            [1, 1, 1, 1],
        ),
    ]
    .concat();
    let env = setup(&rules, false).await;

    // Cookie: 50 requests alternating between the nodes all reach the session's backend.
    let first = get(env.addrs[0], "x", "/c", &[]).await.unwrap();
    let set = first.header("set-cookie").unwrap().to_string();
    assert!(set.contains("Path=/c"), "{set}");
    assert!(
        !set.contains("Max-Age"),
        "a Session cookie has no Max-Age: {set}"
    );
    let (backend, c) = (pod(&first), cookie(&first));
    assert!(c.starts_with("gw-sess="), "{c}");
    for i in 0..50 {
        let r = with_cookie(&env, i % 2, "/c/x", &c).await;
        assert_eq!(pod(&r), backend, "request {i} on node {}", i % 2);
        assert!(
            r.header("set-cookie").is_none(),
            "no new session on request {i}"
        );
    }

    // Header: the same, with the token in X-Session.
    let first = get(env.addrs[1], "x", "/h", &[]).await.unwrap();
    let token = first
        .header("x-session")
        .expect("the session header")
        .to_string();
    let backend = pod(&first);
    for i in 0..50 {
        let r = get(env.addrs[i % 2], "x", "/h", &[("x-session", &token)])
            .await
            .unwrap();
        assert_eq!(pod(&r), backend, "header session, request {i}");
    }
    // A token of one rule is no session in another (scopes never share sessions).
    let other = get(
        env.addrs[0],
        "x",
        "/c",
        &[("cookie", &format!("gw-sess={token}"))],
    )
    .await
    .unwrap();
    assert!(
        other.header("set-cookie").is_some(),
        "another rule's token starts a new session"
    );

    // Permanent cookies carry Max-Age (the absolute timeout).
    let p = get(env.addrs[0], "x", "/p", &[]).await.unwrap();
    let set = p.header("set-cookie").unwrap();
    assert!(
        set.contains("Max-Age=3600") && set.contains("Path=/p"),
        "{set}"
    );

    // A tampered token (payload changed, MAC kept) or a made-up one is ignored: a new session, with
    // a new token.
    let (_, c) = start(&env, 0, "/c").await;
    let value = c.trim_start_matches("gw-sess=");
    let mut parts: Vec<String> = value.split('.').map(String::from).collect();
    let payload = parts[2].clone();
    let flipped = if payload.ends_with('A') { 'B' } else { 'A' };
    parts[2] = format!("{}{flipped}", &payload[..payload.len() - 1]);
    for bad in [
        format!("gw-sess={}", parts.join(".")),
        "gw-sess=v1.abc.eyJzIjoieCJ9.AAAA".to_string(),
    ] {
        for on in 0..2 {
            let r = with_cookie(&env, on, "/c", &bad).await;
            assert_eq!(r.status, 200);
            assert!(
                r.header("set-cookie").is_some(),
                "{bad} must start a new session"
            );
        }
    }
    drop(env.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_backend_fails_over_once_and_weight_zero_keeps_sessions() {
    let env = setup(&rule("/c", "{sessionName: gw-sess}", [1, 1, 1, 1]), false).await;
    let s = env.s();
    let (backend, c) = start(&env, 0, "/c").await;
    // The session's entry is made when it comes back with its token.
    assert_eq!(pod(&with_cookie(&env, 1, "/c", &c).await), backend);
    eventually("the session is recorded", || async {
        let o = gwadm(&s, &["affinity", "ls", "--route", "web/app"]);
        String::from_utf8_lossy(&o.stdout).contains(&backend)
    })
    .await;

    // Remove the backend from its EndpointSlice; wait until both nodes see it gone.
    let out = apply(
        &s,
        &env.store.dir,
        &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {backend}, namespace: web, labels: {{kubernetes.io/service-name: {backend}}}}}\naddressType: IPv4\nports: [{{name: http, port: 1}}]\nendpoints: []\n"
        ),
    );
    served_by_both(&env, &out).await;
    // Concurrent requests on both nodes: one replacement, the same for all.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (addr, c) = (env.addrs[i % 2], c.clone());
        tasks.push(tokio::spawn(async move {
            get(addr, "x", "/c", &[("cookie", &c)]).await.unwrap()
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        seen.insert(pod(&t.await.unwrap()));
    }
    assert_eq!(
        seen.len(),
        1,
        "every node follows one committed replacement: {seen:?}"
    );
    let replacement = seen.into_iter().next().unwrap();
    assert_ne!(replacement, backend);
    for i in 0..10 {
        assert_eq!(pod(&with_cookie(&env, i % 2, "/c", &c).await), replacement);
    }
    let shown = gwadm(&s, &["affinity", "show", c.trim_start_matches("gw-sess=")]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("failovers") && shown.contains(&replacement) && shown.contains(&backend),
        "gwadm affinity show names the committed failover:\n{shown}"
    );
    assert_eq!(
        shown.matches("atMs").count(),
        1,
        "exactly one failover committed:\n{shown}"
    );

    // Weight 0 for a live session's backend: the session stays, new sessions never go there.
    let (kept, c2) = start(&env, 1, "/c").await;
    let idx = PODS.iter().position(|p| *p == kept).unwrap();
    let mut weights = [1, 1, 1, 1];
    weights[idx] = 0;
    let out = apply(
        &s,
        &env.store.dir,
        &route(&rule("/c", "{sessionName: gw-sess}", weights)),
    );
    served_by_both(&env, &out).await;
    for i in 0..10 {
        assert_eq!(pod(&with_cookie(&env, i % 2, "/c", &c2).await), kept);
    }
    for i in 0..30 {
        let (b, _) = start(&env, i % 2, "/c").await;
        assert_ne!(b, kept, "a new session went to a weight-0 backend");
    }
    drop(env.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_expire_by_committed_time() {
    let idle = rule(
        "/c",
        "{sessionName: gw-sess, idleTimeout: 2s}",
        [1, 1, 1, 1],
    );
    let env = setup(&idle, false).await;
    // Used every second for 5 s: the binding holds, on both nodes.
    let (backend, c) = start(&env, 0, "/c").await;
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = with_cookie(&env, i % 2, "/c", &c).await;
        assert_eq!(pod(&r), backend, "active session, second {}", i + 1);
        assert!(r.header("set-cookie").is_none());
    }
    // Idle for 3 s: the cluster expires the session (the leader sweeps every 250 ms; polling the
    // table is not activity); the next request, on either node, gets a new binding.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = env.s();
    // (Its token is past its window too, so the expired entry is purged soon after.)
    eventually("the store expired the idle session", || async {
        let o = gwadm(&s, &["affinity", "ls"]);
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("live")
    })
    .await;
    for on in 0..2 {
        let r = with_cookie(&env, on, "/c", &c).await;
        assert!(
            r.header("set-cookie").is_some(),
            "node {on}: an expired session is not followed"
        );
    }
    // Eviction: a live session stops binding at once.
    let (_, c3) = start(&env, 1, "/c").await;
    let id = c3.trim_start_matches("gw-sess=").to_string();
    with_cookie(&env, 1, "/c", &c3).await;
    eventually("the session is recorded", || async {
        gwadm(&s, &["affinity", "show", &id]).status.success()
    })
    .await;
    let o = gwadm(&s, &["affinity", "evict", &id]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("evicted"),
        "{o:?}"
    );
    eventually("an evicted session is not followed", || async {
        with_cookie(&env, 0, "/c", &c3)
            .await
            .header("set-cookie")
            .is_some()
    })
    .await;
    drop(env.nodes);
    drop(env.backends);
}

/// A backend that stops answering (its process is killed) is replaced like a removed one: the node
/// that sees the failure commits a replacement and sends the request there (none of it reached the
/// dead backend), both nodes follow the committed one and update the client's token to name it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_backend_fails_over_once() {
    let mut env = setup(&rule("/c", "{sessionName: gw-sess}", [1, 1, 1, 1]), true).await;
    let (backend, c) = start(&env, 0, "/c").await;
    let idx = PODS.iter().position(|p| *p == backend).unwrap();
    if let Backend::Process(p) = &mut env.backends[idx] {
        p.kill();
    }
    // Not one request fails: the first is served by the replacement, and so is every one after it
    // on both nodes (the other node, refused too or not, follows the committed replacement).
    let first = with_cookie(&env, 0, "/c", &c).await;
    assert_eq!(first.status, 200, "{first:?}");
    let mut answers = std::collections::BTreeSet::from([pod(&first)]);
    for i in 0..30 {
        let r = with_cookie(&env, (i + 1) % 2, "/c", &c).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        answers.insert(pod(&r));
    }
    assert_eq!(
        answers.len(),
        1,
        "one replacement for both nodes: {answers:?}"
    );
    assert!(!answers.contains(&backend), "{answers:?}");
    // The old token is answered with one naming the replacement, for the same session; that one
    // needs no update.
    let moved = with_cookie(&env, 1, "/c", &c).await;
    let updated = cookie(&moved);
    let session =
        |c: &str| gw_model::affinity::token::session_of(c.trim_start_matches("gw-sess=")).unwrap();
    assert_eq!(session(&updated), session(&c));
    assert_ne!(updated, c);
    for on in 0..2 {
        let r = with_cookie(&env, on, "/c", &updated).await;
        assert_eq!(pod(&r), pod(&moved));
        assert!(r.header("set-cookie").is_none(), "node {on}: {r:?}");
    }
    drop(env.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_absolute_timeout_ends_even_an_active_session() {
    let absolute = rule(
        "/c",
        "{sessionName: gw-sess, absoluteTimeout: 3s}",
        [1, 1, 1, 1],
    );
    let env = setup(&absolute, false).await;
    let started = std::time::Instant::now();
    let (backend, c) = start(&env, 0, "/c").await;
    // Active every 500 ms: bound until the absolute timeout (counted from the token's issue, which is
    // after `started`), then a new session.
    let mut renewed = None;
    for i in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = with_cookie(&env, i % 2, "/c", &c).await;
        if r.header("set-cookie").is_some() {
            renewed = Some(started.elapsed());
            break;
        }
        assert_eq!(pod(&r), backend, "bound while the session lives");
    }
    let after = renewed.expect("the session ended while it was being used");
    assert!(
        after >= Duration::from_secs(3),
        "a session lives its absolute timeout: ended after {after:?}"
    );
    drop(env.nodes);
}

/// The number of session entries in the table.
fn entries(s: &Store) -> usize {
    let o = gwadm(s, &["affinity", "ls", "-o", "json"]);
    assert!(o.status.success(), "{o:?}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    list.len()
}

/// A node metric's value (0 when absent).
async fn metric(node: &NodeProc, name: &str) -> u64 {
    let r = get(node.admin, "x", "/metrics", &[]).await.unwrap();
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Requests without a token write nothing (no entry, no store call): only a session whose client
/// comes back gets an entry, and a node proposes at most `--session-creations-per-second` of them a
/// second (past it, the session binds by its token until a later request records it). Tokens are
/// opaque: nothing in one names the backend.
#[tokio::test(flavor = "multi_thread")]
async fn only_returning_sessions_are_recorded_and_creations_are_capped() {
    let env = setup_with(
        &rule("/c", "{sessionName: gw-sess}", [1, 1, 1, 1]),
        false,
        &["--session-creations-per-second", "5"],
    )
    .await;
    let s = env.s();
    // A flood of cookie-less requests on both nodes, 8 at a time (GW_FLOOD_REQUESTS of them; 2000
    // by default, 100000 for the check).
    let flood: usize = std::env::var("GW_FLOOD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut tokens = Vec::new();
    for round in 0..flood.div_ceil(8) {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let addr = env.addrs[(round + i) % 2];
            tasks.push(tokio::spawn(async move {
                get(addr, "x", "/c", &[]).await.unwrap()
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            if tokens.len() < 50 {
                tokens.push((pod(&r), cookie(&r)));
            }
        }
    }
    // Several batch intervals later, still nothing: no token came back.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        entries(&s),
        0,
        "{flood} requests without a token made entries"
    );
    for n in &env.nodes {
        assert_eq!(metric(n, "gw_node_session_creations_total").await, 0);
    }
    for (_, c) in &tokens {
        let value = c.trim_start_matches("gw-sess=");
        for part in value.split('.') {
            let text =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
            let backends = PODS.iter().map(|p| format!("web/{p}:8080"));
            for secret in backends.chain(["127.0.0.1".into(), "HTTPRoute/web".into()]) {
                assert!(
                    !text.contains(&secret) && !part.contains(&secret),
                    "the token {value} shows {secret}"
                );
            }
        }
    }
    // 20 sessions come back at once on node a (5 creations a second): each is served by its token's
    // backend, some entries wait.
    let back: Vec<(String, String)> = tokens[..20].to_vec();
    let mut tasks = Vec::new();
    for (p, c) in back.clone() {
        let addr = env.addrs[0];
        tasks.push(tokio::spawn(async move {
            (
                p,
                pod(&get(addr, "x", "/c", &[("cookie", &c)]).await.unwrap()),
            )
        }));
    }
    for t in tasks {
        let (want, got) = t.await.unwrap();
        assert_eq!(got, want, "a returning session is bound by its token");
    }
    let a = &env.nodes[0];
    assert!(
        metric(a, "gw_node_session_creations_deferred_total").await > 0,
        "20 creations at once on a node allowed 5 a second"
    );
    // Used again and again, every one is recorded in the end, on its token's backend.
    eventually("every returning session is recorded", || async {
        for (_, c) in &back {
            with_cookie(&env, 0, "/c", c).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        entries(&s) == back.len()
    })
    .await;
    let shown = String::from_utf8_lossy(&gwadm(&s, &["affinity", "ls"]).stdout).into_owned();
    for (p, c) in &back {
        let id = c.trim_start_matches("gw-sess=").split('.').nth(2).unwrap();
        let line = shown.lines().find(|l| l.contains(id)).unwrap();
        assert!(
            line.contains(&format!("web/{p}:8080|")),
            "{line} is not on {p}"
        );
    }
    // (A creation may be proposed again while the node's view has not yet shown the entry.)
    assert!(metric(a, "gw_node_session_creations_total").await >= 20);
    drop(env.nodes);
}
