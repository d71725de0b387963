//! The consistent-hash ring: physical nodes with virtual nodes, walked
//! clockwise from a partition's point to find its replicas.
//!
//! Points on the ring are 64-bit xxh3 hashes (seed 0) of fixed little-endian
//! byte strings, so every node, on every platform and build, sees the same
//! ring:
//!
//! - virtual node `i` of node `n`: `xxh3_64(n.to_le_bytes() ++ i.to_le_bytes())`
//!   (8 + 4 bytes);
//! - partition `p`: `xxh3_64(p.to_le_bytes())` (4 bytes).

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use xxhash_rust::xxh3::Xxh3Default;

use crate::error::RingError;
use crate::id::{NodeId, PartitionId};

/// A `Hasher` that is the same on every machine and every run: xxh3-64 with
/// seed 0 over the bytes written, integers written little-endian.
///
/// `hashring` would otherwise use SipHash with its default keys, and std's
/// `RandomState` is randomized per process; neither is a contract we control.
#[derive(Clone, Default)]
struct StableHasher(Xxh3Default);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0.digest()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    // std's defaults write integers in native byte order; pin little-endian.
    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&(n as u64).to_le_bytes());
    }
}

/// Builds [`StableHasher`]s; the hasher `hashring` places points with.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct StableState;

impl BuildHasher for StableState {
    type Hasher = StableHasher;

    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// Virtual node `index` of physical node `node`: one point on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VNode {
    node: NodeId,
    index: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One write of a fixed layout, so the point is exactly xxh3_64 of
        // these 12 bytes (see the module docs).
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&self.node.0.to_le_bytes());
        bytes[8..].copy_from_slice(&self.index.to_le_bytes());
        state.write(&bytes);
    }
}

/// Where a partition sits on the ring.
struct PartitionPoint(PartitionId);

impl Hash for PartitionPoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0 .0.to_le_bytes());
    }
}

/// Physical nodes with `vnodes` virtual nodes each on a consistent-hash ring.
///
/// Invariant: holds at least one node, no node twice, and exactly `vnodes`
/// points per node. A `Ring` is built from a whole member set and never
/// edited in place, so the order vnodes were added in (which decides ties
/// between equal points inside `hashring`) is always sorted `(node, index)`
/// order, whatever order the caller listed the members in.
#[derive(Clone, Debug)]
pub struct Ring {
    ring: HashRing<VNode, StableState>,
    nodes: Vec<NodeId>,
    vnodes: u32,
}

impl Ring {
    /// Places each of `members` on the ring with `vnodes` virtual nodes.
    ///
    /// The result depends only on the set of members, not on their order.
    pub fn new(members: &[NodeId], vnodes: u32) -> Result<Ring, RingError> {
        if vnodes == 0 {
            return Err(RingError::ZeroVnodes);
        }
        let nodes = sorted_member_set(members)?;
        let mut ring = HashRing::with_hasher(StableState);
        // batch_add sorts once, stably: equal points stay in insertion order.
        ring.batch_add(
            nodes
                .iter()
                .flat_map(|&node| (0..vnodes).map(move |index| VNode { node, index }))
                .collect(),
        );
        Ok(Ring {
            ring,
            nodes,
            vnodes,
        })
    }

    /// The physical nodes on the ring, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Virtual nodes per physical node.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The first `min(rf, nodes)` distinct physical nodes met walking
    /// clockwise from `partition`'s point. The first is the preferred leader.
    /// `rf == 0` gives an empty list.
    pub fn replicas(&self, partition: PartitionId, rf: usize) -> Vec<NodeId> {
        let rf = rf.min(self.nodes.len());
        let mut replicas = Vec::with_capacity(rf);
        if rf == 0 {
            return replicas;
        }
        // `get_with_replicas(k, n)` returns the n+1 ring entries from k's
        // successor on, or the whole ring once n >= len; it is the only walk
        // hashring offers, and it repeats physical nodes. Asking for `len()`
        // entries yields the full clockwise order, which we dedupe and cut
        // at rf. That clones the ring per call (O(N·V)), which is fine: a
        // placement is computed only when membership changes. Using hashring
        // for the walk (instead of a sorted Vec of our own) keeps one source
        // of truth for point order and for the wrap-around at the top.
        let walk = self
            .ring
            .get_with_replicas(&PartitionPoint(partition), self.ring.len())
            .unwrap_or_default();
        for vnode in walk {
            if !replicas.contains(&vnode.node) {
                replicas.push(vnode.node);
                if replicas.len() == rf {
                    break;
                }
            }
        }
        replicas
    }
}

/// `members` sorted, or an error if it is empty or names a node twice.
pub(crate) fn sorted_member_set(members: &[NodeId]) -> Result<Vec<NodeId>, RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    let mut nodes = members.to_vec();
    nodes.sort_unstable();
    if let Some(pair) = nodes.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(RingError::DuplicateNode(pair[0]));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn ids(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn points_are_xxh3_of_the_documented_bytes() {
        let vnode = VNode {
            node: NodeId(3),
            index: 5,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&5u32.to_le_bytes());
        assert_eq!(StableState.hash_one(vnode), xxh3_64(&bytes));
        assert_eq!(
            StableState.hash_one(PartitionPoint(PartitionId(9))),
            xxh3_64(&9u32.to_le_bytes())
        );
    }

    // Golden vectors: if these change, every existing cluster's placement
    // changes and its data would be moved.
    #[test]
    fn points_golden_vectors() {
        let vnode = |node, index| {
            StableState.hash_one(VNode {
                node: NodeId(node),
                index,
            })
        };
        let partition = |p| StableState.hash_one(PartitionPoint(PartitionId(p)));
        assert_eq!(vnode(1, 0), 0x1ae5_c641_2588_0f18);
        assert_eq!(vnode(2, 63), 0xeec2_efec_6d66_2b73);
        assert_eq!(partition(0), 0x48b2_c926_16fc_193d);
        assert_eq!(partition(17), 0x638b_6e1f_cbfc_b4d4);
    }

    #[test]
    fn replicas_golden_vectors() {
        let ring = Ring::new(&ids(&[1, 2, 3, 4, 5]), 64).unwrap();
        let got: Vec<Vec<u64>> = (0..4)
            .map(|p| {
                ring.replicas(PartitionId(p), 3)
                    .into_iter()
                    .map(|n| n.0)
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            vec![vec![3, 4, 1], vec![2, 3, 5], vec![1, 3, 4], vec![3, 5, 2]]
        );
    }

    #[test]
    fn replicas_are_distinct_and_capped_at_node_count() {
        let ring = Ring::new(&ids(&[10, 20, 30]), 8).unwrap();
        for p in 0..32 {
            let two = ring.replicas(PartitionId(p), 2);
            assert_eq!(two.len(), 2);
            assert_ne!(two[0], two[1]);
            let all = ring.replicas(PartitionId(p), 10);
            assert_eq!(all.len(), 3);
            assert_eq!(&all[..2], &two[..], "a longer walk extends the shorter one");
            assert!(ring.replicas(PartitionId(p), 0).is_empty());
        }
    }

    #[test]
    fn one_vnode_per_node_still_finds_every_node() {
        let ring = Ring::new(&ids(&[1, 2, 3, 4]), 1).unwrap();
        let mut all = ring.replicas(PartitionId(0), 4);
        all.sort();
        assert_eq!(all, ids(&[1, 2, 3, 4]));
    }

    #[test]
    fn ring_ignores_member_order() {
        let a = Ring::new(&ids(&[5, 1, 3]), 16).unwrap();
        let b = Ring::new(&ids(&[1, 3, 5]), 16).unwrap();
        assert_eq!(a.nodes(), b.nodes());
        for p in 0..64 {
            assert_eq!(a.replicas(PartitionId(p), 2), b.replicas(PartitionId(p), 2));
        }
    }

    #[test]
    fn ring_rejects_bad_input() {
        assert_eq!(Ring::new(&[], 8).unwrap_err(), RingError::NoMembers);
        assert_eq!(Ring::new(&ids(&[1]), 0).unwrap_err(), RingError::ZeroVnodes);
        assert_eq!(
            Ring::new(&ids(&[1, 2, 1]), 8).unwrap_err(),
            RingError::DuplicateNode(NodeId(1))
        );
    }
}
