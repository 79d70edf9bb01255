//! A gateway node in a region, over the simulated WAN (`gw_testkit::wan`; one store member per region):
//! it watches the member of its own region, moves to the nearest other member when that one dies, and
//! back when it returns; `/status` says which member it watches.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

mod support;

use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::wan::{Matrix, THREE_REGIONS, Wan};
use std::time::Duration;
use support::*;

/// The member address the node's `/status` says it watches.
async fn watching(node: &NodeProc) -> Option<String> {
    let r = get(node.admin, "admin", "/status", &[]).await.ok()?;
    r.json()["watching"].as_str().map(str::to_string)
}

async fn watches(node: &NodeProc, member: &str) {
    eventually(&format!("the node watches {member}"), || async {
        watching(node).await.as_deref() == Some(member)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_watches_its_regions_member_and_the_nearest_other_while_that_one_is_down() {
    let matrix = Matrix::parse(THREE_REGIONS).unwrap();
    let wan = Wan::new(matrix);
    let run = std::process::id() % 250;
    let opts = ClusterOptions::in_regions(
        format!("127.67.{run}."),
        &wan,
        &["us-east", "eu-west", "ap-south"],
    );
    let mut cluster = Cluster::start(3, opts).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    let s = reach(&cluster);
    // The node reaches the store from its own address, in eu-west.
    let node_ip = format!("127.67.{run}.20");
    wan.place(node_ip.parse().unwrap(), "eu-west");
    let node = NodeProc::start_with(
        &s,
        "127.0.0.1",
        "gw",
        &cluster.dir,
        "eu",
        &["--region", "eu-west", "--store-source-address", &node_ip],
    );
    let (us_east, eu_west) = (cluster.addr(1).to_string(), cluster.addr(2).to_string());
    watches(&node, &eu_west).await;
    // Its region's member down: the nearest other (us-east, 40 ms away; ap-south is 75 ms).
    cluster.kill(2);
    watches(&node, &us_east).await;
    // Back: the node returns to it.
    cluster.spawn(2).unwrap();
    watches(&node, &eu_west).await;
}
