//! Listener certificates: Secret references (cross-namespace only with a ReferenceGrant) loaded into
//! rustls keys, and a resolver that picks the certificate by SNI among the listeners of one socket.

use super::backends::RefError;
use super::index::Index;
use gw_model::gateway::SecretObjectReference;
use gw_model::kinds::GATEWAY_GROUP;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Loads the certificate a listener refers to.
pub fn load_certificate(
    idx: &Index<'_>,
    gateway_ns: &str,
    r: &SecretObjectReference,
) -> Result<Arc<CertifiedKey>, RefError> {
    if !r.group.is_empty() || r.kind != "Secret" {
        return Err(RefError::new(
            "InvalidCertificateRef",
            format!(
                "certificateRef {}/{} {:?}: only core Secrets are supported",
                r.group, r.kind, r.name
            ),
        ));
    }
    let ns = r.namespace.as_deref().unwrap_or(gateway_ns);
    if ns != gateway_ns
        && !idx.grants(
            (GATEWAY_GROUP, "Gateway", gateway_ns),
            ("", "Secret", ns, &r.name),
        )
    {
        return Err(RefError::new(
            "RefNotPermitted",
            format!(
                "certificateRef to Secret {ns}/{} is not permitted by any ReferenceGrant",
                r.name
            ),
        ));
    }
    let secret = idx.secret(ns, &r.name).ok_or_else(|| {
        RefError::new(
            "InvalidCertificateRef",
            format!("Secret {ns}/{} not found", r.name),
        )
    })?;
    let invalid = |why: String| {
        RefError::new(
            "InvalidCertificateRef",
            format!("Secret {ns}/{}: {why}", r.name),
        )
    };
    let crt = secret
        .get("tls.crt")
        .ok_or_else(|| invalid("no tls.crt".into()))?;
    let key = secret
        .get("tls.key")
        .ok_or_else(|| invalid("no tls.key".into()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("tls.crt is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("tls.crt holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| invalid(format!("tls.key is not a PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| invalid(format!("certificate and key are not usable: {e}")))
}

/// Certificates of the HTTPS listeners of one socket, chosen by SNI: the listener whose hostname matches
/// most specifically, else the listener without hostname.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".suffix", key)`, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Adds a listener's certificate for its hostname (`None`: any).
    pub fn add(&mut self, hostname: Option<&str>, key: Arc<CertifiedKey>) {
        match hostname {
            None => {
                self.default.get_or_insert(key);
            }
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => {
                    if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                        self.wildcard.push((suffix.to_string(), key));
                        self.wildcard
                            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                    }
                }
                None => {
                    self.exact.entry(h.to_string()).or_insert(key);
                }
            },
        }
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let from_name = sni.map(str::to_ascii_lowercase).and_then(|name| {
            self.exact.get(&name).cloned().or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
                    .map(|(_, k)| k.clone())
            })
        });
        from_name.or_else(|| self.default.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A TLS server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(resolver: SniResolver) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
