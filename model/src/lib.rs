//! gw-model: Gateway API v1.1 resources (standard and experimental channels) and the core Kubernetes
//! objects they refer to, as Rust types; parsing of multi-document YAML/JSON; validation that re-states
//! the CRD schemas and CEL rules; version conversion; the kind registry; the Kubernetes API's patch
//! formats and selectors. Pure: no I/O.

pub mod admit;
pub mod affinity;
pub mod core;
pub mod duration;
pub mod gateway;
pub mod grpcroute;
pub mod httproute;
pub mod kinds;
pub mod l4route;
pub mod managed;
pub mod meta;
pub mod parse;
pub mod patch;
pub mod policy;
pub mod registry;
pub mod route;
pub mod schema;
pub mod selector;
pub mod validate;

pub use admit::{Admitted, DocumentError, admit};
pub use kinds::{KindInfo, ObjectKey};
pub use parse::{Document, ParseError, parse_documents};
