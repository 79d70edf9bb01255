//! Mutual TLS between gw's parts. Every process holds a certificate from the cluster's CA whose URI
//! SAN names its identity — `spiffe://gw/member/1`, `spiffe://gw/node/CLASS/NAME`,
//! `spiffe://gw/kube-sync/CLUSTER`, `spiffe://gw/admin/NAME` — and the role in it is what the store
//! authorizes (members check every call). Certificates are verified by chain to the CA and by identity,
//! not by host name, so a certificate does not depend on addresses. The files are re-read when they
//! change (checked at most once a second), so certificates rotate without restarts.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The SPIFFE trust domain of gw's identities.
const TRUST_DOMAIN: &str = "spiffe://gw/";

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A store member (Raft for this id only).
    Member(u64),
    /// A gateway node serving one GatewayClass.
    Node { class: String, name: String },
    /// The kube sync agent of one Kubernetes cluster.
    KubeSync { cluster: String },
    /// An operator.
    Admin { name: String },
}

/// A name in an identity: DNS-label characters only, so that an identity has one spelling.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Identity {
    /// The identity's URI (its certificate's URI SAN).
    pub fn uri(&self) -> String {
        match self {
            Identity::Member(id) => format!("{TRUST_DOMAIN}member/{id}"),
            Identity::Node { class, name } => format!("{TRUST_DOMAIN}node/{class}/{name}"),
            Identity::KubeSync { cluster } => format!("{TRUST_DOMAIN}kube-sync/{cluster}"),
            Identity::Admin { name } => format!("{TRUST_DOMAIN}admin/{name}"),
        }
    }

    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(TRUST_DOMAIN)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let id = match parts.as_slice() {
            ["member", id] => Identity::Member(id.parse().ok().filter(|i| *i > 0)?),
            ["node", class, name] if valid_name(class) && valid_name(name) => Identity::Node {
                class: class.to_string(),
                name: name.to_string(),
            },
            ["kube-sync", cluster] if valid_name(cluster) => Identity::KubeSync {
                cluster: cluster.to_string(),
            },
            ["admin", name] if valid_name(name) => Identity::Admin {
                name: name.to_string(),
            },
            _ => return None,
        };
        Some(id)
    }

    /// The identity named by a certificate (its one `spiffe://gw/` URI SAN). Says nothing of who signed
    /// it: `Verifier::verify` does that.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, String> {
        let uris: Vec<String> = san_names(der, SanKind::Uri)
            .into_iter()
            .filter(|u| u.starts_with(TRUST_DOMAIN))
            .collect();
        match uris.as_slice() {
            [one] => Identity::parse(one)
                .ok_or_else(|| format!("the certificate's identity {one:?} is not one of gw's")),
            [] => Err("the certificate names no gw identity (a spiffe://gw/... URI SAN)".into()),
            _ => Err(format!(
                "the certificate names several identities: {}",
                uris.join(", ")
            )),
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            Identity::Member(_) => "member",
            Identity::Node { .. } => "node",
            Identity::KubeSync { .. } => "kube-sync",
            Identity::Admin { .. } => "admin",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The kinds of subjectAltName entries read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Dns,
    Uri,
}

/// One DER element: tag, content, and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (l, rest) = b.split_at(n);
        b = rest;
        l.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x))
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The elements of a DER sequence's content.
fn der_items(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((tag, content, rest)) = der(b) {
        out.push((tag, content));
        b = rest;
    }
    out
}

/// The subjectAltName entries of one kind in a certificate (DER), as written (webpki does not list
/// URIs, nor wildcards such as `*.org`).
pub fn san_names(cert: &[u8], kind: SanKind) -> Vec<String> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let tag = match kind {
        SanKind::Dns => 0x82,
        SanKind::Uri => 0x86,
    };
    let tbs = der(cert)
        .and_then(|(_, c, _)| der(c))
        .map(|(_, tbs, _)| tbs)
        .unwrap_or_default();
    let Some((_, exts)) = der_items(tbs).into_iter().find(|(t, _)| *t == 0xa3) else {
        return vec![];
    };
    let exts = der(exts).map(|(_, c, _)| der_items(c)).unwrap_or_default();
    exts.iter()
        .map(|(_, e)| der_items(e))
        .filter(|fields| {
            fields
                .first()
                .is_some_and(|(t, oid)| *t == 0x06 && *oid == SAN_OID)
        })
        .filter_map(|fields| {
            fields
                .iter()
                .find(|(t, _)| *t == 0x04)
                .map(|(_, v)| v.to_vec())
        })
        .flat_map(|value| {
            der(&value)
                .map(|(_, c, _)| der_items(c))
                .unwrap_or_default()
                .into_iter()
                .filter(|(t, _)| *t == tag)
                .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Where a process's certificate, key and CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA certificate (PEM): the only root trusted.
    pub ca: PathBuf,
    /// This process's certificate (PEM, the chain up to the CA).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.crt`, `DIR/NAME.crt`, `DIR/NAME.key` (the layout `gwadm pki` writes).
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// The TLS flags every gw process takes (and their environment variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM).
    #[arg(long, global = true, env = "GW_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), naming its identity (see `gwadm pki`).
    #[arg(long, global = true, env = "GW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "GW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext, without authentication: for local experiments only (logged as a warning).
    #[arg(long, global = true, env = "GW_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// The flags of a process using `files`.
    pub fn of(files: &TlsFiles) -> TlsArgs {
        TlsArgs {
            tls_ca: Some(files.ca.clone()),
            tls_cert: Some(files.cert.clone()),
            tls_key: Some(files.key.clone()),
            insecure: false,
        }
    }

    pub fn security(&self) -> Result<Security, String> {
        Security::from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.insecure,
        )
    }

    /// The same flags on a command line (for child processes).
    pub fn to_args(&self) -> Vec<String> {
        if self.insecure {
            return vec!["--insecure".into()];
        }
        let mut out = Vec::new();
        for (flag, v) in [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ] {
            if let Some(p) = v {
                out.push(flag.to_string());
                out.push(p.display().to_string());
            }
        }
        out
    }
}

/// How a process talks to the others.
#[derive(Clone)]
pub enum Security {
    /// Plaintext, nobody authenticated (only with an explicit `--insecure`).
    Insecure,
    /// Mutual TLS with this material.
    Mutual(Arc<TlsMaterial>),
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Security::Insecure => f.write_str("Insecure"),
            Security::Mutual(m) => write!(f, "Mutual({})", m.identity()),
        }
    }
}

impl Security {
    /// From the usual flags: all three files, or `insecure` — never neither, never both.
    pub fn from_flags(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        insecure: bool,
    ) -> Result<Security, String> {
        match (ca, cert, key, insecure) {
            (None, None, None, true) => Ok(Security::Insecure),
            (Some(ca), Some(cert), Some(key), false) => Ok(Security::Mutual(TlsMaterial::load(
                TlsFiles {
                    ca: ca.into(),
                    cert: cert.into(),
                    key: key.into(),
                },
            )?)),
            (_, _, _, true) => Err("--insecure cannot be combined with --tls-ca/--tls-cert/--tls-key".into()),
            (None, None, None, false) => Err(
                "no TLS material: give --tls-ca, --tls-cert and --tls-key (see `gwadm pki`), or --insecure for plaintext".into(),
            ),
            _ => Err("give all three of --tls-ca, --tls-cert and --tls-key".into()),
        }
    }

    /// This process's own identity (`None` when insecure).
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Security::Insecure => None,
            Security::Mutual(m) => Some(m.identity()),
        }
    }
}

/// What a client requires of the server it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Any store member (the client API).
    AnyMember,
    /// This member (Raft, request forwarding, adding a learner).
    Member(u64),
}

impl Expect {
    fn admits(self, id: &Identity) -> bool {
        match (self, id) {
            (Expect::AnyMember, Identity::Member(_)) => true,
            (Expect::Member(want), Identity::Member(got)) => want == *got,
            _ => false,
        }
    }
}

/// Material as read from the files at one time.
struct Loaded {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
    server: Arc<rustls::ServerConfig>,
}

/// The material in use, and when and at which file times it was last checked.
struct State {
    checked: Instant,
    stamps: Vec<Option<SystemTime>>,
    loaded: Arc<Loaded>,
}

/// A certificate, its key and the CA, reloaded when their files change.
pub struct TlsMaterial {
    files: TlsFiles,
    state: Mutex<State>,
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// Reads and checks the files: the certificate must chain to the CA and name a gw identity.
    #[allow(clippy::disallowed_methods)] // runtime: when the files were last checked
    pub fn load(files: TlsFiles) -> Result<Arc<TlsMaterial>, String> {
        let stamps = stamps(&files);
        let loaded = Self::read(&files)?;
        Ok(Arc::new(TlsMaterial {
            files,
            state: Mutex::new(State {
                checked: Instant::now(),
                stamps,
                loaded: Arc::new(loaded),
            }),
        }))
    }

    fn read(files: &TlsFiles) -> Result<Loaded, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca_pem = read(&files.ca)?;
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .next()
            .ok_or_else(|| format!("{}: no certificate", files.ca.display()))?
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&files.cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|e| format!("{}: {e}", files.key.display()))?;
        let identity = Verifier::new(&ca)?
            .verify(&chain)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(AnyClientCert::new(&ca)?))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", files.key.display()))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded {
            ca,
            chain,
            key,
            identity,
            server: Arc::new(server),
        })
    }

    /// The material now: re-read when a file changed since (checked at most once a second). A change
    /// that does not load (a half-written file) keeps the previous material, and says so.
    #[allow(clippy::disallowed_methods)] // runtime: rate-limits the file checks
    fn current(&self) -> Arc<Loaded> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.checked.elapsed() >= Duration::from_secs(1) {
            s.checked = Instant::now();
            let now = stamps(&self.files);
            if now != s.stamps {
                s.stamps = now;
                match Self::read(&self.files) {
                    Ok(l) => {
                        tracing::info!(cert = %self.files.cert.display(), identity = %l.identity, "reloaded TLS material");
                        s.loaded = Arc::new(l);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous material");
                    }
                }
            }
        }
        s.loaded.clone()
    }

    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }

    /// The server side: this certificate; any client certificate is accepted in the handshake and
    /// verified by the service (`Verifier`), so that a refusal can name what was presented.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current().server.clone()
    }

    /// The client side: this certificate, and a server that chains to the CA with the expected identity.
    pub fn client_config(&self, expect: Expect) -> Result<Arc<rustls::ClientConfig>, String> {
        let l = self.current();
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                verifier: Verifier::new(&l.ca)?,
                expect,
            }))
            .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(c))
    }

    /// Verifies a peer's chain against the current CA.
    pub fn verify_peer(&self, chain: &[CertificateDer<'_>]) -> Result<Identity, String> {
        Verifier::new(&self.current().ca)?.verify(chain)
    }
}

/// Verification by chain to the CA and identity (no host names).
struct Verifier {
    ca: CertificateDer<'static>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    fn new(ca: &CertificateDer<'_>) -> Result<Verifier, String> {
        webpki::anchor_from_trusted_cert(ca).map_err(|e| format!("the CA certificate: {e:?}"))?;
        Ok(Verifier {
            ca: ca.clone().into_owned(),
        })
    }

    /// The identity of a chain that leads to the CA (leaf first).
    fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<Identity, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate presented")?;
        let claimed = Identity::of_certificate(leaf);
        let anchor = webpki::anchor_from_trusted_cert(&self.ca)
            .map_err(|e| format!("the CA certificate: {e:?}"))?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("a malformed certificate: {e:?}"))?;
        ee.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            let who = match &claimed {
                Ok(id) => format!("the certificate of {id}"),
                Err(_) => "the certificate".to_string(),
            };
            match e {
                // Another CA of the same name signs with another key.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    format!("{who} is not issued by this cluster's CA")
                }
                webpki::Error::CertExpired { .. } => format!("{who} has expired"),
                webpki::Error::CertNotValidYet { .. } => format!("{who} is not valid yet"),
                other => format!("{who} does not verify: {other:?}"),
            }
        })?;
        claimed
    }
}

/// The server certificate check of a client: chain to the CA, then the expected member identity.
#[derive(Debug)]
struct ServerVerifier {
    verifier: Verifier,
    expect: Expect,
}

impl rustls::client::danger::ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let id = self
            .verifier
            .verify(&chain)
            .map_err(|e| rustls::Error::General(format!("the server's {e}")))?;
        if !self.expect.admits(&id) {
            return Err(rustls::Error::General(format!(
                "the server is {id}, expected {}",
                match self.expect {
                    Expect::AnyMember => "a store member".to_string(),
                    Expect::Member(n) => Identity::Member(n).to_string(),
                }
            )));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's handshake accepts any client certificate (or none), checking only that the client
/// holds its key; the service then verifies the chain and authorizes the identity on every call
/// (`TlsMaterial::verify_peer`), so that a refusal is a gRPC status naming what was presented rather
/// than a TLS alert. Never use it without that check.
#[derive(Debug)]
struct AnyClientCert {
    hints: Vec<rustls::DistinguishedName>,
}

impl AnyClientCert {
    fn new(ca: &CertificateDer<'_>) -> Result<AnyClientCert, String> {
        let anchor = webpki::anchor_from_trusted_cert(ca)
            .map_err(|e| format!("the CA certificate: {e:?}"))?;
        Ok(AnyClientCert {
            // The anchor holds the Name's contents; the hint is the whole DER SEQUENCE (OpenSSL
            // clients refuse the handshake otherwise).
            hints: vec![rustls::DistinguishedName::in_sequence(
                anchor.subject.as_ref(),
            )],
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
