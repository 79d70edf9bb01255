//! Listener TLS: the certificate a listener's Secret holds, the client CAs its
//! `frontendValidation` names (ConfigMaps), each cross-namespace only with a ReferenceGrant, and the
//! listener's rustls server configuration. Which listener a handshake is for is chosen by its server
//! name, as a request's Host chooses one (`SocketTable::tls_for`).

use super::backends::RefError;
use super::index::Index;
use gw_model::gateway::{ObjectReference, SecretObjectReference};
use gw_model::kinds::GATEWAY_GROUP;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use std::sync::Arc;

/// Checks that a reference (`field` and the reason it fails with) names a core `kind`.
pub fn core_ref(
    (field, reason): (&str, &'static str),
    kind: &str,
    (group, ref_kind, name): (&str, &str, &str),
) -> Result<(), RefError> {
    if group.is_empty() && ref_kind == kind {
        return Ok(());
    }
    Err(RefError::new(
        reason,
        format!("{field} {group}/{ref_kind} {name:?}: only core {kind}s are supported"),
    ))
}

/// A reference from a Gateway in `gateway_ns` (`field` names it in messages, `reason` is its
/// failure's) to a core `kind`: its namespace, when it names that kind and is local or a
/// ReferenceGrant permits it.
fn gateway_ref<'r>(
    idx: &Index<'_>,
    gateway_ns: &'r str,
    (field, reason): (&str, &'static str),
    kind: &str,
    (group, ref_kind, name, namespace): (&str, &str, &str, Option<&'r str>),
) -> Result<&'r str, RefError> {
    core_ref((field, reason), kind, (group, ref_kind, name))?;
    let ns = namespace.unwrap_or(gateway_ns);
    if ns != gateway_ns && !idx.grants((GATEWAY_GROUP, "Gateway", gateway_ns), ("", kind, ns, name))
    {
        return Err(RefError::new(
            "RefNotPermitted",
            format!("{field} to {kind} {ns}/{name} is not permitted by any ReferenceGrant"),
        ));
    }
    Ok(ns)
}

/// Loads the certificate a listener refers to.
pub fn load_certificate(
    idx: &Index<'_>,
    gateway_ns: &str,
    r: &SecretObjectReference,
) -> Result<Arc<CertifiedKey>, RefError> {
    let ns = gateway_ref(
        idx,
        gateway_ns,
        ("certificateRef", "InvalidCertificateRef"),
        "Secret",
        (&r.group, &r.kind, &r.name, r.namespace.as_deref()),
    )?;
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

/// How a listener treats client certificates (`tls.frontendValidation`).
#[derive(Clone)]
pub enum ClientAuth {
    /// No certificate asked for.
    Off,
    /// A certificate is required and verified against the listener's CAs.
    Verify(Arc<dyn ClientCertVerifier>),
    /// A certificate is asked for but the CAs could not be resolved: every handshake is refused,
    /// never accepted unchecked.
    RefuseAll,
}

/// Invalid CA references' reason (a listener's or a BackendTLSPolicy's ResolvedRefs condition).
pub const INVALID_CA: &str = "InvalidCACertificateRef";

/// Adds to `roots` the certificates in the `ca.crt` key of ConfigMap `ns/name` (at least one).
pub fn add_ca_config_map(
    roots: &mut RootCertStore,
    idx: &Index<'_>,
    ns: &str,
    name: &str,
) -> Result<(), RefError> {
    let invalid = |why: &str| RefError::new(INVALID_CA, format!("ConfigMap {ns}/{name}: {why}"));
    let cm = idx
        .config_map(ns, name)
        .ok_or_else(|| invalid("not found"))?;
    let pem = cm.data.get("ca.crt").ok_or_else(|| invalid("no ca.crt"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&format!("ca.crt is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("ca.crt holds no certificate"));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| invalid(&format!("ca.crt holds an unusable certificate: {e}")))?;
    }
    Ok(())
}

/// The verifier of a listener's `frontendValidation`: client certificates must chain to one of the
/// certificates in the `ca.crt` key of the ConfigMaps it names (all of them together).
pub fn load_client_cas(
    idx: &Index<'_>,
    gateway_ns: &str,
    refs: &[ObjectReference],
) -> Result<Arc<dyn ClientCertVerifier>, RefError> {
    let mut roots = RootCertStore::empty();
    for r in refs {
        let ns = gateway_ref(
            idx,
            gateway_ns,
            ("caCertificateRef", INVALID_CA),
            "ConfigMap",
            (&r.group, &r.kind, &r.name, r.namespace.as_deref()),
        )?;
        add_ca_config_map(&mut roots, idx, ns, &r.name)?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| RefError::new(INVALID_CA, format!("client CAs are not usable: {e}")))
}

/// A listener's TLS server configuration, offering HTTP/2 and HTTP/1.1 by ALPN when `alpn`; with
/// `clients`, a client certificate that it accepts is required in the handshake.
pub fn server_config(
    cert: Arc<CertifiedKey>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    alpn: bool,
) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions");
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(cert)));
    if alpn {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Arc::new(cfg)
}
