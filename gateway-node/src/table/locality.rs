//! Where an upstream's requests go among its endpoints: to the nearest locality first — this node's
//! zone (or the endpoints that topology hints give its zone), then its region, then anywhere — and away
//! from endpoints that refused a connection (passive health: such an endpoint is ejected for a while,
//! longer each time it fails again) or that the active health check found down (`health_check.rs`:
//! out until a check finds it up again). Traffic spills to the next locality in proportion to the local
//! share that is unhealthy, as Envoy's priority levels do with their overprovisioning factor (1.4): a
//! locality with at least 5 of 7 endpoints healthy keeps all of its traffic, and one with none keeps
//! none. When every endpoint is ejected, all of them are tried again (rather than refusing every request).
//! Pure: the time and the draws are passed in.

use super::uniform_below;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// Where a node or an endpoint is ("" where not known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
}

/// One endpoint as the compiler found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    /// The pod behind it (uid or name; "" if unknown).
    pub pod: String,
    pub locality: Locality,
    /// Topology hints: the zones whose clients should use it (empty: no hints).
    pub for_zones: Vec<String>,
}

/// Localities, nearest first.
pub const TIERS: usize = 3;

/// How near an endpoint is to a node at `node`: 0 its zone (by the endpoint's hints when it has some,
/// else by its zone; in the node's region when both regions are known), 1 its region, 2 elsewhere. A
/// node that knows nothing of where it is puts every endpoint in one tier.
pub fn tier(node: &Locality, e: &EndpointInfo) -> usize {
    let same_region = !node.region.is_empty() && e.locality.region == node.region;
    let region_unknown = node.region.is_empty() || e.locality.region.is_empty();
    let local_zone = !node.zone.is_empty()
        && (same_region || region_unknown)
        && if e.for_zones.is_empty() {
            e.locality.zone == node.zone
        } else {
            e.for_zones.contains(&node.zone)
        };
    if local_zone {
        0
    } else if same_region {
        1
    } else {
        2
    }
}

/// Ejection after the first refused connection; doubled for each further one in a row.
pub const EJECTION_BASE_MS: u64 = 2_000;
/// The longest ejection.
pub const EJECTION_MAX_MS: u64 = 30_000;

/// What a node observed of one endpoint address.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    ejected_until_ms: AtomicU64,
    /// Refused connections in a row.
    failures: AtomicU32,
    /// The active health check's last verdict: down.
    down: AtomicBool,
    /// Whether the health check runs (else nothing waits on `went_down`).
    checked: bool,
    /// Woken when the health check finds the endpoint down.
    went_down: Notify,
}

impl EndpointHealth {
    /// Whether the endpoint is out of rotation at `now_ms`: the health check found it down, or it is
    /// ejected (an ejection reaching further than the longest one is a clock that went back: it has
    /// ended).
    pub fn ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        self.is_down() || (now_ms < until && until - now_ms <= EJECTION_MAX_MS)
    }

    /// Whether the active health check last found the endpoint down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Returns once the health check finds the endpoint down (at once if it is; never without health
    /// checks, and then at no cost to the request that waits on it).
    pub async fn went_down(&self) {
        if !self.checked {
            return std::future::pending().await;
        }
        loop {
            let woken = self.went_down.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_down() {
                return;
            }
            woken.await;
        }
    }
}

/// The health of every endpoint address this node sends to, kept across routing-table rebuilds (an
/// upstream holds its endpoints' entries; entries no upstream holds are dropped).
#[derive(Debug, Default)]
pub struct Health {
    endpoints: Mutex<HashMap<SocketAddr, Weak<EndpointHealth>>>,
    /// The end of the latest ejection: before it, some endpoint may be ejected; after it, none is (the
    /// fast path of every pick).
    any_until_ms: AtomicU64,
    /// Endpoints the health check found down in its last round.
    down: AtomicUsize,
    /// Whether a health check runs over these endpoints.
    checked: bool,
}

impl Health {
    /// The endpoints of a node whose health check runs (`health_check::run`).
    pub fn with_checks() -> Health {
        Health {
            checked: true,
            ..Health::default()
        }
    }

    /// The entry of `addr` (the same one for as long as an upstream holds it).
    pub fn of(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        let mut m = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = m.get(&addr).and_then(Weak::upgrade) {
            return h;
        }
        if m.len() >= 64 && m.len().is_power_of_two() {
            m.retain(|_, w| w.strong_count() > 0);
        }
        let h = Arc::new(EndpointHealth {
            checked: self.checked,
            ..EndpointHealth::default()
        });
        m.insert(addr, Arc::downgrade(&h));
        h
    }

    /// The endpoints out of rotation at `now_ms` (ejected or down), for `/status`.
    pub fn ejected(&self, now_ms: u64) -> Vec<String> {
        self.listed(|h| h.ejected(now_ms))
    }

    /// The endpoints the health check last found down, for `/status`.
    pub fn down(&self) -> Vec<String> {
        self.listed(EndpointHealth::is_down)
    }

    fn listed(&self, which: impl Fn(&EndpointHealth) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .held()
            .into_iter()
            .filter(|(_, h)| which(h))
            .map(|(a, _)| a.to_string())
            .collect();
        v.sort();
        v
    }

    /// Whether some endpoint may be ejected (or down) at `now_ms`.
    fn any_ejected(&self, now_ms: u64) -> bool {
        let until = self.any_until_ms.load(Ordering::Relaxed);
        self.down.load(Ordering::Relaxed) > 0
            || (now_ms < until && until - now_ms <= EJECTION_MAX_MS)
    }

    /// The endpoint addresses some upstream holds, with their entries.
    pub fn held(&self) -> Vec<(SocketAddr, Arc<EndpointHealth>)> {
        let m = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter_map(|(a, w)| Some((*a, w.upgrade()?)))
            .collect()
    }

    /// A health check round's verdicts (endpoint, down), on every endpoint held. All of them are
    /// recorded before any attempt waiting on an endpoint found down is woken (and given up): what
    /// such a request does next sees the whole round, not an endpoint found down a moment later.
    /// Returns the endpoints whose state changed, with their new one.
    pub fn checked(
        &self,
        verdicts: &[(SocketAddr, Arc<EndpointHealth>, bool)],
    ) -> Vec<(SocketAddr, bool)> {
        let changed: Vec<&(SocketAddr, Arc<EndpointHealth>, bool)> = verdicts
            .iter()
            .filter(|(_, e, down)| e.down.swap(*down, Ordering::Relaxed) != *down)
            .collect();
        self.down.store(
            verdicts.iter().filter(|(_, _, down)| *down).count(),
            Ordering::Relaxed,
        );
        for (_, e, _) in changed.iter().filter(|(_, _, down)| *down) {
            e.went_down.notify_waiters();
        }
        changed.iter().map(|(a, _, down)| (*a, *down)).collect()
    }

    /// `e` refused a connection at `now_ms`: eject it, for longer than last time if it had failed
    /// already.
    pub fn failed(&self, e: &EndpointHealth, now_ms: u64) {
        let n = e.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let until = now_ms + (EJECTION_BASE_MS << n).min(EJECTION_MAX_MS);
        e.ejected_until_ms.store(until, Ordering::Relaxed);
        self.any_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// `e` accepted a connection.
    pub fn succeeded(e: &EndpointHealth) {
        if e.failures.load(Ordering::Relaxed) != 0 {
            e.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// What a node's compilation needs to place requests: where the node is, and what it saw of endpoints.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub locality: Locality,
    pub health: Arc<Health>,
}

/// An upstream's endpoints in tiers: ordered nearest first, `ends[t]` the end of tier `t`.
#[derive(Debug)]
pub struct Tiers {
    ends: [usize; TIERS],
    health: Vec<Arc<EndpointHealth>>,
    registry: Arc<Health>,
}

impl Tiers {
    /// Orders `endpoints` by tier (then as given) and returns the tiers.
    pub fn sort(endpoints: &mut [EndpointInfo], placement: &Placement) -> Tiers {
        endpoints.sort_by_key(|e| tier(&placement.locality, e));
        let mut ends = [0; TIERS];
        for e in endpoints.iter() {
            for end in &mut ends[tier(&placement.locality, e)..] {
                *end += 1;
            }
        }
        Tiers {
            ends,
            health: endpoints
                .iter()
                .map(|e| placement.health.of(e.addr))
                .collect(),
            registry: placement.health.clone(),
        }
    }

    fn range(&self, t: usize) -> std::ops::Range<usize> {
        (if t == 0 { 0 } else { self.ends[t - 1] })..self.ends[t]
    }

    /// The endpoint for a request: `rr` a round-robin counter, `draw` uniform over `u64`; `exclude`
    /// an endpoint not to choose. `None` when there is no endpoint (but `exclude`).
    pub fn pick(&self, rr: usize, draw: u64, now_ms: u64, exclude: Option<usize>) -> Option<usize> {
        let n = self.health.len();
        if exclude.is_none() && !self.registry.any_ejected(now_ms) {
            let r = (0..TIERS).map(|t| self.range(t)).find(|r| !r.is_empty())?;
            return Some(r.start + rr % r.len());
        }
        let usable = |i: usize| Some(i) != exclude && !self.health[i].ejected(now_ms);
        let healthy: [usize; TIERS] =
            std::array::from_fn(|t| self.range(t).filter(|&i| usable(i)).count());
        if healthy.iter().all(|&h| h == 0) {
            // Every endpoint ejected: try them all (but the excluded one), in turn.
            let others = n - usize::from(exclude.is_some_and(|x| x < n));
            if others == 0 {
                return None;
            }
            let k = rr % others;
            return Some(match exclude {
                Some(x) if k >= x => k + 1,
                _ => k,
            });
        }
        let totals: [usize; TIERS] = std::array::from_fn(|t| self.range(t).len());
        let t = spill(&totals, &healthy, draw);
        let r = self.range(t);
        let (start, len) = (r.start, r.len());
        (0..len)
            .map(|k| start + (rr + k) % len)
            .find(|&i| usable(i))
    }

    /// Endpoint `i` refused a connection at `now_ms`.
    pub fn failed(&self, i: usize, now_ms: u64) {
        self.registry.failed(&self.health[i], now_ms);
    }

    /// Endpoint `i` accepted a connection.
    pub fn succeeded(&self, i: usize) {
        Health::succeeded(&self.health[i]);
    }

    /// What the node observed of endpoint `i`.
    pub fn health(&self, i: usize) -> &EndpointHealth {
        &self.health[i]
    }
}

/// The tier a request goes to, given each tier's endpoints and healthy endpoints (at least one healthy
/// somewhere): each tier takes what its health allows (healthy share × 1.4, at most 100 %) of what the
/// nearer tiers left, and the shares are scaled up when all together fall short of 100 %.
pub fn spill(totals: &[usize], healthy: &[usize], draw: u64) -> usize {
    let mut left = 1000u64;
    let loads: Vec<u64> = totals
        .iter()
        .zip(healthy)
        .map(|(&total, &h)| {
            let health = if total == 0 {
                0
            } else {
                (1400 * h as u64 / total as u64).min(1000)
            };
            let load = health.min(left);
            left -= load;
            load
        })
        .collect();
    let sum: u64 = loads.iter().sum();
    let mut r = uniform_below(draw, sum);
    for (t, &l) in loads.iter().enumerate() {
        if r < l {
            return t;
        }
        r -= l;
    }
    unreachable!("r < sum of the loads")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(region: &str, zone: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
        }
    }

    fn endpoint(i: u8, region: &str, zone: &str) -> EndpointInfo {
        EndpointInfo {
            addr: SocketAddr::from(([10, 0, 0, i], 80)),
            pod: String::new(),
            locality: at(region, zone),
            for_zones: Vec::new(),
        }
    }

    #[test]
    fn tiers_by_zone_hints_and_region() {
        let node = at("us", "a");
        assert_eq!(tier(&node, &endpoint(1, "us", "a")), 0);
        assert_eq!(tier(&node, &endpoint(1, "", "a")), 0, "region unknown");
        assert_eq!(
            tier(&node, &endpoint(1, "eu", "a")),
            2,
            "zone a of another region"
        );
        assert_eq!(tier(&node, &endpoint(1, "us", "b")), 1);
        assert_eq!(tier(&node, &endpoint(1, "eu", "c")), 2);
        let mut hinted = endpoint(1, "us", "b");
        hinted.for_zones = vec!["a".into()];
        assert_eq!(tier(&node, &hinted), 0, "hinted for zone a");
        hinted.for_zones = vec!["c".into()];
        assert_eq!(tier(&node, &hinted), 1, "hinted for zone c, in the region");
        assert_eq!(
            tier(&at("us", "b"), &hinted),
            1,
            "in zone b, hinted elsewhere"
        );
        assert_eq!(tier(&Locality::default(), &endpoint(1, "us", "a")), 2);
    }

    #[test]
    fn spill_follows_the_healthy_share() {
        let share = |totals: &[usize], healthy: &[usize]| {
            let mut per = vec![0u64; totals.len()];
            for k in 0..1000u64 {
                per[spill(totals, healthy, k * (u64::MAX / 1000) + u64::MAX / 2000)] += 1;
            }
            per
        };
        assert_eq!(share(&[4, 4, 4], &[4, 4, 4]), vec![1000, 0, 0]);
        assert_eq!(
            share(&[7, 4, 4], &[5, 4, 4]),
            vec![1000, 0, 0],
            "5/7 × 1.4 = 100 %"
        );
        assert_eq!(share(&[4, 4, 4], &[2, 4, 4]), vec![700, 300, 0]);
        assert_eq!(share(&[4, 4, 4], &[0, 1, 4]), vec![0, 350, 650]);
        assert_eq!(
            share(&[0, 4, 4], &[0, 4, 4]),
            vec![0, 1000, 0],
            "no local endpoints"
        );
        assert_eq!(
            share(&[4, 0, 4], &[1, 0, 1]),
            vec![500, 0, 500],
            "35 % + 35 %, scaled to 100 %"
        );
    }

    #[test]
    fn picks_nearest_and_leaves_the_ejected() {
        let placement = Placement {
            locality: at("us", "a"),
            health: Arc::new(Health::default()),
        };
        let mut eps = vec![
            endpoint(1, "eu", "c"),
            endpoint(2, "us", "b"),
            endpoint(3, "us", "a"),
            endpoint(4, "us", "a"),
        ];
        let tiers = Tiers::sort(&mut eps, &placement);
        assert_eq!(
            eps.iter()
                .map(|e| e.locality.zone.as_str())
                .collect::<Vec<_>>(),
            ["a", "a", "b", "c"]
        );
        let now = 10_000_000;
        let picks: Vec<usize> = (0..4)
            .map(|rr| tiers.pick(rr, 0, now, None).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1], "round robin within zone a");
        assert_eq!(tiers.pick(0, 0, now, Some(0)), Some(1), "excluded");
        tiers.failed(0, now);
        tiers.failed(1, now);
        assert_eq!(
            tiers.pick(0, 0, now + 1, None),
            Some(2),
            "zone a ejected: zone b"
        );
        assert_eq!(tiers.pick(0, 0, now + 1, Some(2)), Some(3), "then the rest");
        assert_eq!(
            tiers.pick(0, 0, now + EJECTION_BASE_MS, None),
            Some(0),
            "the ejection has ended"
        );
        tiers.failed(0, now + EJECTION_BASE_MS);
        assert_eq!(
            tiers.pick(0, 0, now + 3 * EJECTION_BASE_MS - 1, None),
            Some(1),
            "a second failure in a row ejects for twice as long"
        );
        tiers.succeeded(0);
        tiers.failed(0, now + 10 * EJECTION_BASE_MS);
        assert_eq!(
            tiers.pick(0, 0, now + 11 * EJECTION_BASE_MS, None),
            Some(0),
            "a success in between: back to the shortest ejection"
        );
        for i in 0..4 {
            tiers.failed(i, now + 20 * EJECTION_BASE_MS);
        }
        let all: Vec<usize> = (0..4)
            .map(|rr| {
                tiers
                    .pick(rr, 0, now + 20 * EJECTION_BASE_MS, None)
                    .unwrap()
            })
            .collect();
        assert_eq!(all, [0, 1, 2, 3], "every endpoint ejected: all tried");
        assert!(
            !tiers.health[0].ejected(now + 20 * EJECTION_BASE_MS - 3_600_000),
            "a clock gone back an hour ends ejections"
        );
    }

    #[test]
    fn health_outlives_a_rebuild_and_no_more() {
        let health = Health::default();
        let addr = SocketAddr::from(([10, 0, 0, 1], 80));
        let h = health.of(addr);
        health.failed(&h, 5);
        assert!(health.of(addr).ejected(6), "the same entry while held");
        drop(h);
        assert!(
            !health.of(addr).ejected(6),
            "a fresh entry once none holds it"
        );
    }
}
