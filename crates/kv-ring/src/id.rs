//! Identifiers that must not be mixed up: physical nodes and partitions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A physical node (one `kv-node` process), as named in cluster membership.
///
/// Serialized as a bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// One of the `P` partitions the key space is split into; valid values are `0..P`.
///
/// Serialized as a bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for NodeId {
    fn from(id: u64) -> Self {
        NodeId(id)
    }
}

impl From<u32> for PartitionId {
    fn from(id: u32) -> Self {
        PartitionId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_serialize_as_bare_numbers() {
        assert_eq!(NodeId(7).to_string(), "7");
        assert_eq!(PartitionId(42).to_string(), "42");
        assert_eq!(serde_json::to_string(&NodeId(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<PartitionId>("42").unwrap(),
            PartitionId(42)
        );
    }
}
