//! Point reads on their own threads: [`crate::Store::get`] queues the key for a few reader
//! threads, each of which answers whatever is queued before it sleeps again. Under load a
//! reader finds the next request already waiting, so a read costs no thread wake-up of its
//! own; tokio's blocking pool (which [`crate::Store::read`] uses for everything else) wakes a
//! thread for every call, and under 64 concurrent readers those switches were a quarter of a
//! node's CPU.

use std::sync::Arc;

use crate::engine::{Engine, GroupId};
use crate::{Record, Result};

/// How many threads serve point reads. Two: one read that misses the page cache and waits on
/// the disk does not hold up the others.
const READERS: usize = 2;

/// One queued point read.
pub(crate) struct GetJob {
    pub(crate) group: GroupId,
    pub(crate) key: Vec<u8>,
    pub(crate) done: tokio::sync::oneshot::Sender<Result<Option<Record>>>,
}

/// Start the reader threads over `engine`; they end once every sender of the returned queue
/// is dropped.
pub(crate) fn start(
    engine: &Arc<dyn Engine>,
) -> std::io::Result<(
    crossbeam_channel::Sender<GetJob>,
    Vec<std::thread::JoinHandle<()>>,
)> {
    let (jobs, queue) = crossbeam_channel::unbounded::<GetJob>();
    let mut threads = Vec::with_capacity(READERS);
    for n in 0..READERS {
        let engine = engine.clone();
        let queue = queue.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("kv-storage-reader-{n}"))
                .spawn(move || {
                    for job in queue {
                        // The caller may have given up (a timed-out request): nothing to tell.
                        let _ = job.done.send(engine.get(job.group, &job.key));
                    }
                })?,
        );
    }
    Ok((jobs, threads))
}
