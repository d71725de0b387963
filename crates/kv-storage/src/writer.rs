//! Group commit: one writer thread per store commits every queued batch, from any group, in
//! one transaction, then acknowledges each. Many concurrent Raft appends share one fsync.

use std::path::Path;
use std::sync::{mpsc, Arc};

use crate::engine::{Engine, GroupId, WriteBatch};
use crate::{MemoryEngine, Outcome, RedbEngine, Result, StorageError};

/// Called once with the outcome of a submitted batch, on the writer thread: keep it short.
pub type WriteCallback = Box<dyn FnOnce(Result<Vec<Outcome>>) + Send + 'static>;

/// How many queued batches the writer folds into one transaction at most.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

struct Job {
    batch: WriteBatch,
    done: WriteCallback,
}

/// A node's storage: the engine plus its writer thread. Cheap to clone.
///
/// Dropping the last clone waits for the writer thread to finish the queued work and exit, so
/// the engine (and the redb file lock) is released on return, unless reads in flight or callers
/// of [`Store::engine`] still hold it.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    // Field order matters: every clone's sender is dropped before its `_writer` reference, so
    // when the last `_writer` reference goes, the queue is closed and the thread can be joined.
    jobs: mpsc::Sender<Job>,
    _writer: Arc<WriterThread>,
}

/// Joins the writer thread when the last [`Store`] clone is dropped.
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        let Some(thread) = self.0.take() else { return };
        // A write callback that owned the last clone drops it on the writer thread itself,
        // which then exits by itself once the queue is drained.
        if thread.thread().id() == std::thread::current().id() {
            return;
        }
        if thread.join().is_err() {
            tracing::error!("storage writer thread panicked");
        }
    }
}

impl Store {
    /// A store over `engine`, starting its writer thread. The thread ends when the last clone
    /// of the store is dropped, after finishing queued work; that drop waits for it.
    pub fn new(engine: Arc<dyn Engine>) -> Result<Store> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let writer_engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("kv-storage-writer".into())
            .spawn(move || run_writer(writer_engine, queue))?;
        Ok(Store {
            engine,
            jobs,
            _writer: Arc::new(WriterThread(Some(thread))),
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
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job { batch, done }) {
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
/// Invariant: a failed [`Engine::write`] wrote nothing (both engines are all-or-nothing), so
/// the batches can be committed again one by one. Once a batch of a group fails, the group's
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
}
