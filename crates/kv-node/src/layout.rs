//! Where each key lives: the cluster map ([`ClusterMap`]: members, their addresses, the ring
//! placement computed from them), the map as routing reads it ([`Layout`]), and the numbering
//! of Raft groups (group 0 is the metadata group, partition `p` is group `p + 1`).

use std::collections::BTreeMap;

use kv_raft::GroupId;
use kv_ring::{NodeId, PartitionId, Placement, RingParams};
use serde::{Deserialize, Serialize};

/// What the metadata group stores under `cluster/map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Member id -> the address its peers reach it at.
    pub members: BTreeMap<NodeId, String>,
    /// Where clients reach a member whose peer listener is apart (`--listen-peer`); members
    /// absent here serve clients at their member address. Each such member publishes its own
    /// (see `control::own_membership`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<NodeId, String>,
    /// Ring parameters and partition -> replicas.
    pub placement: Placement,
    /// How many membership changes led to this map; 0 is the map the cluster was created with,
    /// the only one whose partition groups are initialized (a joining node never initializes a
    /// group: it is brought in by the group's leader).
    #[serde(default)]
    pub generation: u64,
    /// Chosen at random when the cluster is created; a node joining must not belong to
    /// another cluster. (Maps written before it existed get one with their next change.)
    #[serde(default)]
    pub cluster_id: Option<u64>,
}

impl ClusterMap {
    /// The map of a new cluster of `members`: placement computed over them, generation 0, no
    /// client addresses and no cluster id yet.
    pub fn compute(members: BTreeMap<NodeId, String>, params: RingParams) -> anyhow::Result<Self> {
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let placement = Placement::compute(&ids, params)
            .map_err(|e| anyhow::anyhow!("cannot place partitions: {e}"))?;
        Ok(ClusterMap {
            members,
            clients: BTreeMap::new(),
            placement,
            generation: 0,
            cluster_id: None,
        })
    }
}

/// The cluster map this node routes by: the map itself (its fields are read through this, by
/// `Deref`), and each partition's target leader, computed once per map.
#[derive(Debug, Clone)]
pub struct Layout {
    map: ClusterMap,
    /// Each partition's target leader ([`Placement::leaders`]).
    leaders: BTreeMap<PartitionId, NodeId>,
}

impl std::ops::Deref for Layout {
    type Target = ClusterMap;

    fn deref(&self) -> &ClusterMap {
        &self.map
    }
}

impl Layout {
    pub fn new(map: ClusterMap) -> Layout {
        let leaders = map.placement.leaders();
        Layout { map, leaders }
    }

    /// The layout of [`ClusterMap::compute`].
    pub fn compute(
        members: BTreeMap<NodeId, String>,
        params: RingParams,
    ) -> anyhow::Result<Layout> {
        Ok(Layout::new(ClusterMap::compute(members, params)?))
    }

    /// The node that leads partition `p` once leadership is balanced (the balancer moves
    /// leadership there; moves hand it there): where a request for `p` goes first when this
    /// node does not know the actual leader.
    pub fn target_leader(&self, p: PartitionId) -> Option<NodeId> {
        self.leaders.get(&p).copied()
    }

    pub fn partitions(&self) -> u32 {
        self.placement.params().partitions
    }

    /// The partition holding `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        self.placement.partition_of(key)
    }

    /// Replica ids of a partition, in ring order (the first is not the target leader: see
    /// [`Layout::target_leader`]).
    pub fn replicas(&self, p: PartitionId) -> Vec<NodeId> {
        self.placement
            .replicas(p)
            .map(<[NodeId]>::to_vec)
            .unwrap_or_default()
    }

    /// Where peers reach member `node`.
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.members.get(&node).map(String::as_str)
    }

    /// Where clients reach member `node`.
    pub fn client_addr(&self, node: NodeId) -> Option<&str> {
        self.clients
            .get(&node)
            .or_else(|| self.members.get(&node))
            .map(String::as_str)
    }

    /// Partitions that have `node` among their replicas.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.placement
            .iter()
            .filter(|(_, replicas)| replicas.contains(&node))
            .map(|(p, _)| p)
            .collect()
    }
}

/// Raft group numbering, in one place: group 0 is the metadata group, partition `p` is group
/// `p + 1`.
pub const META_GROUP: GroupId = GroupId(0);

/// The Raft group of a data partition (group 0 is reserved for cluster metadata).
pub fn group_of(p: PartitionId) -> GroupId {
    GroupId(u64::from(p.0) + 1)
}

/// The partition a data group serves, if it is one.
pub fn partition_of_group(g: GroupId) -> Option<PartitionId> {
    g.0.checked_sub(1)
        .and_then(|p| u32::try_from(p).ok())
        .map(PartitionId)
}
