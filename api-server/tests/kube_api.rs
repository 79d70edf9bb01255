//! The Kubernetes API of a member, driven by the real `kubectl` (and `curl`) as platform teams would:
//! apply of upstream manifests, get, server-side apply with its conflicts, patch, edit, delete, watch,
//! explain, kubectl's own error messages, optimistic concurrency between two `replace`, and a paged list
//! at one revision. Each test starts its own member (and gateway node) on free loopback ports.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_testkit::cluster::Cluster;
use gw_testkit::procs::{Children, free_port};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NS: &str = "gateway-conformance-infra";

/// The upstream conformance manifests (read where they are, never copied).
fn upstream(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/gateway-api-v1.1/conformance/tests")
        .join(file)
}

struct Kube {
    cluster: Cluster,
    kubeconfig: PathBuf,
}

impl Kube {
    async fn start() -> Kube {
        let cluster = Cluster::start_kube(1, &[]).await.unwrap();
        let kubeconfig = cluster.kubeconfig(1).unwrap();
        Kube {
            cluster,
            kubeconfig,
        }
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.cluster.dir.join("kube-cache"))
            .env("HOME", &self.cluster.dir);
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("running kubectl")
    }

    /// kubectl's stdout; panics with its stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            text(&o.stderr),
            text(&o.stdout)
        );
        text(&o.stdout)
    }

    /// kubectl's stderr; panics when it succeeds.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should have failed: {}",
            text(&o.stdout)
        );
        text(&o.stderr)
    }

    fn write(&self, name: &str, body: &str) -> String {
        let p = self.cluster.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }

    fn gwadm(&self, args: &[&str]) -> String {
        let o = self.cluster.gwadm(self.cluster.addr(1), args);
        assert!(o.status.success(), "gwadm {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    }

    fn route_json(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&[
            "get",
            "httproute",
            name,
            "-n",
            NS,
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until `f` holds, retrying every 200 ms.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match f() {
            None => return,
            Some(why) => last = Some(why),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} within {timeout:?}: {}", last.unwrap_or_default());
}

fn infra(listener_port: u16) -> String {
    format!(
        "\
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gw}}
spec: {{controllerName: gw.dev/gateway-node}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {NS}}}
spec:
  gatewayClassName: gw
  listeners: [{{name: http, port: {listener_port}, protocol: HTTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: infra-backend-v1, namespace: {NS}}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 3000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: infra-backend-v1-a
  namespace: {NS}
  labels: {{kubernetes.io/service-name: infra-backend-v1}}
addressType: IPv4
ports: [{{name: http, port: 3000, protocol: TCP}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: tls, namespace: {NS}}}
type: Opaque
stringData: {{token: hunter2}}
"
    )
}

const SSA_ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ssa, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  hostnames: [a.example]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
";

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_drives_the_store() {
    let k = Kube::start().await;
    let mut children = Children::default();
    children
        .spawn_node(
            k.cluster.addr(1),
            ("gw", "a"),
            "127.0.0.1",
            (&k.cluster.dir, k.cluster.pki()),
            &[],
        )
        .unwrap();

    // Discovery, as kubectl sees it.
    let resources = k.ok(&["api-resources"]);
    for line in [
        "httproutes",
        "grpcroutes",
        "gateways",
        "endpointslices",
        "backendtlspolicies",
    ] {
        assert!(resources.contains(line), "{line} in\n{resources}");
    }

    // Apply: gw's infrastructure plus two upstream manifests, read where they are.
    let infra = k.write("infra.yaml", &infra(free_port()));
    let http = upstream("httproute-simple-same-namespace.yaml");
    let grpc = upstream("grpcroute-exact-method-matching.yaml");
    let out = k.ok(&[
        "apply",
        "-f",
        &infra,
        "-f",
        http.to_str().unwrap(),
        "-f",
        grpc.to_str().unwrap(),
    ]);
    for line in [
        "namespace/gateway-conformance-infra created",
        "gateway.gateway.networking.k8s.io/same-namespace created",
        "endpointslice.discovery.k8s.io/infra-backend-v1-a created",
        "secret/tls created",
        "httproute.gateway.networking.k8s.io/gateway-conformance-infra-test created",
        "grpcroute.gateway.networking.k8s.io/exact-matching created",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    // Applying the same file again changes nothing (kubectl sends the lists the store defaulted,
    // and the store finds nothing to write).
    let rv = k.route_json("gateway-conformance-infra-test")["metadata"]["resourceVersion"].clone();
    k.ok(&["apply", "-f", http.to_str().unwrap()]);
    assert_eq!(
        k.route_json("gateway-conformance-infra-test")["metadata"]["resourceVersion"],
        rv
    );

    let routes = k.ok(&["get", "httproutes", "-A"]);
    assert!(
        routes.contains(NS) && routes.contains("gateway-conformance-infra-test"),
        "{routes}"
    );
    // Secrets keep their values from readers.
    let secret = k.ok(&["get", "secret", "tls", "-n", NS, "-o", "json"]);
    assert!(!secret.contains("aHVudGVyMg=="), "{secret}");
    // ... and a Secret written back as read keeps them.
    let read_back = k.write("secret.json", &secret);
    k.ok(&["replace", "-f", &read_back]);
    let stored = k.gwadm(&[
        "get",
        "secret",
        "tls",
        "-n",
        NS,
        "-o",
        "json",
        "--show-secret-values",
    ]);
    assert!(stored.contains("aHVudGVyMg=="), "{stored}");

    // The status the gateway node wrote, shown by kubectl.
    eventually(
        "the gateway node programs the Gateway",
        Duration::from_secs(20),
        || {
            let y = k.ok(&["get", "gateway", "same-namespace", "-n", NS, "-o", "yaml"]);
            (!(y.contains("type: Programmed") && y.contains("status: \"True\""))).then_some(y)
        },
    );

    // Watch: a change made with gwadm reaches `kubectl get -w`.
    let mut watch = k
        .kubectl_cmd(&["get", "httproutes", "-n", NS, "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The initial list comes first (after kubectl's header); the change after it.
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with("EVENT"), "{first}");
    let listed = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        listed.contains("ADDED") && listed.contains("gateway-conformance-infra-test"),
        "{listed}"
    );
    let by_gwadm = k.write(
        "by-gwadm.yaml",
        &SSA_ROUTE
            .replace("name: ssa", "name: by-gwadm")
            .replace("a.example", "g.example"),
    );
    k.gwadm(&["apply", "-f", &by_gwadm]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("ADDED") && l.contains("by-gwadm"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("no event for by-gwadm ({e}); saw {seen:?}"),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Server-side apply: created, then a field another manager changed is a conflict unless forced.
    let ssa = k.write("ssa.yaml", SSA_ROUTE);
    let out = k.ok(&["apply", "--server-side", "-f", &ssa]);
    assert!(
        out.contains("httproute.gateway.networking.k8s.io/ssa serverside-applied"),
        "{out}"
    );
    let managers: Vec<String> = k.route_json("ssa")["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["manager"], m["operation"]))
        .collect();
    assert_eq!(managers, vec!["\"kubectl\"/\"Apply\""]);
    let out = k.ok(&[
        "patch",
        "httproute",
        "ssa",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"hostnames":["b.example"]}}"#,
    ]);
    assert!(
        out.contains("httproute.gateway.networking.k8s.io/ssa patched"),
        "{out}"
    );
    assert_eq!(k.route_json("ssa")["spec"]["hostnames"][0], "b.example");
    let err = k.fails(&["apply", "--server-side", "-f", &ssa]);
    assert!(
        err.contains("conflict with \"kubectl-patch\"") && err.contains(".spec.hostnames"),
        "{err}"
    );
    let out = k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &ssa]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(k.route_json("ssa")["spec"]["hostnames"][0], "a.example");

    // Edit, with a script as the editor.
    let editor = k.write(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/a\\.example/edited.example/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = k
        .kubectl_cmd(&["edit", "httproute", "ssa", "-n", NS])
        .env("KUBE_EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        text(&o.stdout).contains("httproute.gateway.networking.k8s.io/ssa edited"),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let shown = k.gwadm(&["get", "httproute", "ssa", "-n", NS, "-o", "json"]);
    assert!(shown.contains("edited.example"), "{shown}");

    // An invalid object: kubectl's usual message, naming the field.
    let bad = k.write(
        "bad.yaml",
        &SSA_ROUTE.replace("name: ssa", "name: bad").replace(
            "rules: [{backendRefs",
            "rules: [{matches: [{path: {type: Nope, value: /}}], backendRefs",
        ),
    );
    let err = k.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("The HTTPRoute \"bad\" is invalid: spec.rules[0].matches[0].path.type"),
        "{err}"
    );

    // Unknown fields: refused by name (kubectl's default, Strict), dropped with a warning, or dropped.
    let typo = k.write(
        "typo.yaml",
        &SSA_ROUTE
            .replace("name: ssa", "name: typo")
            .replace("hostnames:", "colour: blue\n  hostnames:"),
    );
    let err = k.fails(&["apply", "-f", &typo]);
    assert!(
        err.contains("The HTTPRoute \"typo\" is invalid: spec.colour: unknown field"),
        "{err}"
    );
    let o = k.kubectl(&["apply", "--validate=warn", "-f", &typo]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("Warning: unknown field \"spec.colour\""),
        "{}",
        text(&o.stderr)
    );
    assert!(k.route_json("typo")["spec"].get("colour").is_none());
    let o = k.kubectl(&["apply", "--validate=false", "-f", &typo]);
    assert!(
        o.status.success() && !text(&o.stderr).contains("Warning"),
        "{o:?}"
    );

    // A transition rule: a GatewayClass's controllerName is immutable.
    let class = k.write(
        "class.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gw}\nspec: {controllerName: example.com/other}\n",
    );
    let err = k.fails(&["apply", "-f", &class]);
    assert!(
        err.contains("The GatewayClass \"gw\" is invalid: spec.controllerName")
            && err.contains("Value is immutable"),
        "{err}"
    );

    // Explain, from the OpenAPI the API serves.
    let explained = k.ok(&["explain", "httproute.spec.rules"]);
    assert!(
        explained.contains("KIND:") && explained.contains("HTTPRoute"),
        "{explained}"
    );
    for field in ["backendRefs", "matches", "filters"] {
        assert!(explained.contains(field), "{field} in\n{explained}");
    }

    // Delete -f: gone, for kubectl and for gwadm.
    let out = k.ok(&["delete", "-f", grpc.to_str().unwrap()]);
    assert!(
        out.contains("grpcroute.gateway.networking.k8s.io \"exact-matching\" deleted"),
        "{out}"
    );
    let err = k.fails(&["get", "grpcroute", "exact-matching", "-n", NS]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replaces_at_one_resource_version_one_wins() {
    let k = Kube::start().await;
    let ns = k.write(
        "ns.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
    );
    k.ok(&["apply", "-f", &ns]);
    let route = k.write("route.yaml", SSA_ROUTE);
    k.ok(&["create", "-f", &route]);
    let base = k.route_json("ssa");
    let mut files = Vec::new();
    for host in ["one.example", "two.example"] {
        let mut v = base.clone();
        v["spec"]["hostnames"] = serde_json::json!([host]);
        files.push(k.write(&format!("{host}.json"), &v.to_string()));
    }
    let runs: Vec<_> = files
        .iter()
        .map(|f| {
            k.kubectl_cmd(&["replace", "-f", f])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(won.len(), 1, "{outs:?}");
    let err = text(&lost[0].stderr);
    assert!(
        err.contains("Conflict")
            && err.contains("the object has been modified; please apply your changes to the latest version and try again"),
        "{err}"
    );
    assert!(text(&won[0].stdout).contains("replaced"), "{outs:?}");
    let winner = outs.iter().position(|o| o.status.success()).unwrap();
    let now = k.route_json("ssa");
    assert_eq!(
        now["spec"]["hostnames"][0],
        ["one.example", "two.example"][winner]
    );
}

/// `curl` as the admin against a member's Kubernetes API.
fn curl(k: &Kube, path: &str) -> Value {
    let tls = k.cluster.pki().admin();
    let o = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(tls.tls_ca.unwrap())
        .arg("--cert")
        .arg(tls.tls_cert.unwrap())
        .arg("--key")
        .arg(tls.tls_key.unwrap())
        .arg(format!("https://{}{path}", k.cluster.kube_addr(1)))
        .output()
        .expect("running curl");
    assert!(
        o.status.success(),
        "curl {path}: {}{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paged_list_is_one_revision() {
    let k = Kube::start().await;
    let mut docs = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n");
    for i in 0..10 {
        docs.push_str("---\n");
        docs.push_str(&SSA_ROUTE.replace("name: ssa", &format!("name: r{i}")));
    }
    let file = k.write("ten.yaml", &docs);
    k.gwadm(&["apply", "-f", &file]);
    let base = format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes?limit=2");
    let mut names = Vec::new();
    let mut revisions = Vec::new();
    let mut cont = String::new();
    for page in 0.. {
        let path = if cont.is_empty() {
            base.clone()
        } else {
            format!("{base}&continue={cont}")
        };
        let list = curl(&k, &path);
        let items = list["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{list}");
        names.extend(
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        revisions.push(list["metadata"]["resourceVersion"].clone());
        // Between pages: a new route, a changed one, a deleted one.
        let changed = k.write(
            "changed.yaml",
            &SSA_ROUTE
                .replace("name: ssa", &format!("name: new{page}"))
                .replace("a.example", "x.example"),
        );
        k.gwadm(&["apply", "-f", &changed]);
        if page == 0 {
            k.gwadm(&["delete", "httproute", "r9", "-n", NS]);
        }
        cont = list["metadata"]["continue"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if cont.is_empty() {
            break;
        }
    }
    let want: Vec<String> = {
        let mut w: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        w.sort();
        w
    };
    assert_eq!(names, want, "every page at the first page's revision");
    assert_eq!(revisions.len(), 5);
    assert!(
        revisions.iter().all(|r| *r == revisions[0]),
        "{revisions:?}"
    );
    // A list now sees the writes made between the pages.
    let all = curl(
        &k,
        &format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes"),
    );
    let now: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(now.contains(&"new0") && !now.contains(&"r9"), "{now:?}");
}
