//! BackendTLSPolicy (v1alpha3): which Service ports are reached over TLS, with which server name and
//! CAs, and the policies' status (one ancestor per Gateway whose routes send to a target).

use super::backends::RefError;
use super::conditions::{Ancestors, Cond};
use super::index::{Index, Meta, typed};
use super::tls::{INVALID_CA, add_ca_config_map, core_ref};
use crate::table::{TlsTarget, UpstreamTls};
use gw_model::ObjectKey;
use gw_model::kinds::GATEWAY_GROUP;
use gw_model::policy::{BackendTlsPolicySpec, WellKnownCaCertificates};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// One policy as compiled.
struct Policy {
    key: ObjectKey,
    meta: Meta,
    spec: BackendTlsPolicySpec,
    /// The CAs, with a fingerprint of them, or why they cannot be used.
    roots: Result<(Arc<RootCertStore>, u64), RefError>,
}

impl Policy {
    fn id(&self) -> String {
        format!("{}/{}", self.key.namespace, self.key.name)
    }
}

/// The BackendTLSPolicies of one snapshot, by target.
#[derive(Default)]
pub struct BackendTlsPolicies {
    policies: Vec<Policy>,
    /// (namespace, Service, sectionName) → the policy that applies (the oldest, on a conflict).
    by_target: HashMap<(String, String, Option<String>), usize>,
    /// (policy, target index) → the policy that holds the target instead.
    conflicts: HashMap<(usize, usize), String>,
}

/// The platform's CA certificates, loaded once.
fn system_roots() -> Result<(Arc<RootCertStore>, u64), RefError> {
    static ROOTS: OnceLock<Result<(Arc<RootCertStore>, u64), String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificate could be loaded ({} errors)",
                    loaded.errors.len()
                ));
            }
            Ok((Arc::new(roots), 0))
        })
        .clone()
        .map_err(|e| RefError::new(INVALID_CA, e))
}

fn roots_of(
    idx: &Index<'_>,
    ns: &str,
    spec: &BackendTlsPolicySpec,
) -> Result<(Arc<RootCertStore>, u64), RefError> {
    let v = &spec.validation;
    if v.well_known_ca_certificates == Some(WellKnownCaCertificates::System) {
        return system_roots();
    }
    let mut roots = RootCertStore::empty();
    for r in &v.ca_certificate_refs {
        core_ref(
            ("caCertificateRef", INVALID_CA),
            "ConfigMap",
            (&r.group, &r.kind, &r.name),
        )?;
        add_ca_config_map(&mut roots, idx, ns, &r.name)?;
    }
    let mut h = DefaultHasher::new();
    for ta in &roots.roots {
        ta.subject.as_ref().hash(&mut h);
        ta.subject_public_key_info.as_ref().hash(&mut h);
    }
    Ok((Arc::new(roots), h.finish()))
}

impl BackendTlsPolicies {
    pub fn collect(idx: &Index<'_>) -> BackendTlsPolicies {
        let mut out = BackendTlsPolicies::default();
        for (key, obj, meta) in idx.of_kind(GATEWAY_GROUP, "BackendTLSPolicy") {
            let Some(spec) = typed::<BackendTlsPolicySpec>(obj, Some("spec")) else {
                continue;
            };
            let i = out.policies.len();
            for (t, target) in spec.target_refs.iter().enumerate() {
                if !target.group.is_empty() || target.kind != "Service" {
                    continue;
                }
                let k = (
                    key.namespace.clone(),
                    target.name.clone(),
                    target.section_name.clone(),
                );
                match out.by_target.get(&k) {
                    Some(&holder) => {
                        out.conflicts.insert((i, t), out.policies[holder].id());
                    }
                    None => {
                        out.by_target.insert(k, i);
                    }
                }
            }
            let roots = roots_of(idx, &key.namespace, &spec);
            out.policies.push(Policy {
                key: key.clone(),
                meta,
                spec,
                roots,
            });
        }
        out
    }

    /// TLS for Service `ns/service`'s port named `port_name` (a policy for the port wins over one
    /// for the whole Service), with ALPN `alpn`; and the policy's `namespace/name`.
    pub fn for_port(
        &self,
        ns: &str,
        service: &str,
        port_name: Option<&str>,
        alpn: &[u8],
    ) -> Option<(UpstreamTls, String)> {
        let key = |section: Option<&str>| {
            (
                ns.to_string(),
                service.to_string(),
                section.map(str::to_string),
            )
        };
        let i = port_name
            .and_then(|p| self.by_target.get(&key(Some(p))))
            .or_else(|| self.by_target.get(&key(None)))?;
        let p = &self.policies[*i];
        let hostname = &p.spec.validation.hostname;
        let tls = match (&p.roots, ServerName::try_from(hostname.clone())) {
            (Err(e), _) => UpstreamTls::Unusable(e.message.clone()),
            (_, Err(e)) => UpstreamTls::Unusable(format!("hostname {hostname:?}: {e}")),
            (Ok((roots, fingerprint)), Ok(server_name)) => {
                let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
                config.alpn_protocols = vec![alpn.to_vec()];
                UpstreamTls::Verify(TlsTarget {
                    server_name,
                    config: Arc::new(config),
                    pool_key: format!(
                        "{hostname}|{}|{fingerprint:x}",
                        String::from_utf8_lossy(alpn)
                    )
                    .into(),
                })
            }
        };
        Some((tls, p.id()))
    }

    /// The status of every policy: one ancestor per Gateway in `used_by` (this controller's entries
    /// replaced, other controllers' kept). Accepted unless a target is not a Service or an older
    /// policy holds it; ResolvedRefs unless the CAs cannot be used.
    pub fn statuses(
        &self,
        idx: &Index<'_>,
        controller: &str,
        now_ms: u64,
        used_by: &HashMap<String, BTreeSet<ObjectKey>>,
    ) -> Vec<(ObjectKey, Value, Meta)> {
        let mut out = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            let prev = idx
                .snap
                .objects
                .get(&p.key)
                .and_then(|o| o.get("status").cloned())
                .unwrap_or(Value::Null);
            let mut ancestors = Ancestors::new(&prev, controller);
            let mut accepted = Cond::ok("Accepted", "Accepted", "policy accepted");
            for (t, target) in p.spec.target_refs.iter().enumerate() {
                if !target.group.is_empty() || target.kind != "Service" {
                    accepted = Cond::fail(
                        "Accepted",
                        "Invalid",
                        format!(
                            "target {}/{} is not a core Service",
                            target.group, target.kind
                        ),
                    );
                } else if let Some(holder) = self.conflicts.get(&(i, t)) {
                    accepted = Cond::fail(
                        "Accepted",
                        "Conflicted",
                        format!(
                            "BackendTLSPolicy {holder} already targets Service {}",
                            target.name
                        ),
                    );
                }
            }
            let resolved = match &p.roots {
                Ok(_) => Cond::ok("ResolvedRefs", "ResolvedRefs", "CA certificates resolved"),
                Err(e) => Cond::fail("ResolvedRefs", e.reason, e.message.clone()),
            };
            for g in used_by.get(&p.id()).into_iter().flatten() {
                let ancestor_ref = json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": g.namespace, "name": g.name});
                ancestors.push(
                    ancestor_ref,
                    &[accepted.clone(), resolved.clone()],
                    p.meta.generation,
                    now_ms,
                );
            }
            out.push((p.key.clone(), ancestors.status(), p.meta.clone()));
        }
        out
    }
}
