//! The kube-sync workload: two Kubernetes clusters (gw members serving the Kubernetes API, each with a
//! CA of its own), one `gw-kube-sync` agent for each, feeding the store under test. Clients create,
//! change and delete Services from one pool of names through both clusters' APIs (so that the clusters
//! contend for names), while the store's nemeses run and the workload's own churn kills an agent every
//! `--interval` (restarted after `--hold`). After healing, the checker waits for the store to converge
//! and holds it to the union of both clusters under the conflict rule: a name is in the store if and
//! only if some cluster has it; carried from a cluster that has it (the first origin keeps a contested
//! name); with that cluster's content.

use crate::affinity::Proc;
use crate::checker::{Validity, Verdict};
use crate::history::{Kind, NEMESIS, Recorder};
use crate::nemesis::Rng;
use gw_client::{Client, Identity, TlsArgs};
use gw_model::kinds::ORIGIN_LABEL;
use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::procs::bin;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "ks";
/// Service names both clusters use.
const NAMES: u64 = 8;
const CLUSTERS: [&str; 2] = ["a", "b"];
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the store gets to converge after healing.
const CONVERGENCE: Duration = Duration::from_secs(60);

/// The two clusters and their agents.
pub struct Clusters {
    clusters: Vec<(&'static str, Cluster, Api<Service>)>,
    agents: Mutex<Vec<Proc>>,
    /// Operations the clients completed (acknowledged by their cluster).
    pub ops: AtomicU64,
    rec: Recorder,
}

async fn kube_client(c: &Cluster) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(c.kubeconfig(1)?)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A cluster's Services: name → port.
async fn services(api: &Api<Service>) -> Result<BTreeMap<String, i64>, kube::Error> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|s| {
            let port = s
                .spec
                .as_ref()
                .and_then(|sp| sp.ports.as_ref())
                .and_then(|p| p.first())
                .map_or(0, |p| i64::from(p.port));
            (s.metadata.name.clone().unwrap_or_default(), port)
        })
        .collect())
}

impl Clusters {
    /// Starts both clusters and their agents (certificates from `store`'s CA), under `dir`.
    /// `agent_env`: the agents' environment (the null control's switch).
    pub async fn start(
        store: &Cluster,
        dir: &Path,
        agent_env: Vec<(String, String)>,
        rec: Recorder,
    ) -> anyhow::Result<Clusters> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut clusters = Vec::new();
        let mut agents = Vec::new();
        for name in CLUSTERS {
            let c = Cluster::start(
                1,
                ClusterOptions {
                    dir: Some(dir.join(format!("cluster-{name}"))),
                    kube_api: true,
                    ..Default::default()
                },
            )?;
            c.wait_for_leader(Duration::from_secs(30)).await?;
            let client = kube_client(&c).await?;
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await?;
            let tls = store.pki().issue(
                &format!("kube-sync-{name}"),
                &Identity::KubeSync {
                    cluster: name.into(),
                },
            )?;
            let mut args = vec![
                "--cluster".to_string(),
                name.to_string(),
                "--store".to_string(),
                store.servers(),
                "--kubeconfig".to_string(),
                c.kubeconfig(1)?.display().to_string(),
            ];
            args.extend(TlsArgs::of(&tls).to_args());
            let mut agent = Proc::new(
                bin("gw-kube-sync")?,
                args,
                agent_env.clone(),
                dir.join(format!("agent-{name}.log")),
            );
            agent.spawn()?;
            agents.push(agent);
            clusters.push((name, c, Api::namespaced(client, NAMESPACE)));
        }
        Ok(Clusters {
            clusters,
            agents: Mutex::new(agents),
            ops: AtomicU64::new(0),
            rec,
        })
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One client: creates or changes (a server-side apply of a new port) and deletes Services of the
    /// pool in a random cluster, until `until`.
    pub async fn client(&self, seed: u64, until: Instant) {
        let mut rng = Rng::new(seed);
        while Instant::now() < until {
            let (_, _, api) = &self.clusters[rng.below(CLUSTERS.len() as u64) as usize];
            let name = format!("svc-{}", rng.below(NAMES));
            let done = if rng.below(100) < 65 {
                let port = 1000 + rng.below(1000);
                let svc = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"ports": [{"port": port}]}});
                let params = PatchParams::apply("jepsen").force();
                tokio::time::timeout(OP_TIMEOUT, api.patch(&name, &params, &Patch::Apply(&svc)))
                    .await
                    .is_ok_and(|r| r.is_ok())
            } else {
                tokio::time::timeout(OP_TIMEOUT, api.delete(&name, &DeleteParams::default()))
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            if done {
                self.ops.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills a random agent every `interval`, restarting it after `hold`.
    pub async fn churn(&self, schedule: (Duration, Duration), seed: u64, until: Instant) {
        let (interval, hold) = schedule;
        let mut rng = Rng::new(seed);
        while Instant::now() + interval + hold < until {
            tokio::time::sleep(interval).await;
            let i = rng.below(CLUSTERS.len() as u64) as usize;
            let target = format!("agent-{}", CLUSTERS[i]);
            self.rec.record(Recorder::event(
                NEMESIS,
                Kind::Invoke,
                "agent-kill",
                None,
                json!([target]),
            ));
            self.lock_agents()[i].kill();
            tokio::time::sleep(hold).await;
            let healed = self.lock_agents()[i].spawn().is_ok();
            self.rec.record(Recorder::event(
                NEMESIS,
                Kind::Ok,
                "agent-kill",
                None,
                json!({"nodes": [target], "took_effect": true, "healed": healed}),
            ));
        }
    }

    /// Restarts any agent not running; then, cluster by cluster, deletes Services while its agent is
    /// down (half of the pool) and starts the agent again, so that every run ends with deletions the
    /// agents learn of only from their first full list.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for (i, (name, _, api)) in self.clusters.iter().enumerate() {
            self.lock_agents()[i].kill();
            let mut deleted = Vec::new();
            for n in (0..NAMES).step_by(2).map(|k| format!("svc-{k}")) {
                if api.delete(&n, &DeleteParams::default()).await.is_ok() {
                    deleted.push(n);
                }
            }
            self.rec.record(Recorder::event(
                NEMESIS,
                Kind::Ok,
                "deleted-while-agent-down",
                None,
                json!({"cluster": name, "services": deleted}),
            ));
            self.lock_agents()[i].spawn()?;
        }
        Ok(())
    }

    /// What is wrong with the store now, against the clusters' states (empty: nothing).
    async fn anomalies(&self, store: &Client) -> Result<Vec<Value>, String> {
        let mut states = BTreeMap::new();
        for (name, _, api) in &self.clusters {
            states.insert(*name, services(api).await.map_err(|e| e.to_string())?);
        }
        let stored: BTreeMap<String, (String, i64)> = store
            .list_objects("", "Service", NAMESPACE)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    (
                        o["metadata"]["labels"][ORIGIN_LABEL]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        o["spec"]["ports"][0]["port"].as_i64().unwrap_or(0),
                    ),
                )
            })
            .collect();
        let mut names: Vec<&String> = stored.keys().collect();
        names.extend(states.values().flat_map(|s| s.keys()));
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for n in names {
            let holders: Vec<&str> = CLUSTERS
                .iter()
                .copied()
                .filter(|c| states[c].contains_key(n))
                .collect();
            match stored.get(n) {
                None if !holders.is_empty() => {
                    out.push(json!({"service": n, "missing": true, "in_clusters": holders}));
                }
                Some((origin, port)) => match states.get(origin.as_str()).and_then(|s| s.get(n)) {
                    None => out.push(
                        json!({"service": n, "stale": true, "origin": origin, "in_clusters": holders}),
                    ),
                    Some(p) if p != port => out.push(
                        json!({"service": n, "origin": origin, "store_port": port, "cluster_port": p}),
                    ),
                    Some(_) => {}
                },
                None => {}
            }
        }
        Ok(out)
    }

    /// Waits for convergence (up to a minute) and judges the store against the clusters.
    pub async fn check(&self, store: &Client) -> Verdict {
        let deadline = Instant::now() + CONVERGENCE;
        let started = Instant::now();
        let mut last = Err("never read".to_string());
        while Instant::now() < deadline {
            last = self.anomalies(store).await;
            if matches!(&last, Ok(a) if a.is_empty()) {
                return Verdict {
                    valid: Validity::True,
                    ops: self.ops.load(Ordering::Relaxed) as usize,
                    details: json!({"converged_after_ms": started.elapsed().as_millis() as u64}),
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match last {
            Ok(anomalies) => Verdict {
                valid: Validity::False,
                ops: self.ops.load(Ordering::Relaxed) as usize,
                details: json!({"why": "the store did not converge to the clusters' union within 60 s", "anomalies": anomalies}),
            },
            Err(e) => Verdict {
                valid: Validity::Unknown,
                ops: self.ops.load(Ordering::Relaxed) as usize,
                details: json!({"why": format!("the states could not be read: {e}")}),
            },
        }
    }
}
