//! Faults, injected from outside the store: SIGKILL and SIGSTOP of member processes, power cuts
//! (SIGKILL, then the member's disk drops what it had not synced: `lossyfs`), and network partitions
//! made with iptables rules between the members' loopback addresses (each member listens on, and
//! connects from, its own 127.77.R.N). Each fault is recorded with its start, its end, the members it
//! affected, and whether it was seen to take effect.

use crate::history::{Kind, NEMESIS, Recorder};
use crate::lossyfs::Disk;
use gw_testkit::cluster::{Cluster, WanLayout};
use gw_testkit::firewall::Firewall;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    /// Only the "every member at once" variant of `Kill`: what loses writes a member acknowledged
    /// before they were on disk.
    KillAll,
    /// `Kill`'s variants, each a machine crash: the members' disks (`lossyfs`) drop every write
    /// they had not synced before the members restart.
    PowerLoss,
    Pause,
    Partition,
    /// Gateway nodes cut from the store members (all nodes, one, from a minority of members, or
    /// one-way: the members' packets to the nodes dropped).
    PartitionNodes,
    /// Backends cut from the gateway nodes (one, all, or one-way: packets to one dropped).
    PartitionBackends,
    /// Clocks stepped or slewed by seconds, through the processes' test-only clock override
    /// (`gw_client::clock`): the leader's forward, a member's back, every member's apart, a gateway
    /// node's, the leader's slewed (running 5× fast).
    Clock,
    /// A follower cut off until the leader has purged the log it needs, then healed: it must catch up
    /// by installing a snapshot.
    Catchup,
    /// A member removed from the cluster during traffic, wiped, restarted empty, added back as a
    /// learner and promoted to voter.
    Membership,
    /// A whole region of the WAN (`--wan`) cut off from the others: its members, and every client
    /// placed in it (the leader's region, then the others in turn).
    PartitionRegion,
    /// `PartitionRegion`, and the region's gateway nodes cut from other regions' backends and the other
    /// regions' nodes from its backends (iptables, by the nodes' upstream source address). Recorded as
    /// a `partition-region` with `backend_cuts`.
    PartitionRegionBackends,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Fault::Kill),
            "kill-all" => Ok(Fault::KillAll),
            "power-loss" => Ok(Fault::PowerLoss),
            "pause" => Ok(Fault::Pause),
            "partition" => Ok(Fault::Partition),
            "partition-nodes" => Ok(Fault::PartitionNodes),
            "partition-backends" => Ok(Fault::PartitionBackends),
            "clock" => Ok(Fault::Clock),
            "catchup" => Ok(Fault::Catchup),
            "membership" => Ok(Fault::Membership),
            "partition-region" => Ok(Fault::PartitionRegion),
            "partition-region-backends" => Ok(Fault::PartitionRegionBackends),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, kill-all, power-loss, pause, partition, partition-nodes, partition-backends, clock, catchup, membership, partition-region, partition-region-backends)"
            )),
        }
    }
}

impl Fault {
    /// Whether the fault cuts traffic with firewall rules between processes' addresses.
    pub fn uses_firewall(self) -> bool {
        matches!(
            self,
            Fault::Partition | Fault::Catchup | Fault::PartitionNodes | Fault::PartitionBackends
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillAll => "kill-all",
            Fault::PowerLoss => "power-loss",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::PartitionNodes => "partition-nodes",
            Fault::PartitionBackends => "partition-backends",
            Fault::Clock => "clock",
            Fault::Catchup => "catchup",
            Fault::Membership => "membership",
            Fault::PartitionRegion => "partition-region",
            Fault::PartitionRegionBackends => "partition-region-backends",
        }
    }

    /// Whether the fault cuts a whole region of the WAN.
    pub fn cuts_regions(self) -> bool {
        matches!(
            self,
            Fault::PartitionRegion | Fault::PartitionRegionBackends
        )
    }
}

/// A small deterministic generator (xorshift), seeded per run, so that a run's schedule can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The partition rules (the run's own iptables chain) and the addresses they cut between (members by
/// id, gateway nodes, backends).
pub struct Net {
    fw: Firewall,
    ips: Vec<(u64, String)>,
    /// Gateway nodes' addresses (they reach the store from them: `--store-source-address`).
    pub nodes: Vec<String>,
    /// Backends' addresses.
    pub backends: Vec<String>,
}

impl Net {
    pub fn new(
        cluster: &Cluster,
        nodes: Vec<String>,
        backends: Vec<String>,
    ) -> Result<Net, String> {
        let ips = cluster
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    m.addr
                        .rsplit_once(':')
                        .map_or(m.addr.clone(), |(h, _)| h.to_string()),
                )
            })
            .collect();
        Ok(Net {
            fw: Firewall::new("GW_JEPSEN")?,
            ips,
            nodes,
            backends,
        })
    }

    fn ip(&self, id: u64) -> &str {
        self.ips
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("", |(_, ip)| ip.as_str())
    }

    /// The members' addresses, of `ids`.
    pub fn member_ips(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|i| self.ip(*i).to_string()).collect()
    }

    /// Drops every packet from `a` to `b` (an empty address: any).
    pub fn drop_addr(&self, a: &str, b: &str) -> Result<(), String> {
        self.fw.drop(a, b)
    }

    /// Whether the rule a→b is in place (the fault took effect).
    pub fn is_cut_addrs(&self, a: &str, b: &str) -> bool {
        self.fw.is_dropped(a, b)
    }

    /// Drops the packets of each (from, to) pair of members.
    pub fn drop_pairs(&self, pairs: &[(u64, u64)]) -> Result<(), String> {
        for (a, b) in pairs {
            self.drop_addr(self.ip(*a), self.ip(*b))?;
        }
        Ok(())
    }

    pub fn heal(&self) -> Result<(), String> {
        self.fw.heal()
    }
}

/// Whether a process is stopped (state T in /proc).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// The processes' skew files (`gw_client::clock`): `DIR/member-N` and `DIR/NODE-NAME`, each a signed
/// offset in milliseconds.
pub struct Clocks {
    pub dir: std::path::PathBuf,
    /// Gateway nodes' names.
    pub nodes: Vec<String>,
}

impl Clocks {
    fn set(&self, name: &str, offset_ms: i64) -> bool {
        std::fs::write(self.dir.join(name), offset_ms.to_string()).is_ok()
    }
}

fn member(id: u64) -> String {
    format!("member-{id}")
}

/// When and which faults to inject.
pub struct Schedule {
    pub faults: Vec<Fault>,
    pub until: std::time::Instant,
    pub interval: Duration,
    pub hold: Duration,
    /// The WAN the members are spread over, whose regions `PartitionRegion` cuts off.
    pub wan: Option<WanLayout>,
}

/// Runs faults until `until`: every `interval`, the next configured fault (in turn) with the next of
/// its variants, held for `hold`, then healed. Returns how many of each took effect.
pub async fn run(
    cluster: &tokio::sync::Mutex<Cluster>,
    net: Option<&Net>,
    disks: &[(u64, Disk)],
    clocks: Option<&Clocks>,
    schedule: &Schedule,
    rec: &Recorder,
    rng: &mut Rng,
) -> Vec<(String, bool)> {
    let Schedule {
        faults,
        until,
        interval,
        hold,
        wan,
    } = schedule;
    let (until, interval, hold) = (*until, *interval, *hold);
    let mut effects = Vec::new();
    let mut turn = 0usize;
    while std::time::Instant::now() + interval + hold < until && !faults.is_empty() {
        tokio::time::sleep(interval).await;
        let fault = faults[turn % faults.len()];
        let variant = turn / faults.len();
        turn += 1;
        let ids = cluster.lock().await.ids();
        let leader = leader_of(cluster).await;
        let n = ids.len() as u64;
        let pick = |rng: &mut Rng| ids[rng.below(n) as usize];
        match fault {
            Fault::Kill | Fault::KillAll | Fault::PowerLoss => {
                let variant = if fault == Fault::KillAll { 3 } else { variant };
                let power = fault == Fault::PowerLoss;
                let (what, targets): (&str, Vec<u64>) = match (variant % 4, power) {
                    (0, false) => ("kill-one", vec![pick(rng)]),
                    (1, false) => ("kill-leader", vec![leader.unwrap_or_else(|| pick(rng))]),
                    (2, false) => ("kill-minority", minority(&ids, rng)),
                    (_, false) => ("kill-all", ids.clone()),
                    (0, true) => ("power-loss-one", vec![pick(rng)]),
                    (1, true) => (
                        "power-loss-leader",
                        vec![leader.unwrap_or_else(|| pick(rng))],
                    ),
                    (2, true) => ("power-loss-minority", minority(&ids, rng)),
                    (_, true) => ("power-loss-all", ids.clone()),
                };
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!(targets),
                ));
                let mut took = true;
                let mut lost = Vec::new();
                {
                    let mut c = cluster.lock().await;
                    for t in &targets {
                        took &= c.is_running(*t);
                        c.kill(*t);
                        took &= !c.is_running(*t);
                    }
                    // The processes are gone (waited for): their disks lose what was not synced.
                    for t in targets.iter().filter(|_| power) {
                        match disks.iter().find(|(id, _)| id == t) {
                            Some((_, disk)) => {
                                let d = disk.power_cut();
                                lost.push(json!({"member": t, "files": d.files, "bytes": d.bytes}));
                            }
                            None => took = false,
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                let mut c = cluster.lock().await;
                for t in &targets {
                    let _ = c.spawn(*t);
                }
                drop(c);
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Ok,
                    what,
                    None,
                    json!({"nodes": targets, "took_effect": took, "unsynced_lost": lost}),
                ));
                effects.push((what.to_string(), took));
            }
            Fault::PartitionRegion | Fault::PartitionRegionBackends => {
                let Some(layout) = wan else { continue };
                let regions: Vec<String> = layout.wan.matrix.regions().into_iter().collect();
                // The leader's region first, then each region in turn.
                let region = match leader {
                    Some(l) if variant.is_multiple_of(2) => layout.regions[l as usize - 1].clone(),
                    _ => regions[variant % regions.len()].clone(),
                };
                let members: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| layout.regions[*id as usize - 1] == region)
                    .collect();
                let what = "partition-region";
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!({"region": region, "members": members}),
                ));
                layout.wan.isolate(&region, true);
                // The region's gateway nodes and other regions' backends, and the other way round:
                // packets dropped (the WAN's proxies stand only between members and their clients).
                let net = net.filter(|_| fault == Fault::PartitionRegionBackends);
                let backend_cuts = net.map_or(Ok(0), |net| {
                    let inside = |ip: &String| {
                        ip.parse()
                            .ok()
                            .and_then(|ip| layout.wan.region_of(ip))
                            .is_some_and(|r| r == region)
                    };
                    let part = |v: &[String], side: bool| -> Vec<String> {
                        v.iter().filter(|ip| inside(ip) == side).cloned().collect()
                    };
                    let mut cuts = both_ways(&part(&net.nodes, true), &part(&net.backends, false));
                    cuts.extend(both_ways(
                        &part(&net.nodes, false),
                        &part(&net.backends, true),
                    ));
                    cuts.iter().try_for_each(|(a, b)| net.drop_addr(a, b))?;
                    match cuts.iter().all(|(a, b)| net.is_cut_addrs(a, b)) {
                        true => Ok(cuts.len()),
                        false => Err("a rule of the cut is missing".to_string()),
                    }
                });
                tokio::time::sleep(hold).await;
                layout.wan.isolate(&region, false);
                let healed = net.map_or(Ok(()), Net::heal);
                let took = !members.is_empty() && regions.len() > 1 && backend_cuts.is_ok();
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Ok,
                    what,
                    None,
                    json!({"region": region, "members": members, "took_effect": took,
                        "backend_cuts": backend_cuts.as_ref().ok(),
                        "error": backend_cuts.err().or(healed.err())}),
                ));
                // The checkers know both as a `partition-region`; the verdict on effects, by their own name.
                effects.push((fault.name().to_string(), took));
            }
            Fault::Pause => {
                let (what, t) = if variant.is_multiple_of(2) {
                    ("pause-one", pick(rng))
                } else {
                    ("pause-leader", leader.unwrap_or_else(|| pick(rng)))
                };
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!([t]),
                ));
                let pid = {
                    let c = cluster.lock().await;
                    c.pause(t);
                    c.members.iter().find(|m| m.id == t).and_then(|m| m.pid())
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
                let took = pid.is_some_and(|p| is_stopped(p.as_raw()));
                tokio::time::sleep(hold).await;
                cluster.lock().await.resume(t);
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Ok,
                    what,
                    None,
                    json!({"nodes": [t], "took_effect": took}),
                ));
                effects.push((what.to_string(), took));
            }
            Fault::Partition => {
                let Some(net) = net else { continue };
                let l = leader.unwrap_or_else(|| pick(rng));
                let both = |a: &[u64], b: &[u64]| -> Vec<(u64, u64)> {
                    a.iter()
                        .flat_map(|x| b.iter().flat_map(move |y| [(*x, *y), (*y, *x)]))
                        .collect()
                };
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                let (what, cuts): (&str, Vec<(u64, u64)>) = match variant % 5 {
                    0 => {
                        let minor = minority(&ids, rng);
                        let major: Vec<u64> =
                            ids.iter().copied().filter(|i| !minor.contains(i)).collect();
                        ("partition-majority-minority", both(&minor, &major))
                    }
                    // The leader stays on the majority side: a minority of followers is cut off.
                    4 => {
                        let minor = minority(&others, rng);
                        let major: Vec<u64> =
                            ids.iter().copied().filter(|i| !minor.contains(i)).collect();
                        ("partition-leader-in-majority", both(&minor, &major))
                    }
                    1 => ("partition-isolate-leader", both(&[l], &others)),
                    // Every member keeps a majority (itself and its two ring neighbours), each a
                    // different one: needs five members.
                    2 if ids.len() >= 5 => {
                        let n = ids.len();
                        let cuts = (0..n)
                            .flat_map(|i| (0..n).map(move |j| (i, j)))
                            .filter(|(i, j)| i != j && (i + 1) % n != *j && (j + 1) % n != *i)
                            .map(|(i, j)| (ids[i], ids[j]))
                            .collect();
                        ("partition-majorities-ring", cuts)
                    }
                    // One-way: the leader's packets to the others are dropped, theirs reach it.
                    _ => (
                        "partition-one-way",
                        others.iter().map(|o| (l, *o)).collect(),
                    ),
                };
                let addrs = cuts
                    .iter()
                    .map(|(a, b)| (net.ip(*a).to_string(), net.ip(*b).to_string()))
                    .collect::<Vec<_>>();
                let took = hold_cuts(net, &addrs, json!(cuts), what, hold, rec).await;
                effects.push((what.to_string(), took));
            }
            Fault::PartitionNodes | Fault::PartitionBackends => {
                let Some(net) = net else { continue };
                let members = net.member_ips(&ids);
                let any = [String::new()];
                let (what, cuts): (&str, Vec<(String, String)>) = if fault == Fault::PartitionNodes
                {
                    if net.nodes.is_empty() {
                        continue;
                    }
                    let one = [net.nodes[rng.below(net.nodes.len() as u64) as usize].clone()];
                    match variant % 4 {
                        0 => ("partition-nodes-all", both_ways(&net.nodes, &members)),
                        1 => ("partition-nodes-one", both_ways(&one, &members)),
                        2 => {
                            let minor = net.member_ips(&minority(&ids, rng));
                            ("partition-nodes-minority", both_ways(&net.nodes, &minor))
                        }
                        _ => ("partition-nodes-one-way", one_way(&members, &net.nodes)),
                    }
                } else {
                    if net.backends.is_empty() {
                        continue;
                    }
                    let one = [net.backends[rng.below(net.backends.len() as u64) as usize].clone()];
                    match variant % 3 {
                        0 => ("partition-backends-one", both_ways(&one, &any)),
                        1 => ("partition-backends-all", both_ways(&net.backends, &any)),
                        _ => ("partition-backends-one-way", one_way(&any, &one)),
                    }
                };
                let took = hold_cuts(net, &cuts, json!(cuts), what, hold, rec).await;
                effects.push((what.to_string(), took));
            }
            Fault::Clock => {
                let Some(clocks) = clocks else { continue };
                const STEP: i64 = 8_000;
                let l = member(leader.unwrap_or_else(|| pick(rng)));
                let nodes = &clocks.nodes;
                let (what, offsets): (&str, Vec<(String, i64)>) = match variant % 5 {
                    0 => ("clock-step-leader-forward", vec![(l.clone(), STEP)]),
                    1 => ("clock-step-member-back", vec![(member(pick(rng)), -STEP)]),
                    2 => {
                        let mid = ids.len() as i64 / 2;
                        let apart = ids
                            .iter()
                            .enumerate()
                            .map(|(i, id)| (member(*id), (i as i64 - mid) * STEP / 2))
                            .collect();
                        ("clock-skew-members", apart)
                    }
                    3 if !nodes.is_empty() => {
                        let n = nodes[rng.below(nodes.len() as u64) as usize].clone();
                        let sign = if rng.below(2) == 0 { 1 } else { -1 };
                        ("clock-step-node", vec![(n, sign * STEP)])
                    }
                    3 => ("clock-step-leader-back", vec![(l.clone(), -STEP)]),
                    _ => ("clock-slew-leader", vec![(l.clone(), 0)]),
                };
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!({"offsets_ms": offsets}),
                ));
                let mut took = offsets.iter().all(|(n, o)| clocks.set(n, *o));
                if what == "clock-slew-leader" {
                    // Slewed: the leader's clock gains 4 s per second of the hold.
                    let start = std::time::Instant::now();
                    while start.elapsed() < hold {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        took &= clocks.set(&l, start.elapsed().as_millis() as i64 * 4);
                    }
                } else {
                    tokio::time::sleep(hold).await;
                }
                let healed = offsets.iter().all(|(n, _)| clocks.set(n, 0));
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Ok,
                    what,
                    None,
                    json!({"offsets_ms": offsets, "took_effect": took, "healed": healed}),
                ));
                effects.push((what.to_string(), took));
            }
            Fault::Membership => {
                let Some(l) = leader else { continue };
                let f = ids.iter().copied().find(|i| *i != l).unwrap_or(l);
                let what = "membership-remove-readd";
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!({"member": f}),
                ));
                let (servers, addr, peer_addr, admin) = {
                    let c = cluster.lock().await;
                    (
                        c.servers(),
                        c.addr(f).to_string(),
                        c.peer_addr(f).to_string(),
                        c.pki().admin(),
                    )
                };
                // On a loaded machine each step can fail for a while for reasons that pass (a
                // member still starting, a learner still receiving its first snapshot — the whole
                // history of a long run —, a stream refused): each is asked again for up to 60 s.
                let slow = (hold * 5).max(Duration::from_secs(60));
                let removed = match gwadm_patiently(
                    &servers,
                    &admin,
                    &["cluster", "remove", &f.to_string()],
                    slow,
                )
                .await
                {
                    // An earlier round removed it and could not add it back.
                    Err(e) if e.contains("is not in the cluster") => Ok(e),
                    r => r,
                };
                {
                    // The member is gone: wipe it and start it empty, without --peers.
                    let mut c = cluster.lock().await;
                    c.kill(f);
                    if let Some(m) = c.members.iter_mut().find(|m| m.id == f) {
                        let _ = std::fs::remove_dir_all(&m.data_dir);
                        if let Some(i) = m.args.iter().position(|a| a == "--peers") {
                            m.args.drain(i..i + 2);
                        }
                    }
                    let _ = c.spawn(f);
                }
                tokio::time::sleep(hold).await;
                let region = format!("region-{f}");
                let added = gwadm_patiently(
                    &servers,
                    &admin,
                    &[
                        "cluster",
                        "add-learner",
                        "--id",
                        &f.to_string(),
                        "--addr",
                        &addr,
                        "--peer-addr",
                        &peer_addr,
                        "--region",
                        &region,
                    ],
                    slow,
                )
                .await;
                // gwadm refuses to promote a learner that has not replicated anything yet or is
                // more than a few entries behind: its first snapshot can take a while.
                let promoted = match &added {
                    Ok(_) => {
                        gwadm_patiently(
                            &servers,
                            &admin,
                            &["cluster", "promote", &f.to_string()],
                            slow,
                        )
                        .await
                    }
                    Err(e) => Err(e.clone()),
                };
                let mut voter = false;
                let deadline = std::time::Instant::now() + hold * 4;
                while promoted.is_ok() && std::time::Instant::now() < deadline {
                    if cluster
                        .lock()
                        .await
                        .member_status(f)
                        .await
                        .is_some_and(|s| matches!(s.role.as_str(), "follower" | "leader"))
                    {
                        voter = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let took = removed.is_ok() && added.is_ok() && voter;
                rec.record(Recorder::event(NEMESIS, Kind::Ok, what, None, json!({"member": f, "removed": removed, "added": added, "promoted": promoted, "voter_again": voter, "took_effect": took})));
                effects.push((what.to_string(), took));
            }
            Fault::Catchup => {
                let Some(net) = net else { continue };
                let Some(l) = leader else { continue };
                let f = ids.iter().copied().find(|i| *i != l).unwrap_or(l);
                let what = "catchup-by-snapshot";
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != f).collect();
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!({"isolated": f}),
                ));
                let cuts: Vec<(u64, u64)> =
                    others.iter().flat_map(|o| [(f, *o), (*o, f)]).collect();
                let _ = net.drop_pairs(&cuts);
                // Hold the follower out until the leader has written past its log, then have the
                // leader snapshot and purge its log (`CompactLog`): the follower can then catch up
                // only by snapshot.
                let status = |id| async move { cluster.lock().await.member_status(id).await };
                let behind = status(f).await.map_or(0, |s| s.last_log_index);
                let deadline = std::time::Instant::now() + hold * 5;
                let mut purged = 0;
                let mut compacted =
                    Err("the leader applied nothing past the follower's log".into());
                while std::time::Instant::now() < deadline {
                    if status(l).await.is_some_and(|s| s.applied_index > behind) {
                        compacted = cluster.lock().await.compact_log(l, hold * 5).await;
                        purged = compacted.as_ref().map_or(0, |s| s.purged_index);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let _ = net.heal();
                // It took effect if the follower then installed a snapshot past what it had.
                let mut took = false;
                let deadline = std::time::Instant::now() + (hold * 5).max(Duration::from_secs(20));
                while purged > behind && std::time::Instant::now() < deadline {
                    if status(f).await.is_some_and(|s| s.snapshot_index >= purged) {
                        took = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                rec.record(Recorder::event(NEMESIS, Kind::Ok, what, None,
                    json!({"isolated": f, "its_last_log_index": behind, "leader_purged_index": purged,
                           "compact_error": compacted.err(), "took_effect": took})));
                effects.push((what.to_string(), took));
            }
        }
    }
    effects
}

/// Runs `gwadm --server SERVERS ARGS` as the cluster's admin; its output, or why it failed.
async fn gwadm(servers: &str, admin: &gw_client::TlsArgs, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(gw_testkit::procs::bin("gwadm").expect("gwadm"))
        .args(admin.to_args())
        .args(["--server", servers, "--retry-for", "15"])
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `gwadm` asked again, for up to `patience`, while it fails for a reason that passes with time on a
/// loaded machine: a member still starting or unreachable for a moment, a learner still catching up,
/// a stream the server refused.
async fn gwadm_patiently(
    servers: &str,
    admin: &gw_client::TlsArgs,
    args: &[&str],
    patience: Duration,
) -> Result<String, String> {
    const PASSING: [&str; 6] = [
        "does not answer",
        "has not replicated anything yet",
        "log entries behind",
        "h2 protocol error",
        "no store member reachable",
        "deadline has elapsed",
    ];
    let deadline = std::time::Instant::now() + patience;
    loop {
        match gwadm(servers, admin, args).await {
            Err(e)
                if PASSING.iter().any(|p| e.contains(p))
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            r => return r,
        }
    }
}

/// Drops the packets of each (from, to) address pair for `hold`, then heals; recorded as `what` with
/// `shown` (the cuts as the history names them). Whether every rule was seen in place.
async fn hold_cuts(
    net: &Net,
    cuts: &[(String, String)],
    shown: serde_json::Value,
    what: &str,
    hold: Duration,
    rec: &Recorder,
) -> bool {
    rec.record(Recorder::event(
        NEMESIS,
        Kind::Invoke,
        what,
        None,
        json!({"cuts": shown}),
    ));
    let ok = cuts.iter().try_for_each(|(a, b)| net.drop_addr(a, b));
    let took = ok.is_ok() && cuts.iter().all(|(a, b)| net.is_cut_addrs(a, b));
    tokio::time::sleep(hold).await;
    let _ = net.heal();
    rec.record(Recorder::event(
        NEMESIS,
        Kind::Ok,
        what,
        None,
        json!({"cuts": shown, "took_effect": took, "error": ok.err()}),
    ));
    took
}

/// Every (a, b) and (b, a) of `a` × `b`.
fn both_ways(a: &[String], b: &[String]) -> Vec<(String, String)> {
    let mut cuts = one_way(a, b);
    cuts.extend(one_way(b, a));
    cuts
}

/// Every (a, b) of `a` × `b`: packets from a to b dropped.
fn one_way(a: &[String], b: &[String]) -> Vec<(String, String)> {
    a.iter()
        .flat_map(|x| b.iter().map(move |y| (x.clone(), y.clone())))
        .collect()
}

/// A random minority of the cluster (at least one member), drawn from `ids`.
fn minority(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let k = (ids.len().saturating_sub(1) / 2).max(1).min(ids.len());
    let mut pool = ids.to_vec();
    let mut out = Vec::new();
    for _ in 0..k {
        let i = rng.below(pool.len() as u64) as usize;
        out.push(pool.remove(i));
    }
    out
}

/// The leader, as the running members report it.
pub async fn leader_of(cluster: &tokio::sync::Mutex<Cluster>) -> Option<u64> {
    let c = cluster.lock().await;
    for id in c.ids() {
        if !c.is_running(id) {
            continue;
        }
        if let Some(s) = c.member_status(id).await
            && s.leader != 0
        {
            return Some(s.leader);
        }
    }
    None
}
