//! The node's registration in the store (`gw_model::registry`): a `GatewayNode` lease named after the
//! node, written when a new routing table is installed and renewed every `RENEW` off the request path;
//! deleted when the node stops. `gwadm status` and `gwadm apply --wait` read it.

use crate::admin::NodeState;
use gw_client::Client;
use gw_proto as pb;
use std::sync::Arc;
use std::time::Duration;

/// How long a registration stays live without renewal.
pub const LEASE_SECONDS: u32 = 10;
/// How often it is renewed when nothing changes.
const RENEW: Duration = Duration::from_secs(3);
/// Each write gives a member this long before trying the next.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the registration current until the process ends.
pub async fn run(client: Client, state: Arc<NodeState>) {
    let client = client.with_call_timeout(CALL_TIMEOUT);
    let mut failing = false;
    loop {
        let doc = pb::Document {
            json: state
                .lease(LEASE_SECONDS)
                .to_object(&state.name)
                .to_string(),
            source: format!("node {} registration", state.name),
            index: 1,
        };
        match client.apply(vec![doc], false).await {
            Ok(_) if failing => {
                tracing::info!("registration renewed again");
                failing = false;
            }
            Ok(_) => {}
            // Said once per outage: the node serves on without it (it only shows in `gwadm status`).
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot renew this node's registration");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = state.table_changed.notified() => {}
        }
    }
}

/// Removes the registration of a node that stops (best effort: an expired lease says the same later).
pub async fn deregister(client: &Client, name: &str) {
    let req = pb::DeleteRequest {
        refs: vec![gw_client::object_ref(&gw_model::registry::key(name))],
        ignore_not_found: true,
        ..Default::default()
    };
    if let Err(e) = client.with_call_timeout(CALL_TIMEOUT).delete(req).await {
        tracing::info!(error = %e, "registration not removed; it expires by itself");
    }
}
