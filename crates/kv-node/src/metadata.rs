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

use kv_raft::Node as BasicNode;
use kv_ring::{Placement, RingParams};
use kv_storage::{Command, Condition, GroupId, Outcome};
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
    /// How many membership changes led to this map; 0 is the map the cluster was created with,
    /// the only one whose partition groups are initialized (a joining node never initializes a
    /// group: it is brought in by the group's leader).
    #[serde(default)]
    pub generation: u64,
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
    if st.config.join.is_none() && voters.contains_key(&st.config.id) {
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
    reconcile_partitions(st).await
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
                generation: 0,
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
    let (voters, learners) = group.members();
    for (id, addr) in &map.members {
        if !voters.contains(id) && !learners.contains(id) {
            if let Err(e) = group.add_learner(*id, addr, false).await {
                tracing::debug!(id, error = %e, "adding metadata learner");
            }
        }
    }
    Ok(())
}

/// Route by `map` from now on and start the partition groups it gives this node.
async fn adopt(st: &AppState, epoch: u64, map: ClusterMap) -> anyhow::Result<()> {
    let layout = Layout {
        members: map.members.clone(),
        placement: map.placement.clone(),
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
        if map.generation > 0 {
            continue;
        }
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

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("node {id} is already a member at {addr}")]
    Conflict { id: u64, addr: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// On the metadata leader: add member `id` at `addr` by writing a new map (epoch + 1) with a
/// placement recomputed over the new member set. Idempotent for the same id and address.
pub async fn add_member(st: &AppState, id: u64, addr: &str) -> Result<u64, MembershipError> {
    if id == 0 || !addr.contains(':') {
        return Err(MembershipError::Invalid(format!(
            "a member needs a positive id and a host:port address, got {id} at {addr:?}"
        )));
    }
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| MembershipError::Unavailable("no metadata group here".into()))?;
    for _ in 0..5 {
        group
            .read_barrier()
            .await
            .map_err(|e| MembershipError::Unavailable(e.to_string()))?;
        let (epoch, map) = local_map(st)
            .await
            .map_err(|e| MembershipError::Unavailable(format!("{e:#}")))?
            .ok_or_else(|| MembershipError::Unavailable("no cluster map yet".into()))?;
        match map.members.get(&id) {
            Some(a) if a == addr => return Ok(epoch),
            Some(a) => {
                return Err(MembershipError::Conflict {
                    id,
                    addr: a.clone(),
                })
            }
            None => {}
        }
        // Refuse an address nobody answers on: a typo would otherwise become a member that
        // partitions are moved to and never arrive at.
        let probe = st
            .http
            .get(format!("http://{addr}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if !probe.is_ok_and(|r| r.status().is_success()) {
            return Err(MembershipError::Invalid(format!(
                "no kv node answers at {addr}; start it (with --join) before adding it"
            )));
        }
        let mut members = map.members.clone();
        members.insert(id, addr.to_string());
        let layout = Layout::compute(members, map.placement.params())
            .map_err(|e| MembershipError::Invalid(format!("{e:#}")))?;
        let next = ClusterMap {
            members: layout.members,
            placement: layout.placement,
            generation: map.generation + 1,
        };
        let value =
            serde_json::to_vec(&next).map_err(|e| MembershipError::Invalid(e.to_string()))?;
        let cmd = Command::Put {
            key: MAP_KEY.to_vec(),
            value,
            cond: Condition::Version(epoch),
        };
        match group.write(cmd).await {
            Ok((Outcome::Written { version }, _)) => {
                tracing::info!(
                    id,
                    addr,
                    epoch = version,
                    "member added; partitions will move"
                );
                return Ok(version);
            }
            // Someone else changed the map first: recompute on the new one.
            Ok((Outcome::PreconditionFailed { .. }, _)) => continue,
            Ok((other, _)) => {
                return Err(MembershipError::Unavailable(format!(
                    "unexpected outcome {other:?}"
                )))
            }
            Err(e) => return Err(MembershipError::Unavailable(e.to_string())),
        }
    }
    Err(MembershipError::Unavailable(
        "the cluster map kept changing; retry".into(),
    ))
}

/// For a node started with `--join`: ask the cluster to add it, until it has.
pub async fn join_loop(st: AppState, via: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let body = kv_client::api::JoinRequest {
        id: st.config.id,
        addr: st.config.advertise.clone(),
    };
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = st
            .http
            .post(format!("http://{via}/v1/cluster/nodes"))
            .timeout(st.config.raft.request_timeout * 2)
            .json(&body)
            .send()
            .await;
        match attempt {
            Ok(r) if r.status().is_success() => {
                tracing::info!(via, "joined the cluster");
                return;
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(via, %status, answer = %text, "join refused; retrying");
            }
            Err(e) => tracing::warn!(via, error = %e, "join request failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Bring the partitions this node leads to the replica sets of the map, and drop the copies of
/// partitions the map took away from it once their group no longer counts it as a member.
pub async fn reconcile_partitions(st: &AppState) -> anyhow::Result<()> {
    let layout = st.layout();
    let me = st.config.id;
    for group in st.host.groups() {
        let Some(p) = crate::placement::partition_of_group(group.id()) else {
            continue;
        };
        let desired: std::collections::BTreeSet<u64> = layout.replicas(p).into_iter().collect();
        if group.is_leader() {
            let (voters, learners) = group.members();
            if voters != desired || !learners.is_empty() {
                st.start_move(p, group.clone(), desired, layout.clone());
            }
        } else if !desired.contains(&me) && st.epoch().is_some() {
            if let Err(e) = maybe_drop(st, p, &group).await {
                tracing::debug!(partition = p.0, error = %format!("{e:#}"), "dropping a moved-away copy");
            }
        }
    }
    Ok(())
}

/// Drop this node's copy of partition `p` once the group no longer counts it in: its own view
/// says so (a removed leader learns the final membership), or the group's current leader, found
/// among the replicas the map assigns, does (a removed follower never hears of the change).
async fn maybe_drop(
    st: &AppState,
    p: kv_ring::PartitionId,
    group: &kv_raft::Group,
) -> anyhow::Result<()> {
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
    }
    Ok(())
}

/// One partition move, run by the partition's leader: add the map's new replicas as learners,
/// wait until they caught up, switch the voters with joint consensus, remove leftover learners.
pub async fn run_move(
    p: kv_ring::PartitionId,
    group: kv_raft::Group,
    desired: std::collections::BTreeSet<u64>,
    layout: std::sync::Arc<Layout>,
) -> anyhow::Result<()> {
    let (voters, _) = group.members();
    for id in desired.iter().filter(|id| !voters.contains(id)) {
        let addr = layout
            .addr(*id)
            .ok_or_else(|| anyhow::anyhow!("node {id} has no address"))?;
        tracing::info!(partition = p.0, node = id, "adding replica as learner");
        tokio::time::timeout(Duration::from_secs(120), group.add_learner(*id, addr, true))
            .await
            .map_err(|_| anyhow::anyhow!("learner {id} did not catch up in time"))??;
    }
    if voters != desired {
        tracing::info!(partition = p.0, voters = ?desired, "changing voters");
        group.set_voters(desired.clone()).await?;
    }
    let (_, learners) = group.members();
    let stray: std::collections::BTreeSet<u64> = learners
        .into_iter()
        .filter(|id| !desired.contains(id))
        .collect();
    if !stray.is_empty() {
        group.remove_learners(stray).await?;
    }
    tracing::info!(partition = p.0, "move done");
    Ok(())
}
