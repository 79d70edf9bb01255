//! One run: start the cluster, run the workload and the nemesis side by side, heal, read everything
//! back, check, and write the run directory.

use crate::checker::{self, Validity, Verdict};
use crate::history::{Kind, Recorder};
use crate::lossyfs::Disk;
use crate::nemesis::{self, Fault, Net, Rng};
use crate::{affinity, kube_api, kube_sync, register, routing, txn, watch};
use gw_testkit::cluster::{Cluster, ClusterOptions, WanLayout};
use gw_testkit::wan::{Matrix, Wan};

/// Process ids of the txn workload's clients start here (the register's start at 0).
const TXN_PROCESSES: i64 = 100_000;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Store members (3 or 5).
    #[arg(long, default_value_t = 5)]
    pub nodes: u64,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    /// Faults to inject, in turn: kill, kill-all, power-loss, pause, partition, partition-nodes,
    /// partition-backends, clock, catchup, membership, partition-region and
    /// partition-region-backends (with --wan)
    /// (comma-separated; empty for none).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    pub nemesis: Vec<String>,
    /// Workloads, side by side (comma-separated): register (with the watch collectors), txn,
    /// affinity (sessions through two gateway nodes over four backends, with backend and gateway
    /// churn), kube-sync (two Kubernetes clusters and their agents feeding the store, with agent
    /// churn), and routing (what gateway nodes serve while the routing changes in multi-object
    /// applies).
    #[arg(long, value_delimiter = ',', default_value = "register,txn")]
    pub workload: Vec<String>,
    /// How the register workload and its watch collectors reach the members: grpc (the store's own
    /// API) or kube (their Kubernetes API, with kube-rs).
    #[arg(long, default_value = "grpc", value_parser = ["grpc", "kube"])]
    pub via: String,
    /// Lists of the txn workload.
    #[arg(long, default_value_t = 8)]
    pub lists: u64,
    /// The run directory: history.jsonl, results.json, timeline.html, the members' logs and data.
    #[arg(long)]
    pub out: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    pub clients: u64,
    /// Independent objects.
    #[arg(long, default_value_t = 20)]
    pub keys: u64,
    /// Seconds between faults, and how long each is held.
    #[arg(long, default_value_t = 4)]
    pub interval: u64,
    #[arg(long, default_value_t = 4)]
    pub hold: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Spread the members over the regions of a simulated WAN (`A:B=40ms,A:C=110ms,...[,jitter=D]
    /// [,loss=P%]`, one-way delays; `gwadm bench regions` documents the format); the run's clients sit
    /// in the first region. Needed by the partition-region nemesis.
    #[arg(long)]
    pub wan: Option<String>,
    /// Reintroduce a real bug (a null control the checkers must catch): stale-reads (linearizable
    /// reads answered from local state), no-sync (writes acknowledged before they are on disk),
    /// early-ack (writes acknowledged before they are committed), or local-failover (gateway nodes
    /// follow their own pick when a session's backend is gone).
    #[arg(long)]
    pub null_control: Option<String>,
    /// Search budget of the linearizability checker per key (steps); past it the verdict is unknown.
    #[arg(long, default_value_t = 5_000_000)]
    pub budget: u64,
    /// Affinity checker: how long after a failover or an expiry commits a node may still follow the
    /// old binding. A node follows its view of the table only within 1 s of a bookmark that confirmed
    /// the view current (else it reads the entry from the store): 1 s plus delivery.
    #[arg(long, default_value_t = 1500)]
    pub affinity_allowance_ms: u64,
    /// Affinity workload: the route is rewritten this often (ms), each version to be served by every
    /// node once it has had `--config-allowance-ms` clear of faults since it was acknowledged.
    #[arg(long, default_value_t = 1000)]
    pub reconfigure_ms: u64,
    /// See `--reconfigure-ms`: a node's catch-up after a fault (a watch reconnecting, a member
    /// catching up after a partition) and the delivery of the version. Default 2500 ms (the longest
    /// catch-up seen in CI's runs: about 1 s); with `--wan` 3500: a follower a region away learns of
    /// a commit up to a heartbeat and a round trip late (seen: up to 2 s in a debug build, with no
    /// fault at all). Faults must leave gaps longer than this (`--interval`) for any version to be
    /// due: CI's runs with `--interval 3` checked next to nothing at 3000.
    #[arg(long)]
    pub config_allowance_ms: Option<u64>,
}

fn combine(verdicts: &[(&str, &Verdict)]) -> Validity {
    if verdicts.iter().any(|(_, v)| v.valid == Validity::False) {
        Validity::False
    } else if verdicts.iter().any(|(_, v)| v.valid == Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::True
    }
}

/// Runs, writes the run directory, and returns the overall validity.
pub async fn run(args: RunArgs) -> anyhow::Result<Validity> {
    for w in &args.workload {
        anyhow::ensure!(
            matches!(
                w.as_str(),
                "register" | "txn" | "affinity" | "kube-sync" | "routing"
            ),
            "unknown workload {w:?} (register, txn, affinity, kube-sync, routing)"
        );
    }
    let register_on = args.workload.iter().any(|w| w == "register");
    let txn_on = args.workload.iter().any(|w| w == "txn");
    let affinity_on = args.workload.iter().any(|w| w == "affinity");
    let kube_sync_on = args.workload.iter().any(|w| w == "kube-sync");
    let routing_on = args.workload.iter().any(|w| w == "routing");
    let faults: Vec<Fault> = args
        .nemesis
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let on = |var: &str| vec![(var.to_string(), "true".to_string())];
    // The switch goes to the store members, to the gateway nodes (local-failover, torn), or to the
    // kube sync agents (keep-stale).
    let (mut env, mut gateway_env, agent_env) = match args.null_control.as_deref() {
        None => (vec![], vec![], vec![]),
        Some("stale-reads") => (on("GW_UNSAFE_STALE_READS"), vec![], vec![]),
        Some("no-sync") => (on("GW_UNSAFE_NO_SYNC"), vec![], vec![]),
        Some("early-ack") => (on("GW_UNSAFE_EARLY_ACK"), vec![], vec![]),
        Some("local-failover") if affinity_on => (vec![], on("GW_UNSAFE_LOCAL_FAILOVER"), vec![]),
        Some("torn") if routing_on => (vec![], on("GW_UNSAFE_TORN_REVISIONS"), vec![]),
        Some("keep-stale") if kube_sync_on => (vec![], vec![], on("GW_UNSAFE_KEEP_STALE")),
        Some(other) => anyhow::bail!(
            "unknown null control {other:?} (stale-reads, no-sync, early-ack; local-failover with the affinity workload; keep-stale with kube-sync; torn with routing)"
        ),
    };
    std::fs::create_dir_all(&args.out)?;
    // With the clock nemesis, members and gateway nodes follow skew files (the test-only override of
    // `gw_client::clock`), all 0 until the nemesis writes one.
    let clock_dir = faults
        .contains(&Fault::Clock)
        .then(|| args.out.join("clocks"));
    if let Some(d) = &clock_dir {
        std::fs::create_dir_all(d)?;
        let var = (
            gw_client::clock::SKEW_DIR_ENV.to_string(),
            d.display().to_string(),
        );
        env.push(var.clone());
        gateway_env.push(var);
    }
    // Addresses of this run only (the partition rules match on them).
    let ip_prefix = format!("127.77.{}.", std::process::id() % 250);
    // Over a WAN: members spread over its regions in turn, the run's own clients (from 127.0.0.1) in
    // the first region.
    let wan = match &args.wan {
        Some(spec) => {
            let matrix = Matrix::parse(spec).map_err(anyhow::Error::msg)?;
            let names: Vec<String> = matrix.regions().into_iter().collect();
            if names.len() < 2 {
                anyhow::bail!("--wan names fewer than two regions");
            }
            let wan = Wan::new(matrix);
            wan.place([127, 0, 0, 1].into(), &names[0]);
            let regions = (0..args.nodes as usize)
                .map(|i| names[i % names.len()].clone())
                .collect();
            Some(WanLayout { wan, regions })
        }
        None => None,
    };
    if faults.iter().any(|f| f.cuts_regions()) && wan.is_none() {
        anyhow::bail!("the partition-region nemeses need --wan");
    }
    // Firewall partitions match members' addresses, which the WAN's ingress proxies stand between.
    if wan.is_some() && faults.iter().any(|f| f.uses_firewall()) {
        anyhow::bail!(
            "with --wan, cut regions with partition-region: the firewall's partitions match member addresses, which the WAN's proxies hide"
        );
    }
    let opts = ClusterOptions {
        dir: Some(args.out.join("cluster")),
        ip_prefix: Some(ip_prefix.clone()),
        // The reference watch at the end reads the whole run's history.
        // With the catchup nemesis in a short run, snapshots at least 100 entries apart and no log
        // kept behind them: more snapshots built, sent and installed under the faults. Otherwise
        // 1000: each snapshot carries the whole history kept, and writing it (then syncing it with
        // the next vote or append) every 100 entries of the affinity workload left elections unable
        // to finish, and in runs of minutes (history of 100k+ revisions) kept the machine busy
        // encoding snapshots (see the README). Members also wait for their log to grow by a quarter
        // of the last snapshot, which holds the whole history: snapshots come further apart as a
        // run goes on. The catchup fault itself does not wait for the policy: it asks the leader to
        // compact its log.
        extra_args: [
            "--history-revisions",
            "1000000",
            "--snapshot-logs",
            if faults.contains(&Fault::Catchup) && args.time_limit <= 60 {
                "100"
            } else {
                "1000"
            },
            "--keep-logs",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        env,
        kube_api: args.via == "kube",
        metrics: false,
        wan: wan.clone(),
    };
    // With the power-loss nemesis, each member's data directory is a lossy disk over
    // `disks/member-N` (declared before the cluster: unmounted after its processes are gone).
    let disks = if faults.contains(&Fault::PowerLoss) {
        (1..=args.nodes)
            .map(|id| {
                let backing = args.out.join("disks").join(format!("member-{id}"));
                let _ = std::fs::remove_dir_all(&backing);
                let mount = args.out.join("cluster").join(format!("member-{id}"));
                let disk = Disk::mount(&backing, &mount).map_err(|e| {
                    anyhow::anyhow!(
                        "mounting the lossy disk at {} (needs /dev/fuse, root and fusermount3): {e}",
                        mount.display()
                    )
                })?;
                Ok((id, disk))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        vec![]
    };
    let cluster = Cluster::start(args.nodes, opts)?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let rec = Recorder::default();
    let addrs: Vec<(u64, String)> = cluster
        .members
        .iter()
        .map(|m| (m.id, m.reach.clone()))
        .collect();
    let admin = cluster.pki().admin_security();
    let fleet = if affinity_on {
        Some(Arc::new(
            affinity::Fleet::start(
                &cluster,
                &args.out,
                &ip_prefix,
                wan.as_ref(),
                gateway_env.clone(),
                rec.clone(),
            )
            .await?,
        ))
    } else {
        None
    };
    let routing = if routing_on {
        Some(Arc::new(
            routing::Routing::start(
                &cluster,
                &args.out,
                &ip_prefix,
                &gateway_env,
                register::channels(&addrs, &admin),
                rec.clone(),
            )
            .await?,
        ))
    } else {
        None
    };
    let clusters = if kube_sync_on {
        Some(Arc::new(
            kube_sync::Clusters::start(&cluster, &args.out, agent_env, rec.clone()).await?,
        ))
    } else {
        None
    };
    // The firewall also cuts a region's gateway nodes from other regions' backends
    // (`partition-region-backends`).
    let net = if faults
        .iter()
        .any(|f| f.uses_firewall() || *f == Fault::PartitionRegionBackends)
    {
        // The gateway nodes and backends of the workloads that run them.
        let ips =
            |a: &[std::net::SocketAddr]| a.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>();
        let (mut nodes, mut backends): (Vec<String>, Vec<String>) = (vec![], vec![]);
        if let Some(f) = &fleet {
            nodes.extend(ips(&f.addrs));
            backends.extend(ips(&f.backend_addrs));
        }
        if let Some(r) = &routing {
            nodes.extend(ips(&r.addrs));
            backends.extend(ips(&r.backend_addrs));
        }
        Some(Net::new(&cluster, nodes, backends).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let chans = register::channels(&addrs, &admin);
    let clocks = clock_dir.map(|dir| nemesis::Clocks {
        dir,
        nodes: [
            fleet.as_ref().map(|f| f.names()),
            routing.as_ref().map(|r| r.names()),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect(),
    });
    let kube_apis = if args.via == "kube" {
        Some(Arc::new(kube_api::apis(&cluster).await?))
    } else {
        None
    };
    let conns = match &kube_apis {
        Some(apis) => apis
            .iter()
            .map(|(id, a)| (*id, register::Conn::Kube(a.clone())))
            .collect(),
        None => chans
            .iter()
            .map(|(id, c)| (*id, register::Conn::Grpc(c.clone())))
            .collect(),
    };
    let cluster = tokio::sync::Mutex::new(cluster);
    let until = Instant::now() + Duration::from_secs(args.time_limit);
    let ctx = Arc::new(register::Clients {
        stride: args.clients as i64,
        chans,
        conns,
        keys: args.keys,
        rec: rec.clone(),
        next_value: AtomicI64::new(1),
        until,
    });
    let watch_chans = Arc::new(register::channels(&addrs, &admin));
    let stop_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let collectors: Vec<_> = (0..addrs.len())
        .map(|i| {
            let deadline = until + Duration::from_secs(120);
            match &kube_apis {
                Some(apis) => tokio::spawn(kube_api::collector(
                    apis.clone(),
                    i,
                    stop_at.clone(),
                    deadline,
                )),
                None => tokio::spawn(watch::collector(
                    watch_chans.clone(),
                    i,
                    stop_at.clone(),
                    deadline,
                )),
            }
        })
        .collect();
    let mut tasks = Vec::new();
    let txn_values = Arc::new(AtomicI64::new(1));
    for c in 0..args.clients {
        if register_on {
            tasks.push(tokio::spawn(register::client(
                ctx.clone(),
                c as i64,
                args.seed * 1000 + c + 1,
            )));
        }
        if txn_on {
            let first = TXN_PROCESSES + c as i64;
            tasks.push(tokio::spawn(txn::client(
                ctx.clone(),
                first,
                args.seed * 7000 + c + 1,
                args.lists,
                txn_values.clone(),
            )));
        }
    }
    // The affinity workload runs on past the faults (`affinity::End`), for long enough that every
    // node is due the versions written after the last heal: the allowance, a version's interval and
    // a margin for its apply.
    let config_allowance_ms = args.config_allowance_ms.unwrap_or(match wan {
        Some(_) => 3500,
        None => 2500,
    });
    let fleet_tail = Duration::from_millis(config_allowance_ms + args.reconfigure_ms + 1500);
    let fleet_end = affinity::End::new(until + Duration::from_secs(300));
    let mut churn = None;
    if let Some(f) = &fleet {
        for c in 0..args.clients {
            let f = f.clone();
            let seed = args.seed * 9000 + c + 1;
            let end = fleet_end.clone();
            tasks.push(tokio::spawn(async move {
                f.client(affinity::PROCESSES + c as i64, seed, end).await
            }));
        }
        let f = f.clone();
        let schedule = (
            Duration::from_secs(args.interval),
            Duration::from_secs(args.hold),
        );
        let seed = args.seed * 11 + 5;
        let g = f.clone();
        churn = Some(tokio::spawn(
            async move { f.churn(schedule, seed, until).await },
        ));
        let every = Duration::from_millis(args.reconfigure_ms);
        let end = fleet_end.clone();
        tasks.push(tokio::spawn(async move { g.reconfigure(every, end).await }));
    }
    if let Some(r) = &routing {
        for c in 0..args.clients {
            let r = r.clone();
            let seed = args.seed * 19_000 + c + 1;
            tasks.push(tokio::spawn(async move {
                r.client(routing::PROCESSES + c as i64, seed, until).await
            }));
        }
        let r = r.clone();
        let seed = args.seed * 23 + 7;
        tasks.push(tokio::spawn(async move { r.writer(seed, until).await }));
    }
    if let Some(k) = &clusters {
        for c in 0..args.clients {
            let k = k.clone();
            let seed = args.seed * 13_000 + c + 1;
            tasks.push(tokio::spawn(async move { k.client(seed, until).await }));
        }
        let k = k.clone();
        let schedule = (
            Duration::from_secs(args.interval),
            Duration::from_secs(args.hold),
        );
        let seed = args.seed * 17 + 3;
        tasks.push(tokio::spawn(
            async move { k.churn(schedule, seed, until).await },
        ));
    }
    let observer = fleet.as_ref().map(|_| {
        let chans = ctx.chans.iter().map(|(_, c)| c.clone()).collect();
        tokio::spawn(affinity::observe(chans, fleet_end.clone()))
    });
    let mut rng = Rng::new(args.seed);
    let schedule = nemesis::Schedule {
        faults: faults.clone(),
        until,
        interval: Duration::from_secs(args.interval),
        hold: Duration::from_secs(args.hold),
        wan: wan.clone(),
    };
    let effects = nemesis::run(
        &cluster,
        net.as_ref(),
        &disks,
        clocks.as_ref(),
        &schedule,
        &rec,
        &mut rng,
    )
    .await;
    if let Some(churn) = churn {
        let _ = churn.await;
    }
    fleet_end.settle(fleet_tail);
    for t in tasks {
        let _ = t.await;
    }

    // Heal everything, then read every key back (a lost write shows here).
    if let Some(n) = &net {
        let _ = n.heal();
    }
    let leader = {
        let mut c = cluster.lock().await;
        for id in c.ids() {
            c.resume(id);
            if !c.is_running(id) {
                c.spawn(id)?;
            }
        }
        c.wait_for_leader(Duration::from_secs(60)).await
    };
    // The final reads share one time budget: a cluster that serves nothing any more must not make
    // the run wait out every key's retries.
    let final_deadline = Instant::now() + Duration::from_secs(60);
    let final_process = 1_000_000;
    let mut unread = Vec::new();
    for k in 0..args.keys {
        let key = register::key_name(k);
        let mut read = false;
        for attempt in 0..20 {
            if !register_on || leader.is_err() || Instant::now() >= final_deadline {
                break;
            }
            let (node, ch) = &ctx.conns[(k as usize + attempt) % ctx.conns.len()];
            let mut inv =
                Recorder::event(final_process, Kind::Invoke, "read", Some(&key), Value::Null);
            inv.node = Some(*node);
            rec.record(inv);
            match register::read(ch, &key).await {
                Ok((v, _, rev)) => {
                    let mut e =
                        Recorder::event(final_process, Kind::Ok, "read", Some(&key), json!(v));
                    e.node = Some(*node);
                    e.revision = Some(rev).filter(|r| *r > 0);
                    rec.record(e);
                    read = true;
                    break;
                }
                Err(_) => {
                    rec.record(Recorder::event(
                        final_process,
                        Kind::Fail,
                        "read",
                        Some(&key),
                        Value::Null,
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if !read && register_on {
            unread.push(key);
        }
    }
    let mut finals = None;
    for attempt in 0..20 {
        if !txn_on || leader.is_err() || Instant::now() >= final_deadline {
            break;
        }
        match txn::read_all(&ctx.chans[attempt % ctx.chans.len()].1).await {
            Ok((lists, _)) => {
                finals = Some(
                    lists
                        .into_iter()
                        .map(|(k, (l, _))| (k, l))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                );
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let mut affinity_verdict = None;
    if let Some(f) = &fleet {
        f.heal().await?;
        // Let the nodes' last activity batches and failovers reach the store.
        tokio::time::sleep(crate::affinity::SETTLE).await;
    }
    let kube_sync_verdict = match &clusters {
        Some(k) => {
            k.heal().await?;
            let servers: Vec<String> = addrs.iter().map(|(_, a)| a.clone()).collect();
            let store = gw_client::Client::new(
                &servers,
                Duration::from_secs(10),
                &gw_client::Dialer::new(admin.clone()),
            )?;
            Some(k.check(&store).await)
        }
        None => None,
    };
    let routing_verdict = match &routing {
        Some(r) => {
            let generation = match &leader {
                Ok(id) => {
                    let i = ctx.chans.iter().position(|(n, _)| n == id).unwrap_or(0);
                    routing::stored_generation(&ctx.chans[i].1).await
                }
                Err(e) => Err(e.to_string()),
            };
            Some(match generation {
                Ok(g) => {
                    routing::check(&crate::history::pair(&rec.events()), r.converge(g).await, g)
                }
                Err(e) => Verdict {
                    valid: Validity::Unknown,
                    ops: 0,
                    details: json!({"why": format!("the stored route could not be read after healing: {e}")}),
                },
            })
        }
        None => None,
    };
    let healed = match &leader {
        Err(e) => Verdict {
            valid: Validity::False,
            ops: 0,
            details: json!({"why": format!("after healing every fault and restarting every member: {e}")}),
        },
        Ok(id) if unread.is_empty() => Verdict {
            valid: Validity::True,
            ops: args.keys as usize,
            details: json!({"leader": id}),
        },
        Ok(id) => Verdict {
            valid: Validity::Unknown,
            ops: args.keys as usize - unread.len(),
            details: json!({"leader": id, "why": "keys whose final value could not be read (a lost write would not show)", "unread": unread}),
        },
    };
    let (convergence, final_revision) = converge(&cluster).await;
    if fleet.is_some() {
        let history = match &leader {
            Ok(id) => {
                let i = ctx.chans.iter().position(|(n, _)| n == id).unwrap_or(0);
                affinity::table_history(&ctx.chans[i].1, final_revision).await
            }
            Err(e) => Err(e.to_string()),
        };
        let seen = match observer {
            Some(o) => o.await.unwrap_or_default(),
            None => affinity::Seen::default(),
        };
        affinity_verdict = Some(match history {
            Ok(t) => affinity::check(
                &crate::history::pair(&rec.events()),
                &t,
                &seen,
                args.affinity_allowance_ms,
            ),
            Err(e) => Verdict {
                valid: Validity::Unknown,
                ops: 0,
                details: json!({"why": format!("the affinity table's history could not be read: {e}")}),
            },
        });
    }
    stop_at.store(final_revision.max(1), std::sync::atomic::Ordering::Relaxed);
    let mut collected = Vec::new();
    for c in collectors {
        collected.push(c.await.unwrap_or_default());
    }
    let watch_verdict = match watch::reference(&watch_chans[0].1, final_revision).await {
        Ok(reference) => watch::check(&collected, &reference),
        Err(e) => Verdict {
            valid: Validity::Unknown,
            ops: 0,
            details: json!({"why": e}),
        },
    };

    let events = rec.events();
    let ops = crate::history::pair(&events);
    let lin = checker::register_linearizable(&ops, args.budget);
    let revs = checker::revisions_monotonic(&ops);
    let nem = nemesis_verdict(&faults, &effects);
    let txn_verdict = match &finals {
        Some(f) => txn::check(&ops, f),
        None => Verdict {
            valid: Validity::Unknown,
            ops: 0,
            details: json!({"why": "the final lists could not be read"}),
        },
    };
    let mut verdicts = vec![
        ("revisions-monotonic", &revs),
        ("nemesis-took-effect", &nem),
        ("members-converged", &convergence),
        ("healed", &healed),
    ];
    if register_on {
        verdicts.push(("linearizable", &lin));
        verdicts.push(("watch", &watch_verdict));
    }
    if txn_on {
        verdicts.push(("transactions", &txn_verdict));
    }
    if let Some(v) = &affinity_verdict {
        verdicts.push(("affinity", v));
    }
    let fleet_verdicts = fleet.as_ref().map(|f| {
        let stable = faults
            .iter()
            .any(|f| f.cuts_regions())
            .then(|| affinity::static_stability(&events, &ops, &f.regions, &f.backend_regions));
        let served = affinity::config_served(&events, &ops, &f.regions, config_allowance_ms);
        (stable, served)
    });
    if let Some((stable, served)) = &fleet_verdicts {
        if let Some(v) = stable {
            verdicts.push(("static-stability", v));
        }
        verdicts.push(("config-served", served));
    }
    if let Some(v) = &kube_sync_verdict {
        verdicts.push(("kube-sync", v));
    }
    if let Some(v) = &routing_verdict {
        verdicts.push(("routing", v));
    }
    let valid = combine(&verdicts);
    let results = json!({
        "valid": match valid { Validity::True => json!(true), Validity::False => json!(false), Validity::Unknown => json!("unknown") },
        "workload": args.workload,
        "via": args.via,
        "nodes": args.nodes,
        "time_limit_s": args.time_limit,
        "nemesis": args.nemesis,
        "null_control": args.null_control,
        "ops": ops.len() + kube_sync_verdict.as_ref().map_or(0, |v| v.ops),
        "ops_ok": ops.iter().filter(|o| o.outcome() == Kind::Ok).count(),
        "ops_info": ops.iter().filter(|o| o.outcome() == Kind::Info).count(),
        "checkers": verdicts.iter().map(|(n, v)| (n.to_string(), serde_json::to_value(v).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
    });
    let mut lines = String::new();
    for e in &events {
        lines.push_str(&serde_json::to_string(e)?);
        lines.push('\n');
    }
    std::fs::write(args.out.join("history.jsonl"), lines)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(
        args.out.join("timeline.html"),
        crate::timeline::html(&events, args.clients),
    )?;
    drop(net);
    Ok(valid)
}

/// Every configured fault must have taken effect at least once.
fn nemesis_verdict(faults: &[Fault], effects: &[(String, bool)]) -> Verdict {
    let mut missing = Vec::new();
    for f in faults {
        if !effects
            .iter()
            .any(|(what, took)| *took && what.starts_with(f.name()))
        {
            missing.push(f.name());
        }
    }
    Verdict {
        valid: if missing.is_empty() {
            Validity::True
        } else {
            Validity::False
        },
        ops: effects.len(),
        details: json!({"faults": effects.iter().map(|(w, t)| json!({"fault": w, "took_effect": t})).collect::<Vec<_>>(), "never_took_effect": missing}),
    }
}

/// After healing, every member reaches the same revision with the same state hash (and that revision).
async fn converge(cluster: &tokio::sync::Mutex<Cluster>) -> (Verdict, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let c = cluster.lock().await;
        let mut seen = Vec::new();
        for id in c.ids() {
            seen.push(
                c.member_status(id)
                    .await
                    .map(|s| (s.id, s.applied_revision, s.state_hash)),
            );
        }
        drop(c);
        last = json!(
            seen.iter()
                .map(|s| s
                    .as_ref()
                    .map(|(i, r, h)| json!({"id": i, "revision": r, "hash": h})))
                .collect::<Vec<_>>()
        );
        let all: Option<Vec<_>> = seen.into_iter().collect();
        if let Some(all) = all
            && all.windows(2).all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
        {
            let revision = all.iter().map(|m| m.1).max().unwrap_or(0);
            let v = Verdict {
                valid: Validity::True,
                ops: all.len(),
                details: json!({"members": last}),
            };
            return (v, revision);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let c = cluster.lock().await;
    let logs: Vec<String> = c
        .ids()
        .into_iter()
        .map(|id| format!("member {id}:\n{}", c.log_tail(id, 30)))
        .collect();
    drop(c);
    let revision = last
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["revision"].as_u64())
        .max()
        .unwrap_or(0);
    let v = Verdict {
        valid: Validity::False,
        ops: 0,
        details: json!({"members": last, "why": "members did not reach one revision and state hash within 60 s", "logs": logs}),
    };
    (v, revision)
}
