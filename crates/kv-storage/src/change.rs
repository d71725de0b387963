//! The per-group change history: one row per applied command that changed a key, keyed by its
//! position in the log, for watchers that resume from a cursor.
//!
//! Rows come only from committed entries and are written in the transaction that applies
//! them, so every replica holds the same rows at the same positions. A group's history is
//! complete from its *start* (see [`crate::Engine::changes`]): trimming it behind a log purge
//! ([`crate::Op::HistoryStart`]) and opening data applied before the history existed move the
//! start up. Snapshots carry rows from a given index on (see [`crate::Engine::export_group`]),
//! and a replica that installs one takes that history and its start.

use serde::{Deserialize, Serialize};

use crate::{Command, Outcome, Result, StorageError};

/// Where a change sits in its group's history: the log index of its entry and the ordinal of
/// its command among the commands applied at that index (0 unless the entry is a batch).
/// Ordered by `(index, sub)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangePos {
    pub index: u64,
    pub sub: u32,
}

impl ChangePos {
    /// The position after every change of entry `index` and before: "all of `index` seen".
    pub fn end_of(index: u64) -> ChangePos {
        ChangePos {
            index,
            sub: u32::MAX,
        }
    }
}

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A put wrote the key.
    Put,
    /// A delete removed the key.
    Delete,
    /// The expirer removed the key at its deadline.
    Expire,
}

/// One change of one key. `version` is the key's new version for a put and the removed
/// version for a delete or expiry; `value` is the written value of a put, empty otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: Vec<u8>,
    pub version: u64,
    pub value: Vec<u8>,
}

/// A page of [`crate::Engine::changes`]: the group's history start and the rows read with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// The lowest log index from which the group's history is complete: positions after
    /// `ChangePos::end_of(start - 1)` can be served, earlier ones are gone.
    pub start: u64,
    pub rows: Vec<(ChangePos, Change)>,
}

/// The start of a group that has none stored: a fresh group holds its whole history.
pub(crate) const DEFAULT_START: u64 = 1;

/// A change as the apply path sees it, borrowing the command's key and value: encoded for the
/// history without copying them first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChangeRef<'a> {
    pub kind: ChangeKind,
    pub key: &'a [u8],
    pub version: u64,
    pub value: &'a [u8],
}

impl<'a> ChangeRef<'a> {
    /// The change `cmd` made, given the outcome of applying it (not answered from a session).
    /// Failures, misses and refreshes (value and version unchanged) change nothing.
    pub(crate) fn of(cmd: &'a Command, outcome: &Outcome) -> Option<ChangeRef<'a>> {
        let (kind, version, value): (_, _, &[u8]) = match (cmd, outcome) {
            (Command::Once { command, .. }, _) => return ChangeRef::of(command, outcome),
            (
                Command::Put { value, .. } | Command::TimedPut { value, .. },
                Outcome::Written { version },
            ) => (ChangeKind::Put, *version, value),
            (
                Command::Delete { .. } | Command::TimedDelete { .. },
                Outcome::Deleted { version },
            ) => (ChangeKind::Delete, *version, &[]),
            (Command::Expire { .. }, Outcome::Expired { version }) => {
                (ChangeKind::Expire, *version, &[])
            }
            _ => return None,
        };
        Some(ChangeRef {
            kind,
            key: cmd.key(),
            version,
            value,
        })
    }

    pub(crate) fn owned(self) -> Change {
        Change {
            kind: self.kind,
            key: self.key.to_vec(),
            version: self.version,
            value: self.value.to_vec(),
        }
    }

    /// On-disk form: kind (1 byte), version (u64 LE), key length (u32 LE), key, value.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let key_len = u32::try_from(self.key.len())
            .map_err(|_| StorageError::Corrupt(format!("key of {} bytes", self.key.len())))?;
        let mut out = Vec::with_capacity(13 + self.key.len() + self.value.len());
        out.push(match self.kind {
            ChangeKind::Put => 1,
            ChangeKind::Delete => 2,
            ChangeKind::Expire => 3,
        });
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        Ok(out)
    }
}

impl Change {
    /// Bytes counted against a page's `max_bytes`.
    pub(crate) fn size(&self) -> usize {
        self.key.len() + self.value.len()
    }

    /// On-disk form: as [`ChangeRef::encode`].
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        ChangeRef {
            kind: self.kind,
            key: &self.key,
            version: self.version,
            value: &self.value,
        }
        .encode()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Change> {
        let corrupt = || StorageError::Corrupt(format!("bad change row of {} bytes", bytes.len()));
        let kind = match bytes.first() {
            Some(1) => ChangeKind::Put,
            Some(2) => ChangeKind::Delete,
            Some(3) => ChangeKind::Expire,
            _ => return Err(corrupt()),
        };
        let version: [u8; 8] = bytes
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let key_len: [u8; 4] = bytes
            .get(9..13)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let key_end = usize::try_from(u32::from_le_bytes(key_len))
            .ok()
            .and_then(|n| n.checked_add(13))
            .ok_or_else(corrupt)?;
        let key = bytes.get(13..key_end).ok_or_else(corrupt)?;
        let value = bytes.get(key_end..).ok_or_else(corrupt)?;
        if kind != ChangeKind::Put && !value.is_empty() {
            return Err(corrupt());
        }
        Ok(Change {
            kind,
            key: key.to_vec(),
            version: u64::from_le_bytes(version),
            value: value.to_vec(),
        })
    }
}

/// The position of the command after one at `prev` (if any) applied at `index`: the next
/// ordinal at the same index, 0 at a new one.
pub(crate) fn next_pos(prev: Option<ChangePos>, index: u64) -> Result<ChangePos> {
    match prev {
        Some(p) if p.index == index => {
            // u32::MAX is `end_of`; no entry holds that many commands.
            let sub = p
                .sub
                .checked_add(1)
                .filter(|s| *s < u32::MAX)
                .ok_or_else(|| {
                    StorageError::Corrupt(format!("too many commands at log index {index}"))
                })?;
            Ok(ChangePos { index, sub })
        }
        _ => Ok(ChangePos { index, sub: 0 }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_change_round_trips_through_its_encoding() {
        for change in [
            Change {
                kind: ChangeKind::Put,
                key: b"k".to_vec(),
                version: 7,
                value: b"value".to_vec(),
            },
            Change {
                kind: ChangeKind::Put,
                key: Vec::new(),
                version: 1,
                value: Vec::new(),
            },
            Change {
                kind: ChangeKind::Delete,
                key: vec![0, 255],
                version: u64::MAX >> 1,
                value: Vec::new(),
            },
            Change {
                kind: ChangeKind::Expire,
                key: b"k".to_vec(),
                version: 3,
                value: Vec::new(),
            },
        ] {
            assert_eq!(Change::decode(&change.encode().unwrap()).unwrap(), change);
        }
    }

    #[test]
    fn a_truncated_or_unknown_row_is_corrupt() {
        let row = Change {
            kind: ChangeKind::Put,
            key: b"key".to_vec(),
            version: 7,
            value: b"v".to_vec(),
        }
        .encode()
        .unwrap();
        for len in 0..15 {
            assert!(Change::decode(&row[..len]).is_err(), "{len} bytes");
        }
        let mut unknown = row.clone();
        unknown[0] = 9;
        assert!(Change::decode(&unknown).is_err());
        let mut delete_with_value = row;
        delete_with_value[0] = 2;
        assert!(Change::decode(&delete_with_value).is_err());
    }

    #[test]
    fn positions_order_by_index_then_sub() {
        let p = |index, sub| ChangePos { index, sub };
        assert!(p(1, 5) < p(2, 0));
        assert!(p(2, 0) < p(2, 1));
        assert!(p(2, 7) < ChangePos::end_of(2));
        assert!(ChangePos::end_of(2) < p(3, 0));
        assert_eq!(next_pos(None, 4).unwrap(), p(4, 0));
        assert_eq!(next_pos(Some(p(4, 0)), 4).unwrap(), p(4, 1));
        assert_eq!(next_pos(Some(p(4, 3)), 5).unwrap(), p(5, 0));
        assert!(next_pos(Some(p(4, u32::MAX - 1)), 4).is_err());
    }
}
