//! The key/value routes: `PUT/GET/DELETE /v1/kv/{key}` and the scan `GET /v1/kv?prefix=`.
//! Each handler parses the HTTP request into a [`KeyOp`] (validating everything it carries)
//! and hands it to [`execute`], which serves it here or forwards it; forwarded operations from
//! peers enter at [`execute`] too, so both run the same code.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine as _;
use kv_client::api::{
    DeleteResult, RefreshResult, ScanItem, ScanResult, WriteResult, HEADER_CONSISTENCY,
    HEADER_NODE, HEADER_PARTITION, HEADER_TTL_REMAINING,
};
use kv_raft::{Command, Condition, Outcome};
use kv_raft::{Group, GroupError};
use kv_ring::PartitionId;
use serde::Deserialize;

use crate::api::extract::Params;
use crate::auth::{Access, Caller, Role};
use crate::error::{ApiError, PeerAnswer};
use crate::layout::group_of;
use crate::routing::{serve, Answer};
use crate::state::AppState;
use crate::wire::{
    changed_since, check_key, KeyOp, Page, PageRequest, Precondition, Row, Session, MAX_SCAN_LIMIT,
    MAX_WAIT,
};

pub use kv_client::api::{HEADER_ACK_BELOW, HEADER_CLIENT_ID, HEADER_EPOCH, HEADER_REQUEST_SEQ};

/// The key of a `/v1/kv/{*key}` request: the rest of the path, percent-decoded, as UTF-8.
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(key)) => Ok(KeyPath(key)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_key",
                format!(
                    "the key in the path is not valid UTF-8 after percent-decoding: {rejection}"
                ),
            )),
        }
    }
}

/// Refuse, with `421` and this node's routes, a request routed by an older map than this node's
/// (`X-KV-Epoch`) for a partition this node does not host: the sender's routes are stale, and
/// one round trip gives it the new ones. Without the header, or for a partition hosted here,
/// the request is served or forwarded as any other.
fn check_routed(st: &AppState, headers: &HeaderMap, key: &[u8]) -> Result<(), ApiError> {
    let Some(value) = headers.get(HEADER_EPOCH) else {
        return Ok(());
    };
    let sent = value
        .to_str()
        .ok()
        .and_then(|s| parse_decimal(s.trim()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_epoch",
                format!("{HEADER_EPOCH} must be an unsigned integer"),
            )
        })?;
    check_epoch(st, sent, st.layout().partition_of(key))
}

/// Refuse (`421`, with this node's routes) an operation on partition `p` that its sender
/// routed by the map of epoch `sent`, older than this node's, when this node does not host
/// `p`: a client's request (`X-KV-Epoch`) or a peer's forwarded operation
/// ([`crate::wire::Forwarded::epoch`]) alike.
pub(crate) fn check_epoch(st: &AppState, sent: u64, p: PartitionId) -> Result<(), ApiError> {
    let Some(current) = st.epoch() else {
        return Ok(());
    };
    if sent >= current {
        return Ok(());
    }
    let hosted =
        st.host.group(group_of(p)).is_some() || st.layout().replicas(p).contains(&st.config.id);
    if hosted {
        return Ok(());
    }
    metrics::counter!("kv_misdirected_requests_total").increment(1);
    Err(ApiError::Misdirected(Box::new(
        crate::api::cluster::route_table(st),
    )))
}

/// The session headers of a request, if it names a client write.
fn session(headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| parse_decimal(s.trim()))
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
        (Some(client), Some(seq)) if client != 0 => Ok(Some(Session {
            client,
            seq,
            ack_below: num(HEADER_ACK_BELOW)?.unwrap_or(0),
        })),
        _ => Err(ApiError::bad_request(
            "invalid_session",
            format!("{HEADER_CLIENT_ID} (non-zero) and {HEADER_REQUEST_SEQ} go together"),
        )),
    }
}

/// Digits only (`u64::from_str` also takes a leading `+`).
pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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

fn validate_key(key: String) -> Result<Vec<u8>, ApiError> {
    let key = key.into_bytes();
    check_key(&key)?;
    Ok(key)
}

/// The version in an `If-Match` entity tag: exactly `"N"` (a strong tag of decimal digits), or
/// the bare `N` curl users type. Weak tags (`W/"N"`) never match under `If-Match` (RFC 9110
/// §13.1.1), lists and anything else are refused.
fn parse_version(raw: &HeaderValue) -> Result<u64, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            "invalid_precondition",
            format!("If-Match must be one version like \"12\": {why}"),
        )
    };
    let text = raw.to_str().map_err(|_| bad("not ASCII"))?.trim();
    if text.starts_with("W/") {
        return Err(bad("weak entity tags cannot be used with If-Match"));
    }
    let inner = match text.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| bad("unterminated quote"))?,
        None => text,
    };
    parse_decimal(inner).ok_or_else(|| bad(&format!("{text:?} is not a version")))
}

/// The precondition a write carries in `If-Match` / `If-None-Match`.
fn precondition(headers: &HeaderMap, allow_create_only: bool) -> Result<Precondition, ApiError> {
    let mut if_match = headers.get_all(header::IF_MATCH).iter();
    let mut if_none = headers.get_all(header::IF_NONE_MATCH).iter();
    let (m, m2, n, n2) = (
        if_match.next(),
        if_match.next(),
        if_none.next(),
        if_none.next(),
    );
    if m2.is_some() || n2.is_some() {
        return Err(ApiError::bad_request(
            "invalid_precondition",
            "If-Match and If-None-Match may each appear once",
        ));
    }
    match (m, n) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_precondition",
            "use either If-Match or If-None-Match, not both",
        )),
        (Some(v), None) => Ok(Precondition::Version(parse_version(v)?)),
        (None, Some(v)) if allow_create_only => {
            if v.to_str().map(str::trim).ok() == Some("*") {
                Ok(Precondition::Absent)
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
        (None, None) => Ok(Precondition::None),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    consistency: Option<String>,
    /// A blocking read: answer once the key has changed since version `after`, or after
    /// this long (`30s`; at most [`MAX_WAIT`]).
    wait: Option<String>,
    after: Option<String>,
}

impl ReadParams {
    /// `(after, wait_ms)` of a blocking read; `None` for a plain read.
    fn blocking(&self) -> Result<Option<(u64, u64)>, ApiError> {
        let (wait, after) = match (self.wait.as_deref(), self.after.as_deref()) {
            (None, None) => return Ok(None),
            (Some(wait), Some(after)) => (wait, after),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "a blocking read needs both wait= (e.g. 30s) and after= (a version)",
                ))
            }
        };
        let wait = kv_client::api::parse_duration(wait)
            .ok()
            .filter(|w| *w <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "wait={wait:?} is not a duration like 30s of at most {}s",
                        MAX_WAIT.as_secs()
                    ),
                )
            })?;
        let after = parse_decimal(after.trim()).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("after={after:?} is not a version (an unsigned integer)"),
            )
        })?;
        Ok(Some((
            after,
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        )))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Query parameters of `PUT /v1/kv/{key}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    /// The key expires this long after the write (`30s`), unless refreshed or rewritten.
    ttl: Option<String>,
}

pub async fn put_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    Params(params): Params<PutParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readwrite)?;
    let key = validate_key(key)?;
    access.require(Role::Readwrite, Some(&key))?;
    check_routed(&st, &headers, &key)?;
    let cond = precondition(&headers, true)?;
    let session = session(&headers)?;
    let ttl_ms = params.ttl.as_deref().map(crate::ttl::parse).transpose()?;
    let value = crate::api::body::read_limited(
        &headers,
        body,
        st.config.max_value_bytes,
        st.config.body_timeout(),
        "value",
    )
    .await?;
    let op = match ttl_ms {
        None => KeyOp::Put {
            key,
            value: value.to_vec(),
            cond,
            session,
        },
        Some(ttl_ms) => KeyOp::PutTtl {
            key,
            value: value.to_vec(),
            cond,
            session,
            ttl_ms,
        },
    };
    execute(&st, op, 0, &access).await
}

/// Query parameters of `POST /v1/kv/{key}/refresh`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshParams {
    /// The new time to live, from now.
    ttl: Option<String>,
}

/// The path suffix that makes a `POST` on a key a refresh of its time to live.
const REFRESH_SUFFIX: &str = "/refresh";

/// `POST /v1/kv/{key}/refresh?ttl=30s`: give a live key a new time to live from now, keeping
/// its value and version (`If-Match` may name the version). `404` if the key does not exist
/// or has expired. Any other `POST` on a key is `405`, as before.
pub async fn post_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    KeyPath(path): KeyPath,
    Params(params): Params<RefreshParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(key) = path.strip_suffix(REFRESH_SUFFIX) else {
        return Err(ApiError::MethodNotAllowed);
    };
    let access = caller.access(Role::Readwrite)?;
    let key = validate_key(key.to_owned())?;
    access.require(Role::Readwrite, Some(&key))?;
    check_routed(&st, &headers, &key)?;
    let ttl_ms = match params.ttl.as_deref() {
        Some(text) => crate::ttl::parse(text)?,
        None => {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                "a refresh needs ?ttl= (e.g. ?ttl=30s)",
            ))
        }
    };
    let op = KeyOp::Refresh {
        key,
        cond: precondition(&headers, false)?,
        session: session(&headers)?,
        ttl_ms,
    };
    execute(&st, op, 0, &access).await
}

pub async fn delete_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    Params(NoParams {}): Params<NoParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readwrite)?;
    let key = validate_key(key)?;
    check_routed(&st, &headers, &key)?;
    let op = KeyOp::Delete {
        key,
        cond: precondition(&headers, false)?,
        session: session(&headers)?,
    };
    execute(&st, op, 0, &access).await
}

pub async fn get_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    Params(params): Params<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readonly)?;
    let key = validate_key(key)?;
    check_routed(&st, &headers, &key)?;
    let stale = stale(params.consistency.as_deref())?;
    let op = match params.blocking()? {
        None => KeyOp::Get { key, stale },
        Some((after, wait_ms)) => KeyOp::WaitGet {
            key,
            stale,
            after,
            wait_ms,
        },
    };
    execute(&st, op, 0, &access).await
}

/// `PUT/GET/DELETE /v1/kv/` with nothing after the slash.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("empty_key", "the key must not be empty")
}

/// Serve a key operation `op` that has been forwarded `hops` times, on behalf of a client
/// whose rights are `access`: here if this node can, else on the node that can. Whichever node
/// serves it checks the rights, and the answer is the client's, whichever node built it.
pub async fn execute(
    st: &AppState,
    op: KeyOp,
    hops: u32,
    access: &Access,
) -> Result<Response, ApiError> {
    let role = match &op {
        KeyOp::Get { .. } | KeyOp::WaitGet { .. } => Role::Readonly,
        _ => Role::Readwrite,
    };
    let Some(key) = op.key() else {
        return Err(ApiError::Internal(
            "a scan page is not a key operation".into(),
        ));
    };
    access.require(role, Some(key))?;
    let p = st.layout().partition_of(key);
    let gives_deadline = matches!(op, KeyOp::PutTtl { .. } | KeyOp::Refresh { .. });
    let me = st.config.id;
    let local_op = op.clone();
    let expiry = st.expiry.clone();
    serve(st, p, &op, hops, access, move |group| {
        let local_op = local_op.clone();
        let expiry = expiry.clone();
        async move {
            let mut resp = on_replica(group, local_op).await?;
            // This node led the write: its expirer may have an earlier deadline to keep.
            if gives_deadline && resp.status().is_success() {
                expiry.notify_one();
            }
            let h = resp.headers_mut();
            h.insert(HEADER_PARTITION, HeaderValue::from(p.0));
            h.insert(HEADER_NODE, HeaderValue::from(me.0));
            Ok(resp)
        }
    })
    .await
}

/// Run a key operation on this node's replica of its partition. Writes run on the leader
/// (routing sends them there), so `now` is the leader's clock: the time the commands carry,
/// from which deadlines are computed and by which conditions see a key as expired.
async fn on_replica(group: Group, op: KeyOp) -> Result<Response, GroupError> {
    // A blocking read waits here, on this replica, then answers as a read.
    let op = match op {
        KeyOp::WaitGet {
            key,
            stale,
            after,
            wait_ms,
        } => {
            wait_for_change(&group, &key, after, Duration::from_millis(wait_ms)).await?;
            KeyOp::Get { key, stale }
        }
        op => op,
    };
    let now = crate::ttl::now_ms();
    let name = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
    // Until the partition holds a key with a deadline, a put or delete without one proposes
    // the untimed command: it means the same there, and nodes from before TTLs apply it, so a
    // cluster that uses no TTLs can be upgraded node by node. (A TTL written but not yet
    // applied here when a later write checks is at least `MIN_TTL` from expiring, so the
    // untimed write still sees it as the timed one would.)
    let timed = group.has_deadlines();
    let (key, session, cmd) = match op {
        KeyOp::Get { key, stale } => {
            let record = group.get(key.clone(), stale).await?;
            // Whether a key with a deadline still lives is the leader's clock's call: a
            // follower's read of one is answered by the leader.
            let timed = record.as_ref().is_some_and(|r| r.expires_at.is_some());
            if !stale && timed && !group.is_leader() {
                return Err(GroupError::NotLeader {
                    leader: group.leader(),
                });
            }
            let record = record.filter(|r| r.live_at(now));
            return Ok(read_response(&key, record, stale, now));
        }
        KeyOp::Put {
            key,
            value,
            cond,
            session,
        } => {
            let cmd = if timed {
                Command::TimedPut {
                    key: key.clone(),
                    value,
                    expires_at: None,
                    cond: condition(cond),
                    now,
                }
            } else {
                Command::Put {
                    key: key.clone(),
                    value,
                    cond: condition(cond),
                }
            };
            (key, session, cmd)
        }
        KeyOp::PutTtl {
            key,
            value,
            cond,
            session,
            ttl_ms,
        } => {
            let cmd = Command::TimedPut {
                key: key.clone(),
                value,
                expires_at: Some(now.saturating_add(ttl_ms)),
                cond: condition(cond),
                now,
            };
            (key, session, cmd)
        }
        KeyOp::Delete { key, cond, session } => {
            let cmd = if timed {
                Command::TimedDelete {
                    key: key.clone(),
                    cond: condition(cond),
                    now,
                }
            } else {
                Command::Delete {
                    key: key.clone(),
                    cond: condition(cond),
                }
            };
            (key, session, cmd)
        }
        KeyOp::Refresh {
            key,
            cond,
            session,
            ttl_ms,
        } => {
            let cmd = Command::Refresh {
                key: key.clone(),
                expires_at: now.saturating_add(ttl_ms),
                cond: condition(cond),
                now,
            };
            (key, session, cmd)
        }
        KeyOp::ScanPage(_) | KeyOp::WaitGet { .. } | KeyOp::Changes(_) => {
            return Err(GroupError::BadRequest("not a key operation".into()))
        }
    };
    let (outcome, _) = group.write(once(session, cmd)).await?;
    Ok(write_response(name(&key), outcome, now))
}

/// Wait, up to `wait`, until `key` has changed since version `after` on this replica (see
/// [`crate::wire::changed_since`]), woken by each command on the key applied here.
async fn wait_for_change(
    group: &Group,
    key: &[u8],
    after: u64,
    wait: Duration,
) -> Result<(), GroupError> {
    let until = tokio::time::Instant::now() + wait;
    let waiter = group.wait_on(key);
    loop {
        let next = waiter.next_change();
        let now = crate::ttl::now_ms();
        let current = group
            .get(key.to_vec(), true)
            .await?
            .filter(|r| r.live_at(now))
            .map_or(0, |r| r.version);
        if changed_since(current, after) {
            return Ok(());
        }
        tokio::select! {
            _ = next => {}
            _ = tokio::time::sleep_until(until) => return Ok(()),
        }
    }
}

fn condition(cond: Precondition) -> Condition {
    match cond {
        Precondition::None => Condition::Always,
        Precondition::Version(v) => Condition::Version(v),
        Precondition::Absent => Condition::Absent,
    }
}

/// `cmd`, applied at most once if it belongs to a client session.
fn once(session: Option<Session>, cmd: Command) -> Command {
    match session {
        None => cmd,
        Some(s) => Command::Once {
            client: s.client,
            seq: s.seq,
            ack_below: s.ack_below,
            command: Box::new(cmd),
        },
    }
}

fn read_response(key: &[u8], record: Option<kv_raft::Record>, stale: bool, now: u64) -> Response {
    let consistency = HeaderValue::from_static(if stale { "stale" } else { "linearizable" });
    let mut resp = match record {
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
            if let Some(deadline) = r.expires_at {
                h.insert(
                    HEADER_TTL_REMAINING,
                    HeaderValue::from(crate::ttl::remaining_secs(deadline, now)),
                );
            }
            resp
        }
        None => ApiError::NotFound {
            code: "key_not_found",
            message: format!("key {:?} does not exist", String::from_utf8_lossy(key)),
        }
        .into_response(),
    };
    resp.headers_mut().insert(HEADER_CONSISTENCY, consistency);
    resp
}

fn write_response(key: String, outcome: Outcome, now: u64) -> Response {
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
        Outcome::Refreshed {
            version,
            expires_at,
        } => Json(RefreshResult {
            key,
            version,
            ttl_ms: expires_at.saturating_sub(now),
        })
        .into_response(),
        // Only the expirer proposes expiries; answered as the delete it is.
        Outcome::Expired { version } => Json(DeleteResult {
            key,
            deleted: true,
            version,
        })
        .into_response(),
    }
}

const DEFAULT_SCAN_LIMIT: usize = 1_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanParams {
    #[serde(default)]
    prefix: String,
    limit: Option<String>,
    consistency: Option<String>,
    /// Only keys after this one: the `next` of the previous page.
    start_after: Option<String>,
    /// The older name of `start_after`.
    after: Option<String>,
    /// `true`: keys and versions only, no values.
    keys_only: Option<String>,
}

impl ScanParams {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_SCAN_LIMIT),
            Some(raw) => match parse_decimal(raw).and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (1..=MAX_SCAN_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_SCAN_LIMIT}, got {raw:?}"),
                )),
            },
        }
    }

    fn start_after(&self) -> Result<Option<Vec<u8>>, ApiError> {
        let cursor = match (&self.start_after, &self.after) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "use start_after or its older name after, not both",
                ))
            }
            (Some(c), None) | (None, Some(c)) => Some(c.clone().into_bytes()),
            (None, None) => None,
        };
        if cursor
            .as_ref()
            .is_some_and(|c| c.len() > crate::config::MAX_KEY_BYTES)
        {
            return Err(ApiError::TooLarge(
                "start_after is longer than any key".into(),
            ));
        }
        Ok(cursor)
    }

    fn keys_only(&self) -> Result<bool, ApiError> {
        match self.keys_only.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(
                "invalid_query",
                format!("keys_only must be true or false, not {other:?}"),
            )),
        }
    }
}

impl Answer for Page {
    fn from_peer(resp: PeerAnswer) -> Result<Self, ApiError> {
        crate::routing::decode_answer(resp, "scan page")
    }
}

/// One partition's page, from its leader (or any replica for stale reads), wherever it is,
/// holding only keys `access` covers.
pub async fn scan_page(
    st: &AppState,
    req: PageRequest,
    hops: u32,
    access: &Access,
) -> Result<Page, ApiError> {
    access.require(Role::Readonly, None)?;
    let p = PartitionId(req.partition);
    let op = KeyOp::ScanPage(req.clone());
    let allowed = access.clone();
    serve(st, p, &op, hops, access, move |group| {
        let req = req.clone();
        let allowed = allowed.clone();
        async move {
            let limit = req.limit as usize;
            let max_bytes = usize::try_from(req.max_bytes).unwrap_or(usize::MAX);
            // One more than asked: tells whether the partition holds more.
            let start_after = req.start_after.map(|c| c.into_vec());
            // Keys past their deadline by this node's clock are left out; a follower's
            // linearizable page holding keys with deadlines is the leader's to answer, by its
            // clock (as for a read of one key).
            let leads = group.is_leader();
            let live_at = (req.stale || leads).then(crate::ttl::now_ms);
            let mut rows = group
                .scan(
                    req.prefix,
                    start_after,
                    limit + 1,
                    max_bytes,
                    req.stale,
                    live_at,
                )
                .await?;
            if live_at.is_none() && rows.iter().any(|(_, r)| r.expires_at.is_some()) {
                return Err(GroupError::NotLeader {
                    leader: group.leader(),
                });
            }
            let more = rows.len() > limit
                || rows
                    .iter()
                    .map(|(k, r)| k.len() + r.value.len())
                    .sum::<usize>()
                    >= max_bytes;
            rows.truncate(limit);
            let rows = rows
                .into_iter()
                // The cursor moves past keys the caller may not see, without showing them.
                .map(|(key, record)| {
                    let visible = allowed.covers(&key);
                    Row {
                        value: (visible && !req.keys_only)
                            .then(|| serde_bytes::ByteBuf::from(record.value)),
                        version: if visible { record.version } else { 0 },
                        hidden: !visible,
                        key,
                    }
                })
                .collect();
            Ok(Page { rows, more })
        }
    })
    .await
}

/// Refuse a prefix (of a scan or a watch) longer than any key, or one whose keys `access`
/// cannot read any of.
pub(crate) fn check_prefix(access: &Access, prefix: &[u8]) -> Result<(), ApiError> {
    if prefix.len() > crate::config::MAX_KEY_BYTES {
        return Err(ApiError::TooLarge(
            "the prefix is longer than any key".into(),
        ));
    }
    if let Access::Grant(grant) = access {
        if !grant.overlaps(prefix) {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may not read keys with prefix {:?}",
                grant.name,
                String::from_utf8_lossy(prefix)
            )));
        }
    }
    Ok(())
}

/// One partition's place in the merge: the rows fetched and not yet merged, where its next
/// page starts, and whether it has more.
struct Source {
    partition: u32,
    rows: VecDeque<Row>,
    cursor: Option<Vec<u8>>,
    more: bool,
}

/// `GET /v1/kv?prefix=p&limit=n[&start_after=k][&keys_only=true]`: the matching keys of every
/// partition, merged in key order, at most `limit` keys and about `--max-scan-bytes` of keys
/// and values per answer; `next` is where the following page starts when the answer was cut.
/// Each partition is asked for pages of what the merge needs, not for the whole `limit`.
pub async fn scan(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Params(params): Params<ScanParams>,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readonly)?;
    let limit = params.limit()?;
    let stale = stale(params.consistency.as_deref())?;
    let start_after = params.start_after()?;
    let keys_only = params.keys_only()?;
    let prefix = params.prefix.into_bytes();
    check_prefix(&access, &prefix)?;
    let budget = st.config.max_scan_bytes;
    let partitions = st.layout().partitions();
    // Pages big enough that an even spread of keys needs one round, bounded in bytes so that
    // all partitions' pages together stay near one answer's budget.
    let page_rows = (limit / partitions as usize + 1)
        .saturating_mul(2)
        .min(limit + 1);
    let page_bytes = (budget / partitions as usize).max(64 * 1024);
    let mut sources: Vec<Source> = (0..partitions)
        .map(|partition| Source {
            partition,
            rows: VecDeque::new(),
            cursor: start_after.clone(),
            more: true,
        })
        .collect();
    let mut items: Vec<ScanItem> = Vec::new();
    let mut bytes = 0usize;
    let mut cut = false;
    'merge: loop {
        // Refill every source that ran dry but has more, all at once.
        let refill: Vec<usize> = (0..sources.len())
            .filter(|i| sources[*i].rows.is_empty() && sources[*i].more)
            .collect();
        let pages = futures::future::try_join_all(refill.iter().map(|i| {
            let req = PageRequest {
                partition: sources[*i].partition,
                prefix: prefix.clone(),
                start_after: sources[*i].cursor.clone().map(serde_bytes::ByteBuf::from),
                limit: page_rows as u32,
                max_bytes: page_bytes as u64,
                keys_only,
                stale,
            };
            scan_page(&st, req, 0, &access)
        }))
        .await?;
        for (i, page) in refill.into_iter().zip(pages) {
            let source = &mut sources[i];
            source.more = page.more && !page.rows.is_empty();
            if let Some(last) = page.rows.last() {
                source.cursor = Some(last.key.clone());
            }
            source.rows.extend(page.rows);
        }
        // Merge while every source that may hold more has rows to compare: a dry one could
        // hold a smaller key in its next page.
        loop {
            if sources.iter().any(|s| s.rows.is_empty() && s.more) {
                continue 'merge;
            }
            let Some(next) = sources
                .iter_mut()
                .filter(|s| !s.rows.is_empty())
                .min_by(|a, b| a.rows[0].key.cmp(&b.rows[0].key))
            else {
                break 'merge;
            };
            if items.len() == limit || (!items.is_empty() && bytes + next.rows[0].size() > budget) {
                cut = true;
                break 'merge;
            }
            let Some(row) = next.rows.pop_front() else {
                break 'merge;
            };
            if row.hidden {
                continue;
            }
            bytes += row.size();
            items.push(scan_item(row));
        }
    }
    let next = cut.then(|| items.last().map(|i| i.key.clone())).flatten();
    Ok(Json(ScanResult {
        items,
        truncated: cut,
        next,
    })
    .into_response())
}

fn scan_item(row: Row) -> ScanItem {
    // Keys come from URL paths, which are UTF-8.
    let key = String::from_utf8_lossy(&row.key).into_owned();
    let (value, value_b64) = match row.value.map(|v| v.into_vec()) {
        None => (None, None),
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        },
    };
    ScanItem {
        key,
        version: row.version,
        value,
        value_b64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn if_match_takes_one_strong_version_or_a_bare_number_only() {
        let version = |v: &'static str| precondition(&with(header::IF_MATCH, v), true);
        assert_eq!(version("\"7\"").unwrap(), Precondition::Version(7));
        assert_eq!(version("7").unwrap(), Precondition::Version(7));
        assert_eq!(version(" \"7\" ").unwrap(), Precondition::Version(7));
        for bad in [
            "\"seven\"",
            "\"+5\"",
            "+5",
            "\"\"\"5",
            "\"5",
            "5\"",
            "W/\"1\"",
            "w/\"1\"",
            "\"1\", \"2\"",
            "\"-1\"",
            "\" 5\"",
            "",
            "\"\"",
            "*",
            "99999999999999999999999",
        ] {
            assert!(version(bad).is_err(), "{bad:?} accepted");
        }
        let h = with(header::IF_NONE_MATCH, "*");
        assert_eq!(precondition(&h, true).unwrap(), Precondition::Absent);
        assert!(precondition(&h, false).is_err());
        let mut both = h.clone();
        both.insert(header::IF_MATCH, HeaderValue::from_static("1"));
        assert!(precondition(&both, true).is_err(), "both headers at once");
        let mut twice = with(header::IF_MATCH, "1");
        twice.append(header::IF_MATCH, HeaderValue::from_static("2"));
        assert!(precondition(&twice, true).is_err(), "the header twice");
    }

    #[test]
    fn keys_are_bounded() {
        let max = crate::config::MAX_KEY_BYTES;
        assert!(validate_key(String::new()).is_err());
        assert!(validate_key("k".repeat(max)).is_ok());
        assert!(matches!(
            validate_key("k".repeat(max + 1)),
            Err(ApiError::TooLarge(_))
        ));
    }

    #[test]
    fn session_numbers_are_digits_only() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_CLIENT_ID, HeaderValue::from_static("+3"));
        h.insert(HEADER_REQUEST_SEQ, HeaderValue::from_static("1"));
        assert!(session(&h).is_err());
        h.insert(HEADER_CLIENT_ID, HeaderValue::from_static("3"));
        assert_eq!(
            session(&h).unwrap(),
            Some(Session {
                client: 3,
                seq: 1,
                ack_below: 0
            })
        );
    }
}
