//! gw-jepsen: fault injection against real gw store processes (started, killed, paused and restarted
//! through gw-testkit's `Cluster`). `nemesis` injects the faults; `register`, `txn`, `watch` and
//! `affinity` are the workloads; `lossyfs` is the disk that loses unsynced writes on a power cut;
//! `history` records what happened; `checker` judges it; `run` ties them
//! together for the `gw-jepsen` binary.

#![allow(clippy::disallowed_methods)] // a test tool: it reads clocks freely; no decision code of gw lives here

pub mod affinity;
pub mod checker;
pub mod history;
pub mod kube_api;
pub mod kube_sync;
pub mod lossyfs;
pub mod nemesis;
pub mod register;
pub mod routing;
pub mod run;
pub mod timeline;
pub mod txn;
pub mod watch;
