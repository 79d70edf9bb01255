//! `gwadm status`: the store's members and the gateway nodes (their registrations, `gw_model::registry`):
//! which revision each node serves, how far behind the store it is and since when. `--wait` on apply and
//! delete: until every node that was live when the write committed serves its revision.

use crate::cluster_cmds;
use crate::error::{Error, Result};
use crate::output;
use gw_client::{Client, clock};
use gw_model::kinds::GW_GROUP;
use gw_model::registry::{self, NodeLease};
use serde_json::{Value, json};
use std::time::Duration;

/// How often `--wait` reads the registrations.
const POLL: Duration = Duration::from_millis(20);

/// Every registered node, by name.
async fn nodes(client: &Client) -> Result<Vec<(String, NodeLease)>> {
    Ok(client
        .list_objects(GW_GROUP, registry::KIND, "")
        .await?
        .iter()
        .filter_map(NodeLease::from_object)
        .collect())
}

/// How many revisions a node's table is behind the store's config (0: it serves the latest).
fn behind(l: &NodeLease, config_revision: u64) -> u64 {
    match l.serves(config_revision) {
        true => 0,
        false => config_revision - l.revision_served,
    }
}

/// A node's state in a word: `live`, `expired` (not renewed within its lease: gone, frozen or cut
/// off), or what is wrong with a live one.
fn state(l: &NodeLease, now_ms: u64) -> &'static str {
    match () {
        _ if !l.live(now_ms) => "expired",
        _ if !l.store_connected => "store-unreachable",
        _ if !l.failed_sockets.is_empty() => "sockets-failed",
        _ => "live",
    }
}

pub async fn status(client: &Client, json_out: bool) -> Result<()> {
    let store = client.cluster_status().await?;
    let nodes = nodes(client).await?;
    let now = clock::now_ms();
    if json_out {
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|(name, l)| {
                json!({"name": name, "state": state(l, now), "lease": l,
                       "revisionsBehind": behind(l, store.config_revision),
                       "msSinceRenewal": now.saturating_sub(l.renew_time_ms),
                       "msServingRevision": now.saturating_sub(l.serving_since_ms)})
            })
            .collect();
        let out = json!({"store": cluster_cmds::status_json(&store), "nodes": nodes});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    cluster_cmds::print_status(&store);
    println!(
        "\nconfig revision: {} (the latest change gateway nodes serve)",
        store.config_revision
    );
    if nodes.is_empty() {
        println!("no gateway node has registered");
        return Ok(());
    }
    let mut rows = vec![
        [
            "NODE", "CLASS", "REGION", "SERVES", "CURRENT", "BEHIND", "SINCE", "RENEWED", "STATE",
        ]
        .map(String::from),
    ];
    for (name, l) in &nodes {
        rows.push([
            name.clone(),
            l.gateway_class.clone(),
            if l.region.is_empty() {
                "-".into()
            } else {
                l.region.clone()
            },
            l.revision_served.to_string(),
            l.current_through.to_string(),
            behind(l, store.config_revision).to_string(),
            output::ago(l.serving_since_ms),
            output::ago(l.renew_time_ms),
            state(l, now).into(),
        ]);
    }
    print!("{}", output::columns_of(&rows));
    Ok(())
}

/// Waits until every node live now serves `revision` (or `timeout` passes), and says so:
/// `applied at revision 1042; served by 6/6 nodes in 38 ms`. The nodes that did not make it are named,
/// and the command fails.
#[allow(clippy::disallowed_methods)] // a command's runtime: how long the wait took
pub async fn wait_served(
    client: &Client,
    verb: &str,
    revision: u64,
    timeout: Duration,
) -> Result<()> {
    let start = std::time::Instant::now();
    let now = clock::now_ms();
    let expected: Vec<String> = nodes(client)
        .await?
        .into_iter()
        .filter(|(_, l)| l.live(now))
        .map(|(n, _)| n)
        .collect();
    if expected.is_empty() {
        println!("{verb} at revision {revision}; no gateway node is registered and live");
        return Ok(());
    }
    loop {
        let now = clock::now_ms();
        let current = nodes(client).await?;
        let lagging: Vec<(&String, Option<&NodeLease>)> = expected
            .iter()
            .map(|n| (n, current.iter().find(|(c, _)| c == n).map(|(_, l)| l)))
            .filter(|(_, l)| !l.is_some_and(|l| l.live(now) && l.serves(revision)))
            .collect();
        let elapsed = start.elapsed();
        let served = expected.len() - lagging.len();
        if lagging.is_empty() || elapsed >= timeout {
            println!(
                "{verb} at revision {revision}; served by {served}/{} nodes in {} ms",
                expected.len(),
                elapsed.as_millis()
            );
        }
        if lagging.is_empty() {
            return Ok(());
        }
        if elapsed >= timeout {
            for (name, l) in &lagging {
                let why = match l {
                    None => "its registration is gone (the node stopped)".to_string(),
                    Some(l) if !l.live(now) => format!(
                        "its lease expired (last renewed {} ago, serving revision {})",
                        output::ago(l.renew_time_ms),
                        l.revision_served
                    ),
                    Some(l) => format!(
                        "serves revision {} (current through {})",
                        l.revision_served, l.current_through
                    ),
                };
                eprintln!("node {name}: {why}");
            }
            return Err(Error::Usage(format!(
                "{} of {} nodes did not serve revision {revision} within {} ms",
                lagging.len(),
                expected.len(),
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `--wait[=TIMEOUT]`: a Gateway API duration (`500ms`, `30s`, `1m`).
pub fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    gw_model::duration::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 500ms, 30s or 1m"))
}
