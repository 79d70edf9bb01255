//! The committed objects at one revision: what the watch publishes, the compiler reads and the node
//! persists for static stability.

use gw_model::ObjectKey;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub objects: BTreeMap<ObjectKey, Arc<Value>>,
}
