//! The crate's one error type.

use crate::id::{NodeId, PartitionId};

/// Why a ring or a placement could not be built, compared or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring needs at least one node.
    #[error("the member set is empty: a ring needs at least one node")]
    NoMembers,
    /// The same node was listed twice in a member set.
    #[error("node {0} is listed more than once in the member set")]
    DuplicateNode(NodeId),
    /// `partitions` was 0.
    #[error("the partition count must be at least 1")]
    ZeroPartitions,
    /// `replication_factor` was 0.
    #[error("the replication factor must be at least 1")]
    ZeroReplicationFactor,
    /// `vnodes` was 0.
    #[error("the number of virtual nodes per node must be at least 1")]
    ZeroVnodes,
    /// Two placements over different partition counts cannot be compared:
    /// the same partition id names a different slice of the key space.
    #[error("cannot diff placements with different partition counts ({old} vs {new})")]
    PartitionCountMismatch {
        /// Partition count of the old placement.
        old: u32,
        /// Partition count of the new placement.
        new: u32,
    },
    /// A placement read from outside (e.g. the metadata group) breaks an
    /// invariant that [`crate::Placement::compute`] keeps.
    #[error("invalid placement (partition {partition:?}): {reason}")]
    InvalidPlacement {
        /// The partition whose replica list is wrong, if the fault is in one.
        partition: Option<PartitionId>,
        /// Which invariant is broken.
        reason: &'static str,
    },
}
