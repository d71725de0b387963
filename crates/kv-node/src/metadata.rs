//! The metadata group (Raft group 0): the cluster's single source of truth for membership,
//! ring parameters and the partition map.
//!
//! The map is one record (`cluster/map`) in group 0's state machine; its version is the map's
//! epoch, so every change is a compare-and-set on the previous epoch. The metadata leader
//! computes the map and writes it; every node (voter or learner of group 0) reads it from its
//! own replica and starts the partition groups the map assigns it. Voters are the first
//! [`MAX_META_VOTERS`] members by id; further members follow as learners.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_ring::{Placement, RingParams};
use kv_storage::{Command, Condition, GroupId, Outcome};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::placement::{group_of, Layout};
use crate::state::AppState;

/// Raft group id of the metadata group.
pub const META_GROUP: GroupId = GroupId(0);
/// Most voters of the metadata group; more members join it as learners.
pub const MAX_META_VOTERS: usize = 5;
const MAP_KEY: &[u8] = b"cluster/map";
/// How often a node re-checks the map and the metadata group's members.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// What the metadata group stores under `cluster/map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Member id -> address.
    pub members: BTreeMap<u64, String>,
    /// Ring parameters and partition -> replicas.
    pub placement: Placement,
}

/// The voters of the metadata group for a member set: the lowest ids.
pub fn meta_voters(members: &BTreeMap<u64, String>) -> BTreeMap<u64, BasicNode> {
    members
        .iter()
        .take(MAX_META_VOTERS)
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect()
}

/// Open group 0 and, for a new cluster, give it its first voters.
pub async fn open(st: &AppState) -> anyhow::Result<()> {
    st.host.open_group(META_GROUP).await?;
    let voters = meta_voters(&st.config.initial_cluster);
    if voters.contains_key(&st.config.id) {
        st.host.initialize(META_GROUP, voters).await?;
    }
    Ok(())
}

/// The map as this node's replica of group 0 has applied it, with its epoch.
pub async fn local_map(st: &AppState) -> anyhow::Result<Option<(u64, ClusterMap)>> {
    let Some(group) = st.host.group(META_GROUP) else {
        return Ok(None);
    };
    // A local (stale) read: every node, follower or learner, routes by what it has applied.
    match group.get(MAP_KEY.to_vec(), true).await? {
        None => Ok(None),
        Some(record) => {
            let map: ClusterMap = serde_json::from_slice(&record.value)
                .map_err(|e| anyhow::anyhow!("stored cluster map does not decode: {e}"))?;
            Ok(Some((record.version, map)))
        }
    }
}

/// Keep this node in step with the metadata group until `stop` turns true: as leader, write
/// the first map and add missing members as learners; everywhere, adopt new map epochs and
/// start the partition groups they assign to this node.
pub async fn reconcile_loop(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(RECONCILE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reconcile_once(&st).await {
            tracing::debug!(node = st.config.id, error = %format!("{e:#}"), "metadata reconcile");
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
    let map = match current {
        Some((_, map)) => map,
        None => {
            let params: RingParams = st.config.ring;
            let layout = Layout::compute(st.config.initial_cluster.clone(), params)?;
            let map = ClusterMap {
                members: layout.members,
                placement: layout.placement,
            };
            let value = serde_json::to_vec(&map)?;
            let cmd = Command::Put {
                key: MAP_KEY.to_vec(),
                value,
                cond: Condition::Absent,
            };
            match group.write(cmd).await? {
                (Outcome::Written { version }, _) => {
                    tracing::info!(epoch = version, "wrote the first cluster map");
                }
                (other, _) => tracing::debug!(?other, "cluster map already written"),
            }
            map
        }
    };
    // Every member follows group 0: the first ones as voters, the rest as learners.
    let status = group.status().await;
    for (id, addr) in &map.members {
        if !status.nodes.contains_key(id) {
            let node = BasicNode::new(addr);
            if let Err(e) = group.raft().add_learner(*id, node, false).await {
                tracing::debug!(id, error = %e, "adding metadata learner");
            }
        }
    }
    Ok(())
}

/// Route by `map` from now on and start the partition groups it gives this node.
async fn adopt(st: &AppState, epoch: u64, map: ClusterMap) -> anyhow::Result<()> {
    let layout = Layout {
        members: map.members,
        placement: map.placement,
    };
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
        st.host.open_group(gid).await?;
        let members: BTreeMap<u64, BasicNode> = layout
            .replicas(p)
            .into_iter()
            .filter_map(|id| layout.addr(id).map(|a| (id, BasicNode::new(a))))
            .collect();
        st.host.initialize(gid, members).await?;
    }
    tracing::info!(
        node = me,
        epoch,
        partitions = layout.partitions_of(me).len(),
        "adopted cluster map"
    );
    st.set_layout(layout, epoch);
    Ok(())
}
