//! HTTP transport between the groups of different nodes.
//!
//! Wire format: `POST http(s)://{addr}/raft/{group}/{rpc}` with the postcard-encoded openraft
//! request as body; the answer is `200` with the postcard-encoded
//! `Result<response, RaftError>`. Any other status means the peer could not handle it (for
//! example it does not host the group yet) and counts as a network error, so openraft retries.
//! `timeout-now` is this crate's own, for leadership transfer (see [`RpcKind::TimeoutNow`]).

use std::sync::Arc;
use std::time::Duration;

use kv_storage::GroupId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};

use crate::channel::Channels;
use crate::encoding::{decode, encode};
use crate::peer_health::PeerHealth;
use crate::quiesce::{Ping, QuietGroup};
use crate::types::TypeConfig;
use crate::GroupError;
use crate::NodeId;

/// The peer RPCs, as named in the URL: openraft's three, plus `timeout-now` for leadership
/// transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// openraft `AppendEntries` (replication and heartbeats).
    Append,
    /// openraft `RequestVote`.
    Vote,
    /// openraft `InstallSnapshot`.
    Snapshot,
    /// Leadership transfer: the leader, having let followers' leases lapse, asks the target to
    /// campaign at once. Body: the leader's term (postcard `u64`); answer: postcard `()`.
    TimeoutNow,
    /// Follower read: a replica asks the leader for an index it must apply before serving a
    /// linearizable read (the leader confirms its leadership first, so it is never batched).
    /// Body: postcard `()`; answer: the index, postcard `u64`.
    ReadIndex,
    /// The node-level heartbeat that watches over quiet groups (see `quiesce`): one per peer
    /// per heartbeat interval, on the channel, addressed to no group (group 0 in the batch).
    /// Body: postcard `quiesce::Ping`; answer: postcard `Vec<quiesce::QuietGroup>`.
    Liveness,
}

impl RpcKind {
    /// The name used in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcKind::Append => "append",
            RpcKind::Vote => "vote",
            RpcKind::Snapshot => "snapshot",
            RpcKind::TimeoutNow => "timeout-now",
            RpcKind::ReadIndex => "read-index",
            RpcKind::Liveness => "liveness",
        }
    }

    /// The kind named `s` in a URL, if any.
    pub fn parse(s: &str) -> Option<RpcKind> {
        match s {
            "append" => Some(RpcKind::Append),
            "vote" => Some(RpcKind::Vote),
            "snapshot" => Some(RpcKind::Snapshot),
            "timeout-now" => Some(RpcKind::TimeoutNow),
            "read-index" => Some(RpcKind::ReadIndex),
            "liveness" => Some(RpcKind::Liveness),
            _ => None,
        }
    }
}

/// One peer RPC: the postcard-encoded request, posted with its deadline.
fn post_rpc(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    http.post(url)
        .timeout(timeout)
        .header("content-type", "application/octet-stream")
        .body(body)
}

/// How peers are reached: plain HTTP, or HTTPS (the HTTP client then carries the TLS setup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The node's one pooled HTTP client for Raft traffic, and what that traffic shows of each
/// peer's reachability. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    scheme: Scheme,
    peers: Arc<PeerHealth>,
    /// One batching channel per peer for appends, votes and timeout-now (see `channel`).
    channels: Channels,
}

impl Transport {
    /// Wrap the node's HTTP client, reaching peers by `scheme`; a peer whose RPCs fail for
    /// `down_after` counts as unreachable (see [`PeerHealth`]).
    pub fn new(http: reqwest::Client, scheme: Scheme, down_after: Duration) -> Self {
        let peers = Arc::new(PeerHealth::new(down_after));
        Transport {
            channels: Channels::new(http.clone(), scheme, peers.clone()),
            http,
            scheme,
            peers,
        }
    }

    /// Reachability of the peers, as this node's Raft traffic shows it.
    pub fn peers(&self) -> &Arc<PeerHealth> {
        &self.peers
    }

    /// Ask `leader` (at `addr`) for the read index of `group` (see [`RpcKind::ReadIndex`]).
    pub(crate) async fn read_index(
        &self,
        leader: NodeId,
        addr: &str,
        group: GroupId,
        timeout: Duration,
    ) -> Result<u64, String> {
        // A request of its own, not on the channel: the leader answers once it has confirmed
        // its leadership, and the calls batched with it would wait for that.
        let body = encode(&()).map_err(|e| e.to_string())?;
        let url = format!(
            "{}://{addr}/raft/{}/{}",
            self.scheme.as_str(),
            group.0,
            RpcKind::ReadIndex.as_str()
        );
        let resp = post_rpc(&self.http, &url, body, timeout)
            .send()
            .await
            .map_err(|e| {
                self.peers.note_failure(leader);
                format!("read index from {addr}: {e}")
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("read index from {addr}: {e}"))?;
        self.peers.note_ok(leader);
        if !status.is_success() {
            return Err(format!(
                "read index from {addr}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        decode::<u64>(&bytes).map_err(|e| format!("bad read-index answer: {e}"))
    }

    /// Send peer `target` at `addr` this node's liveness ping (see `quiesce`); the answer
    /// names the quiet groups it accepted. The peer counts as answering from the ping's send
    /// time.
    pub(crate) async fn ping(
        &self,
        target: NodeId,
        addr: &str,
        ping: &Ping,
        timeout: Duration,
    ) -> Result<Vec<QuietGroup>, String> {
        let body = encode(ping).map_err(|e| e.to_string())?;
        let sent = std::time::Instant::now();
        let bytes = self
            .channels
            .call(target, addr, GroupId(0), RpcKind::Liveness, body, timeout)
            .await?;
        let accepted: Vec<QuietGroup> =
            decode(&bytes).map_err(|e| format!("bad liveness answer from {addr}: {e}"))?;
        self.peers.note_ping_answered(target, sent);
        Ok(accepted)
    }

    /// Ask the replica of `group` at `addr` to start an election at once (leadership transfer).
    /// `term` is the sender's term: a replica that has moved on ignores a late request.
    pub(crate) async fn timeout_now(
        &self,
        group: GroupId,
        addr: &str,
        term: u64,
        timeout: Duration,
    ) -> Result<(), GroupError> {
        let body = encode(&term).map_err(|e| GroupError::BadRequest(e.to_string()))?;
        let unavailable =
            |what: String| GroupError::Unavailable(format!("timeout-now to {addr}: {what}"));
        // The target's id is not known here; 0 names no peer in the reachability record.
        let bytes = self
            .channels
            .call(NodeId(0), addr, group, RpcKind::TimeoutNow, body, timeout)
            .await
            .map_err(unavailable)?;
        decode::<()>(&bytes).map_err(|e| unavailable(format!("bad answer: {e}")))
    }

    /// A network factory for one group.
    pub(crate) fn for_group(&self, group: GroupId) -> GroupNetwork {
        GroupNetwork {
            group,
            transport: self.clone(),
        }
    }
}

/// Creates peer clients for one group.
pub struct GroupNetwork {
    group: GroupId,
    transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            addr: node.addr.clone(),
            base: format!(
                "{}://{}/raft/{}",
                self.transport.scheme.as_str(),
                node.addr,
                self.group.0
            ),
            transport: self.transport.clone(),
        }
    }
}

/// One group's connection to one peer.
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    addr: String,
    base: String,
    transport: Transport,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let bytes = if kind == RpcKind::Snapshot {
            self.single(kind, body, timeout).await?
        } else {
            self.transport
                .channels
                .call(self.target, &self.addr, self.group, kind, body, timeout)
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl PeerClient {
    /// One RPC in a request of its own (snapshots: large, and not to hold back the channel).
    async fn single<E>(
        &self,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let url = format!("{}/{}", self.base, kind.as_str());
        let peers = &self.transport.peers;
        let resp = post_rpc(&self.transport.http, &url, body, timeout)
            .send()
            .await
            .map_err(|e| {
                peers.note_failure(self.target);
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            peers.note_failure(self.target);
            RPCError::Network(NetworkError::new(&e))
        })?;
        // Any answer, even a refusal, shows the peer is there.
        peers.note_ok(self.target);
        if !status.is_success() {
            let msg = format!(
                "peer {} answered {} for {} of {}: {}",
                self.target,
                status,
                kind.as_str(),
                self.group,
                String::from_utf8_lossy(&bytes)
            );
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        Ok(bytes.to_vec())
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // An unreachable peer is retried soon but not in a tight loop.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
