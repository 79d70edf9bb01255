//! The Raft transport over tonic: openraft's `RaftNetwork` on the client side (JSON-encoded openraft
//! messages in a `RaftPayload`) and a cache of one mutual-TLS HTTP/2 channel per peer, shared with request
//! forwarding.

use gw_client::{Dialer, Expect, MAX_APPLY_BYTES, MAX_MESSAGE_BYTES, Security};
use gw_proto::RaftPayload;
use gw_proto::raft_client::RaftClient;
use gw_store::types::{Member, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// One lazily connected channel per (address, member expected there), dialed with this member's own
/// certificate from its own listen address.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<(String, u64), Channel>>>,
    dialer: Dialer,
}

impl Channels {
    /// Channels whose connections leave from `listen`'s address (unless it is unspecified: on a
    /// multi-homed host, peers see connections come from the address they know).
    pub fn new(security: Security, listen: std::net::SocketAddr) -> Channels {
        let ip = listen.ip();
        Channels {
            inner: Arc::default(),
            dialer: Dialer::new(security)
                .source((!ip.is_unspecified()).then_some(ip))
                .connect_timeout(Duration::from_millis(500))
                .keep_alive(Duration::from_secs(5)),
        }
    }

    /// A channel to member `id` at `addr`: its certificate must name that member.
    pub fn get(&self, addr: &str, id: u64) -> Result<Channel, gw_client::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (addr.to_string(), id);
        if let Some(c) = map.get(&k) {
            return Ok(c.clone());
        }
        let channel = self.dialer.clone().expect(Expect::Member(id)).lazy(addr)?;
        map.insert(k, channel.clone());
        Ok(channel)
    }

    /// Connects to `addr` now and checks that member `id` answers there (a handshake only).
    pub async fn probe(&self, addr: &str, id: u64) -> Result<(), gw_client::Error> {
        self.dialer
            .clone()
            .expect(Expect::Member(id))
            .connect(addr)
            .await
            .map(drop)
    }
}

/// Creates a connection object per target member.
#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerConnection {
            target,
            addr: node.raft_addr().to_string(),
            channels: self.channels.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    channels: Channels,
}

/// The most bytes of entries one AppendEntries carries when it carries several (openraft 0.9 gives the
/// call one heartbeat interval, including the follower's sync).
const APPEND_BUDGET_BYTES: usize = MAX_APPLY_BYTES;

/// Which Raft RPC to call.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    /// Sends one openraft request and decodes the remote `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        entries: u64,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channels
            .get(&self.addr, self.target)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if entries > 1 && data.len() > APPEND_BUDGET_BYTES {
            // Too many (big) entries for one call to finish within its heartbeat: openraft sends
            // fewer next time. One entry always goes (an apply is at most MAX_APPLY_BYTES).
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(
                    (entries * APPEND_BUDGET_BYTES as u64 / data.len() as u64)
                        .clamp(1, entries - 1),
                ),
            ));
        }
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        self.call(Rpc::AppendEntries, &rpc, entries, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, 0, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, 0, &option).await
    }
}
