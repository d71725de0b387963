//! A cluster of [`RaftHost`]s on loopback for kv-raft's integration tests.
//!
//! kv-raft has no server of its own, so each host sits behind a tiny axum server that routes
//! `POST /raft/{group}/{rpc}` to [`RaftHost::handle_rpc`] and `POST /raft/batch` to
//! [`kv_raft::channel::serve_batch`], as kv-node's peer routes do. Every
//! node has its own redb store in a temp dir and listens on a free port. Timings are short
//! (heartbeat 50 ms, election 300-600 ms) so elections and lease waits stay quick.

// Every test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use kv_raft::{Group, NodeId, RaftHost, RaftTuning, RpcKind};
use kv_storage::{GroupId, Store};
use openraft::BasicNode;
use tempfile::TempDir;
use tokio::task::{AbortHandle, JoinSet};

/// How long any wait for the cluster to settle may take before the test fails.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Raft timings for tests: fast, with election_min well above the heartbeat.
pub fn fast_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        request_timeout: Duration::from_secs(5),
        ..RaftTuning::default()
    }
}

/// One node: its host, the address its peers reach it at, its server and its data directory.
struct TestNode {
    host: Arc<RaftHost>,
    addr: String,
    server: AbortHandle,
    _dir: TempDir,
}

/// Nodes that can host Raft groups and reach each other over HTTP. The servers stop when the
/// cluster is dropped.
pub struct TestCluster {
    nodes: BTreeMap<NodeId, TestNode>,
    servers: JoinSet<()>,
}

async fn raft_rpc(
    State(host): State<Arc<RaftHost>>,
    Path((group, rpc)): Path<(u64, String)>,
    body: Bytes,
) -> Response {
    let Some(kind) = RpcKind::parse(&rpc) else {
        return (StatusCode::NOT_FOUND, format!("unknown raft rpc {rpc:?}")).into_response();
    };
    match host.handle_rpc(group, kind, &body).await {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `POST /raft/batch`, as kv-node serves it (without its on-demand opening of groups).
async fn raft_batch(State(host): State<Arc<RaftHost>>, body: Bytes) -> Response {
    let served = kv_raft::channel::serve_batch(&host, &body, |_, _, _| async { Ok(()) }).await;
    match served {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

impl TestCluster {
    /// Start one node per id, each with its own store and server on a free loopback port.
    pub async fn start(ids: &[NodeId]) -> TestCluster {
        Self::start_with(ids, &fast_tuning()).await
    }

    /// [`TestCluster::start`] with other Raft timings.
    pub async fn start_with(ids: &[NodeId], tuning: &RaftTuning) -> TestCluster {
        let mut nodes = BTreeMap::new();
        let mut servers = JoinSet::new();
        for &id in ids {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::redb(&dir.path().join("node.redb")).unwrap();
            let http = reqwest::Client::builder().build().unwrap();
            let host = RaftHost::new(
                id,
                store,
                http,
                kv_raft::Scheme::Http,
                tuning,
                dir.path().join("snapshots"),
            )
            .unwrap();
            let host = Arc::new(host);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let app = Router::new()
                .route("/raft/batch", post(raft_batch))
                .route("/raft/{group}/{rpc}", post(raft_rpc))
                .with_state(host.clone());
            let server = servers.spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            nodes.insert(
                id,
                TestNode {
                    host,
                    addr,
                    server,
                    _dir: dir,
                },
            );
        }
        TestCluster { nodes, servers }
    }

    /// Open `group` on every node and make `voters` its first membership; return the leader
    /// once every voter agrees on it.
    pub async fn create_group(&self, group: GroupId, voters: &[NodeId]) -> NodeId {
        for node in self.nodes.values() {
            node.host.open_group(group).await.unwrap();
        }
        let members: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|id| (*id, BasicNode::new(self.addr(*id))))
            .collect();
        for id in voters {
            self.host(*id)
                .initialize(group, members.clone())
                .await
                .unwrap();
        }
        self.leader(group, voters).await
    }

    /// The address node `id` serves peer RPCs on.
    pub fn addr(&self, id: NodeId) -> &str {
        &self.nodes[&id].addr
    }

    /// Node `id`'s host.
    pub fn host(&self, id: NodeId) -> &RaftHost {
        &self.nodes[&id].host
    }

    /// Node `id`'s handle on `group`.
    pub fn group(&self, id: NodeId, group: GroupId) -> Group {
        self.host(id).group(group).unwrap()
    }

    /// Wait until one of `voters` leads `group` and every voter knows it; return it.
    pub async fn leader(&self, group: GroupId, voters: &[NodeId]) -> NodeId {
        let mut agreed = None;
        wait_until("the voters agree on a leader", SETTLE, || {
            let seen: Vec<Option<NodeId>> = voters
                .iter()
                .map(|id| self.group(*id, group).leader().map(|(l, _)| l))
                .collect();
            agreed = seen[0].filter(|l| {
                seen.iter().all(|s| *s == Some(*l)) && self.group(*l, group).is_leader()
            });
            std::future::ready(agreed.is_some())
        })
        .await;
        agreed.unwrap()
    }

    /// Take node `id` off the network and stop its groups, as if it crashed.
    pub async fn stop(&self, id: NodeId) {
        let node = &self.nodes[&id];
        node.server.abort();
        node.host.shutdown().await;
    }

    /// Stop every group and server.
    pub async fn shutdown(mut self) {
        for node in self.nodes.values() {
            node.host.shutdown().await;
        }
        self.servers.abort_all();
        while self.servers.join_next().await.is_some() {}
    }
}

/// Poll `condition` until it holds; panic naming `what` if it still does not after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
