//! gw-node: the gateway data plane. It watches the store's committed state, compiles each revision into
//! an immutable routing table that is swapped atomically, serves HTTP, HTTPS and gRPC traffic from it,
//! and reports status back through the store.
//!
//! Layers, each using only those above it: `snapshot`, `hostname`, `metrics`, `rng` → `access_log`,
//! `table` (the
//! compiled routing table, session persistence config included) → `compile` (pure: snapshot → table
//! and statuses) → `watcher`, `session` (decision pure, runtime beside it), `status` → `proxy` (pure
//! phases, runtime beside them) → `health_check`, `server`, `admin` → `registry` → `node` (the
//! composition root).
//! `tests/layers.rs` checks that no module imports one that imports it back.

pub mod access_log;
pub mod admin;
pub mod compile;
pub mod health_check;
pub mod hostname;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod registry;
pub mod rng;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod table;
pub mod watcher;
