//! Active health checks (`--health-check-interval-ms`): every interval, a TCP connection to each endpoint
//! address the routing table holds, from the node's upstream source address. An endpoint that does not
//! accept one within `--health-check-timeout-ms` is down until a later check connects: requests leave it
//! (as they leave an ejected one), a session bound to it fails over at once, and connections being
//! attempted to it are given up (`proxy::upstream::dial`).
//!
//! Passive health (a refused connection ejects the endpoint) finds an endpoint that refuses at once; an
//! endpoint that answers nothing at all — a host gone, a network partition dropping packets — would
//! hold every request sent to it for the whole connect timeout. This check finds it within an interval
//! and a timeout. Off by default: every node opens a connection per endpoint per interval.

use crate::proxy::connect_from;
use crate::table::Health;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How the checks run.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub interval: Duration,
    pub timeout: Duration,
    /// Where the checks' connections leave from (the upstream source address).
    pub source: Option<IpAddr>,
}

/// Checks the endpoints of `health` (made with `Health::with_checks`) every interval, for as long as the
/// node runs.
pub async fn run(health: Arc<Health>, checks: Checks) {
    let mut tick = tokio::time::interval(checks.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        round(&health, checks).await;
    }
}

/// One round: every endpoint held, at once. Returns how many were found down.
pub async fn round(health: &Health, checks: Checks) -> usize {
    let mut probes = tokio::task::JoinSet::new();
    for (addr, entry) in health.held() {
        probes.spawn(async move {
            let up = connect_from(checks.source, addr, checks.timeout)
                .await
                .is_ok();
            (addr, entry, up)
        });
    }
    let mut verdicts = Vec::new();
    while let Some(Ok((addr, entry, up))) = probes.join_next().await {
        verdicts.push((addr, entry, !up));
    }
    for (addr, down) in health.checked(&verdicts) {
        tracing::info!(%addr, up = !down, "health check: the endpoint changed state");
    }
    verdicts.iter().filter(|(_, _, down)| *down).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// An address nothing listens on: a port bound and released.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn an_endpoint_that_stops_accepting_is_down_until_a_check_connects_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = listener.local_addr().unwrap();
        let gone = closed_port();
        let health = Health::with_checks();
        let (up, down) = (health.of(up_addr), health.of(gone));
        let checks = Checks {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            source: None,
        };
        assert_eq!(round(&health, checks).await, 1);
        assert!(!up.is_down() && !up.ejected(0));
        assert!(down.is_down() && down.ejected(0), "down is out of rotation");
        // Attempts to reach it now are given up at once, by the dialer and by a waiter.
        tokio::time::timeout(Duration::from_secs(1), down.went_down())
            .await
            .expect("already down");
        drop(listener);
        let again = tokio::net::TcpListener::bind(gone).await.unwrap();
        assert_eq!(round(&health, checks).await, 1, "the first one is gone now");
        assert!(up.is_down() && !down.is_down() && !down.ejected(0));
        drop(again);
    }

    /// A listener that answers no more connections: its accept queue is full (never accepted), so the
    /// kernel drops new connections' SYNs, as a partition does. The listener and the connections
    /// that filled it must be kept.
    async fn unresponsive() -> (
        tokio::net::TcpListener,
        Vec<tokio::net::TcpStream>,
        SocketAddr,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filled = Vec::new();
        loop {
            let c = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), c).await {
                Ok(c) => filled.push(c.unwrap()),
                Err(_) => return (listener, filled, addr),
            }
            assert!(filled.len() < 64, "the accept queue never filled");
        }
    }

    #[tokio::test]
    async fn a_connection_being_attempted_is_given_up_when_the_check_finds_the_endpoint_down() {
        let health = Health::with_checks();
        let (_listener, _filled, addr) = unresponsive().await;
        let entry = health.of(addr);
        let attempt = tokio::spawn({
            let entry = entry.clone();
            async move { crate::proxy::dial(None, addr, &entry).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!attempt.is_finished(), "still connecting");
        health.checked(&[(addr, entry.clone(), true)]);
        let e = tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .expect("given up at once")
            .unwrap()
            .expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains("health check"), "{e}");
        // And a check of it times out: down.
        let checks = Checks {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            source: None,
        };
        health.checked(&[(addr, entry.clone(), false)]);
        assert_eq!(round(&health, checks).await, 1);
        assert!(entry.is_down());
    }
}
