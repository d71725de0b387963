//! The control plane: the jobs that keep a node in step with the cluster, each in a task of its
//! own (so a slow peer stalls only the job that waits on it), all started and stopped by
//! [`Control`]:
//!
//! | job | module | woken by | safety net |
//! |---|---|---|---|
//! | metadata group: write the first map, keep group 0's members as the map says, adopt new maps | [`metadata`] | group 0's leader, term, membership or applied index | 1 s (a former member's progress, a retry) |
//! | partition moves: start the moves this node leads, drop copies the map took away | [`moves`] | a new map epoch | 1 s (a partition electing a leader mid-move, a retry) |
//! | leadership balance: hand a leadership to its target leader | [`balance`] | a new map epoch, a move finishing | 1 s (a partition electing a leader, a replica catching up) |
//! | noticing this node's removal while it was away | [`own_membership`] | — | 2 s (nothing reaches a removed node) |
//! | publishing this node's client address | [`own_membership`] | a new map epoch | 1 s (a retry) |
//! | joining (`--join`) | [`own_membership`] | — | retries with backoff until it has joined |
//! | expiring keys past their deadline on the partitions this node leads | [`expiry`] | the earliest deadline, a write here that gave a key one | 1 s (a leadership gained) |
//!
//! The cluster map itself is [`map`]; membership changes on the metadata leader are
//! [`membership`]; [`peers`] asks other members outside Raft (health, identity, views).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::state::AppState;

mod balance;
mod expiry;
mod map;
mod membership;
mod metadata;
mod moves;
mod own_membership;
pub(crate) mod peers;

pub(crate) use membership::{add_member, remove_member};

/// How often the moves and the publication of the client address are re-checked when no
/// event woke them (see the table above).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The running control jobs of a node.
pub(crate) struct Control {
    stop: watch::Sender<bool>,
    jobs: JoinSet<()>,
}

impl Control {
    /// Open the metadata group and start every job.
    pub(crate) async fn start(st: &AppState) -> anyhow::Result<Control> {
        metadata::open(st).await?;
        let (stop, stopped) = watch::channel(false);
        let mut jobs = JoinSet::new();
        jobs.spawn(metadata::run(st.clone(), stopped.clone()));
        jobs.spawn(moves::job(st.clone(), stopped.clone()));
        jobs.spawn(balance::run(st.clone(), stopped.clone()));
        jobs.spawn(expiry::run(st.clone(), stopped.clone()));
        jobs.spawn(own_membership::watch_removal(st.clone(), stopped.clone()));
        jobs.spawn(own_membership::publish_client_addr(
            st.clone(),
            stopped.clone(),
        ));
        if let Some(via) = st.config.join.clone() {
            jobs.spawn(own_membership::join(st.clone(), via, stopped));
        }
        Ok(Control { stop, jobs })
    }

    /// Stop every job and wait for them; then stop the moves they started.
    pub(crate) async fn stop(mut self, st: &AppState) {
        let _ = self.stop.send(true);
        while self.jobs.join_next().await.is_some() {}
        st.moves.abort_all();
    }
}

/// Wait for the next wake-up of a job: a new map epoch, the safety-net tick, or the stop (then
/// `false`).
async fn next_wake(
    epochs: &mut watch::Receiver<Option<u64>>,
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tick.tick() => true,
        _ = epochs.changed() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// The safety-net tick of a job: `every`, not catching up on missed ticks.
fn safety_net(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
