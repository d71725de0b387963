//! Partition moves: bringing each partition's Raft voters to the replicas the cluster map
//! assigns, and dropping the copies the map took away.
//!
//! A move is run by the partition's leader: add the new replicas as learners, wait until they
//! hold the log up to the membership change (by log or snapshot), switch the voters with joint
//! consensus, then remove leftover learners. A removed replica deletes its copy once the group
//! no longer counts it. Nothing about a move is stored: every node re-derives the moves from
//! the map and the group's membership on each reconcile tick, so a move interrupted by a crash
//! or a leader change is resumed by whoever leads the partition next, and a move whose map was
//! superseded is abandoned and re-planned against the new map.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::api::{LearnerProgress, MoveStatus};
use kv_ring::PartitionId;

use crate::placement::partition_of_group;
use crate::state::AppState;

/// Partition moves one node leads at once, unless `--max-moves` says otherwise.
pub const DEFAULT_MAX_MOVES: usize = 2;
/// How often a running move checks the learners' progress.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);
/// How long a move waits for the log compaction before adding replicas.
const COMPACT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    CatchingUp,
    ChangingVoters,
    RemovingLearners,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::CatchingUp => "catching_up",
            Phase::ChangingVoters => "changing_voters",
            Phase::RemovingLearners => "removing_learners",
        }
    }
}

struct Progress {
    epoch: u64,
    from: BTreeSet<u64>,
    to: BTreeSet<u64>,
    phase: Phase,
    /// Learner -> (matched index, target index).
    learners: BTreeMap<u64, (Option<u64>, u64)>,
    started: Instant,
}

/// The moves this node is running, and the slots bounding how many run at once.
pub struct Moves {
    running: Mutex<BTreeMap<u32, Progress>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Moves {
    pub fn new(max_concurrent: usize) -> Moves {
        Moves {
            running: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Progress>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The moves this node (`me`) is running or has queued, for `/v1/cluster`.
    pub fn status(&self, me: u64) -> Vec<MoveStatus> {
        self.running()
            .iter()
            .map(|(p, m)| MoveStatus {
                partition: *p,
                node: me,
                epoch: m.epoch,
                from: m.from.iter().copied().collect(),
                to: m.to.iter().copied().collect(),
                phase: m.phase.as_str().to_string(),
                learners: m
                    .learners
                    .iter()
                    .map(|(id, (matched, target))| LearnerProgress {
                        node: *id,
                        matched: *matched,
                        target: *target,
                    })
                    .collect(),
                elapsed_ms: u64::try_from(m.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Whether any move is running or queued here.
    pub fn is_idle(&self) -> bool {
        self.running().is_empty()
    }

    fn update(&self, p: PartitionId, f: impl FnOnce(&mut Progress)) {
        if let Some(m) = self.running().get_mut(&p.0) {
            f(m);
        }
    }
}

/// Start the moves this node must lead, and drop the copies the map moved away from it.
pub async fn reconcile(st: &AppState) {
    let layout = st.layout();
    let Some(epoch) = st.epoch() else { return };
    let me = st.config.id;
    for group in st.host.groups() {
        let Some(p) = partition_of_group(group.id()) else {
            continue;
        };
        let desired: BTreeSet<u64> = layout.replicas(p).into_iter().collect();
        if group.is_leader() {
            let (voters, learners) = group.members();
            if voters != desired || !learners.is_empty() {
                start(st, p, group.clone(), desired, epoch);
            }
        } else if !desired.contains(&me) {
            if let Err(e) = maybe_drop(st, p, &group).await {
                tracing::debug!(partition = p.0, error = %format!("{e:#}"), "dropping a moved-away copy");
            }
        }
    }
}

/// Run the move of `p` to `desired` in the background unless one is already running or queued.
fn start(st: &AppState, p: PartitionId, group: kv_raft::Group, desired: BTreeSet<u64>, epoch: u64) {
    {
        let mut running = st.moves.running();
        if running.contains_key(&p.0) {
            return;
        }
        running.insert(
            p.0,
            Progress {
                epoch,
                from: group.members().0,
                to: desired.clone(),
                phase: Phase::Queued,
                learners: BTreeMap::new(),
                started: Instant::now(),
            },
        );
    }
    metrics::counter!("kv_moves_started_total").increment(1);
    let st = st.clone();
    tokio::spawn(async move {
        let slots = st.moves.slots.clone();
        if let Ok(_permit) = slots.acquire_owned().await {
            match run(&st, p, &group, &desired, epoch).await {
                Ok(()) => {
                    metrics::counter!("kv_moves_completed_total").increment(1);
                }
                Err(e) => {
                    metrics::counter!("kv_moves_abandoned_total").increment(1);
                    tracing::warn!(partition = p.0, error = %format!("{e:#}"), "partition move stopped; the next reconcile re-plans it");
                }
            }
        }
        st.moves.running().remove(&p.0);
    });
}

/// One move, on the partition's leader. Gives up (to be re-planned) when the map changes or
/// this node stops leading the partition.
async fn run(
    st: &AppState,
    p: PartitionId,
    group: &kv_raft::Group,
    desired: &BTreeSet<u64>,
    epoch: u64,
) -> anyhow::Result<()> {
    let still_current = || -> anyhow::Result<()> {
        if st.epoch() != Some(epoch) {
            anyhow::bail!("the cluster map changed; re-planning");
        }
        if !group.is_leader() {
            anyhow::bail!("no longer the partition's leader");
        }
        Ok(())
    };
    still_current()?;
    let layout = st.layout();
    let (voters, learners) = group.members();
    let new: Vec<u64> = desired
        .iter()
        .copied()
        .filter(|id| !voters.contains(id))
        .collect();
    if !new.is_empty() {
        st.moves.update(p, |m| m.phase = Phase::CatchingUp);
        let fresh: Vec<u64> = new
            .iter()
            .copied()
            .filter(|id| !learners.contains(id))
            .collect();
        if !fresh.is_empty() {
            // New replicas then get the live data as one snapshot instead of the log history.
            group.compact_log(COMPACT_WAIT).await?;
        }
        for id in &fresh {
            let addr = layout
                .addr(*id)
                .ok_or_else(|| anyhow::anyhow!("node {id} has no address in the map"))?;
            tracing::info!(partition = p.0, node = id, "adding replica as learner");
            group.add_learner(*id, addr, false).await?;
        }
        // Everything up to (at least) the membership entry that added them.
        let target = group.status().await.last_log_index.unwrap_or(0);
        loop {
            still_current()?;
            let status = group.status().await;
            let replication = status.replication.unwrap_or_default();
            let mut caught_up = true;
            let mut progress = BTreeMap::new();
            for id in &new {
                let matched = replication.get(id).copied().flatten();
                caught_up &= matched.is_some_and(|m| m >= target);
                progress.insert(*id, (matched, target));
            }
            st.moves.update(p, |m| m.learners = progress);
            if caught_up {
                break;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }
    if voters != *desired && !desired.contains(&st.config.id) {
        // This leader is leaving the partition: hand leadership to a voter that stays (the
        // map's target leader if it can), which then finishes the move, instead of leaving
        // the group leaderless for an election after the change.
        let target = layout.placement.leaders().get(&p).map(|n| n.0);
        let status = group.status().await;
        let staying = target
            .into_iter()
            .chain(desired.iter().copied())
            .find(|id| voters.contains(id) && crate::leadership::keeps_up(&status, *id));
        if let Some(to) = staying {
            still_current()?;
            tracing::info!(
                partition = p.0,
                to,
                "handing leadership over before leaving"
            );
            match group.transfer_leader(to).await {
                Ok(()) => return Ok(()),
                // Change the voters from here then; the group elects a leader afterwards.
                Err(e) => tracing::warn!(partition = p.0, to, error = %e, "handover failed"),
            }
        }
    }
    if voters != *desired {
        still_current()?;
        st.moves.update(p, |m| {
            m.phase = Phase::ChangingVoters;
            m.learners.clear();
        });
        tracing::info!(partition = p.0, from = ?voters, to = ?desired, "changing voters");
        group.set_voters(desired.clone()).await?;
    }
    let (_, learners) = group.members();
    let stray: BTreeSet<u64> = learners
        .into_iter()
        .filter(|id| !desired.contains(id))
        .collect();
    if !stray.is_empty() {
        st.moves.update(p, |m| m.phase = Phase::RemovingLearners);
        group.remove_learners(stray).await?;
    }
    tracing::info!(partition = p.0, voters = ?desired, "move done");
    Ok(())
}

/// Drop this node's copy of partition `p` once the group no longer counts it in: its own view
/// says so (a removed leader learns the final membership), or the group's current leader, found
/// among the replicas the map assigns, does (a removed follower never hears of the change).
async fn maybe_drop(st: &AppState, p: PartitionId, group: &kv_raft::Group) -> anyhow::Result<()> {
    let me = st.config.id;
    let own = group.status().await;
    let mut removed = !own.voters.is_empty() && !own.nodes.contains_key(&me);
    if !removed {
        let layout = st.layout();
        for id in layout.replicas(p) {
            let Some(addr) = layout.addr(id) else {
                continue;
            };
            let answer = st
                .http
                .get(format!("http://{addr}/v1/cluster?scope=local"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let Ok(answer) = answer else { continue };
            let Ok(status) = answer.json::<kv_client::api::ClusterStatus>().await else {
                continue;
            };
            let leader_view = status
                .groups
                .iter()
                .find(|g| g.partition == Some(p.0) && g.role == "leader");
            if let Some(g) = leader_view {
                removed =
                    !g.voters.is_empty() && !g.voters.contains(&me) && !g.learners.contains(&me);
                break;
            }
        }
    }
    if removed {
        tracing::info!(
            partition = p.0,
            "this node is no longer a replica; dropping its copy"
        );
        st.host.close_group(group.id()).await?;
        metrics::counter!("kv_partition_copies_dropped_total").increment(1);
    }
    Ok(())
}
