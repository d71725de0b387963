//! Wire types of the HTTP/JSON API (see DESIGN.md, "Client API").

use serde::{Deserialize, Serialize};

/// Header naming the partition that served a key request.
pub const HEADER_PARTITION: &str = "x-kv-partition";
/// Header carrying the node that answered (after any forwarding).
pub const HEADER_NODE: &str = "x-kv-node";
/// Header with the consistency a read was served at (`linearizable` or `stale`).
pub const HEADER_CONSISTENCY: &str = "x-kv-consistency";
/// Request header: the epoch of the partition map the sender routed by. A node that no longer
/// hosts the key's partition under a newer map answers `421` with its [`Routes`]
/// ([`Misdirected`]) instead of forwarding.
pub const HEADER_EPOCH: &str = "x-kv-epoch";
/// Header of a read answer for a key with a deadline (`?ttl=`): the seconds it has left,
/// rounded up. Absent for keys without one.
pub const HEADER_TTL_REMAINING: &str = "x-kv-ttl-remaining";
/// The shortest and the longest time to live a key may be given (`?ttl=`).
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
/// Header a forwarding node adds; it counts hops to stop forwarding loops.
pub const HEADER_FORWARDED: &str = "x-kv-forwarded";

/// Write request header: the writing client's id, a random non-zero decimal `u64` chosen once
/// per client. With [`HEADER_REQUEST_SEQ`] it names one logical write, so a retried write can
/// be answered with its first outcome instead of being applied twice.
pub const HEADER_CLIENT_ID: &str = "x-kv-client-id";
/// Write request header: the decimal sequence number of this write within its client. A retry
/// of the same write carries the same number.
pub const HEADER_REQUEST_SEQ: &str = "x-kv-request-seq";
/// Write request header: the lowest sequence number of the client's writes still in flight
/// (decimal). The client will never retry a write numbered below it, so the server may forget
/// their outcomes.
pub const HEADER_ACK_BELOW: &str = "x-kv-ack-below";

/// Body of every error answer: a stable machine-readable `error` code and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// On `412 precondition_failed`: the key's current version (`null` if absent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub current_version: Option<Option<u64>>,
    /// On `503`: the leader this node believes in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

/// A field that is present (even as `null`) is `Some`; only a missing one is `None` (serde's
/// plain `Option` reads `null` as missing).
fn present<'de, D>(deserializer: D) -> Result<Option<Option<u64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<u64>::deserialize(deserializer).map(Some)
}

/// Answer to a successful `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub key: String,
    pub version: u64,
}

/// Answer to a successful `POST /v1/kv/{key}/refresh?ttl=..`: the key keeps its value and its
/// version, and now expires in `ttl_ms` milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    pub key: String,
    pub version: u64,
    pub ttl_ms: u64,
}

/// `ttl` as the `?ttl=` query parameter's value: whole milliseconds (`1500ms`), which every
/// duration parser reads the same way.
pub fn ttl_param(ttl: std::time::Duration) -> String {
    format!("{}ms", ttl.as_millis())
}

/// Answer to a successful `DELETE /v1/kv/{key}`: the version the key had when removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub key: String,
    pub deleted: bool,
    pub version: u64,
}

/// One key of a scan. `value` holds the value when it is UTF-8, otherwise `value_b64` does
/// (standard base64); neither with `keys_only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    pub key: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
}

impl ScanItem {
    /// The value's bytes, from `value` or by decoding `value_b64`; `None` if neither is present
    /// or the base64 is malformed.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        value_bytes(self.value.as_deref(), self.value_b64.as_deref())
    }
}

/// A value sent as text (`value`) or as standard base64 (`value_b64`), as bytes.
fn value_bytes(text: Option<&str>, b64: Option<&str>) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if let Some(text) = text {
        return Some(text.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD.decode(b64?).ok()
}

/// What happened to a key, in a watch stream (`GET /v1/watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchEventKind {
    /// The key was written (created, overwritten, compare-and-set).
    Put,
    /// The key was deleted.
    Delete,
    /// The key's time to live ran out.
    Expire,
}

impl WatchEventKind {
    /// The name on the wire and in `kv watch`'s output: `put`, `delete`, `expire`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::Put => "put",
            WatchEventKind::Delete => "delete",
            WatchEventKind::Expire => "expire",
        }
    }
}

impl std::fmt::Display for WatchEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change in a watch stream: the `data` of a Server-Sent Events message whose `id` is the
/// stream's cursor after this change, e.g.
/// `{"type":"put","key":"app/x","version":12,"value":"text"}`.
///
/// A `put` carries the value written, in `value` when it is UTF-8, otherwise in `value_b64`
/// (standard base64), as [`ScanItem`] does. A `delete` or `expire` carries no value, and its
/// `version` is the version the key had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
    pub key: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
}

impl WatchEvent {
    /// The value's bytes, from `value` or by decoding `value_b64`; `None` for a delete or
    /// expiry, or when the base64 is malformed.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        value_bytes(self.value.as_deref(), self.value_b64.as_deref())
    }
}

/// Why a watch cannot go on: the body of a `410 Gone` answer to `GET /v1/watch` (the `since`
/// cursor is older than the history the node holds), and the `data` of the error message a
/// watch stream ends with (there it also carries `"type":"error"`).
///
/// `error` is `compacted` (resume from `current` after re-reading the state), `slow_consumer`
/// (the reader fell too far behind: resume from the last cursor), `unavailable`, or another
/// code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchError {
    pub error: String,
    #[serde(default)]
    pub message: String,
    /// With `compacted`: the oldest cursor the node can resume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// The `error` code of a [`WatchError`] for history that was compacted away.
pub const WATCH_COMPACTED: &str = "compacted";

/// Answer to `GET /v1/kv?prefix=p&limit=n`: keys in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanResult {
    pub items: Vec<ScanItem>,
    /// True when the answer was cut short (by `limit` or by the node's byte budget per answer)
    /// and more keys may match.
    pub truncated: bool,
    /// When truncated: pass it as `start_after` to get the next page.
    #[serde(default)]
    pub next: Option<String>,
}

/// Answer to `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// The answering node's id.
    pub node: u64,
    /// The id of the cluster it belongs to (16 hex digits); `null` before it joined one.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

/// Body of `POST /v1/cluster/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    /// Where its peers reach it (its peer listener, if it has one apart).
    pub addr: String,
    /// Where clients reach it, when that is not `addr` (a peer listener apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
}

/// Answer to `DELETE /v1/cluster/nodes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveResult {
    pub id: u64,
    /// Epoch of the first partition map without the node.
    pub epoch: u64,
    /// `removed` once no Raft group counts the node any more (the node may be stopped);
    /// `draining` while partitions are still being re-replicated off it (answered `202`).
    pub status: String,
    /// Partitions whose group still counts the node (empty once `removed`).
    #[serde(default)]
    pub remaining: Vec<u32>,
}

/// A partition move in flight: its leader is bringing the Raft voters from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    pub partition: u32,
    /// The partition leader running the move.
    pub node: u64,
    /// Epoch of the partition map the move works towards.
    pub epoch: u64,
    /// Voters when the move started.
    pub from: Vec<u64>,
    /// Voters the map asks for.
    pub to: Vec<u64>,
    /// `queued` (waiting for a move slot), `catching_up` (new replicas receive the log or a
    /// snapshot), `changing_voters` (joint consensus), `removing_learners`, or `stalled` (a
    /// new replica made no progress for 30 s; retried 30 s later, or at once on a new map).
    pub phase: String,
    /// New replicas still catching up: the log index each holds, and the index it must reach.
    #[serde(default)]
    pub learners: Vec<LearnerProgress>,
    /// Milliseconds since the move started.
    pub elapsed_ms: u64,
}

/// How far a new replica has caught up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerProgress {
    pub node: u64,
    /// Highest log index the leader knows the learner holds (`null`: nothing yet).
    pub matched: Option<u64>,
    /// Log index it must hold before the voters change.
    pub target: u64,
}

/// Answer to `GET /v1/cluster/map`: the partition map the answering node routes by, in short
/// (the placement follows from the members and the ring parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSummary {
    /// The map's epoch; `null` before the node has adopted one.
    pub epoch: Option<u64>,
    pub members: Vec<Member>,
    pub partitions: u32,
    pub replication_factor: u32,
    pub vnodes: u32,
}

/// One cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
}

/// Raft state of one group as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Partition number (`null` for the metadata group).
    pub partition: Option<u32>,
    /// The replicas the partition map assigns, in ring order (for the metadata group:
    /// its voters).
    pub replicas: Vec<u64>,
    /// The group's Raft voters as the answering replica sees them; they differ from `replicas`
    /// while a membership change is in flight. Empty when no replica answered.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Non-voting members catching up.
    #[serde(default)]
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
    pub term: u64,
    /// This node's role in the group (`leader`, `follower`, `candidate`, `learner`).
    pub role: String,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Per replica: the highest log index the leader knows it holds (only on the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<std::collections::BTreeMap<u64, Option<u64>>>,
}

/// Answer to `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: u64,
    pub members: Vec<Member>,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Virtual nodes per member on the ring.
    #[serde(default)]
    pub vnodes: u32,
    /// Epoch of the partition map the answering node routes by (the metadata group's version
    /// of it); `null` before the node has adopted one.
    #[serde(default)]
    pub epoch: Option<u64>,
    pub groups: Vec<GroupStatus>,
    /// Partition moves in flight (from every member unless `?scope=local`).
    #[serde(default)]
    pub moves: Vec<MoveStatus>,
}

/// Parses a duration as the API and the `kv` CLI take it (`?wait=30s`, `--timeout 500ms`):
/// humantime's grammar (`10s`, `500ms`, `1.5s`, `2m`, `1h 30m`, `1m30s`). A number needs its
/// unit.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration `{text}`: {e} (use e.g. 10s, 500ms, 2m)"))
}

/// `GET /v1/cluster/routes`: where each partition is served, as the answering node routes by.
/// Light: no Raft round trips, so clients and nodes can fetch it whenever a route misses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Epoch of the partition map (`0` before the node has adopted one).
    pub epoch: u64,
    pub partitions: Vec<PartitionRoute>,
    /// Node id -> the address clients reach it at (`host:port`).
    pub members: std::collections::BTreeMap<u64, String>,
}

/// One partition's place in [`Routes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRoute {
    pub partition: u32,
    /// The leader, when the answering node knows it (it replicates the partition).
    pub leader: Option<u64>,
    /// The replicas the map assigns, in ring order.
    pub replicas: Vec<u64>,
}

/// Body of `421 Misdirected Request`: the request named an older map's epoch
/// ([`HEADER_EPOCH`]) and the answering node does not host the key's partition; `routes` says
/// where it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misdirected {
    /// `misdirected`.
    pub error: String,
    #[serde(default)]
    pub message: String,
    pub epoch: u64,
    pub routes: Routes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_humantime_and_need_their_unit() {
        use std::time::Duration;
        for (text, want) in [
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            (" 500ms ", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 2m", Duration::from_secs(3720)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "s",
            "soon",
            "-1",
            "-1s",
            "10x",
            "ms",
            "1.2.3s",
            "99999999999999999999",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad:?}: {err}");
        }
    }

    fn item(value: Option<&str>, value_b64: Option<&str>) -> ScanItem {
        ScanItem {
            key: "k".into(),
            version: 1,
            value: value.map(str::to_owned),
            value_b64: value_b64.map(str::to_owned),
        }
    }

    #[test]
    fn scan_item_value_bytes_decode_text_and_base64() {
        assert_eq!(item(Some("hi"), None).value_bytes(), Some(b"hi".to_vec()));
        assert_eq!(
            item(None, Some("/wCh")).value_bytes(),
            Some(vec![0xff, 0x00, 0xa1])
        );
        assert_eq!(item(None, Some("!!")).value_bytes(), None);
        assert_eq!(item(None, None).value_bytes(), None);
    }

    #[test]
    fn precondition_body_keeps_an_absent_current_version() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":"precondition_failed","message":"m","current_version":null}"#,
        )
        .unwrap();
        assert_eq!(body.current_version, Some(None));
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":"precondition_failed","message":"m","current_version":7}"#,
        )
        .unwrap();
        assert_eq!(body.current_version, Some(Some(7)));
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"unavailable","message":"m"}"#).unwrap();
        assert_eq!(body.current_version, None);
    }
}
