//! Wire types of the HTTP/JSON API (see DESIGN.md, "Client API").

use serde::{Deserialize, Serialize};

/// Header naming the partition that served a key request.
pub const HEADER_PARTITION: &str = "x-kv-partition";
/// Header carrying the node that answered (after any forwarding).
pub const HEADER_NODE: &str = "x-kv-node";
/// Header with the consistency a read was served at (`linearizable` or `stale`).
pub const HEADER_CONSISTENCY: &str = "x-kv-consistency";
/// Header a forwarding node adds; it counts hops to stop forwarding loops.
pub const HEADER_FORWARDED: &str = "x-kv-forwarded";

/// Body of every error answer: a stable machine-readable `error` code and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// On `412 precondition_failed`: the key's current version (`null` if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<Option<u64>>,
    /// On `503`: the leader this node believes in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

/// Answer to a successful `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub key: String,
    pub version: u64,
}

/// Answer to a successful `DELETE /v1/kv/{key}`: the version the key had when removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub key: String,
    pub deleted: bool,
    pub version: u64,
}

/// One key of a scan. `value` holds the value when it is UTF-8, otherwise `value_hex` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    pub key: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

/// Answer to `GET /v1/kv?prefix=p&limit=n`: keys in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanResult {
    pub items: Vec<ScanItem>,
    /// True when `limit` cut the list short.
    pub truncated: bool,
}

/// Body of `POST /v1/cluster/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub addr: String,
}

/// One cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
}

/// Raft state of one group as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Partition number (`null` for the metadata group).
    pub partition: Option<u32>,
    /// Voters of the group.
    pub replicas: Vec<u64>,
    /// Non-voting members catching up.
    #[serde(default)]
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
    pub term: u64,
    /// This node's role in the group (`leader`, `follower`, `candidate`, `learner`).
    pub role: String,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Per replica: the highest log index the leader knows it holds (only on the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<std::collections::BTreeMap<u64, Option<u64>>>,
}

/// Answer to `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: u64,
    pub members: Vec<Member>,
    pub partitions: u32,
    pub replication_factor: u32,
    pub groups: Vec<GroupStatus>,
}
