//! Request routing: decide whether this node can serve a partition's operation itself, and if
//! not, hand the operation ([`crate::wire::KeyOp`]) to the node that can (the leader, or a
//! replica) over the peer's operation channel ([`channel`]: batched, answers streamed back as
//! each finishes) and relay its answer back unchanged. A hop counter stops loops while views of the
//! leader are stale; a node the operation cannot reach is left out and the operation routed
//! again, within the request timeout.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use kv_raft::{Group, GroupError};
use kv_ring::{NodeId, PartitionId};
use tokio::time::Instant;

use self::channel::{relayed_headers, root_cause, Lost};
use crate::auth::Access;
use crate::error::{ApiError, PeerAnswer};
use crate::layout::group_of;
use crate::state::AppState;
use crate::wire::{Forwarded, KeyOp, MAX_HOPS};

pub(crate) mod channel;

/// What a node does with a request for a partition.
pub enum Route {
    /// Serve it here with this group.
    Local(Group),
    /// Relay it to the first of these nodes `(id, address)` that can be reached.
    Forward(Vec<(NodeId, String)>),
}

/// Where a request for partition `p` should go, leaving out the nodes in `unreachable` (this
/// request found them so). Stale reads are served by any replica; linearizable reads by any
/// replica that reaches the leader (a follower read: see `kv_raft::Group::read_barrier`);
/// writes by the leader. Waits, until `deadline`, while the partition elects a leader; fails
/// at once when this node knows it cannot reach a quorum of the partition's replicas.
pub async fn route(
    st: &AppState,
    p: PartitionId,
    op: &KeyOp,
    deadline: Instant,
    unreachable: &[NodeId],
) -> Result<Route, ApiError> {
    if let Some(group) = local_group(st, p).await? {
        if !op.needs_leader() || group.is_leader() {
            return Ok(Route::Local(group));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        return match group.usable_leader(wait, unreachable).await {
            Ok((id, _)) if id == st.config.id => Ok(Route::Local(group)),
            Ok(_) if op.is_read() => Ok(Route::Local(group)),
            Ok(leader) => Ok(Route::Forward(vec![leader])),
            Err(e) => Err(ApiError::unavailable(format!("partition {}: {e}", p.0))),
        };
    }
    // Not a replica here: send it to the partition's replicas, the ones this node can reach
    // first, the target leader first (where balanced leadership is: one hop, not two); a
    // replica forwards on to the leader.
    let layout = st.layout();
    let peers = st.host.transport().peers();
    let mut candidates: Vec<(NodeId, String)> = layout
        .replicas(p)
        .into_iter()
        .filter(|id| *id != st.config.id && !unreachable.contains(id))
        .filter_map(|id| layout.addr(id).map(|a| (id, a.to_string())))
        .collect();
    let target = layout.target_leader(p);
    candidates.sort_by_key(|(id, _)| (!peers.reachable(*id), Some(*id) != target));
    if candidates.is_empty() {
        return Err(ApiError::unavailable(format!(
            "partition {} has no replica this node can reach",
            p.0
        )));
    }
    Ok(Route::Forward(candidates))
}

/// This node's group of partition `p`: the hosted one, or, if the map this node routes by makes
/// it a replica but it has not opened the group yet (a new cluster, a node that just adopted a
/// map), the group opened now. Forwarding instead would bounce the request between replicas
/// that are all about to host it.
pub async fn local_group(st: &AppState, p: PartitionId) -> Result<Option<Group>, ApiError> {
    let id = group_of(p);
    if let Some(group) = st.host.group(id) {
        return Ok(Some(group));
    }
    let layout = st.layout();
    if p.0 < layout.partitions() && layout.replicas(p).contains(&st.config.id) {
        return Ok(Some(st.host.open_group(id).await?));
    }
    Ok(None)
}

/// What a forwarded operation answers with: relayed as an HTTP answer, or decoded.
pub trait Answer: Sized {
    /// The answer from the peer that served the operation.
    fn from_peer(resp: PeerAnswer) -> Result<Self, ApiError>;
}

/// A peer's answer that is a postcard-encoded `T` (`what` names it in errors); any other
/// status is relayed as it is.
pub fn decode_answer<T: serde::de::DeserializeOwned>(
    resp: PeerAnswer,
    what: &str,
) -> Result<T, ApiError> {
    if resp.status != StatusCode::OK {
        return Err(ApiError::Relayed(Box::new(resp)));
    }
    postcard::from_bytes(&resp.body)
        .map_err(|e| ApiError::Internal(format!("a peer's {what} does not decode: {e}")))
}

impl Answer for Response {
    fn from_peer(resp: PeerAnswer) -> Result<Self, ApiError> {
        let mut response = Response::new(Body::from(resp.body));
        *response.status_mut() = resp.status;
        *response.headers_mut() = resp.headers;
        Ok(response)
    }
}

/// Serve `op` on partition `p`: here with `local` if this node can, else on the node that can.
/// If `local` finds that leadership moved, the operation follows the new leader.
pub async fn serve<T, F, Fut>(
    st: &AppState,
    p: PartitionId,
    op: &KeyOp,
    hops: u32,
    access: &Access,
    mut local: F,
) -> Result<T, ApiError>
where
    T: Answer,
    F: FnMut(Group) -> Fut,
    Fut: Future<Output = Result<T, GroupError>>,
{
    let deadline = Instant::now() + st.config.raft.request_timeout;
    let mut unreachable: Vec<NodeId> = Vec::new();
    let mut misdirected = 0;
    loop {
        // Read before routing: the map routed by is at least this new.
        let epoch = st.epoch();
        let targets = match route(st, p, op, deadline, &unreachable).await? {
            Route::Forward(targets) => targets,
            Route::Local(group) => match local(group).await {
                Ok(answer) => return Ok(answer),
                // A read that found no read index at the leader (a follower read), or that
                // leadership moved: the named node serves it; should it not be reached, the
                // read is routed again (reads may run twice).
                Err(GroupError::NotLeader {
                    leader: Some((id, addr)),
                }) if id != st.config.id && op.is_read() => vec![(id, addr)],
                // A write follows the new leader once: it may have been proposed here.
                Err(GroupError::NotLeader {
                    leader: Some((id, addr)),
                }) if id != st.config.id => {
                    return Ok(forward_any(st, &[(id, addr)], op, hops, epoch, access).await?)
                }
                Err(e) => return Err(e.into()),
            },
        };
        match forward_any(st, &targets, op, hops, epoch, access).await {
            Err(ForwardError::Unreachable(e)) if Instant::now() >= deadline => return Err(e),
            // None of them took it: route again without them.
            Err(ForwardError::Unreachable(_)) => {
                unreachable.extend(targets.iter().map(|(id, _)| *id));
            }
            // The partition moved away from the node it went to, by a map this node has yet to
            // adopt (every member follows the metadata group, so it comes): route again by it.
            // Nothing ran there. Twice at most: a map that keeps moving is left to the client.
            Err(ForwardError::Misdirected(newer)) if misdirected < MAX_MISDIRECTED => {
                misdirected += 1;
                adopted(st, newer, deadline).await?;
            }
            Err(ForwardError::Misdirected(newer)) => {
                return Err(ApiError::unavailable(format!(
                    "partition {} keeps moving (map epoch {newer}); retry",
                    p.0
                )))
            }
            Err(ForwardError::Failed(e)) => return Err(e),
            Ok(answer) => return Ok(answer),
        }
    }
}

/// How many times one operation is routed again after a peer refused it as misdirected.
const MAX_MISDIRECTED: u32 = 2;

/// Wait, until `deadline`, for this node to adopt the map of epoch `epoch` or a newer one.
async fn adopted(st: &AppState, epoch: u64, deadline: Instant) -> Result<(), ApiError> {
    let mut epochs = st.epoch_changes();
    let newer = epochs.wait_for(|have| have.is_some_and(|have| have >= epoch));
    let adopted = tokio::time::timeout_at(deadline, newer)
        .await
        .is_ok_and(|seen| seen.is_ok());
    if adopted {
        return Ok(());
    }
    Err(ApiError::unavailable(format!(
        "a peer routes by map epoch {epoch}, which this node has not adopted yet; retry"
    )))
}

/// Why forwarding failed: the target could not be reached (the operation never arrived, so
/// another node may take it), the target refused it because the partition moved by a newer
/// map (of this epoch; nothing ran, so it may go elsewhere), or anything else (it may have been
/// applied: the client decides).
pub enum ForwardError {
    Unreachable(ApiError),
    Misdirected(u64),
    Failed(ApiError),
}

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Unreachable(e) | ForwardError::Failed(e) => e,
            ForwardError::Misdirected(epoch) => ApiError::unavailable(format!(
                "the partition moved by map epoch {epoch}, which this node has not adopted yet; retry"
            )),
        }
    }
}

/// The epoch of the newer map by which a peer refused a forwarded operation as misdirected
/// (`421`, [`kv_client::api::Misdirected`]); `None` for any other answer, relayed as it is.
fn misdirected_by(answer: &PeerAnswer) -> Option<u64> {
    if answer.status != StatusCode::MISDIRECTED_REQUEST {
        return None;
    }
    serde_json::from_slice::<kv_client::api::Misdirected>(&answer.body)
        .ok()
        .map(|m| m.epoch)
}

/// Hand `op` to the first of `targets` that accepts a connection; a node that does not is
/// marked unreachable (see `kv_raft::PeerHealth`).
async fn forward_any<T: Answer>(
    st: &AppState,
    targets: &[(NodeId, String)],
    op: &KeyOp,
    hops: u32,
    epoch: Option<u64>,
    access: &Access,
) -> Result<T, ForwardError> {
    if hops >= MAX_HOPS {
        return Err(ForwardError::Failed(ApiError::unavailable(format!(
            "gave up after {hops} forwarding hops; leadership is moving, retry"
        ))));
    }
    let body = postcard::to_stdvec(&Forwarded {
        hops: hops + 1,
        op: op.clone(),
        caller: access.caller_name(),
        epoch,
    })
    .map_err(|e| ForwardError::Failed(ApiError::Internal(format!("encoding: {e}"))))?;
    let timeout = forward_timeout(st) + op.waits();
    let mut last = ApiError::unavailable("no replica to forward to");
    for (id, addr) in targets {
        metrics::counter!("kv_forwarded_requests_total").increment(1);
        match st.forwarding.call(addr, body.clone(), timeout).await {
            Err(Lost::NotSent(why)) => {
                st.host.transport().peers().note_failure(*id);
                last = ApiError::unavailable(why);
            }
            Err(Lost::Unknown(why)) => {
                return Err(ForwardError::Failed(ApiError::unavailable(why)))
            }
            Ok(answer) => {
                if let Some(newer) = misdirected_by(&answer) {
                    return Err(ForwardError::Misdirected(newer));
                }
                return T::from_peer(answer).map_err(ForwardError::Failed);
            }
        }
    }
    Err(ForwardError::Unreachable(last))
}

/// How long a forwarder waits for a peer's answer: the peer gives up after the request timeout
/// and answers 503; a little slack lets that answer through, and bounds the wait on a peer
/// that vanished.
fn forward_timeout(st: &AppState) -> Duration {
    st.config.raft.request_timeout + Duration::from_millis(500)
}

/// Relay an administrative request (join, leave) this node has built itself to `addr`, on
/// behalf of the client `access` names, and return the answer as is.
pub async fn relay(
    st: &AppState,
    addr: &str,
    method: Method,
    path_and_query: &str,
    mut headers: HeaderMap,
    body: Bytes,
    access: &Access,
) -> Result<Response, ApiError> {
    if let Some(name) = access.caller_name() {
        if let Ok(value) = HeaderValue::from_str(&name) {
            headers.insert(crate::auth::HEADER_CALLER, value);
        }
    }
    let answer = send(st, addr, method, path_and_query, headers, body).await?;
    Response::from_peer(answer)
}

/// Request headers a relayed administrative request keeps.
const RELAYED_REQUEST_HEADERS: &[&str] = &["content-type", crate::auth::HEADER_CALLER];

/// One request to a peer, its answer read whole, keeping the headers a client needs.
async fn send(
    st: &AppState,
    addr: &str,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<PeerAnswer, ForwardError> {
    let url = st.peer_url(addr, path_and_query);
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| ForwardError::Failed(ApiError::Internal(format!("method: {e}"))))?;
    let mut out = st
        .http
        .request(method, &url)
        .timeout(forward_timeout(st))
        .body(body);
    for name in RELAYED_REQUEST_HEADERS {
        if let Some(v) = headers.get(*name) {
            out = out.header(*name, v.as_bytes());
        }
    }
    let resp = out.send().await.map_err(|e| {
        let err = ApiError::unavailable(format!("forwarding to {addr} failed: {}", root_cause(&e)));
        // Only a refused connection means the request never arrived and another node may
        // take it; past that it may have been applied, so the client decides.
        if e.is_connect() {
            ForwardError::Unreachable(err)
        } else {
            ForwardError::Failed(err)
        }
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16())
        .map_err(|e| ForwardError::Failed(ApiError::Internal(format!("status: {e}"))))?;
    let headers = relayed_headers(resp.headers());
    let body = resp.bytes().await.map_err(|e| {
        ForwardError::Failed(ApiError::unavailable(format!(
            "reading the answer of {addr} failed: {}",
            root_cause(&e)
        )))
    })?;
    Ok(PeerAnswer {
        status,
        headers,
        body,
    })
}
