//! gw-jepsen: fault injection against real gw store processes. The `cluster` module starts, kills,
//! pauses and restarts `gw-api-server` processes; integration tests of other crates use it as their
//! cluster fixture.

pub mod cluster;
