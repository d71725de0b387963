//! Placement: the partition -> replica-list map for one member set, and the
//! diff between two such maps that a placement controller turns into moves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::RingError;
use crate::id::{NodeId, PartitionId};
use crate::partition::partition_of;
use crate::ring::{sorted_member_set, Ring};

/// The parameters a ring is built with. Fixed when a cluster is created
/// (`partitions` above all: changing it remaps every key).
///
/// Balance is statistical. Each partition's list is the top `RF` of a fixed
/// per-partition preference order (the ring walk), which is what makes
/// "adding a node only moves replicas onto it" hold; bounded-load tweaks
/// would break that, so there are none. Even an ideal such scheme gives a
/// node about `Binomial(P, RF/N)` replicas, so relative spread shrinks with
/// `P`, not with `V`: more vnodes only remove the ring's extra arc-length
/// noise. Measured over 1000 random 5-node clusters, P=64, RF=3: with V=64,
/// 18% of clusters have a node more than 25% off the mean; with V=256, 7.5%
/// (close to the binomial floor); with P=256 and V=256, none (worst 21%).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingParams {
    /// `P`: how many partitions the key space is split into.
    pub partitions: u32,
    /// `RF`: replicas per partition. Capped at the node count when placing.
    pub replication_factor: u32,
    /// `V`: virtual nodes per physical node.
    pub vnodes: u32,
}

impl RingParams {
    /// Defaults for a small cluster: 64 partitions, 3 replicas, 256 vnodes
    /// (256 rather than 64 because it takes the ring close to the best balance
    /// `P` allows, and costs only a few thousand points).
    pub const DEFAULT: RingParams = RingParams {
        partitions: 64,
        replication_factor: 3,
        vnodes: 256,
    };

    /// Checks that every parameter is at least 1.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.partitions == 0 {
            return Err(RingError::ZeroPartitions);
        }
        if self.replication_factor == 0 {
            return Err(RingError::ZeroReplicationFactor);
        }
        if self.vnodes == 0 {
            return Err(RingError::ZeroVnodes);
        }
        Ok(())
    }
}

impl Default for RingParams {
    fn default() -> Self {
        RingParams::DEFAULT
    }
}

/// Which nodes replicate each partition, in preference order, for one member
/// set. This is what the metadata group stores as the partition map.
///
/// Invariants (kept by [`Placement::compute`], checked on deserialize):
/// parameters are all >= 1; `members` is non-empty, sorted and unique; there
/// is one list per partition `0..P`; each list holds exactly
/// `min(RF, members)` distinct members, the preferred leader first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PlacementRepr")]
pub struct Placement {
    params: RingParams,
    members: Vec<NodeId>,
    replicas: Vec<Vec<NodeId>>,
}

impl Placement {
    /// Places every partition on the ring built from `members`.
    ///
    /// Deterministic: the same member set (in any order) and parameters give
    /// an identical placement on every node.
    pub fn compute(members: &[NodeId], params: RingParams) -> Result<Placement, RingError> {
        params.validate()?;
        let ring = Ring::new(members, params.vnodes)?;
        let rf = params.replication_factor as usize;
        let replicas = (0..params.partitions)
            .map(|p| ring.replicas(PartitionId(p), rf))
            .collect();
        Ok(Placement {
            params,
            members: ring.nodes().to_vec(),
            replicas,
        })
    }

    /// The parameters this placement was computed with.
    pub fn params(&self) -> RingParams {
        self.params
    }

    /// The member set, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The partition that owns `key` (see [`partition_of`]).
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key, self.params.partitions)
    }

    /// `partition`'s replicas, preferred leader first; `None` if it is not
    /// in `0..P`.
    pub fn replicas(&self, partition: PartitionId) -> Option<&[NodeId]> {
        self.replicas.get(partition.0 as usize).map(Vec::as_slice)
    }

    /// Every partition with its replica list, in partition order.
    pub fn iter(&self) -> impl Iterator<Item = (PartitionId, &[NodeId])> + '_ {
        (0u32..)
            .zip(&self.replicas)
            .map(|(p, list)| (PartitionId(p), list.as_slice()))
    }

    /// A target leader for every partition, chosen among its replicas so that leadership
    /// spreads over the members (the preferred leaders alone pile up wherever the ring does).
    ///
    /// Greedy, in partition order: each partition goes to the replica that leads the fewest
    /// partitions so far, a tie to the earlier replica (so the preferred leader wins ties).
    /// Pure and deterministic: every node computes the same targets from the same placement.
    ///
    /// What the greedy guarantees, for any placement: with one replica per partition the
    /// targets are the preferred leaders; and when a node `v` is given its last partition `p`,
    /// it led the fewest among `p`'s replicas, so in the end every other replica of `p` leads
    /// at least `led(v) - 1` partitions, and at least `led(v)` if it comes before `v` in `p`'s
    /// list. Hence no node leads more than `ceil(P / min(RF, N))`. It does not guarantee that
    /// the spread is minimal or that every replica-holding node leads something (a node that
    /// holds a single replica, behind a node that leads as few, leads nothing); on ring
    /// placements the spread is small in practice (see `tests/placement_properties.rs`).
    pub fn leaders(&self) -> BTreeMap<PartitionId, NodeId> {
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut targets = BTreeMap::new();
        for (partition, replicas) in self.iter() {
            // `min_by_key` keeps the first of equal minima: replica order breaks ties.
            let target = replicas
                .iter()
                .copied()
                .min_by_key(|n| led.get(n).copied().unwrap_or(0));
            if let Some(target) = target {
                *led.entry(target).or_default() += 1;
                targets.insert(partition, target);
            }
        }
        targets
    }
}

/// How one partition's replica list changes between two placements.
///
/// `added` and `removed` are in the order they appear in `new` and `old`.
/// Both can be empty when only the order (the preferred leader) changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// The partition whose replica list changed.
    pub partition: PartitionId,
    /// Its replicas before, preferred leader first.
    pub old: Vec<NodeId>,
    /// Its replicas after, preferred leader first.
    pub new: Vec<NodeId>,
    /// In `new` but not in `old`: replicas to add (as learners first).
    pub added: Vec<NodeId>,
    /// In `old` but not in `new`: replicas to drop once the new set commits.
    pub removed: Vec<NodeId>,
}

/// Every partition whose replica list differs between `old` and `new`, in
/// partition order. Partitions with identical lists are not listed.
///
/// The placements may differ in replication factor and vnodes; they must
/// agree on the partition count, or partition ids would not name the same
/// keys.
pub fn diff(old: &Placement, new: &Placement) -> Result<Vec<PartitionMove>, RingError> {
    if old.params.partitions != new.params.partitions {
        return Err(RingError::PartitionCountMismatch {
            old: old.params.partitions,
            new: new.params.partitions,
        });
    }
    Ok(old
        .iter()
        .zip(new.iter())
        .filter(|((_, before), (_, after))| before != after)
        .map(|((partition, before), (_, after))| PartitionMove {
            partition,
            added: after
                .iter()
                .filter(|n| !before.contains(n))
                .copied()
                .collect(),
            removed: before
                .iter()
                .filter(|n| !after.contains(n))
                .copied()
                .collect(),
            old: before.to_vec(),
            new: after.to_vec(),
        })
        .collect())
}

/// The serialized form, checked before it becomes a [`Placement`]: a
/// placement read back from the metadata group's log or snapshot is input.
#[derive(Deserialize)]
struct PlacementRepr {
    params: RingParams,
    members: Vec<NodeId>,
    replicas: Vec<Vec<NodeId>>,
}

impl TryFrom<PlacementRepr> for Placement {
    type Error = RingError;

    fn try_from(repr: PlacementRepr) -> Result<Placement, RingError> {
        let invalid = |partition, reason| RingError::InvalidPlacement { partition, reason };
        repr.params.validate()?;
        if sorted_member_set(&repr.members)? != repr.members {
            return Err(invalid(None, "members are not sorted"));
        }
        if repr.replicas.len() != repr.params.partitions as usize {
            return Err(invalid(None, "not one replica list per partition"));
        }
        let want = (repr.params.replication_factor as usize).min(repr.members.len());
        for (p, list) in (0u32..).zip(&repr.replicas) {
            let p = Some(PartitionId(p));
            if list.len() != want {
                return Err(invalid(p, "replica list is not min(RF, members) long"));
            }
            if list.iter().any(|n| repr.members.binary_search(n).is_err()) {
                return Err(invalid(p, "replica is not a member"));
            }
            if sorted_member_set(list)?.len() != list.len() {
                return Err(invalid(p, "replica listed twice"));
            }
        }
        Ok(Placement {
            params: repr.params,
            members: repr.members,
            replicas: repr.replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn params(partitions: u32, replication_factor: u32, vnodes: u32) -> RingParams {
        RingParams {
            partitions,
            replication_factor,
            vnodes,
        }
    }

    #[test]
    fn compute_rejects_bad_parameters_and_members() {
        let members = ids(&[1, 2, 3]);
        let err = |p| Placement::compute(&members, p).unwrap_err();
        assert_eq!(err(params(0, 3, 8)), RingError::ZeroPartitions);
        assert_eq!(err(params(8, 0, 8)), RingError::ZeroReplicationFactor);
        assert_eq!(err(params(8, 3, 0)), RingError::ZeroVnodes);
        assert_eq!(
            Placement::compute(&[], RingParams::DEFAULT).unwrap_err(),
            RingError::NoMembers
        );
        assert_eq!(
            Placement::compute(&ids(&[4, 4]), RingParams::DEFAULT).unwrap_err(),
            RingError::DuplicateNode(NodeId(4))
        );
    }

    // Pins the whole pipeline (hashes, hashring's ordering, the walk): if
    // this changes, existing clusters would move data on upgrade.
    #[test]
    fn compute_golden_vector() {
        let placement = Placement::compute(&ids(&[2, 3, 1]), params(8, 2, 8)).unwrap();
        let got: Vec<Vec<u64>> = placement
            .iter()
            .map(|(_, list)| list.iter().map(|n| n.0).collect())
            .collect();
        let want: Vec<Vec<u64>> = vec![
            vec![3, 2],
            vec![3, 2],
            vec![3, 2],
            vec![2, 3],
            vec![3, 1],
            vec![1, 2],
            vec![1, 3],
            vec![2, 3],
        ];
        assert_eq!(got, want);
    }

    /// Targets over `leaders()` as plain ids, in partition order.
    fn leader_ids(placement: &Placement) -> Vec<u64> {
        let leaders = placement.leaders();
        assert_eq!(leaders.len(), placement.iter().count());
        leaders.values().map(|n| n.0).collect()
    }

    // Replicas as in `compute_golden_vector`: [3,2] [3,2] [3,2] [2,3] [3,1] [1,2] [1,3] [2,3].
    #[test]
    fn leaders_golden_vector() {
        let placement = Placement::compute(&ids(&[2, 3, 1]), params(8, 2, 8)).unwrap();
        // p0: tie at 0, preferred 3. p1: 2 leads none yet. p2: tie 1-1, preferred 3. p3: 2
        // (1 < 2). p4, p5: 1 (0, then 1 < 2). p6: tie 2-2, preferred 1. p7: tie, preferred 2.
        assert_eq!(leader_ids(&placement), vec![3, 2, 3, 2, 1, 1, 1, 2]);
    }

    #[test]
    fn leaders_rotate_over_identical_replica_lists() {
        let mut placement = Placement::compute(&ids(&[1, 2, 3]), params(7, 3, 4)).unwrap();
        placement.replicas = vec![ids(&[2, 3, 1]); 7];
        assert_eq!(leader_ids(&placement), vec![2, 3, 1, 2, 3, 1, 2]);
    }

    #[test]
    fn leaders_with_one_replica_are_the_preferred_leaders() {
        let placement = Placement::compute(&ids(&[1, 2, 3, 4]), params(32, 1, 8)).unwrap();
        for (partition, leader) in placement.leaders() {
            assert_eq!(Some(&[leader][..]), placement.replicas(partition));
        }
    }

    #[test]
    fn replication_factor_is_capped_at_member_count() {
        let placement = Placement::compute(&ids(&[7, 9]), params(16, 3, 8)).unwrap();
        assert_eq!(placement.params().replication_factor, 3);
        for (_, list) in placement.iter() {
            assert_eq!(list.len(), 2);
        }
    }

    /// Replica count per member, in member order.
    fn replica_counts(placement: &Placement) -> Vec<usize> {
        placement
            .members()
            .iter()
            .map(|m| placement.iter().filter(|(_, l)| l.contains(m)).count())
            .collect()
    }

    fn assert_within_25_percent_of_mean(counts: &[usize]) {
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        for &c in counts {
            assert!(
                (c as f64 - mean).abs() <= 0.25 * mean,
                "count {c} is more than 25% off the mean {mean}: {counts:?}"
            );
        }
    }

    #[test]
    fn five_nodes_64_vnodes_share_replicas_within_25_percent() {
        let placement = Placement::compute(&ids(&[1, 2, 3, 4, 5]), params(64, 3, 64)).unwrap();
        let counts = replica_counts(&placement);
        assert_eq!(counts, vec![39, 41, 39, 33, 40], "mean 38.4, worst -14%");
        assert_within_25_percent_of_mean(&counts);
    }

    #[test]
    fn five_nodes_default_params_share_replicas_within_25_percent() {
        let placement = Placement::compute(&ids(&[1, 2, 3, 4, 5]), RingParams::DEFAULT).unwrap();
        assert_within_25_percent_of_mean(&replica_counts(&placement));
    }

    #[test]
    fn placement_has_one_list_per_partition() {
        let placement = Placement::compute(&ids(&[1, 2, 3, 4]), params(10, 3, 16)).unwrap();
        assert_eq!(placement.iter().count(), 10);
        assert!(placement.replicas(PartitionId(9)).is_some());
        assert!(placement.replicas(PartitionId(10)).is_none());
        assert_eq!(placement.members(), ids(&[1, 2, 3, 4]));
    }

    #[test]
    fn placement_partition_of_matches_free_function() {
        let placement = Placement::compute(&ids(&[1]), params(16, 1, 1)).unwrap();
        assert_eq!(placement.partition_of(b"k"), partition_of(b"k", 16));
    }

    #[test]
    fn diff_of_identical_placements_is_empty() {
        let a = Placement::compute(&ids(&[1, 2, 3]), RingParams::DEFAULT).unwrap();
        assert_eq!(diff(&a, &a).unwrap(), vec![]);
    }

    #[test]
    fn diff_lists_added_and_removed_per_changed_partition() {
        let old = Placement::compute(&ids(&[1, 2, 3]), params(32, 2, 16)).unwrap();
        let new = Placement::compute(&ids(&[1, 2, 3, 4]), params(32, 2, 16)).unwrap();
        let moves = diff(&old, &new).unwrap();
        assert!(!moves.is_empty());
        for m in &moves {
            assert_eq!(m.added, vec![NodeId(4)]);
            assert_eq!(m.removed.len(), 1);
            assert_eq!(Some(m.old.as_slice()), old.replicas(m.partition));
            assert_eq!(Some(m.new.as_slice()), new.replicas(m.partition));
        }
    }

    #[test]
    fn diff_reports_leader_only_changes() {
        let mut a = Placement::compute(&ids(&[1, 2]), params(1, 2, 1)).unwrap();
        let b = a.clone();
        a.replicas[0].reverse();
        let moves = diff(&a, &b).unwrap();
        assert_eq!(moves.len(), 1);
        assert!(moves[0].added.is_empty() && moves[0].removed.is_empty());
        assert_ne!(moves[0].old[0], moves[0].new[0]);
    }

    #[test]
    fn diff_rejects_different_partition_counts() {
        let a = Placement::compute(&ids(&[1]), params(8, 1, 4)).unwrap();
        let b = Placement::compute(&ids(&[1]), params(16, 1, 4)).unwrap();
        assert_eq!(
            diff(&a, &b).unwrap_err(),
            RingError::PartitionCountMismatch { old: 8, new: 16 }
        );
    }

    #[test]
    fn diff_allows_a_replication_factor_change() {
        let a = Placement::compute(&ids(&[1, 2, 3]), params(8, 1, 4)).unwrap();
        let b = Placement::compute(&ids(&[1, 2, 3]), params(8, 2, 4)).unwrap();
        let moves = diff(&a, &b).unwrap();
        assert_eq!(moves.len(), 8);
        for m in moves {
            assert_eq!(m.old[..], m.new[..1], "RF 2 extends the RF 1 walk");
            assert_eq!(m.added.len(), 1);
            assert!(m.removed.is_empty());
        }
    }

    #[test]
    fn placement_round_trips_through_serde() {
        let a = Placement::compute(&ids(&[3, 1, 2]), params(8, 2, 4)).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        let b: Placement = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn deserialize_rejects_a_malformed_placement() {
        let parse = |json: &str| serde_json::from_str::<Placement>(json);
        let params = r#""params":{"partitions":2,"replication_factor":2,"vnodes":4}"#;
        let ok = format!(r#"{{{params},"members":[1,2],"replicas":[[1,2],[2,1]]}}"#);
        assert!(parse(&ok).is_ok());
        for bad in [
            r#""members":[2,1],"replicas":[[1,2],[2,1]]"#,
            r#""members":[1,1],"replicas":[[1,2],[2,1]]"#,
            r#""members":[],"replicas":[[1,2],[2,1]]"#,
            r#""members":[1,2],"replicas":[[1,2]]"#,
            r#""members":[1,2],"replicas":[[1,2],[2]]"#,
            r#""members":[1,2],"replicas":[[1,2],[2,2]]"#,
            r#""members":[1,2],"replicas":[[1,2],[2,3]]"#,
        ] {
            let json = format!("{{{params},{bad}}}");
            assert!(parse(&json).is_err(), "accepted {json}");
        }
        let zero = r#"{"params":{"partitions":0,"replication_factor":2,"vnodes":4},"members":[1],"replicas":[]}"#;
        assert!(parse(zero).is_err());
    }
}
