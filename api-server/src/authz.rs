//! Who may do what — the rules every member applies on every call (DESIGN.md, Security), least
//! privilege by role:
//!
//! - members: the Raft transport, and only for the member id their certificate names; read indexes;
//! - gateway nodes: read the config; write the status of their own class's Gateways, of
//!   GatewayClasses (a controller answers for every class that names it, not only the one it serves)
//!   and of the routes and policies (whose status is kept per parent controller); record session
//!   activity and propose failovers; create the session keys when none exist; renew their class's
//!   status-writer lease and their own registration (`GatewayNode`, named as their certificate);
//! - kube sync agents: read; create, change and delete only objects whose origin is their cluster, and
//!   of gw's own kinds only their cluster's report;
//! - admins: everything but the Raft transport.
//!
//! Pure: the caller's identity and what it asks for go in, a refusal that names both comes out.

use gw_client::Identity;
use gw_model::ObjectKey;
use gw_model::affinity::token::{KEYS_NAMESPACE, KEYS_SECRET};
use gw_model::kinds::{GATEWAY_GROUP, GW_GROUP};
use gw_model::registry;
use std::fmt;

/// The label recording which Kubernetes cluster an object comes from (set by the member on a kube sync
/// agent's writes).
pub use gw_model::kinds::ORIGIN_LABEL;

/// An object a write touches: where it comes from now (if it exists), and where the write says it
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    pub key: ObjectKey,
    /// `None`: the object does not exist; `Some(None)`: it has no origin.
    pub current_origin: Option<Option<String>>,
    /// The origin the written document declares (`None` for deletes, or none declared).
    pub new_origin: Option<String>,
}

/// An object whose status is written, with the GatewayClass it belongs to (for Gateways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub key: ObjectKey,
    pub class: Option<String>,
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create or change objects (`apply`) or delete them (`delete`), in one transaction.
    Write {
        verb: &'static str,
        targets: Vec<WriteTarget>,
    },
    UpdateStatus(Vec<StatusTarget>),
    /// Get, list or watch objects.
    Read,
    /// Session activity and failover proposals.
    RecordSessions,
    EvictSessions,
    EnsureSessionKeys,
    RotateSessionKeys,
    ClusterStatus,
    ChangeMembership,
    CompactLog,
    ReadIndex,
    /// A Raft message sent as this member.
    Raft {
        member: u64,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Write { verb, targets } => {
                let names: Vec<String> = targets.iter().map(|t| t.key.to_string()).collect();
                write!(f, "{verb} {}", names.join(", "))
            }
            Action::UpdateStatus(targets) => {
                let names: Vec<String> = targets.iter().map(|t| t.key.to_string()).collect();
                write!(f, "update the status of {}", names.join(", "))
            }
            Action::Read => f.write_str("read objects"),
            Action::RecordSessions => f.write_str("record session activity"),
            Action::EvictSessions => f.write_str("evict sessions"),
            Action::EnsureSessionKeys => f.write_str("create the session keys"),
            Action::RotateSessionKeys => f.write_str("rotate the session keys"),
            Action::ClusterStatus => f.write_str("read the cluster's status"),
            Action::ChangeMembership => f.write_str("change the cluster's membership"),
            Action::CompactLog => f.write_str("compact a member's log"),
            Action::ReadIndex => f.write_str("ask for a read index"),
            Action::Raft { member } => write!(f, "send Raft messages as member {member}"),
        }
    }
}

impl Action {
    /// A short name for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Write { verb, .. } => verb,
            Action::UpdateStatus(_) => "update-status",
            Action::Read => "read",
            Action::RecordSessions => "record-sessions",
            Action::EvictSessions => "evict-sessions",
            Action::EnsureSessionKeys => "ensure-session-keys",
            Action::RotateSessionKeys => "rotate-session-keys",
            Action::ClusterStatus => "cluster-status",
            Action::ChangeMembership => "change-membership",
            Action::CompactLog => "compact-log",
            Action::ReadIndex => "read-index",
            Action::Raft { .. } => "raft",
        }
    }
}

/// A refusal: who asked, for what, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub who: Identity,
    pub action: Action,
    pub why: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} may not {}: {}", self.who, self.action, self.why)
    }
}

pub fn authorize(who: &Identity, action: &Action) -> Result<(), Denied> {
    let deny = |why: String| {
        Err(Denied {
            who: who.clone(),
            action: action.clone(),
            why,
        })
    };
    match (who, action) {
        (Identity::Member(id), Action::Raft { member }) if id == member => Ok(()),
        (Identity::Member(id), Action::Raft { .. }) => deny(format!(
            "a member sends Raft messages as itself (member {id}) only"
        )),
        (_, Action::Raft { .. }) => deny("only store members speak Raft".into()),
        (Identity::Member(_), Action::ReadIndex | Action::Read | Action::ClusterStatus) => Ok(()),
        (Identity::Member(_), _) => {
            deny("members act on their own behalf only for Raft, reads and read indexes".into())
        }
        (_, Action::ReadIndex) => deny("read indexes are asked for by members".into()),
        (Identity::Admin { .. }, _) => Ok(()),
        (_, Action::Read | Action::ClusterStatus) => Ok(()),
        (Identity::Node { .. }, Action::RecordSessions | Action::EnsureSessionKeys) => Ok(()),
        (Identity::Node { class, .. }, Action::UpdateStatus(targets)) => {
            match targets.iter().find(|t| !node_may_set_status(class, t)) {
                Some(t) => deny(format!(
                    "{} belongs to GatewayClass {:?}, not this node's {class:?}",
                    t.key,
                    t.class.as_deref().unwrap_or("")
                )),
                None => Ok(()),
            }
        }
        (Identity::Node { class, name }, Action::Write { verb, targets }) => {
            let lease = registry::lease_key(class);
            let own = registry::key(name);
            let allowed = |t: &WriteTarget| {
                (*verb == "apply" && t.key == lease)
                    || (matches!(*verb, "apply" | "delete") && t.key == own)
            };
            match targets.iter().find(|t| !allowed(t)) {
                Some(_) => deny(format!(
                    "a gateway node writes status, session activity, its class's lease ({lease}) and \
                     its own registration ({own}) only"
                )),
                None => Ok(()),
            }
        }
        (Identity::KubeSync { cluster }, Action::Write { targets, .. }) => {
            for t in targets {
                // Of gw's own bookkeeping, an agent writes its cluster's report only.
                if t.key.group == GW_GROUP && t.key != registry::report_key(cluster) {
                    return deny(format!(
                        "{} is gw's own; an agent writes its report ({}) only",
                        t.key,
                        registry::report_key(cluster)
                    ));
                }
                match &t.current_origin {
                    Some(Some(o)) if o != cluster => {
                        return deny(format!("{} belongs to cluster {o:?}", t.key));
                    }
                    Some(None) => {
                        return deny(format!("{} belongs to no cluster (an admin's)", t.key));
                    }
                    _ => {}
                }
                if let Some(o) = &t.new_origin
                    && o != cluster
                {
                    return deny(format!("{} would belong to cluster {o:?}", t.key));
                }
            }
            Ok(())
        }
        (Identity::Node { .. } | Identity::KubeSync { .. }, _) => {
            deny(format!("that is for admins, not for a {}", who.role()))
        }
    }
}

/// Whether a node of `class` may write this status: its own class's Gateways, and any other kind.
fn node_may_set_status(class: &str, t: &StatusTarget) -> bool {
    match (t.key.group.as_str(), t.key.kind.as_str()) {
        (GATEWAY_GROUP, "Gateway") => t.class.as_deref() == Some(class),
        _ => true,
    }
}

/// Whether a caller sees the values of a Secret: gateway nodes do (certificates, session keys); an
/// admin does when asking for them (`--show-secret-values`), but for the session keys, which no person
/// ever needs; nobody else does.
pub fn secret_values_visible(who: &Identity, asked: bool, key: &ObjectKey) -> bool {
    let session_keys = key.group.is_empty()
        && key.kind == "Secret"
        && key.namespace == KEYS_NAMESPACE
        && key.name == KEYS_SECRET;
    match who {
        Identity::Node { .. } => true,
        Identity::Admin { .. } => asked && !session_keys,
        _ => false,
    }
}

/// A Secret with its values hidden: the keys stay, each value reads `REDACTED`.
pub fn redact(obj: &serde_json::Value) -> serde_json::Value {
    let mut o = obj.clone();
    for field in ["data", "stringData"] {
        if let Some(m) = o.get_mut(field).and_then(|d| d.as_object_mut()) {
            for v in m.values_mut() {
                *v = serde_json::json!("REDACTED");
            }
        }
    }
    o
}

/// The inverse for a Secret written back as it was read (`kubectl edit`, `replace` of a `get`): each
/// value that reads `REDACTED` where `stored` has a value for that key keeps the stored value.
pub fn unredact(written: &mut serde_json::Value, stored: &serde_json::Value) {
    if let Some(m) = written.get_mut("data").and_then(|d| d.as_object_mut()) {
        for (k, v) in m.iter_mut() {
            if v == "REDACTED"
                && let Some(old) = stored["data"].get(k)
            {
                *v = old.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_secret_written_back_keeps_its_values() {
        let stored = serde_json::json!({"data": {"a": "c2VjcmV0", "b": "Yg=="}});
        let mut written = redact(&stored);
        written["data"]["b"] = serde_json::json!("bmV3");
        written["data"]["c"] = serde_json::json!("REDACTED");
        unredact(&mut written, &stored);
        assert_eq!(
            written["data"],
            serde_json::json!({"a": "c2VjcmV0", "b": "bmV3", "c": "REDACTED"})
        );
    }

    fn key(group: &str, kind: &str, ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(group, kind, ns, name)
    }

    fn write(
        verb: &'static str,
        k: ObjectKey,
        current: Option<Option<&str>>,
        new: Option<&str>,
    ) -> Action {
        Action::Write {
            verb,
            targets: vec![WriteTarget {
                key: k,
                current_origin: current.map(|c| c.map(String::from)),
                new_origin: new.map(String::from),
            }],
        }
    }

    fn status(k: ObjectKey, class: Option<&str>) -> Action {
        Action::UpdateStatus(vec![StatusTarget {
            key: k,
            class: class.map(String::from),
        }])
    }

    #[test]
    fn the_rules_as_a_table() {
        let member = Identity::Member(2);
        let node = Identity::Node {
            class: "gw".into(),
            name: "a".into(),
        };
        let sync_a = Identity::KubeSync {
            cluster: "a".into(),
        };
        let admin = Identity::Admin { name: "ops".into() };
        let route = key(GATEWAY_GROUP, "HTTPRoute", "d", "r");
        let gw_of = |class: &str| status(key(GATEWAY_GROUP, "Gateway", "d", "g"), Some(class));
        let lease = registry::lease_key("gw");
        let other_lease = registry::lease_key("x");
        let cases: Vec<(&Identity, Action, bool)> = vec![
            (&member, Action::Raft { member: 2 }, true),
            (&member, Action::Raft { member: 3 }, false),
            (&admin, Action::Raft { member: 2 }, false),
            (&node, Action::Raft { member: 2 }, false),
            (&member, Action::ReadIndex, true),
            (&admin, Action::ReadIndex, false),
            (&member, write("apply", route.clone(), None, None), false),
            (&member, Action::Read, true),
            (&admin, write("apply", route.clone(), None, None), true),
            (&admin, Action::ChangeMembership, true),
            (&admin, Action::CompactLog, true),
            (&member, Action::CompactLog, false),
            (&admin, Action::RotateSessionKeys, true),
            (&node, write("apply", route.clone(), None, None), false),
            (&node, write("apply", lease.clone(), None, None), true),
            (&node, write("delete", lease.clone(), None, None), false),
            (&node, write("apply", other_lease, None, None), false),
            (&node, write("apply", registry::key("a"), None, None), true),
            (&node, write("delete", registry::key("a"), None, None), true),
            (&node, write("apply", registry::key("b"), None, None), false),
            (
                &node,
                write("delete", registry::key("b"), None, None),
                false,
            ),
            (&node, gw_of("gw"), true),
            (&node, gw_of("other"), false),
            (
                &node,
                status(key(GATEWAY_GROUP, "GatewayClass", "", "other"), None),
                true,
            ),
            (&node, status(route.clone(), None), true),
            (&node, Action::RecordSessions, true),
            (&node, Action::EnsureSessionKeys, true),
            (&node, Action::RotateSessionKeys, false),
            (&node, Action::EvictSessions, false),
            (&node, Action::ChangeMembership, false),
            (&node, Action::CompactLog, false),
            (&node, Action::Read, true),
            (
                &sync_a,
                write("apply", route.clone(), None, Some("a")),
                true,
            ),
            (
                &sync_a,
                write("apply", route.clone(), Some(Some("a")), Some("a")),
                true,
            ),
            (
                &sync_a,
                write("apply", route.clone(), None, Some("b")),
                false,
            ),
            (
                &sync_a,
                write("apply", route.clone(), Some(Some("b")), Some("a")),
                false,
            ),
            (
                &sync_a,
                write("delete", route.clone(), Some(Some("b")), None),
                false,
            ),
            (
                &sync_a,
                write("delete", route.clone(), Some(Some("a")), None),
                true,
            ),
            (
                &sync_a,
                write("apply", route.clone(), Some(None), Some("a")),
                false,
            ),
            (
                &sync_a,
                write("apply", registry::report_key("a"), None, Some("a")),
                true,
            ),
            (
                &sync_a,
                write("apply", registry::report_key("b"), None, Some("a")),
                false,
            ),
            (
                &sync_a,
                write("apply", registry::key("n"), None, Some("a")),
                false,
            ),
            (&sync_a, gw_of("gw"), false),
            (&sync_a, Action::RecordSessions, false),
            (&sync_a, Action::Read, true),
        ];
        for (who, action, ok) in cases {
            let got = authorize(who, &action);
            assert_eq!(got.is_ok(), ok, "{who} {action}: {got:?}");
            if let Err(d) = got {
                let msg = d.to_string();
                assert!(
                    msg.starts_with(&format!("{who} may not ")),
                    "a refusal names who and what: {msg}"
                );
            }
        }
    }

    #[test]
    fn secret_values_are_for_nodes_and_asking_admins_but_never_the_session_keys_for_people() {
        let tls = key("", "Secret", "d", "cert");
        let keys = key("", "Secret", KEYS_NAMESPACE, KEYS_SECRET);
        let node = Identity::Node {
            class: "gw".into(),
            name: "a".into(),
        };
        let admin = Identity::Admin { name: "ops".into() };
        let sync = Identity::KubeSync {
            cluster: "a".into(),
        };
        assert!(secret_values_visible(&node, false, &keys));
        assert!(secret_values_visible(&node, false, &tls));
        assert!(!secret_values_visible(&admin, false, &tls));
        assert!(secret_values_visible(&admin, true, &tls));
        assert!(!secret_values_visible(&admin, true, &keys));
        assert!(!secret_values_visible(&sync, true, &tls));
        assert!(!secret_values_visible(&Identity::Member(1), true, &tls));
    }
}
