//! gw-api-server: one member of the gw config store. It runs openraft over the sled store, serves the
//! client API (Config, Affinity, Cluster) and the Raft transport over tonic — mutual TLS on both, the
//! Raft transport on its own port when `--peer-listen` is given — authorizes every call
//! (`auth`, `authz`), forwards writes to the leader, and answers linearizable reads with ReadIndex;
//! with `--kube-listen`, it serves the Kubernetes API too (`kube`).

pub mod auth;
pub mod authz;
pub mod config;
pub mod errors;
pub mod kube;
pub mod metrics;
pub mod network;
pub mod node;
pub mod prevote;
pub mod services;
pub mod snapshots;
pub mod sweeper;
pub mod watch;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::metrics::{Metrics, RpcLayer};
use crate::network::{Channels, NetworkFactory};
use crate::node::Node;
use crate::services::{AffinityService, ClusterService, ConfigService, RaftService};
use anyhow::Context;
use gw_client::{MAX_MESSAGE_BYTES, Security};
use gw_proto as pb;
use gw_store::storage::{self, StorageOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::server::Router;

/// How long a connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams a peer may reset before this member accepted them, per connection, before the member
/// closes the connection (GOAWAY "too_many_resets": HTTP/2 rapid-reset protection). The leader cancels
/// each AppendEntries and heartbeat that outlives its timeout; with h2's default of 20, a follower busy
/// for a few seconds closed the leader's connection again and again and never caught up (seen in the
/// power-loss runs, with InstallSnapshot calls cut short). The bound stays; it is higher.
const MAX_PENDING_RESETS: usize = 1000;

/// The next connection, with Nagle's algorithm off (small request/response exchanges: it would hold
/// each reply for the peer's delayed ACK, ~40 ms); a failed accept (out of file descriptors, say) is
/// logged and retried.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The server side of a TLS handshake, within `HANDSHAKE_TIMEOUT`; a failure is logged (debug: it is
/// the client's) and gives `None`.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            None
        }
    }
}

/// A running member, for in-process use (tests) and for `main`.
pub struct Server {
    pub node: Arc<Node>,
    /// The address the API listener is bound to (useful with port 0).
    pub local_addr: SocketAddr,
    /// The address the Raft listener is bound to, when it has its own.
    pub peer_addr: Option<SocketAddr>,
    /// The address the Kubernetes API is bound to, when it is served.
    pub kube_addr: Option<SocketAddr>,
    shutdown: signal::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Serves `router` on `listener` until `shutdown` turns true: plaintext, or TLS handshakes done off
/// the accept loop (a slow client never holds the others up).
fn serve(
    router: Router<tower_layer::Stack<RpcLayer, tower_layer::Identity>>,
    listener: TcpListener,
    security: Security,
    mut shutdown: signal::Receiver<bool>,
) -> JoinHandle<()> {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        let result = match security {
            Security::Insecure => {
                // Small request/response exchanges: Nagle's algorithm would hold each reply for the
                // peer's delayed ACK (~40 ms).
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                });
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            Security::Mutual(tls) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                tokio::spawn(async move {
                    loop {
                        let (tcp, remote) = tokio::select! {
                            c = accept(&listener) => c,
                            _ = tx.closed() => return,
                        };
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if let Some(stream) = handshake(&acceptor, tcp, remote).await {
                                let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                            }
                        });
                    }
                });
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                        stop,
                    )
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "server stopped");
        }
    })
}

impl Server {
    /// Starts a member: opens its storage, starts Raft, binds the listeners, and (for an initial
    /// member with fresh data) initializes the cluster from `--peers`.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate().map_err(anyhow::Error::msg)?;
        if let Some(f) = gw_client::clock::skew_from_env(&format!("member-{}", config.id)) {
            tracing::warn!(file = %f.display(), "TEST ONLY: the wall clock follows a skew file");
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let security = config.security().map_err(anyhow::Error::msg)?;
        if matches!(security, Security::Insecure) {
            tracing::warn!(
                "--insecure: plaintext, and every caller may do everything; never outside a local experiment"
            );
        }
        let raft_config = Arc::new(
            config
                .raft_config()
                .validate()
                .context("raft configuration")?,
        );
        let (log, sm, store) = storage::open(
            &config.data_dir,
            StorageOptions {
                history_revisions: config.history_revisions,
                unsafe_no_sync: config.unsafe_no_sync,
            },
        )
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let peer_listener = match config.peer_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding {a}"))?,
            ),
            None => None,
        };
        let peer_addr = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let channels = Channels::new(security.clone(), local_addr);
        let raft = gw_store::types::Raft::new(
            config.id,
            raft_config,
            NetworkFactory {
                channels: channels.clone(),
            },
            log.clone(),
            sm,
        )
        .await
        .context("starting raft")?;
        let proposer = crate::node::Proposer::start(raft.clone());
        let read_index = crate::node::ReadIndexRounds::new(raft.clone());
        let metrics = Arc::new(Metrics::new(&store.metrics()));
        let node = Arc::new(Node {
            id: config.id,
            member: config.advertised(),
            raft,
            log,
            store,
            channels,
            auth: Auth::new(security.clone(), metrics.clone()),
            config: config.clone(),
            proposer,
            read_index,
            metrics: metrics.clone(),
        });
        let (shutdown, stopped) = signal::channel(false);
        let raft_service = || {
            pb::raft_server::RaftServer::new(RaftService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        let api = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
            .layer(RpcLayer(metrics.clone()))
            .add_service(
                pb::config_server::ConfigServer::new(ConfigService { node: node.clone() })
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                pb::affinity_server::AffinityServer::new(AffinityService { node: node.clone() })
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(pb::cluster_server::ClusterServer::new(ClusterService {
                node: node.clone(),
            }));
        let mut tasks = Vec::new();
        match peer_listener {
            Some(peer) => {
                let peer_router = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
                    .layer(RpcLayer(metrics.clone()))
                    .add_service(raft_service());
                tasks.push(serve(peer_router, peer, security.clone(), stopped.clone()));
                tasks.push(serve(api, listener, security.clone(), stopped.clone()));
            }
            None => tasks.push(serve(
                api.add_service(raft_service()),
                listener,
                security.clone(),
                stopped.clone(),
            )),
        }
        let kube_addr = match config.kube_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr} (--kube-listen)"))?;
                let bound = l.local_addr()?;
                tasks.push(crate::kube::serve(
                    node.clone(),
                    l,
                    bound.to_string(),
                    stopped.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        if let Some(addr) = config.metrics {
            let m = metrics.clone();
            let n = node.clone();
            let refresh = Arc::new(move || {
                let r = n.raft.metrics().borrow().clone();
                let (revision, compact_revision, objects) = n.store.read(|a| {
                    (
                        a.state.revision(),
                        a.state.compact_revision(),
                        a.state.len() as u64,
                    )
                });
                crate::metrics::Snapshot {
                    term: r.current_term,
                    leader: r.current_leader.unwrap_or(0),
                    is_leader: r.current_leader == Some(n.id),
                    last_log_index: r.last_log_index.unwrap_or(0),
                    applied_index: r.last_applied.map_or(0, |l| l.index),
                    snapshot_index: r.snapshot.map_or(0, |l| l.index),
                    purged_index: r.purged.map_or(0, |l| l.index),
                    revision,
                    compact_revision,
                    objects,
                }
            });
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(addr, m, refresh).await {
                    tracing::error!(%addr, error = %e, "metrics endpoint failed");
                }
            }));
        }
        if let Some(peers) = &config.peers
            && !node.raft.is_initialized().await?
        {
            match node.raft.initialize(peers.clone()).await {
                Ok(()) => tracing::info!(members = peers.len(), "initialized the cluster"),
                // Another initial member got there first: the cluster is forming.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(e).context("initializing the cluster"),
            }
        }
        tasks.push(tokio::spawn(crate::prevote::run(node.clone())));
        tasks.push(tokio::spawn(crate::sweeper::run(node.clone())));
        tasks.push(tokio::spawn(crate::snapshots::run(node.clone())));
        Ok(Server {
            node,
            local_addr,
            peer_addr,
            kube_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops serving and shuts Raft down.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.node
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        for t in self.tasks {
            t.abort();
        }
        Ok(())
    }

    /// Runs until Ctrl-C or SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        self.stop().await
    }
}
