//! Quiet groups on real hosts talking over HTTP: an idle group stops its Raft heartbeats and
//! keeps its leader (check-quorum judged by the liveness pings), a write wakes it, a read does
//! not, and its followers still take over when the leader dies or is cut off.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kv_raft::NodeId;
use kv_storage::{Command, Condition, GroupId};
use support::{fast_tuning, wait_until, TestCluster, SETTLE};

const GROUP: GroupId = GroupId(1);
const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond: Condition::Always,
    }
}

/// How long ago replica `id` last heard from its leader (openraft renews a follower's lease
/// on every append, heartbeats included).
async fn since_leader_heard(cluster: &TestCluster, id: NodeId) -> Option<Duration> {
    cluster
        .group(id, GROUP)
        .raft()
        .with_raft_state(|st| st.vote_last_modified().map(|at| at.elapsed()))
        .await
        .unwrap()
}

async fn wait_quiet(cluster: &TestCluster, leader: NodeId) {
    wait_until("the idle group goes quiet", SETTLE, || {
        std::future::ready(cluster.group(leader, GROUP).is_quiesced())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_group_stops_heartbeating_keeps_its_leader_and_wakes_for_a_write() {
    let lease = fast_tuning().election_max;
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    let (_, first) = group.write(put("k", "1")).await.unwrap();
    let term = group.raft().metrics().borrow().current_term;

    wait_quiet(&cluster, leader).await;
    // The followers hear nothing from the leader for longer than two leases (no heartbeat is
    // sent), and still the leader leads, every replica agrees on it, and nobody campaigned.
    let followers: Vec<NodeId> = VOTERS.into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        let cluster = &cluster;
        wait_until("no heartbeat for two leases", SETTLE, || async move {
            since_leader_heard(cluster, *id)
                .await
                .is_some_and(|d| d > lease * 2)
        })
        .await;
    }
    for id in VOTERS {
        let g = cluster.group(id, GROUP);
        assert_eq!(g.leader().map(|(l, _)| l), Some(leader), "node {id}");
        assert_eq!(g.raft().metrics().borrow().current_term, term, "node {id}");
    }
    assert!(group.is_leader());

    // A linearizable read confirms leadership with a round of its own and leaves it quiet.
    let follower = followers[0];
    let read = group.get(b"k".to_vec(), false).await.unwrap().unwrap();
    assert_eq!(read.value, b"1");
    assert!(group.is_quiesced(), "a read does not wake the group");

    // A write wakes it, commits, and a follower read then sees it.
    let (_, second) = group.write(put("k", "2")).await.unwrap();
    assert!(second > first);
    let seen = cluster
        .group(follower, GROUP)
        .get(b"k".to_vec(), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.value.as_slice(), seen.version), (&b"2"[..], second));
    assert_eq!(group.raft().metrics().borrow().current_term, term);

    // And it goes quiet again once idle.
    wait_quiet(&cluster, leader).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_followers_of_a_quiet_group_elect_a_new_leader_when_it_dies() {
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let (_, acked) = cluster
        .group(leader, GROUP)
        .write(put("k", "before"))
        .await
        .unwrap();
    wait_quiet(&cluster, leader).await;

    cluster.stop(leader).await;
    let rest: Vec<NodeId> = VOTERS.into_iter().filter(|id| *id != leader).collect();
    let mut next = NodeId(0);
    wait_until("a follower takes over", SETTLE, || {
        next = rest
            .iter()
            .copied()
            .find(|id| cluster.group(*id, GROUP).is_leader())
            .unwrap_or(NodeId(0));
        std::future::ready(next != NodeId(0))
    })
    .await;
    let g = cluster.group(next, GROUP);
    let kept = g.get(b"k".to_vec(), false).await.unwrap().unwrap();
    assert_eq!(
        (kept.value.as_slice(), kept.version),
        (&b"before"[..], acked)
    );
    g.write(put("k", "after")).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_leader_cut_off_from_its_followers_stops_leading() {
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group.write(put("k", "v")).await.unwrap();
    wait_quiet(&cluster, leader).await;

    for id in VOTERS.into_iter().filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    // Its pings go unanswered: within a lease or so it counts itself leader no more.
    wait_until(
        "the cut-off quiet leader reports no leadership",
        SETTLE,
        || std::future::ready(!group.is_leader() && group.leader().is_none()),
    )
    .await;
    assert!(
        !group.is_quiesced(),
        "it woke, heartbeating to find a quorum"
    );
    cluster.shutdown().await;
}
