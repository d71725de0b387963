//! Batched proposals: writes to one group that arrive while a proposal of the group is in
//! flight wait for it, and then go into the log together, as one entry
//! ([`Request::Batch`]). openraft 0.9 appends each client write as its own entry and waits for
//! that entry's flush before it takes the next, so without this a group writes at most one
//! entry per fsync; with it, as many writes as arrived during that fsync. A batch closes when a
//! proposal returns (natural batching, no timer) or when it is full; at most [`IN_FLIGHT`]
//! proposals of a group are in flight.
//!
//! Invariants:
//! - writes are proposed in the order they arrived, each exactly once;
//! - a batch never holds two writes of one key: a key's version is the index of the entry that
//!   wrote it, so two writes of a key in one entry would share a version. A write of a key
//!   already in the batch starts the next batch (order is kept: nothing is passed over);
//! - each caller gets the outcome of its own write, as if it had been proposed alone, and a
//!   write later in a batch sees the effects of those before it (they apply in order).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use kv_storage::{Command, Outcome};
use tokio::sync::{oneshot, Notify};

use crate::types::{Request, Response};
use crate::{Group, GroupError};

/// Proposals of one group in flight at once, at most. A second one goes out only while the
/// one in flight holds a single write: a lightly loaded group overlaps two writers'
/// rounds, and a loaded one (its batches hold several writes) proposes one batch at a time,
/// which gathers more: each entry costs the cluster the same CPU whatever it holds (appends,
/// fsync turns, replication calls, applies on three nodes). `scripts/bench_builds.sh` against
/// two in flight always: 64 writers over 16 partitions 1.14x plain / 1.00x via kv-client, two
/// writers on one partition 1.07x / 0.96x (one in flight always lost 0.83–0.91x there).
const IN_FLIGHT: usize = 2;
/// Most writes in one batch.
const MAX_COMMANDS: usize = 256;
/// Most bytes of keys and values in one batch (a batch is one log entry, replicated whole).
const MAX_BYTES: usize = 512 * 1024;

type Reply = oneshot::Sender<Result<(Outcome, u64), GroupError>>;

/// One group's queue of writes waiting to be proposed.
#[derive(Default)]
pub(crate) struct Proposer {
    queue: Mutex<Queue>,
    /// Wakes the pump when a proposal in flight is done.
    done: Notify,
}

#[derive(Default)]
struct Queue {
    /// The pump task runs (it ends when nothing waits).
    pumping: bool,
    /// Proposals handed to openraft and not yet answered.
    in_flight: usize,
    /// How many of those hold more than one write.
    in_flight_batches: usize,
    waiting: VecDeque<(Command, Reply)>,
}

fn size(cmd: &Command) -> usize {
    match cmd {
        Command::Put { key, value, .. } | Command::TimedPut { key, value, .. } => {
            key.len() + value.len()
        }
        Command::Delete { key, .. }
        | Command::TimedDelete { key, .. }
        | Command::Refresh { key, .. }
        | Command::Expire { key, .. } => key.len(),
        Command::Once { command, .. } => size(command),
    }
}

impl Proposer {
    /// Commit `cmd` through the log, batched with whatever else is waiting; its outcome and
    /// the index of the entry it went into.
    pub(crate) async fn write(
        &self,
        group: &Group,
        cmd: Command,
    ) -> Result<(Outcome, u64), GroupError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push_back((cmd, tx));
            !std::mem::replace(&mut q.pumping, true)
        };
        if start {
            // The pump is a task of its own: a writer that gives up (its client went away)
            // must not stop the batches the others wait for.
            let group = group.clone();
            tokio::spawn(async move { pump(group).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(GroupError::Stopped("the proposal was abandoned".into())))
    }
}

/// What the pump does next.
enum Next {
    Propose(Vec<(Command, Reply)>),
    /// [`IN_FLIGHT`] proposals are out: wait for one.
    Wait,
    Stop,
}

/// Hand batches to openraft, one after the other in arrival order, while at most
/// [`IN_FLIGHT`] are unanswered (one, while a batch of several is); end when nothing waits.
/// One pump per group at a time, so batches reach openraft (which appends in the order it
/// receives) in the order they formed.
async fn pump(group: Group) {
    let proposer = group.proposer.clone();
    loop {
        let next = {
            let mut q = proposer.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.in_flight >= IN_FLIGHT || q.in_flight_batches > 0 {
                Next::Wait
            } else {
                let batch = next_batch(&mut q);
                if batch.is_empty() {
                    q.pumping = false;
                    Next::Stop
                } else {
                    q.in_flight += 1;
                    q.in_flight_batches += usize::from(batch.len() > 1);
                    Next::Propose(batch)
                }
            }
        };
        let batch = match next {
            Next::Stop => return,
            Next::Wait => {
                proposer.done.notified().await;
                continue;
            }
            Next::Propose(batch) => batch,
        };
        metrics::histogram!("kv_proposal_batch_size").record(batch.len() as f64);
        let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let single = commands.len() == 1;
        let request = match single {
            true => commands.into_iter().next().map(Request::Kv),
            false => Some(Request::Batch(commands)),
        };
        let deadline = tokio::time::Instant::now() + group.timeout;
        let submitted = match request {
            Some(request) => group.submit(request, deadline).await,
            None => Err(GroupError::Stopped("an empty batch".into())),
        };
        let waiter = group.clone();
        tokio::spawn(async move {
            let answer = match submitted {
                Ok(submitted) => waiter.committed(submitted, deadline).await,
                Err(e) => Err(e),
            };
            answer_all(replies, single, answer);
            let proposer = &waiter.proposer;
            {
                let mut q = proposer.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.in_flight -= 1;
                q.in_flight_batches -= usize::from(!single);
            }
            proposer.done.notify_one();
        });
    }
}

/// The next batch, in arrival order: up to the caps, and stopping before a second write of a
/// key already in it.
fn next_batch(q: &mut Queue) -> Vec<(Command, Reply)> {
    let mut batch = Vec::new();
    let mut keys = HashSet::new();
    let mut bytes = 0;
    while let Some((cmd, _)) = q.waiting.front() {
        let fits =
            batch.len() < MAX_COMMANDS && (batch.is_empty() || bytes + size(cmd) <= MAX_BYTES);
        if !fits || !keys.insert(cmd.key().to_vec()) {
            break;
        }
        bytes += size(cmd);
        if let Some(write) = q.waiting.pop_front() {
            batch.push(write);
        }
    }
    batch
}

/// Give each writer of a batch its own outcome.
fn answer_all(replies: Vec<Reply>, single: bool, answer: Result<(Response, u64), GroupError>) {
    match answer {
        Ok((Response::Kv(outcome), index)) if single => {
            for reply in replies {
                let _ = reply.send(Ok((outcome.clone(), index)));
            }
        }
        Ok((Response::Batch(outcomes), index)) if outcomes.len() == replies.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok((outcome, index)));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(GroupError::Stopped(
                    "a write produced no outcome".into(),
                )));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
