//! The metadata group (Raft group 0), the cluster's single source of truth for membership, ring
//! parameters and the partition map ([`super::map`]). Its leader writes the first map and keeps
//! the group's voters and learners in step with the map's members; every node (voter or learner
//! of group 0) adopts each new map from its own replica, routes by it and opens the partition
//! groups it assigns the node. [`run`] is the job that does both, woken by the group's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kv_raft::Node as BasicNode;
use kv_raft::Outcome;
use kv_ring::{NodeId, RingParams};

use super::map::{local_map, meta_voters, write_command};
use crate::layout::{group_of, ClusterMap, Layout, META_GROUP};
use crate::state::AppState;

/// How often the job re-checks the map and the metadata group's members when no event woke
/// it: the safety net for what no event shows (a former member's replication progress, a
/// former member coming back up, a retry after an error).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Open group 0 and, for a new cluster, give it its first voters.
pub(crate) async fn open(st: &AppState) -> anyhow::Result<()> {
    st.host.open_group(META_GROUP).await?;
    let voters = meta_voters(&st.config.initial_cluster);
    if st.config.join.is_none() && voters.contains_key(&st.config.id) {
        st.host.initialize(META_GROUP, voters).await?;
    }
    Ok(())
}

/// Keep this node in step with the metadata group until `stop` turns true: as leader, write
/// the first map and keep the group's members as the map says; everywhere, adopt new map
/// epochs and open the partition groups they assign to this node.
pub(crate) async fn run(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(RECONCILE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut meta = MetaWatch::default();
    loop {
        // Woken by the metadata group's leader, term, membership or applied index changing (a
        // new map, a joining member), or by the safety-net tick.
        tokio::select! {
            _ = interval.tick() => {}
            _ = meta.changed(&st) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reconcile_once(&st).await {
            tracing::debug!(node = %st.config.id, error = %format!("{e:#}"), "metadata reconcile");
        }
    }
}

/// The metadata group's metrics, seen only through what the metadata job acts on: a
/// heartbeat or a replication ack changes the metrics too, and must not wake it.
#[derive(Default)]
struct MetaWatch {
    metrics: Option<tokio::sync::watch::Receiver<kv_raft::Metrics>>,
    seen: Option<MetaState>,
}

/// What of the metadata group's state the metadata job acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaState {
    leader: Option<NodeId>,
    term: u64,
    applied: Option<u64>,
    membership: Option<u64>,
}

impl MetaWatch {
    /// Returns once the metadata group's state changed since the last call; never while this
    /// node has no metadata group (the loop's tick finds it once it opens).
    async fn changed(&mut self, st: &AppState) {
        if self.metrics.is_none() {
            self.metrics = st.host.group(META_GROUP).map(|g| g.metrics());
        }
        let Some(metrics) = self.metrics.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if metrics.changed().await.is_err() {
                // The group stopped: look for it again on the next tick.
                self.metrics = None;
                return std::future::pending().await;
            }
            let now = {
                let m = metrics.borrow_and_update();
                MetaState {
                    leader: m.current_leader,
                    term: m.current_term,
                    applied: m.last_applied.map(|l| l.index),
                    membership: m.membership_config.log_id().map(|l| l.index),
                }
            };
            if self.seen.as_ref() != Some(&now) {
                self.seen = Some(now);
                return;
            }
        }
    }
}

async fn reconcile_once(st: &AppState) -> anyhow::Result<()> {
    let Some(group) = st.host.group(META_GROUP) else {
        return Ok(());
    };
    if group.is_leader() {
        lead(st, &group).await?;
    }
    if let Some((epoch, map)) = local_map(st).await? {
        if st.epoch() < Some(epoch) {
            adopt(st, epoch, map).await?;
        }
    }
    Ok(())
}

/// Duties of the metadata leader.
async fn lead(st: &AppState, group: &kv_raft::Group) -> anyhow::Result<()> {
    let current = local_map(st).await?;
    let (epoch, map) = match current {
        Some(current) => current,
        None => {
            let params: RingParams = st.config.ring;
            let map = ClusterMap {
                cluster_id: Some(rand::random()),
                ..ClusterMap::compute(st.config.initial_cluster.clone(), params)?
            };
            match group.write(write_command(&map, None)?).await? {
                (Outcome::Written { version }, _) => {
                    tracing::info!(epoch = version, "wrote the first cluster map");
                }
                (other, _) => tracing::debug!(?other, "cluster map already written"),
            }
            return Ok(());
        }
    };
    // Every member follows group 0: the lowest ids as voters, the rest as learners; former
    // members leave it. New members come in as learners first, so they never count towards a
    // quorum before they hold the log.
    let (voters, learners) = group.members();
    for (id, addr) in &map.members {
        if !voters.contains(id) && !learners.contains(id) {
            if let Err(e) = group.add_learner(*id, addr, false).await {
                tracing::debug!(%id, error = %e, "adding metadata learner");
            }
        }
    }
    // A former member leaves only once it holds the map that removed it (so it learns it is
    // out and drops its partitions), unless it is down and never will.
    let (voters, learners) = group.members();
    let status = group.status().await;
    let mut former_pending = false;
    for id in voters
        .iter()
        .chain(&learners)
        .filter(|id| !map.members.contains_key(id))
    {
        if status.holds(*id, epoch) {
            continue;
        }
        let down = match status.nodes.get(id) {
            Some(addr) => !super::peers::answers_health(st, addr).await,
            None => true,
        };
        former_pending |= !down;
    }
    if former_pending {
        return Ok(());
    }
    let desired: BTreeSet<NodeId> = meta_voters(&map.members).into_keys().collect();
    if !desired.contains(&st.config.id) {
        // This node is leaving the voters: hand leadership to one that stays, so the group
        // does not wait out an election after the change.
        let status = group.status().await;
        let staying = desired
            .iter()
            .find(|id| voters.contains(id) && status.keeps_up(**id));
        if let Some(to) = staying {
            match group.transfer_leader(*to).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(%to, error = %e, "metadata leadership handover failed"),
            }
        }
    }
    if voters != desired
        && desired
            .iter()
            .all(|id| voters.contains(id) || learners.contains(id))
    {
        tracing::info!(from = ?voters, to = ?desired, "changing the metadata group's voters");
        group.set_voters(desired).await?;
    }
    let (_, learners) = group.members();
    let former: BTreeSet<NodeId> = learners
        .into_iter()
        .filter(|id| !map.members.contains_key(id))
        .collect();
    if !former.is_empty() {
        tracing::info!(ids = ?former, "removing former members from the metadata group");
        group.remove_learners(former).await?;
    }
    Ok(())
}

/// Route by `map` from now on and start the partition groups it gives this node.
async fn adopt(st: &AppState, epoch: u64, map: ClusterMap) -> anyhow::Result<()> {
    let layout = Layout::new(map);
    if layout.placement.params() != st.config.ring {
        tracing::warn!(
            stored = ?layout.placement.params(),
            flags = ?st.config.ring,
            "the cluster's stored ring parameters differ from this node's flags; using the stored ones"
        );
    }
    let me = st.config.id;
    for p in layout.partitions_of(me) {
        let gid = group_of(p);
        let group = st.host.open_group(gid).await?;
        if layout.generation > 0 {
            continue;
        }
        let members: BTreeMap<NodeId, BasicNode> = layout
            .replicas(p)
            .into_iter()
            .filter_map(|id| layout.addr(id).map(|a| (id, BasicNode::new(a))))
            .collect();
        // A new partition is initialized by its target leader alone: openraft's initialize
        // campaigns at once, the other replicas open the group when its vote request arrives
        // (see `api::peer`), and the first election lands on the target, so a fresh cluster
        // needs no leadership transfers. Should the target not come up, the other replicas
        // initialize the group themselves after a while (the same membership on every
        // replica is safe), and the balancer moves leadership later.
        if layout.target_leader(p) == Some(me) {
            st.host.initialize(gid, members).await?;
        } else {
            let host = st.host.clone();
            let patience = st.config.raft.election_max * 4;
            st.background.spawn(async move {
                if group.wait_for_leader(patience).await.is_none() {
                    tracing::info!(
                        partition = p.0,
                        "no leader from the target leader; initializing here"
                    );
                    if let Err(e) = host.initialize(gid, members).await {
                        tracing::warn!(partition = p.0, error = %e, "initializing the partition");
                    }
                }
            });
        }
    }
    if layout.members.contains_key(&me) {
        tracing::info!(
            node = %me,
            epoch,
            partitions = layout.partitions_of(me).len(),
            "adopted cluster map"
        );
    } else {
        tracing::warn!(
            node = %me,
            epoch,
            "this node was removed from the cluster; once its partitions are dropped it may be stopped"
        );
    }
    if let Some(id) = layout.cluster_id {
        st.set_cluster_id(id);
    }
    st.set_layout(layout, epoch);
    Ok(())
}
