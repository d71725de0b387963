//! openraft's own storage conformance suite (`openraft::testing::Suite`) against the kv-raft
//! adapters, over both kv-storage engines, plus what the suite lets pass unseen.
//!
//! The suite builds a fresh log store and state machine for every case and drives each case on
//! its own tokio runtime, so the suite tests here are plain `#[test]`s.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

use kv_raft::{LogStore, NodeId, Request, StateMachine, TypeConfig};
use kv_storage::{Command, Condition, GroupId, Store};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageError, StorageIOError,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Any group id works: every built store is fresh. Not 0, so a bug that mixes groups up with
/// the default id has a chance to show.
const GROUP: GroupId = GroupId(7);

/// Which engine the built stores use.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Memory,
    Redb,
}

const ENGINES: [Engine; 2] = [Engine::Memory, Engine::Redb];

/// A fresh store and the group's adapters over it. The directory holds the snapshot files
/// and, for redb, the database file; keep it until the store is dropped.
async fn fresh(engine: Engine) -> Result<(TempDir, Store, LogStore, StateMachine), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = match engine {
        Engine::Memory => Store::memory(),
        Engine::Redb => Store::redb(&dir.path().join("node.redb")),
    }
    .map_err(|e| e.to_string())?;
    let sm = StateMachine::open(GROUP, store.clone(), &dir.path().join("snapshots"))
        .await
        .map_err(|e| e.to_string())?;
    let log = LogStore::new(GROUP, store.clone());
    Ok((dir, store, log, sm))
}

/// Builds a fresh store per suite case; the guard is its directory.
struct Builder(Engine);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let (dir, _, log, sm) = fresh(self.0).await.map_err(|e| {
            let io = std::io::Error::other(e);
            StorageIOError::new(
                ErrorSubject::Store,
                ErrorVerb::Write,
                openraft::AnyError::new(&io),
            )
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn memory_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder(Engine::Memory)).unwrap();
}

#[test]
fn redb_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder(Engine::Redb)).unwrap();
}

/// The suite's `get_initial_state_re_apply_committed` silently skips itself when
/// `read_committed` right after `save_committed` returns `None`; this makes sure it runs.
#[tokio::test(flavor = "multi_thread")]
async fn read_committed_returns_the_value_just_saved() {
    for engine in ENGINES {
        let (_dir, _store, mut log, _sm) = fresh(engine).await.unwrap();
        for i in 0..20 {
            let committed = Some(log_id(1, NodeId(0), i));
            log.save_committed(committed).await.unwrap();
            assert_eq!(log.read_committed().await.unwrap(), committed, "{engine:?}");
        }
    }
}

fn put(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, NodeId(0), index),
        payload: EntryPayload::Normal(Request::Kv(Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            cond: Condition::Always,
        })),
    }
}

async fn read_all(mut file: tokio::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// A follower serves the snapshot it installed byte for byte, whether the stream arrived in
/// the file `begin_receiving_snapshot` handed out (openraft's chunked transfer) or in another
/// file (the suite's `transfer_snapshot` swaps the file in the box).
#[tokio::test(flavor = "multi_thread")]
async fn installed_snapshot_is_served_as_received() {
    for engine in ENGINES {
        for swap_file in [false, true] {
            let case = format!("{engine:?}, swap_file: {swap_file}");
            let (_dl, _sl, _ll, mut leader) = fresh(engine).await.unwrap();
            let (_df, follower_store, _lf, mut follower) = fresh(engine).await.unwrap();
            leader.apply([put(1, "k", "v")]).await.unwrap();
            let built = leader
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let sent = read_all(*built.snapshot).await;

            let mut received = follower.begin_receiving_snapshot().await.unwrap();
            if swap_file {
                let current = leader.get_current_snapshot().await.unwrap().unwrap();
                *received = *current.snapshot;
            } else {
                received.write_all(&sent).await.unwrap();
                received.flush().await.unwrap();
            }
            follower
                .install_snapshot(&built.meta, received)
                .await
                .unwrap();

            let current = follower.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, built.meta, "{case}");
            assert_eq!(read_all(*current.snapshot).await, sent, "{case}");
            let record = follower_store
                .read(|e| e.get(GROUP, b"k"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(record.value, b"v", "{case}");
        }
    }
}
