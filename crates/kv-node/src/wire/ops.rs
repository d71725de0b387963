//! Key operations as nodes hand them to each other: the key's bytes and the request's meaning,
//! never a URL. A node that does not lead a key's partition forwards the operation itself
//! (`POST /internal/v1/kv`, postcard), so whichever node receives a client request, the key is
//! the same bytes and the request can only ever be that key operation.
//!
//! These are internal types, apart from the public API's: the HTTP layer parses client
//! requests into them, and everything that arrives from a peer is validated
//! ([`Forwarded::validate`]) before it is acted on.

use serde::{Deserialize, Serialize};

use kv_ring::PartitionId;

use crate::config::{Config, MAX_KEY_BYTES};
use crate::error::ApiError;
use crate::layout::Layout;

/// The peer route that takes one forwarded operation (older nodes forward this way; this node
/// sends batches, [`super::BATCH_PATH`]).
pub const FORWARD_PATH: &str = "/internal/v1/kv";

/// Forwarded operations give up after this many hops (views of the leader can be stale).
pub const MAX_HOPS: u32 = 3;
/// Most keys one scan (and one partition's page of it) returns.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// An operation on its way to the node that can serve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// Forwards behind it, this one included.
    pub hops: u32,
    pub op: KeyOp,
    /// The client it is done for (its token's name), when tokens are required: the serving
    /// node checks that client's rights.
    pub caller: Option<String>,
    /// The epoch of the map the forwarding node routed by (`None` before it adopted one), as
    /// a client's `X-KV-Epoch`: a node with a newer map that does not host the operation's
    /// partition refuses it (`421`) instead of forwarding it on, and the forwarding node routes
    /// again once it has that map. Last, so that nodes from before it existed, which ignore
    /// trailing bytes, still decode the rest.
    pub epoch: Option<u64>,
}

/// [`Forwarded`] as nodes from before its `epoch` sent it.
#[derive(Deserialize)]
struct ForwardedWithoutEpoch {
    hops: u32,
    op: KeyOp,
    caller: Option<String>,
}

impl Forwarded {
    /// Decode a forwarded operation (postcard), from a node of this version or an older one.
    pub fn decode(bytes: &[u8]) -> Result<Forwarded, ApiError> {
        postcard::from_bytes::<Forwarded>(bytes)
            .or_else(|_| {
                postcard::from_bytes::<ForwardedWithoutEpoch>(bytes).map(|old| Forwarded {
                    hops: old.hops,
                    op: old.op,
                    caller: old.caller,
                    epoch: None,
                })
            })
            .map_err(|e| {
                ApiError::bad_request("invalid_forward", format!("undecodable operation: {e}"))
            })
    }
}

/// A client write's identity for exactly-once application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client: u64,
    pub seq: u64,
    /// The client holds the answers of all its writes below this sequence number.
    pub ack_below: u64,
}

/// A write's precondition on the key's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    None,
    /// `If-Match: "N"`.
    Version(u64),
    /// `If-None-Match: *`.
    Absent,
}

/// What a request does to one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeyOp {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stale: bool,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: Precondition,
        session: Option<Session>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cond: Precondition,
        session: Option<Session>,
    },
    /// One partition's share of a scan.
    ScanPage(PageRequest),
    // Added later: postcard encodes the variant's index, so new ones only go at the end.
    /// A put whose key expires `ttl_ms` after the partition leader proposes it.
    PutTtl {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: Precondition,
        session: Option<Session>,
        ttl_ms: u64,
    },
    /// Give a live key a new time to live, `ttl_ms` from when the leader proposes it, keeping
    /// its value and version.
    Refresh {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cond: Precondition,
        session: Option<Session>,
        ttl_ms: u64,
    },
    /// A read that waits, up to `wait_ms`, until the key has changed since version `after`
    /// (see [`changed_since`]), then answers as [`KeyOp::Get`].
    WaitGet {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stale: bool,
        after: u64,
        wait_ms: u64,
    },
    /// One partition's changes for a watch, from any replica's history.
    Changes(super::ChangesRequest),
}

/// The longest a blocking read waits (`?wait=`).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether a key now at version `current` (0: absent) has changed since version `after`: it
/// holds a newer version, or it has gone since (`after` named a version it had).
pub fn changed_since(current: u64, after: u64) -> bool {
    current > after || (after > 0 && current == 0)
}

/// A page of one partition's keys with a prefix, after a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub partition: u32,
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    pub start_after: Option<serde_bytes::ByteBuf>,
    pub limit: u32,
    /// Keys and values of the page add up to about this many bytes at most (at least one row).
    pub max_bytes: u64,
    pub keys_only: bool,
    pub stale: bool,
}

/// The answer to a [`PageRequest`], in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Whether the partition may hold more matching keys after the last row.
    pub more: bool,
}

/// One key of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: u64,
    /// Absent for `keys_only` pages.
    pub value: Option<serde_bytes::ByteBuf>,
    /// A key the caller may not see: only its position is used (to continue the page), its
    /// version and value are left out and it is not shown.
    #[serde(default)]
    pub hidden: bool,
}

impl Row {
    /// Bytes the row adds to an answer, as budgets count them.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len())
    }
}

impl KeyOp {
    /// Whether it only reads.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            KeyOp::Get { .. } | KeyOp::ScanPage(_) | KeyOp::WaitGet { .. } | KeyOp::Changes(_)
        )
    }

    /// How long it may wait before it is answered (a blocking read), on top of the time any
    /// operation takes.
    pub fn waits(&self) -> std::time::Duration {
        match self {
            KeyOp::WaitGet { wait_ms, .. } => std::time::Duration::from_millis(*wait_ms),
            KeyOp::Changes(req) => std::time::Duration::from_millis(req.wait_ms),
            _ => std::time::Duration::ZERO,
        }
    }

    /// The partition it is for, by `layout`.
    pub fn partition(&self, layout: &Layout) -> PartitionId {
        match self.key() {
            Some(key) => layout.partition_of(key),
            None => match self {
                KeyOp::ScanPage(page) => PartitionId(page.partition),
                KeyOp::Changes(req) => PartitionId(req.partition),
                _ => PartitionId(0),
            },
        }
    }

    /// The key it is for (none for a scan page or a watch's changes).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            KeyOp::Get { key, .. }
            | KeyOp::Put { key, .. }
            | KeyOp::Delete { key, .. }
            | KeyOp::PutTtl { key, .. }
            | KeyOp::Refresh { key, .. }
            | KeyOp::WaitGet { key, .. } => Some(key),
            KeyOp::ScanPage(_) | KeyOp::Changes(_) => None,
        }
    }

    /// Whether it needs the partition's leader: writes, and linearizable reads (which a
    /// follower serves after asking the leader for a read index).
    pub fn needs_leader(&self) -> bool {
        match self {
            KeyOp::Get { stale, .. } | KeyOp::WaitGet { stale, .. } => !stale,
            KeyOp::ScanPage(page) => !page.stale,
            // Committed history: every replica's is the same.
            KeyOp::Changes(_) => false,
            KeyOp::Put { .. }
            | KeyOp::Delete { .. }
            | KeyOp::PutTtl { .. }
            | KeyOp::Refresh { .. } => true,
        }
    }
}

/// Check a key from any source: not empty, at most `MAX_KEY_BYTES` (the config's limit).
pub fn check_key(key: &[u8]) -> Result<(), ApiError> {
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
    Ok(())
}

impl Forwarded {
    /// Refuse what no honest peer sends: too many hops, keys or values over the limits, pages
    /// of partitions that do not exist or larger than this node would ask for.
    pub fn validate(&self, config: &Config, partitions: u32) -> Result<(), ApiError> {
        if self.hops == 0 || self.hops > MAX_HOPS {
            return Err(ApiError::bad_request(
                "invalid_forward",
                format!(
                    "a forwarded request has 1 to {MAX_HOPS} hops, not {}",
                    self.hops
                ),
            ));
        }
        let ttl = |ttl_ms: u64| {
            if crate::ttl::valid(ttl_ms) {
                Ok(())
            } else {
                Err(ApiError::bad_request(
                    "invalid_forward",
                    format!("a time to live of {ttl_ms} ms is out of range"),
                ))
            }
        };
        match &self.op {
            KeyOp::Get { key, .. } | KeyOp::Delete { key, .. } => check_key(key),
            KeyOp::WaitGet { key, wait_ms, .. } => {
                check_key(key)?;
                if std::time::Duration::from_millis(*wait_ms) > MAX_WAIT {
                    return Err(ApiError::bad_request(
                        "invalid_forward",
                        format!("a wait of {wait_ms} ms is over the limit"),
                    ));
                }
                Ok(())
            }
            KeyOp::Refresh { key, ttl_ms, .. } => {
                check_key(key)?;
                ttl(*ttl_ms)
            }
            KeyOp::PutTtl {
                key, value, ttl_ms, ..
            } => {
                check_key(key)?;
                ttl(*ttl_ms)?;
                if value.len() > config.max_value_bytes {
                    return Err(ApiError::TooLarge(format!(
                        "value exceeds the limit of {} bytes",
                        config.max_value_bytes
                    )));
                }
                Ok(())
            }
            KeyOp::Put { key, value, .. } => {
                check_key(key)?;
                if value.len() > config.max_value_bytes {
                    return Err(ApiError::TooLarge(format!(
                        "value exceeds the limit of {} bytes",
                        config.max_value_bytes
                    )));
                }
                Ok(())
            }
            KeyOp::Changes(req) => match req.invalid(partitions, config.max_scan_bytes) {
                Some(message) => Err(ApiError::bad_request("invalid_forward", message)),
                None => Ok(()),
            },
            KeyOp::ScanPage(page) => {
                let cursor = page.start_after.as_ref().map_or(0, |c| c.len());
                let bad = if page.partition >= partitions {
                    Some(format!("partition {} does not exist", page.partition))
                } else if page.prefix.len() > MAX_KEY_BYTES || cursor > MAX_KEY_BYTES {
                    Some("prefix or cursor longer than a key".to_string())
                } else if page.limit == 0 || page.limit as usize > MAX_SCAN_LIMIT + 1 {
                    Some(format!("page limit {} out of range", page.limit))
                } else if page.max_bytes > config.max_scan_bytes as u64 {
                    Some(format!("page of {} bytes over the limit", page.max_bytes))
                } else {
                    None
                };
                match bad {
                    Some(message) => Err(ApiError::bad_request("invalid_forward", message)),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> KeyOp {
        KeyOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: Precondition::Version(7),
            session: None,
        }
    }

    /// An operation from a node that forwards without an epoch decodes (epoch `None`), and one
    /// with an epoch decodes on such a node (postcard leaves the trailing field unread).
    #[test]
    fn forwarded_operations_decode_across_versions() {
        #[derive(Serialize)]
        struct Old {
            hops: u32,
            op: KeyOp,
            caller: Option<String>,
        }
        let old = postcard::to_stdvec(&Old {
            hops: 2,
            op: put(),
            caller: Some("app".into()),
        })
        .unwrap();
        let decoded = Forwarded::decode(&old).unwrap();
        assert_eq!((decoded.hops, decoded.epoch), (2, None));
        assert_eq!(decoded.caller.as_deref(), Some("app"));

        let new = postcard::to_stdvec(&Forwarded {
            hops: 1,
            op: put(),
            caller: None,
            epoch: Some(12),
        })
        .unwrap();
        let decoded = Forwarded::decode(&new).unwrap();
        assert_eq!((decoded.hops, decoded.epoch), (1, Some(12)));
        assert!(matches!(
            decoded.op,
            KeyOp::Put {
                cond: Precondition::Version(7),
                ..
            }
        ));
        let on_an_old_node: ForwardedWithoutEpoch = postcard::from_bytes(&new).unwrap();
        assert_eq!(on_an_old_node.hops, 1);

        assert!(Forwarded::decode(&new[..new.len() - 3]).is_err());
    }
}
