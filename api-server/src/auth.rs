//! Who is calling, and whether they may: the identity in the client certificate, verified by chain to
//! the cluster's CA (the TLS handshake only proved possession of the key, so that a refusal here can
//! name what was presented), or — for a request a member forwarded to the leader — the identity it was
//! forwarded on behalf of. Refusals are gRPC statuses naming identity and action, and are counted.

use crate::authz::{self, Action};
use crate::metrics::Metrics;
use gw_client::{Identity, Security};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Status};

/// Metadata of a forwarded request: the identity of the original caller.
pub const ON_BEHALF_OF: &str = "x-gw-on-behalf-of";

/// The caller of a request this member makes to its own services in-process (the Kubernetes API,
/// which authenticated the caller itself). A request extension: nothing received from the network
/// can set it.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Identity);
/// How long a verified certificate is remembered (a CA rotation or an expiry shows after this).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Certificates remembered at most.
const CACHE_ENTRIES: usize = 10_000;

/// Certificate chains verified lately: chain digest → when, and what the verification said.
type Verified = HashMap<Vec<u8>, (Instant, Result<Identity, String>)>;

pub struct Auth {
    security: Security,
    metrics: Arc<Metrics>,
    verified: Mutex<Verified>,
}

impl Auth {
    pub fn new(security: Security, metrics: Arc<Metrics>) -> Auth {
        Auth {
            security,
            metrics,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The caller's identity. Insecure members treat every caller as an admin.
    pub fn identify<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        if let Some(Authenticated(who)) = req.extensions().get::<Authenticated>() {
            return Ok(who.clone());
        }
        let tls = match &self.security {
            Security::Insecure => {
                return Ok(Identity::Admin {
                    name: "insecure".into(),
                });
            }
            Security::Mutual(tls) => tls,
        };
        let chain = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: this store requires mutual TLS (issue one with `gwadm pki issue`)",
            )
        })?;
        let who = self.verify(tls, &chain).map_err(Status::unauthenticated)?;
        match (&who, req.metadata().get(ON_BEHALF_OF)) {
            (Identity::Member(_), Some(v)) => {
                v.to_str().ok().and_then(Identity::parse).ok_or_else(|| {
                    Status::invalid_argument(format!("{ON_BEHALF_OF}: not an identity"))
                })
            }
            (_, Some(_)) => Err(Status::permission_denied(format!(
                "{who} may not act on behalf of others (members forward, nobody else)"
            ))),
            (_, None) => Ok(who),
        }
    }

    /// The identity of a certificate chain a client presented (cached for a while).
    #[allow(clippy::disallowed_methods)] // runtime: ages the cache of verified certificates
    pub fn verify(
        &self,
        tls: &gw_client::TlsMaterial,
        chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Identity, String> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for c in chain {
            ctx.update(c.as_ref());
        }
        let digest = ctx.finish().as_ref().to_vec();
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, result)) = cache.get(&digest)
            && at.elapsed() < VERIFIED_FOR
        {
            return result.clone();
        }
        let result = tls.verify_peer(chain);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest, (Instant::now(), result.clone()));
        result
    }

    /// The caller's identity, if it may do `action`; a refusal is counted.
    pub fn check<T>(&self, req: &Request<T>, action: Action) -> Result<Identity, Status> {
        let who = self.identify(req)?;
        authz::authorize(&who, &action).map_err(|d| {
            self.metrics.count_denied(&d);
            tracing::warn!(identity = %d.who, action = d.action.name(), "refused: {d}");
            Status::permission_denied(d.to_string())
        })?;
        Ok(who)
    }
}
