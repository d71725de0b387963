use crate::NodeId;

/// Why a group operation did not complete; what the caller can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// This node is not the group's leader; `leader` is the one it knows, with its address.
    #[error("not the leader{}", .leader.as_ref().map(|(id, a)| format!(" (leader is {id} at {a})")).unwrap_or_default())]
    NotLeader { leader: Option<(NodeId, String)> },
    /// No leader could confirm the operation in time (no quorum, election in progress).
    #[error("no quorum: {0}")]
    Unavailable(String),
    /// The group is not hosted on this node.
    #[error("group {0} is not hosted here")]
    UnknownGroup(u64),
    /// A peer sent bytes that do not decode.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] kv_storage::StorageError),
    /// The Raft instance stopped (shutdown or a fatal storage error).
    #[error("raft stopped: {0}")]
    Stopped(String),
}
