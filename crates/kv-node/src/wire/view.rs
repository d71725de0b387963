//! What nodes tell each other about the cluster outside Raft: a node's view of its groups and
//! moves (`GET /internal/v1/view`) and the map it routes by (`GET /internal/v1/map`). Nodes act
//! on these (a replica deletes its copy of a partition once the partition's leader no longer
//! counts it; a node removed while away learns it from a newer map), so they are types of
//! their own, apart from the public status documents (`kv_client::api`), which a node builds
//! from them for clients. Roles and phases are enums; the JSON spells them as the public
//! documents do.

use std::collections::BTreeMap;

use kv_ring::NodeId;
use serde::{Deserialize, Serialize};

/// The peer route of a node's view.
pub const VIEW_PATH: &str = "/internal/v1/view";
/// The peer route of the map a node routes by, with peer addresses.
pub const MAP_PATH: &str = "/internal/v1/map";

/// What one node sees of every partition (and the metadata group) and of the moves it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: NodeId,
    /// The epoch of the map it routes by (`None`: none adopted yet).
    pub epoch: Option<u64>,
    /// The metadata group first (`partition: None`), then every partition of its map.
    pub groups: Vec<GroupView>,
    pub moves: Vec<MoveView>,
}

/// One group as one replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// `None` for the metadata group.
    pub partition: Option<u32>,
    /// The replicas the viewer's map assigns, in ring order.
    pub replicas: Vec<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub role: ReplicaRole,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// On the leader: the highest index each member is known to hold.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
}

/// The viewer's role in a group; `None` where it does not host the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    None,
}

impl ReplicaRole {
    /// The role's name in the public status documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::None => "none",
            ReplicaRole::Leader => kv_raft::Role::Leader.as_str(),
            ReplicaRole::Follower => kv_raft::Role::Follower.as_str(),
            ReplicaRole::Candidate => kv_raft::Role::Candidate.as_str(),
            ReplicaRole::Learner => kv_raft::Role::Learner.as_str(),
            ReplicaRole::Shutdown => kv_raft::Role::Shutdown.as_str(),
        }
    }
}

impl From<kv_raft::Role> for ReplicaRole {
    fn from(role: kv_raft::Role) -> Self {
        match role {
            kv_raft::Role::Leader => ReplicaRole::Leader,
            kv_raft::Role::Follower => ReplicaRole::Follower,
            kv_raft::Role::Candidate => ReplicaRole::Candidate,
            kv_raft::Role::Learner => ReplicaRole::Learner,
            kv_raft::Role::Shutdown => ReplicaRole::Shutdown,
        }
    }
}

/// A partition move a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveView {
    pub partition: u32,
    /// The node running it (the partition's leader).
    pub node: NodeId,
    /// The epoch of the map it moves to.
    pub epoch: u64,
    pub from: Vec<NodeId>,
    pub to: Vec<NodeId>,
    pub phase: MovePhase,
    /// New replicas catching up: (node, index it holds, index it must reach).
    pub learners: Vec<(NodeId, Option<u64>, u64)>,
    pub elapsed_ms: u64,
}

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Waiting for a move slot.
    Queued,
    /// New replicas are learners catching up with the log.
    CatchingUp,
    /// Switching the voters (joint consensus).
    ChangingVoters,
    /// Removing learners the map no longer has.
    RemovingLearners,
    /// A new replica made no progress for a while; retried later.
    Stalled,
}

impl MovePhase {
    /// The phase's name in the public status documents.
    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::Queued => "queued",
            MovePhase::CatchingUp => "catching_up",
            MovePhase::ChangingVoters => "changing_voters",
            MovePhase::RemovingLearners => "removing_learners",
            MovePhase::Stalled => "stalled",
        }
    }
}

/// The map a node routes by, with the addresses peers reach the members at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMap {
    /// `None`: the node has adopted no map yet.
    pub epoch: Option<u64>,
    /// Member id -> peer address.
    pub members: BTreeMap<NodeId, String>,
    pub ring: kv_ring::RingParams,
}
