//! gw-node: the gateway data plane. It watches the store's committed state, compiles each revision into
//! an immutable routing table that is swapped atomically, serves HTTP, HTTPS and gRPC traffic from it,
//! and reports status back through the store.

pub mod compile;
pub mod hostname;
pub mod table;
