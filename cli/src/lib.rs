//! gwadm: the operator's tool for gw — apply, get, delete and watch config objects, administer the store
//! cluster. Each subcommand is a function of this library; `main` only parses flags.

pub mod affinity_cmds;
pub mod bench;
pub mod cluster_cmds;
pub mod config_cmds;
pub mod error;
pub mod output;
pub mod pki_cmds;
pub mod status_cmds;
pub mod up;

use clap::{Parser, Subcommand};
pub use error::{Error, Result};
use gw_client::Client;
use output::Format;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "gwadm",
    version,
    about = "Operate gw: the config store, gateway nodes, and local demos"
)]
pub struct Cli {
    /// Store members to talk to (HOST:PORT, comma-separated); tried in turn.
    #[arg(
        long,
        global = true,
        env = "GW_SERVER",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    pub server: Vec<String>,

    /// Seconds a request keeps retrying while no member can serve it (leader election, restarts).
    #[arg(long, global = true, default_value_t = 15.0)]
    pub retry_for: f64,

    /// Mutual TLS with the store: the CA, and an admin's (or agent's) certificate (see `gwadm pki`).
    #[command(flatten)]
    pub tls: gw_client::TlsArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the objects of YAML/JSON files, atomically (all or nothing, one revision).
    Apply {
        /// File, directory or `-` (stdin); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Recurse into directories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Validate and show what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Then wait until every live gateway node serves the revision written (default 30s), print
        /// how many do and how long it took; name those that do not and fail.
        #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = "30s",
              require_equals = true, value_parser = status_cmds::parse_timeout)]
        wait: Option<Duration>,
    },
    /// Show objects of one kind (kubectl-style kind names: httproute, httproutes, gtw, svc, ...).
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Read this member's local state (possibly stale) instead of a linearizable read.
        #[arg(long)]
        serializable: bool,
        /// Present the objects at another served version of their kind (e.g. v1alpha2).
        #[arg(long = "api-version")]
        api_version: Option<String>,
        /// Show the values of Secrets (admins only; never the session keys), which are otherwise
        /// redacted.
        #[arg(long)]
        show_secret_values: bool,
        /// Only the objects carried from this Kubernetes cluster (by its kube sync agent).
        #[arg(long)]
        origin: Option<String>,
    },
    /// Delete objects by kind and name, or those of files.
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[arg(short = 'R', long)]
        recursive: bool,
        #[arg(long)]
        ignore_not_found: bool,
        #[arg(long)]
        dry_run: bool,
        /// Then wait until every live gateway node serves the revision written (default 30s), print
        /// how many do and how long it took; name those that do not and fail.
        #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = "30s",
              require_equals = true, value_parser = status_cmds::parse_timeout)]
        wait: Option<Duration>,
    },
    /// Print committed changes as they happen (one line per event; JSON with -o json).
    Watch {
        kind: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Print the events after this revision (default: start with a snapshot of the current state).
        #[arg(long)]
        from: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Also print bookmarks (progress notifications).
        #[arg(long)]
        bookmarks: bool,
        /// Exit once the events of this revision have been printed.
        #[arg(long)]
        until: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Show the values of Secrets (admins only; never the session keys).
        #[arg(long)]
        show_secret_values: bool,
    },
    /// The store's members and the gateway nodes: the revision each node serves, how far behind the
    /// store it is, since when, and whether its registration is live.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The kube sync agents that reported to the store: their last contact and the objects of
    /// theirs the store refused (held by another cluster).
    Clusters,
    /// Print a kubeconfig for a member's Kubernetes API (its --kube-listen address), with this
    /// client's certificate (--tls-*): `gwadm kubeconfig --kube-server H:P > kc; kubectl --kubeconfig kc ...`.
    Kubeconfig {
        /// The member's Kubernetes API (`HOST:PORT`, as its certificate names the host).
        #[arg(long)]
        kube_server: String,
        /// The name of the cluster, user and context in the kubeconfig.
        #[arg(long, default_value = "gw")]
        name: String,
    },
    /// Benchmarks (see the README: run side by side with the reference implementations).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Start a local all-in-one gw (store, gateway node, two echo backends) with a demo config.
    Up(up::UpArgs),
    /// An echo backend: answers every request with a JSON description of it (conformance field names).
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
        /// Pod name it reports.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Namespace it reports.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Accept only HTTP/2 (prior knowledge).
        #[arg(long)]
        h2c: bool,
    },
    /// The watchdog of local setups' child processes (see `gw_testkit::procs::die_with_me`): reads
    /// `PID START` lines until standard input closes, then kills those processes.
    #[command(hide = true)]
    ReapChildren,
    /// Gateway API conformance: replay the upstream v1.1 suite against a fresh gw and report.
    Conformance {
        #[command(subcommand)]
        command: ConformanceCommand,
    },
    /// The replicated session affinity table: list, show and evict sessions; rotate the token key.
    Affinity {
        #[command(subcommand)]
        command: affinity_cmds::AffinityCommand,
    },
    /// The cluster's PKI: its CA, and certificates for members, gateway nodes, agents and admins.
    Pki {
        #[command(subcommand)]
        command: pki_cmds::PkiCommand,
    },
    /// The store cluster: status and membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Store write/read/watch workloads of ../shared/bench/store-bench, against gw.
    Store(bench::StoreBenchArgs),
    /// Time from an acknowledged route change until every gateway node serves it.
    Propagation(bench::PropagationArgs),
    /// Applies and reads over a simulated WAN, one member per region, against the round-trip floor.
    Regions(bench::RegionsArgs),
    /// The affinity table at scale: memory per session, config applies with session activity.
    Sessions(bench::sessions::SessionsArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConformanceCommand {
    /// Run the suite's tests of the chosen profiles; write a ConformanceReport.
    Run(gw_conformance::RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, revision and every member's role and applied revision.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Add a member as a non-voting learner (start it first, without --peers).
    AddLearner {
        #[arg(long)]
        id: u64,
        /// Its client API (its --listen or --advertise).
        #[arg(long)]
        addr: String,
        /// Its Raft transport (its --peer-listen), when it has one.
        #[arg(long, default_value = "")]
        peer_addr: String,
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member (voter or learner).
    Remove { id: u64 },
    /// Snapshot one member's state now and purge its log up to the snapshot (the member --server
    /// names; give one). Members whose log ends before that then catch up by snapshot.
    CompactLog {
        /// How long to wait for the snapshot and the purge, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    // Only the commands that talk to the store need its address and TLS material.
    let store = || -> Result<Client> {
        let security = cli.tls.security().map_err(Error::Usage)?;
        Ok(Client::new(
            &cli.server,
            Duration::from_secs_f64(cli.retry_for),
            &gw_client::Dialer::new(security),
        )?)
    };
    match cli.command {
        Command::Apply {
            files,
            recursive,
            dry_run,
            wait,
        } => config_cmds::apply(&store()?, &files, recursive, dry_run, wait).await,
        Command::Status { output } => status_cmds::status(&store()?, output == Format::Json).await,
        Command::Affinity { command } => affinity_cmds::run(&store()?, command).await,
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
            serializable,
            api_version,
            show_secret_values,
            origin,
        } => {
            config_cmds::get(
                &store()?,
                config_cmds::GetArgs {
                    kind: &kind,
                    name: name.as_deref(),
                    namespace: namespace.as_deref(),
                    all_namespaces,
                    format: output,
                    serializable,
                    version: api_version.as_deref(),
                    show_secret_values,
                    origin: origin.as_deref(),
                },
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            namespace,
            files,
            recursive,
            ignore_not_found,
            dry_run,
            wait,
        } => {
            let how = config_cmds::DeleteHow {
                ignore_not_found,
                dry_run,
                wait,
            };
            match (kind, name, files.is_empty()) {
                (None, None, false) => {
                    config_cmds::delete_files(&store()?, &files, recursive, how).await
                }
                (Some(kind), Some(name), true) => {
                    config_cmds::delete_named(&store()?, &kind, &name, namespace.as_deref(), how)
                        .await
                }
                _ => Err(Error::Usage("give either KIND NAME or -f FILE".into())),
            }
        }
        Command::Watch {
            kind,
            namespace,
            from,
            output,
            bookmarks,
            until,
            timeout,
            show_secret_values,
        } => {
            config_cmds::watch(
                &store()?,
                config_cmds::WatchArgs {
                    kind: kind.as_deref(),
                    namespace: namespace.as_deref(),
                    from,
                    json: output == Format::Json,
                    bookmarks,
                    until,
                    timeout: timeout.map(Duration::from_secs_f64),
                    show_secret_values,
                },
            )
            .await
        }
        Command::Bench {
            command: BenchCommand::Store(args),
        } => bench::run(args, &cli.tls).await,
        Command::Bench {
            command: BenchCommand::Propagation(args),
        } => bench::propagation(args).await,
        Command::Bench {
            command: BenchCommand::Regions(args),
        } => bench::regions(args).await,
        Command::Bench {
            command: BenchCommand::Sessions(args),
        } => bench::sessions::table(args).await,
        Command::Up(args) => up::run(args).await,
        Command::ReapChildren => {
            tokio::task::spawn_blocking(gw_testkit::procs::reap_children)
                .await
                .map_err(|e| anyhow::anyhow!("the watchdog: {e}"))?;
            Ok(())
        }
        Command::Conformance {
            command: ConformanceCommand::Run(args),
        } => Ok(gw_conformance::run(args).await?),
        Command::EchoServer {
            listen,
            name,
            namespace,
            h2c,
        } => {
            let cfg = gw_testkit::echo::EchoConfig {
                listen,
                pod: name,
                namespace,
                h2c_only: h2c,
                log: true,
                tls: None,
            };
            let server = gw_testkit::echo::start(cfg)
                .await
                .map_err(|e| Error::Usage(format!("echo server on {listen}: {e}")))?;
            eprintln!("echo server listening on {}", server.addr);
            let _ = tokio::signal::ctrl_c().await;
            Ok(())
        }
        Command::Pki { command } => pki_cmds::run(command),
        Command::Clusters => {
            let reports = store()?
                .list_objects(
                    gw_model::kinds::GW_GROUP,
                    gw_model::registry::REPORT_KIND,
                    "",
                )
                .await?;
            print!("{}", output::clusters(&reports));
            Ok(())
        }
        Command::Kubeconfig { kube_server, name } => {
            let kc = gw_client::kubeconfig::kubeconfig(&kube_server, &cli.tls, &name)
                .map_err(Error::Usage)?;
            println!("{}", serde_json::to_string_pretty(&kc).unwrap_or_default());
            Ok(())
        }
        Command::Cluster { command } => {
            let client = store()?;
            match command {
                ClusterCommand::Status { output } => {
                    cluster_cmds::status(&client, output == Format::Json).await
                }
                ClusterCommand::AddLearner {
                    id,
                    addr,
                    peer_addr,
                    region,
                } => cluster_cmds::add_learner(&client, id, &addr, &peer_addr, &region).await,
                ClusterCommand::Promote { id } => cluster_cmds::promote(&client, id).await,
                ClusterCommand::Remove { id } => cluster_cmds::remove(&client, id).await,
                ClusterCommand::CompactLog { timeout } => {
                    cluster_cmds::compact_log(&client, Duration::from_secs(timeout)).await
                }
            }
        }
    }
}
