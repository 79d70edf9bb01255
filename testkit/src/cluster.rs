//! Control of a cluster of real `gw-api-server` processes on loopback: each member has its own API and
//! Raft ports, data directory, log file and member certificate (mutual TLS everywhere, from a CA the
//! cluster makes in its directory); members can be killed (SIGKILL), stopped (SIGTERM), paused
//! (SIGSTOP/SIGCONT) and restarted from their data. Every process is killed when the `Cluster` is
//! dropped.

use crate::pki::Pki;
use crate::procs::{bin, free_port};
use crate::wan::{Ingress, Wan};
use anyhow::{Context, bail};
use gw_client::{Dialer, Identity, TlsArgs};
use gw_proto as pb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One member process.
pub struct MemberProc {
    pub id: u64,
    /// Its client API.
    pub addr: String,
    /// Where clients reach its client API: `addr`, or its ingress in a WAN.
    pub reach: String,
    /// Its Raft transport.
    pub peer_addr: String,
    /// Its Kubernetes API, when the cluster serves it.
    pub kube_addr: Option<String>,
    /// Its Prometheus endpoint, when the cluster has them.
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Flags given at every start of this member.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl MemberProc {
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

/// A cluster of store members.
pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub members: Vec<MemberProc>,
    pki: Pki,
    /// The WAN's ingress proxies (API and Raft transport of every member), when there is one.
    ingresses: Vec<Ingress>,
    /// The WAN and the members' address prefix, when there is one.
    wan: Option<(WanLayout, String)>,
}

/// Options for starting a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra flags for every member (e.g. `--snapshot-logs 20`).
    pub extra_args: Vec<String>,
    /// Where to keep data and logs; a temporary directory (removed on drop) when `None`.
    pub dir: Option<PathBuf>,
    /// Give member N the address `<prefix>N` (e.g. "127.77.0."), so that faults can tell members apart
    /// by IP; `None`: every member on 127.0.0.1.
    pub ip_prefix: Option<String>,
    /// Environment of every member (the null controls' hidden switches).
    pub env: Vec<(String, String)>,
    /// Serve the Kubernetes API on every member (`--kube-listen`, see `Cluster::kubeconfig`).
    pub kube_api: bool,
    /// Serve Prometheus metrics on every member (`--metrics`, see `Cluster::scrape`).
    pub metrics: bool,
    /// Put member N in region `regions[N-1]` of a simulated WAN: members, and clients placed in
    /// the WAN, reach it through ingress proxies that delay traffic by the region matrix (needs
    /// `ip_prefix`, and a tokio runtime); heartbeats and elections are then sized for round trips of
    /// hundreds of milliseconds (`WAN_TIMING`).
    pub wan: Option<WanLayout>,
}

/// Raft timing of members over a WAN: the heartbeat is also openraft's AppendEntries timeout, which
/// must outlast the longest round trip and the follower's sync.
const WAN_TIMING: [&str; 4] = ["--heartbeat-ms", "600", "--election-timeout-ms", "3000"];

/// Members spread over the regions of a WAN.
#[derive(Clone)]
pub struct WanLayout {
    pub wan: Wan,
    pub regions: Vec<String>,
}

impl ClusterOptions {
    /// Member N at `<ip_prefix>N` in `regions[N-1]` of `wan`.
    pub fn in_regions(ip_prefix: String, wan: &Wan, regions: &[&str]) -> ClusterOptions {
        ClusterOptions {
            ip_prefix: Some(ip_prefix),
            wan: Some(WanLayout {
                wan: wan.clone(),
                regions: regions.iter().map(|r| r.to_string()).collect(),
            }),
            ..Default::default()
        }
    }
}

impl WanLayout {
    /// Places a member at `host` in `region`, its API and Raft transport (`targets`) behind ingresses
    /// of that region (kept in `ingresses`): the addresses to advertise.
    fn place_member(
        &self,
        host: &str,
        region: &str,
        targets: (&str, &str),
        ingresses: &mut Vec<Ingress>,
    ) -> anyhow::Result<(String, String)> {
        self.wan.place(host.parse()?, region);
        let mut through = |target: &str| -> anyhow::Result<String> {
            let ingress = self
                .wan
                .ingress("127.0.0.1:0".parse()?, region, target.parse()?)?;
            let addr = ingress.addr.to_string();
            ingresses.push(ingress);
            Ok(addr)
        };
        Ok((through(targets.0)?, through(targets.1)?))
    }
}

impl std::fmt::Debug for WanLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WanLayout({:?})", self.regions)
    }
}

impl Cluster {
    /// Starts `n` initial members with the same `--peers` and waits for a leader.
    pub fn start(n: u64, opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let (dir, tmp) = match opts.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("gw-cluster-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let host = |id: u64| match &opts.ip_prefix {
            Some(p) => format!("{p}{id}"),
            None => "127.0.0.1".to_string(),
        };
        let addrs: Vec<(String, String)> = (1..=n)
            .map(|id| {
                (
                    format!("{}:{}", host(id), free_port()),
                    format!("{}:{}", host(id), free_port()),
                )
            })
            .collect();
        // In a WAN, every member is reached through ingresses in its region: they are what --peers
        // advertises.
        let mut ingresses = Vec::new();
        let mut advertised = addrs.clone();
        if let Some(layout) = &opts.wan {
            if opts.ip_prefix.is_none() || layout.regions.len() != n as usize {
                bail!("a WAN needs ip_prefix and one region per member");
            }
            for (i, (api, peer)) in addrs.iter().enumerate() {
                advertised[i] = layout.place_member(
                    &host(i as u64 + 1),
                    &layout.regions[i],
                    (api, peer),
                    &mut ingresses,
                )?;
            }
        }
        let peers = advertised
            .iter()
            .enumerate()
            .map(|(i, (a, p))| match &opts.wan {
                Some(l) => format!("{}={a}/{p}@{}", i + 1, l.regions[i]),
                None => format!("{}={a}/{p}", i + 1),
            })
            .collect::<Vec<_>>()
            .join(",");
        // A fresh CA for every start: material left by an earlier run in this directory goes.
        let _ = std::fs::remove_dir_all(dir.join("pki"));
        let pki = Pki::create(&dir.join("pki"))?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            _tmp: tmp,
            members: vec![],
            pki,
            ingresses,
            wan: opts.wan.clone().zip(opts.ip_prefix.clone()),
        };
        for (i, (addr, peer_addr)) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let region = match &opts.wan {
                Some(l) => l.regions[i].clone(),
                None => format!("region-{id}"),
            };
            let mut args = vec![
                "--peers".to_string(),
                peers.clone(),
                "--region".into(),
                region,
            ];
            let kube_addr = opts
                .kube_api
                .then(|| format!("{}:{}", host(id), free_port()));
            if let Some(k) = &kube_addr {
                args.extend(["--kube-listen".to_string(), k.clone()]);
            }
            let metrics_addr = opts
                .metrics
                .then(|| format!("{}:{}", host(id), free_port()));
            if let Some(m) = &metrics_addr {
                args.extend(["--metrics".to_string(), m.clone()]);
            }
            if opts.wan.is_some() {
                args.extend(WAN_TIMING.map(String::from));
            }
            args.extend(opts.extra_args.iter().cloned());
            cluster.add_member(id, addr.clone(), peer_addr.clone(), args, opts.env.clone())?;
            cluster.member_mut(id).reach = advertised[i].0.clone();
            cluster.member_mut(id).kube_addr = kube_addr;
            cluster.member_mut(id).metrics_addr = metrics_addr;
        }
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Records a member (its certificate issued), not started yet.
    fn add_member(
        &mut self,
        id: u64,
        addr: String,
        peer_addr: String,
        mut args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let tls = self
            .pki
            .issue_for(&format!("member-{id}"), &Identity::Member(id), &[host])?;
        args.extend(TlsArgs::of(&tls).to_args());
        args.extend(["--peer-listen".to_string(), peer_addr.clone()]);
        self.members.push(MemberProc {
            id,
            reach: addr.clone(),
            addr,
            peer_addr,
            kube_addr: None,
            metrics_addr: None,
            data_dir: self.dir.join(format!("member-{id}")),
            log: self.dir.join(format!("member-{id}.log")),
            args,
            env,
            child: None,
        });
        Ok(())
    }

    /// A member's `/metrics` (the cluster must have been started with `metrics`).
    pub async fn scrape(&self, id: u64) -> anyhow::Result<String> {
        let addr = self
            .member(id)
            .metrics_addr
            .as_deref()
            .context("the cluster was started without metrics")?;
        crate::procs::scrape(addr).await
    }

    /// The cluster's PKI: its CA, the admin's certificate, and more on demand (gateway nodes).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// `n` members on loopback serving the Kubernetes API too (`extra_args` for every member), with a
    /// leader elected: for tests of Kubernetes clients (`kubeconfig`, `kube_addr`).
    pub async fn start_kube(n: u64, extra_args: &[&str]) -> anyhow::Result<Cluster> {
        let c = Cluster::start(
            n,
            ClusterOptions {
                kube_api: true,
                extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        )?;
        c.wait_for_leader(Duration::from_secs(20)).await?;
        Ok(c)
    }

    /// A member's Kubernetes API (`HOST:PORT`; the cluster must be started with `kube_api`).
    pub fn kube_addr(&self, id: u64) -> &str {
        self.member(id)
            .kube_addr
            .as_deref()
            .expect("a cluster started with kube_api")
    }

    /// A kubeconfig file for member `id`'s Kubernetes API, as the admin.
    pub fn kubeconfig(&self, id: u64) -> anyhow::Result<PathBuf> {
        let kc = gw_client::kubeconfig::kubeconfig(self.kube_addr(id), &self.pki.admin(), "gw")
            .map_err(anyhow::Error::msg)?;
        let path = self.dir.join(format!("kubeconfig-{id}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&kc)?)?;
        Ok(path)
    }

    pub fn member(&self, id: u64) -> &MemberProc {
        self.members.iter().find(|m| m.id == id).expect("member id")
    }

    fn member_mut(&mut self, id: u64) -> &mut MemberProc {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("member id")
    }

    /// Starts a member process (first start or restart from its data).
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let m = self.member_mut(id);
        if m.child.is_some() {
            bail!("member {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(bin("gw-api-server")?)
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&m.addr)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(&m.args)
            .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning gw-api-server")?;
        crate::procs::die_with_me(&child);
        m.child = Some(child);
        Ok(())
    }

    /// Adds a member that is not part of the initial membership (to be added with add-learner);
    /// returns its API and Raft addresses.
    pub fn add_process(
        &mut self,
        id: u64,
        extra_args: &[String],
    ) -> anyhow::Result<(String, String)> {
        let addr = format!("127.0.0.1:{}", free_port());
        let peer_addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--region".to_string(), format!("region-{id}")];
        args.extend(extra_args.iter().cloned());
        self.add_member(id, addr.clone(), peer_addr.clone(), args, vec![])?;
        self.spawn(id)?;
        Ok((addr, peer_addr))
    }

    /// Starts member `id` in `region` of the cluster's WAN, not part of the membership (to be added
    /// with add-learner): at its own address of the WAN's prefix, reached through ingresses of its
    /// region like the others. Its advertised API and Raft addresses.
    pub fn add_process_in(&mut self, id: u64, region: &str) -> anyhow::Result<(String, String)> {
        let (layout, prefix) = self.wan.clone().context("the cluster has no WAN")?;
        let host = format!("{prefix}{id}");
        let addr = format!("{host}:{}", free_port());
        let peer_addr = format!("{host}:{}", free_port());
        let advertised =
            layout.place_member(&host, region, (&addr, &peer_addr), &mut self.ingresses)?;
        let mut args = vec!["--region".to_string(), region.to_string()];
        args.extend(WAN_TIMING.map(String::from));
        self.add_member(id, addr, peer_addr, args, vec![])?;
        self.member_mut(id).reach = advertised.0.clone();
        self.spawn(id)?;
        Ok(advertised)
    }

    /// SIGKILL: the process dies at once, with whatever it had not synced.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.member_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.member_mut(id).child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stays alive but makes no progress (a long GC pause, a stuck VM).
    pub fn pause(&self, id: u64) {
        if let Some(pid) = self.member(id).pid() {
            let _ = kill(pid, Signal::SIGSTOP);
        }
    }

    pub fn resume(&self, id: u64) {
        if let Some(pid) = self.member(id).pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.member(id).child.is_some()
    }

    /// Where clients reach member `id`'s API.
    pub fn addr(&self, id: u64) -> &str {
        &self.member(id).reach
    }

    /// Member `id`'s Raft transport.
    pub fn peer_addr(&self, id: u64) -> &str {
        &self.member(id).peer_addr
    }

    /// Every member's address, comma-separated (for `--server`).
    pub fn servers(&self) -> String {
        self.members
            .iter()
            .map(|m| m.reach.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Runs `gwadm --server <server> <args>` and returns its output.
    pub fn gwadm(&self, server: &str, args: &[&str]) -> Output {
        Command::new(bin("gwadm").expect("gwadm"))
            .arg("--server")
            .arg(server)
            .args(self.pki.admin().to_args())
            .args(args)
            .output()
            .expect("running gwadm")
    }

    /// A member's own status report, if it answers within a second.
    pub async fn member_status(&self, id: u64) -> Option<pb::MemberStatus> {
        let channel = Dialer::new(self.pki.admin_security())
            .lazy(self.addr(id))
            .ok()?;
        let mut req = tonic::Request::new(pb::MemberStatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        gw_client::Client::cluster(channel)
            .member_status(req)
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Snapshots member `id`'s state and purges its log up to the snapshot (`CompactLog`), asked once.
    pub async fn compact_log(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<pb::MemberStatus, String> {
        let dialer = Dialer::new(self.pki.admin_security());
        gw_client::Client::new(&[self.addr(id).to_string()], Duration::ZERO, &dialer)
            .map_err(|e| e.to_string())?
            .with_call_timeout(timeout + Duration::from_secs(5))
            .compact_log(timeout)
            .await
            .map_err(|e| format!("member {id}: {e}"))
    }

    /// Waits until a running member leads in the newest term any running member reports, and returns
    /// its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut statuses = Vec::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                if let Some(s) = self.member_status(m.id).await {
                    statuses.push(s);
                }
            }
            if let Some(l) = current_leader(&statuses) {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("member {} log:\n{}", m.id, self.log_tail(m.id, 20)))
            .collect();
        bail!("no leader within {timeout:?}\n{}", logs.join("\n"))
    }

    /// Waits until member `id` has applied at least `revision`.
    pub async fn wait_for_revision(
        &self,
        id: u64,
        revision: u64,
        timeout: Duration,
    ) -> anyhow::Result<pb::MemberStatus> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.member_status(id).await {
                if s.applied_revision >= revision {
                    return Ok(s);
                }
                last = Some(s.applied_revision);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "member {id} did not reach revision {revision} within {timeout:?} (last seen {last:?})"
        )
    }

    /// The contents of a member's log file (for failure messages).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.member(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The member that leads, from the answering members' own reports: one that says it leads in a term
/// no answering member has gone past. (A leader deposed while its messages were late still says it
/// leads, in the older term, until it hears of the newer one; the member that started the newer
/// election already reports that term.)
fn current_leader(statuses: &[pb::MemberStatus]) -> Option<u64> {
    let newest = statuses.iter().map(|s| s.term).max()?;
    statuses
        .iter()
        .find(|s| s.role == "leader" && s.term == newest)
        .map(|s| s.id)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                if let Some(pid) = Some(Pid::from_raw(c.id() as i32)) {
                    let _ = kill(pid, Signal::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, term: u64) -> pb::MemberStatus {
        pb::MemberStatus {
            id,
            role: role.into(),
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_leader_in_an_older_term_than_another_member_is_not_the_leader() {
        let deposed = [
            status(1, "leader", 1),
            status(2, "candidate", 2),
            status(3, "follower", 1),
        ];
        assert_eq!(current_leader(&deposed), None);
        let elected = [
            status(1, "leader", 1),
            status(2, "leader", 2),
            status(3, "follower", 2),
        ];
        assert_eq!(current_leader(&elected), Some(2));
        assert_eq!(current_leader(&[]), None);
    }
}
