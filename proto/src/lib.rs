//! gw-proto: the wire protocol of gw (client API, cluster administration, Raft transport), generated
//! from `proto/gw.proto` by tonic/prost.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("gw.v1");
