//! A watch's reads of one partition's change history, as nodes ask each other for them: which
//! changes (a key or a prefix), after which position, and for how long the replica may wait
//! for one; and the page a replica answers with.

use kv_raft::ChangePos;
use serde::{Deserialize, Serialize};

/// The longest one request for changes waits at a replica before it answers an empty page.
pub const MAX_CHANGES_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most changes one page holds.
pub const MAX_CHANGES_LIMIT: u32 = 1024;

/// One partition's changes after a position, matching a key or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesRequest {
    pub partition: u32,
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// The prefix is a whole key: only that key's changes match.
    pub exact: bool,
    /// Changes after this position; `None`: none, only where the history now ends (a watch
    /// that starts now).
    pub after: Option<ChangePos>,
    /// How long the replica may wait for a matching change before it answers an empty page.
    pub wait_ms: u64,
    pub limit: u32,
    /// Keys and values of the page add up to about this many bytes at most (at least one row).
    pub max_bytes: u64,
}

/// What a replica holds of a partition's history after a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// The matching changes, in the order they were applied.
    pub rows: Vec<ChangeRow>,
    /// Where the next page starts: every change up to here that matches is in `rows`.
    pub position: ChangePos,
    /// The history asked for starts before what the replica holds, which starts at this log
    /// index: `rows` is empty and `position` is where the history now ends.
    pub compacted: Option<u64>,
}

/// One change of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRow {
    pub position: ChangePos,
    pub kind: ChangeType,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: u64,
    /// The value written (puts only).
    pub value: Option<serde_bytes::ByteBuf>,
}

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeType {
    Put,
    Delete,
    Expire,
}

impl ChangesRequest {
    /// Whether `key` is one the watch asks for.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self.exact {
            true => key == self.prefix.as_slice(),
            false => key.starts_with(&self.prefix),
        }
    }

    /// Why a request from a peer is not one this node would send, if it is not.
    pub fn invalid(&self, partitions: u32, max_scan_bytes: usize) -> Option<String> {
        if self.partition >= partitions {
            Some(format!("partition {} does not exist", self.partition))
        } else if self.prefix.len() > crate::config::MAX_KEY_BYTES {
            Some("prefix longer than a key".into())
        } else if self.exact && self.prefix.is_empty() {
            Some("a watch of one key names it".into())
        } else if self.limit == 0 || self.limit > MAX_CHANGES_LIMIT {
            Some(format!("page limit {} out of range", self.limit))
        } else if self.max_bytes > max_scan_bytes as u64 {
            Some(format!("page of {} bytes over the limit", self.max_bytes))
        } else if std::time::Duration::from_millis(self.wait_ms) > MAX_CHANGES_WAIT {
            Some(format!("a wait of {} ms is over the limit", self.wait_ms))
        } else {
            None
        }
    }
}
