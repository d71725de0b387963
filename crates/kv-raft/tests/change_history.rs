//! The change history through Raft: every replica holds the same rows at the same positions,
//! the applied-index channel tells watchers when to read, and compaction moves the start.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kv_raft::{ChangeKind, ChangePage, ChangePos, Command, Condition, Group, NodeId, Outcome};
use kv_storage::GroupId;
use support::{fast_tuning, wait_until, TestCluster, SETTLE};

const NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const G: GroupId = GroupId(1);
const FROM_START: ChangePos = ChangePos {
    index: 0,
    sub: u32::MAX,
};

fn put(key: &str, value: &str, cond: Condition) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond,
    }
}

/// Wait until `group` has applied `index` here, by its applied-index channel.
async fn applied(group: &Group, index: u64) {
    let mut rx = group.applied_index();
    tokio::time::timeout(SETTLE, rx.wait_for(|i| *i >= index))
        .await
        .expect("applied in time")
        .unwrap();
}

/// Write `writes` keys through `leader`, then snapshot and purge its log; returns the purged
/// index.
async fn write_and_compact(leader: &Group, writes: usize) -> u64 {
    for i in 0..writes {
        leader
            .write(put(&format!("k{i}"), "v", Condition::Always))
            .await
            .unwrap();
    }
    leader
        .compact_log(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a snapshot of the applied writes")
}

async fn all_changes(group: &Group) -> ChangePage {
    group
        .changes(FROM_START, usize::MAX, usize::MAX)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_serves_the_same_change_history() {
    let cluster = TestCluster::start(&NODES).await;
    let leader = cluster.group(cluster.create_group(G, &NODES).await, G);

    // (kind, key, version) of each write that changes a key, in commit order.
    let mut expected = Vec::new();
    let mut last = 0;
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        let (outcome, index) = leader
            .write(put(key, value, Condition::Always))
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Written { version: index });
        expected.push((ChangeKind::Put, key, index, value));
        last = index;
    }
    // A failed compare-and-set commits but changes nothing.
    let (outcome, index) = leader
        .write(put("a", "x", Condition::Version(1)))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::PreconditionFailed { .. }));
    last = last.max(index);
    let (outcome, index) = leader
        .write(Command::Delete {
            key: b"b".to_vec(),
            cond: Condition::Always,
        })
        .await
        .unwrap();
    let Outcome::Deleted { version } = outcome else {
        panic!("{outcome:?}")
    };
    expected.push((ChangeKind::Delete, "b", version, ""));
    last = last.max(index);

    let mut pages = Vec::new();
    for id in NODES {
        let group = cluster.group(id, G);
        applied(&group, last).await;
        assert!(*group.applied_index().borrow() >= last);
        pages.push(all_changes(&group).await);
    }
    let rows: Vec<_> = pages[0]
        .rows
        .iter()
        .map(|(_, c)| {
            (
                c.kind,
                std::str::from_utf8(&c.key).unwrap(),
                c.version,
                std::str::from_utf8(&c.value).unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(pages[0].start, 1, "a new group holds its whole history");
    let positions: Vec<ChangePos> = pages[0].rows.iter().map(|(p, _)| *p).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Put rows sit at the index of their write.
    assert!(pages[0]
        .rows
        .iter()
        .filter(|(_, c)| c.kind == ChangeKind::Put)
        .all(|(p, c)| p.index == c.version));
    assert!(pages.iter().all(|p| *p == pages[0]), "{pages:#?}");

    // Resuming from a cursor gives the rest.
    let (first, _) = pages[0].rows[0].clone();
    let rest = leader.changes(first, 10, usize::MAX).await.unwrap();
    assert_eq!(rest.rows, pages[0].rows[1..]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_moves_the_history_start_past_the_purged_entries() {
    let tuning = kv_raft::RaftTuning {
        logs_kept_after_snapshot: 0,
        ..fast_tuning()
    };
    let cluster = TestCluster::start_with(&NODES, &tuning).await;
    let leader = cluster.group(cluster.create_group(G, &NODES).await, G);
    let purged = write_and_compact(&leader, 5).await;
    let (_, after) = leader
        .write(put("after", "v", Condition::Always))
        .await
        .unwrap();
    applied(&leader, after).await;

    let page = all_changes(&leader).await;
    assert!(page.start > purged, "start {} purged {purged}", page.start);
    assert_eq!(page.start, purged + 1);
    assert!(page.rows.iter().all(|(p, _)| p.index > purged), "{page:?}");
    assert_eq!(
        page.rows.last().map(|(p, c)| (p.index, c.key.as_slice())),
        Some((after, &b"after"[..]))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_keeps_recent_history_and_a_replica_added_by_snapshot_receives_it() {
    let kept = 3;
    let tuning = kv_raft::RaftTuning {
        logs_kept_after_snapshot: kept,
        ..fast_tuning()
    };
    let cluster = TestCluster::start_with(&NODES, &tuning).await;
    let voters = [NodeId(1), NodeId(2)];
    let leader = cluster.group(cluster.create_group(G, &voters).await, G);
    let purged = write_and_compact(&leader, 8).await;
    // The purge is written after the metrics report it.
    wait_until("the purge trimmed the history", SETTLE, || async {
        all_changes(&leader).await.start > 1
    })
    .await;
    let page = all_changes(&leader).await;
    assert_eq!(page.start, purged + 1 - kept, "{page:?}");
    assert_eq!(page.rows.len() as u64, kept, "{page:?}");

    // The log is gone up to `purged`: node 3 joins by snapshot, and gets the history with it
    // (replaying the log could not give it: the log starts after `purged`).
    leader
        .add_learner(NodeId(3), cluster.addr(NodeId(3)), true)
        .await
        .unwrap();
    let learner = cluster.group(NodeId(3), G);
    applied(&learner, purged).await;
    // The snapshot was built before the purge trimmed the leader's history, so the learner
    // may reach further back; from the leader's start on the two are the same.
    let got = all_changes(&learner).await;
    assert!(got.start <= page.start, "{got:?}");
    let from_leader_start: Vec<_> = got
        .rows
        .into_iter()
        .filter(|(p, _)| p.index >= page.start)
        .collect();
    assert_eq!(from_leader_start, page.rows);
    cluster.shutdown().await;
}
