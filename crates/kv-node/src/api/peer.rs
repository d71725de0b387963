//! Peer routes: `POST /raft/{group}/{rpc}` carries openraft RPCs between nodes (see
//! `kv_raft::Transport` for the wire format), and `POST /internal/v1/kv/batch` (or, one at a
//! time, `POST /internal/v1/kv`) key operations a node forwards to the one that can serve them
//! (see [`crate::wire`] and `crate::routing::channel`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use kv_raft::GroupId;
use kv_raft::{GroupError, RpcKind};

use crate::api::body::read_limited;
use crate::api::extract::PathParams;
use crate::error::ApiError;
use crate::layout::partition_of_group;
use crate::routing::channel::{frame, relayed_header};
use crate::state::AppState;
use crate::wire::{Forwarded, KeyOp};
use crate::wire::{OpAnswer, OpBatch, MAX_BATCH_OPS};

/// Most bytes a peer RPC may carry: a replication batch (256 KiB of entries, or one entry of a
/// largest value) or a snapshot chunk (1 MiB), with room for their framing.
pub fn peer_body_limit(st: &AppState) -> usize {
    st.config.max_value_bytes.max(1 << 20) + (1 << 20)
}

pub async fn raft_rpc(
    State(st): State<AppState>,
    PathParams((group, rpc)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let group: GroupId = group
        .parse()
        .map(GroupId)
        .map_err(|_| ApiError::bad_request("invalid_group", format!("bad group id {group:?}")))?;
    let kind = RpcKind::parse(&rpc).ok_or_else(|| ApiError::NotFound {
        code: "no_route",
        message: format!("unknown raft rpc {rpc:?}"),
    })?;
    // The group first, the body after: nothing is read for a group this node does not host.
    open_if_assigned(&st, group).await?;
    if st.host.group(group).is_none() {
        return Err(unknown_group(&st, group));
    }
    let body = read_limited(
        &headers,
        body,
        peer_body_limit(&st),
        st.config.body_timeout(),
        "peer message",
    )
    .await?;
    count_received(group, kind, body.len());
    match st.host.handle_rpc(group.0, kind, &body).await {
        Ok(bytes) => Ok((StatusCode::OK, bytes).into_response()),
        Err(GroupError::UnknownGroup(g)) => Err(unknown_group(&st, GroupId(g))),
        Err(e) => Err(e.into()),
    }
}

/// `POST /raft/batch`: the calls of every group a peer sends this node at once (see
/// `kv_raft::channel`), each handled as its own `POST /raft/{group}/{rpc}` would be; the
/// answer holds one result per call, in order.
pub async fn raft_batch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A batch is at most 1 MiB of calls, or one call as large as a single request may be.
    let limit = peer_body_limit(&st) + (1 << 20);
    let body = read_limited(
        &headers,
        body,
        limit,
        st.config.body_timeout(),
        "peer batch",
    )
    .await?;
    let prepare = |group: GroupId, kind: RpcKind, len: usize| {
        let st = st.clone();
        async move {
            open_if_assigned(&st, group)
                .await
                .map_err(|e| GroupError::Unavailable(e.to_string()))?;
            count_received(group, kind, len);
            Ok(())
        }
    };
    let answer = kv_raft::channel::serve_batch(&st.host, &body, prepare).await?;
    Ok((StatusCode::OK, answer).into_response())
}

/// What replication moves onto this node: log entries (append) and snapshots, per kind of
/// group. A join's data movement shows up here on the new node.
fn count_received(group: GroupId, kind: RpcKind, len: usize) {
    let groups = if group == crate::layout::META_GROUP {
        "metadata"
    } else {
        "partition"
    };
    metrics::counter!("kv_raft_received_bytes_total", "rpc" => kind.as_str(), "groups" => groups)
        .increment(len as u64);
}

fn unknown_group(st: &AppState, group: GroupId) -> ApiError {
    ApiError::NotFound {
        code: "unknown_group",
        message: format!("group {} is not hosted on node {}", group.0, st.config.id),
    }
}

/// Most bytes of one forwarded operation: a largest value and room for its key and framing.
fn op_limit(st: &AppState) -> usize {
    st.config.max_value_bytes + (64 << 10)
}

/// `POST /internal/v1/kv`: a key operation another node forwarded (postcard
/// [`Forwarded`]); the answer is the one the client gets.
pub async fn forwarded(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_limited(
        &headers,
        body,
        op_limit(&st),
        st.config.body_timeout(),
        "operation",
    )
    .await?;
    serve_forwarded(&st, &body).await
}

/// One forwarded operation, decoded and validated here: what arrives from a peer is checked
/// as a client request would be, and its client's rights with it.
async fn serve_forwarded(st: &AppState, encoded: &[u8]) -> Result<Response, ApiError> {
    serve_decoded(st, Forwarded::decode(encoded)?).await
}

async fn serve_decoded(st: &AppState, forwarded: Forwarded) -> Result<Response, ApiError> {
    forwarded.validate(&st.config, st.layout().partitions())?;
    // The forwarding peer is authenticated (peer routes); the client it names is checked here.
    let access = st.auth.access_of(forwarded.caller.as_deref())?;
    // Refused before anything runs: the forwarding node may send it elsewhere.
    if let Some(sent) = forwarded.epoch {
        crate::api::kv::check_epoch(st, sent, forwarded.op.partition(&st.layout()))?;
    }
    match forwarded.op {
        KeyOp::ScanPage(req) => {
            encoded(&crate::api::kv::scan_page(st, req, forwarded.hops, &access).await?)
        }
        KeyOp::Changes(req) => {
            encoded(&crate::api::watch::changes_page(st, req, forwarded.hops, &access).await?)
        }
        op => crate::api::kv::execute(st, op, forwarded.hops, &access).await,
    }
}

/// `answer` as a forwarding node decodes it (`crate::routing::decode_answer`).
fn encoded<T: serde::Serialize>(answer: &T) -> Result<Response, ApiError> {
    let bytes = postcard::to_stdvec(answer)
        .map_err(|e| ApiError::Internal(format!("encoding an answer: {e}")))?;
    Ok((StatusCode::OK, bytes).into_response())
}

/// `POST /internal/v1/kv/batch`: forwarded operations in one batch (postcard
/// [`OpBatch`]), each run at once and on its own, as if it had come alone (admission
/// included); the answer streams one frame per operation as each finishes (see
/// `crate::routing::channel`). A batch that does not decode or holds too many operations is refused
/// whole.
pub async fn forwarded_batch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = op_limit(&st).max(1 << 20) + (64 << 10);
    let body = read_limited(&headers, body, limit, st.config.body_timeout(), "batch").await?;
    let batch: OpBatch = postcard::from_bytes(&body)
        .map_err(|e| ApiError::bad_request("invalid_forward", format!("undecodable batch: {e}")))?;
    if batch.ops.len() > MAX_BATCH_OPS {
        return Err(ApiError::bad_request(
            "invalid_forward",
            format!(
                "{} operations in one batch, at most {MAX_BATCH_OPS}",
                batch.ops.len()
            ),
        ));
    }
    let answers: FuturesUnordered<_> = batch
        .ops
        .into_iter()
        .enumerate()
        .map(|(index, op)| {
            let st = st.clone();
            // A task of its own: the operation finishes even if the batch's connection drops,
            // as a single forwarded request's handler would.
            tokio::spawn(async move {
                let resp = match Forwarded::decode(&op) {
                    Err(e) => e.into_response(),
                    Ok(forwarded) => {
                        // A blocking read (a watch's read of changes too) mostly waits: it
                        // takes room of its own kind.
                        let permit = match forwarded.op {
                            KeyOp::WaitGet { .. } | KeyOp::Changes(_) => st.admission.try_wait(),
                            _ => st.admission.try_forwarded(),
                        };
                        match permit {
                            Ok(_permit) => serve_decoded(&st, forwarded)
                                .await
                                .unwrap_or_else(IntoResponse::into_response),
                            Err(e) => e.into_response(),
                        }
                    }
                };
                answer_frame(index as u32, resp).await
            })
        })
        .collect();
    let frames = answers.map(|joined| match joined {
        Ok(frame) => frame,
        Err(e) => Err(std::io::Error::other(format!(
            "a forwarded operation failed: {e}"
        ))),
    });
    Ok(Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|e| ApiError::Internal(format!("a batch answer: {e}")).into_response()))
}

/// `resp` as the frame of operation `index` in a batch answer.
async fn answer_frame(index: u32, resp: Response) -> std::io::Result<Bytes> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(std::io::Error::other)?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| relayed_header(name.as_str()))
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec().into()))
        .collect();
    frame(&OpAnswer {
        index,
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
    })
    .map_err(std::io::Error::other)
}

/// Open a partition group this node is a replica of but has not opened yet: the first vote
/// request of a new partition's leader can arrive before this node has adopted the map that
/// creates it. Groups the current map does not assign here stay closed (404).
async fn open_if_assigned(st: &AppState, group: GroupId) -> Result<(), ApiError> {
    if let Some(p) = partition_of_group(group) {
        crate::routing::local_group(st, p).await?;
    }
    Ok(())
}
