//! The key/value state machine: what a committed command does to the data of one group.
//!
//! A key's version is the Raft log index of the command that last wrote it. Indexes only grow
//! within a group and a key never changes group, so versions strictly increase with every write
//! of a key, across deletes and re-creates too.

use serde::{Deserialize, Serialize};

use crate::Result;

/// A client write, as carried in a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` under `key` if `cond` holds.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: Condition,
    },
    /// Remove `key` if it exists and `cond` holds.
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cond: Condition,
    },
    /// `command`, applied at most once per `(client, seq)`: a retry of a write whose first
    /// attempt was committed gets the first attempt's outcome instead of applying again.
    /// `ack_below` is the client's promise that it holds the answers of all its writes with a
    /// lower sequence number, so their remembered outcomes can be forgotten.
    Once {
        client: u64,
        seq: u64,
        ack_below: u64,
        command: Box<Command>,
    },
}

/// How many sequence numbers behind its newest write a client's outcomes are remembered at
/// most, even if it never acknowledges them; bounds the memory a client can pin.
pub const SESSION_WINDOW: u64 = 4096;

impl Command {
    /// The key the command touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => key,
            Command::Once { command, .. } => command.key(),
        }
    }
}

/// A precondition on the current version of the key (HTTP `If-Match` / `If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// No precondition.
    Always,
    /// The key must exist with exactly this version.
    Version(u64),
    /// The key must not exist.
    Absent,
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The key now holds the written value at `version`.
    Written { version: u64 },
    /// The key was removed; `version` was its version before removal.
    Deleted { version: u64 },
    /// A delete found no such key.
    NotFound,
    /// The precondition did not hold; nothing changed. `current` is the key's version, if any.
    PreconditionFailed { current: Option<u64> },
}

impl Outcome {
    /// Compact on-disk form (sessions table, snapshot stream).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        match self {
            Outcome::Written { version } => {
                out.push(1);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Outcome::Deleted { version } => {
                out.push(2);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Outcome::NotFound => out.push(3),
            Outcome::PreconditionFailed { current: None } => out.push(4),
            Outcome::PreconditionFailed { current: Some(v) } => {
                out.push(5);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Outcome> {
        let corrupt = || crate::StorageError::Corrupt(format!("bad outcome {bytes:?}"));
        let version = || -> Result<u64> {
            let b: [u8; 8] = bytes
                .get(1..9)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?;
            Ok(u64::from_le_bytes(b))
        };
        match bytes.first() {
            Some(1) => Ok(Outcome::Written {
                version: version()?,
            }),
            Some(2) => Ok(Outcome::Deleted {
                version: version()?,
            }),
            Some(3) => Ok(Outcome::NotFound),
            Some(4) => Ok(Outcome::PreconditionFailed { current: None }),
            Some(5) => Ok(Outcome::PreconditionFailed {
                current: Some(version()?),
            }),
            _ => Err(corrupt()),
        }
    }
}

/// A stored value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub value: Vec<u8>,
}

impl Record {
    /// On-disk form: 8-byte little-endian version followed by the value bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.value.len());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
        let (head, value) = bytes.split_at_checked(8).ok_or_else(|| {
            crate::StorageError::Corrupt(format!("record of {} bytes has no version", bytes.len()))
        })?;
        let mut version = [0u8; 8];
        version.copy_from_slice(head);
        Ok(Record {
            version: u64::from_le_bytes(version),
            value: value.to_vec(),
        })
    }

    /// Version stored in an encoded record, without copying the value.
    pub(crate) fn decode_version(bytes: &[u8]) -> Result<u64> {
        let head = bytes.get(..8).ok_or_else(|| {
            crate::StorageError::Corrupt(format!("record of {} bytes has no version", bytes.len()))
        })?;
        let mut version = [0u8; 8];
        version.copy_from_slice(head);
        Ok(u64::from_le_bytes(version))
    }
}

/// The minimal view of one group's key/value table that applying a command needs; both engines
/// implement it inside their write transaction so the semantics live in one place.
pub(crate) trait KvAccess {
    fn version_of(&mut self, key: &[u8]) -> Result<Option<u64>>;
    fn put(&mut self, key: &[u8], record: &Record) -> Result<()>;
    fn remove(&mut self, key: &[u8]) -> Result<()>;
    /// The remembered outcome of `client`'s write `seq`.
    fn session(&mut self, client: u64, seq: u64) -> Result<Option<Outcome>>;
    /// Remember the outcome of `client`'s write `seq`.
    fn record_session(&mut self, client: u64, seq: u64, outcome: &Outcome) -> Result<()>;
    /// Forget `client`'s outcomes with a sequence number below `below`.
    fn forget_sessions(&mut self, client: u64, below: u64) -> Result<()>;
}

/// Apply `cmd`, committed at log `index`, to `table`.
pub(crate) fn apply(table: &mut impl KvAccess, index: u64, cmd: &Command) -> Result<Outcome> {
    let (key, cond) = match cmd {
        Command::Put { key, cond, .. } | Command::Delete { key, cond } => (key, *cond),
        Command::Once {
            client,
            seq,
            ack_below,
            command,
        } => {
            if let Some(first) = table.session(*client, *seq)? {
                return Ok(first);
            }
            let inner = match command.as_ref() {
                // Nesting adds nothing: apply the innermost write once, under the outer id.
                Command::Once { command, .. } => command.as_ref(),
                other => other,
            };
            let outcome = apply(table, index, inner)?;
            let below = (*ack_below)
                .max(seq.saturating_sub(SESSION_WINDOW))
                .min(*seq);
            table.forget_sessions(*client, below)?;
            table.record_session(*client, *seq, &outcome)?;
            return Ok(outcome);
        }
    };
    let current = table.version_of(key)?;
    let holds = match cond {
        Condition::Always => true,
        Condition::Version(v) => current == Some(v),
        Condition::Absent => current.is_none(),
    };
    if !holds {
        return Ok(Outcome::PreconditionFailed { current });
    }
    match cmd {
        Command::Put { key, value, .. } => {
            table.put(
                key,
                &Record {
                    version: index,
                    value: value.clone(),
                },
            )?;
            Ok(Outcome::Written { version: index })
        }
        Command::Delete { key, .. } => match current {
            Some(version) => {
                table.remove(key)?;
                Ok(Outcome::Deleted { version })
            }
            None => Ok(Outcome::NotFound),
        },
        Command::Once { .. } => Err(crate::StorageError::Corrupt(
            "unreachable: sessions are unwrapped above".into(),
        )),
    }
}
