//! `gwadm pki`: the cluster's CA and the certificates of its parts — members, gateway nodes, kube
//! sync agents, admins — each naming its identity (`spiffe://gw/<role>/...`), which is what members
//! authorize. Files go in one directory: `ca.crt`, `ca.key` (keep it where certificates are issued,
//! nowhere else), `NAME.crt`, `NAME.key` (owner-readable only).

use crate::error::{Error, Result};
use clap::Subcommand;
use gw_client::Identity;
use gw_client::pki::{Ca, DEFAULT_DAYS};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the cluster's CA in DIR.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Issue a certificate with the CA of DIR.
    Issue {
        #[command(subcommand)]
        who: IssueFor,
        #[arg(long, global = true, default_value = "pki")]
        dir: PathBuf,
        /// Days of validity.
        #[arg(long, global = true, default_value_t = DEFAULT_DAYS)]
        days: u32,
        /// File name (without extension) of the certificate and key; default: after the identity.
        #[arg(long, global = true)]
        out: Option<String>,
        /// A DNS name or IP address the certificate is also good for (repeatable): a member's, for
        /// clients that check the server's name (kubectl, against `--kube-listen`).
        #[arg(long = "host", global = true)]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssueFor {
    /// A store member (`--id` as in gw-api-server).
    Member {
        #[arg(long)]
        id: u64,
    },
    /// A gateway node serving one GatewayClass.
    Node {
        #[arg(long)]
        class: String,
        #[arg(long)]
        name: String,
    },
    /// The kube sync agent of one Kubernetes cluster.
    KubeSync {
        #[arg(long)]
        cluster: String,
    },
    /// An operator (may do everything).
    Admin {
        #[arg(long)]
        name: String,
    },
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init { dir } => {
            Ca::generate()
                .and_then(|ca| ca.save(&dir))
                .map_err(Error::Usage)?;
            println!(
                "CA created: {0}/ca.crt (give it to every part), {0}/ca.key (keep it here)",
                dir.display()
            );
            Ok(())
        }
        PkiCommand::Issue {
            who,
            dir,
            days,
            out,
            hosts,
        } => {
            let (identity, name) = match who {
                IssueFor::Member { id } => (Identity::Member(id), format!("member-{id}")),
                IssueFor::Node { class, name } => {
                    let n = format!("node-{class}-{name}");
                    (Identity::Node { class, name }, n)
                }
                IssueFor::KubeSync { cluster } => {
                    let n = format!("kube-sync-{cluster}");
                    (Identity::KubeSync { cluster }, n)
                }
                IssueFor::Admin { name } => {
                    let n = format!("admin-{name}");
                    (Identity::Admin { name }, n)
                }
            };
            if Identity::parse(&identity.uri()).is_none() {
                return Err(Error::Usage(format!(
                    "{identity}: names are lowercase letters, digits, '-' and '.'"
                )));
            }
            let ca = Ca::load(&dir).map_err(|e| {
                Error::Usage(format!(
                    "{e} (create the CA first: gwadm pki init --dir {})",
                    dir.display()
                ))
            })?;
            let files = ca
                .issue_to(
                    &dir,
                    out.as_deref().unwrap_or(&name),
                    &identity,
                    days,
                    &hosts,
                )
                .map_err(Error::Usage)?;
            println!(
                "{identity}: --tls-ca {} --tls-cert {} --tls-key {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
    }
}
