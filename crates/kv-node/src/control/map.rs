//! The cluster map ([`ClusterMap`]) in the metadata group: the one record (`cluster/map`) of
//! group 0's state machine that says who the members are, where they listen, the ring
//! parameters and which replicas hold each partition. Its version is the map's epoch, so every change is a compare-and-set on the
//! previous epoch. Voters of the metadata group are the first [`MAX_META_VOTERS`] members by
//! id; further members follow it as learners.

use std::collections::BTreeMap;

use kv_raft::Node as BasicNode;
use kv_raft::{Command, Condition, NodeId};

use crate::layout::{ClusterMap, META_GROUP};
use crate::state::AppState;

/// Most voters of the metadata group; more members join it as learners.
pub(crate) const MAX_META_VOTERS: usize = 5;
/// The key of the map in the metadata group.
const MAP_KEY: &[u8] = b"cluster/map";

/// The voters of the metadata group for a member set: the lowest ids.
pub(crate) fn meta_voters(members: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, BasicNode> {
    members
        .iter()
        .take(MAX_META_VOTERS)
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect()
}

/// The map as this node's replica of group 0 has applied it, with its epoch.
pub(crate) async fn local_map(st: &AppState) -> anyhow::Result<Option<(u64, ClusterMap)>> {
    let Some(group) = st.host.group(META_GROUP) else {
        return Ok(None);
    };
    // A local (stale) read: every node, follower or learner, routes by what it has applied.
    match group.get(MAP_KEY.to_vec(), true).await? {
        None => Ok(None),
        Some(record) => {
            let map: ClusterMap = serde_json::from_slice(&record.value)
                .map_err(|e| anyhow::anyhow!("stored cluster map does not decode: {e}"))?;
            Ok(Some((record.version, map)))
        }
    }
}

/// The write that stores `map` if the stored map's epoch is still `expected` (`None`: no map
/// yet).
pub(crate) fn write_command(
    map: &ClusterMap,
    expected: Option<u64>,
) -> serde_json::Result<Command> {
    Ok(Command::Put {
        key: MAP_KEY.to_vec(),
        value: serde_json::to_vec(map)?,
        cond: match expected {
            None => Condition::Absent,
            Some(epoch) => Condition::Version(epoch),
        },
    })
}
