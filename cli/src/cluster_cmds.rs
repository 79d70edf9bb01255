//! `gwadm cluster ...`: status and membership of the store.

use crate::error::Result;
use gw_client::Client;
use gw_proto as pb;
use serde_json::json;

/// The voter sets in force, as `{1,2,3}`, or `{1} → {1,2} (joint)` during a change.
fn voters(s: &pb::ClusterStatus) -> String {
    let sets: Vec<String> = s
        .configs
        .iter()
        .map(|c| {
            let ids: Vec<String> = c.voters.iter().map(u64::to_string).collect();
            format!("{{{}}}", ids.join(","))
        })
        .collect();
    let mut out = sets.join(" → ");
    if sets.len() > 1 {
        out.push_str(" (joint: a change in progress)");
    }
    if !s.membership_committed {
        out.push_str(" (not committed yet)");
    }
    out
}

pub async fn status(client: &Client, json_out: bool) -> Result<()> {
    let s = client.cluster_status().await?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&s)).unwrap_or_default()
        );
    } else {
        print_status(&s);
    }
    Ok(())
}

/// The store's status as JSON (`-o json`).
pub fn status_json(s: &pb::ClusterStatus) -> serde_json::Value {
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "addr": m.addr, "peer_addr": m.peer_addr, "region": m.region, "role": m.role,
                   "applied_revision": m.applied_revision, "reachable": m.reachable, "raft_state": m.raft_state,
                   "lag": if m.lag < 0 { serde_json::Value::Null } else { json!(m.lag) }})
        })
        .collect();
    let configs: Vec<&Vec<u64>> = s.configs.iter().map(|c| &c.voters).collect();
    json!({"leader": s.leader, "revision": s.revision, "config_revision": s.config_revision,
           "term": s.term, "members": members, "configs": configs,
           "membership_committed": s.membership_committed})
}

/// The store's status as a table: leader, revision, term, voters, then one line per member.
pub fn print_status(s: &pb::ClusterStatus) {
    println!(
        "leader: {}   revision: {}   term: {}   voters: {}",
        s.leader,
        s.revision,
        s.term,
        voters(s)
    );
    println!(
        "{:<4} {:<24} {:<12} {:<8} {:<10} {:<9} {:<5}",
        "ID", "ADDRESS", "REGION", "ROLE", "STATE", "REVISION", "LAG"
    );
    for m in &s.members {
        let state = if m.reachable {
            m.raft_state.as_str()
        } else {
            "unreachable"
        };
        let rev = if m.reachable {
            m.applied_revision.to_string()
        } else {
            "-".into()
        };
        let lag = if m.lag < 0 {
            "-".into()
        } else {
            m.lag.to_string()
        };
        println!(
            "{:<4} {:<24} {:<12} {:<8} {:<10} {:<9} {:<5}",
            m.id, m.addr, m.region, m.role, state, rev, lag
        );
    }
}

fn print_members(r: &pb::MembershipResponse) {
    for m in &r.members {
        println!("{} {} {} {}", m.id, m.addr, m.role, m.region);
    }
}

pub async fn add_learner(
    client: &Client,
    id: u64,
    addr: &str,
    peer_addr: &str,
    region: &str,
) -> Result<()> {
    let r = client
        .add_learner(pb::AddLearnerRequest {
            id,
            addr: addr.into(),
            region: region.into(),
            peer_addr: peer_addr.into(),
        })
        .await?;
    print_members(&r);
    Ok(())
}

pub async fn promote(client: &Client, id: u64) -> Result<()> {
    let r = client.promote(id).await?;
    print_members(&r);
    Ok(())
}

pub async fn remove(client: &Client, id: u64) -> Result<()> {
    let r = client.remove(id).await?;
    print_members(&r);
    Ok(())
}

pub async fn compact_log(client: &Client, timeout: std::time::Duration) -> Result<()> {
    let s = client.compact_log(timeout).await?;
    println!(
        "member {} ({}): snapshot at index {}, log purged up to {}, last log index {}",
        s.id, s.addr, s.snapshot_index, s.purged_index, s.last_log_index
    );
    Ok(())
}
