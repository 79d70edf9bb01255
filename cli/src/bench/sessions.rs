//! `gwadm bench sessions`: the replicated affinity table at scale. A one-member store and one gateway
//! node following the table; the table is filled with `--sessions` entries the way nodes record
//! returning sessions (Touch calls of 2 000), the member is compacted (a snapshot of the table, so
//! that the filling's own snapshot is not built while a round is timed), then config applies are
//! timed, `--rounds` rounds with
//! the store idle, then as many with `--touches-per-second` of session activity in the background
//! (the rate spread over batches every 250 ms from two callers, sent in calls of `TOUCHES_PER_CALL`,
//! as two nodes send theirs).
//! Reports the memory and disk each session costs the member and the node, the rate the table was
//! filled at, and apply latency with and without the activity.

use super::{percentile, rss_mib, timed};
use crate::error::{Error, Result};
use gw_client::{Client, Dialer};
use gw_model::affinity::{BATCH_INTERVAL, TOUCHES_PER_CALL};
use gw_proto as pb;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SessionsArgs {
    /// Session entries to put in the table.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Session activity in the background of the loaded rounds (touches of existing entries).
    #[arg(long, default_value_t = 10_000)]
    pub touches_per_second: usize,
    /// Config applies timed in each round.
    #[arg(long, default_value_t = 200)]
    pub applies: usize,
    /// Rounds of applies idle, and as many loaded.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Send the loaded rounds' activity to a second one-member store on this machine (filled with
    /// the same sessions) instead: the config path then shares the machine (cores, disk) with the
    /// activity but not its log, its state or its process — what it would see with the affinity
    /// table in a Raft group of its own.
    #[arg(long)]
    pub activity_elsewhere: bool,
}

/// Sessions per Touch call while the table is filled.
const PER_CALL: usize = 2_000;
const CALLERS: usize = 2;
const NAMESPACE: &str = "bench";

/// Session `i` as a node reports it: a route rule's scope, an endpoint's identity, an hour's idle
/// timeout, issued now.
fn session(i: usize, issued_ms: u64) -> pb::Session {
    pb::Session {
        namespace: NAMESPACE.into(),
        id: format!("s{i:07x}"),
        scope: "HTTPRoute/bench/app/rules/0".into(),
        backend: format!("bench/b{}:80|b{0}|127.0.0.1:{}", i % 4, 18370 + i % 4),
        issued_ms,
        idle_timeout_ms: Some(3_600_000),
        absolute_timeout_ms: None,
    }
}

/// Bytes under `dir`, recursively.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The node's `/status` field `field`.
async fn node_status(admin: std::net::SocketAddr, field: &str) -> Option<serde_json::Value> {
    let page = gw_testkit::procs::admin_get(&admin.to_string(), "/status")
        .await
        .ok()?;
    let body = page.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get(field)
        .cloned()
}

/// Waits until the node's copy of the affinity table holds `n` entries; how long that took.
async fn node_follows(admin: std::net::SocketAddr, n: usize, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let have = node_status(admin, "affinityEntries")
            .await
            .and_then(|v| v.as_u64());
        if have == Some(n as u64) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(Error::Usage(format!(
                "the node follows {have:?} of {n} session entries after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Background activity: `CALLERS` tasks, each sending `per_second / CALLERS / 4` touches of existing
/// sessions every `BATCH_INTERVAL` to `server`, until `stop`. Counts the touches acknowledged. They
/// run on a thread and a runtime of their own, as nodes are processes of their own: sharing the
/// timing client's runtime, a batch being built and sent held up the applies' replies (tasks are
/// not preempted).
fn activity(
    server: String,
    dialer: Dialer,
    sessions: usize,
    per_second: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<()>> {
    let per_batch = per_second * BATCH_INTERVAL.as_millis() as usize / 1000 / CALLERS;
    let (stop, done) = (stop.clone(), done.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?;
        rt.block_on(async move {
            let client = Client::new(&[server], Duration::from_secs(30), &dialer)?;
            let callers = (0..CALLERS).map(|caller| {
                let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
                async move {
                    tokio::time::sleep(BATCH_INTERVAL / CALLERS as u32 * caller as u32).await;
                    let mut tick = tokio::time::interval(BATCH_INTERVAL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut next = caller * sessions / CALLERS;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let issued = gw_client::clock::now_ms();
                        let batch: Vec<pb::Session> = (0..per_batch)
                            .map(|k| session((next + k) % sessions, issued))
                            .collect();
                        next = (next + per_batch) % sessions;
                        for chunk in batch.chunks(TOUCHES_PER_CALL) {
                            if client.touch(chunk.to_vec()).await.is_ok() {
                                done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
            futures::future::join_all(callers).await;
            Ok(())
        })
    })
}

/// Fills the table with sessions `0..n`: two calls in flight, as two nodes would send.
async fn fill(client: &Client, n: usize) -> Result<()> {
    let ids: Vec<usize> = (0..n).collect();
    for pair in ids.chunks(PER_CALL * CALLERS) {
        let issued = gw_client::clock::now_ms();
        let calls = pair.chunks(PER_CALL).map(|chunk| {
            let sessions = chunk.iter().map(|&i| session(i, issued)).collect();
            client.touch(sessions)
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    Ok(())
}

fn apply_doc(i: usize) -> pb::Document {
    pb::Document {
        json: super::configmap("sessions-bench", &format!("{i}")),
        source: "bench".into(),
        index: 1,
    }
}

pub async fn table(a: SessionsArgs) -> Result<()> {
    use gw_testkit::procs::{Children, free_port};
    if a.sessions == 0 {
        return Err(Error::Usage("--sessions must be at least 1".into()));
    }
    let dir = tempfile::Builder::new()
        .prefix("gw-sessions-")
        .tempdir()
        .map_err(anyhow::Error::from)?;
    let store = format!("127.0.0.1:{}", free_port());
    let mut children = Children::default();
    let pki = gw_testkit::pki::Pki::create(&dir.path().join("pki"))?;
    let store_pid = children.spawn_store(&store, None, dir.path(), &pki)?;
    let (admin, node_pid) = children.spawn_node(
        &store,
        ("sessions", "n1"),
        "127.0.0.2",
        (dir.path(), &pki),
        &[],
    )?;
    let client = Client::new(
        std::slice::from_ref(&store),
        Duration::from_secs(30),
        &Dialer::new(pki.admin_security()),
    )?;
    client.apply(vec![apply_doc(0)], false).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_status(admin, "storeConnected").await != Some(json!(true)) {
        if Instant::now() > deadline {
            return Err(Error::Usage(format!(
                "the node did not reach the store (logs in {})",
                dir.path().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store_dir = dir.path().join("store");
    let node_dir = dir.path().join("node-n1");
    let measure = || {
        (
            rss_mib(store_pid),
            rss_mib(node_pid),
            disk_bytes(&store_dir),
            disk_bytes(&node_dir),
        )
    };
    let before = measure();

    let t0 = Instant::now();
    fill(&client, a.sessions).await?;
    let fill_s = t0.elapsed().as_secs_f64();
    let follow = node_follows(admin, a.sessions, Duration::from_secs(600)).await?;
    // The filling's own snapshot (its log holds the whole table) taken now, as a member that has
    // held the table a while has one, rather than while a round is timed.
    let t1 = Instant::now();
    client.compact_log(Duration::from_secs(600)).await?;
    let snapshot_s = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = measure();
    let n = a.sessions as f64;
    let mib_each = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) => format!("{:.0}", (a - b) * 1_048_576.0 / n),
        _ => "-".into(),
    };
    println!(
        "# {} sessions: filled in {fill_s:.1} s ({:.0} sessions/s), followed by the node {:.1} s later; a snapshot of the table took {snapshot_s:.1} s",
        a.sessions,
        n / fill_s,
        follow.as_secs_f64()
    );
    println!("| | member | node |");
    println!("|---|---:|---:|");
    println!(
        "| RSS bytes per session | {} | {} |",
        mib_each(before.0, after.0),
        mib_each(before.1, after.1)
    );
    println!(
        "| disk bytes per session | {:.0} | {:.0} |",
        after.2.saturating_sub(before.2) as f64 / n,
        after.3.saturating_sub(before.3) as f64 / n
    );
    println!(
        "| RSS MiB with the table | {:.0} | {:.0} |",
        after.0.unwrap_or(f64::NAN),
        after.1.unwrap_or(f64::NAN)
    );

    // Applies: every idle round first (before any activity: what it leaves behind, snapshots of a
    // longer log, would count against the idle rounds), then with activity in the background.
    let mut next = 1;
    let mut apply_round = || {
        let start = next;
        next += a.applies;
        let client = client.clone();
        async move {
            let client = &client;
            timed(a.applies, Duration::ZERO, |i| async move {
                client
                    .apply(vec![apply_doc(start + i)], false)
                    .await
                    .map(|_| ())
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))
            })
            .await
        }
    };
    let mut idle = Vec::new();
    for _ in 0..a.rounds {
        idle.push(apply_round().await?);
    }
    let activity_server = if a.activity_elsewhere {
        let other = format!("127.0.0.1:{}", free_port());
        let other_dir = dir.path().join("elsewhere");
        std::fs::create_dir_all(&other_dir).map_err(anyhow::Error::from)?;
        children.spawn_store(&other, None, &other_dir, &pki)?;
        let c = Client::new(
            std::slice::from_ref(&other),
            Duration::from_secs(30),
            &Dialer::new(pki.admin_security()),
        )?;
        fill(&c, a.sessions).await?;
        other
    } else {
        store.clone()
    };
    let mut loaded = Vec::new();
    for _ in 0..a.rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let generator = activity(
            activity_server.clone(),
            Dialer::new(pki.admin_security()),
            a.sessions,
            a.touches_per_second,
            &stop,
            &done,
        );
        // Let the activity reach its pace before timing.
        tokio::time::sleep(BATCH_INTERVAL * 4).await;
        let (counted_from, t1) = (done.load(Ordering::Relaxed), Instant::now());
        let times = apply_round().await?;
        let rate =
            (done.load(Ordering::Relaxed) - counted_from) as f64 / t1.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || generator.join())
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|_| anyhow::anyhow!("the activity generator panicked"))??;
        loaded.push((times, rate));
    }
    println!();
    println!(
        "# config applies ({} a round): {} rounds idle, then {} with {} touches/s of existing sessions{}",
        a.applies,
        a.rounds,
        a.rounds,
        a.touches_per_second,
        if a.activity_elsewhere {
            " sent to a second store on this machine"
        } else {
            ""
        }
    );
    println!("| round | idle p50 ms | idle p99 | loaded p50 | loaded p99 | touches/s done |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut rows, mut idle99s, mut loaded99s) = (Vec::new(), Vec::new(), Vec::new());
    for (round, (idle, (loaded, rate))) in idle.iter().zip(&loaded).enumerate() {
        let (i50, i99) = (percentile(idle, 50.0), percentile(idle, 99.0));
        let (l50, l99) = (percentile(loaded, 50.0), percentile(loaded, 99.0));
        idle99s.push(i99);
        loaded99s.push(l99);
        println!(
            "| {} | {i50:.2} | {i99:.2} | {l50:.2} | {l99:.2} | {rate:.0} |",
            round + 1
        );
        rows.push(
            json!({"round": round + 1, "idle_p50_ms": i50, "idle_p99_ms": i99,
            "loaded_p50_ms": l50, "loaded_p99_ms": l99, "touches_per_s": rate}),
        );
    }
    let (idle99, loaded99) = (super::median(idle99s), super::median(loaded99s));
    println!(
        "medians over the rounds: idle p99 {idle99:.2} ms, loaded p99 {loaded99:.2} ms: {:.2}×",
        loaded99 / idle99
    );
    println!(
        "JSON: {}",
        json!({"bench": "sessions", "sessions": a.sessions, "fill_s": fill_s,
            "activity_elsewhere": a.activity_elsewhere,
            "follow_s": follow.as_secs_f64(), "snapshot_s": snapshot_s,
            "member_rss_mib": [before.0, after.0], "node_rss_mib": [before.1, after.1],
            "member_disk_bytes": [before.2, after.2], "node_disk_bytes": [before.3, after.3],
            "rounds": rows})
    );
    Ok(())
}
