//! Fixtures for the gateway node's integration tests: a store member, gateway node processes on chosen
//! loopback addresses, echo backends, and a minimal HTTP/1.1 client.

#![allow(dead_code)]

use gw_client::{Identity, TlsArgs, TlsFiles};
use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::echo::{EchoConfig, EchoServer};
use gw_testkit::procs::{bin, free_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(20);

/// How tests reach the store: its members, and the cluster's PKI (the admin's certificate for gwadm,
/// the CA to issue gateway nodes' certificates).
#[derive(Debug, Clone)]
pub struct Store {
    pub servers: String,
    pki: PathBuf,
}

pub fn reach(c: &Cluster) -> Store {
    Store {
        servers: c.servers(),
        pki: c.pki().dir().to_path_buf(),
    }
}

impl Store {
    fn admin(&self) -> Vec<String> {
        TlsArgs::of(&TlsFiles::in_dir(&self.pki, "admin")).to_args()
    }

    /// A gateway node's certificate for `class`.
    fn node_tls(&self, class: &str, name: &str) -> Vec<String> {
        let ca = gw_client::pki::Ca::load(&self.pki).unwrap();
        let identity = Identity::Node {
            class: class.into(),
            name: name.into(),
        };
        let files = ca
            .issue_to(&self.pki, &format!("node-{name}"), &identity, 30, &[])
            .unwrap();
        TlsArgs::of(&files).to_args()
    }
}

/// A gw-node process.
pub struct NodeProc {
    pub bind: String,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn start(store: &Store, bind: &str, class: &str, dir: &Path, name: &str) -> NodeProc {
        Self::start_with(store, bind, class, dir, name, &[])
    }

    /// A node with these flags besides the usual ones.
    pub fn start_with(
        store: &Store,
        bind: &str,
        class: &str,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> NodeProc {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data_dir = dir.join(format!("node-{name}"));
        let mut args = store.node_tls(class, name);
        args.extend([
            "--store".into(),
            store.servers.clone(),
            "--gateway-class".into(),
            class.into(),
            "--bind-address".into(),
            bind.into(),
            "--admin".into(),
            admin.to_string(),
            "--node-name".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut n = NodeProc {
            bind: bind.into(),
            admin,
            data_dir,
            log: dir.join(format!("node-{name}.log")),
            args,
            child: None,
        };
        n.spawn();
        n
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("gw-node").unwrap())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        gw_testkit::procs::die_with_me(&child);
        self.child = Some(child);
    }

    /// Sends a signal to the running node (SIGSTOP freezes it, SIGCONT thaws it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("the node runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        t.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-member store.
pub fn store() -> Cluster {
    Cluster::start(1, ClusterOptions::default()).unwrap()
}

pub fn gwadm(store: &Store, args: &[&str]) -> Output {
    Command::new(bin("gwadm").unwrap())
        .arg("--server")
        .arg(&store.servers)
        .args(store.admin())
        .args(args)
        .output()
        .unwrap()
}

/// Applies YAML text; panics with gwadm's message if it fails.
pub fn apply(store: &Store, dir: &Path, yaml: &str) -> String {
    let f = dir.join(format!("apply-{}.yaml", free_port()));
    std::fs::write(&f, yaml).unwrap();
    let o = gwadm(store, &["apply", "-f", f.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An echo backend in namespace `web`, serving HTTPS with `tls` (certificate and key PEM) if given.
pub async fn echo_tls(pod: &str, tls: Option<(String, String)>) -> EchoServer {
    gw_testkit::echo::start(EchoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pod: pod.into(),
        namespace: "web".into(),
        h2c_only: false,
        log: false,
        tls,
    })
    .await
    .unwrap()
}

pub async fn echo(pod: &str, ns: &str, h2c: bool) -> EchoServer {
    gw_testkit::echo::start(EchoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pod: pod.into(),
        namespace: ns.into(),
        h2c_only: h2c,
        log: false,
        tls: None,
    })
    .await
    .unwrap()
}

/// An echo backend in a process of its own (`gwadm echo-server`): killing it takes its connections
/// with it.
pub struct EchoProc {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl EchoProc {
    /// Serves as `pod` of namespace `web` on `addr` (e.g. again, where a killed one served).
    pub async fn start(pod: &str, addr: SocketAddr) -> EchoProc {
        let child = Command::new(bin("gwadm").unwrap())
            .args(["echo-server", "--listen", &addr.to_string(), "--name", pod])
            .args(["--namespace", "web"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        gw_testkit::procs::die_with_me(&child);
        eventually("the echo process listens", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        EchoProc {
            addr,
            child: Some(child),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EchoProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Service with one port (optionally with an appProtocol) and its EndpointSlice pointing at `addr`.
pub fn service(name: &str, ns: &str, addr: SocketAddr, app_protocol: Option<&str>) -> String {
    let app = app_protocol
        .map(|a| format!(", appProtocol: {a}"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080{app}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: ['{}']}}]\n",
        addr.port(),
        addr.ip()
    )
}

/// A self-signed certificate for `host`, as a kubernetes.io/tls Secret in namespace `web`; its DER and
/// PEM.
pub fn cert_secret(
    name: &str,
    host: &str,
) -> (String, rustls::pki_types::CertificateDer<'static>, String) {
    use base64::Engine;
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: web}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(ck.cert.pem()),
        b64(ck.signing_key.serialize_pem())
    );
    (yaml, ck.cert.der().clone(), ck.cert.pem())
}

pub const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gw}\nspec: {controllerName: gw.dev/gateway-node}\n";

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await??;
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> std::io::Result<Resp> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls until `check` passes, returning how long it took.
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until `check` gives a value, and returns it.
pub async fn eventually_value<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The pod name an echo backend reported for a request, or the status code if it was not a 200.
pub async fn who(addr: SocketAddr, host: &str, path: &str) -> String {
    match get(addr, host, path, &[]).await {
        Ok(r) if r.status == 200 => r.json()["pod"].as_str().unwrap_or("?").to_string(),
        Ok(r) => r.status.to_string(),
        Err(e) => format!("error: {e}"),
    }
}
