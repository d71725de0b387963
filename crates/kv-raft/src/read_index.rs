//! Read-index requests of one group share leadership confirmations: while one confirmation (a
//! heartbeat round to a quorum, then waiting for the apply) is in flight, arriving reads queue
//! for the next one, and one round serves every read queued before it started. A burst of
//! reads then costs a group a round or two of heartbeats, not one round per read, and the Raft
//! core keeps time for its own heartbeats and votes.
//!
//! A follower batches its follower reads the same way, in a queue of their own: one round asks
//! the leader for one read index and waits until this replica has applied up to it.
//!
//! Invariant: a read is answered only by a round that started after the read arrived, so the
//! read index it waited for is at least the commit index at its arrival (what linearizability
//! needs). Rounds of one queue never overlap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::{Group, GroupError};

type Waiter = oneshot::Sender<Result<(), GroupError>>;

/// What a queue's rounds do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rounds {
    /// On the leader: confirm leadership (`Group::confirm_leadership`).
    Leader,
    /// On a follower: get a read index from the leader and apply up to it
    /// (`Group::follower_round`).
    Follower,
}

/// The queue of one group's reads waiting for a confirmation round.
pub(crate) struct ReadBatcher {
    kind: Rounds,
    queue: Mutex<Queue>,
    /// Rounds run so far.
    pub(crate) rounds: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// A round is running (it takes the queue when it ends).
    running: bool,
    waiting: Vec<Waiter>,
}

impl ReadBatcher {
    pub(crate) fn new(kind: Rounds) -> Self {
        ReadBatcher {
            kind,
            queue: Mutex::default(),
            rounds: AtomicU64::new(0),
        }
    }

    /// Wait for a confirmation round that starts after this call.
    pub(crate) async fn confirm(&self, group: &Group) -> Result<(), GroupError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // Rounds run in their own task, so a reader that gives up does not stop the
            // rounds the others wait for.
            let group = group.clone();
            let kind = self.kind;
            tokio::spawn(async move { run_rounds(group, kind).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(GroupError::Stopped("read confirmation abandoned".into())))
    }
}

/// Run rounds of `kind` until no read is waiting.
async fn run_rounds(group: Group, kind: Rounds) {
    let batcher = match kind {
        Rounds::Leader => group.reads.clone(),
        Rounds::Follower => group.follower_reads.clone(),
    };
    loop {
        let batch = {
            let mut q = batcher.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                q.running = false;
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        batcher.rounds.fetch_add(1, Ordering::Relaxed);
        let result = match kind {
            Rounds::Leader => {
                metrics::histogram!("kv_read_index_batch_size").record(batch.len() as f64);
                group.confirm_leadership().await
            }
            Rounds::Follower => {
                metrics::histogram!("kv_follower_read_batch_size").record(batch.len() as f64);
                group.follower_round().await
            }
        };
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}
