//! The engine contract shared by both backends.

use std::io::{Read, Write};

use crate::{ChangePage, ChangePos, Command, Outcome, Record, Result};

/// Identifies one Raft group on a node. Group 0 is the cluster metadata group; data partition
/// `p` is group `p + 1`. The storage layer only uses it to keep groups' data apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Small per-group values, stored as opaque bytes chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaKey {
    /// The Raft vote (term and voted-for).
    Vote,
    /// The last committed log id.
    Committed,
    /// The last purged log id.
    Purged,
    /// The state machine's last applied log id and membership; written atomically with every
    /// [`Op::Apply`] and snapshot import.
    Applied,
    /// Metadata of the latest snapshot built or installed.
    Snapshot,
}

impl MetaKey {
    /// Every key, for iteration when a group is dropped.
    pub const ALL: [MetaKey; 5] = [
        MetaKey::Vote,
        MetaKey::Committed,
        MetaKey::Purged,
        MetaKey::Applied,
        MetaKey::Snapshot,
    ];

    /// Stable name used as the on-disk key.
    pub fn name(self) -> &'static str {
        match self {
            MetaKey::Vote => "vote",
            MetaKey::Committed => "committed",
            MetaKey::Purged => "purged",
            MetaKey::Applied => "applied",
            MetaKey::Snapshot => "snapshot",
        }
    }
}

/// One write to a group; the ops of a batch are applied in order.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert log entries (index, encoded entry). Existing entries at those indexes are replaced.
    AppendLog { entries: Vec<(u64, Vec<u8>)> },
    /// Delete log entries with index >= `from`.
    TruncateLog { from: u64 },
    /// Delete log entries with index <= `through`. The change history is trimmed on its own
    /// ([`Op::HistoryStart`]): it may reach further back than the log.
    PurgeLog { through: u64 },
    /// Set a metadata value.
    SetMeta { key: MetaKey, value: Vec<u8> },
    /// Apply committed commands `(log index, command)` and record `applied` under
    /// [`MetaKey::Applied`], atomically. Produces one [`Outcome`] per command, in order.
    ///
    /// Writes one change history row per command that changed a key (see
    /// [`Engine::changes`]), at `(index, ordinal among the commands at that index)`, and stores
    /// the default history start (1) if the group has none stored yet.
    Apply {
        commands: Vec<(u64, Command)>,
        applied: Vec<u8>,
    },
    /// Remove everything stored for the group: log, metadata, key/value data, sessions, the
    /// expiry index and the change history with its start.
    /// Through the writer queue it is ordered after every write queued before it, so a late
    /// write of a closing group (a queued `save_committed`, say) cannot bring it back.
    DropGroup,
    // Appended after the ones above.
    /// Delete change history rows with a log index below `index` and raise the history start
    /// to at least `index`: to trim the history behind a log purge, and for data applied
    /// before the history existed (it has no rows).
    HistoryStart { index: u64 },
}

/// Writes to one group that must commit together. Batches are committed in submission order;
/// a durable batch (and every log write committed before it) is fsynced before it is
/// acknowledged.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    pub group: GroupId,
    pub ops: Vec<Op>,
    /// Whether the batch must be on disk when acknowledged (log and vote writes). State machine
    /// applies need not be: after a crash they are replayed from the durable log.
    pub durable: bool,
}

impl WriteBatch {
    pub fn new(group: GroupId, durable: bool) -> Self {
        WriteBatch {
            group,
            ops: Vec::new(),
            durable,
        }
    }

    pub fn op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// What [`Engine::export_group`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// [`MetaKey::Applied`] as of the exported data (read in the same transaction).
    pub applied: Option<Vec<u8>>,
    pub keys: u64,
    pub bytes: u64,
}

/// A storage backend. Every method is blocking; async code goes through [`crate::Store`].
pub trait Engine: Send + Sync + 'static {
    /// Commit all `batches`, in order; fsync if any is durable. Returns, per batch, the
    /// outcomes of its [`Op::Apply`] commands.
    ///
    /// The state machine's part of a call (applies, the state's metadata, history, drops) is
    /// one atomic transaction: when the call fails, none of it was written. The log's part
    /// (appends, truncations, purges, the log's metadata) may have been written all the same
    /// (the redb engine writes it first): writing it again gives the same log, so a failed call
    /// can be retried batch by batch without applying anything twice.
    fn write(&self, batches: &[WriteBatch]) -> Result<Vec<Vec<Outcome>>>;

    /// Read a metadata value.
    fn read_meta(&self, group: GroupId, key: MetaKey) -> Result<Option<Vec<u8>>>;

    /// First and last index of the group's stored log entries, if any.
    fn log_bounds(&self, group: GroupId) -> Result<Option<(u64, u64)>>;

    /// Stored log entries with `from <= index < to`, ascending.
    fn read_log(&self, group: GroupId, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>>;

    /// The record stored under `key`, with its deadline, expired or not: the caller decides
    /// with [`Record::live_at`] and its own clock (a linearizable read: the leader's).
    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Record>>;

    /// Up to `limit` records whose key starts with `prefix` and sorts after `after` (if given),
    /// ascending by key, stopping once their keys and values add up to `max_bytes` or more (the
    /// record that gets there is included). So fewer than `limit` records adding up to less
    /// than `max_bytes` means there are no more, and a scan always makes progress.
    ///
    /// With `live_at: Some(now)` records not [live](Record::live_at) at `now` are skipped and
    /// count toward neither bound (so the rule above still holds for live keys); with `None`
    /// every stored record is returned. Either way records carry their deadlines.
    fn scan(
        &self,
        group: GroupId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
        live_at: Option<u64>,
    ) -> Result<Vec<(Vec<u8>, Record)>>;

    /// The earliest deadline of any record of the group, expired or not; `None` if no record
    /// has one. The expirer sleeps until then (or until a write gives an earlier one).
    fn next_deadline(&self, group: GroupId) -> Result<Option<u64>>;

    /// Up to `limit` keys of the group whose deadline is at or before `now_ms`, earliest
    /// deadline first (ties by key), each with its current version: what the expirer proposes
    /// [`Command::Expire`] for.
    ///
    /// Backed by a `(deadline, key)` index per group that every write, import and group drop
    /// keeps exact: it holds a key iff the key's record has a deadline, under that deadline.
    fn expired(&self, group: GroupId, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>>;

    /// Write a consistent snapshot of the group's key/value data (records with their
    /// deadlines, expired ones too, and sessions) to `out` in the format of the `snapshot`
    /// module (read in one transaction with [`MetaKey::Applied`]), with the change history
    /// from log index `history_from` on: its start raised to at least that, the rows before
    /// it left out (the last applied index + 1 for no rows, 0 for all that are held).
    fn export_group(
        &self,
        group: GroupId,
        out: &mut dyn Write,
        history_from: u64,
    ) -> Result<ExportSummary>;

    /// Replace the group's key/value data with the snapshot read from `input` and set
    /// [`MetaKey::Applied`] to `applied`, atomically: a stream that fails to decode or fails its
    /// checksum changes nothing. The expiry index of the group is rebuilt from the imported
    /// records. The group's change history becomes the stream's: its rows and its start. A
    /// stream without history (written before snapshots carried it) leaves no rows and the
    /// start at `history_start` (the snapshot's last log index + 1); a stream whose history
    /// starts after that or holds rows from outside it is refused as corrupt. Returns the
    /// number of keys imported.
    fn import_group(
        &self,
        group: GroupId,
        input: &mut dyn Read,
        applied: &[u8],
        history_start: u64,
    ) -> Result<u64>;

    /// The group's change history after `after`, ascending, read in one transaction with the
    /// history start: at most `limit` rows, stopping once their keys and values add up to
    /// `max_bytes` or more (the row that gets there is included, so a page always makes
    /// progress), as [`Engine::scan`] does.
    ///
    /// The history holds a row per applied command that changed a key, for every entry from
    /// [`ChangePage::start`] to the applied index; the caller tells a cursor that is too old
    /// by comparing it with the start (`after < ChangePos::end_of(start - 1)`).
    fn changes(
        &self,
        group: GroupId,
        after: ChangePos,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage>;

    /// The group's stored history start; `None` if none is stored: a group that has applied
    /// nothing since the change history existed (its start is then 1).
    fn history_start(&self, group: GroupId) -> Result<Option<u64>>;

    /// Remove everything stored for the group: log, metadata, key/value data and history (an
    /// [`Op::DropGroup`] committed on its own).
    fn drop_group(&self, group: GroupId) -> Result<()> {
        self.write(&[WriteBatch::new(group, true).op(Op::DropGroup)])
            .map(|_| ())
    }

    /// Groups that have any metadata stored (the groups this node hosted when it stopped).
    fn groups(&self) -> Result<Vec<GroupId>>;
}
