//! A group whose Raft core stops by itself (here: the store fails a write, which openraft treats
//! as fatal) is reported and started again from what the store holds, instead of answering 503
//! until the process restarts. Other groups of the node are not touched.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_raft::{Group, NodeId, RaftHost, RaftTuning};
use kv_storage::{
    ChangePage, ChangePos, Command, Condition, Engine, ExportSummary, GroupId, MemoryEngine,
    MetaKey, Outcome, Record, StorageError, Store, WriteBatch,
};
use openraft::{BasicNode, ServerState};

/// The memory engine, with writes of one group failing while `fail` is set.
struct FlakyEngine {
    inner: MemoryEngine,
    fail: AtomicBool,
    victim: GroupId,
}

impl Engine for FlakyEngine {
    fn write(&self, batches: &[WriteBatch]) -> kv_storage::Result<Vec<Vec<Outcome>>> {
        if self.fail.load(Ordering::SeqCst) && batches.iter().any(|b| b.group == self.victim) {
            return Err(StorageError::Backend("injected failure".into()));
        }
        self.inner.write(batches)
    }
    fn read_meta(&self, group: GroupId, key: MetaKey) -> kv_storage::Result<Option<Vec<u8>>> {
        self.inner.read_meta(group, key)
    }
    fn log_bounds(&self, group: GroupId) -> kv_storage::Result<Option<(u64, u64)>> {
        self.inner.log_bounds(group)
    }
    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
    ) -> kv_storage::Result<Vec<(u64, Vec<u8>)>> {
        self.inner.read_log(group, from, to)
    }
    fn get(&self, group: GroupId, key: &[u8]) -> kv_storage::Result<Option<Record>> {
        self.inner.get(group, key)
    }
    fn scan(
        &self,
        group: GroupId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
        live_at: Option<u64>,
    ) -> kv_storage::Result<Vec<(Vec<u8>, Record)>> {
        self.inner
            .scan(group, prefix, after, limit, max_bytes, live_at)
    }
    fn next_deadline(&self, group: GroupId) -> kv_storage::Result<Option<u64>> {
        self.inner.next_deadline(group)
    }
    fn expired(
        &self,
        group: GroupId,
        now_ms: u64,
        limit: usize,
    ) -> kv_storage::Result<Vec<(Vec<u8>, u64)>> {
        self.inner.expired(group, now_ms, limit)
    }
    fn export_group(
        &self,
        group: GroupId,
        out: &mut dyn Write,
        history_from: u64,
    ) -> kv_storage::Result<ExportSummary> {
        self.inner.export_group(group, out, history_from)
    }
    fn import_group(
        &self,
        group: GroupId,
        input: &mut dyn Read,
        applied: &[u8],
        history_start: u64,
    ) -> kv_storage::Result<u64> {
        self.inner
            .import_group(group, input, applied, history_start)
    }
    fn changes(
        &self,
        group: GroupId,
        after: ChangePos,
        limit: usize,
        max_bytes: usize,
    ) -> kv_storage::Result<ChangePage> {
        self.inner.changes(group, after, limit, max_bytes)
    }
    fn history_start(&self, group: GroupId) -> kv_storage::Result<Option<u64>> {
        self.inner.history_start(group)
    }
    fn groups(&self) -> kv_storage::Result<Vec<GroupId>> {
        self.inner.groups()
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cond: Condition::Always,
    }
}

async fn lead(host: &RaftHost, id: GroupId) -> Group {
    let group = host.open_group(id).await.unwrap();
    let members = BTreeMap::from([(NodeId(1), BasicNode::new("127.0.0.1:1"))]);
    host.initialize(id, members).await.unwrap();
    group
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .state(ServerState::Leader, "single member leads")
        .await
        .unwrap();
    group
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_whose_raft_core_fails_is_reported_and_restarted_with_its_data() {
    let victim = GroupId(1);
    let engine = Arc::new(FlakyEngine {
        inner: MemoryEngine::new(),
        fail: AtomicBool::new(false),
        victim,
    });
    let store = Store::new(engine.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = RaftHost::new(
        NodeId(1),
        store,
        reqwest::Client::new(),
        kv_raft::Scheme::Http,
        &RaftTuning::default(),
        dir.path().join("snapshots"),
    )
    .unwrap();
    let group = lead(&host, victim).await;
    let bystander = lead(&host, GroupId(2)).await;
    group.write(put("k", "before")).await.unwrap();

    engine.fail.store(true, Ordering::SeqCst);
    assert!(group.write(put("k", "lost")).await.is_err());
    wait_until("the failure is reported", || {
        host.failures().iter().any(|f| f.group == victim && f.down)
    })
    .await;
    // The other group of the node keeps serving.
    bystander.write(put("b", "1")).await.unwrap();

    engine.fail.store(false, Ordering::SeqCst);
    wait_until("the group runs again", || {
        host.failures().iter().all(|f| !f.down) && host.group(victim).is_some_and(|g| g.is_leader())
    })
    .await;
    let restarted = host.group(victim).unwrap();
    let record = restarted.get(b"k".to_vec(), false).await.unwrap();
    assert_eq!(record.map(|r| r.value), Some(b"before".to_vec()));
    restarted.write(put("k", "after")).await.unwrap();
    let failure = &host.failures()[0];
    assert_eq!((failure.group, failure.failures), (victim, 1));
    assert!(failure.error.contains("injected"), "{}", failure.error);
    host.shutdown().await;
}
