//! Faults during a conformance run (`--faults`): while the tests run, every `--fault-interval` seconds
//! the next fault in turn — a store member killed (SIGKILL; the leader every other time) and restarted
//! after `--fault-hold` seconds, a member cut off from the others (iptables; the leader every other
//! time) and healed after the hold, or the gateway node killed and started again at once (it serves its
//! persisted snapshot until the store answers). The report says which faults ran.

use crate::env::NodeRestart;
use gw_testkit::cluster::Cluster;
use gw_testkit::firewall::Firewall;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Partition,
    NodeRestart,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        match s {
            "kill" => Ok(Fault::Kill),
            "partition" => Ok(Fault::Partition),
            "node-restart" => Ok(Fault::NodeRestart),
            other => Err(format!(
                "unknown fault {other:?} (kill, partition, node-restart)"
            )),
        }
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    pub what: String,
    /// Seconds into the run.
    pub at_s: f64,
    pub took_effect: bool,
}

/// What the faults act on.
pub struct Targets {
    pub cluster: Option<Arc<Mutex<Cluster>>>,
    pub node: NodeRestart,
}

/// The leader as a running member reports it, else the first member.
async fn leader(cluster: &Cluster) -> u64 {
    for id in cluster.ids() {
        if let Some(s) = cluster.member_status(id).await
            && s.leader != 0
        {
            return s.leader;
        }
    }
    cluster.ids()[0]
}

/// Sleeps `d`, in steps, until `stop`; whether it slept the whole time.
async fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Injects `faults` in turn until `stop`; everything is healed when it returns.
pub async fn inject(
    targets: Targets,
    faults: Vec<Fault>,
    interval: Duration,
    hold: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Injected>, String> {
    let started = Instant::now();
    let fw = match &targets.cluster {
        Some(_) if faults.contains(&Fault::Partition) => Some(Firewall::new("GW_CONFORMANCE")?),
        _ => None,
    };
    let mut done = Vec::new();
    let mut turn = 0usize;
    while !faults.is_empty() && sleep_unless(&stop, interval).await {
        let fault = faults[turn % faults.len()];
        let on_leader = (turn / faults.len()).is_multiple_of(2);
        turn += 1;
        let at_s = started.elapsed().as_secs_f64();
        let (what, took_effect) = match (fault, &targets.cluster) {
            (Fault::NodeRestart, _) => (
                "node-restart".to_string(),
                targets.node.restart().map_err(|e| e.to_string())?,
            ),
            (Fault::Kill, Some(c)) => {
                let mut c = c.lock().await;
                let l = leader(&c).await;
                let t = if on_leader {
                    l
                } else {
                    c.ids().into_iter().find(|i| *i != l).unwrap_or(l)
                };
                let was = c.is_running(t);
                c.kill(t);
                let took = was && !c.is_running(t);
                drop(c);
                sleep_unless(&stop, hold).await;
                if let Some(c) = &targets.cluster {
                    c.lock().await.spawn(t).map_err(|e| e.to_string())?;
                }
                (format!("kill member {t}{}", lead(t == l)), took)
            }
            (Fault::Partition, Some(c)) => {
                let fw = fw.as_ref().expect("made for partitions");
                let (t, ip, others) = {
                    let c = c.lock().await;
                    let l = leader(&c).await;
                    let t = if on_leader {
                        l
                    } else {
                        c.ids().into_iter().find(|i| *i != l).unwrap_or(l)
                    };
                    let host = |id: u64| {
                        let a = c.addr(id);
                        a.rsplit_once(':').map_or(a, |(h, _)| h).to_string()
                    };
                    let others: Vec<String> =
                        c.ids().into_iter().filter(|i| *i != t).map(host).collect();
                    (format!("{t}{}", lead(t == l)), host(t), others)
                };
                let mut took = true;
                for o in &others {
                    took &= fw.drop(&ip, o).is_ok() && fw.drop(o, &ip).is_ok();
                    took &= fw.is_dropped(&ip, o) && fw.is_dropped(o, &ip);
                }
                sleep_unless(&stop, hold).await;
                fw.heal()?;
                (format!("partition member {t} from the others"), took)
            }
            (_, None) => return Err("kill and partition need --members 3 or more".into()),
        };
        done.push(Injected {
            what,
            at_s,
            took_effect,
        });
    }
    Ok(done)
}

fn lead(is: bool) -> &'static str {
    if is { " (the leader)" } else { "" }
}

/// The report's header: which faults ran.
pub fn describe(faults: &[Injected], members: u64, interval: Duration, hold: Duration) -> String {
    let mut counts: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for f in faults {
        let kind = f.what.split_whitespace().next().unwrap_or("");
        let e = counts.entry(kind).or_default();
        e.0 += 1;
        e.1 += usize::from(f.took_effect);
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(k, (n, took))| format!("{k} ×{n} ({took} took effect)"))
        .collect();
    format!(
        "Run under faults, {members}-member store: {}; one every {} s, held {} s.",
        list.join(", "),
        interval.as_secs(),
        hold.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_counts_each_kind_and_what_took_effect() {
        let f = |what: &str, took_effect| Injected {
            what: what.into(),
            at_s: 0.0,
            took_effect,
        };
        let d = describe(
            &[
                f("kill member 3 (the leader)", true),
                f("partition member 1 from the others", true),
                f("kill member 1", false),
                f("node-restart", true),
            ],
            3,
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        assert_eq!(
            d,
            "Run under faults, 3-member store: kill ×2 (1 took effect), node-restart ×1 (1 took effect), partition ×1 (1 took effect); one every 5 s, held 3 s."
        );
        assert!("reboot".parse::<Fault>().is_err());
    }
}
