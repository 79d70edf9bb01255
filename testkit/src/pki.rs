//! A PKI for a local setup: a fresh CA in a directory, an admin certificate, and certificates issued on
//! demand for members, gateway nodes and agents (`gw_client::pki` does the issuing).

use anyhow::anyhow;
use gw_client::pki::{Ca, DEFAULT_DAYS};
use gw_client::{Identity, Security, TlsArgs, TlsFiles, TlsMaterial};
use std::path::{Path, PathBuf};

pub struct Pki {
    dir: PathBuf,
    ca: Ca,
}

impl Pki {
    /// A new CA in `dir`, and an admin certificate (`admin.crt`).
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        let ca = Ca::generate().map_err(|e| anyhow!(e))?;
        ca.save(dir).map_err(|e| anyhow!(e))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
        };
        pki.issue(
            "admin",
            &Identity::Admin {
                name: "admin".into(),
            },
        )?;
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A certificate for `identity`, written as `NAME.crt`/`NAME.key` beside the CA, good for the
    /// loopback names too (`127.0.0.1`, `localhost`: kubectl checks a server's name).
    pub fn issue(&self, name: &str, identity: &Identity) -> anyhow::Result<TlsFiles> {
        self.issue_for(name, identity, &[])
    }

    /// As `issue`, good for `hosts` too (a member's own address, for clients that check it).
    pub fn issue_for(
        &self,
        name: &str,
        identity: &Identity,
        hosts: &[&str],
    ) -> anyhow::Result<TlsFiles> {
        let mut all = loopback();
        all.extend(hosts.iter().map(|h| h.to_string()));
        all.dedup();
        self.ca
            .issue_to(&self.dir, name, identity, DEFAULT_DAYS, &all)
            .map_err(|e| anyhow!(e))
    }

    /// The admin's flags (for gwadm).
    pub fn admin(&self) -> TlsArgs {
        TlsArgs::of(&TlsFiles::in_dir(&self.dir, "admin"))
    }

    /// The admin's TLS, for clients in this process.
    pub fn admin_security(&self) -> Security {
        Security::Mutual(
            TlsMaterial::load(TlsFiles::in_dir(&self.dir, "admin"))
                .expect("the admin certificate this PKI issued"),
        )
    }
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}
