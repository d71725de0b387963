//! Group commit: one writer thread per store commits every queued batch, from any group, in
//! one transaction, then acknowledges each. Many concurrent Raft appends share one fsync.

use std::path::Path;
use std::sync::{mpsc, Arc};

use crate::engine::{Engine, GroupId, WriteBatch};
use crate::reader::{self, GetJob};
use crate::{MemoryEngine, Outcome, Record, RedbEngine, Result, StorageError};

/// Called once with the outcome of a submitted batch, on the writer thread: keep it short.
pub type WriteCallback = Box<dyn FnOnce(Result<Vec<Outcome>>) + Send + 'static>;

/// How many queued batches the writer folds into one transaction at most.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

struct Job {
    batch: WriteBatch,
    done: WriteCallback,
}

/// A node's storage: the engine plus its writer thread and reader threads. Cheap to clone.
///
/// Dropping the last clone waits for the writer thread to finish the queued work and for every
/// thread to exit, so the engine (and the redb file lock) is released on return, unless reads in
/// flight or callers of [`Store::engine`] still hold it.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    queues: Arc<Queues>,
}

/// The queues to the store's threads, and the threads.
struct Queues {
    // Field order matters: the senders are dropped before `_threads`, so the queues are
    // closed when the threads are joined.
    jobs: mpsc::Sender<Job>,
    gets: crossbeam_channel::Sender<GetJob>,
    _threads: StoreThreads,
}

/// Joins the writer and reader threads when the last [`Store`] clone is dropped.
struct StoreThreads(Vec<std::thread::JoinHandle<()>>);

impl Drop for StoreThreads {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            // A write callback that owned the last clone drops it on the writer thread itself,
            // which then exits by itself once the queue is drained.
            if thread.thread().id() == std::thread::current().id() {
                continue;
            }
            if thread.join().is_err() {
                tracing::error!("storage thread panicked");
            }
        }
    }
}

impl Store {
    /// A store over `engine`, starting its writer thread. The thread ends when the last clone
    /// of the store is dropped, after finishing queued work; that drop waits for it.
    pub fn new(engine: Arc<dyn Engine>) -> Result<Store> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let writer_engine = engine.clone();
        let writer = std::thread::Builder::new()
            .name("kv-storage-writer".into())
            .spawn(move || run_writer(writer_engine, queue))?;
        let (gets, mut threads) = reader::start(&engine)?;
        threads.push(writer);
        Ok(Store {
            engine,
            queues: Arc::new(Queues {
                jobs,
                gets,
                _threads: StoreThreads(threads),
            }),
        })
    }

    /// A store that keeps everything in memory.
    pub fn memory() -> Result<Store> {
        Store::new(Arc::new(MemoryEngine::new()))
    }

    /// A store in the redb file at `path`, created if missing.
    pub fn redb(path: &Path) -> Result<Store> {
        Store::new(Arc::new(RedbEngine::open(path)?))
    }

    /// A store in the redb file at `path` with a page cache of `cache_bytes`.
    pub fn redb_with_cache(path: &Path, cache_bytes: usize) -> Result<Store> {
        Store::new(Arc::new(RedbEngine::open_with_cache(path, cache_bytes)?))
    }

    /// The engine, for code already on a blocking thread.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Queue `batch`; `done` is called once it is committed (and fsynced if durable) or failed.
    pub fn submit(&self, batch: WriteBatch, done: WriteCallback) {
        if let Err(mpsc::SendError(job)) = self.queues.jobs.send(Job { batch, done }) {
            (job.done)(Err(StorageError::Closed));
        }
    }

    /// Queue `batch` and wait for its commit.
    pub async fn write(&self, batch: WriteBatch) -> Result<Vec<Outcome>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Remove everything stored for `group`, after every write queued before this call.
    pub async fn drop_group(&self, group: GroupId) -> Result<()> {
        self.write(WriteBatch::new(group, true).op(crate::Op::DropGroup))
            .await
            .map(|_| ())
    }

    /// Read one key of `group`, on the store's reader threads (see `reader`): the hot read
    /// path, without a thread wake-up per call under load.
    pub async fn get(&self, group: GroupId, key: Vec<u8>) -> Result<Option<Record>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.queues
            .gets
            .send(GetJob { group, key, done })
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Run a blocking read against the engine on tokio's blocking pool.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Engine) -> Result<R> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(engine.as_ref()))
            .await
            .map_err(|e| StorageError::Backend(format!("read task failed: {e}")))?
    }
}

fn run_writer(engine: Arc<dyn Engine>, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCHES_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (batches, dones): (Vec<WriteBatch>, Vec<WriteCallback>) =
            jobs.into_iter().map(|j| (j.batch, j.done)).unzip();
        for (done, result) in dones.into_iter().zip(commit(engine.as_ref(), &batches)) {
            done(result);
        }
    }
}

/// Commit one round of queued batches: all in one transaction when that succeeds (the common
/// case, one fsync for all), and otherwise each on its own, so that a batch that fails fails
/// only its own group. Returns one result per batch, in order.
///
/// Invariant: a failed [`Engine::write`] wrote none of its state machine part, and its log
/// part is idempotent (see [`Engine::write`]), so the batches can be committed again one by
/// one. Once a batch of a group fails, the group's
/// later batches of the round fail too without being tried: committing them would put a
/// group's later log entries or state on disk without the earlier ones.
pub(crate) fn commit(engine: &dyn Engine, batches: &[WriteBatch]) -> Vec<Result<Vec<Outcome>>> {
    let error = match engine.write(batches) {
        Ok(outcomes) if outcomes.len() == batches.len() => {
            return outcomes.into_iter().map(Ok).collect()
        }
        Ok(outcomes) => StorageError::Backend(format!(
            "the engine answered {} outcomes for {} batches",
            outcomes.len(),
            batches.len()
        )),
        Err(e) => e,
    };
    if batches.len() == 1 {
        tracing::error!(error = %error, group = %batches[0].group, "write failed");
        return vec![Err(error)];
    }
    tracing::warn!(error = %error, batches = batches.len(), "group commit failed; committing its batches one by one");
    let mut failed: Vec<GroupId> = Vec::new();
    batches
        .iter()
        .map(|batch| {
            if failed.contains(&batch.group) {
                return Err(StorageError::Backend(format!(
                    "an earlier write of {} in the same commit failed",
                    batch.group
                )));
            }
            match engine.write(std::slice::from_ref(batch)) {
                Ok(mut outcomes) => Ok(outcomes.pop().unwrap_or_default()),
                Err(e) => {
                    tracing::error!(error = %e, group = %batch.group, "write failed");
                    failed.push(batch.group);
                    Err(e)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{MetaKey, Op};

    #[tokio::test]
    async fn a_drop_is_ordered_after_the_writes_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            Store::memory().unwrap(),
            Store::redb(&dir.path().join("kv.redb")).unwrap(),
        ] {
            let g = GroupId(7);
            store
                .write(WriteBatch::new(g, true).op(Op::SetMeta {
                    key: MetaKey::Vote,
                    value: b"v".to_vec(),
                }))
                .await
                .unwrap();
            // A late, unawaited write of the closing group (openraft's `save_committed`) ...
            for i in 0..100u8 {
                store.submit(
                    WriteBatch::new(g, false).op(Op::SetMeta {
                        key: MetaKey::Committed,
                        value: vec![i],
                    }),
                    Box::new(|r| assert!(r.is_ok())),
                );
            }
            // ... is committed before the drop, so it cannot bring the group back.
            store.drop_group(g).await.unwrap();
            let engine = store.engine().clone();
            let groups = tokio::task::spawn_blocking(move || engine.groups())
                .await
                .unwrap()
                .unwrap();
            assert!(!groups.contains(&g), "{groups:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_point_reads_each_get_their_own_key_and_a_closed_store_releases_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let g = GroupId(3);
        let store = Store::redb(&path).unwrap();
        let commands = (0..200u64)
            .map(|i| {
                let put = crate::Command::Put {
                    key: format!("k{i}").into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    cond: crate::Condition::Always,
                };
                (i + 1, put)
            })
            .collect();
        store
            .write(WriteBatch::new(g, true).op(Op::Apply {
                commands,
                applied: b"200".to_vec(),
            }))
            .await
            .unwrap();
        let reads = (0..400u64).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { (i, store.get(g, format!("k{i}").into_bytes()).await) })
        });
        for read in join_in_order(reads).await {
            let (i, got) = read.unwrap();
            let got = got.unwrap().map(|r| r.value);
            let expected = (i < 200).then(|| format!("v{i}").into_bytes());
            assert_eq!(got, expected, "k{i}");
        }
        // Every thread (writer and readers) is joined on the last drop: the file opens again.
        drop(store);
        let again = Store::redb(&path).unwrap();
        assert!(again.get(g, b"k1".to_vec()).await.unwrap().is_some());
    }

    /// Await every handle, in order.
    async fn join_in_order<T>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut out = Vec::new();
        for h in handles.collect::<Vec<_>>() {
            out.push(h.await);
        }
        out
    }
}
