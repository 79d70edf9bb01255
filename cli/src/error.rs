//! What a gwadm command fails with: the store's typed errors as they are, mistakes in the command line
//! or its inputs, and local failures (files, processes, ports).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused the request, or could not be reached.
    #[error(transparent)]
    Store(#[from] gw_client::Error),
    /// The command line or its inputs are wrong; the message says what to fix.
    #[error("{0}")]
    Usage(String),
    /// A local step failed (a file, a process, a port).
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
