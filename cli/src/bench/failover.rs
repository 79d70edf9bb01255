//! Session failover across regions, for `gwadm bench regions`: a route with session persistence over
//! two backends; each round a client starts a session on the node of one region (round robin) and
//! comes back (so the session has its entry), its backend is removed from the EndpointSlice, and
//! the session's next request on that node is timed: the node proposes the replacement to the leader
//! and serves it once committed. From that acknowledgement, the node of every other region is timed
//! until it serves the session from the committed replacement (following the table, or asking the
//! store). The backend is then put back.

use super::{apply, bench_document, generation_route, header, http_exchange, served_by};
use crate::error::{Error, Result};
use gw_proto as pb;
use gw_proto::config_client::ConfigClient;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const HOST: &str = "sticky.example";
const COOKIE: &str = "sticky";

/// The two backends of the sticky route: echo servers on one port at two addresses.
pub struct Sticky {
    servers: Vec<gw_testkit::echo::EchoServer>,
    port: u16,
}

impl Sticky {
    pub async fn start(run: u32) -> Result<Sticky> {
        let port = gw_testkit::procs::free_port();
        let mut servers = Vec::new();
        for i in 1..=2u8 {
            servers.push(
                gw_testkit::echo::start(gw_testkit::echo::EchoConfig {
                    listen: SocketAddr::from(([127, 61, run as u8, i], port)),
                    pod: format!("sticky-{i}"),
                    namespace: "prop".into(),
                    h2c_only: false,
                    log: false,
                    tls: None,
                })
                .await
                .map_err(anyhow::Error::from)?,
            );
        }
        Ok(Sticky { servers, port })
    }

    fn pod(&self, i: usize) -> String {
        format!("sticky-{}", i + 1)
    }

    /// Service `prop/sticky`, its EndpointSlice with the backends not in `removed`, and the route
    /// with cookie session persistence (idle timeout well past a round).
    pub fn config(&self, parent: &Value, removed: Option<usize>) -> Vec<pb::Document> {
        let endpoints: Vec<Value> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != removed)
            .map(|(_, s)| json!({"addresses": [s.addr.ip().to_string()]}))
            .collect();
        vec![
            bench_document(
                1,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sticky", "namespace": "prop"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
            ),
            bench_document(
                2,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "sticky", "namespace": "prop", "labels": {"kubernetes.io/service-name": "sticky"}},
                       "addressType": "IPv4", "ports": [{"name": "http", "port": self.port}], "endpoints": endpoints}),
            ),
            bench_document(
                3,
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "sticky", "namespace": "prop"},
                       "spec": {"parentRefs": [parent], "hostnames": [HOST], "rules": [{
                           "sessionPersistence": {"sessionName": COOKIE, "idleTimeout": "10m"},
                           "backendRefs": [{"name": "sticky", "port": 80}]}]}}),
            ),
        ]
    }
}

/// What each slice change needs.
struct Change<'a> {
    nodes: &'a [SocketAddr],
    sticky: &'a Sticky,
    parent: &'a Value,
}

impl Change<'_> {
    /// Applies the slice without `removed`, with the next route generation, and waits until every
    /// node serves it.
    async fn apply(
        &self,
        leader: &mut ConfigClient<Channel>,
        removed: Option<usize>,
        generation: &mut usize,
    ) -> Result<()> {
        *generation += 1;
        let mut docs = self.sticky.config(self.parent, removed);
        docs.push(generation_route(*generation, self.parent));
        apply(leader, docs).await.map_err(|e| {
            Error::Usage(format!(
                "session failover: applying the slice: {}",
                e.message()
            ))
        })?;
        served_by(
            self.nodes.to_vec(),
            *generation as u64,
            Duration::from_secs(20),
        )
        .await
        .map(drop)
        .ok_or_else(|| {
            Error::Usage(format!(
                "session failover: generation {generation} not served within 20 s"
            ))
        })
    }
}

/// A request to the sticky route on the node at `addr`: the pod that answered and the session
/// cookie set, if any (`None`: no 200 answer).
async fn sticky_get(addr: SocketAddr, cookie: Option<&str>) -> Option<(String, Option<String>)> {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{cookie}Connection: close\r\n\r\n");
    let (head, body) = http_exchange(addr, &request).await.ok()?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let set = header(&head, "set-cookie").map(|v| v.split(';').next().unwrap_or("").to_string());
    let pod = serde_json::from_str::<Value>(&body).ok()?["pod"]
        .as_str()?
        .to_string();
    Some((pod, set))
}

/// The rows: per region, the failover committed (timed on the proposing node) and the session
/// followed there after another region's failover. `generation` is the route generation served
/// so far; each slice change is applied with the next one, so that `served_by` tells when every
/// node serves it.
pub async fn failovers(
    leader: &mut ConfigClient<Channel>,
    nodes: &[SocketAddr],
    sticky: &Sticky,
    parent: &Value,
    rounds: usize,
    generation: &mut usize,
) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>)> {
    let fail = |what: String| Error::Usage(format!("session failover: {what}"));
    let change = Change {
        nodes,
        sticky,
        parent,
    };
    change.apply(leader, None, generation).await?;
    let (mut committed, mut followed) =
        (vec![Vec::new(); nodes.len()], vec![Vec::new(); nodes.len()]);
    for round in 0..rounds {
        let at = round % nodes.len();
        // (A node serves the route without persistence until it has the token keys.)
        let start = Instant::now();
        let (pod, cookie) = loop {
            match sticky_get(nodes[at], None).await {
                Some((pod, Some(cookie))) => break (pod, cookie),
                _ if start.elapsed() > Duration::from_secs(20) => {
                    return Err(fail(format!(
                        "the node of region {at} started no session within 20 s"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        // Its client comes back: the node records the session, and its entry is committed.
        let id =
            gw_model::affinity::token::session_of(cookie.trim_start_matches(&format!("{COOKIE}=")))
                .ok_or_else(|| fail(format!("a cookie without a session: {cookie}")))?;
        let key = gw_model::affinity::key("prop", &id);
        let start = Instant::now();
        loop {
            sticky_get(nodes[at], Some(&cookie)).await;
            let entry = leader
                .get(pb::GetRequest {
                    target: Some(gw_client::object_ref(&key)),
                    options: None,
                })
                .await;
            if entry.is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(fail(format!("session {id} had no entry within 20 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bound = (0..2)
            .find(|i| sticky.pod(*i) == pod)
            .ok_or_else(|| fail(format!("an unknown pod {pod}")))?;
        change.apply(leader, Some(bound), generation).await?;
        let t0 = Instant::now();
        let (moved, _) = sticky_get(nodes[at], Some(&cookie))
            .await
            .ok_or_else(|| fail("the failover request was not answered".into()))?;
        let acknowledged = Instant::now();
        committed[at].push((acknowledged - t0).as_secs_f64() * 1e3);
        if moved == pod {
            return Err(fail(format!("served by the removed backend {pod}")));
        }
        let others = (0..nodes.len()).filter(|i| *i != at).map(|i| {
            let (cookie, moved) = (cookie.clone(), moved.clone());
            async move {
                loop {
                    match sticky_get(nodes[i], Some(&cookie)).await {
                        Some((p, _)) if p == moved => return (i, acknowledged.elapsed()),
                        _ if acknowledged.elapsed() > Duration::from_secs(20) => {
                            return (i, Duration::MAX);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        });
        for (i, took) in futures::future::join_all(others).await {
            if took == Duration::MAX {
                return Err(fail(format!(
                    "the node of region {i} did not follow within 20 s"
                )));
            }
            followed[i].push(took.as_secs_f64() * 1e3);
        }
        change.apply(leader, None, generation).await?;
    }
    for v in committed.iter_mut().chain(followed.iter_mut()) {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    Ok((committed, followed))
}
