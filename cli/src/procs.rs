//! Child processes of gwadm's local setups (`gwadm up`, `gwadm bench propagation`): the sibling
//! binaries, free ports, and a set of children stopped (SIGTERM, then SIGKILL) when dropped.

use gw_node::store_client::ClientError;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A sibling binary of this gwadm (`gw-api-server`, `gw-node`).
pub fn sibling(name: &str) -> Result<PathBuf, ClientError> {
    let exe = std::env::current_exe().map_err(|e| ClientError::Usage(e.to_string()))?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(ClientError::Usage(format!(
            "{} not found next to gwadm (build the workspace: cargo build --bins)",
            p.display()
        )))
    }
}

/// Fails when a loopback port is taken.
pub fn free(port: u16) -> Result<(), ClientError> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            ClientError::Usage(format!(
                "port {port} is not free ({e}); pick another with the flags of gwadm up"
            ))
        })
}

/// Children, stopped in reverse order when dropped.
#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, c) in self.0.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("stopped {name}");
        }
    }
}

impl Children {
    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, c)| match c.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited ({status})")),
            _ => None,
        })
    }
}

pub fn spawn(
    children: &mut Children,
    name: &str,
    log: &Path,
    cmd: &mut Command,
) -> Result<(), ClientError> {
    let file = std::fs::File::create(log)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", log.display())))?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| ClientError::Usage(format!("starting {name}: {e}")))?;
    children.0.push((name.to_string(), child));
    Ok(())
}

/// Starts a one-member store listening on `addr`, with its data and log under `dir`.
pub fn spawn_store(children: &mut Children, addr: &str, dir: &Path) -> Result<(), ClientError> {
    spawn(
        children,
        "gw-api-server",
        &dir.join("store.log"),
        Command::new(sibling("gw-api-server")?)
            .args([
                "--id",
                "1",
                "--listen",
                addr,
                "--peers",
                &format!("1={addr}"),
            ])
            .arg("--data-dir")
            .arg(dir.join("store")),
    )
}
