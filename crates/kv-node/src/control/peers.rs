//! Talking to the other members outside Raft: is a node up, and what does each member see.

use std::time::Duration;

use kv_ring::{NodeId, PartitionId};

use crate::layout::{group_of, META_GROUP};
use crate::state::AppState;
use crate::wire::{GroupView, NodeView, ReplicaRole, VIEW_PATH};

/// Whether a kv node answers `GET /health` at `addr` within a second.
pub(crate) async fn answers_health(st: &AppState, addr: &str) -> bool {
    st.http
        .get(st.peer_url(addr, "/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Who a node says it is, in its `/health` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) node: NodeId,
    pub(crate) cluster_id: Option<u64>,
}

/// The identity of the kv node answering `GET /health` at `addr` within a second.
pub(crate) async fn identity(st: &AppState, addr: &str) -> Option<Identity> {
    let answer = st
        .http
        .get(st.peer_url(addr, "/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let health: kv_client::api::Health = answer.json().await.ok()?;
    let cluster_id = match health.cluster_id.as_deref() {
        None => None,
        Some(hex) => Some(u64::from_str_radix(hex, 16).ok()?),
    };
    Some(Identity {
        node: NodeId(health.node),
        cluster_id,
    })
}

/// What every other member of the map sees (`/internal/v1/view`), asked concurrently;
/// members that do not answer within two seconds are left out (a loaded node's groups answer
/// slowly).
pub(crate) async fn member_views(st: &AppState) -> Vec<NodeView> {
    let layout = st.layout();
    let peers: Vec<&String> = layout
        .members
        .iter()
        .filter(|(id, _)| **id != st.config.id)
        .map(|(_, addr)| addr)
        .collect();
    let answers = futures::future::join_all(peers.iter().map(|addr| async move {
        let answer = st
            .http
            .get(st.peer_url(addr, VIEW_PATH))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        answer.json::<NodeView>().await.ok()
    }))
    .await;
    answers.into_iter().flatten().collect()
}

/// The metadata group's leader and its address: as this node's replica of group 0 knows it, or
/// else as the members report it (the leader of the highest term any of them reports). A node
/// that left group 0 (a leaving node holding the map that removed it) never hears of a leader
/// again, yet still has moves to confirm and requests to relay until its partitions are gone.
pub(crate) async fn metadata_leader(st: &AppState) -> Option<(NodeId, String)> {
    if let Some(leader) = st.host.group(META_GROUP).and_then(|g| g.leader()) {
        return Some(leader);
    }
    let views = member_views(st).await;
    let leader = leading_view(&views, None)?.0.node;
    let addr = st.layout().members.get(&leader)?.clone();
    Some((leader, addr))
}

/// Among `views`, the one whose node leads the group of `partition` (`None`: the metadata
/// group) in the highest term any of them reports, with that group's part of it: the group's
/// current leader, as far as the members know.
pub(crate) fn leading_view(
    views: &[NodeView],
    partition: Option<u32>,
) -> Option<(&NodeView, &GroupView)> {
    views
        .iter()
        .filter_map(|v| {
            v.groups
                .iter()
                .find(|g| g.partition == partition && g.role == ReplicaRole::Leader)
                .map(|g| (v, g))
        })
        .max_by_key(|(_, g)| g.term)
}

/// What this node sees: the metadata group and every partition of its map (those it does not
/// host with role `none`), and the moves it runs. The hosted groups' states are asked for all
/// at once (each is a round trip to its Raft core, for the commit index), so the view takes
/// about as long as the slowest group's answer.
pub(crate) async fn own_view(st: &AppState) -> NodeView {
    let layout = st.layout();
    let meta = async {
        match st.host.group(META_GROUP) {
            Some(g) => {
                let s = g.status().await;
                let voters = s.voters.clone();
                Some(group_view(None, voters, s))
            }
            None => None,
        }
    };
    let partitions =
        futures::future::join_all((0..layout.partitions()).map(PartitionId).map(|p| {
            // Replicas in the map's (ring) order.
            let replicas = layout.replicas(p);
            let group = st.host.group(group_of(p));
            async move {
                match group {
                    Some(g) => group_view(Some(p.0), replicas, g.status().await),
                    None => GroupView {
                        partition: Some(p.0),
                        replicas,
                        voters: Vec::new(),
                        learners: Vec::new(),
                        leader: None,
                        term: 0,
                        role: ReplicaRole::None,
                        last_log_index: None,
                        commit_index: None,
                        applied_index: None,
                        replication: None,
                    },
                }
            }
        }));
    let (meta, partitions) = futures::future::join(meta, partitions).await;
    NodeView {
        node: st.config.id,
        epoch: st.epoch(),
        groups: meta.into_iter().chain(partitions).collect(),
        moves: st.moves.status(st.config.id),
    }
}

fn group_view(partition: Option<u32>, replicas: Vec<NodeId>, s: kv_raft::GroupStatus) -> GroupView {
    GroupView {
        partition,
        replicas,
        voters: s.voters,
        learners: s.learners,
        leader: s.leader,
        term: s.term,
        role: s.role.into(),
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        replication: s.replication,
    }
}
