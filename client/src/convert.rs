//! Conversions between the model's names for objects and the wire's.

use gw_model::ObjectKey;
use gw_proto as pb;

/// Largest gRPC message sent or accepted by every part (snapshot chunks, big lists, applies).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest apply (encoded request) the store takes. One apply is one Raft entry, and openraft 0.9 gives
/// each replication call one heartbeat interval to be sent, stored and synced: an entry must be small
/// enough for that: 1.5 MiB, etcd's default limit on a request (`--max-request-bytes`).
pub const MAX_APPLY_BYTES: usize = 3 * 512 * 1024;

pub fn object_ref(k: &ObjectKey) -> pb::ObjectRef {
    pb::ObjectRef {
        group: k.group.clone(),
        kind: k.kind.clone(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    }
}

/// The key a reference names, as it is (no kind resolution, no namespace defaulting).
pub fn key_of_ref(r: &pb::ObjectRef) -> ObjectKey {
    ObjectKey::new(&r.group, &r.kind, &r.namespace, &r.name)
}

/// A reference to every object of a kind (a watch or list filter).
pub fn kind_ref(group: &str, kind: &str) -> pb::ObjectRef {
    pb::ObjectRef {
        group: group.into(),
        kind: kind.into(),
        namespace: String::new(),
        name: String::new(),
    }
}
