//! A stored value: its version, its bytes and, for a key written with a TTL, its deadline.
//!
//! Deadlines are absolute unix times in milliseconds taken from the proposing leader's clock
//! (carried in the command, see [`crate::Command::TimedPut`]), so every replica stores the same
//! deadline. Storage never reads a clock: whether a record is still live is asked with
//! [`Record::live_at`] and the caller's idea of "now" (the leader's clock for linearizable
//! reads, the entry's timestamp when a command is applied).

use crate::{Result, StorageError};

/// Set in the stored version word when a deadline follows it. Versions are Raft log indexes,
/// which stay below 2^63 (the apply path refuses larger ones), so records written before
/// deadlines existed never have it set and decode as "no deadline".
const DEADLINE_FOLLOWS: u64 = 1 << 63;

/// Largest version a record can hold (the top bit is the deadline flag).
pub(crate) const MAX_VERSION: u64 = DEADLINE_FOLLOWS - 1;

/// A stored value with its version and optional deadline.
///
/// Invariant: `version <= MAX_VERSION` (it is a Raft log index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Log index of the command that last wrote the value (a refresh keeps it).
    pub version: u64,
    pub value: Vec<u8>,
    /// Unix time in milliseconds at which the key stops being live; `None`: permanent.
    pub expires_at: Option<u64>,
}

/// What applying a command needs of a stored record, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub version: u64,
    pub expires_at: Option<u64>,
}

impl Head {
    /// See [`Record::live_at`].
    pub(crate) fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|deadline| now_ms < deadline)
    }
}

impl Record {
    /// A permanent record.
    pub fn new(version: u64, value: impl Into<Vec<u8>>) -> Record {
        Record {
            version,
            value: value.into(),
            expires_at: None,
        }
    }

    /// Whether the key is still live at unix time `now_ms`: it has no deadline, or the
    /// deadline is later than `now_ms`. At its deadline a key is already expired.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.head().live_at(now_ms)
    }

    /// Milliseconds the key has left at `now_ms` (0 once expired); `None` for a permanent key.
    pub fn remaining_ms(&self, now_ms: u64) -> Option<u64> {
        self.expires_at.map(|d| d.saturating_sub(now_ms))
    }

    pub(crate) fn head(&self) -> Head {
        Head {
            version: self.version,
            expires_at: self.expires_at,
        }
    }

    /// On-disk form: the version as 8 bytes little-endian, with the top bit set when the
    /// deadline follows as another 8 bytes little-endian; then the value bytes.
    ///
    /// Keeping the deadline inside the record (rather than in a table of its own) means a
    /// read gets value and deadline in one lookup and they cannot disagree; the expiry index
    /// is derived data that the engines rebuild from records on import. Records written
    /// before deadlines existed are exactly the no-deadline form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        debug_assert!(self.version <= MAX_VERSION, "version {}", self.version);
        let mut out = Vec::with_capacity(16 + self.value.len());
        match self.expires_at {
            None => out.extend_from_slice(&self.version.to_le_bytes()),
            Some(deadline) => {
                out.extend_from_slice(&(self.version | DEADLINE_FOLLOWS).to_le_bytes());
                out.extend_from_slice(&deadline.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
        let (head, len) = Self::decode_head_len(bytes)?;
        Ok(Record {
            version: head.version,
            expires_at: head.expires_at,
            value: bytes[len..].to_vec(),
        })
    }

    /// Version and deadline of an encoded record, without copying the value.
    pub(crate) fn decode_head(bytes: &[u8]) -> Result<Head> {
        Self::decode_head_len(bytes).map(|(head, _)| head)
    }

    /// The head and the number of bytes it takes.
    fn decode_head_len(bytes: &[u8]) -> Result<(Head, usize)> {
        let word = |at: usize| -> Option<u64> {
            let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(b))
        };
        let short = || {
            StorageError::Corrupt(format!(
                "record of {} bytes is shorter than its header",
                bytes.len()
            ))
        };
        let first = word(0).ok_or_else(short)?;
        if first & DEADLINE_FOLLOWS == 0 {
            return Ok((
                Head {
                    version: first,
                    expires_at: None,
                },
                8,
            ));
        }
        let deadline = word(8).ok_or_else(short)?;
        Ok((
            Head {
                version: first & !DEADLINE_FOLLOWS,
                expires_at: Some(deadline),
            },
            16,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_record_written_before_deadlines_existed_decodes_as_permanent() {
        // Exactly what the first version of `Record::encode` wrote for version 5, "hi".
        let old = [5, 0, 0, 0, 0, 0, 0, 0, b'h', b'i'];
        assert_eq!(Record::decode(&old).unwrap(), Record::new(5, "hi"));
        assert_eq!(
            Record::decode_head(&old).unwrap(),
            Head {
                version: 5,
                expires_at: None
            }
        );
        // And a permanent record still encodes in that form.
        assert_eq!(Record::new(5, "hi").encode(), old);
    }

    #[test]
    fn a_deadline_round_trips_and_keeps_the_version() {
        for (version, deadline, value) in [
            (1, 0, &b""[..]),
            (MAX_VERSION, u64::MAX, b"v"),
            (42, 1_700_000_000_000, b"\x00\xff"),
        ] {
            let record = Record {
                version,
                value: value.to_vec(),
                expires_at: Some(deadline),
            };
            let bytes = record.encode();
            assert_eq!(bytes.len(), 16 + value.len());
            assert_eq!(Record::decode(&bytes).unwrap(), record);
            assert_eq!(Record::decode_head(&bytes).unwrap(), record.head());
        }
    }

    #[test]
    fn truncated_headers_are_corrupt() {
        let with_deadline = Record {
            version: 3,
            value: b"value".to_vec(),
            expires_at: Some(9),
        }
        .encode();
        for bad in [
            &[][..],
            &[1, 2, 3],
            &with_deadline[..8],
            &with_deadline[..15],
        ] {
            assert!(matches!(Record::decode(bad), Err(StorageError::Corrupt(_))));
            assert!(matches!(
                Record::decode_head(bad),
                Err(StorageError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn a_key_is_expired_at_its_deadline() {
        let r = Record {
            expires_at: Some(100),
            ..Record::new(1, "v")
        };
        assert!(r.live_at(99));
        assert!(!r.live_at(100));
        assert!(!r.live_at(u64::MAX));
        assert_eq!(r.remaining_ms(40), Some(60));
        assert_eq!(r.remaining_ms(400), Some(0));
        let permanent = Record::new(1, "v");
        assert!(permanent.live_at(u64::MAX));
        assert_eq!(permanent.remaining_ms(0), None);
    }
}
