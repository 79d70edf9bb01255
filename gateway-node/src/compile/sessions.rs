//! Which session persistence applies to a route rule: the rule's own `sessionPersistence`, else that of
//! the oldest BackendLBPolicy targeting one of the rule's backend Services (route level wins, as the
//! spec says). Policy-level sessions are scoped to the policy, so every rule routing to its Service
//! shares them.

use super::conditions::{Ancestors, Cond};
use super::index::{Index, Meta, typed};
use crate::table::{Carrier, DEFAULT_NAME, SessionConfig};
use gw_model::ObjectKey;
use gw_model::duration;
use gw_model::kinds::GATEWAY_GROUP;
use gw_model::policy::BackendLbPolicySpec;
use gw_model::route::{BackendRef, CookieLifetimeType, SessionPersistence, SessionPersistenceType};
use http::HeaderName;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// What a rule is: its route's kind and metadata, its index, and its cookie path.
pub struct RuleRef<'a> {
    pub route_kind: &'a str,
    pub meta: &'a Meta,
    pub index: usize,
    /// The path of the rule's matches when they all share one (Exact or PathPrefix), else "/".
    pub path: &'a str,
}

pub fn session_config<F>(
    idx: &Index<'_>,
    rule: &RuleRef<'_>,
    own: Option<&SessionPersistence>,
    backend_refs: &[BackendRef<F>],
) -> Option<Arc<SessionConfig>> {
    if let Some(sp) = own {
        let scope = format!(
            "{}/{}/{}/rules/{}",
            rule.route_kind, rule.meta.namespace, rule.meta.name, rule.index
        );
        return config(sp, scope, &rule.meta.namespace, rule.path);
    }
    let policies = policies(idx);
    let (_, meta, spec) = policies.iter().find(|(_, meta, spec)| {
        spec.session_persistence.is_some()
            && backend_refs.iter().any(|br| {
                br.group.is_empty()
                    && br.kind == "Service"
                    && br.namespace.as_deref().unwrap_or(&rule.meta.namespace) == meta.namespace
                    && spec
                        .target_refs
                        .iter()
                        .any(|t| t.group.is_empty() && t.kind == "Service" && t.name == br.name)
            })
    })?;
    let scope = format!("BackendLBPolicy/{}/{}", meta.namespace, meta.name);
    config(
        spec.session_persistence.as_ref()?,
        scope,
        &meta.namespace,
        "/",
    )
}

fn config(
    sp: &SessionPersistence,
    scope: String,
    namespace: &str,
    path: &str,
) -> Option<Arc<SessionConfig>> {
    let ms = |d: &Option<String>| {
        d.as_deref()
            .and_then(duration::parse)
            .map(|d| d.as_millis() as u64)
    };
    let absolute_timeout_ms = ms(&sp.absolute_timeout);
    let name = sp
        .session_name
        .clone()
        .unwrap_or_else(|| DEFAULT_NAME.into());
    let carrier = match sp.kind {
        SessionPersistenceType::Header => Carrier::Header(HeaderName::try_from(name).ok()?),
        SessionPersistenceType::Cookie => {
            let token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
            if name.is_empty() || !name.chars().all(token_char) {
                return None;
            }
            Carrier::Cookie {
                name,
                path: path.to_string(),
                max_age_s: (sp.lifetime() == CookieLifetimeType::Permanent)
                    .then(|| absolute_timeout_ms.map(|ms| ms / 1000))
                    .flatten(),
            }
        }
    };
    Some(Arc::new(SessionConfig {
        scope,
        namespace: namespace.to_string(),
        carrier,
        idle_timeout_ms: ms(&sp.idle_timeout),
        absolute_timeout_ms,
    }))
}

/// The BackendLBPolicies, oldest first (the oldest wins a conflict, as for routes).
fn policies<'a>(idx: &Index<'a>) -> Vec<(&'a ObjectKey, Meta, BackendLbPolicySpec)> {
    idx.of_kind(GATEWAY_GROUP, "BackendLBPolicy")
        .into_iter()
        .filter_map(|(key, obj, meta)| Some((key, meta, typed(obj, Some("spec"))?)))
        .collect()
}

/// The status of every BackendLBPolicy: one ancestor per target Service (this controller's entries
/// replaced, other controllers' kept), Accepted unless the Service does not exist or an older policy
/// already sets session persistence for it.
pub fn policy_statuses(
    idx: &Index<'_>,
    controller: &str,
    now_ms: u64,
) -> Vec<(ObjectKey, Value, Meta)> {
    let mut claimed: HashMap<(String, String), String> = HashMap::new();
    let mut out = Vec::new();
    for (key, meta, spec) in policies(idx) {
        let prev = idx
            .snap
            .objects
            .get(key)
            .and_then(|o| o.get("status").cloned())
            .unwrap_or(Value::Null);
        let mut ancestors = Ancestors::new(&prev, controller);
        for t in &spec.target_refs {
            let target = (meta.namespace.clone(), t.name.clone());
            let cond = if !t.group.is_empty() || t.kind != "Service" {
                Cond::fail(
                    "Accepted",
                    "Invalid",
                    format!("target {}/{} is not a core Service", t.group, t.kind),
                )
            } else if idx.service(&meta.namespace, &t.name).is_none() {
                Cond::fail(
                    "Accepted",
                    "TargetNotFound",
                    format!("Service {}/{} not found", meta.namespace, t.name),
                )
            } else if spec.session_persistence.is_none() {
                Cond::ok("Accepted", "Accepted", "policy accepted")
            } else if let Some(owner) = claimed.get(&target) {
                Cond::fail(
                    "Accepted",
                    "Conflicted",
                    format!(
                        "BackendLBPolicy {owner} already sets session persistence for Service {}",
                        t.name
                    ),
                )
            } else {
                claimed.insert(target, meta.id());
                Cond::ok("Accepted", "Accepted", "policy accepted")
            };
            let ancestor_ref = json!({"group": "", "kind": "Service", "namespace": meta.namespace, "name": t.name});
            ancestors.push(ancestor_ref, &[cond], meta.generation, now_ms);
        }
        out.push((key.clone(), ancestors.status(), meta));
    }
    out
}
