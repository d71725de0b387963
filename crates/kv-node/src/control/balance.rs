//! Leadership balance: each partition has a target leader (`Placement::leaders`, spread evenly
//! over the members), and a node leading a partition whose target is another node hands the
//! leadership over once the partition has settled (no move in flight, voters as the map says,
//! the target holding the whole log). A transfer pauses the partition's writes for about one
//! leader lease, so transfers run one at a time per node, and a partition whose transfer failed
//! is left alone for a while.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kv_ring::{NodeId, PartitionId};

use crate::layout::partition_of_group;
use crate::state::AppState;

/// How often a node looks for leaderships to hand over when no event woke it: the safety net
/// for what no event here shows (a partition electing a leader, a target catching up or coming
/// back, a backoff ending).
const BALANCE_EVERY: Duration = Duration::from_secs(1);
/// How long a partition is left alone after a failed transfer.
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Hand leaderships to their target leaders until `stop` turns true; woken by a new map epoch,
/// a move ending, or the safety-net tick.
pub(super) async fn run(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = super::safety_net(BALANCE_EVERY);
    let mut epochs = st.epoch_changes();
    let mut endings = st.moves.endings();
    let mut failed: BTreeMap<PartitionId, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = epochs.changed() => {}
            _ = endings.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        balance_once(&st, &mut failed).await;
    }
}

/// Hand over at most one leadership.
async fn balance_once(st: &AppState, failed: &mut BTreeMap<PartitionId, Instant>) {
    // Moves change voters and may hand leadership over themselves; balance once they are done.
    if st.epoch().is_none() || !st.moves.is_idle() {
        return;
    }
    failed.retain(|_, at| at.elapsed() < BACKOFF_AFTER_FAILURE);
    let layout = st.layout();
    let me = st.config.id;
    for group in st.host.groups() {
        let Some(p) = partition_of_group(group.id()) else {
            continue;
        };
        if !group.is_leader() || failed.contains_key(&p) {
            continue;
        }
        let Some(target) = layout.target_leader(p) else {
            continue;
        };
        let desired: BTreeSet<NodeId> = layout.replicas(p).into_iter().collect();
        let (voters, learners) = group.members();
        if target == me || voters != desired || !learners.is_empty() {
            continue;
        }
        // A transfer holds the partition's writes while it runs: only try a target that is
        // keeping up and answering.
        let Some(addr) = layout.addr(target) else {
            continue;
        };
        if !group.status().await.keeps_up(target) || !super::peers::answers_health(st, addr).await {
            continue;
        }
        transfer(st, p, &group, target, failed).await;
        return;
    }
}

async fn transfer(
    st: &AppState,
    p: PartitionId,
    group: &kv_raft::Group,
    target: NodeId,
    failed: &mut BTreeMap<PartitionId, Instant>,
) {
    tracing::info!(
        node = %st.config.id,
        partition = p.0,
        to = %target,
        "handing leadership to the partition's target leader"
    );
    match group.transfer_leader(target).await {
        Ok(()) => metrics::counter!("kv_leader_transfers_total", "result" => "ok").increment(1),
        Err(e) => {
            metrics::counter!("kv_leader_transfers_total", "result" => "failed").increment(1);
            tracing::warn!(partition = p.0, to = %target, error = %e, "leadership transfer failed");
            failed.insert(p, Instant::now());
        }
    }
}
