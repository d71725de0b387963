//! The key/value routes: `PUT/GET/DELETE /v1/kv/{key}` and the scan `GET /v1/kv?prefix=`.

use std::future::Future;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use kv_client::api::{
    DeleteResult, ScanItem, ScanResult, WriteResult, HEADER_CONSISTENCY, HEADER_NODE,
    HEADER_PARTITION,
};
use kv_raft::{Group, GroupError};
use kv_ring::PartitionId;
use kv_storage::{Command, Condition, Outcome};
use serde::Deserialize;

use crate::config::MAX_KEY_BYTES;
use crate::error::ApiError;
use crate::forward::{forward_any, route, ForwardError, Incoming, RequestParts, Route};
use crate::state::AppState;

pub use kv_client::api::{HEADER_ACK_BELOW, HEADER_CLIENT_ID, HEADER_REQUEST_SEQ};

/// A client write's identity for exactly-once application: (client, seq, ack_below).
type Session = (u64, u64, u64);

/// The session headers of a request, if it names a client write.
fn session(headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_session",
                            format!("{name} must be an unsigned integer"),
                        )
                    })
            })
            .transpose()
    };
    match (num(HEADER_CLIENT_ID)?, num(HEADER_REQUEST_SEQ)?) {
        (None, None) => Ok(None),
        (Some(client), Some(seq)) if client != 0 => {
            Ok(Some((client, seq, num(HEADER_ACK_BELOW)?.unwrap_or(0))))
        }
        _ => Err(ApiError::bad_request(
            "invalid_session",
            format!("{HEADER_CLIENT_ID} (non-zero) and {HEADER_REQUEST_SEQ} go together"),
        )),
    }
}

/// `cmd`, applied at most once if it belongs to a client session.
fn once(session: Option<Session>, cmd: Command) -> Command {
    match session {
        None => cmd,
        Some((client, seq, ack_below)) => Command::Once {
            client,
            seq,
            ack_below,
            command: Box::new(cmd),
        },
    }
}

/// Most keys one scan returns.
pub const MAX_SCAN_LIMIT: usize = 10_000;
const DEFAULT_SCAN_LIMIT: usize = 1_000;

#[derive(Debug, Default, Deserialize)]
pub struct ReadParams {
    consistency: Option<String>,
}

/// `true` for `consistency=stale`, `false` for the default `linearizable`.
fn stale(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency {
        None | Some("linearizable") | Some("") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_consistency",
            format!("consistency must be 'linearizable' or 'stale', not {other:?}"),
        )),
    }
}

fn validate_key(key: &str) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "empty_key",
            "the key must not be empty",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::TooLarge(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(key.as_bytes().to_vec())
}

/// Parse an entity tag: `"12"` (or a bare `12`, as curl users type it).
fn parse_version(raw: &HeaderValue, header_name: &str) -> Result<u64, ApiError> {
    let text = raw.to_str().unwrap_or_default().trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_precondition",
            format!("{header_name} must be a version like \"12\", got {text:?}"),
        )
    })
}

/// The precondition a write carries in `If-Match` / `If-None-Match`.
fn condition(headers: &HeaderMap, allow_create_only: bool) -> Result<Condition, ApiError> {
    let if_match = headers.get(header::IF_MATCH);
    let if_none = headers.get(header::IF_NONE_MATCH);
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_precondition",
            "use either If-Match or If-None-Match, not both",
        )),
        (Some(v), None) => Ok(Condition::Version(parse_version(v, "If-Match")?)),
        (None, Some(v)) if allow_create_only => {
            if v.to_str().map(str::trim).ok() == Some("*") {
                Ok(Condition::Absent)
            } else {
                Err(ApiError::bad_request(
                    "invalid_precondition",
                    "If-None-Match only supports \"*\" (create if absent)",
                ))
            }
        }
        (None, Some(_)) => Err(ApiError::bad_request(
            "invalid_precondition",
            "If-None-Match is only supported on PUT",
        )),
        (None, None) => Ok(Condition::Always),
    }
}

/// Serve a request for partition `p` here, or relay it to the node that can. `local` runs on
/// this node's replica; if it finds leadership moved, the request follows the new leader. A
/// node the request cannot reach is left out and the request routed again (to the next
/// replica, or to the leader elected in its place), within the request timeout.
async fn serve<F, Fut>(
    st: &AppState,
    p: PartitionId,
    need_leader: bool,
    req: Incoming,
    local: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Group) -> Fut,
    Fut: Future<Output = Result<Response, GroupError>>,
{
    let deadline = tokio::time::Instant::now() + st.config.raft.request_timeout;
    let mut unreachable: Vec<u64> = Vec::new();
    loop {
        let targets = match route(st, p, need_leader, deadline, &unreachable).await? {
            Route::Forward(targets) => targets,
            Route::Local(group) => {
                return match local(group).await {
                    Ok(mut resp) => {
                        let h = resp.headers_mut();
                        h.insert(HEADER_PARTITION, HeaderValue::from(p.0));
                        h.insert(HEADER_NODE, HeaderValue::from(st.config.id));
                        Ok(resp)
                    }
                    Err(GroupError::NotLeader {
                        leader: Some((id, addr)),
                    }) if id != st.config.id => Ok(forward_any(st, &[(id, addr)], &req).await?),
                    Err(e) => Err(e.into()),
                }
            }
        };
        match forward_any(st, &targets, &req).await {
            Err(ForwardError::Unreachable(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(e)
            }
            // None of them took it: route again without them.
            Err(ForwardError::Unreachable(_)) => {
                unreachable.extend(targets.iter().map(|(id, _)| *id));
            }
            Err(ForwardError::Failed(e)) => return Err(e),
            Ok(resp) => return Ok(resp),
        }
    }
}

pub async fn put_key(
    State(st): State<AppState>,
    Path(key): Path<String>,
    parts: RequestParts,
    body: Body,
) -> Result<Response, ApiError> {
    let key_bytes = validate_key(&key)?;
    let cond = condition(&parts.headers, true)?;
    let session = session(&parts.headers)?;
    let limit = st.config.max_value_bytes;
    let value = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::TooLarge(format!("value exceeds the limit of {limit} bytes"))
        } else {
            ApiError::bad_request("bad_body", format!("could not read the body: {e}"))
        }
    })?;
    let p = st.layout().partition_of(&key_bytes);
    let cmd = once(
        session,
        Command::Put {
            key: key_bytes,
            value: value.to_vec(),
            cond,
        },
    );
    let req = parts.with_body(value);
    serve(&st, p, true, req, |group| async move {
        let (outcome, _) = group.write(cmd).await?;
        Ok(write_response(key, outcome))
    })
    .await
}

pub async fn delete_key(
    State(st): State<AppState>,
    Path(key): Path<String>,
    parts: RequestParts,
) -> Result<Response, ApiError> {
    let key_bytes = validate_key(&key)?;
    let cond = condition(&parts.headers, false)?;
    let p = st.layout().partition_of(&key_bytes);
    let cmd = once(
        session(&parts.headers)?,
        Command::Delete {
            key: key_bytes,
            cond,
        },
    );
    let req = parts.with_body(Bytes::new());
    serve(&st, p, true, req, |group| async move {
        let (outcome, _) = group.write(cmd).await?;
        Ok(write_response(key, outcome))
    })
    .await
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn write_response(key: String, outcome: Outcome) -> Response {
    match outcome {
        Outcome::Written { version } => Json(WriteResult { key, version }).into_response(),
        Outcome::Deleted { version } => Json(DeleteResult {
            key,
            deleted: true,
            version,
        })
        .into_response(),
        Outcome::NotFound => ApiError::NotFound {
            code: "key_not_found",
            message: format!("key {key:?} does not exist"),
        }
        .into_response(),
        Outcome::PreconditionFailed { current } => {
            ApiError::PreconditionFailed { current }.into_response()
        }
    }
}

pub async fn get_key(
    State(st): State<AppState>,
    Path(key): Path<String>,
    Query(params): Query<ReadParams>,
    parts: RequestParts,
) -> Result<Response, ApiError> {
    let key_bytes = validate_key(&key)?;
    let stale = stale(params.consistency.as_deref())?;
    let p = st.layout().partition_of(&key_bytes);
    let req = parts.with_body(Bytes::new());
    serve(&st, p, !stale, req, |group| async move {
        let record = group.get(key_bytes, stale).await?;
        let consistency = if stale { "stale" } else { "linearizable" };
        Ok(match record {
            Some(r) => {
                let mut resp = (StatusCode::OK, r.value).into_response();
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", r.version)) {
                    h.insert(header::ETAG, etag);
                }
                h.insert(HEADER_CONSISTENCY, HeaderValue::from_static(consistency));
                resp
            }
            None => {
                let mut resp = ApiError::NotFound {
                    code: "key_not_found",
                    message: format!("key {key:?} does not exist"),
                }
                .into_response();
                resp.headers_mut()
                    .insert(HEADER_CONSISTENCY, HeaderValue::from_static(consistency));
                resp
            }
        })
    })
    .await
}

/// `PUT/GET/DELETE /v1/kv/` with nothing after the slash.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("empty_key", "the key must not be empty")
}

#[derive(Debug, Default, Deserialize)]
pub struct ScanParams {
    #[serde(default)]
    prefix: String,
    limit: Option<String>,
    consistency: Option<String>,
    /// Only keys after this one (for paging).
    after: Option<String>,
}

impl ScanParams {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_SCAN_LIMIT),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_SCAN_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_SCAN_LIMIT}, got {raw:?}"),
                )),
            },
        }
    }
}

fn scan_item(key: Vec<u8>, record: kv_storage::Record) -> ScanItem {
    let key = String::from_utf8_lossy(&key).into_owned();
    match String::from_utf8(record.value) {
        Ok(value) => ScanItem {
            key,
            version: record.version,
            value: Some(value),
            value_hex: None,
        },
        Err(e) => ScanItem {
            key,
            version: record.version,
            value: None,
            value_hex: Some(e.into_bytes().iter().map(|b| format!("{b:02x}")).collect()),
        },
    }
}

/// `GET /v1/partitions/{p}/scan`: one partition's share of a scan, served by its leader (or
/// any replica for stale reads). Nodes call it on each other; it is not meant for clients.
pub async fn scan_partition(
    State(st): State<AppState>,
    Path(p): Path<u32>,
    Query(params): Query<ScanParams>,
    parts: RequestParts,
) -> Result<Response, ApiError> {
    scan_one_partition(&st, p, params, parts.with_body(Bytes::new())).await
}

async fn scan_one_partition(
    st: &AppState,
    p: u32,
    params: ScanParams,
    req: Incoming,
) -> Result<Response, ApiError> {
    if p >= st.layout().partitions() {
        return Err(ApiError::NotFound {
            code: "no_such_partition",
            message: format!("partition {p} does not exist"),
        });
    }
    let limit = params.limit()?;
    let stale = stale(params.consistency.as_deref())?;
    let prefix = params.prefix.into_bytes();
    let after = params.after.map(String::into_bytes);
    serve(st, PartitionId(p), !stale, req, |group| async move {
        let rows = group.scan(prefix, after, limit + 1, stale).await?;
        let truncated = rows.len() > limit;
        let items = rows
            .into_iter()
            .take(limit)
            .map(|(k, r)| scan_item(k, r))
            .collect();
        Ok(Json(ScanResult { items, truncated }).into_response())
    })
    .await
}

/// `GET /v1/kv?prefix=p&limit=n`: every partition's matching keys, merged in key order.
pub async fn scan(
    State(st): State<AppState>,
    Query(params): Query<ScanParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    let consistency = if stale(params.consistency.as_deref())? {
        "stale"
    } else {
        "linearizable"
    };
    let partitions = st.layout().partitions();
    let mut query = vec![
        ("prefix", params.prefix.clone()),
        ("limit", limit.to_string()),
        ("consistency", consistency.to_string()),
    ];
    if let Some(after) = &params.after {
        query.push(("after", after.clone()));
    }
    let qs = {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &query {
            out.append_pair(k, v);
        }
        out.finish()
    };
    let fetches = (0..partitions).map(|p| {
        let st = st.clone();
        let qs = qs.clone();
        let params = ScanParams {
            prefix: params.prefix.clone(),
            limit: Some(limit.to_string()),
            consistency: Some(consistency.to_string()),
            after: params.after.clone(),
        };
        async move {
            // Each partition's share comes through the same routing as any request, so it is
            // served by (or forwarded to) that partition's leader.
            let req = Incoming {
                method: Method::GET,
                path_and_query: format!("/v1/partitions/{p}/scan?{qs}"),
                headers: HeaderMap::new(),
                body: Default::default(),
            };
            let resp = match scan_one_partition(&st, p, params, req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            };
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .map_err(|e| ApiError::Internal(format!("scan body: {e}")))?;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let msg = serde_json::from_slice::<kv_client::api::ErrorBody>(&bytes)
                    .map(|b| b.message)
                    .unwrap_or_default();
                return Err(ApiError::unavailable(format!("partition {p}: {msg}")));
            }
            if !status.is_success() {
                return Err(ApiError::Internal(format!(
                    "partition {p} scan answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            serde_json::from_slice::<ScanResult>(&bytes)
                .map_err(|e| ApiError::Internal(format!("partition {p} scan answer: {e}")))
        }
    });
    let parts = futures::future::try_join_all(fetches).await?;
    let mut truncated = parts.iter().any(|r| r.truncated);
    let mut items: Vec<ScanItem> = parts.into_iter().flat_map(|r| r.items).collect();
    items.sort_by(|a, b| a.key.cmp(&b.key));
    if items.len() > limit {
        items.truncate(limit);
        truncated = true;
    }
    Ok(Json(ScanResult { items, truncated }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_quoted_and_bare_versions_only() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(condition(&h, true).unwrap(), Condition::Version(7));
        h.insert(header::IF_MATCH, HeaderValue::from_static("7"));
        assert_eq!(condition(&h, true).unwrap(), Condition::Version(7));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"seven\""));
        assert!(condition(&h, true).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(condition(&h, true).unwrap(), Condition::Absent);
        assert!(condition(&h, false).is_err());
        h.insert(header::IF_MATCH, HeaderValue::from_static("1"));
        assert!(condition(&h, true).is_err(), "both headers at once");
    }

    #[test]
    fn keys_are_bounded() {
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(ApiError::TooLarge(_))
        ));
    }
}
