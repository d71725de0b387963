//! Cluster routes: `GET /v1/cluster`, `/health`, `/ready`, `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kv_client::api::{ClusterStatus, GroupStatus, Member};
use kv_ring::PartitionId;
use serde_json::json;

use crate::placement::{group_of, partition_of_group};
use crate::state::AppState;

#[derive(Debug, Default, serde::Deserialize)]
pub struct StatusParams {
    /// `local`: only what this node sees, without asking peers.
    scope: Option<String>,
}

/// `GET /v1/cluster`: members, ring parameters, and every partition's replicas with its Raft
/// state (leader, term, indexes). Partitions this node does not host are filled in from the
/// replicas that do (asked with `?scope=local`), so any node gives the whole picture.
pub async fn status(
    State(st): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<StatusParams>,
) -> Json<ClusterStatus> {
    let mut status = local_status(&st).await;
    if params.scope.as_deref() == Some("local") {
        return Json(status);
    }
    let missing: Vec<u32> = status
        .groups
        .iter()
        .filter(|g| g.role == "none")
        .filter_map(|g| g.partition)
        .collect();
    if missing.is_empty() {
        return Json(status);
    }
    let peers: Vec<String> = status
        .members
        .iter()
        .filter(|m| m.id != st.config.id)
        .map(|m| m.addr.clone())
        .collect();
    let answers = futures::future::join_all(peers.iter().map(|addr| {
        st.http
            .get(format!("http://{addr}/v1/cluster?scope=local"))
            .timeout(std::time::Duration::from_secs(1))
            .send()
    }))
    .await;
    let mut seen: Vec<ClusterStatus> = Vec::new();
    for answer in answers.into_iter().flatten() {
        if let Ok(s) = answer.json::<ClusterStatus>().await {
            seen.push(s);
        }
    }
    for g in status.groups.iter_mut().filter(|g| g.role == "none") {
        // Prefer the replica that leads the partition; else the one with the highest term.
        let best = seen
            .iter()
            .filter_map(|s| {
                s.groups
                    .iter()
                    .find(|r| r.partition == g.partition && r.role != "none")
            })
            .max_by_key(|r| (r.role == "leader", r.term));
        if let Some(r) = best {
            let role = std::mem::take(&mut g.role);
            *g = r.clone();
            g.role = if role.is_empty() { "none".into() } else { role };
            // This node does not replicate the partition; the rest is the replicas' view.
            g.replication = None;
        }
    }
    Json(status)
}

async fn local_status(st: &AppState) -> ClusterStatus {
    let layout = st.layout();
    let mut groups = Vec::new();
    if let Some(g) = st.host.group(crate::metadata::META_GROUP) {
        let s = g.status().await;
        let voters = s.voters.clone();
        groups.push(api_status(None, voters, s));
    }
    for p in 0..layout.partitions() {
        let p = PartitionId(p);
        let replicas = layout.replicas(p);
        match st.host.group(group_of(p)) {
            Some(g) => {
                let s = g.status().await;
                // The map's order: preferred leader first.
                groups.push(api_status(
                    partition_of_group(s.group).map(|p| p.0),
                    replicas,
                    s,
                ));
            }
            None => groups.push(GroupStatus {
                partition: Some(p.0),
                replicas,
                voters: Vec::new(),
                learners: Vec::new(),
                leader: None,
                term: 0,
                role: "none".into(),
                last_log_index: None,
                commit_index: None,
                applied_index: None,
                replication: None,
            }),
        }
    }
    let params = layout.placement.params();
    ClusterStatus {
        node: st.config.id,
        members: layout
            .members
            .iter()
            .map(|(id, addr)| Member {
                id: *id,
                addr: addr.clone(),
            })
            .collect(),
        partitions: params.partitions,
        replication_factor: params.replication_factor,
        vnodes: params.vnodes,
        epoch: st.epoch(),
        groups,
    }
}

fn api_status(partition: Option<u32>, replicas: Vec<u64>, s: kv_raft::GroupStatus) -> GroupStatus {
    GroupStatus {
        partition,
        replicas,
        voters: s.voters,
        learners: s.learners,
        leader: s.leader,
        term: s.term,
        role: s.role.to_string(),
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        replication: s.replication,
    }
}

/// `GET /health`: the process is up and serving HTTP.
pub async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "node": st.config.id}))
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
    let groups: Vec<_> = st
        .host
        .groups()
        .into_iter()
        .filter(|g| g.id() != crate::metadata::META_GROUP)
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
    let mut leaders = 0u64;
    for g in st.host.groups() {
        if g.id() != crate::metadata::META_GROUP && g.is_leader() {
            leaders += 1;
        }
    }
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
/// partitions then move in the background (see `/v1/cluster`).
pub async fn join(
    State(st): State<AppState>,
    parts: crate::forward::RequestParts,
    body: Result<Json<kv_client::api::JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, crate::error::ApiError> {
    use crate::error::ApiError;
    use crate::metadata::{add_member, MembershipError, META_GROUP};
    let Json(req) = body.map_err(|r| ApiError::bad_request("invalid_json", r.body_text()))?;
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| ApiError::unavailable("this node has no metadata group yet"))?;
    if !group.is_leader() {
        let (_, addr) = group
            .leader()
            .ok_or_else(|| ApiError::unavailable("the metadata group has no leader yet"))?;
        let body = serde_json::to_vec(&req).map_err(|e| ApiError::Internal(e.to_string()))?;
        return Ok(crate::forward::forward(&st, &addr, &parts.with_body(body.into())).await?);
    }
    match add_member(&st, req.id, &req.addr).await {
        Ok(epoch) => {
            Ok(Json(json!({"id": req.id, "addr": req.addr, "epoch": epoch})).into_response())
        }
        Err(MembershipError::Invalid(m)) => Err(ApiError::bad_request("invalid_member", m)),
        Err(e @ MembershipError::Conflict { .. }) => Err(ApiError::Conflict(e.to_string())),
        Err(MembershipError::Unavailable(m)) => Err(ApiError::unavailable(m)),
    }
}
