//! The per-peer channel (`kv_raft::channel`) on real groups over HTTP: while one group streams
//! a large snapshot to a node, the other groups that node shares with its peers keep their
//! leaders (their heartbeats travel on the channel, the snapshot beside it), and every write
//! is applied once; a call of a batch that hangs does not hold back the answers of the others.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use kv_raft::{NodeId, RaftTuning};
use kv_storage::{Command, Condition, GroupId};
use support::{fast_tuning, wait_until, TestCluster, SETTLE};

/// The group whose state travels as a snapshot.
const BIG: GroupId = GroupId(1);
/// Groups that must keep their leaders meanwhile.
const OTHERS: std::ops::RangeInclusive<u64> = 2..=9;
/// Values written into `BIG`: 240 x 64 KiB, about 15 MiB of state.
const VALUES: usize = 240;
const VALUE_BYTES: usize = 64 << 10;

fn put(key: &str, value: Vec<u8>) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value,
        cond: Condition::Always,
    }
}

/// (term, leader) of every other group as each node sees it.
fn leaderships(cluster: &TestCluster) -> BTreeMap<(NodeId, u64), (u64, Option<NodeId>)> {
    let mut seen = BTreeMap::new();
    for node in (1..=3).map(NodeId) {
        for g in OTHERS {
            let m = cluster
                .group(node, GroupId(g))
                .raft()
                .metrics()
                .borrow()
                .clone();
            seen.insert((node, g), (m.current_term, m.current_leader));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_does_not_starve_the_heartbeats_of_other_groups() {
    let tuning = RaftTuning {
        snapshot_after_logs: 50,
        logs_kept_after_snapshot: 0,
        ..fast_tuning()
    };
    let cluster = TestCluster::start_with(&[NodeId(1), NodeId(2), NodeId(3)], &tuning).await;
    // BIG lives on nodes 1 and 2 first; node 3 will get it as a snapshot.
    let leader = cluster.create_group(BIG, &[NodeId(1), NodeId(2)]).await;
    for g in OTHERS {
        cluster
            .create_group(GroupId(g), &[NodeId(1), NodeId(2), NodeId(3)])
            .await;
    }
    let big = cluster.group(leader, BIG);
    // One at a time: each write its own entry, so the log passes the snapshot threshold.
    let mut versions = Vec::new();
    for i in 0..VALUES {
        let value = vec![(i % 251) as u8; VALUE_BYTES];
        let (_, index) = big.write(put(&format!("big-{i}"), value)).await.unwrap();
        versions.push(index);
    }
    // The log behind the snapshot is gone: node 3 can only catch up from a snapshot.
    wait_until(
        "the leader purges its log behind a snapshot",
        SETTLE,
        || {
            let s = big.raft().metrics().borrow().purged.map(|p| p.index);
            std::future::ready(s.is_some_and(|p| p > 0))
        },
    )
    .await;

    let before = leaderships(&cluster);
    big.add_learner(NodeId(3), cluster.addr(NodeId(3)), true)
        .await
        .unwrap();
    let on_three = cluster.group(NodeId(3), BIG);
    assert!(
        on_three
            .raft()
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index > 0),
        "node 3 caught up from a snapshot"
    );
    assert_eq!(
        leaderships(&cluster),
        before,
        "no other group changed term or leader while the snapshot streamed"
    );

    // Every value arrived, applied once: each key at the version its write was acknowledged
    // with (a version is the index of the entry that last wrote the key).
    for (i, version) in versions.into_iter().enumerate() {
        let record = on_three
            .get(format!("big-{i}").into_bytes(), true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.version, version, "big-{i} applied once");
        assert_eq!(record.value, vec![(i % 251) as u8; VALUE_BYTES]);
    }
    cluster.shutdown().await;
}

/// A batch whose call for one group hangs (here: the step before it, as kv-node's opening of a
/// group could) is answered anyway once that call's budget (half the leader lease) is spent:
/// the hung call fails, the others carry their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_does_not_hold_back_the_other_answers_of_its_batch() {
    use kv_raft::channel::{serve_batch, BatchRequest, BatchResponse, Call};
    use openraft::raft::{VoteRequest, VoteResponse};

    let cluster = TestCluster::start(&[NodeId(1), NodeId(2)]).await;
    let healthy = GroupId(2);
    let hung = GroupId(3);
    cluster.create_group(healthy, &[NodeId(1), NodeId(2)]).await;
    cluster.create_group(hung, &[NodeId(1), NodeId(2)]).await;
    // A vote from an old term: answered at once (refused), changing nothing.
    let vote = postcard::to_stdvec(&VoteRequest::<NodeId>::new(
        openraft::Vote::new(0, NodeId(2)),
        None,
    ))
    .unwrap();
    let call = |group: GroupId| Call {
        group: group.0,
        rpc: "vote".into(),
        body: vote.clone(),
    };
    let batch = postcard::to_stdvec(&BatchRequest {
        calls: vec![call(healthy), call(hung), call(healthy)],
    })
    .unwrap();
    let host = cluster.host(NodeId(1));
    let prepare = |group: GroupId, _, _| async move {
        if group == hung {
            std::future::pending::<()>().await;
        }
        Ok(())
    };
    let answer = tokio::time::timeout(SETTLE, serve_batch(host, &batch, prepare))
        .await
        .expect("the batch was answered")
        .unwrap();
    let answer: BatchResponse = postcard::from_bytes(&answer).unwrap();
    assert_eq!(answer.results.len(), 3);
    for i in [0, 2] {
        let bytes = answer.results[i].as_ref().unwrap();
        let vote: Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>> =
            postcard::from_bytes(bytes).unwrap();
        assert!(!vote.unwrap().vote_granted, "an old term's vote is refused");
    }
    let hung_answer = answer.results[1].as_ref().unwrap_err();
    assert_eq!(hung_answer.status, 503);
    assert!(
        hung_answer.message.contains("took longer"),
        "{}",
        hung_answer.message
    );
    cluster.shutdown().await;
}
