//! A killed gw-jepsen run, or a killed `gwadm up`, leaves nothing running: every member, gateway node
//! and backend dies with its owner (`gw_testkit::procs::die_with_me`), and the power-loss disks are
//! unmounted.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_testkit::procs::{bin, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The processes whose parent is `pid`, with their command names, excluding the watchdog.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok());
        let cmdline = std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        if ppid == Some(pid) && !cmdline.contains("reap-children") {
            out.push((p, head.rsplit_once('(').map_or("", |x| x.1).to_string()));
        }
    }
    out
}

/// Whether the process is gone (or a zombie nobody reaped yet: it runs nothing).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Waits until `owner` has the children `want` names (command name, how many), then kills it with
/// `sig` and checks that every one of its children (the watchdog aside) is gone within 10 s.
fn kill_owner_and_check(mut owner: Child, want: &[(&str, usize)], sig: Signal) {
    let pid = owner.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kids = children_of(pid);
    let started = |kids: &[(u32, String)]| {
        want.iter()
            .all(|(name, n)| kids.iter().filter(|(_, k)| k == name).count() >= *n)
    };
    while !started(&kids) {
        assert!(
            Instant::now() < deadline,
            "only {kids:?} started (want {want:?})"
        );
        assert!(owner.try_wait().unwrap().is_none(), "the owner exited");
        std::thread::sleep(Duration::from_millis(200));
        kids = children_of(pid);
    }
    // Settled: the last ones may be starting.
    std::thread::sleep(Duration::from_secs(1));
    kids = children_of(pid);
    kill(Pid::from_raw(pid as i32), sig).unwrap();
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kids.iter().any(|(p, _)| !gone(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let alive: Vec<_> = kids.iter().filter(|(p, _)| !gone(*p)).collect();
    assert!(alive.is_empty(), "still running after {sig}: {alive:?}");
}

#[test]
fn a_killed_run_leaves_no_member_node_or_backend_running() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse (the power-loss disks)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let owner = Command::new(env!("CARGO_BIN_EXE_gw-jepsen"))
        .args([
            "run",
            "--nodes",
            "3",
            "--time-limit",
            "120",
            "--workload",
            "register,routing",
            "--nemesis",
            "power-loss",
            "--interval",
            "60",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 3 members, 3 backends (gwadm echo-server), 2 gateway nodes.
    kill_owner_and_check(
        owner,
        &[("gw-api-server", 3), ("gwadm", 3), ("gw-node", 2)],
        Signal::SIGKILL,
    );
    // The lossy disks went with it (fusermount3's auto-unmount).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mounted = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(out.to_str().unwrap())
    };
    while mounted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!mounted(), "a power-loss disk is still mounted");
}

fn gwadm_up(dir: &std::path::Path) -> Child {
    Command::new(bin("gwadm").unwrap())
        .args(["up", "--data-dir"])
        .arg(dir)
        .args(["--port", &free_port().to_string()])
        .args(["--store-port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .args(["--kube-port", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn gwadm_up_killed_or_terminated_leaves_nothing_running() {
    for sig in [Signal::SIGKILL, Signal::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        // The store and the gateway node (the echo backends run inside gwadm).
        kill_owner_and_check(
            gwadm_up(dir.path()),
            &[("gw-api-server", 1), ("gw-node", 1)],
            sig,
        );
    }
}

/// `gwadm up --wan`: each region's node answers from its own region's backend; terminated, it leaves
/// nothing running.
#[test]
fn gwadm_up_over_a_wan_serves_each_region_locally_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let owner = Command::new(bin("gwadm").unwrap())
        .args(["up", "--wan", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The regions in order (the nodes bind 127.64.0.1, .2, .3).
    for (i, region) in ["ap-south", "eu-west", "us-east"].iter().enumerate() {
        let node = format!("127.64.0.{}:{port}", i + 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        let pod = loop {
            let answer = pod_behind(&node);
            if answer.is_some() || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            pod.as_deref(),
            Some(format!("app-{region}").as_str()),
            "{node}"
        );
    }
    kill_owner_and_check(
        owner,
        &[("gw-api-server", 3), ("gw-node", 3), ("gwadm", 3)],
        Signal::SIGTERM,
    );
}

/// The pod an echo backend named in its answer to `GET /` for the demo host through `node`.
fn pod_behind(node: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.demo.example\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    if !buf.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (_, rest) = buf.split_once("\"pod\":\"")?;
    Some(rest.split('"').next()?.to_string())
}
