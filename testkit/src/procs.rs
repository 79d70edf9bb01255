//! Processes of local setups: the workspace's binaries, free loopback ports, children that are
//! stopped (SIGTERM, then SIGKILL) when their owner drops them, and a watchdog that kills them when
//! their owner dies without dropping them (`die_with_me`).

use crate::pki::Pki;
use anyhow::{Context, bail};
use gw_client::{Identity, TlsArgs};
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The watchdog's side of the pipe (`None`: it could not be started).
static WATCHDOG: OnceLock<Option<Mutex<ChildStdin>>> = OnceLock::new();

/// Makes `child` die with this process however this process ends, SIGKILL included. A watchdog
/// (`gwadm reap-children`, started on first use, in a process group of its own) is told each child's
/// pid and start time on a pipe only this process writes to; when the pipe closes — this process is
/// gone — it kills every such child still running. (A child cannot ask for `PR_SET_PDEATHSIG`
/// without `unsafe` code between fork and exec, which the workspace forbids.)
pub fn die_with_me(child: &Child) {
    if let Some(start) = start_time(child.id()) {
        tell_watchdog(&format!("{} {start}", child.id()));
    }
}

/// Makes the mount at `path` go (a lazy unmount) when this process dies without unmounting it, after
/// its children are killed (see `die_with_me`).
pub fn unmount_with_me(path: &Path) {
    tell_watchdog(&format!("mount {}", path.display()));
}

fn tell_watchdog(line: &str) {
    let watchdog = WATCHDOG.get_or_init(|| {
        let started = bin("gwadm").and_then(|b| {
            Command::new(b)
                .arg("reap-children")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting gwadm reap-children")
        });
        match started {
            Ok(mut w) => w.stdin.take().map(Mutex::new),
            Err(e) => {
                eprintln!("warning: {e:#}: child processes will outlive this one if it is killed");
                None
            }
        }
    });
    if let Some(w) = watchdog {
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(w, "{line}");
    }
}

/// A process's start time (clock ticks since boot, `/proc/PID/stat` field 22): with the pid, it names
/// one process, not whichever reuses the pid later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The watchdog (`gwadm reap-children`): reads `PID START` and `mount PATH` lines from standard input
/// until it closes, then kills (SIGKILL) each of those processes that is still the same process, and
/// lazily unmounts each of those paths still mounted.
pub fn reap_children() {
    let mut children = Vec::new();
    let mut mounts = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(path) = line.strip_prefix("mount ") {
            mounts.push(PathBuf::from(path));
            continue;
        }
        let mut f = line.split_whitespace().map(|x| x.parse::<u64>().ok());
        if let (Some(Some(pid)), Some(Some(start))) = (f.next(), f.next()) {
            children.push((pid as u32, start));
        }
    }
    for (pid, start) in children {
        if start_time(pid) == Some(start) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A binary of this workspace (`gw-api-server`, `gw-node`, `gwadm`): in `GW_BIN_DIR` if set, else
/// beside the running executable (test binaries live one level deeper, in `deps/`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("GW_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().context("the current executable")?;
            let mut dir = exe
                .parent()
                .context("the executable's directory")?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the workspace's binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The page at `path` served at `addr` (a member's metrics listener, a node's admin listener): the
/// whole HTTP/1.1 response, head and body.
pub async fn admin_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The `/metrics` page served at `addr`.
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    admin_get(addr, "/metrics").await
}

/// The ports `free_port` hands out: below Linux's ephemeral range (32768–60999 by default), so no
/// outgoing connection and no `bind(0)` elsewhere can take one between its choice and its use.
const TEST_PORTS: std::ops::Range<u16> = 20000..32000;

/// A free loopback port, reserved for the rest of this process's life: across every process on
/// the machine that asks here (parallel test processes), never handed out twice at once. The
/// reservation is a lock (`flock`) on `$TMPDIR/gw-ports/PORT`, held open until this process exits,
/// so a crashed process frees its ports; the port must also bind now (something else may use it).
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("gw-ports");
    std::fs::create_dir_all(&dir).expect("a directory for port reservations");
    let span = usize::from(TEST_PORTS.end - TEST_PORTS.start);
    // Start where other processes are unlikely to be looking.
    let seed = std::process::id() as usize * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
    for i in 0..span {
        let port = TEST_PORTS.start + ((seed + i) % span) as u16;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // A lock is per open file: a second open in this same process conflicts too.
        if file.try_lock().is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// Fails when a loopback port is taken.
pub fn ensure_free(port: u16) -> anyhow::Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| format!("port {port} is not free"))
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
    /// Kills (SIGKILL) and forgets the child `name`; whether there was one.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(i) = self.0.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let (_, mut c) = self.0.remove(i);
        let _ = c.kill();
        let _ = c.wait();
        true
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, c)| match c.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited ({status})")),
            _ => None,
        })
    }

    /// Starts `cmd` as child `name`, its standard error going to `log`; its process id.
    pub fn spawn(&mut self, name: &str, log: &Path, cmd: &mut Command) -> anyhow::Result<u32> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        die_with_me(&child);
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    /// Starts a gateway node `NAME` of GatewayClass `class` bound to `bind` for the store at `store`,
    /// its data and log under `dir`, and a node certificate from `pki`; `extra` flags besides (e.g.
    /// `--mesh`). Its admin endpoint's address and its process id.
    pub fn spawn_node(
        &mut self,
        store: &str,
        (class, name): (&str, &str),
        bind: &str,
        (dir, pki): (&Path, &Pki),
        extra: &[&str],
    ) -> anyhow::Result<(SocketAddr, u32)> {
        let tls = pki.issue(
            &format!("node-{name}"),
            &Identity::Node {
                class: class.into(),
                name: name.into(),
            },
        )?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let pid = self.spawn(
            "gw-node",
            &dir.join(format!("node-{name}.log")),
            Command::new(bin("gw-node")?)
                .args(TlsArgs::of(&tls).to_args())
                .args(["--store", store, "--gateway-class", class])
                .args(["--bind-address", bind, "--node-name", name])
                .args(["--admin", &admin.to_string()])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{name}")))
                .args(extra),
        )?;
        Ok((admin, pid))
    }

    /// Starts a one-member store with its API on `addr` (Raft on a free port beside it), its data and
    /// log under `dir`, and a member certificate from `pki`; its Kubernetes API on `kube` if given.
    pub fn spawn_store(
        &mut self,
        addr: &str,
        kube: Option<&str>,
        dir: &Path,
        pki: &Pki,
    ) -> anyhow::Result<u32> {
        let ip = addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        let peer = format!("{ip}:{}", free_port());
        let tls = pki.issue_for("member-1", &Identity::Member(1), &[ip])?;
        let mut cmd = Command::new(bin("gw-api-server")?);
        cmd.args(["--id", "1", "--listen", addr, "--peer-listen", &peer])
            .args(["--peers", &format!("1={addr}/{peer}")])
            .args(TlsArgs::of(&tls).to_args())
            .arg("--data-dir")
            .arg(dir.join("store"));
        if let Some(k) = kube {
            cmd.args(["--kube-listen", k]);
        }
        self.spawn("gw-api-server", &dir.join("store.log"), &mut cmd)
    }
}
