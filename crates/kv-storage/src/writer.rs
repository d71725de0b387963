//! Group commit: one writer thread per store commits every queued batch, from any group, in
//! one transaction, then acknowledges each. Many concurrent Raft appends share one fsync.

use std::path::Path;
use std::sync::{mpsc, Arc};

use crate::engine::{Engine, WriteBatch};
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
        match engine.write(&batches) {
            Ok(outcomes) => {
                for (done, outcome) in dones.into_iter().zip(outcomes) {
                    done(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = batches.len(), "group commit failed");
                for done in dones {
                    done(Err(e.clone()));
                }
            }
        }
    }
}
