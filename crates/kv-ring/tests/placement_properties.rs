//! Properties of placement that must hold for every member set: replica list
//! shape, balance, minimal movement on join and leave, determinism, and how
//! evenly the target leaders spread.

use std::collections::{BTreeMap, BTreeSet};

use kv_ring::{diff, NodeId, PartitionId, Placement, RingParams};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// Structural properties hold for every input, so these explore a fresh
/// random sample each run.
fn structural() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// Statistical bounds (balance, how much moves) hold with overwhelming but
/// not total probability, so they run a pinned sample: a failure here means
/// the code changed, not that the dice were unlucky.
fn statistical() -> ProptestConfig {
    ProptestConfig {
        cases: 32,
        rng_seed: RngSeed::Fixed(0x6b76_7269_6e67),
        ..ProptestConfig::default()
    }
}

/// A member set of `size` distinct nodes, listed in random order.
fn members(size: impl Into<prop::collection::SizeRange>) -> impl Strategy<Value = Vec<NodeId>> {
    prop::collection::btree_set(0u64..1_000_000, size)
        .prop_map(|set| set.into_iter().map(NodeId).collect::<Vec<_>>())
        .prop_shuffle()
}

fn any_params() -> impl Strategy<Value = RingParams> {
    (1u32..=96, 1u32..=5, 1u32..=48).prop_map(|(partitions, replication_factor, vnodes)| {
        RingParams {
            partitions,
            replication_factor,
            vnodes,
        }
    })
}

/// A member set plus one node that is not in it.
fn members_and_newcomer(
    size: impl Into<prop::collection::SizeRange>,
) -> impl Strategy<Value = (Vec<NodeId>, NodeId)> {
    (members(size), 0u64..1_000_000)
        .prop_filter("newcomer must be new", |(m, x)| !m.contains(&NodeId(*x)))
        .prop_map(|(m, x)| (m, NodeId(x)))
}

fn with(members: &[NodeId], extra: NodeId) -> Vec<NodeId> {
    let mut all = members.to_vec();
    all.push(extra);
    all
}

/// How many partitions each member is the target leader of (0 for none).
fn leader_counts(
    placement: &Placement,
    leaders: &BTreeMap<PartitionId, NodeId>,
) -> BTreeMap<NodeId, usize> {
    let mut led: BTreeMap<NodeId, usize> = placement.members().iter().map(|m| (*m, 0)).collect();
    for leader in leaders.values() {
        *led.entry(*leader).or_default() += 1;
    }
    led
}

proptest! {
    #![proptest_config(structural())]

    #[test]
    fn replica_lists_hold_min_rf_n_distinct_members(
        members in members(1..=12),
        params in any_params(),
    ) {
        let placement = Placement::compute(&members, params).unwrap();
        let want = (params.replication_factor as usize).min(members.len());
        prop_assert_eq!(placement.iter().count(), params.partitions as usize);
        for (_, list) in placement.iter() {
            prop_assert_eq!(list.len(), want);
            let distinct: BTreeSet<_> = list.iter().collect();
            prop_assert_eq!(distinct.len(), want);
            prop_assert!(list.iter().all(|n| members.contains(n)));
        }
    }

    #[test]
    fn adding_a_node_only_moves_replicas_onto_it(
        (members, newcomer) in members_and_newcomer(1..=12),
        params in any_params(),
    ) {
        let old = Placement::compute(&members, params).unwrap();
        let new = Placement::compute(&with(&members, newcomer), params).unwrap();
        let rf = params.replication_factor as usize;
        for m in diff(&old, &new).unwrap() {
            prop_assert_eq!(&m.added, &vec![newcomer]);
            prop_assert!(m.new.contains(&newcomer));
            // The old order survives around the newcomer; only the tail
            // replica is pushed out, and only if the list was full.
            let mut expect = m.new.clone();
            expect.retain(|n| *n != newcomer);
            let kept = m.old.len() - m.removed.len();
            prop_assert_eq!(&expect[..], &m.old[..kept]);
            prop_assert_eq!(m.removed.len(), usize::from(members.len() >= rf));
        }
    }

    #[test]
    fn removing_a_node_only_changes_its_partitions_and_keeps_survivors(
        members in members(2..=12),
        params in any_params(),
        pick in any::<prop::sample::Index>(),
    ) {
        let leaving = members[pick.index(members.len())];
        let remaining: Vec<_> = members.iter().copied().filter(|n| *n != leaving).collect();
        let old = Placement::compute(&members, params).unwrap();
        let new = Placement::compute(&remaining, params).unwrap();
        let moves = diff(&old, &new).unwrap();
        let had_it = old.iter().filter(|(_, l)| l.contains(&leaving)).count();
        prop_assert_eq!(moves.len(), had_it, "exactly the partitions it held change");
        for m in moves {
            prop_assert_eq!(&m.removed, &vec![leaving]);
            let mut survivors = m.old.clone();
            survivors.retain(|n| *n != leaving);
            // Survivors stay, in order, at the front; a replacement (if
            // there are enough nodes) joins at the back.
            prop_assert_eq!(&m.new[..survivors.len()], &survivors[..]);
            prop_assert!(m.added.len() <= 1);
        }
    }

    #[test]
    fn same_members_in_any_order_give_identical_placement(
        members in members(1..=12),
        params in any_params(),
        seed in any::<u64>(),
    ) {
        let mut reordered = members.clone();
        // A cheap deterministic shuffle on top of prop_shuffle's order.
        reordered.sort_by_key(|n| n.0.wrapping_mul(seed | 1).rotate_left(17));
        let a = Placement::compute(&members, params).unwrap();
        let b = Placement::compute(&reordered, params).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(diff(&a, &b).unwrap().is_empty());
    }
}

proptest! {
    #![proptest_config(structural())]

    #[test]
    fn leader_targets_are_replicas_and_independent_of_member_order(
        members in members(1..=12),
        params in any_params(),
        seed in any::<u64>(),
    ) {
        let placement = Placement::compute(&members, params).unwrap();
        let leaders = placement.leaders();
        prop_assert_eq!(leaders.len(), params.partitions as usize);
        for (partition, list) in placement.iter() {
            let leader = leaders[&partition];
            prop_assert!(list.contains(&leader), "{:?} leads {:?}", leader, partition);
            if list.len() == 1 {
                prop_assert_eq!(leader, list[0]);
            }
        }
        let mut reordered = members.clone();
        reordered.sort_by_key(|n| n.0.wrapping_mul(seed | 1).rotate_left(17));
        let again = Placement::compute(&reordered, params).unwrap();
        prop_assert_eq!(again.leaders(), leaders);
    }

    /// What the greedy guarantees on any placement: a node was given its last
    /// partition `p` while it led the fewest of `p`'s replicas (strictly
    /// fewer than those listed before it), and counts only grow after that.
    /// Summing over `p`'s replicas bounds the busiest node by
    /// `ceil(P / min(RF, N))`, however skewed the ring.
    #[test]
    fn every_leader_took_its_last_partition_while_leading_the_fewest_replicas(
        members in members(1..=12),
        params in any_params(),
    ) {
        let placement = Placement::compute(&members, params).unwrap();
        let leaders = placement.leaders();
        let led = leader_counts(&placement, &leaders);
        // Later partitions overwrite earlier ones: each leader's last partition.
        let last: BTreeMap<NodeId, PartitionId> =
            leaders.iter().map(|(p, n)| (*n, *p)).collect();
        for (node, partition) in last {
            let list = placement.replicas(partition).unwrap();
            let at = list.iter().position(|n| *n == node).unwrap();
            for (i, other) in list.iter().enumerate().filter(|(i, _)| *i != at) {
                let floor = if i < at { led[&node] } else { led[&node] - 1 };
                prop_assert!(
                    led[other] >= floor,
                    "{:?} (leads {}) took {:?} over {:?} (leads {})",
                    node, led[&node], partition, other, led[other]
                );
            }
        }
        let rf = (params.replication_factor as usize).min(members.len());
        let busiest = led.values().copied().max().unwrap_or(0);
        prop_assert!(busiest <= (params.partitions as usize).div_ceil(rf));
    }
}

proptest! {
    #![proptest_config(statistical())]

    /// On ring placements with a few partitions per node the greedy comes
    /// close to even. Over 120 000 random configurations in these ranges no
    /// node led more than `ceil(P/N) + 2` partitions, and with three or more
    /// replicas per partition every node led at least one. With two replicas
    /// a node can be left leading nothing (2 in 60 000 here, e.g. 11 nodes,
    /// P = 44; and about a quarter of configurations with `N <= P < 2N`),
    /// which is not asserted; nor is the spread, whose low end follows the
    /// ring's skew (max - min was at most 5 with three or more replicas, 10
    /// with two).
    #[test]
    fn leader_targets_spread_within_two_of_even(
        members in members(2..=12),
        replication_factor in 2u32..=5,
        vnodes in 32u32..=256,
        extra in any::<prop::sample::Index>(),
    ) {
        let n = members.len();
        let partitions = 4 * n + extra.index(257 - 4 * n);
        let params = RingParams {
            partitions: partitions as u32,
            replication_factor,
            vnodes,
        };
        let placement = Placement::compute(&members, params).unwrap();
        let led = leader_counts(&placement, &placement.leaders());
        let busiest = led.values().copied().max().unwrap();
        prop_assert!(busiest <= partitions.div_ceil(n) + 2, "{:?}", led);
        if (replication_factor as usize).min(n) >= 3 {
            prop_assert!(led.values().all(|c| *c >= 1), "{:?}", led);
        }
    }

    /// A newcomer takes about its fair share `RF*P/(N+1)`; 2x that is the
    /// bound. Over 20 000 random configurations in these ranges the worst
    /// seen was 1.71x and the least 0.41x (never zero).
    #[test]
    fn adding_a_node_moves_a_bounded_nonzero_number_of_replicas(
        (members, newcomer) in members_and_newcomer(1..=12),
        partitions in 64u32..=256,
        vnodes in 32u32..=128,
    ) {
        let params = RingParams { partitions, replication_factor: 3, vnodes };
        let old = Placement::compute(&members, params).unwrap();
        let new = Placement::compute(&with(&members, newcomer), params).unwrap();
        let moved: usize = diff(&old, &new).unwrap().iter().map(|m| m.added.len()).sum();
        let bound = 2 * 3 * partitions as usize / (members.len() + 1);
        prop_assert!(moved > 0);
        prop_assert!(moved <= bound, "moved {} > bound {}", moved, bound);
    }

    /// With enough partitions the spread stays within 25% for any 5 nodes
    /// (the binomial spread shrinks as 1/sqrt(P); at P=64 it does not, see
    /// `RingParams`).
    #[test]
    fn five_random_nodes_share_256_partitions_within_25_percent(members in members(5)) {
        let params = RingParams { partitions: 256, ..RingParams::DEFAULT };
        let placement = Placement::compute(&members, params).unwrap();
        let counts: Vec<usize> = members
            .iter()
            .map(|m| placement.iter().filter(|(_, l)| l.contains(m)).count())
            .collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        for c in &counts {
            prop_assert!((*c as f64 - mean).abs() <= 0.25 * mean, "{:?}", counts);
        }
    }
}
