//! Leadership transfer ([`kv_raft::Group::transfer_leader`]) on real groups whose members talk
//! over HTTP: leadership lands on the chosen voter, acknowledged writes survive it, writes
//! continue through the new leader, and a transfer that cannot be done is refused.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_raft::{Group, GroupError, NodeId, RaftTuning};
use kv_storage::{Command, Condition, GroupId};
use support::{wait_until, TestCluster, SETTLE};

const GROUP: GroupId = GroupId(1);
const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
/// A lease race can let another follower win a transfer; this many tries must reach the target.
const TRANSFER_ATTEMPTS: usize = 3;

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond: Condition::Always,
    }
}

/// Acknowledged writes: key -> (value, log index).
type Acked = BTreeMap<String, (String, u64)>;

/// Write `count` keys named `{prefix}-{i}` through `group`, which must lead.
async fn write_keys(group: &Group, prefix: &str, count: usize, acked: &mut Acked) {
    for i in 0..count {
        let (key, value) = (format!("{prefix}-{i}"), format!("v{i}"));
        let (_, index) = group.write(put(&key, &value)).await.unwrap();
        acked.insert(key, (value, index));
    }
}

/// Keep writing fresh keys to whichever node leads (following `NotLeader`) until `stop`;
/// return the acknowledged writes and how many attempts failed.
async fn write_until_stopped(
    groups: Vec<(NodeId, Group)>,
    stop: Arc<AtomicBool>,
) -> (Acked, usize) {
    let mut acked = Acked::new();
    let mut failed = 0;
    let mut target = groups[0].0;
    let mut attempt = 0;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let (key, value) = (format!("during-{attempt}"), format!("v{attempt}"));
        let group = &groups.iter().find(|(id, _)| *id == target).unwrap().1;
        match group.write(put(&key, &value)).await {
            Ok((_, index)) => {
                acked.insert(key, (value, index));
            }
            Err(e) => {
                failed += 1;
                if let GroupError::NotLeader {
                    leader: Some((leader, _)),
                } = e
                {
                    target = leader;
                } else {
                    // No leader known yet (an election is running): look again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some((id, _)) = groups.iter().find(|(_, g)| g.is_leader()) {
                        target = *id;
                    }
                }
            }
        }
    }
    (acked, failed)
}

/// Every acknowledged write is readable, linearizably on `leader` and on every voter once it
/// has applied the last of them.
async fn assert_all_readable(cluster: &TestCluster, leader: NodeId, acked: &Acked) {
    let last_index = acked.values().map(|(_, i)| *i).max().unwrap();
    for (key, (value, _)) in acked {
        let record = cluster
            .group(leader, GROUP)
            .get(key.as_bytes().to_vec(), false)
            .await
            .unwrap();
        let got = record.map(|r| r.value);
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "{key} on the leader"
        );
    }
    for id in VOTERS {
        let group = cluster.group(id, GROUP);
        wait_until(&format!("node {id} applies {last_index}"), SETTLE, || {
            let applied = group
                .raft()
                .metrics()
                .borrow()
                .last_applied
                .map(|l| l.index);
            std::future::ready(applied >= Some(last_index))
        })
        .await;
        for (key, (value, _)) in acked {
            let record = group.get(key.as_bytes().to_vec(), true).await.unwrap();
            let got = record.map(|r| r.value);
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key} on node {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_hands_leadership_to_the_chosen_follower_and_loses_no_acknowledged_write() {
    let cluster = TestCluster::start(&VOTERS).await;
    let first = cluster.create_group(GROUP, &VOTERS).await;
    let mut acked = Acked::new();
    write_keys(&cluster.group(first, GROUP), "before", 20, &mut acked).await;

    // Writes keep arriving while leadership moves.
    let stop = Arc::new(AtomicBool::new(false));
    let groups = VOTERS
        .iter()
        .map(|id| (*id, cluster.group(*id, GROUP)))
        .collect();
    let writer = tokio::spawn(write_until_stopped(groups, stop.clone()));

    let to = VOTERS.into_iter().find(|id| *id != first).unwrap();
    let mut leader = first;
    let mut attempts = 0;
    while leader != to && attempts < TRANSFER_ATTEMPTS {
        attempts += 1;
        let started = tokio::time::Instant::now();
        let result = cluster.group(leader, GROUP).transfer_leader(to).await;
        let took = started.elapsed();
        leader = cluster.leader(GROUP, &VOTERS).await;
        eprintln!("transfer {attempts} to {to}: {result:?} in {took:?}; leader now {leader}");
    }
    assert_eq!(leader, to, "leadership reached the target");

    // Let the writer land a few writes on the new leader before stopping it.
    let new_leader = cluster.group(to, GROUP);
    let settled = new_leader.raft().metrics().borrow().last_log_index;
    wait_until("writes commit on the new leader", SETTLE, || {
        let last = new_leader.raft().metrics().borrow().last_log_index;
        std::future::ready(last >= settled.map(|i| i + 5))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (during, failed) = writer.await.unwrap();
    eprintln!(
        "{} writes acknowledged during the transfer, {failed} refused",
        during.len()
    );
    acked.extend(during);

    write_keys(&new_leader, "after", 20, &mut acked).await;
    assert_all_readable(&cluster, to, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_is_refused_off_the_leader_and_to_anyone_but_another_voter() {
    let cluster = TestCluster::start(&[NodeId(1), NodeId(2), NodeId(3), NodeId(4)]).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group
        .add_learner(NodeId(4), cluster.addr(NodeId(4)), true)
        .await
        .unwrap();
    let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
    let other = VOTERS
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .unwrap();

    let from_follower = cluster.group(follower, GROUP).transfer_leader(other).await;
    match from_follower {
        Err(GroupError::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, leader),
        other => panic!("transfer on a follower: {other:?}"),
    }
    for (to, what) in [
        (NodeId(4), "a learner"),
        (leader, "itself"),
        (NodeId(99), "a stranger"),
    ] {
        let refused = group.transfer_leader(to).await;
        assert!(
            matches!(refused, Err(GroupError::BadRequest(_))),
            "transfer to {what}: {refused:?}"
        );
    }

    // Refusals leave the group as it was: same leader, writes go through.
    assert!(group.is_leader());
    group.write(put("k", "v")).await.unwrap();
    assert_eq!(cluster.leader(GROUP, &VOTERS).await, leader);
    wait_until("the learner catches up", SETTLE, || {
        std::future::ready(group.replication_caught_up(NodeId(4)))
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_transfer_to_a_down_voter_leaves_the_leader_serving() {
    // A follower campaigns once lease + election_min have passed since it last heard from
    // the leader; a failed transfer resumes heartbeats right after the lease. Make that
    // margin (election_min - heartbeat) wide enough for a loaded machine.
    let tuning = RaftTuning {
        election_min: Duration::from_millis(1000),
        election_max: Duration::from_millis(2000),
        ..support::fast_tuning()
    };
    let cluster = TestCluster::start_with(&VOTERS, &tuning).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    let down = VOTERS.into_iter().find(|id| *id != leader).unwrap();
    wait_until("the target holds the whole log", SETTLE, || {
        std::future::ready(group.replication_caught_up(down))
    })
    .await;
    cluster.stop(down).await;
    let term = group.raft().metrics().borrow().current_term;

    // Caught up but unreachable: fails at timeout-now, after heartbeats were paused.
    let unreachable = group.transfer_leader(down).await;
    assert!(
        matches!(unreachable, Err(GroupError::Unavailable(_))),
        "transfer to a stopped voter: {unreachable:?}"
    );
    // Behind: fails before pausing anything.
    group.write(put("k", "v1")).await.unwrap();
    assert!(!group.replication_caught_up(down));
    let behind = group.transfer_leader(down).await;
    assert!(
        matches!(behind, Err(GroupError::Unavailable(_))),
        "transfer to a lagging voter: {behind:?}"
    );

    // Writes and linearizable reads still go through the same leader in the same term.
    group.write(put("k", "v2")).await.unwrap();
    let record = group.get(b"k".to_vec(), false).await.unwrap();
    assert_eq!(record.map(|r| r.value), Some(b"v2".to_vec()));
    assert!(group.is_leader());
    assert_eq!(group.raft().metrics().borrow().current_term, term);
    cluster.shutdown().await;
}
