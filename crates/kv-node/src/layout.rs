//! Where each key lives: the cluster members, the ring placement computed from them, and the
//! mapping from partitions to Raft groups.

use std::collections::BTreeMap;

use kv_raft::GroupId;
use kv_ring::{NodeId, PartitionId, Placement, RingParams};

/// The cluster layout this node routes by.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Member id -> address (`host:port`) its peers reach it at.
    pub members: BTreeMap<u64, String>,
    pub placement: Placement,
    /// Where clients reach the members that have a peer listener apart; the others serve
    /// clients at their member address.
    pub clients: BTreeMap<u64, String>,
    /// Each partition's target leader ([`Placement::leaders`]), computed once per map.
    leaders: BTreeMap<PartitionId, NodeId>,
}

impl Layout {
    pub fn new(
        members: BTreeMap<u64, String>,
        placement: Placement,
        clients: BTreeMap<u64, String>,
    ) -> Layout {
        let leaders = placement.leaders();
        Layout {
            members,
            placement,
            clients,
            leaders,
        }
    }

    pub fn compute(members: BTreeMap<u64, String>, params: RingParams) -> anyhow::Result<Layout> {
        let ids: Vec<NodeId> = members.keys().map(|id| NodeId(*id)).collect();
        let placement = Placement::compute(&ids, params)
            .map_err(|e| anyhow::anyhow!("cannot place partitions: {e}"))?;
        Ok(Layout::new(members, placement, BTreeMap::new()))
    }

    /// The node that leads partition `p` once leadership is balanced (the balancer moves
    /// leadership there; moves hand it there): where a request for `p` goes first when this
    /// node does not know the actual leader.
    pub fn target_leader(&self, p: PartitionId) -> Option<u64> {
        self.leaders.get(&p).map(|n| n.0)
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
    pub fn replicas(&self, p: PartitionId) -> Vec<u64> {
        self.placement
            .replicas(p)
            .map(|r| r.iter().map(|n| n.0).collect())
            .unwrap_or_default()
    }

    /// Where peers reach member `node`.
    pub fn addr(&self, node: u64) -> Option<&str> {
        self.members.get(&node).map(String::as_str)
    }

    /// Where clients reach member `node`.
    pub fn client_addr(&self, node: u64) -> Option<&str> {
        self.clients
            .get(&node)
            .or_else(|| self.members.get(&node))
            .map(String::as_str)
    }

    /// Partitions that have `node` among their replicas.
    pub fn partitions_of(&self, node: u64) -> Vec<PartitionId> {
        self.placement
            .iter()
            .filter(|(_, replicas)| replicas.contains(&NodeId(node)))
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
