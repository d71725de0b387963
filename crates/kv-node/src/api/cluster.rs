//! Cluster routes: `GET /v1/cluster`, `/v1/cluster/routes`, `/health`, `/ready`, `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kv_client::api::{
    ClusterStatus, GroupStatus, LearnerProgress, LeaveResult, MapSummary, Member, MoveStatus,
    PartitionRoute, Routes,
};
use kv_ring::{NodeId, PartitionId};
use serde_json::json;

use crate::api::extract::{Params, PathParams};
use crate::auth::{Access, Caller, PeerProof, Role};
use crate::control;
use crate::control::peers::own_view;
use crate::error::ApiError;
use crate::layout::{group_of, partition_of_group};
use crate::state::AppState;
use crate::wire::{GroupView, MoveView, NodeView, PeerMap, ReplicaRole};

#[derive(Debug, Default, serde::Deserialize)]
pub struct StatusParams {
    /// `local`: only what this node sees, without asking peers.
    scope: Option<String>,
}

/// `GET /v1/cluster`: members, ring parameters, every partition's replicas with its Raft
/// state (leader, term, indexes), and the partition moves in flight. Partitions this node does
/// not host are filled in from the replicas that do, and moves are gathered from every member
/// (each asked for its view), so any node gives the whole picture.
pub(super) async fn status(
    State(st): State<AppState>,
    Params(params): Params<StatusParams>,
) -> Json<ClusterStatus> {
    let view = match params.scope.as_deref() {
        Some("local") => own_view(&st).await,
        _ => cluster_view(&st).await,
    };
    Json(public_status(&st, view))
}

/// `GET /internal/v1/view`: what this node sees, for its peers (status, drains, removals).
pub(super) async fn view(State(st): State<AppState>) -> Json<NodeView> {
    Json(own_view(&st).await)
}

/// The whole cluster as this node can see it: its own groups, the other groups from the
/// replicas that host them, and every member's moves.
async fn cluster_view(st: &AppState) -> NodeView {
    let mut status = own_view(st).await;
    let seen = crate::control::peers::member_views(st).await;
    for g in status
        .groups
        .iter_mut()
        .filter(|g| g.role == ReplicaRole::None)
    {
        // Prefer the replica that leads the partition; else the one with the highest term.
        let best = seen
            .iter()
            .filter_map(|s| {
                s.groups
                    .iter()
                    .find(|r| r.partition == g.partition && r.role != ReplicaRole::None)
            })
            .max_by_key(|r| (r.role == ReplicaRole::Leader, r.term));
        if let Some(r) = best {
            let replicas = std::mem::take(&mut g.replicas);
            *g = GroupView {
                // This node's role (none) and the map as this node routes by, not as the peer
                // does; this node does not replicate the partition, the rest is the replicas'.
                role: g.role,
                replicas,
                replication: None,
                ..r.clone()
            };
        }
    }
    // A move is reported by the leader running it; after a leader change two nodes may both
    // list one for a moment: keep the newer map's.
    let mut moves: std::collections::BTreeMap<u32, MoveView> = std::collections::BTreeMap::new();
    for m in seen
        .into_iter()
        .flat_map(|s| s.moves)
        .chain(std::mem::take(&mut status.moves))
    {
        match moves.get(&m.partition) {
            Some(have) if have.epoch >= m.epoch => {}
            _ => {
                moves.insert(m.partition, m);
            }
        }
    }
    status.moves = moves.into_values().collect();
    status
}

/// Node ids as the public documents (`kv_client::api`) spell them.
fn numbers(ids: Vec<NodeId>) -> Vec<u64> {
    ids.into_iter().map(u64::from).collect()
}

/// The public status document of `view`, with the map this node routes by.
fn public_status(st: &AppState, view: NodeView) -> ClusterStatus {
    let map = map_summary(st);
    ClusterStatus {
        node: view.node.0,
        members: map.members,
        partitions: map.partitions,
        replication_factor: map.replication_factor,
        vnodes: map.vnodes,
        epoch: view.epoch,
        groups: view
            .groups
            .into_iter()
            .map(|g| GroupStatus {
                partition: g.partition,
                replicas: numbers(g.replicas),
                voters: numbers(g.voters),
                learners: numbers(g.learners),
                leader: g.leader.map(u64::from),
                term: g.term,
                role: g.role.as_str().to_string(),
                last_log_index: g.last_log_index,
                commit_index: g.commit_index,
                applied_index: g.applied_index,
                replication: g
                    .replication
                    .map(|r| r.into_iter().map(|(id, i)| (id.0, i)).collect()),
            })
            .collect(),
        moves: view
            .moves
            .into_iter()
            .map(|m| MoveStatus {
                partition: m.partition,
                node: m.node.0,
                epoch: m.epoch,
                from: numbers(m.from),
                to: numbers(m.to),
                phase: m.phase.as_str().to_string(),
                learners: m
                    .learners
                    .into_iter()
                    .map(|(node, matched, target)| LearnerProgress {
                        node: node.0,
                        matched,
                        target,
                    })
                    .collect(),
                elapsed_ms: m.elapsed_ms,
            })
            .collect(),
    }
}

/// `GET /v1/cluster/routes`: each partition's replicas and, where this node hosts it, its
/// leader, with the members' client addresses. Cheap (the map and the groups' last metrics,
/// no Raft round trip): clients fetch it when a route misses, and a `421` carries it.
pub async fn routes(State(st): State<AppState>) -> Json<Routes> {
    Json(route_table(&st))
}

/// The routes of the map this node routes by.
pub fn route_table(st: &AppState) -> Routes {
    let layout = st.layout();
    let partitions = (0..layout.partitions())
        .map(PartitionId)
        .map(|p| PartitionRoute {
            partition: p.0,
            leader: st
                .host
                .group(group_of(p))
                .and_then(|g| g.leader())
                .map(|(id, _)| id.0),
            replicas: numbers(layout.replicas(p)),
        })
        .collect();
    let members = layout
        .members
        .iter()
        .map(|(id, addr)| (id.0, layout.client_addr(*id).unwrap_or(addr).to_string()))
        .collect();
    Routes {
        epoch: st.epoch().unwrap_or(0),
        partitions,
        members,
    }
}

/// `GET /v1/cluster/map`: the map this node routes by, in short, with the addresses clients
/// reach the members at. Cheap: clients poll it to compare epochs.
pub(super) async fn map(State(st): State<AppState>) -> Json<MapSummary> {
    Json(map_summary(&st))
}

/// `GET /internal/v1/map`: the map with the addresses peers reach the members at.
pub(super) async fn peer_map(State(st): State<AppState>) -> Json<PeerMap> {
    let layout = st.layout();
    Json(PeerMap {
        epoch: st.epoch(),
        members: layout.members.clone(),
        ring: layout.placement.params(),
    })
}

/// The map this node routes by, in short, for clients.
fn map_summary(st: &AppState) -> MapSummary {
    let layout = st.layout();
    let params = layout.placement.params();
    MapSummary {
        epoch: st.epoch(),
        members: layout
            .members
            .iter()
            .map(|(id, addr)| Member {
                id: id.0,
                addr: layout.client_addr(*id).unwrap_or(addr).to_string(),
            })
            .collect(),
        partitions: params.partitions,
        replication_factor: params.replication_factor,
        vnodes: params.vnodes,
    }
}

/// `GET /health`: the process is up and serving HTTP.
pub async fn health(State(st): State<AppState>) -> Json<kv_client::api::Health> {
    Json(kv_client::api::Health {
        status: "ok".into(),
        node: st.config.id.0,
        cluster_id: st.cluster_id().map(|id| format!("{id:016x}")),
    })
}

/// `GET /ready`: every partition this node hosts has a known leader.
pub async fn ready(State(st): State<AppState>) -> Response {
    if st.epoch().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "error": "not_ready",
                "message": "waiting for the cluster map from the metadata group",
            })),
        )
            .into_response();
    }
    if !st.layout().members.contains_key(&st.config.id) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": "removed",
                "message": format!("node {} was removed from the cluster; it serves no partition", st.config.id),
            })),
        )
            .into_response();
    }
    let down: Vec<String> = st
        .host
        .failures()
        .into_iter()
        .filter(|f| f.down)
        .map(|f| format!("{}: {}", f.group, f.error))
        .collect();
    if !down.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "error": "not_ready",
                "message": format!("raft stopped in {} groups; restarting them", down.len()),
                "failed_groups": down,
            })),
        )
            .into_response();
    }
    let groups: Vec<_> = st
        .host
        .groups()
        .into_iter()
        .filter(|g| g.id() != crate::layout::META_GROUP)
        .collect();
    let waiting: Vec<u64> = groups
        .iter()
        .filter(|g| g.leader().is_none())
        .filter_map(|g| partition_of_group(g.id()).map(|p| u64::from(p.0)))
        .collect();
    let expected = st.layout().partitions_of(st.config.id).len();
    if waiting.is_empty() && groups.len() >= expected {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "node": st.config.id, "partitions": groups.len()})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "error": "not_ready",
                "message": format!("{} hosted partitions have no leader yet", waiting.len().max(expected.saturating_sub(groups.len()))),
                "partitions_without_leader": waiting,
            })),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let (mut leaders, mut quiet) = (0u64, 0u64);
    for g in st.host.groups() {
        if g.id() != crate::layout::META_GROUP && g.is_leader() {
            leaders += 1;
            quiet += u64::from(g.is_quiesced());
        }
    }
    metrics::gauge!("kv_partitions_quiet").set(quiet as f64);
    metrics::gauge!("kv_partitions_hosted").set(st.host.groups().len().saturating_sub(1) as f64);
    metrics::gauge!("kv_cluster_map_epoch").set(st.epoch().unwrap_or(0) as f64);
    metrics::gauge!("kv_partitions_led").set(leaders as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// `POST /v1/cluster/nodes` `{"id":..,"addr":..}`: add a member. The metadata leader writes a new
/// partition map; the answer (200, with the new epoch) comes once the map is stored, and
/// partitions then move in the background (see `moves` in `/v1/cluster`).
pub async fn join(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<kv_client::api::JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|r| ApiError::bad_request("invalid_json", r.body_text()))?;
    let id = NodeId(req.id);
    let access = join_access(&caller, id)?;
    if let Some(addr) = meta_leader_elsewhere(&st).await? {
        let body = serde_json::to_vec(&req).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        return crate::routing::relay(
            &st,
            &addr,
            axum::http::Method::POST,
            "/v1/cluster/nodes",
            headers,
            body.into(),
            &access,
        )
        .await;
    }
    let epoch = control::add_member(&st, id, &req.addr, req.client_addr.as_deref()).await?;
    Ok(Json(json!({"id": req.id, "addr": req.addr, "epoch": epoch})).into_response())
}

/// Who may add node `id`: an admin client; the node itself, proving it with its node
/// certificate; or a member peer relaying the node's own request (when no client is named).
fn join_access(caller: &Caller, id: NodeId) -> Result<Access, ApiError> {
    let admin = caller.access(Role::Admin);
    if admin.is_ok() {
        return admin;
    }
    let itself = matches!(caller.peer, PeerProof::Stranger(n) | PeerProof::Member(n) if n == id);
    let relayed = caller.client.is_none()
        && matches!(
            caller.peer,
            PeerProof::Member(_) | PeerProof::Token | PeerProof::Unguarded
        );
    if itself || relayed {
        return Ok(Access::All);
    }
    admin
}

/// The metadata leader's address when it is another node; `None` when this node leads. Found
/// through the members when this node's replica knows no leader (see
/// `control::peers::metadata_leader`), so a request does the same whichever node it reaches.
async fn meta_leader_elsewhere(st: &AppState) -> Result<Option<String>, ApiError> {
    let group = st.host.group(crate::layout::META_GROUP);
    if group.is_some_and(|g| g.is_leader()) {
        return Ok(None);
    }
    match crate::control::peers::metadata_leader(st).await {
        Some((id, addr)) if id != st.config.id => Ok(Some(addr)),
        _ => Err(ApiError::unavailable(
            "the metadata group has no leader yet",
        )),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LeaveParams {
    /// Remove a node that is down: its partitions are re-replicated from the survivors.
    #[serde(default)]
    force: bool,
    /// How long to wait for the drain to finish before answering `202`: a duration (`30s`,
    /// `500ms`, `2m`) or whole seconds (`30`); `0` answers at once. Default 60 s.
    wait: Option<String>,
}

/// How long `DELETE /v1/cluster/nodes/{id}` waits for the drain by default, and at most.
const DEFAULT_LEAVE_WAIT: Duration = Duration::from_secs(60);
const MAX_LEAVE_WAIT: Duration = Duration::from_secs(600);

/// A duration ([`kv_client::api::parse_duration`]), or whole seconds as `?wait=` has always
/// taken them (`wait=0`, `wait=30`).
fn parse_wait(text: &str) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    kv_client::api::parse_duration(text).ok()
}

/// `DELETE /v1/cluster/nodes/{id}[?force=true][&wait=60s]`: remove a member. The metadata leader
/// writes a map without it; partition leaders re-replicate its partitions elsewhere, then drop
/// it from their groups. Answers `200` (`status: removed`) once no group counts the node any
/// more, so it may be stopped, or `202` (`status: draining`, with the partitions left) when
/// `wait` runs out first; repeat the request to keep waiting.
pub async fn leave(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
    Params(params): Params<LeaveParams>,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Admin)?;
    let id: NodeId = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .map(NodeId)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_member", format!("{id:?} is not a node id"))
        })?;
    let wait = match params.wait.as_deref() {
        None => DEFAULT_LEAVE_WAIT,
        Some(text) => parse_wait(text)
            .filter(|w| *w <= MAX_LEAVE_WAIT)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "wait={text:?} is not a duration like 30s or 500ms of at most {}s",
                        MAX_LEAVE_WAIT.as_secs()
                    ),
                )
            })?,
    };
    let removed = match meta_leader_elsewhere(&st).await? {
        // The metadata leader changes the map; this node waits for the drain, so the relayed
        // request does not outlive the forwarding timeout.
        Some(addr) => {
            let path = format!("/v1/cluster/nodes/{id}?force={}&wait=0", params.force);
            let answer = crate::routing::relay(
                &st,
                &addr,
                axum::http::Method::DELETE,
                &path,
                axum::http::HeaderMap::new(),
                bytes::Bytes::new(),
                &access,
            )
            .await?;
            if !answer.status().is_success() {
                return Ok(answer);
            }
            let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
                .await
                .map_err(|e| ApiError::unavailable(format!("metadata leader's answer: {e}")))?;
            let result: LeaveResult = serde_json::from_slice(&body)
                .map_err(|e| ApiError::Internal(format!("metadata leader's answer: {e}")))?;
            Ok(result.epoch)
        }
        None => control::remove_member(&st, id, params.force).await,
    };
    let epoch = match removed {
        Ok(epoch) => epoch,
        // Already out of the map: a repeated request keeps waiting while groups still count it.
        Err(ApiError::NotFound {
            code: "not_member",
            message,
        }) => {
            if !presence(&st, id).await.seen {
                return Err(ApiError::NotFound {
                    code: "not_member",
                    message,
                });
            }
            st.epoch().unwrap_or(0)
        }
        Err(e) => return Err(e),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut epochs = st.epoch_changes();
    let mut endings = st.moves.endings();
    loop {
        let Presence {
            partitions: left,
            metadata,
            ..
        } = presence(&st, id).await;
        let done = left.is_empty() && !metadata;
        if done || tokio::time::Instant::now() >= deadline {
            let body = LeaveResult {
                id: id.0,
                epoch,
                status: if done { "removed" } else { "draining" }.into(),
                remaining: left,
            };
            let status = if done {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            return Ok((status, Json(body)).into_response());
        }
        // Checked again when a new map is adopted or a move of this node's ends; the drain
        // mostly happens on the other nodes' partition leaders, which no event here shows,
        // hence the re-check.
        let recheck = (tokio::time::Instant::now() + LEAVE_RECHECK).min(deadline);
        tokio::select! {
            _ = epochs.changed() => {}
            _ = endings.changed() => {}
            _ = tokio::time::sleep_until(recheck) => {}
        }
    }
}

/// How often a waiting leave request re-checks the groups when nothing here woke it.
const LEAVE_RECHECK: Duration = Duration::from_millis(500);

/// Where node `id` still is a member, as the groups' leaders see it (a removed replica's own
/// view can stay stale forever: the leader stops replicating to it).
#[derive(Debug, Default, PartialEq, Eq)]
struct Presence {
    /// Partitions whose leader counts the node as voter or learner, or that have no leader
    /// anyone reports (unknown counts as present).
    partitions: Vec<u32>,
    /// The metadata group's leader counts it (or no leader is known).
    metadata: bool,
    /// Some leader positively counts it.
    seen: bool,
}

async fn presence(st: &AppState, id: NodeId) -> Presence {
    let mut views = crate::control::peers::member_views(st).await;
    views.push(own_view(st).await);
    let layout = st.layout();
    let mut out = Presence::default();
    let groups = std::iter::once(None).chain((0..layout.partitions()).map(Some));
    for partition in groups {
        let leader_view = crate::control::peers::leading_view(&views, partition).map(|(_, g)| g);
        let counted =
            leader_view.is_some_and(|g| g.voters.contains(&id) || g.learners.contains(&id));
        out.seen |= counted;
        if counted || leader_view.is_none() {
            match partition {
                Some(p) => out.partitions.push(p),
                None => out.metadata = true,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parses_durations_and_whole_seconds_and_refuses_the_rest() {
        assert_eq!(parse_wait("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_wait("0"), Some(Duration::ZERO));
        for bad in ["", "s", "soon", "-1", "ms", "1.2.3s"] {
            assert_eq!(parse_wait(bad), None, "{bad:?}");
        }
    }
}
