//! The world a conformance run happens in, standing in for a Kubernetes cluster: a fresh gw (one store
//! member, or a cluster of several for runs under faults, and one gateway node that gives each Gateway
//! its own loopback address), Deployments run as
//! echo "pods" (each on its own loopback IP, serving the ports the upstream echo server does: HTTP and
//! h2c on 3000, h2c only on 3001, and HTTPS on 8443 when the pod mounts a certificate; the gRPC echo
//! service on 3000 instead when the Deployment sets `GRPC_ECHO_SERVER`), EndpointSlices
//! kept in line with the Services that select pods (the job of Kubernetes' EndpointSlice controller),
//! manifests applied with the suite's rewrites, and the TLS Secrets the suite creates at setup.

use anyhow::Context;
use gw_client::{Client, object_ref};
use gw_model::ObjectKey;
use gw_proto as pb;
use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::echo::{EchoConfig, EchoServer};
use gw_testkit::grpc_echo::GrpcEchoConfig;
use gw_testkit::pki::Pki;
use gw_testkit::procs::{Children, bin, free_port};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Kinds the suite's manifests contain that belong to Kubernetes itself and are not sent to gw.
const CLUSTER_ONLY_KINDS: &[&str] = &[
    "Deployment",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "Pod",
];

/// Addresses the node gives Gateways (and, inside it, the usable static address of GatewayStaticAddresses).
pub const POOL: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(127, 20, 0, 1), Ipv4Addr::new(127, 20, 0, 250));
const USABLE: Ipv4Addr = Ipv4Addr::new(127, 20, 0, 250);
/// An address the node cannot serve.
const UNUSABLE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The mesh's name (its node's class) and the mesh node's child name. The suite's Services have no
/// clusterIP: the mesh node gives them addresses from its default service CIDR.
const MESH_NAME: &str = "gw-mesh";
const MESH_CHILD: &str = "gw-mesh-node";
/// The first pod address.
const POD_NET: u32 = u32::from_be_bytes([127, 31, 0, 1]);

/// An echo server port of a pod: its number, whether it takes HTTP/2 only, its certificate and key.
type HttpPort = (u16, bool, Option<(String, String)>);

/// A Deployment replica.
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// `namespace/deployment`
    pub owner: String,
    pub servers: Vec<EchoServer>,
}

/// A Service whose EndpointSlice the harness maintains.
struct SelectorService {
    selector: BTreeMap<String, String>,
    ports: Vec<Value>,
}

/// What applying one manifest file did, to be undone at cleanup.
#[derive(Default)]
pub struct Applied {
    pub refs: Vec<pb::ObjectRef>,
    pub deployments: Vec<String>,
    pub services: Vec<ObjectKey>,
}

pub struct Env {
    pub client: Client,
    pub class: String,
    pub controller: String,
    pub pods: Vec<Pod>,
    /// Values of the addresses of unsupported types that applied Gateways carry (GatewayStaticAddresses'
    /// "invalid address").
    pub invalid_addresses: Vec<String>,
    next_pod: u32,
    services: BTreeMap<ObjectKey, SelectorService>,
    children: Arc<Mutex<Children>>,
    /// The store members, when the run has several (`--members`).
    pub cluster: Option<Arc<tokio::sync::Mutex<Cluster>>>,
    /// How to start the gateway node again (`NodeRestart`).
    pub node: NodeRestart,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Restarts the run's gateway node: SIGKILL, then the same command again.
#[derive(Clone)]
pub struct NodeRestart {
    children: Arc<Mutex<Children>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl NodeRestart {
    fn spawn(&self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new(bin("gw-node")?);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn("gw-node", &self.log, &mut cmd)?;
        Ok(())
    }

    /// Kills the node and starts it again; whether it was running and started again.
    pub fn restart(&self) -> anyhow::Result<bool> {
        let killed = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill("gw-node");
        self.spawn()?;
        Ok(killed)
    }
}

impl Env {
    /// Starts a fresh gw (`members` store members and a gateway node) under `dir` (a temporary
    /// directory if none).
    pub async fn start(
        dir: Option<PathBuf>,
        class: &str,
        node_env: &[(String, String)],
        members: u64,
        mesh: bool,
    ) -> anyhow::Result<Env> {
        let (dir, tmp) = match dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("gw-conformance-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let children = Arc::new(Mutex::new(Children::default()));
        // One member as a child of the run, or a cluster whose members faults can kill and partition
        // (each on its own loopback address).
        let node_identity = gw_client::Identity::Node {
            class: class.into(),
            name: "conformance".into(),
        };
        let mesh_identity = gw_client::Identity::Node {
            class: MESH_NAME.into(),
            name: "conformance-mesh".into(),
        };
        let (store, (node_tls, mesh_tls), admin, cluster) = if members > 1 {
            let c = Cluster::start(
                members,
                ClusterOptions {
                    dir: Some(dir.join("store")),
                    ip_prefix: Some(format!("127.78.{}.", std::process::id() % 250)),
                    ..ClusterOptions::default()
                },
            )?;
            c.wait_for_leader(Duration::from_secs(30)).await?;
            let node_tls = c.pki().issue("node", &node_identity)?;
            let mesh_tls = c.pki().issue("mesh", &mesh_identity)?;
            let admin = c.pki().admin_security();
            let store = c.servers();
            (
                store,
                (node_tls, mesh_tls),
                admin,
                Some(Arc::new(tokio::sync::Mutex::new(c))),
            )
        } else {
            let store = format!("127.0.0.1:{}", free_port());
            let pki = Pki::create(&dir.join("pki"))?;
            children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spawn_store(&store, None, &dir, &pki)?;
            let node_tls = pki.issue("node", &node_identity)?;
            let mesh_tls = pki.issue("mesh", &mesh_identity)?;
            (store, (node_tls, mesh_tls), pki.admin_security(), None)
        };
        let mut args = gw_client::TlsArgs::of(&node_tls).to_args();
        args.extend([
            "--store".into(),
            store.clone(),
            "--gateway-class".into(),
            class.into(),
            "--address-pool".into(),
            format!("{}-{}", POOL.0, POOL.1),
            "--data-dir".into(),
            dir.join("node").display().to_string(),
        ]);
        let node = NodeRestart {
            children: children.clone(),
            args,
            env: node_env.to_vec(),
            log: dir.join("node.log"),
        };
        node.spawn()?;
        if mesh {
            let mut cmd = std::process::Command::new(bin("gw-node")?);
            cmd.args(gw_client::TlsArgs::of(&mesh_tls).to_args()).args([
                "--store".into(),
                store.clone(),
                "--gateway-class".into(),
                MESH_NAME.to_string(),
                "--mesh".into(),
                "--data-dir".into(),
                dir.join("mesh").display().to_string(),
            ]);
            children.lock().unwrap_or_else(|e| e.into_inner()).spawn(
                MESH_CHILD,
                &dir.join("mesh.log"),
                &mut cmd,
            )?;
        }
        let servers: Vec<String> = store.split(',').map(str::to_string).collect();
        let client = Client::new(
            &servers,
            Duration::from_secs(30),
            &gw_client::Dialer::new(admin),
        )?;
        Ok(Env {
            client,
            class: class.into(),
            controller: "gw.dev/gateway-node".into(),
            pods: vec![],
            invalid_addresses: vec![],
            next_pod: 0,
            services: BTreeMap::new(),
            children,
            cluster,
            node,
            dir,
            _tmp: tmp,
        })
    }

    /// Fails once a process of gw has exited (its log says why).
    pub fn check_alive(&self) -> Result<(), String> {
        match self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exited()
        {
            Some(what) => {
                let log = self.dir.join(if what.starts_with(MESH_CHILD) {
                    "mesh.log"
                } else if what.starts_with("gw-node") {
                    "node.log"
                } else {
                    "store.log"
                });
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!("{what}; the end of its log:\n{}", tail.join("\n")))
            }
            None => Ok(()),
        }
    }

    pub fn usable_address() -> IpAddr {
        IpAddr::V4(USABLE)
    }

    pub fn unusable_address() -> IpAddr {
        IpAddr::V4(UNUSABLE)
    }

    pub async fn apply_docs(
        &self,
        docs: Vec<Value>,
        source: &str,
    ) -> gw_client::Result<pb::WriteResponse> {
        let documents = docs
            .iter()
            .enumerate()
            .map(|(i, d)| pb::Document {
                json: d.to_string(),
                source: source.into(),
                index: i as u32 + 1,
            })
            .collect();
        self.client.apply(documents, false).await
    }

    pub async fn delete(&self, refs: Vec<pb::ObjectRef>) -> gw_client::Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let req = pb::DeleteRequest {
            refs,
            dry_run: false,
            ignore_not_found: true,
            expected_resource_versions: vec![],
        };
        self.client.delete(req).await.map(|_| ())
    }

    /// The suite's GatewayClass.
    pub async fn create_gateway_class(&self) -> gw_client::Result<()> {
        let gc = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": self.class},
                        "spec": {"controllerName": self.controller, "description": "gw conformance run"}});
        self.apply_docs(vec![gc], "conformance setup")
            .await
            .map(|_| ())
    }

    /// The suite's Applier rewrites (conformance/utils/kubernetes/apply.go); remembers the addresses of
    /// unsupported types a Gateway asks for.
    fn rewrite(&mut self, doc: &mut Value) {
        match doc["kind"].as_str() {
            Some("GatewayClass") => doc["spec"]["controllerName"] = json!(self.controller),
            Some("Gateway") => {
                if doc["spec"]["gatewayClassName"] == "{GATEWAY_CLASS_NAME}" {
                    doc["spec"]["gatewayClassName"] = json!(self.class);
                }
                if let Some(addrs) = doc
                    .pointer_mut("/spec/addresses")
                    .and_then(Value::as_array_mut)
                {
                    for a in addrs.iter_mut() {
                        let supported = matches!(
                            a["type"].as_str().unwrap_or("IPAddress"),
                            "IPAddress" | "Hostname" | "NamedAddress"
                        );
                        if let (false, Some(v)) = (supported, a["value"].as_str()) {
                            self.invalid_addresses.push(v.to_string());
                        }
                        match a["value"].as_str() {
                            Some("PLACEHOLDER_USABLE_ADDRS") => {
                                *a = json!({"type": "IPAddress", "value": Env::usable_address().to_string()})
                            }
                            Some("PLACEHOLDER_UNUSABLE_ADDRS") => {
                                *a = json!({"type": "IPAddress", "value": Env::unusable_address().to_string()})
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Applies a manifest file: Deployments become pods, other cluster-only kinds are left out, the rest
    /// goes to gw in one transaction; then EndpointSlices follow the pods.
    pub async fn apply_file(&mut self, path: &Path) -> Result<Applied, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let docs = gw_model::parse_documents(&path.display().to_string(), &text)
            .map_err(|e| e.to_string())?;
        let mut applied = Applied::default();
        let mut to_apply = Vec::new();
        for d in docs {
            let mut v = d.value;
            let kind = v["kind"].as_str().unwrap_or("").to_string();
            if kind == "Deployment" {
                applied.deployments.push(self.start_deployment(&v).await?);
                continue;
            }
            if CLUSTER_ONLY_KINDS.contains(&kind.as_str()) {
                continue;
            }
            self.rewrite(&mut v);
            if kind == "Service"
                && let (Ok(key), Some(sel)) = (
                    ObjectKey::of_document(&v),
                    v["spec"]["selector"].as_object(),
                )
            {
                let selector = sel
                    .iter()
                    .map(|(k, x)| (k.clone(), x.as_str().unwrap_or("").to_string()))
                    .collect();
                let ports = v["spec"]["ports"].as_array().cloned().unwrap_or_default();
                self.services
                    .insert(key.clone(), SelectorService { selector, ports });
                applied.services.push(key);
            }
            to_apply.push(v);
        }
        if !to_apply.is_empty() {
            let resp = self
                .apply_docs(to_apply, &path.display().to_string())
                .await
                .map_err(|e| format!("applying {}: {e}", path.display()))?;
            applied.refs = resp.results.into_iter().filter_map(|r| r.target).collect();
        }
        self.sync_slices().await?;
        Ok(applied)
    }

    /// Undoes an `Applied`: deletes its objects and generated slices, stops its pods.
    pub async fn cleanup(&mut self, applied: Applied) -> Result<(), String> {
        let mut refs: Vec<pb::ObjectRef> = applied.refs.into_iter().rev().collect();
        for s in &applied.services {
            self.services.remove(s);
            refs.push(object_ref(&ObjectKey::new(
                "discovery.k8s.io",
                "EndpointSlice",
                &s.namespace,
                &format!("{}-gw-pods", s.name),
            )));
        }
        refs.extend(
            self.pods
                .iter()
                .filter(|p| applied.deployments.contains(&p.owner))
                .map(|p| object_ref(&ObjectKey::new("", "Pod", &p.namespace, &p.name))),
        );
        self.delete(refs)
            .await
            .map_err(|e| format!("cleanup: {e}"))?;
        self.pods
            .retain(|p| !applied.deployments.contains(&p.owner));
        self.sync_slices().await
    }

    async fn start_deployment(&mut self, d: &Value) -> Result<String, String> {
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let owner = format!("{ns}/{name}");
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        let labels: BTreeMap<String, String> = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        // With TLS_SERVER_CERT and TLS_SERVER_PRIVKEY, the upstream echo server also serves HTTPS on
        // 8443, with the certificate its pod mounts from a Secret.
        let container_env = |var: &str| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == var)
                .and_then(|e| e["value"].as_str())
                .map(str::to_string)
        };
        let tls = match (
            container_env("TLS_SERVER_CERT"),
            container_env("TLS_SERVER_PRIVKEY"),
        ) {
            (Some(crt), Some(key)) => Some((
                self.mounted_file(&ns, d, &crt).await?,
                self.mounted_file(&ns, d, &key).await?,
            )),
            _ => None,
        };
        let grpc = container_env("GRPC_ECHO_SERVER").is_some_and(|v| !v.is_empty());
        // The suite's mesh pods run another echo server, told its HTTP ports by `--port=N` arguments
        // (those also named by `--tls=N` serve TLS, which the mesh tests do not use).
        let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let flag_ports = |flag: &str| -> Vec<u16> {
            args.iter()
                .filter_map(|a| a.strip_prefix(flag)?.parse().ok())
                .collect()
        };
        let tls_ports = flag_ports("--tls=");
        let plain_ports: Vec<u16> = flag_ports("--port=")
            .into_iter()
            .filter(|p| !tls_ports.contains(p))
            .collect();
        for i in 0..replicas {
            let ip = Ipv4Addr::from(POD_NET + self.next_pod);
            self.next_pod += 1;
            let pod = format!("{name}-{i}");
            let mut servers = Vec::new();
            // With GRPC_ECHO_SERVER, the upstream echo server is the gRPC echo service on 3000;
            // a mesh pod serves HTTP on its `--port`s; otherwise HTTP (and h2c) on 3000, h2c only on
            // 3001, and HTTPS on 8443 with a certificate.
            let https = tls.clone().map(|pair| (8443u16, false, Some(pair)));
            let http_ports: Vec<HttpPort> = if grpc {
                vec![]
            } else if !plain_ports.is_empty() {
                plain_ports.iter().map(|p| (*p, false, None)).collect()
            } else {
                [(3000u16, false, None), (3001, true, None)]
                    .into_iter()
                    .chain(https)
                    .collect()
            };
            if grpc {
                let cfg = GrpcEchoConfig {
                    listen: (ip, 3000).into(),
                    pod: pod.clone(),
                    namespace: ns.clone(),
                };
                servers.push(
                    gw_testkit::grpc_echo::start(cfg)
                        .await
                        .map_err(|e| format!("starting gRPC pod {ns}/{pod} on {ip}:3000: {e}"))?,
                );
            }
            for (port, h2c_only, tls) in http_ports {
                let cfg = EchoConfig {
                    listen: (ip, port).into(),
                    pod: pod.clone(),
                    namespace: ns.clone(),
                    h2c_only,
                    log: false,
                    tls,
                };
                servers.push(
                    gw_testkit::echo::start(cfg)
                        .await
                        .map_err(|e| format!("starting pod {ns}/{pod} on {ip}:{port}: {e}"))?,
                );
            }
            self.pods.push(Pod {
                name: pod,
                namespace: ns.clone(),
                labels: labels.clone(),
                ip,
                owner: owner.clone(),
                servers,
            });
        }
        self.record_pods(&owner).await?;
        Ok(owner)
    }

    /// Writes a Deployment's pods to the store, with their IPs in their status, as a kubelet reports
    /// them (the mesh tells a caller's namespace by it): one apply and one status update for all.
    async fn record_pods(&self, owner: &str) -> Result<(), String> {
        let pods: Vec<&Pod> = self.pods.iter().filter(|p| p.owner == owner).collect();
        let docs = pods
            .iter()
            .map(|p| {
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                       "spec": {"containers": [{"name": "echo", "image": "gw-conformance-echo"}]}})
            })
            .collect();
        let failed = |e: gw_client::Error| format!("recording the pods of {owner}: {e}");
        self.apply_docs(docs, "conformance pods")
            .await
            .map_err(failed)?;
        let updates = pods
            .iter()
            .map(|p| {
                let key = ObjectKey::new("", "Pod", &p.namespace, &p.name);
                let status = json!({"phase": "Running", "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}]});
                pb::StatusUpdate {
                    target: Some(object_ref(&key)),
                    status_json: status.to_string(),
                    ..Default::default()
                }
            })
            .collect();
        self.client.update_status(updates).await.map_err(failed)?;
        Ok(())
    }

    /// The pods of a Deployment-like selector in a namespace.
    pub fn pods_matching(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == namespace && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// Writes, for every Service with a selector, the EndpointSlice of the pods it selects.
    async fn sync_slices(&self) -> Result<(), String> {
        let mut docs = Vec::new();
        for (key, svc) in &self.services {
            let pods = self.pods_matching(&key.namespace, &svc.selector);
            let ports: Vec<Value> = svc
                .ports
                .iter()
                .map(|p| {
                    let target = p["targetPort"].as_i64().or(p["port"].as_i64()).unwrap_or(0);
                    let mut port = json!({"port": target, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = p["name"].as_str() {
                        port["name"] = json!(n);
                    }
                    if let Some(a) = p["appProtocol"].as_str() {
                        port["appProtocol"] = json!(a);
                    }
                    port
                })
                .collect();
            let endpoints: Vec<Value> = pods
                .iter()
                .map(|p| json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                                "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace}}))
                .collect();
            docs.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{}-gw-pods", key.name), "namespace": key.namespace,
                             "labels": {"kubernetes.io/service-name": key.name}},
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }));
        }
        if docs.is_empty() {
            return Ok(());
        }
        self.apply_docs(docs, "endpointslice controller")
            .await
            .map(|_| ())
            .map_err(|e| format!("EndpointSlices: {e}"))
    }

    /// One data field of a Secret, decoded.
    pub async fn secret_field(
        &self,
        namespace: &str,
        name: &str,
        field: &str,
    ) -> Result<Vec<u8>, String> {
        let key = ObjectKey::new("", "Secret", namespace, name);
        // The harness is the suite's admin: it asks for the values, which are redacted otherwise.
        let got = self
            .client
            .get(pb::GetRequest {
                target: Some(object_ref(&key)),
                options: Some(pb::ReadOptions {
                    show_secret_values: true,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| format!("reading {key}: {e}"))?;
        let s: Value = serde_json::from_str(&got.object_json).map_err(|e| e.to_string())?;
        let b = s["data"][field]
            .as_str()
            .ok_or_else(|| format!("{key} has no {field}"))?;
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
            .map_err(|e| format!("{key} {field}: {e}"))
    }

    /// The `tls.crt` and `tls.key` of a TLS Secret.
    pub async fn secret_pair(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        Ok((
            self.secret_field(namespace, name, "tls.crt").await?,
            self.secret_field(namespace, name, "tls.key").await?,
        ))
    }

    /// The contents of a file a Deployment's pod template mounts from a Secret volume (`path` as the
    /// container sees it), read from the store as the kubelet would.
    async fn mounted_file(&self, ns: &str, d: &Value, path: &str) -> Result<String, String> {
        let spec = &d["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let (mount, file) = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|m| {
                let dir = m["mountPath"].as_str()?;
                let file = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m["name"].as_str()?, file))
            })
            .ok_or_else(|| format!("no volume of the pod template mounts {path}"))?;
        let secret = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount)
            .map(|v| &v["secret"])
            .filter(|s| s.is_object())
            .ok_or_else(|| format!("volume {mount} (mounting {path}) is not a Secret volume"))?;
        let name = secret["secretName"].as_str().unwrap_or("");
        // An `items` entry maps a key to the file's name; without one, the file is named after its key.
        let key = secret["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["path"] == file)
            .and_then(|i| i["key"].as_str())
            .unwrap_or(file);
        let bytes = self.secret_field(ns, name, key).await?;
        String::from_utf8(bytes).map_err(|e| format!("Secret {ns}/{name} {key}: {e}"))
    }

    /// The TLS Secrets the suite generates at setup (`base/programmatic-secrets.json`).
    pub async fn create_programmatic_secrets(&self, spec: &Value) -> Result<(), String> {
        let mut docs = Vec::new();
        for s in spec["secrets"].as_array().into_iter().flatten() {
            let hosts: Vec<String> = s["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect();
            let (crt, key) = self_signed(&hosts)?;
            let b64 =
                |x: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, x);
            docs.push(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": s["name"], "namespace": s["namespace"]},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(&crt), "tls.key": b64(&key)},
            }));
        }
        self.apply_docs(docs, "programmatic secrets")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A self-signed server certificate for `hosts` (IP addresses as IP SANs, the rest as DNS SANs), as the
/// suite's `MustCreateSelfSignedCertSecret` makes them (with an ECDSA P-256 key instead of RSA 2048:
/// the key type is not what any test checks).
pub fn self_signed(hosts: &[String]) -> Result<(String, String), String> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "default");
    dn.push(rcgen::DnType::OrganizationName, "Acme Co");
    params.distinguished_name = dn;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    for h in hosts {
        let san = match h.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                h.clone()
                    .try_into()
                    .map_err(|e| format!("host {h:?}: {e}"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}
