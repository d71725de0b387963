//! Check-quorum on real groups talking over HTTP: a leader that cannot hear from a quorum stops
//! counting itself the leader within a lease and refuses requests at once, instead of making
//! each one wait out the request timeout.

#![allow(clippy::unwrap_used)]

mod support;

use kv_raft::{GroupError, NodeId};
use kv_storage::{Command, Condition, GroupId};
use support::{wait_until, TestCluster, SETTLE};

const GROUP: GroupId = GroupId(1);
const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn put(key: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        cond: Condition::Always,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_its_quorum_steps_down_and_refuses_at_once() {
    let tuning = support::fast_tuning();
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group.write(put("before")).await.unwrap();
    assert!(group.reaches_quorum(&[]));

    for id in VOTERS.into_iter().filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    wait_until("the cut-off leader reports no leadership", SETTLE, || {
        std::future::ready(!group.is_leader() && group.leader().is_none())
    })
    .await;
    let status = group.status().await;
    assert_eq!(
        (status.role, status.leader),
        (kv_raft::Role::Follower, None)
    );
    wait_until("the followers count as unreachable", SETTLE, || {
        std::future::ready(!group.reaches_quorum(&[]))
    })
    .await;

    // Refused without waiting for the request timeout: the outcome is known to be "no quorum".
    for attempt in [
        tokio::spawn({
            let group = group.clone();
            async move { group.write(put("after")).await.map(|_| ()) }
        }),
        tokio::spawn({
            let group = group.clone();
            async move { group.get(b"before".to_vec(), false).await.map(|_| ()) }
        }),
    ] {
        let started = tokio::time::Instant::now();
        let answer = attempt.await.unwrap();
        assert!(
            matches!(answer, Err(GroupError::NotLeader { leader: None })),
            "{answer:?}"
        );
        assert!(
            started.elapsed() < tuning.request_timeout / 2,
            "refused after {:?}, not at once",
            started.elapsed()
        );
    }
    // A stale read needs no quorum.
    let stale = group.get(b"before".to_vec(), true).await.unwrap();
    assert_eq!(stale.map(|r| r.value), Some(b"v".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_with_one_follower_left_keeps_leading() {
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    let down = VOTERS.into_iter().find(|id| *id != leader).unwrap();
    cluster.stop(down).await;
    // Well past a lease: the remaining follower's acknowledgements keep it leading.
    let lease = support::fast_tuning().election_max;
    let until = tokio::time::Instant::now() + lease * 3;
    while tokio::time::Instant::now() < until {
        group.write(put("k")).await.unwrap();
        assert!(group.is_leader());
    }
    assert!(group.reaches_quorum(&[]));
    let other = VOTERS
        .into_iter()
        .find(|id| *id != leader && *id != down)
        .unwrap();
    assert!(!group.reaches_quorum(&[other]), "without the last follower");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_share_leadership_confirmations() {
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group.write(put("k")).await.unwrap();
    let before = group.read_rounds();
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let group = group.clone();
            tokio::spawn(async move { group.get(b"k".to_vec(), false).await })
        })
        .collect();
    for read in reads {
        let record = read.await.unwrap().unwrap();
        assert_eq!(record.map(|r| r.value), Some(b"v".to_vec()));
    }
    let rounds = group.read_rounds() - before;
    assert!((1..50).contains(&rounds), "{rounds} rounds for 200 reads");
    cluster.shutdown().await;
}

/// Follower reads: a voter that is not the leader serves a linearizable read after applying up
/// to the leader's read index, so it never misses a write acknowledged before the read began,
/// even while writes keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_sees_every_write_acknowledged_before_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let writer = cluster.group(leader, GROUP);
    let follower_id = VOTERS.into_iter().find(|id| *id != leader).unwrap();
    let follower = cluster.group(follower_id, GROUP);
    let acked = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn({
        let acked = acked.clone();
        async move {
            for i in 1..=300u64 {
                let cmd = Command::Put {
                    key: b"counter".to_vec(),
                    value: i.to_string().into_bytes(),
                    cond: Condition::Always,
                };
                writer.write(cmd).await.unwrap();
                acked.store(i, Ordering::SeqCst);
            }
        }
    });
    let rounds_before = cluster.group(leader, GROUP).read_rounds();
    let mut reads = 0;
    while !writing.is_finished() {
        let floor = acked.load(Ordering::SeqCst);
        let got = follower.get(b"counter".to_vec(), false).await.unwrap();
        let seen: u64 = got.map_or(0, |r| String::from_utf8(r.value).unwrap().parse().unwrap());
        assert!(
            seen >= floor,
            "the follower read {seen} after write {floor} was acknowledged"
        );
        reads += 1;
    }
    writing.await.unwrap();
    assert!(reads > 0);
    assert!(
        cluster.group(leader, GROUP).read_rounds() > rounds_before,
        "the leader confirmed its leadership for the follower's reads"
    );
    assert!(!follower.is_leader());

    // A burst of follower reads shares read-index rounds.
    let before = follower.follower_read_rounds();
    let burst = (0..64).map(|_| {
        let follower = follower.clone();
        async move { follower.get(b"counter".to_vec(), false).await }
    });
    for read in futures::future::join_all(burst).await {
        let got = read.unwrap().unwrap();
        assert_eq!(got.value, b"300".to_vec());
    }
    let rounds = follower.follower_read_rounds() - before;
    assert!(
        (1..32).contains(&rounds),
        "64 concurrent follower reads took {rounds} read-index rounds"
    );
    cluster.shutdown().await;
}
