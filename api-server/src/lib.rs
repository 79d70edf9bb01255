//! gw-api-server: one member of the gw config store. It runs openraft over the sled store, serves the
//! Raft transport and the client API (Config, Cluster) over tonic, forwards writes to the leader, and
//! answers linearizable reads with ReadIndex.

pub mod config;
pub mod errors;
pub mod network;
pub mod node;
pub mod services;
pub mod sweeper;
pub mod watch;

use crate::config::ServerConfig;
use crate::network::{Channels, NetworkFactory};
use crate::node::Node;
use crate::services::{AffinityService, ClusterService, ConfigService, RaftService};
use anyhow::Context;
use gw_client::MAX_MESSAGE_BYTES;
use gw_proto as pb;
use gw_store::storage::{self, StorageOptions};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// A running member, for in-process use (tests) and for `main`.
pub struct Server {
    pub node: Arc<Node>,
    /// The address the listener is bound to (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// Starts a member: opens its storage, starts Raft, binds the listener, and (for an initial member
    /// with fresh data) initializes the cluster from `--peers`.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate().map_err(anyhow::Error::msg)?;
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
        let channels = Channels::from_listen(local_addr);
        let raft = gw_store::types::Raft::new(
            config.id,
            raft_config,
            NetworkFactory {
                channels: channels.clone(),
            },
            log,
            sm,
        )
        .await
        .context("starting raft")?;
        let proposer = crate::node::Proposer::start(raft.clone());
        let node = Arc::new(Node {
            id: config.id,
            addr: config.advertised_addr(),
            region: config.region.clone(),
            raft,
            store,
            channels,
            config: config.clone(),
            proposer,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                pb::config_server::ConfigServer::new(ConfigService { node: node.clone() })
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(pb::affinity_server::AffinityServer::new(AffinityService {
                node: node.clone(),
            }))
            .add_service(pb::cluster_server::ClusterServer::new(ClusterService {
                node: node.clone(),
            }))
            .add_service(
                pb::raft_server::RaftServer::new(RaftService { node: node.clone() })
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        // Small request/response exchanges: Nagle's algorithm would hold each reply for the peer's
        // delayed ACK (~40 ms).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        }));
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
        let sweeper = tokio::spawn(crate::sweeper::run(node.clone()));
        Ok(Server {
            node,
            local_addr,
            shutdown: Some(tx),
            serve,
            sweeper,
        })
    }

    /// Stops serving and shuts Raft down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.node
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        self.serve.abort();
        self.sweeper.abort();
        Ok(())
    }

    /// Runs until the server task ends (it does not on its own) or Ctrl-C/SIGTERM.
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
