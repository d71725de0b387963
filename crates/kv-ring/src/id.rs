//! Identifiers that must not be mixed up: physical nodes and partitions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A physical node (one `kv-node` process), as named in cluster membership; also the node id
/// of every Raft group (kv-raft's openraft type configuration) and of everything kv-node does.
///
/// Serialized as a bare number (also as a JSON map key: `{"1": ...}`), and printed as one by
/// `Display` and `Debug` alike: openraft writes node ids into its error messages with `{:?}`,
/// and those messages and the logs read as they did when node ids were `u64`. `Default` (0,
/// never a member) is for openraft, which asks node ids to have one.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
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

impl From<NodeId> for u64 {
    fn from(id: NodeId) -> Self {
        id.0
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

    #[test]
    fn node_ids_debug_print_and_key_json_maps_as_u64_did() {
        assert_eq!(format!("{:?}", NodeId(7)), format!("{:?}", 7u64));
        assert_eq!(
            format!("{:?}", Some(vec![NodeId(1), NodeId(2)])),
            "Some([1, 2])"
        );
        let map = std::collections::BTreeMap::from([(NodeId(1), "a:1"), (NodeId(20), "b:2")]);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"1":"a:1","20":"b:2"}"#);
        let back: std::collections::BTreeMap<NodeId, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[&NodeId(20)], "b:2");
        assert_eq!(NodeId::default(), NodeId(0));
    }
}
