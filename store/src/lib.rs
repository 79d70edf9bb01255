//! gw-store: the replicated state machine of the config store: openraft type configuration, the
//! deterministic state (objects, revisions, watch history), and its sled-backed, durable log and
//! state machine storage.

mod logfile;
pub mod session;
pub mod state;
pub mod storage;
pub mod types;
