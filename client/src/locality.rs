//! Which store member a client in a region talks to (gateway nodes and kube sync agents with
//! `--region`): every member is probed (its own status, asked of it alone, timed), and the nearest of
//! the client's region is chosen, else the nearest other, without flapping between members of about
//! the same distance.

use crate::Client;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A member (an index into a client's servers), or none, shared between tasks: the one a watch is
/// on, the one a prober prefers.
#[derive(Debug, Default)]
pub struct MemberCell(AtomicUsize);

impl MemberCell {
    pub fn get(&self) -> Option<usize> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn set(&self, member: Option<usize>) {
        self.0.store(member.map_or(0, |i| i + 1), Ordering::Relaxed);
    }
}

/// One probe of a member: its region and the round trip of the probe; `None` when it did not answer.
pub type Probe = Option<(String, Duration)>;

/// The member to talk to (watch from), given probes of every member: the nearest of the client's own
/// region when one answers, else the nearest other. The current member stays unless it stopped
/// answering, a member of the client's region answers while it is not one, or (both outside the
/// region) another answers in less than 80 % of its round trip — no flapping between members of
/// about the same distance.
pub fn choose(region: &str, probes: &[Probe], current: Option<usize>) -> Option<usize> {
    let answered = |i: usize| {
        probes
            .get(i)
            .cloned()
            .flatten()
            .map(|(r, rtt)| (i, r == region, rtt))
    };
    let nearest = |own: bool| {
        (0..probes.len())
            .filter_map(answered)
            .filter(|(_, o, _)| *o == own)
            .min_by_key(|(_, _, rtt)| *rtt)
    };
    let best = nearest(true).or_else(|| nearest(false))?;
    match current.and_then(answered) {
        Some((c, own, rtt)) if own == best.1 && (own || best.2 * 5 >= rtt * 4) => Some(c),
        _ => Some(best.0),
    }
}

/// How often the members are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes every member of `client` once, at the same time (each given `PROBE_EVERY`).
#[allow(clippy::disallowed_methods)] // runtime: times the probes
pub async fn probe(client: &Client) -> Vec<Probe> {
    futures::future::join_all((0..client.servers().len()).map(|i| async move {
        let t0 = Instant::now();
        match tokio::time::timeout(PROBE_EVERY, client.member_status_at(i)).await {
            Ok(Ok(s)) => Some((s.region, t0.elapsed())),
            _ => None,
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_prefers_its_region_then_the_nearest_without_flapping() {
        let ms = Duration::from_millis;
        let p = |r: &str, t: u64| Some((r.to_string(), ms(t)));
        // us-east 80 ms, eu-west (ours) 5 ms, ap-south 150 ms.
        let all = vec![p("us-east", 80), p("eu-west", 5), p("ap-south", 150)];
        assert_eq!(choose("eu-west", &all, None), Some(1));
        assert_eq!(
            choose("eu-west", &all, Some(0)),
            Some(1),
            "back to its region"
        );
        // Its region's member gone: the nearest other, and it stays there.
        let down = vec![p("us-east", 80), None, p("ap-south", 150)];
        assert_eq!(choose("eu-west", &down, Some(1)), Some(0));
        assert_eq!(
            choose("eu-west", &down, Some(2)),
            Some(0),
            "80 ms is well under 150"
        );
        let close = vec![p("us-east", 80), None, p("ap-south", 95)];
        assert_eq!(
            choose("eu-west", &close, Some(2)),
            Some(2),
            "not much nearer: no move"
        );
        // Two of its own region: stays on the one it has.
        let two = vec![p("eu-west", 9), p("eu-west", 5)];
        assert_eq!(choose("eu-west", &two, Some(0)), Some(0));
        assert_eq!(choose("eu-west", &[None, None], Some(0)), None);
        // A node of a region without members: the nearest.
        assert_eq!(choose("sa-east", &all, None), Some(1));
    }
}
