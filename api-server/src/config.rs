//! The configuration of one store member (`gw-api-server` flags), validated before any port is bound.

use clap::Parser;
use gw_store::types::{Member, NodeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gw-api-server",
    version,
    about = "One member of the gw config store (Raft over openraft + sled), serving the gw gRPC API"
)]
pub struct ServerConfig {
    /// This member's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: NodeId,

    /// Address to listen on for the client API (HOST:PORT).
    #[arg(long)]
    pub listen: SocketAddr,

    /// Address to listen on for the Raft transport (HOST:PORT), which accepts member certificates
    /// only; without it, Raft shares the --listen port.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,

    /// Address other members and clients use to reach this member's API; defaults to --listen, or
    /// to this member's entry in --peers.
    #[arg(long)]
    pub advertise: Option<String>,

    /// Address other members use to reach this member's Raft transport; defaults to --peer-listen, or
    /// to this member's entry in --peers.
    #[arg(long)]
    pub advertise_peer: Option<String>,

    /// Mutual TLS on every port: the CA, and this member's certificate, which names
    /// `spiffe://gw/member/<--id>` (see `gwadm pki`). With --insecure instead, every caller may do
    /// everything.
    #[command(flatten)]
    pub tls: gw_client::TlsArgs,

    /// Serve the Kubernetes API (for kubectl, kube-rs, GitOps tools) on HOST:PORT: HTTPS with this
    /// member's certificate (issue it with `--host` names clients connect to), clients authenticated
    /// by their certificates as on the gRPC API (see `gwadm kubeconfig`); plaintext with --insecure.
    #[arg(long)]
    pub kube_listen: Option<SocketAddr>,

    /// Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,

    /// Directory holding this member's log, state machine and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,

    /// The initial members: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`, each the member's API address,
    /// optionally `/HOST:PORT` of its Raft transport (its --peer-listen) and `@REGION`. Give the same
    /// list to every initial member; the cluster forms by itself. Omit it for a member that will join
    /// as a learner (`gwadm cluster add-learner`).
    #[arg(long, value_parser = parse_peers)]
    pub peers: Option<BTreeMap<NodeId, Member>>,

    /// This member's region label.
    #[arg(long, default_value = "")]
    pub region: String,

    /// Raft heartbeat interval, in milliseconds. openraft 0.9 also uses it as the timeout of every
    /// AppendEntries call, which includes the follower's durable append (flush + fdatasync): it must
    /// stay well above the disk's sync latency under load, or replication stalls.
    #[arg(long, default_value_t = 250)]
    pub heartbeat_ms: u64,

    /// Minimum election timeout, in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 1500)]
    pub election_timeout_ms: u64,

    /// Timeout of each InstallSnapshot call, in milliseconds. The call carrying a snapshot's last
    /// chunk returns once the receiver has stored and installed the whole snapshot, so it must cover
    /// that for the largest state (history included) on a loaded machine: a receiver that cannot
    /// finish in time is sent the snapshot again from the start, forever. A receiver that is gone
    /// only holds up its own replication stream this long.
    #[arg(long, default_value_t = 60_000)]
    pub snapshot_timeout_ms: u64,

    /// Build a snapshot after this many log entries since the last one, once the log since it also
    /// holds a quarter of its bytes (`snapshots`).
    #[arg(long, default_value_t = 5000)]
    pub snapshot_logs: u64,

    /// Log entries kept behind the last snapshot (for followers slightly behind).
    #[arg(long, default_value_t = 1000)]
    pub keep_logs: u64,

    /// Revisions of events kept for watches to resume from.
    #[arg(long, default_value_t = 10_000)]
    pub history_revisions: usize,

    /// Interval of watch bookmarks (progress notifications), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub bookmark_ms: u64,

    /// NULL CONTROL for the fault-injection suite: acknowledge writes without syncing the log to disk.
    #[arg(long, hide = true, env = "GW_UNSAFE_NO_SYNC")]
    pub unsafe_no_sync: bool,

    /// NULL CONTROL for the fault-injection suite: serve "linearizable" reads from local state.
    #[arg(long, hide = true, env = "GW_UNSAFE_STALE_READS")]
    pub unsafe_stale_reads: bool,

    /// NULL CONTROL for the fault-injection suite: acknowledge a write as soon as it is proposed,
    /// with the outcome it would have on the leader's current state, before it is committed.
    #[arg(long, hide = true, env = "GW_UNSAFE_EARLY_ACK")]
    pub unsafe_early_ack: bool,
}

/// `HOST:PORT` with a numeric port.
fn host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some()
}

/// Parses `--peers`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, rest) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a positive integer"))?;
        let (addrs, region) = match rest.split_once('@') {
            Some((a, r)) => (a, r),
            None => (rest, ""),
        };
        let (addr, peer_addr) = match addrs.split_once('/') {
            Some((a, p)) => (a, p),
            None => (addrs, ""),
        };
        if !host_port(addr) {
            return Err(format!("peer {id}: {addr:?} is not HOST:PORT"));
        }
        if !peer_addr.is_empty() && !host_port(peer_addr) {
            return Err(format!(
                "peer {id}: Raft address {peer_addr:?} is not HOST:PORT"
            ));
        }
        let member = Member {
            addr: addr.to_string(),
            region: region.to_string(),
            peer_addr: peer_addr.to_string(),
        };
        if out.insert(id, member).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    if out.is_empty() {
        return Err("--peers lists no member".into());
    }
    Ok(out)
}

impl ServerConfig {
    /// Checks the flags against each other; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be a positive integer".into());
        }
        if self.peer_listen == Some(self.listen) {
            return Err(
                "--peer-listen must differ from --listen (omit it to share the port)".into(),
            );
        }
        if let Some(peers) = &self.peers
            && !peers.contains_key(&self.id)
        {
            return Err(format!(
                "--peers must include this member's own id {}",
                self.id
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return Err("--election-timeout-ms must be more than twice --heartbeat-ms".into());
        }
        if self.snapshot_logs == 0 {
            return Err("--snapshot-logs must be positive".into());
        }
        Ok(())
    }

    /// How this member is reached: its API, and its Raft transport when that has its own port.
    pub fn advertised(&self) -> Member {
        let own = self.peers.as_ref().and_then(|p| p.get(&self.id));
        let addr = self
            .advertise
            .clone()
            .or_else(|| own.map(|m| m.addr.clone()))
            .unwrap_or_else(|| self.listen.to_string());
        let peer_addr = self
            .advertise_peer
            .clone()
            .or_else(|| own.map(|m| m.peer_addr.clone()).filter(|p| !p.is_empty()))
            .or_else(|| self.peer_listen.map(|p| p.to_string()))
            .unwrap_or_default();
        Member {
            addr,
            region: self.region.clone(),
            peer_addr,
        }
    }

    /// The TLS material (`Security::Insecure` only with --insecure); a member's certificate must name
    /// this member.
    pub fn security(&self) -> Result<gw_client::Security, String> {
        let s = self.tls.security()?;
        match s.identity() {
            None => Ok(s),
            Some(gw_client::Identity::Member(id)) if id == self.id => Ok(s),
            Some(other) => Err(format!(
                "--tls-cert names {other}, but this is member {} (issue it with `gwadm pki issue member --id {}`)",
                self.id, self.id
            )),
        }
    }

    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "gw".into(),
            heartbeat_interval: self.heartbeat_ms,
            // openraft's own election timer is off: elections start after a pre-vote round finds a
            // majority (`crate::prevote`, on timeouts of `election_timeout_ms` to twice it). Here
            // the timeouts set only the leader lease (`election_timeout_max`), during which a voter
            // that has heard from its leader refuses to vote: one minimum timeout, so that a voter
            // is free to vote once any candidate's timeout has passed.
            election_timeout_min: self.election_timeout_ms.div_ceil(2),
            election_timeout_max: self.election_timeout_ms,
            enable_elect: false,
            install_snapshot_timeout: self.snapshot_timeout_ms,
            // `crate::snapshots` triggers them.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.keep_logs,
            // Bounded AppendEntries payloads: each call (and its sync) has one heartbeat to finish.
            max_payload_entries: 64,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers_with_regions() {
        let p = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002@eu-west, 3=h:7003").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[&2],
            Member {
                addr: "127.0.0.1:7002".into(),
                region: "eu-west".into(),
                peer_addr: String::new(),
            }
        );
        let p = parse_peers("1=127.0.0.1:7001/127.0.0.1:7101@us").unwrap();
        assert_eq!(p[&1].peer_addr, "127.0.0.1:7101");
        assert_eq!(p[&1].raft_addr(), "127.0.0.1:7101");
        assert!(parse_peers("1=h:1/nope").is_err());
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("x=h:1").is_err());
        assert!(parse_peers("1=h:1,1=h:2").is_err());
    }
}
