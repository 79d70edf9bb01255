//! gw-jepsen: fault injection against real gw store processes. `cluster` starts, kills, pauses and
//! restarts `gw-api-server` processes (integration tests of other crates use it as their fixture);
//! `nemesis` injects the faults; `register`, `txn`, `watch` and `affinity` are the workloads; `history` records what happened;
//! `checker` judges it; `run` ties them together for the `gw-jepsen` binary.

pub mod affinity;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod register;
pub mod run;
pub mod timeline;
pub mod txn;
pub mod watch;
