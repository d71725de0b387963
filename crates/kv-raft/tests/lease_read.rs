//! Lease reads on real groups talking over HTTP: a leader a quorum acknowledged a moment ago
//! answers reads without a confirmation round each, and stops doing so once it can no longer
//! be sure it leads (its followers gone, or leadership handed over).

#![allow(clippy::unwrap_used)]

mod support;

use kv_raft::{GroupError, NodeId};
use kv_storage::{Command, Condition, GroupId};
use support::{wait_until, TestCluster, SETTLE};

const GROUP: GroupId = GroupId(1);
const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond: Condition::Always,
    }
}

async fn value(group: &kv_raft::Group, key: &str) -> Result<Option<String>, GroupError> {
    let record = group.get(key.as_bytes().to_vec(), false).await?;
    Ok(record.map(|r| String::from_utf8(r.value).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_reads_on_the_leader_ride_its_lease_instead_of_a_round_each() {
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group.write(put("k", "v1")).await.unwrap();
    let before = group.read_rounds();
    for i in 0..200 {
        if i == 100 {
            // A write in the middle is seen by the very next read.
            group.write(put("k", "v2")).await.unwrap();
        }
        let expected = if i < 100 { "v1" } else { "v2" };
        assert_eq!(value(&group, "k").await.unwrap().as_deref(), Some(expected));
    }
    // One read at a time: without the lease each would have needed its own round.
    let rounds = group.read_rounds() - before;
    assert!((1..100).contains(&rounds), "{rounds} rounds for 200 reads");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_followers_are_gone_serves_no_read_from_an_old_lease() {
    let tuning = support::fast_tuning();
    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let group = cluster.group(leader, GROUP);
    group.write(put("k", "v")).await.unwrap();
    assert_eq!(value(&group, "k").await.unwrap().as_deref(), Some("v"));
    for id in VOTERS.into_iter().filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    // Past the followers' lease, another leader could have been elected by now: no read may
    // be answered from this one's state.
    let past_any_lease = tokio::time::Instant::now() + tuning.election_max * 2;
    wait_until("the followers' leases are over", SETTLE, || {
        std::future::ready(tokio::time::Instant::now() >= past_any_lease)
    })
    .await;
    let read = value(&group, "k").await;
    assert!(
        read.is_err(),
        "read {read:?} from a leader without a quorum"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_transfer_the_old_leader_reads_what_the_new_one_wrote() {
    let cluster = TestCluster::start(&VOTERS).await;
    let old = cluster.create_group(GROUP, &VOTERS).await;
    let old_group = cluster.group(old, GROUP);
    old_group.write(put("k", "before")).await.unwrap();
    // A fresh lease on the old leader.
    assert_eq!(
        value(&old_group, "k").await.unwrap().as_deref(),
        Some("before")
    );
    let to = VOTERS.into_iter().find(|id| *id != old).unwrap();
    old_group.transfer_leader(to).await.unwrap();
    let new = cluster.leader(GROUP, &VOTERS).await;
    assert_ne!(new, old);
    cluster
        .group(new, GROUP)
        .write(put("k", "after"))
        .await
        .unwrap();
    // Still well within the lease the old leader had: it reads through the new leader now.
    assert_eq!(
        value(&old_group, "k").await.unwrap().as_deref(),
        Some("after")
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_going_round_the_replicas_never_go_back_while_writes_stream_in() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::start(&VOTERS).await;
    let leader = cluster.create_group(GROUP, &VOTERS).await;
    let writer_group = cluster.group(leader, GROUP);
    writer_group.write(put("k", "0")).await.unwrap();
    // The highest value whose write was acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                writer_group.write(put("k", &i.to_string())).await.unwrap();
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    // Each read starts after the one before ended, on the next replica in turn (leader and
    // followers, lease reads and follower read indexes): linearizable reads then see every
    // write acknowledged before they started, and never less than the read before.
    let mut seen = 0u64;
    for round in 0..300usize {
        let floor = acked.load(Ordering::SeqCst);
        let replica = cluster.group(VOTERS[round % VOTERS.len()], GROUP);
        let read: u64 = value(&replica, "k")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            read >= floor,
            "read {read}, but {floor} was acknowledged before"
        );
        assert!(read >= seen, "read {read} after a read of {seen}");
        seen = read;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(seen > 0, "no write landed while reading");
    cluster.shutdown().await;
}
