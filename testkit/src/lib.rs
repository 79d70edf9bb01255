//! gw-testkit: what tests, the conformance harness, the fault-injection suite and `gwadm up` need to
//! stand gw up on one machine — the echo backends (HTTP/1.1, h2c, WebSocket; gRPC), store member processes
//! that can be killed, paused and restarted, a PKI for them, the workspace's binaries, free ports and
//! child processes that are stopped with their owner. Never linked by the data plane.

#![allow(clippy::disallowed_methods)] // test tooling: reads clocks freely; no decision code lives here

pub mod cluster;
pub mod echo;
pub mod firewall;
pub mod grpc_echo;
pub mod pki;
pub mod procs;
pub mod proxy;
pub mod wan;
