//! The partition moves this node runs: what the moves job ([`crate::control`]) records of each
//! as it goes, and what `/v1/cluster` shows of them; and the slots bounding how many run at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kv_ring::{NodeId, PartitionId};

pub(crate) use crate::wire::MovePhase as Phase;
use crate::wire::MoveView;

pub(crate) struct Progress {
    pub(crate) epoch: u64,
    pub(crate) from: BTreeSet<NodeId>,
    pub(crate) to: BTreeSet<NodeId>,
    pub(crate) phase: Phase,
    /// Learner -> (matched index, target index).
    pub(crate) learners: BTreeMap<NodeId, (Option<u64>, u64)>,
    pub(crate) started: Instant,
}

/// The moves this node is running, and the slots bounding how many run at once.
pub(crate) struct Moves {
    running: Mutex<BTreeMap<PartitionId, Progress>>,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// The move tasks, so shutdown can stop them.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// How many moves have ended, for the jobs that wait for moves to settle.
    ended: tokio::sync::watch::Sender<u64>,
}

impl Moves {
    pub(crate) fn new(max_concurrent: usize) -> Moves {
        Moves {
            running: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
            tasks: Mutex::default(),
            ended: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Record that the move of `p` ended (done, stalled or failed).
    pub(crate) fn end(&self, p: PartitionId) {
        self.running().remove(&p);
        self.ended.send_modify(|n| *n += 1);
    }

    /// Moves ending, from now on.
    pub(crate) fn endings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ended.subscribe()
    }

    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, Progress>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The moves this node (`me`) is running or has queued.
    pub(crate) fn status(&self, me: NodeId) -> Vec<MoveView> {
        self.running()
            .iter()
            .map(|(p, m)| MoveView {
                partition: p.0,
                node: me,
                epoch: m.epoch,
                from: m.from.iter().copied().collect(),
                to: m.to.iter().copied().collect(),
                phase: m.phase,
                learners: m
                    .learners
                    .iter()
                    .map(|(id, (matched, target))| (*id, *matched, *target))
                    .collect(),
                elapsed_ms: u64::try_from(m.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Whether any move is running or queued here.
    pub(crate) fn is_idle(&self) -> bool {
        self.running().is_empty()
    }

    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished moves so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Stop every move (on shutdown); the next leader of each partition re-plans it.
    pub(crate) fn abort_all(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }

    pub(crate) fn update(&self, p: PartitionId, f: impl FnOnce(&mut Progress)) {
        if let Some(m) = self.running().get_mut(&p) {
            f(m);
        }
    }
}
