//! Groups sharing one store share its writer: concurrent appends from two groups on the same
//! redb store must each be acknowledged (openraft's `LogFlushed`) and land in their own log.
//!
//! `LogFlushed` can only be constructed inside openraft, so the appends come from two real
//! single-member Raft groups: a write commits only once its leader's append was acknowledged.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use kv_raft::{NodeId, RaftHost, RaftTuning};
use kv_storage::{Command, Condition, GroupId, Store};
use openraft::{BasicNode, ServerState};

const NODE: NodeId = NodeId(1);
const WRITES_PER_GROUP: u64 = 50;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_of_two_groups_on_one_redb_store_are_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::redb(&dir.path().join("node.redb")).unwrap();
    // Never used: single-member groups send no RPCs.
    let transport = reqwest::Client::builder().build().unwrap();
    let tuning = RaftTuning {
        request_timeout: Duration::from_secs(30),
        ..RaftTuning::default()
    };
    let host = RaftHost::new(
        NODE,
        store.clone(),
        transport,
        kv_raft::Scheme::Http,
        &tuning,
        dir.path().join("snapshots"),
    )
    .unwrap();
    let ids = [GroupId(1), GroupId(2)];
    let mut groups = Vec::new();
    for id in ids {
        let group = host.open_group(id).await.unwrap();
        let members = BTreeMap::from([(NODE, BasicNode::new("127.0.0.1:1"))]);
        host.initialize(id, members).await.unwrap();
        group
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "single member leads")
            .await
            .unwrap();
        groups.push(group);
    }

    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES_PER_GROUP {
        for group in &groups {
            let group = group.clone();
            writes.spawn(async move {
                let cmd = Command::Put {
                    key: format!("k{i}").into_bytes(),
                    value: format!("{}-{i}", group.id()).into_bytes(),
                    cond: Condition::Always,
                };
                (group.id(), group.write(cmd).await)
            });
        }
    }
    let mut written: BTreeMap<GroupId, u64> = BTreeMap::new();
    while let Some(joined) = writes.join_next().await {
        let (id, result) = joined.unwrap();
        result.unwrap_or_else(|e| panic!("write to {id} failed: {e}"));
        *written.entry(id).or_default() += 1;
    }
    assert_eq!(
        written,
        BTreeMap::from(ids.map(|id| (id, WRITES_PER_GROUP)))
    );

    // Each group's writes are in its own data and log: none went to the other group.
    for id in ids {
        for i in 0..WRITES_PER_GROUP {
            let key = format!("k{i}").into_bytes();
            let record = store.read(move |e| e.get(id, &key)).await.unwrap().unwrap();
            assert_eq!(record.value, format!("{id}-{i}").into_bytes());
        }
        let bounds = store.read(move |e| e.log_bounds(id)).await.unwrap();
        // Index 0 holds the initial membership, 1 the leader's blank entry; the writes come
        // after, batched into fewer entries than writes.
        let (_, last) = bounds.unwrap();
        assert!(
            (2..=WRITES_PER_GROUP + 1).contains(&last),
            "{id}: last log index {last}"
        );
    }
    host.shutdown().await;
}
