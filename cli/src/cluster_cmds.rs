//! `gwadm cluster ...`: status and membership of the store.

use crate::error::Result;
use gw_client::Client;
use gw_proto as pb;
use serde_json::json;

pub async fn status(client: &Client, json_out: bool) -> Result<()> {
    let s = client.cluster_status().await?;
    if json_out {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "addr": m.addr, "region": m.region, "role": m.role,
                       "applied_revision": m.applied_revision, "reachable": m.reachable, "raft_state": m.raft_state})
            })
            .collect();
        let out =
            json!({"leader": s.leader, "revision": s.revision, "term": s.term, "members": members});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    println!(
        "leader: {}   revision: {}   term: {}",
        s.leader, s.revision, s.term
    );
    println!(
        "{:<4} {:<24} {:<12} {:<8} {:<10} {:<9}",
        "ID", "ADDRESS", "REGION", "ROLE", "STATE", "REVISION"
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
        println!(
            "{:<4} {:<24} {:<12} {:<8} {:<10} {:<9}",
            m.id, m.addr, m.region, m.role, state, rev
        );
    }
    Ok(())
}

fn print_members(r: &pb::MembershipResponse) {
    for m in &r.members {
        println!("{} {} {} {}", m.id, m.addr, m.role, m.region);
    }
}

pub async fn add_learner(client: &Client, id: u64, addr: &str, region: &str) -> Result<()> {
    let r = client
        .add_learner(pb::AddLearnerRequest {
            id,
            addr: addr.into(),
            region: region.into(),
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
