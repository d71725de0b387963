//! The metadata group (Raft group 0): the cluster's single source of truth for membership,
//! ring parameters and the partition map.
//!
//! The map is one record (`cluster/map`) in group 0's state machine; its version is the map's
//! epoch, so every change is a compare-and-set on the previous epoch. The metadata leader
//! computes the map and writes it; every node (voter or learner of group 0) reads it from its
//! own replica and starts the partition groups the map assigns it. Voters are the first
//! [`MAX_META_VOTERS`] members by id; further members follow as learners.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kv_raft::Node as BasicNode;
use kv_ring::{Placement, RingParams};
use kv_storage::{Command, Condition, GroupId, Outcome};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::placement::{group_of, Layout};
use crate::state::AppState;

/// Raft group id of the metadata group.
pub const META_GROUP: GroupId = GroupId(0);
/// Most voters of the metadata group; more members join it as learners.
pub const MAX_META_VOTERS: usize = 5;
const MAP_KEY: &[u8] = b"cluster/map";
/// How often a node re-checks the map and the metadata group's members when no event woke it:
/// the safety net for what no event shows (a former member's replication progress, a
/// partition that elected a leader in the middle of a move, a retry after an error).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often a node checks whether the cluster removed it while it was away.
const REMOVAL_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often a node with a peer listener apart checks that the map has its client address.
const PUBLISH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the metadata group stores under `cluster/map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Member id -> the address its peers reach it at.
    pub members: BTreeMap<u64, String>,
    /// Where clients reach a member whose peer listener is apart (`--listen-peer`); members
    /// absent here serve clients at their member address. Each such member publishes its own
    /// (see `publish_client_addr`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<u64, String>,
    /// Ring parameters and partition -> replicas.
    pub placement: Placement,
    /// How many membership changes led to this map; 0 is the map the cluster was created with,
    /// the only one whose partition groups are initialized (a joining node never initializes a
    /// group: it is brought in by the group's leader).
    #[serde(default)]
    pub generation: u64,
    /// Chosen at random when the cluster is created; a node joining must not belong to
    /// another cluster. (Maps written before it existed get one with their next change.)
    #[serde(default)]
    pub cluster_id: Option<u64>,
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
    let mut epochs = st.epoch_changes();
    let mut meta = MetaWatch::default();
    let mut last_removal_check = tokio::time::Instant::now();
    let mut last_publish_check = None::<tokio::time::Instant>;
    loop {
        // Woken by what the jobs below wait on: the metadata group's leader, term, membership
        // or applied index changing (a new map, a joining member), a map adopted elsewhere
        // (a join, a removal noticed), or the safety-net tick.
        tokio::select! {
            _ = interval.tick() => {}
            _ = epochs.changed() => {}
            _ = meta.changed(&st) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reconcile_once(&st).await {
            tracing::debug!(node = st.config.id, error = %format!("{e:#}"), "metadata reconcile");
        }
        if last_publish_check.is_none_or(|at| at.elapsed() >= PUBLISH_CHECK_EVERY) {
            last_publish_check = Some(tokio::time::Instant::now());
            if let Err(e) = publish_client_addr(&st).await {
                tracing::debug!(node = st.config.id, error = %format!("{e:#}"), "publishing the client address");
            }
        }
        if last_removal_check.elapsed() >= REMOVAL_CHECK_EVERY {
            last_removal_check = tokio::time::Instant::now();
            if let Err(e) = notice_removal(&st).await {
                tracing::debug!(node = st.config.id, error = %format!("{e:#}"), "removal check");
            }
        }
    }
}

/// The metadata group's metrics, seen only through what the reconcile loop acts on: a
/// heartbeat or a replication ack changes the metrics too, and must not wake it.
#[derive(Default)]
struct MetaWatch {
    metrics: Option<tokio::sync::watch::Receiver<kv_raft::Metrics>>,
    seen: Option<MetaState>,
}

/// What of the metadata group's state the reconcile loop acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaState {
    leader: Option<u64>,
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

/// A node the cluster removed while it was down (or cut off) never hears of it through group 0:
/// the leader stopped replicating to it. So a node compares its map with the metadata leader's
/// (or, with no leader known, any member's) now and then; if that map is newer and leaves it
/// out, it adopts it, stops counting itself a member and drops its partitions.
async fn notice_removal(st: &AppState) -> anyhow::Result<()> {
    let me = st.config.id;
    let Some(mine) = st.epoch() else {
        return Ok(());
    };
    if !st.layout().members.contains_key(&me) {
        return Ok(());
    }
    let leader = st
        .host
        .group(META_GROUP)
        .and_then(|g| g.leader())
        .filter(|(id, _)| *id != me)
        .map(|(_, addr)| addr);
    let layout = st.layout();
    let peers: Vec<String> = match leader {
        Some(addr) => vec![addr],
        None => layout
            .members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, a)| a.clone())
            .collect(),
    };
    for addr in peers {
        let answer = st
            .http
            .get(st.peer_url(&addr, "/internal/v1/map"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        let Ok(theirs) = answer.json::<kv_client::api::MapSummary>().await else {
            continue;
        };
        let Some(epoch) = theirs.epoch.filter(|e| *e > mine) else {
            continue;
        };
        if theirs.members.iter().any(|m| m.id == me) {
            // Still a member: group 0 brings the newer map here soon enough.
            return Ok(());
        }
        let members: BTreeMap<u64, String> =
            theirs.members.into_iter().map(|m| (m.id, m.addr)).collect();
        let params = RingParams {
            partitions: theirs.partitions,
            replication_factor: theirs.replication_factor,
            vnodes: theirs.vnodes,
        };
        let layout = Layout::compute(members, params)?;
        tracing::warn!(
            node = me,
            epoch,
            "the cluster removed this node while it was away; dropping its partitions"
        );
        st.set_layout(layout, epoch);
        return Ok(());
    }
    Ok(())
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
    crate::moves::reconcile(st).await;
    Ok(())
}

/// Duties of the metadata leader.
async fn lead(st: &AppState, group: &kv_raft::Group) -> anyhow::Result<()> {
    let current = local_map(st).await?;
    let (epoch, map) = match current {
        Some(current) => current,
        None => {
            let params: RingParams = st.config.ring;
            let layout = Layout::compute(st.config.initial_cluster.clone(), params)?;
            let map = ClusterMap {
                members: layout.members,
                placement: layout.placement,
                clients: BTreeMap::new(),
                generation: 0,
                cluster_id: Some(rand::random()),
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
                tracing::debug!(id, error = %e, "adding metadata learner");
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
        let has_map = status
            .replication
            .as_ref()
            .and_then(|r| r.get(id).copied().flatten())
            .is_some_and(|matched| matched >= epoch);
        if has_map {
            continue;
        }
        let down = match status.nodes.get(id) {
            Some(addr) => !crate::peers::answers_health(st, addr).await,
            None => true,
        };
        former_pending |= !down;
    }
    if former_pending {
        return Ok(());
    }
    let desired: BTreeSet<u64> = meta_voters(&map.members).into_keys().collect();
    if !desired.contains(&st.config.id) {
        // This node is leaving the voters: hand leadership to one that stays, so the group
        // does not wait out an election after the change.
        let status = group.status().await;
        let staying = desired
            .iter()
            .find(|id| voters.contains(id) && crate::leadership::keeps_up(&status, **id));
        if let Some(to) = staying {
            match group.transfer_leader(*to).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(to, error = %e, "metadata leadership handover failed"),
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
    let former: BTreeSet<u64> = learners
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
    let layout = Layout::new(
        map.members.clone(),
        map.placement.clone(),
        map.clients.clone(),
    );
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
        if map.generation > 0 {
            continue;
        }
        let members: BTreeMap<u64, BasicNode> = layout
            .replicas(p)
            .into_iter()
            .filter_map(|id| layout.addr(id).map(|a| (id, BasicNode::new(a))))
            .collect();
        // A new partition is initialized by its target leader alone: openraft's initialize
        // campaigns at once, the other replicas open the group when its vote request arrives
        // (see `peer_api`), and the first election lands on the target, so a fresh cluster
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
    if map.members.contains_key(&me) {
        tracing::info!(
            node = me,
            epoch,
            partitions = layout.partitions_of(me).len(),
            "adopted cluster map"
        );
    } else {
        tracing::warn!(
            node = me,
            epoch,
            "this node was removed from the cluster; once its partitions are dropped it may be stopped"
        );
    }
    if let Some(id) = map.cluster_id {
        st.set_cluster_id(id);
    }
    st.set_layout(layout, epoch);
    Ok(())
}

/// Whether `addr` looks like `host:port`: printable, at most 255 bytes, a numeric port.
pub fn valid_addr(addr: &str) -> bool {
    addr.len() <= 255
        && addr.bytes().all(|b| b.is_ascii_graphic())
        && addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// On the metadata leader: add member `id` at `addr` (and, with a peer listener apart, serving
/// clients at `client_addr`) by writing a new map (epoch + 1) with a placement recomputed over
/// the new member set. Idempotent for the same id and address; for a member already there, a
/// new `client_addr` is recorded (that is how a member publishes it).
pub async fn add_member(
    st: &AppState,
    id: u64,
    addr: &str,
    client_addr: Option<&str>,
) -> Result<u64, ApiError> {
    if id == 0 || !valid_addr(addr) || !client_addr.is_none_or(valid_addr) {
        return Err(ApiError::bad_request(
            "invalid_member",
            format!("a member needs a positive id and host:port addresses, got {id} at {addr:?}"),
        ));
    }
    let taken = |a: &String| ApiError::Conflict {
        code: "member_exists",
        message: format!("node {id} is already a member at {a}"),
    };
    let current = local_map(st).await.ok().flatten();
    let members = current
        .as_ref()
        .map(|(_, m)| m.members.clone())
        .unwrap_or_default();
    let known = match members.get(&id) {
        Some(a) if a != addr => return Err(taken(a)),
        Some(_) => true,
        None => false,
    };
    if let Some((other, _)) = members.iter().find(|(m, a)| **m != id && *a == addr) {
        return Err(ApiError::Conflict {
            code: "address_in_use",
            message: format!("{addr} is the address of member {other}"),
        });
    }
    if !known {
        check_identity(st, id, addr, current.and_then(|(_, m)| m.cluster_id)).await?;
    }
    // Where clients reach it: recorded only when it differs from the member address.
    let serves_clients_at = client_addr.filter(|c| *c != addr);
    let epoch = change_members(st, |map| {
        let mut next = map.clone();
        match map.members.get(&id) {
            Some(a) if a != addr => return Err(taken(a)),
            Some(_) if map.clients.get(&id).map(String::as_str) == serves_clients_at => {
                return Ok(None)
            }
            _ => {}
        }
        next.members.insert(id, addr.to_string());
        match serves_clients_at {
            Some(c) => next.clients.insert(id, c.to_string()),
            None => next.clients.remove(&id),
        };
        Ok(Some(next))
    })
    .await?;
    tracing::info!(id, addr, client_addr, epoch, "member added or updated");
    Ok(epoch)
}

/// A node asking to join must be who it says: the node answering at `addr` must have id `id`
/// and must not belong to another cluster. (A node may not claim a member's address, and a
/// typo must not become a member that partitions move to and never reach.)
async fn check_identity(
    st: &AppState,
    id: u64,
    addr: &str,
    cluster: Option<u64>,
) -> Result<(), ApiError> {
    let Some(found) = crate::peers::identity(st, addr).await else {
        return Err(ApiError::bad_request(
            "invalid_member",
            format!("no kv node answers at {addr}; start it (with --join) before adding it"),
        ));
    };
    if found.node != id {
        return Err(ApiError::Conflict {
            code: "identity_mismatch",
            message: format!("the node at {addr} is node {}, not node {id}", found.node),
        });
    }
    if let (Some(theirs), Some(ours)) = (found.cluster_id, cluster) {
        if theirs != ours {
            return Err(ApiError::Conflict {
                code: "other_cluster",
                message: format!("the node at {addr} belongs to another cluster ({theirs:016x})"),
            });
        }
    }
    Ok(())
}

/// On the metadata leader: remove member `id` by writing a map without it, so its partitions
/// are re-replicated onto the others before it leaves their groups. Without `force` the node
/// must be up (it drains); `force` removes a dead node, re-replicating from the survivors.
/// Refuses to leave fewer members than the replication factor.
pub async fn remove_member(st: &AppState, id: u64, force: bool) -> Result<u64, ApiError> {
    if !force {
        let addr = local_map(st)
            .await
            .ok()
            .flatten()
            .and_then(|(_, map)| map.members.get(&id).cloned());
        if let Some(addr) = addr {
            if !crate::peers::answers_health(st, &addr).await {
                return Err(ApiError::Conflict {
                    code: "node_unreachable",
                    message: format!(
                        "node {id} does not answer at {addr}, so it cannot drain; remove a dead node with ?force=true"
                    ),
                });
            }
        }
    }
    // Partitions move onto the remaining members: they must all be up, or those moves stall.
    let others: Vec<(u64, String)> = local_map(st)
        .await
        .ok()
        .flatten()
        .map(|(_, map)| map.members.into_iter().filter(|(m, _)| *m != id).collect())
        .unwrap_or_default();
    for (other, addr) in &others {
        if !crate::peers::answers_health(st, addr).await {
            return Err(ApiError::Conflict {
                code: "member_unreachable",
                message: format!(
                    "node {other} does not answer at {addr}, and partitions of node {id} would move onto it; bring it back, or remove it first"
                ),
            });
        }
    }
    let epoch = change_members(st, |map| {
        let members = &map.members;
        if !members.contains_key(&id) {
            return Err(ApiError::NotFound {
                code: "not_member",
                message: format!("node {id} is not a member of the cluster"),
            });
        }
        let rf = st.layout().placement.params().replication_factor as usize;
        if members.len() - 1 < rf {
            return Err(ApiError::Conflict {
                code: "too_few_members",
                message: format!(
                    "removing node {id} would leave {} members for a replication factor of {rf}; add a replacement first",
                    members.len() - 1
                ),
            });
        }
        let mut next = map.clone();
        next.members.remove(&id);
        next.clients.remove(&id);
        Ok(Some(next))
    })
    .await?;
    tracing::info!(
        id,
        force,
        epoch,
        "member removed from the map; its partitions will move"
    );
    Ok(epoch)
}

/// Compare-and-set the map's member set on the metadata leader: `plan` sees the current map
/// and returns the next one's members and client addresses (`None`: nothing to change). The
/// placement is recomputed over the new members. Returns the epoch of the resulting map.
async fn change_members<F>(st: &AppState, mut plan: F) -> Result<u64, ApiError>
where
    F: FnMut(&ClusterMap) -> Result<Option<ClusterMap>, ApiError>,
{
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| ApiError::unavailable("no metadata group here"))?;
    for _ in 0..5 {
        group.read_barrier().await?;
        let (epoch, map) = local_map(st)
            .await
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))?
            .ok_or_else(|| ApiError::unavailable("no cluster map yet"))?;
        let Some(planned) = plan(&map)? else {
            return Ok(epoch);
        };
        let layout = Layout::compute(planned.members, map.placement.params())
            .map_err(|e| ApiError::bad_request("invalid_member", format!("{e:#}")))?;
        let next = ClusterMap {
            clients: planned
                .clients
                .into_iter()
                .filter(|(id, _)| layout.members.contains_key(id))
                .collect(),
            members: layout.members,
            placement: layout.placement,
            generation: map.generation + 1,
            cluster_id: map.cluster_id.or_else(|| Some(rand::random())),
        };
        let value = serde_json::to_vec(&next).map_err(|e| ApiError::Internal(e.to_string()))?;
        let cmd = Command::Put {
            key: MAP_KEY.to_vec(),
            value,
            cond: Condition::Version(epoch),
        };
        match group.write(cmd).await? {
            (Outcome::Written { version }, _) => return Ok(version),
            // Someone else changed the map first: plan again on the new one.
            (Outcome::PreconditionFailed { .. }, _) => continue,
            (other, _) => {
                return Err(ApiError::Internal(format!(
                    "unexpected outcome writing the cluster map: {other:?}"
                )))
            }
        }
    }
    Err(ApiError::unavailable(
        "the cluster map kept changing; retry",
    ))
}

/// What this node asks to be added as.
fn join_request(st: &AppState) -> kv_client::api::JoinRequest {
    let config = &st.config;
    kv_client::api::JoinRequest {
        id: config.id,
        addr: config.peer_advertise.clone(),
        client_addr: config
            .listen_peer
            .is_some()
            .then(|| config.advertise.clone()),
    }
}

/// A member with a peer listener apart makes sure the map says where clients reach it (kv-client
/// routes by those addresses): when the map it adopted says otherwise, it asks the metadata
/// leader to record its client address, as a join of a member already there.
async fn publish_client_addr(st: &AppState) -> anyhow::Result<()> {
    let config = &st.config;
    let layout = st.layout();
    if config.listen_peer.is_none()
        || st.epoch().is_none()
        || layout.addr(config.id) != Some(config.peer_advertise.as_str())
        || layout.client_addr(config.id) == Some(config.advertise.as_str())
    {
        return Ok(());
    }
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| anyhow::anyhow!("no metadata group"))?;
    let request = join_request(st);
    if group.is_leader() {
        add_member(
            st,
            request.id,
            &request.addr,
            request.client_addr.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(());
    }
    let Some((_, leader)) = group.leader() else {
        return Ok(());
    };
    let answer = st
        .http
        .post(st.peer_url(&leader, "/v1/cluster/nodes"))
        .timeout(st.config.raft.request_timeout)
        .json(&request)
        .send()
        .await?;
    if !answer.status().is_success() {
        anyhow::bail!("the metadata leader answered {}", answer.status());
    }
    tracing::info!(client_addr = %config.advertise, "published this node's client address");
    Ok(())
}

/// For a node started with `--join`: ask the cluster to add it, until it has.
pub async fn join_loop(st: AppState, via: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let body = join_request(&st);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = st
            .http
            .post(st.peer_url(&via, "/v1/cluster/nodes"))
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
