//! gw-node: the gateway data plane. It watches the store's committed state, compiles each revision into
//! an immutable routing table that is swapped atomically, serves HTTP, HTTPS and gRPC traffic from it,
//! and reports status back through the store.

pub mod admin;
pub mod compile;
pub mod echo;
pub mod hostname;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod server;
pub mod session;
pub mod status;
pub mod store_client;
pub mod table;
pub mod watcher;
