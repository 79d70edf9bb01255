//! A cluster's PKI (feature `pki`, for gwadm and the test kit): its CA, and the certificates of its
//! members, gateway nodes, kube sync agents and admins, each naming its identity in a URI SAN (see
//! `tls`). Keys are ECDSA P-256. Files are laid out as `TlsFiles::in_dir` reads them: `ca.crt`,
//! `ca.key` (kept by whoever issues), `NAME.crt`, `NAME.key`.

use crate::clock;
use crate::tls::{Identity, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;

/// How long issued certificates are valid, by default.
pub const DEFAULT_DAYS: u32 = 365;
/// How long a CA is valid.
const CA_DAYS: u32 = 3650;

/// The CA: its certificate and its key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

/// Year, month and day of a time in ms since the epoch (UTC).
fn ymd(ms: u64) -> (i32, u8, u8) {
    let date = gw_model::meta::rfc3339(ms);
    let num = |r: std::ops::Range<usize>| date[r].parse::<i32>().unwrap_or(1);
    (num(0..4), num(5..7) as u8, num(8..10) as u8)
}

/// Sets a certificate's validity: from a day ago (clocks differ) to `days` from now.
fn validity(p: &mut CertificateParams, days: u32) {
    let now = clock::now_ms();
    let (y, m, d) = ymd(now.saturating_sub(86_400_000));
    p.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(now + u64::from(days) * 86_400_000);
    p.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The CA's parameters: fixed but for its validity, so that the issuer can be rebuilt from its key.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "gw cluster CA");
    dn.push(DnType::OrganizationName, "gw");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Writes a private key readable by its owner only.
fn write_key(path: &Path, pem: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(pem.as_bytes()).map_err(|e| io(path, e))
}

impl Ca {
    pub fn generate() -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = ca_params();
        validity(&mut p, CA_DAYS);
        let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA of `dir` (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, String> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let cert_pem = std::fs::read_to_string(&crt).map_err(|e| io(&crt, e))?;
        let key_pem = std::fs::read_to_string(&key).map_err(|e| io(&key, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
        Ok(Ca { cert_pem, key })
    }

    /// Writes `ca.crt` and `ca.key` (owner-only) into `dir`, refusing to replace an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() || key.exists() {
            return Err(format!(
                "{} already holds a CA; issuing with it needs no new one",
                dir.display()
            ));
        }
        std::fs::write(&crt, &self.cert_pem).map_err(|e| io(&crt, e))?;
        write_key(&key, &self.key.serialize_pem())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate (PEM) and its key (PEM) for `identity`, valid for `days`. Every certificate is
    /// good for both ends of a connection (members are servers and clients). `hosts` (DNS names or IP
    /// addresses) are for clients that check a server's name, as kubectl does of a member's Kubernetes
    /// API; gw's own parts check the identity only.
    pub fn issue(
        &self,
        identity: &Identity,
        days: u32,
        hosts: &[String],
    ) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.uri());
        dn.push(DnType::OrganizationName, "gw");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            identity.uri().try_into().map_err(|e| format!("{e}"))?,
        )];
        for h in hosts {
            p.subject_alt_names
                .push(match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        h.clone()
                            .try_into()
                            .map_err(|e| format!("host {h:?}: {e}"))?,
                    ),
                });
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut p, days);
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = p.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a certificate for `identity` into `dir` as `NAME.crt`/`NAME.key` (and `ca.crt` beside
    /// them), and returns where they are.
    pub fn issue_to(
        &self,
        dir: &Path,
        name: &str,
        identity: &Identity,
        days: u32,
        hosts: &[String],
    ) -> Result<TlsFiles, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let files = TlsFiles::in_dir(dir, name);
        let (crt, key) = self.issue(identity, days, hosts)?;
        std::fs::write(&files.cert, crt).map_err(|e| io(&files.cert, e))?;
        write_key(&files.key, &key)?;
        if !files.ca.exists() {
            std::fs::write(&files.ca, &self.cert_pem).map_err(|e| io(&files.ca, e))?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Identity, SanKind, TlsMaterial, san_names};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn issued_certificates_name_their_identity_and_verify_only_against_their_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        ca.save(dir.path()).unwrap();
        assert!(ca.save(dir.path()).is_err(), "a CA is never replaced");
        let ca = Ca::load(dir.path()).unwrap();
        let node = Identity::Node {
            class: "gw".into(),
            name: "n1".into(),
        };
        let files = ca.issue_to(dir.path(), "node", &node, 30, &[]).unwrap();
        let tls = TlsMaterial::load(files).unwrap();
        assert_eq!(tls.identity(), node);
        let (crt, _) = ca.issue(&Identity::Member(3), 30, &[]).unwrap();
        assert_eq!(
            san_names(&der(&crt), SanKind::Uri),
            ["spiffe://gw/member/3"]
        );
        assert_eq!(tls.verify_peer(&[der(&crt)]), Ok(Identity::Member(3)));
        // Another CA's certificate is refused, naming who it claims to be.
        let other = Ca::generate().unwrap();
        let (foreign, _) = other
            .issue(&Identity::Admin { name: "eve".into() }, 30, &[])
            .unwrap();
        let e = tls.verify_peer(&[der(&foreign)]).unwrap_err();
        assert!(
            e.contains("spiffe://gw/admin/eve") && e.contains("not issued by this cluster's CA"),
            "{e}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("node.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "keys are readable by their owner only");
        }
    }

    #[test]
    fn identities_round_trip_and_refuse_what_is_not_theirs() {
        for id in [
            Identity::Member(1),
            Identity::Node {
                class: "gw-demo".into(),
                name: "host-a".into(),
            },
            Identity::KubeSync {
                cluster: "eu-1".into(),
            },
            Identity::Admin { name: "ops".into() },
        ] {
            assert_eq!(Identity::parse(&id.uri()), Some(id));
        }
        for bad in [
            "spiffe://gw/member/0",
            "spiffe://gw/member/x",
            "spiffe://gw/node/onlyclass",
            "spiffe://gw/admin/UPPER",
            "spiffe://other/admin/ops",
            "spiffe://gw/root/x",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }
}
