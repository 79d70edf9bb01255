//! Faults, injected from outside the store: SIGKILL and SIGSTOP of member processes, and network
//! partitions made with iptables rules between the members' loopback addresses (each member listens on,
//! and connects from, its own 127.77.0.N). Each fault is recorded with its start, its end, the members
//! it affected, and whether it was seen to take effect.

use crate::cluster::Cluster;
use crate::history::{Kind, NEMESIS, Recorder};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// The iptables chain that holds the partition rules.
const CHAIN: &str = "GW_JEPSEN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Pause,
    Partition,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Fault::Kill),
            "pause" => Ok(Fault::Pause),
            "partition" => Ok(Fault::Partition),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition)"
            )),
        }
    }
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
        }
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

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e} (install the iptables package)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The partition rules: a chain jumped to from INPUT, emptied on heal and removed on drop.
pub struct Net {
    ips: Vec<(u64, String)>,
}

impl Net {
    pub fn new(cluster: &Cluster) -> Result<Net, String> {
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
        let _ = iptables(&["-D", "INPUT", "-j", CHAIN]);
        let _ = iptables(&["-F", CHAIN]);
        let _ = iptables(&["-X", CHAIN]);
        iptables(&["-N", CHAIN])?;
        iptables(&["-I", "INPUT", "-j", CHAIN])?;
        Ok(Net { ips })
    }

    fn ip(&self, id: u64) -> &str {
        self.ips
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("", |(_, ip)| ip.as_str())
    }

    /// Drops every packet from a member of `from` to a member of `to`.
    pub fn drop_between(&self, from: &[u64], to: &[u64]) -> Result<(), String> {
        for a in from {
            for b in to {
                iptables(&[
                    "-A",
                    CHAIN,
                    "-s",
                    self.ip(*a),
                    "-d",
                    self.ip(*b),
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Whether the rule a→b is in place (the fault took effect).
    pub fn is_cut(&self, a: u64, b: u64) -> bool {
        iptables(&[
            "-C",
            CHAIN,
            "-s",
            self.ip(a),
            "-d",
            self.ip(b),
            "-j",
            "DROP",
        ])
        .is_ok()
    }

    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", CHAIN])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-j", CHAIN]);
        let _ = iptables(&["-F", CHAIN]);
        let _ = iptables(&["-X", CHAIN]);
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

/// When and which faults to inject.
pub struct Schedule {
    pub faults: Vec<Fault>,
    pub until: std::time::Instant,
    pub interval: Duration,
    pub hold: Duration,
}

/// Runs faults until `until`: every `interval`, the next configured fault (in turn) with the next of
/// its variants, held for `hold`, then healed. Returns how many of each took effect.
pub async fn run(
    cluster: &tokio::sync::Mutex<Cluster>,
    net: Option<&Net>,
    schedule: &Schedule,
    rec: &Recorder,
    rng: &mut Rng,
) -> Vec<(String, bool)> {
    let Schedule {
        faults,
        until,
        interval,
        hold,
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
            Fault::Kill => {
                let (what, targets): (&str, Vec<u64>) = match variant % 4 {
                    0 => ("kill-one", vec![pick(rng)]),
                    1 => ("kill-leader", vec![leader.unwrap_or_else(|| pick(rng))]),
                    2 => ("kill-minority", minority(&ids, rng)),
                    _ => ("kill-all", ids.clone()),
                };
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!(targets),
                ));
                let mut took = true;
                {
                    let mut c = cluster.lock().await;
                    for t in &targets {
                        took &= c.is_running(*t);
                        c.kill(*t);
                        took &= !c.is_running(*t);
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
                    json!({"nodes": targets, "took_effect": took}),
                ));
                effects.push((what.to_string(), took));
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
                let (what, a, b): (&str, Vec<u64>, Vec<u64>) = match variant % 2 {
                    0 => {
                        let minor = minority(&ids, rng);
                        let major: Vec<u64> =
                            ids.iter().copied().filter(|i| !minor.contains(i)).collect();
                        ("partition-majority-minority", minor, major)
                    }
                    _ => {
                        let l = leader.unwrap_or_else(|| pick(rng));
                        (
                            "partition-isolate-leader",
                            vec![l],
                            ids.iter().copied().filter(|i| *i != l).collect(),
                        )
                    }
                };
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Invoke,
                    what,
                    None,
                    json!({"side_a": a, "side_b": b}),
                ));
                let ok = net
                    .drop_between(&a, &b)
                    .and_then(|_| net.drop_between(&b, &a));
                let took = ok.is_ok() && net.is_cut(a[0], b[0]) && net.is_cut(b[0], a[0]);
                tokio::time::sleep(hold).await;
                let _ = net.heal();
                rec.record(Recorder::event(
                    NEMESIS,
                    Kind::Ok,
                    what,
                    None,
                    json!({"side_a": a, "side_b": b, "took_effect": took, "error": ok.err()}),
                ));
                effects.push((what.to_string(), took));
            }
        }
    }
    effects
}

/// A random minority (at least one member).
fn minority(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let k = ((ids.len() - 1) / 2).max(1);
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
