//! Peer routes: `POST /raft/{group}/{rpc}` carries openraft RPCs between nodes (see
//! `kv_raft::Transport` for the wire format).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kv_raft::{GroupError, RpcKind};
use kv_storage::GroupId;

use crate::error::ApiError;
use crate::placement::partition_of_group;
use crate::state::AppState;

pub async fn raft_rpc(
    State(st): State<AppState>,
    Path((group, rpc)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let group: u64 = group
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_group", format!("bad group id {group:?}")))?;
    let kind = RpcKind::parse(&rpc).ok_or_else(|| ApiError::NotFound {
        code: "no_route",
        message: format!("unknown raft rpc {rpc:?}"),
    })?;
    // What replication moves onto this node: log entries (append) and snapshots, per kind of
    // group. A join's data movement shows up here on the new node.
    let groups = if group == crate::metadata::META_GROUP.0 {
        "metadata"
    } else {
        "partition"
    };
    metrics::counter!("kv_raft_received_bytes_total", "rpc" => kind.as_str(), "groups" => groups)
        .increment(body.len() as u64);
    open_if_assigned(&st, GroupId(group)).await?;
    match st.host.handle_rpc(group, kind, &body).await {
        Ok(bytes) => Ok((StatusCode::OK, bytes).into_response()),
        Err(GroupError::UnknownGroup(g)) => Err(ApiError::NotFound {
            code: "unknown_group",
            message: format!("group {g} is not hosted on node {}", st.config.id),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Open a partition group this node is a replica of but has not opened yet: the first vote
/// request of a new partition's leader can arrive before this node has adopted the map that
/// creates it. Groups the current map does not assign here stay closed (404).
async fn open_if_assigned(st: &AppState, group: GroupId) -> Result<(), ApiError> {
    if st.host.group(group).is_some() {
        return Ok(());
    }
    let Some(p) = partition_of_group(group) else {
        return Ok(());
    };
    let layout = st.layout();
    if p.0 < layout.partitions() && layout.replicas(p).contains(&st.config.id) {
        st.host.open_group(group).await?;
    }
    Ok(())
}
