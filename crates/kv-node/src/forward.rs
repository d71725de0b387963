//! Request routing: decide whether this node can serve a partition's request itself, and if
//! not, relay the request unchanged to the node that can (the leader, or a replica) and relay
//! its answer back. A hop counter stops loops while views of the leader are stale.

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
    /// Relay it to this address.
    Forward(String),
}

/// The request as received, kept so it can be relayed.
pub struct Incoming {
    pub method: Method,
    /// Path and query, e.g. `/v1/kv/a?consistency=stale`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
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

/// Where a request for partition `p` should go. `need_leader` is false for stale reads, which
/// any replica may serve.
pub fn route(st: &AppState, p: PartitionId, need_leader: bool) -> Result<Route, ApiError> {
    if let Some(group) = st.host.group(group_of(p)) {
        if !need_leader || group.is_leader() {
            return Ok(Route::Local(group));
        }
        return match group.leader() {
            Some((id, addr)) if id != st.config.id => Ok(Route::Forward(addr)),
            _ => Err(ApiError::unavailable(format!(
                "partition {} has no leader yet",
                p.0
            ))),
        };
    }
    // Not a replica here: send it to the partition's preferred leader (or the next replica),
    // which forwards on if leadership moved.
    let layout = st.layout();
    layout
        .replicas(p)
        .into_iter()
        .filter(|id| *id != st.config.id)
        .find_map(|id| layout.addr(id).map(str::to_string))
        .map(Route::Forward)
        .ok_or_else(|| ApiError::unavailable(format!("partition {} has no replicas", p.0)))
}

/// Relay `req` to `addr` and return its answer as is.
pub async fn forward(st: &AppState, addr: &str, req: &Incoming) -> Result<Response, ApiError> {
    let hops = req.hops();
    if hops >= MAX_HOPS {
        return Err(ApiError::unavailable(format!(
            "gave up after {hops} forwarding hops; leadership is moving, retry"
        )));
    }
    let url = format!("http://{addr}{}", req.path_and_query);
    let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
        .map_err(|e| ApiError::Internal(format!("method: {e}")))?;
    let mut out = st
        .http
        .request(method, &url)
        .timeout(st.config.raft.request_timeout * 2)
        .header(HEADER_FORWARDED, (hops + 1).to_string())
        .body(req.body.clone());
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = req.headers.get(*name) {
            out = out.header(*name, v.as_bytes());
        }
    }
    metrics::counter!("kv_forwarded_requests_total").increment(1);
    let resp = out.send().await.map_err(|e| {
        ApiError::unavailable(format!("forwarding to {addr} failed: {}", root_cause(&e)))
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16())
        .map_err(|e| ApiError::Internal(format!("status: {e}")))?;
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
        ApiError::unavailable(format!(
            "reading the answer of {addr} failed: {}",
            root_cause(&e)
        ))
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
