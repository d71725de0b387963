//! Request routing: decide whether this node can serve a partition's request itself, and if
//! not, relay the request unchanged to the node that can (the leader, or a replica) and relay
//! its answer back. A hop counter stops loops while views of the leader are stale.

use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use kv_client::api::HEADER_FORWARDED;
use kv_raft::Group;
use kv_ring::PartitionId;

use crate::error::ApiError;
use crate::placement::group_of;
use crate::state::AppState;

/// Forwarded requests give up after this many hops.
pub const MAX_HOPS: u32 = 3;

/// Request headers a forwarded request keeps.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "if-match",
    "if-none-match",
    "content-type",
    crate::kv_api::HEADER_CLIENT_ID,
    crate::kv_api::HEADER_REQUEST_SEQ,
    crate::kv_api::HEADER_ACK_BELOW,
];

/// What a node does with a request for a partition.
pub enum Route {
    /// Serve it here with this group.
    Local(Group),
    /// Relay it to the first of these nodes `(id, address)` that can be reached.
    Forward(Vec<(u64, String)>),
}

/// The request as received, kept so it can be relayed.
pub struct Incoming {
    pub method: Method,
    /// Path and query, e.g. `/v1/kv/a?consistency=stale`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The parts of a request needed to relay it, extracted before the body.
pub struct RequestParts {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestParts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        // Nested routers strip prefixes from `uri`; the original is what a peer must see.
        let uri = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.clone())
            .unwrap_or_else(|| parts.uri.clone());
        Ok(RequestParts {
            method: parts.method.clone(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| uri.path().to_string()),
            headers: parts.headers.clone(),
        })
    }
}

impl RequestParts {
    /// The request, ready to relay, with `body`.
    pub fn with_body(self, body: Bytes) -> Incoming {
        Incoming {
            method: self.method,
            path_and_query: self.path_and_query,
            headers: self.headers,
            body,
        }
    }
}

impl Incoming {
    pub fn hops(&self) -> u32 {
        self.headers
            .get(HEADER_FORWARDED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Where a request for partition `p` should go, leaving out the nodes in `unreachable` (this
/// request found them so). `need_leader` is false for stale reads, which any replica may serve.
/// Waits, until `deadline`, while the partition elects a leader; fails at once when this node
/// knows it cannot reach a quorum of the partition's replicas.
pub async fn route(
    st: &AppState,
    p: PartitionId,
    need_leader: bool,
    deadline: Instant,
    unreachable: &[u64],
) -> Result<Route, ApiError> {
    if let Some(group) = st.host.group(group_of(p)) {
        if !need_leader || group.is_leader() {
            return Ok(Route::Local(group));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        return match group.usable_leader(wait, unreachable).await {
            Ok((id, _)) if id == st.config.id => Ok(Route::Local(group)),
            Ok(leader) => Ok(Route::Forward(vec![leader])),
            Err(e) => Err(ApiError::unavailable(format!("partition {}: {e}", p.0))),
        };
    }
    // Not a replica here: send it to the partition's replicas, the ones this node can reach
    // first, preferred leader first; a replica forwards on to the leader.
    let layout = st.layout();
    let peers = st.host.transport().peers();
    let mut candidates: Vec<(u64, String)> = layout
        .replicas(p)
        .into_iter()
        .filter(|id| *id != st.config.id && !unreachable.contains(id))
        .filter_map(|id| layout.addr(id).map(|a| (id, a.to_string())))
        .collect();
    candidates.sort_by_key(|(id, _)| !peers.reachable(*id));
    if candidates.is_empty() {
        return Err(ApiError::unavailable(format!(
            "partition {} has no replica this node can reach",
            p.0
        )));
    }
    Ok(Route::Forward(candidates))
}

/// Relay `req` to the first of `targets` that accepts a connection. `Err(Unreachable)` names
/// the nodes that did not, so the caller can route again without them.
pub async fn forward_any(
    st: &AppState,
    targets: &[(u64, String)],
    req: &Incoming,
) -> Result<Response, ForwardError> {
    let mut last = ApiError::unavailable("no replica to forward to");
    for (id, addr) in targets {
        match forward(st, addr, req).await {
            Err(ForwardError::Unreachable(e)) => {
                st.host.transport().peers().note_failure(*id);
                last = e;
            }
            other => return other,
        }
    }
    Err(ForwardError::Unreachable(last))
}

/// Why relaying failed: the target could not be reached (try another), or anything else.
pub enum ForwardError {
    Unreachable(ApiError),
    Failed(ApiError),
}

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Unreachable(e) | ForwardError::Failed(e) => e,
        }
    }
}

/// Relay `req` to `addr` and return its answer as is.
pub async fn forward(st: &AppState, addr: &str, req: &Incoming) -> Result<Response, ForwardError> {
    let hops = req.hops();
    if hops >= MAX_HOPS {
        return Err(ForwardError::Failed(ApiError::unavailable(format!(
            "gave up after {hops} forwarding hops; leadership is moving, retry"
        ))));
    }
    let url = format!("http://{addr}{}", req.path_and_query);
    let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
        .map_err(|e| ForwardError::Failed(ApiError::Internal(format!("method: {e}"))))?;
    let mut out = st
        .http
        .request(method, &url)
        // The target gives up after request_timeout and answers 503; a little slack lets that
        // answer through, and bounds the wait on a target that vanished.
        .timeout(st.config.raft.request_timeout + Duration::from_millis(500))
        .header(HEADER_FORWARDED, (hops + 1).to_string())
        .body(req.body.clone());
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = req.headers.get(*name) {
            out = out.header(*name, v.as_bytes());
        }
    }
    metrics::counter!("kv_forwarded_requests_total").increment(1);
    let resp = out.send().await.map_err(|e| {
        let err = ApiError::unavailable(format!("forwarding to {addr} failed: {}", root_cause(&e)));
        // Only a refused or timed-out connection means the request never arrived and another
        // node may take it; past that it may have been applied, so the client decides.
        if e.is_connect() {
            ForwardError::Unreachable(err)
        } else {
            ForwardError::Failed(err)
        }
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16())
        .map_err(|e| ForwardError::Failed(ApiError::Internal(format!("status: {e}"))))?;
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        let keep = matches!(name.as_str(), "content-type" | "etag" | "retry-after")
            || name.as_str().starts_with("x-kv-");
        if keep {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.insert(n, v);
            }
        }
    }
    let body = resp.bytes().await.map_err(|e| {
        ForwardError::Failed(ApiError::unavailable(format!(
            "reading the answer of {addr} failed: {}",
            root_cause(&e)
        )))
    })?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if e.to_string() == cur.to_string() {
        e.to_string()
    } else {
        format!("{e}: {cur}")
    }
}
