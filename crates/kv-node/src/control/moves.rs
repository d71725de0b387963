//! Partition moves: bringing each partition's Raft voters to the replicas the cluster map
//! assigns, and dropping the copies the map took away.
//!
//! A move is run by the partition's leader: add the new replicas as learners, wait until they
//! hold the log up to the membership change (by log or snapshot), switch the voters with joint
//! consensus, then remove leftover learners. A removed replica deletes its copy once the group
//! no longer counts it. Nothing about a move is stored: every node re-derives the moves from
//! the map and the group's membership each time the moves job wakes, so a move interrupted by
//! a crash or a leader change is resumed by whoever leads the partition next, and a move whose
//! map was superseded is abandoned and re-planned against the new map.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kv_ring::{NodeId, PartitionId};

use crate::layout::partition_of_group;
use crate::state::{AppState, Phase, Progress};
use crate::wire::{PeerMap, MAP_PATH};
/// Longest a catching-up move waits for a change of the leader's metrics before it checks
/// whether a new replica stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// How long a move waits for the log compaction before adding replicas.
const COMPACT_WAIT: Duration = Duration::from_secs(10);

/// The moves job: on every new map epoch (and the safety-net tick: a partition that elected a
/// leader in the middle of a move, a move to retry), start the moves this node must lead and
/// drop the copies the map moved away from it, until `stop` turns true.
pub(super) async fn job(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut epochs = st.epoch_changes();
    let mut tick = super::safety_net(super::RECHECK_EVERY);
    while super::next_wake(&mut epochs, &mut tick, &mut stop).await {
        reconcile(&st).await;
    }
}

/// Start the moves this node must lead, and drop the copies the map moved away from it.
async fn reconcile(st: &AppState) {
    let layout = st.layout();
    let Some(epoch) = st.epoch() else { return };
    let me = st.config.id;
    let mut moved_away = Vec::new();
    for group in st.host.groups() {
        let Some(p) = partition_of_group(group.id()) else {
            continue;
        };
        let desired: BTreeSet<NodeId> = layout.replicas(p).into_iter().collect();
        if group.is_leader() {
            let (voters, learners) = group.members();
            if voters != desired || !learners.is_empty() {
                start(st, p, group.clone(), desired, epoch);
            }
        } else if !desired.contains(&me) {
            moved_away.push((p, group));
        }
    }
    if !moved_away.is_empty() {
        if let Err(e) = drop_moved_away(st, epoch, moved_away).await {
            tracing::debug!(error = %format!("{e:#}"), "dropping moved-away copies");
        }
    }
}

/// How a move ended.
enum Finish {
    /// The voters are the map's replicas.
    Done,
    /// This leader was leaving the partition and handed leadership to a staying voter, which
    /// finishes the move.
    HandedOver,
    /// A new replica made no progress for [`STALL_AFTER`]: the move steps aside for a while.
    Stalled(NodeId),
}

/// A catch-up that makes no progress for this long is abandoned for [`STALL_BACKOFF`], so a
/// dead or unreachable new replica does not hold a move slot forever.
const STALL_AFTER: Duration = Duration::from_secs(30);
const STALL_BACKOFF: Duration = Duration::from_secs(30);
/// Pause before a move that stopped on an error is planned again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Run the move of `p` to `desired` in the background unless one is already running or queued.
fn start(
    st: &AppState,
    p: PartitionId,
    group: kv_raft::Group,
    desired: BTreeSet<NodeId>,
    epoch: u64,
) {
    {
        let mut running = st.moves.running();
        if running.contains_key(&p) {
            return;
        }
        running.insert(
            p,
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
    let task_state = st.clone();
    st.moves.spawn(async move {
        let st = task_state;
        let slots = st.moves.slots.clone();
        let finish = match slots.acquire_owned().await {
            Ok(_permit) => run(&st, p, &group, &desired, epoch).await,
            Err(_) => return,
        };
        match finish {
            Ok(Finish::Done) => metrics::counter!("kv_moves_completed_total").increment(1),
            Ok(Finish::HandedOver) => {
                metrics::counter!("kv_moves_handed_over_total").increment(1)
            }
            Ok(Finish::Stalled(node)) => {
                metrics::counter!("kv_moves_stalled_total").increment(1);
                tracing::warn!(
                    partition = p.0,
                    %node,
                    "partition move stalled: the new replica makes no progress; retrying later"
                );
                // Keep the entry (shown as stalled) so the reconcile does not restart the move
                // at once, but without the slot; a new map ends the wait early.
                st.moves.update(p, |m| m.phase = Phase::Stalled);
                let mut epochs = st.epoch_changes();
                let newer_map = epochs.wait_for(|e| *e != Some(epoch));
                let _ = tokio::time::timeout(STALL_BACKOFF, newer_map).await;
            }
            Err(e) => {
                metrics::counter!("kv_moves_abandoned_total").increment(1);
                tracing::warn!(partition = p.0, error = %format!("{e:#}"), "partition move stopped; re-planning shortly");
                // Not at once: whatever stopped it (no metadata leader, no quorum) rarely
                // clears within a reconcile tick.
                st.moves.update(p, |m| m.phase = Phase::Queued);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        st.moves.end(p);
    });
}

/// One move, on the partition's leader. Gives up (to be re-planned) when the map changes or
/// this node stops leading the partition.
async fn run(
    st: &AppState,
    p: PartitionId,
    group: &kv_raft::Group,
    desired: &BTreeSet<NodeId>,
    epoch: u64,
) -> anyhow::Result<Finish> {
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
    // A node that was away may route by an old map for a moment: never move a partition for
    // a map the metadata leader has already replaced.
    confirm_epoch(st, epoch).await?;
    let layout = st.layout();
    let (voters, learners) = group.members();
    let new: Vec<NodeId> = desired
        .iter()
        .copied()
        .filter(|id| !voters.contains(id))
        .collect();
    if !new.is_empty() {
        st.moves.update(p, |m| m.phase = Phase::CatchingUp);
        let fresh: Vec<NodeId> = new
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
            tracing::info!(partition = p.0, node = %id, "adding replica as learner");
            group.add_learner(*id, addr, false).await?;
        }
        // Everything up to (at least) the membership entry that added them.
        let target = group.status().await.last_log_index.unwrap_or(0);
        let mut last_progress = (BTreeMap::new(), Instant::now());
        // The leader's replication progress is in its metrics: woken by each change of them,
        // and by a new map (which may supersede this move).
        let mut metrics = group.metrics();
        let mut epochs = st.epoch_changes();
        loop {
            still_current()?;
            let status = group.status().await;
            let caught_up = new.iter().all(|id| status.holds(*id, target));
            let progress: BTreeMap<NodeId, (Option<u64>, u64)> = new
                .iter()
                .map(|id| (*id, (status.matched(*id), target)))
                .collect();
            if caught_up {
                break;
            }
            if progress != last_progress.0 {
                last_progress = (progress.clone(), Instant::now());
            } else if last_progress.1.elapsed() >= STALL_AFTER {
                let slow = new
                    .iter()
                    .copied()
                    .find(|id| {
                        progress
                            .get(id)
                            .is_some_and(|(m, t)| m.is_none_or(|m| m < *t))
                    })
                    .unwrap_or_default();
                return Ok(Finish::Stalled(slow));
            }
            st.moves.update(p, |m| m.learners = progress);
            // A learner that makes no progress changes nothing: the stall check runs at
            // least every `STALL_CHECK`.
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the partition's group stopped");
                    }
                }
                _ = epochs.changed() => {}
                _ = tokio::time::sleep(STALL_CHECK) => {}
            }
        }
    }
    if voters != *desired && !desired.contains(&st.config.id) {
        // This leader is leaving the partition: hand leadership to a voter that stays (the
        // map's target leader if it can), which then finishes the move, instead of leaving
        // the group leaderless for an election after the change.
        let target = layout.target_leader(p);
        let status = group.status().await;
        let staying = target
            .into_iter()
            .chain(desired.iter().copied())
            .find(|id| voters.contains(id) && status.keeps_up(*id));
        if let Some(to) = staying {
            still_current()?;
            tracing::info!(
                partition = p.0,
                %to,
                "handing leadership over before leaving"
            );
            match group.transfer_leader(to).await {
                Ok(()) => return Ok(Finish::HandedOver),
                // Change the voters from here then; the group elects a leader afterwards.
                Err(e) => tracing::warn!(partition = p.0, %to, error = %e, "handover failed"),
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
    let stray: BTreeSet<NodeId> = learners
        .into_iter()
        .filter(|id| !desired.contains(id))
        .collect();
    if !stray.is_empty() {
        st.moves.update(p, |m| m.phase = Phase::RemovingLearners);
        group.remove_learners(stray).await?;
    }
    tracing::info!(partition = p.0, voters = ?desired, "move done");
    Ok(Finish::Done)
}

/// Fail unless the metadata leader's map is the one of `epoch` (or older): this node must not
/// act on a map that has been replaced.
async fn confirm_epoch(st: &AppState, epoch: u64) -> anyhow::Result<()> {
    let Some((leader, addr)) = super::peers::metadata_leader(st).await else {
        anyhow::bail!("the metadata group has no leader to confirm the map with");
    };
    if leader == st.config.id {
        return Ok(());
    }
    let theirs: PeerMap = st
        .http
        .get(st.peer_url(&addr, MAP_PATH))
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .json()
        .await?;
    match theirs.epoch {
        Some(e) if e > epoch => {
            anyhow::bail!("the metadata leader has a newer map ({e} > {epoch})")
        }
        _ => Ok(()),
    }
}

/// Drop this node's copies of partitions the map took away from it, once the group no longer
/// counts it in: its own view says so (a removed leader learns the final membership), or the
/// group's current leader (the highest-term leader any member reports) does (a removed follower
/// never hears of the change). A leader that routes by a newer map than ours may be about to
/// add us back: then wait until we have that map too.
async fn drop_moved_away(
    st: &AppState,
    epoch: u64,
    copies: Vec<(PartitionId, kv_raft::Group)>,
) -> anyhow::Result<()> {
    let me = st.config.id;
    let mut views = None;
    for (p, group) in copies {
        let own = group.status().await;
        let mut removed = !own.voters.is_empty() && !own.nodes.contains_key(&me);
        if !removed {
            if views.is_none() {
                views = Some(super::peers::member_views(st).await);
            }
            let leader_view = views
                .as_deref()
                .and_then(|views| super::peers::leading_view(views, Some(p.0)));
            if let Some((their, g)) = leader_view {
                removed = their.epoch <= Some(epoch)
                    && !g.voters.is_empty()
                    && !g.voters.contains(&me)
                    && !g.learners.contains(&me);
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
    }
    Ok(())
}
