//! Batched proposals on a real group (redb store): concurrent writes share log entries, yet
//! each caller gets its own outcome, writes apply in the order they arrived, two writes of one
//! key never share an entry (so versions stay unique), and exactly-once sessions hold.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use kv_raft::{Group, NodeId, RaftHost, RaftTuning};
use kv_storage::{Command, Condition, GroupId, Outcome, Store};
use openraft::{BasicNode, ServerState};

async fn single_node_group(dir: &std::path::Path) -> (RaftHost, Group) {
    let store = Store::redb(&dir.join("node.redb")).unwrap();
    let host = RaftHost::new(
        NodeId(1),
        store,
        reqwest::Client::new(),
        kv_raft::Scheme::Http,
        &RaftTuning::default(),
        dir.join("snapshots"),
    )
    .unwrap();
    let id = GroupId(1);
    let group = host.open_group(id).await.unwrap();
    host.initialize(
        id,
        BTreeMap::from([(NodeId(1), BasicNode::new("127.0.0.1:1"))]),
    )
    .await
    .unwrap();
    group
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .state(ServerState::Leader, "single member leads")
        .await
        .unwrap();
    (host, group)
}

fn put(key: &str, value: &str, cond: Condition) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond,
    }
}

fn once(client: u64, seq: u64, cmd: Command) -> Command {
    Command::Once {
        client,
        seq,
        ack_below: 0,
        command: Box::new(cmd),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_share_entries_and_each_gets_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (host, group) = single_node_group(dir.path()).await;
    let before = group.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let writes: Vec<_> = (0..200)
        .map(|i| group.write(put(&format!("k{i}"), &format!("v{i}"), Condition::Always)))
        .collect();
    let outcomes = futures::future::join_all(writes).await;
    let after = group.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let mut versions = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let (outcome, index) = outcome.unwrap();
        assert_eq!(outcome, Outcome::Written { version: index }, "write {i}");
        versions.push(index);
    }
    assert!(
        after - before < 200,
        "200 writes took {} entries: they were not batched",
        after - before
    );
    // In arrival order: indexes never go down.
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    for i in [0, 99, 199] {
        let record = group
            .get(format!("k{i}").into_bytes(), false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.value, format!("v{i}").into_bytes());
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_of_one_key_never_share_an_entry_and_apply_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let (host, group) = single_node_group(dir.path()).await;
    // Created first, then three rewrites and a create-only that must fail: all at once.
    let writes = vec![
        group.write(put("k", "0", Condition::Absent)),
        group.write(put("k", "1", Condition::Always)),
        group.write(put("other", "x", Condition::Always)),
        group.write(put("k", "2", Condition::Always)),
        group.write(put("k", "late", Condition::Absent)),
    ];
    let outcomes: Vec<(Outcome, u64)> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let version = |i: usize| match outcomes[i].0 {
        Outcome::Written { version } => version,
        ref other => panic!("write {i}: {other:?}"),
    };
    assert!(
        version(0) < version(1) && version(1) < version(3),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[4].0,
        Outcome::PreconditionFailed {
            current: Some(version(3))
        },
        "a later create-only sees the writes before it"
    );
    let record = group.get(b"k".to_vec(), false).await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (b"2".to_vec(), version(3)));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_sessions_hold_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (host, group) = single_node_group(dir.path()).await;
    // The same client write sent twice at once (a retry racing its original), among others.
    let writes = vec![
        group.write(once(7, 1, put("a", "first", Condition::Always))),
        group.write(once(7, 2, put("b", "x", Condition::Always))),
        group.write(once(7, 1, put("a", "first", Condition::Always))),
        group.write(once(8, 1, put("c", "y", Condition::Always))),
    ];
    let outcomes: Vec<(Outcome, u64)> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes[0].0, outcomes[2].0,
        "the retry gets the first outcome"
    );
    let record = group.get(b"a".to_vec(), false).await.unwrap().unwrap();
    assert_eq!(
        Outcome::Written {
            version: record.version
        },
        outcomes[0].0,
        "applied once"
    );
    host.shutdown().await;
}
