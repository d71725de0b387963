//! Watches: `GET /v1/watch?prefix=P` and `GET /v1/watch/{key}` stream the changes of the
//! matching keys as Server-Sent Events, from the committed history of every partition they
//! span, resumable from a cursor.
//!
//! Each partition's changes come from its change history (kv-storage writes one row per change
//! as it applies a committed entry, identical on every replica), read by a *feed*: one task per
//! partition of the watch, reading from this node's replica when it hosts the partition and
//! from another replica (a [`KeyOp::Changes`] over the peer channel) when not. A feed waits at
//! the replica until a matching change is applied, so idle watches cost no reads.
//!
//! The cursor is the position of every watched partition in its history (log index, and the
//! change's place among its entry's changes): every event carries the cursor just past it as
//! its `id:`, so a client that reconnects with `Last-Event-ID` (or `since=`) gets every later
//! change once, in order per key, from any node. A cursor older than the history a replica
//! holds gets `410 compacted` with a cursor from which to resume after re-reading.
//!
//! Bounds: a watch holds a few pages of changes at most (the history stays in storage until a
//! consumer takes it); a consumer that leaves a page untaken for [`SLOW_CONSUMER`] is cut off
//! (`slow_consumer`) and resumes from its cursor. Idle streams get a keep-alive comment every
//! [`KEEP_ALIVE`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use kv_client::api::{WatchError, WatchEvent, WatchEventKind, WATCH_COMPACTED};
use kv_raft::{ChangePos, Group, GroupError};
use kv_ring::PartitionId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::extract::Params;
use crate::api::kv::KeyPath;
use crate::auth::{Access, Caller, Role};
use crate::changes::Attach;
use crate::error::{ApiError, PeerAnswer};
use crate::layout::group_of;
use crate::routing::{serve, Answer};
use crate::state::AppState;
use crate::wire::{check_key, ChangeRow, ChangeType, ChangesPage, ChangesRequest, KeyOp};

/// A keep-alive comment (or the cursor, if it moved) goes out after this long without events.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A page a consumer leaves untaken this long cuts its stream off (less than the front's
/// write stall timeout, so that the consumer is told why when it reads again).
pub const SLOW_CONSUMER: Duration = Duration::from_secs(5);
/// How long a feed's request for changes waits at another node's replica.
const REMOTE_WAIT: Duration = Duration::from_secs(30);
/// How long a feed's request waits at this node's replica (a timer, no reads, while idle).
const LOCAL_WAIT: Duration = crate::wire::MAX_CHANGES_WAIT;
/// Changes per page.
const PAGE_LIMIT: u32 = 256;
/// Bytes of keys and values per page (a page holds one change at least).
const PAGE_BYTES: u64 = 256 << 10;
/// Pages on their way from a watch's feeds to its stream: what one watch holds besides the
/// page it is sending, whatever the number of partitions.
const PAGES_IN_FLIGHT: usize = 2;
/// Longest accepted cursor (a position per partition).
const MAX_CURSOR_BYTES: usize = 64 << 10;

/// Query of `GET /v1/watch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    #[serde(default)]
    prefix: String,
    since: Option<String>,
}

/// Query of `GET /v1/watch/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyWatchParams {
    since: Option<String>,
}

/// `GET /v1/watch?prefix=P[&since=CURSOR]`: the changes of every key with prefix `P` (all
/// keys when empty), across every partition.
pub async fn watch_prefix(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Params(params): Params<WatchParams>,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readonly)?;
    let prefix = params.prefix.into_bytes();
    crate::api::kv::check_prefix(&access, &prefix)?;
    let partitions = (0..st.layout().partitions()).collect();
    let spec = Spec {
        prefix,
        exact: false,
        partitions,
    };
    start(st, access, spec, since(&headers, params.since)?).await
}

/// `GET /v1/watch/{key}[?since=CURSOR]`: the changes of one key.
pub async fn watch_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
    Params(params): Params<KeyWatchParams>,
) -> Result<Response, ApiError> {
    let access = caller.access(Role::Readonly)?;
    let key = key.into_bytes();
    check_key(&key)?;
    access.require(Role::Readonly, Some(&key))?;
    let p = st.layout().partition_of(&key);
    let spec = Spec {
        prefix: key,
        exact: true,
        partitions: vec![p.0],
    };
    start(st, access, spec, since(&headers, params.since)?).await
}

/// The cursor to start from: `Last-Event-ID` (an EventSource reconnecting) before `since`.
fn since(headers: &HeaderMap, query: Option<String>) -> Result<Option<String>, ApiError> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::bad_request("invalid_cursor", "Last-Event-ID is not a cursor")),
        None => Ok(query),
    }
}

/// What a watch follows.
#[derive(Debug, Clone)]
struct Spec {
    prefix: Vec<u8>,
    exact: bool,
    partitions: Vec<u32>,
}

impl Spec {
    fn request(&self, partition: u32, after: Option<ChangePos>, wait: Duration) -> ChangesRequest {
        ChangesRequest {
            partition,
            prefix: self.prefix.clone(),
            exact: self.exact,
            after,
            wait_ms: wait.as_millis() as u64,
            limit: PAGE_LIMIT,
            max_bytes: PAGE_BYTES,
        }
    }
}

/// Positions in the history of each watched partition: every change at or before a position
/// has been delivered (or did not match).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor(BTreeMap<u32, ChangePos>);

impl Cursor {
    /// Parse `P:INDEX[.SUB],...`, keeping the partitions of `spec`, which must all be there.
    fn parse(text: &str, spec: &Spec) -> Result<Cursor, ApiError> {
        let bad = |why: String| ApiError::bad_request("invalid_cursor", why);
        if text.len() > MAX_CURSOR_BYTES {
            return Err(bad(format!("a cursor is at most {MAX_CURSOR_BYTES} bytes")));
        }
        let mut positions = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let parsed = part.split_once(':').and_then(|(p, pos)| {
                let p = crate::api::kv::parse_decimal(p)?;
                let (index, sub) = match pos.split_once('.') {
                    Some((i, s)) => (
                        crate::api::kv::parse_decimal(i)?,
                        u32::try_from(crate::api::kv::parse_decimal(s)?).ok()?,
                    ),
                    None => (crate::api::kv::parse_decimal(pos)?, u32::MAX),
                };
                Some((u32::try_from(p).ok()?, ChangePos { index, sub }))
            });
            let Some((p, pos)) = parsed else {
                return Err(bad(format!("{part:?} is not PARTITION:INDEX[.SUB]")));
            };
            if positions.insert(p, pos).is_some() {
                return Err(bad(format!("partition {p} appears twice")));
            }
        }
        let mut cursor = Cursor::default();
        for p in &spec.partitions {
            let Some(pos) = positions.get(p) else {
                return Err(bad(format!(
                    "the cursor has no position for partition {p}; it is not from this watch"
                )));
            };
            cursor.0.insert(*p, *pos);
        }
        Ok(cursor)
    }

    fn encode(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 12);
        for (p, pos) in &self.0 {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = match pos.sub {
                u32::MAX => write!(out, "{p}:{}", pos.index),
                sub => write!(out, "{p}:{}.{sub}", pos.index),
            };
        }
        out
    }
}

/// Check where the watch starts and answer with its stream.
async fn start(
    st: AppState,
    access: Access,
    spec: Spec,
    since: Option<String>,
) -> Result<Response, ApiError> {
    let permit = st.admission.try_watch()?;
    let cursor = match since {
        None => now(&st, &access, &spec).await?,
        Some(text) => {
            let cursor = Cursor::parse(&text, &spec)?;
            // A cursor the history no longer reaches gets 410 before any stream.
            let checks = cursor.0.iter().map(|(p, pos)| {
                let mut req = spec.request(*p, Some(*pos), Duration::ZERO);
                req.limit = 1;
                changes_page(&st, req, 0, &access)
            });
            for page in futures::future::join_all(checks).await {
                if page?.compacted.is_some() {
                    let current = now(&st, &access, &spec).await?;
                    return Ok(compacted(&current).into_response());
                }
            }
            cursor
        }
    };
    metrics::gauge!("kv_watches").increment(1.0);
    let (tx, rx) = mpsc::channel(PAGES_IN_FLIGHT);
    let cut = Arc::new(AtomicBool::new(false));
    let mut feeds = JoinSet::new();
    for (p, pos) in &cursor.0 {
        feeds.spawn(follow(
            st.clone(),
            access.clone(),
            spec.clone(),
            *p,
            *pos,
            tx.clone(),
            cut.clone(),
        ));
    }
    drop(tx);
    let mut stream = Stream {
        st,
        access,
        spec,
        sent: cursor.encode(),
        cursor,
        rx,
        cut,
        pending: VecDeque::new(),
        done: false,
        _feeds: feeds,
        _permit: permit,
    };
    // The start position first: a client that loses the stream before any event resumes here.
    stream.pending.push_back(id_only(&stream.sent));
    let body = Body::from_stream(futures::stream::unfold(stream, Stream::next));
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response())
}

/// Where every watched partition's history ends now.
async fn now(st: &AppState, access: &Access, spec: &Spec) -> Result<Cursor, ApiError> {
    let asks = spec
        .partitions
        .iter()
        .map(|p| changes_page(st, spec.request(*p, None, Duration::ZERO), 0, access));
    let mut cursor = Cursor::default();
    for (p, page) in spec
        .partitions
        .iter()
        .zip(futures::future::join_all(asks).await)
    {
        cursor.0.insert(*p, page?.position);
    }
    Ok(cursor)
}

/// The `410` of a cursor the history no longer reaches.
fn compacted(current: &Cursor) -> (StatusCode, Json<WatchError>) {
    (
        StatusCode::GONE,
        Json(WatchError {
            error: WATCH_COMPACTED.into(),
            message: "the history before this cursor was compacted: read the keys again, then \
                      watch from `current`"
                .into(),
            current: Some(current.encode()),
        }),
    )
}

/// What a feed hands its stream.
enum Delivery {
    Page {
        partition: u32,
        page: ChangesPage,
    },
    /// The partition's history no longer reaches the feed's position.
    Compacted,
    /// A failure retrying cannot mend.
    Failed(ApiError),
}

/// Follow partition `p`'s changes from `pos`, handing each page to `tx`, until the stream
/// goes away, fails or leaves a page untaken for [`SLOW_CONSUMER`] (then `cut` is set): from
/// this node's replica through its hub while this node hosts the partition, else from
/// another replica.
async fn follow(
    st: AppState,
    access: Access,
    spec: Spec,
    p: u32,
    mut pos: ChangePos,
    tx: mpsc::Sender<Delivery>,
    cut: Arc<AtomicBool>,
) {
    let out = Out { p, tx, cut };
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(group) = st.host.group(group_of(PartitionId(p))) {
            // Boxed, as the calls below: an idle feed's task holds only the state it waits in.
            if !Box::pin(follow_here(&st, &group, &access, &spec, &mut pos, &out)).await {
                return;
            }
        }
        let req = spec.request(p, Some(pos), REMOTE_WAIT);
        let page = tokio::select! {
            _ = out.tx.closed() => return,
            page = Box::pin(changes_page(&st, req, 0, &access)) => page,
        };
        match page {
            Ok(page) if page.compacted.is_some() => {
                out.last(Delivery::Compacted).await;
                return;
            }
            Ok(page) => {
                backoff = Duration::from_millis(50);
                if !out.page(&mut pos, page).await {
                    return;
                }
            }
            Err(e) if retryable(&e) => {
                tracing::debug!(partition = p, error = %e, "watch feed retries");
                tokio::select! {
                    _ = out.tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                out.last(Delivery::Failed(e)).await;
                return;
            }
        }
    }
}

/// Follow a partition this node hosts, through its hub: catch up from storage, then take what
/// the hub hands over. Returns whether the feed goes on elsewhere (the group stopped here).
async fn follow_here(
    st: &AppState,
    group: &Group,
    access: &Access,
    spec: &Spec,
    pos: &mut ChangePos,
    out: &Out,
) -> bool {
    let hub = st.changes.of(group);
    let request = spec.request(out.p, None, Duration::ZERO);
    loop {
        match hub.attach(&request, access, *pos) {
            Attach::Stopped => return true,
            Attach::Behind => {
                let req = spec.request(out.p, Some(*pos), Duration::ZERO);
                let page = match Box::pin(on_replica(group.clone(), req, access.clone())).await {
                    Ok(page) => page,
                    Err(_) => return true,
                };
                if page.compacted.is_some() {
                    out.last(Delivery::Compacted).await;
                    return false;
                }
                if !out.page(pos, page).await {
                    return false;
                }
            }
            Attach::Attached(attached) => loop {
                tokio::select! {
                    _ = out.tx.closed() => return false,
                    _ = attached.feed.wake.notified() => {}
                    // The cursor moves on past changes of other keys now and then.
                    _ = tokio::time::sleep(LOCAL_WAIT) => {}
                }
                let taken = attached.feed.take();
                if taken.compacted {
                    out.last(Delivery::Compacted).await;
                    return false;
                }
                let page = ChangesPage {
                    rows: taken.rows,
                    position: taken.position,
                    compacted: None,
                };
                if !out.page(pos, page).await {
                    return false;
                }
                if taken.stopped {
                    return true;
                }
                // Its consumer lags: read storage from here (the hub queues no more).
                if taken.detached {
                    break;
                }
            },
        }
    }
}

/// Where a feed hands its pages.
struct Out {
    p: u32,
    tx: mpsc::Sender<Delivery>,
    cut: Arc<AtomicBool>,
}

impl Out {
    /// Hand `page` on if it moves the feed past `pos`; false when the feed should end (the
    /// stream went away, or its consumer left it untaken for [`SLOW_CONSUMER`]).
    async fn page(&self, pos: &mut ChangePos, page: ChangesPage) -> bool {
        if page.rows.is_empty() && page.position <= *pos {
            return true;
        }
        *pos = (*pos).max(page.position);
        let page = Delivery::Page {
            partition: self.p,
            page,
        };
        match self.tx.send_timeout(page, SLOW_CONSUMER).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                metrics::counter!("kv_watches_cut_off_total").increment(1);
                self.cut.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }

    /// Hand on the feed's last word.
    async fn last(&self, delivery: Delivery) {
        let _ = self.tx.send_timeout(delivery, SLOW_CONSUMER).await;
    }
}

/// Failures a feed waits out: no leader or replica reachable for now, this node overloaded.
fn retryable(e: &ApiError) -> bool {
    match e {
        ApiError::Unavailable { .. } | ApiError::Overloaded(_) | ApiError::Internal(_) => true,
        ApiError::Relayed(answer) => {
            answer.status.is_server_error() || answer.status.as_u16() == 429
        }
        _ => false,
    }
}

/// One watch's event stream.
struct Stream {
    st: AppState,
    access: Access,
    spec: Spec,
    cursor: Cursor,
    /// The cursor last sent as an `id:`.
    sent: String,
    rx: mpsc::Receiver<Delivery>,
    cut: Arc<AtomicBool>,
    /// Messages ready to go.
    pending: VecDeque<Bytes>,
    done: bool,
    /// Dropped with the stream: the feeds stop, the watch's room is given back.
    _feeds: JoinSet<()>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Stream {
    fn drop(&mut self) {
        metrics::gauge!("kv_watches").decrement(1.0);
    }
}

impl Stream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Stream)> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some((Ok(message), self));
            }
            if self.done {
                return None;
            }
            if self.cut.load(Ordering::Acquire) {
                self.fail(
                    "slow_consumer",
                    "the watch fell too far behind and was cut off; resume from the last cursor",
                    None,
                );
                continue;
            }
            let feed = match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
                Err(_) => {
                    let cursor = self.cursor.encode();
                    if cursor != self.sent {
                        self.pending.push_back(id_only(&cursor));
                        self.sent = cursor;
                    } else {
                        self.pending
                            .push_back(Bytes::from_static(b": keep-alive\n\n"));
                    }
                    continue;
                }
                Ok(None) => {
                    self.done = true;
                    continue;
                }
                Ok(Some(feed)) => feed,
            };
            match feed {
                Delivery::Page { partition, page } => self.deliver(partition, page),
                Delivery::Compacted => match now(&self.st, &self.access, &self.spec).await {
                    Ok(current) => self.fail(
                        "compacted",
                        "the history this watch needs next was compacted: read the keys \
                         again, then watch from `current`",
                        Some(current.encode()),
                    ),
                    Err(e) => self.fail("unavailable", &e.to_string(), None),
                },
                Delivery::Failed(e) => {
                    let code = match &e {
                        ApiError::Forbidden(_) => "forbidden",
                        ApiError::Unauthorized(_) => "unauthorized",
                        _ => "unavailable",
                    };
                    self.fail(code, &e.to_string(), None)
                }
            }
        }
    }

    /// Queue a page's events, each with the cursor just past it.
    fn deliver(&mut self, partition: u32, page: ChangesPage) {
        let events = page.rows.len();
        for row in &page.rows {
            if let Some(pos) = self.cursor.0.get_mut(&partition) {
                *pos = (*pos).max(row.position);
            }
            let id = self.cursor.encode();
            self.pending.push_back(event(row, &id));
            self.sent = id;
        }
        if let Some(pos) = self.cursor.0.get_mut(&partition) {
            *pos = (*pos).max(page.position);
        }
        metrics::counter!("kv_watch_events_total").increment(events as u64);
    }

    /// End the stream with an error event.
    fn fail(&mut self, code: &str, message: &str, current: Option<String>) {
        #[derive(Serialize)]
        struct ErrorEvent {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            error: WatchError,
        }
        let body = ErrorEvent {
            kind: "error",
            error: WatchError {
                error: code.into(),
                message: message.into(),
                current,
            },
        };
        let data = serde_json::to_string(&body).unwrap_or_default();
        self.pending
            .push_back(Bytes::from(format!("data: {data}\n\n")));
        self.done = true;
    }
}

/// A change as an event with cursor `id`.
fn event(row: &ChangeRow, id: &str) -> Bytes {
    let value = row.value.as_deref();
    let text = value.and_then(|v| std::str::from_utf8(v).ok());
    let body = WatchEvent {
        kind: match row.kind {
            ChangeType::Put => WatchEventKind::Put,
            ChangeType::Delete => WatchEventKind::Delete,
            ChangeType::Expire => WatchEventKind::Expire,
        },
        key: String::from_utf8_lossy(&row.key).into_owned(),
        version: row.version,
        value: text.map(str::to_string),
        value_b64: match (value, text) {
            (Some(v), None) => Some(base64::engine::general_purpose::STANDARD.encode(v)),
            _ => None,
        },
    };
    let data = serde_json::to_string(&body).unwrap_or_default();
    Bytes::from(format!("id: {id}\ndata: {data}\n\n"))
}

fn id_only(cursor: &str) -> Bytes {
    Bytes::from(format!("id: {cursor}\n\n"))
}

impl Answer for ChangesPage {
    fn from_peer(resp: PeerAnswer) -> Result<Self, ApiError> {
        crate::routing::decode_answer(resp, "changes")
    }
}

/// One partition's changes after a position, from this node's replica or another's, holding
/// only keys `access` covers.
pub async fn changes_page(
    st: &AppState,
    mut req: ChangesRequest,
    hops: u32,
    access: &Access,
) -> Result<ChangesPage, ApiError> {
    access.require(Role::Readonly, None)?;
    req.max_bytes = req.max_bytes.clamp(1, st.config.max_scan_bytes as u64);
    let p = PartitionId(req.partition);
    let op = KeyOp::Changes(req.clone());
    let allowed = access.clone();
    serve(st, p, &op, hops, access, move |group| {
        on_replica(group, req.clone(), allowed.clone())
    })
    .await
}

/// Serve `req` from this replica's history, waiting up to its wait for a matching change.
async fn on_replica(
    group: Group,
    req: ChangesRequest,
    allowed: Access,
) -> Result<ChangesPage, GroupError> {
    let mut applied = group.applied_index();
    let Some(mut after) = req.after else {
        let head = *applied.borrow_and_update();
        return Ok(ChangesPage {
            rows: Vec::new(),
            position: ChangePos::end_of(head),
            compacted: None,
        });
    };
    let deadline = Instant::now() + Duration::from_millis(req.wait_ms);
    let limit = req.limit as usize;
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(usize::MAX);
    loop {
        // Read before the history: every change up to `head` is in what is read next.
        let head = *applied.borrow_and_update();
        let page = group.changes(after, limit, max_bytes).await?;
        if crate::changes::compacted(&page, after) {
            return Ok(ChangesPage {
                rows: Vec::new(),
                position: ChangePos::end_of(head),
                compacted: Some(page.start),
            });
        }
        let (position, full) =
            crate::changes::page_end(&page, after, ChangePos::end_of(head), limit, max_bytes);
        let rows: Vec<ChangeRow> = page
            .rows
            .into_iter()
            .filter(|(_, c)| req.matches(&c.key) && allowed.covers(&c.key))
            .map(|(position, c)| crate::changes::row(position, c))
            .collect();
        if !rows.is_empty() || full || Instant::now() >= deadline {
            return Ok(ChangesPage {
                rows,
                position,
                compacted: None,
            });
        }
        after = position;
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Err(_) => {
                return Ok(ChangesPage {
                    rows: Vec::new(),
                    position: after,
                    compacted: None,
                })
            }
            // The group closed here (moved away, node stopping): routed again by the caller.
            Ok(Err(_)) => {
                return Err(GroupError::Unavailable(format!(
                    "partition group {} closed on this node",
                    group.id()
                )))
            }
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: &[u32]) -> Spec {
        Spec {
            prefix: b"a".to_vec(),
            exact: false,
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursor = Cursor::parse("0:12,1:7.3,2:0", &spec(&[0, 1, 2])).unwrap();
        assert_eq!(cursor.0[&1], ChangePos { index: 7, sub: 3 });
        assert_eq!(cursor.0[&0], ChangePos::end_of(12));
        assert_eq!(cursor.encode(), "0:12,1:7.3,2:0");
        // A key watch keeps its partition of a prefix watch's cursor.
        assert_eq!(
            Cursor::parse("0:12,1:7.3", &spec(&[1])).unwrap().encode(),
            "1:7.3"
        );
        for bad in [
            "0:12",
            "0:1,0:2,1:3",
            "x:1,1:2",
            "0:1.x,1:2",
            "0:-1,1:2",
            "0:1.99999999999,1:2",
        ] {
            let err = Cursor::parse(bad, &spec(&[0, 1])).unwrap_err();
            assert!(
                matches!(
                    err,
                    ApiError::BadRequest {
                        code: "invalid_cursor",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_carry_text_or_base64_values() {
        let row = |value: &[u8]| ChangeRow {
            position: ChangePos { index: 5, sub: 0 },
            kind: ChangeType::Put,
            key: b"k".to_vec(),
            version: 5,
            value: Some(serde_bytes::ByteBuf::from(value.to_vec())),
        };
        let text = event(&row(b"hi"), "0:5.0");
        assert_eq!(
            &text[..],
            b"id: 0:5.0\ndata: {\"type\":\"put\",\"key\":\"k\",\"version\":5,\"value\":\"hi\"}\n\n"
        );
        let binary = String::from_utf8(event(&row(&[0xff]), "0:5.0").to_vec()).unwrap();
        assert!(binary.contains("\"value_b64\":\"/w==\""), "{binary}");
    }
}
