//! The key/value state machine: what a committed command does to the data of one group.
//!
//! A key's version is the Raft log index of the command that last wrote it. Indexes only grow
//! within a group and a key never changes group, so versions strictly increase with every write
//! of a key, across deletes and re-creates too.

use serde::{Deserialize, Serialize};

use crate::change::{self, ChangePos, ChangeRef};
use crate::record::{Head, Record, MAX_VERSION};
use crate::Result;

/// A client write, as carried in a Raft log entry.
///
/// ## Deadlines (per-key TTL)
///
/// Time enters only through the commands: the leader that proposes a time-dependent command
/// puts its clock reading (`now`, unix ms) and any deadline (`expires_at`, unix ms) in it, so
/// every replica applying the entry decides the same way, whatever its own clock says.
///
/// - A key whose deadline is at or before a command's `now` is *expired* for that command: its
///   conditions see the key as absent, a [`Command::TimedPut`] replaces it (a new version, as
///   for any write), a [`Command::TimedDelete`] or [`Command::Refresh`] answers
///   [`Outcome::NotFound`] and leaves it in place. Only [`Command::Expire`] removes an expired
///   record (or a later put overwrites it), so every disappearance by time is one log entry.
/// - The untimed [`Command::Put`] and [`Command::Delete`] (entries from before TTLs) have no
///   clock: they see every stored record as present. A `Put` makes the key permanent.
/// - The expirer (the partition leader) asks the engine for [`crate::Engine::expired`] keys
///   and proposes one `Expire { key, version, now }` per key. It removes the key only if the
///   key still has exactly that version and a deadline at or before the entry's `now`: a
///   rewrite in between changes the version, a refresh in between moves the deadline past
///   `now` (`now` of the refresh plus a positive TTL), and either way the key survives.
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
    // Variants below were added after entries of the ones above were written: postcard
    // encodes the variant index, so new ones only ever go at the end.
    /// Write `value` under `key` if `cond` holds at `now` (a key expired at `now` counts as
    /// absent), with deadline `expires_at` (`None`: permanent, like [`Command::Put`]).
    /// `now` is the proposing leader's clock, unix ms; so is `expires_at` (now + TTL).
    TimedPut {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expires_at: Option<u64>,
        cond: Condition,
        now: u64,
    },
    /// Remove `key` if it is live at `now` and `cond` holds. An expired key is left to
    /// [`Command::Expire`] and the answer is [`Outcome::NotFound`].
    TimedDelete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cond: Condition,
        now: u64,
    },
    /// Give a key that is live at `now` the deadline `expires_at`, keeping its value and its
    /// version, if `cond` holds; a permanent key gets a deadline this way too.
    ///
    /// The version stays because a refresh is not a write: as an etcd lease keep-alive or a
    /// Consul session renewal leaves the keys' modify revisions alone, the holder of a lock
    /// written at version N can refresh it any number of times and still release it with
    /// `If-Match: N`, and watchers and blocking reads waiting for a new version are not woken.
    /// An expired key cannot be brought back: [`Outcome::NotFound`].
    Refresh {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expires_at: u64,
        cond: Condition,
        now: u64,
    },
    /// Remove `key` if it still has exactly `version` and a deadline at or before `now` (the
    /// proposing leader's clock); otherwise change nothing. Proposed by the expirer only.
    Expire {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        version: u64,
        now: u64,
    },
}

/// How many sequence numbers behind its newest write a client's outcomes are remembered at
/// most, even if it never acknowledges them; bounds the memory a client can pin.
pub const SESSION_WINDOW: u64 = 4096;

impl Command {
    /// The key the command touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::TimedPut { key, .. }
            | Command::TimedDelete { key, .. }
            | Command::Refresh { key, .. }
            | Command::Expire { key, .. } => key,
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

impl Condition {
    /// Whether the condition holds for a key whose current version is `current`.
    fn holds(self, current: Option<u64>) -> bool {
        match self {
            Condition::Always => true,
            Condition::Version(v) => current == Some(v),
            Condition::Absent => current.is_none(),
        }
    }
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
    // Appended after the ones above (postcard variant indexes, see `Command`).
    /// An [`Command::Expire`] removed the key; `version` was its version.
    Expired { version: u64 },
    /// A [`Command::Refresh`] set the key's deadline to `expires_at`; value and `version`
    /// are unchanged.
    Refreshed { version: u64, expires_at: u64 },
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
            Outcome::Expired { version } => {
                out.push(6);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Outcome::Refreshed {
                version,
                expires_at,
            } => {
                out.push(7);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&expires_at.to_le_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Outcome> {
        let corrupt = || crate::StorageError::Corrupt(format!("bad outcome {bytes:?}"));
        let word = |at: usize| -> Result<u64> {
            let b: [u8; 8] = bytes
                .get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?;
            Ok(u64::from_le_bytes(b))
        };
        let version = || word(1);
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
            Some(6) => Ok(Outcome::Expired {
                version: version()?,
            }),
            Some(7) => Ok(Outcome::Refreshed {
                version: version()?,
                expires_at: word(9)?,
            }),
            _ => Err(corrupt()),
        }
    }
}

/// The minimal view of one group's key/value table that applying a command needs; both engines
/// implement it inside their write transaction so the semantics live in one place.
///
/// `put` and `remove` keep the engine's expiry index exact: whatever deadline the replaced or
/// removed record had leaves the index, the new record's deadline (if any) enters it.
pub(crate) trait KvAccess {
    /// Version and deadline of the stored record, expired or not.
    fn head_of(&mut self, key: &[u8]) -> Result<Option<Head>>;
    /// The stored record, expired or not.
    fn record_of(&mut self, key: &[u8]) -> Result<Option<Record>>;
    fn put(&mut self, key: &[u8], record: &Record) -> Result<()>;
    fn remove(&mut self, key: &[u8]) -> Result<()>;
    /// The remembered outcome of `client`'s write `seq`.
    fn session(&mut self, client: u64, seq: u64) -> Result<Option<Outcome>>;
    /// Remember the outcome of `client`'s write `seq`.
    fn record_session(&mut self, client: u64, seq: u64, outcome: &Outcome) -> Result<()>;
    /// Forget `client`'s outcomes with a sequence number below `below`.
    fn forget_sessions(&mut self, client: u64, below: u64) -> Result<()>;
    /// Store the change history row at `pos`.
    fn record_change(&mut self, pos: ChangePos, change: &ChangeRef<'_>) -> Result<()>;
}

/// Apply `commands` (committed at their log indexes, ascending) to `table` in order, with one
/// change history row per command that changed a key. Returns one outcome per command.
pub(crate) fn apply_all(
    table: &mut impl KvAccess,
    commands: &[(u64, Command)],
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut pos = None;
    for (index, cmd) in commands {
        let here = change::next_pos(pos, *index)?;
        pos = Some(here);
        let (outcome, change) = apply(table, *index, cmd)?;
        if let Some(change) = change {
            table.record_change(here, &change)?;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The key's record as a command evaluated at `now` sees it: with a clock, a record expired
/// at `now` is absent; without one (the untimed commands) every stored record is present.
fn visible(table: &mut impl KvAccess, key: &[u8], now: Option<u64>) -> Result<Option<Head>> {
    let head = table.head_of(key)?;
    Ok(head.filter(|h| now.is_none_or(|now| h.live_at(now))))
}

/// Apply `cmd`, committed at log `index`, to `table`: its outcome and the change it made, if
/// any. A duplicate of a session write is answered from the session and changes nothing.
fn apply<'c>(
    table: &mut impl KvAccess,
    index: u64,
    cmd: &'c Command,
) -> Result<(Outcome, Option<ChangeRef<'c>>)> {
    let outcome = match cmd {
        Command::Once {
            client,
            seq,
            ack_below,
            command,
        } => {
            if let Some(first) = table.session(*client, *seq)? {
                return Ok((first, None));
            }
            let inner = match command.as_ref() {
                // Nesting adds nothing: apply the innermost write once, under the outer id.
                Command::Once { command, .. } => command.as_ref(),
                other => other,
            };
            let (outcome, change) = apply(table, index, inner)?;
            let below = (*ack_below)
                .max(seq.saturating_sub(SESSION_WINDOW))
                .min(*seq);
            table.forget_sessions(*client, below)?;
            table.record_session(*client, *seq, &outcome)?;
            return Ok((outcome, change));
        }
        other => apply_write(table, index, other)?,
    };
    let change = ChangeRef::of(cmd, &outcome);
    Ok((outcome, change))
}

/// What `cmd` does to `table`, without the change history (see [`apply`]).
fn apply_write(table: &mut impl KvAccess, index: u64, cmd: &Command) -> Result<Outcome> {
    if index > MAX_VERSION {
        return Err(crate::StorageError::Corrupt(format!(
            "log index {index} is beyond the version range"
        )));
    }
    match cmd {
        // `apply` handles sessions before calling this; the arm keeps the match exhaustive.
        Command::Once { .. } => apply(table, index, cmd).map(|(outcome, _)| outcome),
        Command::Put { key, value, cond } => put(table, index, key, value, None, *cond, None),
        Command::TimedPut {
            key,
            value,
            expires_at,
            cond,
            now,
        } => put(table, index, key, value, *expires_at, *cond, Some(*now)),
        Command::Delete { key, cond } => delete(table, key, *cond, None),
        Command::TimedDelete { key, cond, now } => delete(table, key, *cond, Some(*now)),
        Command::Refresh {
            key,
            expires_at,
            cond,
            now,
        } => {
            let current = visible(table, key, Some(*now))?;
            if !cond.holds(current.map(|h| h.version)) {
                return Ok(Outcome::PreconditionFailed {
                    current: current.map(|h| h.version),
                });
            }
            if current.is_none() {
                return Ok(Outcome::NotFound);
            }
            let Some(mut record) = table.record_of(key)? else {
                return Ok(Outcome::NotFound);
            };
            record.expires_at = Some(*expires_at);
            table.put(key, &record)?;
            Ok(Outcome::Refreshed {
                version: record.version,
                expires_at: *expires_at,
            })
        }
        Command::Expire { key, version, now } => match table.head_of(key)? {
            None => Ok(Outcome::NotFound),
            Some(head) if head.version == *version && !head.live_at(*now) => {
                table.remove(key)?;
                Ok(Outcome::Expired { version: *version })
            }
            // Rewritten (another version), refreshed (deadline moved past `now`) or made
            // permanent since the expirer looked: the key stays.
            Some(head) => Ok(Outcome::PreconditionFailed {
                current: Some(head.version),
            }),
        },
    }
}

fn put(
    table: &mut impl KvAccess,
    index: u64,
    key: &[u8],
    value: &[u8],
    expires_at: Option<u64>,
    cond: Condition,
    now: Option<u64>,
) -> Result<Outcome> {
    let current = visible(table, key, now)?.map(|h| h.version);
    if !cond.holds(current) {
        return Ok(Outcome::PreconditionFailed { current });
    }
    let record = Record {
        version: index,
        value: value.to_vec(),
        expires_at,
    };
    table.put(key, &record)?;
    Ok(Outcome::Written { version: index })
}

fn delete(
    table: &mut impl KvAccess,
    key: &[u8],
    cond: Condition,
    now: Option<u64>,
) -> Result<Outcome> {
    let current = visible(table, key, now)?.map(|h| h.version);
    if !cond.holds(current) {
        return Ok(Outcome::PreconditionFailed { current });
    }
    match current {
        Some(version) => {
            table.remove(key)?;
            Ok(Outcome::Deleted { version })
        }
        None => Ok(Outcome::NotFound),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_outcome_round_trips_through_its_encoding() {
        for outcome in [
            Outcome::Written { version: 7 },
            Outcome::Deleted { version: 8 },
            Outcome::NotFound,
            Outcome::PreconditionFailed { current: None },
            Outcome::PreconditionFailed { current: Some(9) },
            Outcome::Expired { version: 10 },
            Outcome::Refreshed {
                version: 11,
                expires_at: u64::MAX,
            },
        ] {
            assert_eq!(Outcome::decode(&outcome.encode()).unwrap(), outcome);
        }
        // Bytes remembered before the new outcomes existed read as before.
        assert_eq!(
            Outcome::decode(&[1, 7, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Outcome::Written { version: 7 }
        );
        assert!(Outcome::decode(&[7, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Outcome::decode(&[8]).is_err());
    }

    /// postcard writes the variant index first: entries logged before the TTL commands existed
    /// must decode to the same commands, and the new variants must not take their indexes.
    #[test]
    fn commands_logged_before_ttls_still_decode() {
        let put = Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: Condition::Version(3),
        };
        // postcard bytes of the command above as the first version wrote them.
        let old_put = [0, 1, b'k', 1, b'v', 1, 3];
        assert_eq!(postcard::from_bytes::<Command>(&old_put).unwrap(), put);
        assert_eq!(postcard::to_stdvec(&put).unwrap(), old_put);
        let old_once_delete = [2, 5, 6, 4, 1, 1, b'k', 2];
        assert_eq!(
            postcard::from_bytes::<Command>(&old_once_delete).unwrap(),
            Command::Once {
                client: 5,
                seq: 6,
                ack_below: 4,
                command: Box::new(Command::Delete {
                    key: b"k".to_vec(),
                    cond: Condition::Absent,
                }),
            }
        );
        let expire = Command::Expire {
            key: b"k".to_vec(),
            version: 2,
            now: 1000,
        };
        let bytes = postcard::to_stdvec(&expire).unwrap();
        assert_eq!(bytes[0], 6, "new variants go after the old ones");
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), expire);
    }
}
