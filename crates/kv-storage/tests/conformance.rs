//! The `kv_storage::testing` suite against both engines, plus what only the redb engine can
//! show: data on disk across reopen, and group commit through `Store`.

// Helpers here are test code too (clippy only exempts `#[test]` fns themselves).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kv_storage::testing::Case;
use kv_storage::{
    Command, Condition, Engine, GroupId, MemoryEngine, MetaKey, Op, Outcome, Record, RedbEngine,
    Store, WriteBatch,
};

fn memory(case: Case) {
    case(&|| Arc::new(MemoryEngine::new()) as Arc<dyn Engine>);
}

/// Each engine the case asks for is a fresh file in one temporary directory, removed after.
fn redb(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let opened = AtomicUsize::new(0);
    case(&|| {
        let n = opened.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("node-{n}.redb"));
        Arc::new(RedbEngine::open(&path).unwrap()) as Arc<dyn Engine>
    });
}

mod memory_engine {
    kv_storage::conformance_tests!(super::memory);
}

mod redb_engine {
    kv_storage::conformance_tests!(super::redb);
}

#[test]
fn run_all_passes_on_memory_engine() {
    kv_storage::testing::run_all(&|| Arc::new(MemoryEngine::new()) as Arc<dyn Engine>);
}

const G: GroupId = GroupId(1);

fn put(index: u64, key: &str, value: &str) -> (u64, Command) {
    (
        index,
        Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            cond: Condition::Always,
        },
    )
}

fn durable_batch() -> WriteBatch {
    WriteBatch::new(G, true)
        .op(Op::AppendLog {
            entries: vec![(1, b"e1".to_vec()), (2, b"e2".to_vec())],
        })
        .op(Op::SetMeta {
            key: MetaKey::Vote,
            value: b"vote".to_vec(),
        })
        .op(Op::Apply {
            commands: vec![put(1, "k", "v")],
            applied: b"applied-1".to_vec(),
        })
}

fn assert_durable_batch_is_there(engine: &dyn Engine) {
    assert_eq!(engine.log_bounds(G).unwrap(), Some((1, 2)));
    assert_eq!(engine.read_log(G, 1, 3).unwrap()[1], (2, b"e2".to_vec()));
    assert_eq!(
        engine.read_meta(G, MetaKey::Vote).unwrap(),
        Some(b"vote".to_vec())
    );
    assert_eq!(
        engine.read_meta(G, MetaKey::Applied).unwrap(),
        Some(b"applied-1".to_vec())
    );
    assert_eq!(engine.get(G, b"k").unwrap(), Some(Record::new(1, "v")));
    assert_eq!(engine.groups().unwrap(), vec![G]);
}

#[test]
fn redb_durable_batch_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let engine = RedbEngine::open(&path).unwrap();
        engine.write(&[durable_batch()]).unwrap();
    }
    let engine = RedbEngine::open(&path).unwrap();
    assert_durable_batch_is_there(&engine);
}

#[test]
fn redb_open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/node.redb");
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(engine.groups().unwrap(), vec![]);
    assert!(path.is_file());
}

#[test]
fn redb_open_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(RedbEngine::open(&path).is_err());
}

#[test]
fn redb_second_open_of_an_open_file_fails_instead_of_sharing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let _first = RedbEngine::open(&path).unwrap();
    assert!(RedbEngine::open(&path).is_err());
}

fn write_many_concurrently(store: &Store, writers: u64) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Spread over groups; half the batches durable, as log appends and applies mix.
                let group = GroupId(i % 7);
                let index = i + 1;
                let batch = WriteBatch::new(group, i % 2 == 0)
                    .op(Op::AppendLog {
                        entries: vec![(index, index.to_le_bytes().to_vec())],
                    })
                    .op(Op::Apply {
                        commands: vec![put(index, &format!("key-{i}"), &format!("value-{i}"))],
                        applied: index.to_le_bytes().to_vec(),
                    });
                let outcomes = store.write(batch).await.unwrap();
                assert_eq!(outcomes, vec![Outcome::Written { version: index }]);
            })
        })
        .collect()
}

async fn assert_all_readable(store: &Store, writers: u64) {
    let missing = store
        .read(move |engine| {
            let mut missing = Vec::new();
            for i in 0..writers {
                let group = GroupId(i % 7);
                let index = i + 1;
                let record = engine.get(group, format!("key-{i}").as_bytes())?;
                let logged = engine.read_log(group, index, index + 1)?;
                if record.map(|r| (r.version, r.value))
                    != Some((index, format!("value-{i}").into_bytes()))
                    || logged != vec![(index, index.to_le_bytes().to_vec())]
                {
                    missing.push(i);
                }
            }
            Ok(missing)
        })
        .await
        .unwrap();
    assert_eq!(missing, Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_store_commits_many_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::redb(&dir.path().join("node.redb")).unwrap();
    const WRITERS: u64 = 500;
    for task in write_many_concurrently(&store, WRITERS) {
        task.await.unwrap();
    }
    assert_all_readable(&store, WRITERS).await;
    let groups = store.read(|engine| engine.groups()).await.unwrap();
    assert_eq!(groups, (0..7).map(GroupId).collect::<Vec<_>>());
}

/// The file stays locked while any engine handle is alive, so this only passes if dropping the
/// last `Store` clone also ends the writer thread's hold on the engine before returning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_store_releases_the_file_when_the_last_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    const WRITERS: u64 = 50;
    for round in 0..5 {
        let store = Store::redb(&path).unwrap();
        let clone = store.clone();
        if round == 0 {
            for task in write_many_concurrently(&clone, WRITERS) {
                task.await.unwrap();
            }
        }
        assert_all_readable(&clone, WRITERS).await;
        drop(store);
        drop(clone);
    }
    assert_reopens(&path);
}

fn assert_reopens(path: &Path) {
    let engine = RedbEngine::open(path).unwrap();
    assert_eq!(
        engine.groups().unwrap(),
        (0..7).map(GroupId).collect::<Vec<_>>()
    );
}

#[test]
fn redb_store_dropped_outside_a_runtime_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    for _ in 0..20 {
        let store = Store::redb(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        store.submit(
            durable_batch(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap().unwrap();
        drop(store);
    }
    assert_durable_batch_is_there(&RedbEngine::open(&path).unwrap());
}

#[test]
fn redb_deadlines_and_their_index_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let ttl_put = |key: &str, expires_at| Command::TimedPut {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        expires_at: Some(expires_at),
        cond: Condition::Always,
        now: 0,
    };
    {
        let engine = RedbEngine::open(&path).unwrap();
        let batch = WriteBatch::new(G, true).op(Op::Apply {
            commands: vec![(1, ttl_put("late", 200)), (2, ttl_put("early", 100))],
            applied: b"2".to_vec(),
        });
        engine.write(&[batch]).unwrap();
    }
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(
        engine.get(G, b"early").unwrap(),
        Some(Record {
            expires_at: Some(100),
            ..Record::new(2, "v")
        })
    );
    assert_eq!(engine.next_deadline(G).unwrap(), Some(100));
    assert_eq!(
        engine.expired(G, 150, 10).unwrap(),
        vec![(b"early".to_vec(), 2)]
    );
    kv_storage::testing::assert_expiry_index_exact(&engine, G);
    // An expired key stays expired after the restart: reads with the clock skip it.
    assert_eq!(
        engine
            .scan(G, b"", None, 10, usize::MAX, Some(150))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn redb_change_history_and_its_start_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let from_start = kv_storage::ChangePos::end_of(0);
    let before = {
        let engine = RedbEngine::open(&path).unwrap();
        engine.write(&[durable_batch()]).unwrap();
        let batch = WriteBatch::new(G, true)
            .op(Op::Apply {
                commands: vec![put(3, "a", "x"), put(3, "b", "y"), put(4, "k", "w")],
                applied: b"applied-4".to_vec(),
            })
            .op(Op::PurgeLog { through: 1 })
            .op(Op::HistoryStart { index: 2 });
        engine.write(&[batch]).unwrap();
        engine
            .changes(G, from_start, usize::MAX, usize::MAX)
            .unwrap()
    };
    assert_eq!(before.start, 2);
    assert_eq!(before.rows.len(), 3);
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(
        engine
            .changes(G, from_start, usize::MAX, usize::MAX)
            .unwrap(),
        before
    );
    assert_eq!(engine.history_start(G).unwrap(), Some(2));
}
