//! The redb engine: one redb file per node holding every group's state machine, and beside it
//! the Raft log of every group in append-only segment files ([`Wal`], `kv.raftlog/` for
//! `kv.redb`: see [`log_dir`]).
//!
//! **Two stores, one commit.** A write writes its log part (appends, truncations, the vote,
//! commit index and purge point) to the log first, fsynced when durable, then its state
//! machine part in one redb transaction that is *not* fsynced, then its purges. The log is what
//! makes an acknowledged entry durable; after a crash redb comes back at its last durable
//! commit and kv-raft replays the log from the applied index it finds there. That needs the log
//! to still hold every entry after that index, so a write that purges the log commits redb
//! durably before the purge (and the purge point) is written, and redb also commits durably at
//! least every [`DURABLE_EVERY`] while written to, which bounds replay after a crash. A drop is
//! written to the log first, then committed in redb durably: a crash in between leaves the
//! group's state without its log, an older but consistent state of the group that its leader
//! brings up to date should the node host the group again (which partitions a node hosts comes
//! from the cluster map, not from what is stored). Log
//! writes are idempotent and come first: a write whose redb transaction fails can be retried
//! batch by batch without applying anything twice, and once the log fails (its I/O errors are
//! not retried) every later write fails before redb is touched.
//!
//! The redb tables are keyed by group first, so that each group's data is one contiguous key
//! range:
//!
//! - `log`:  `(group, index)` -> encoded entry. Written by versions that kept the log in redb;
//!   opening such a file moves it to the log files (see [`RedbEngine::move_log_out`]).
//! - `meta`: `(group, MetaKey::name())` -> value, for the keys the log does not keep (the
//!   applied index and snapshot metadata)
//! - `kv`:   `(group, key)` -> [`Record::encode`]d record (with its deadline, if any)
//! - `sessions`: `(group, client, seq)` -> encoded [`Outcome`] of that client write
//! - `expiry`: `(group, deadline, key)` -> version, for exactly the `kv` records that have a
//!   deadline. Derived data: only [`put_record`] and [`remove_record`] write `kv` records, and
//!   they update it in the same transaction. A file written before deadlines existed has no
//!   deadlines, so the table starting out empty is exact for it.
//! - `changes`: `(group, index, sub)` -> encoded [`Change`], the change history
//! - `change_start`: `group` -> the group's history start. A file written before the history
//!   existed has neither table; both are created when it is opened, empty (kv-raft then sets
//!   the start of groups whose data predates the history, see [`Op::HistoryStart`]).
//!
//! Every other [`Engine`] method is one redb transaction, so each is atomic and sees one
//! consistent state. Write transactions serialize inside redb: [`Engine::import_group`] waits for (and
//! holds up) the [`crate::Store`] writer thread.

use std::borrow::Cow;
use std::fmt::Display;
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};

use crate::change::{Change, ChangePage, ChangePos, ChangeRef, DEFAULT_START};
use crate::command::{self, KvAccess};
use crate::engine::{Engine, ExportSummary, GroupId, MetaKey, Op, WriteBatch};
use crate::record::Head;
use crate::snapshot::{Frame, SnapshotReader, SnapshotWriter};
use crate::wal::{Record as LogRecord, Wal};
use crate::{Outcome, Record, Result, StorageError};

const LOG: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, (u64, &str), &[u8]> = TableDefinition::new("meta");
const KV: TableDefinition<'_, (u64, &[u8]), &[u8]> = TableDefinition::new("kv");
const SESSIONS: TableDefinition<'_, (u64, u64, u64), &[u8]> = TableDefinition::new("sessions");
const EXPIRY: TableDefinition<'_, (u64, u64, &[u8]), u64> = TableDefinition::new("expiry");
const CHANGES: TableDefinition<'_, (u64, u64, u32), &[u8]> = TableDefinition::new("changes");
const CHANGE_START: TableDefinition<'_, u64, u64> = TableDefinition::new("change_start");

type ChangeTable<'txn> = Table<'txn, (u64, u64, u32), &'static [u8]>;
type StartTable<'txn> = Table<'txn, u64, u64>;

/// Delete the history rows of `group` with `index < below`.
fn forget_changes(changes: &mut ChangeTable<'_>, group: u64, below: u64) -> Result<()> {
    changes
        .retain_in((group, 0, 0)..(group, below, 0), |_, _| false)
        .map_err(backend)
}

/// Every history row of `group`.
fn change_span(group: u64) -> std::ops::RangeInclusive<(u64, u64, u32)> {
    (group, 0, 0)..=(group, u64::MAX, u32::MAX)
}

/// Raise the history start of `group` to at least `start`.
fn raise_start(starts: &mut StartTable<'_>, group: u64, start: u64) -> Result<()> {
    let stored = starts.get(group).map_err(backend)?.map(|v| v.value());
    let raised = stored.unwrap_or(DEFAULT_START).max(start);
    if stored != Some(raised) {
        starts.insert(group, raised).map_err(backend)?;
    }
    Ok(())
}

type ExpiryTable<'txn> = Table<'txn, (u64, u64, &'static [u8]), u64>;

/// Every index entry of `group` in `expiry`.
fn expiry_span(group: u64) -> GroupSpan3 {
    let end = match group.checked_add(1) {
        Some(next) => Bound::Excluded((next, 0, &[][..])),
        None => Bound::Unbounded,
    };
    (Bound::Included((group, 0, &[][..])), end)
}

type GroupSpan3 = (
    Bound<(u64, u64, &'static [u8])>,
    Bound<(u64, u64, &'static [u8])>,
);

/// Store `record` under `key` of `group`, moving the key's expiry index entry with it.
fn put_record(
    kv: &mut KvTable<'_>,
    expiry: &mut ExpiryTable<'_>,
    group: u64,
    key: &[u8],
    record: &Record,
) -> Result<()> {
    let old = kv
        .insert((group, key), record.encode().as_slice())
        .map_err(backend)?
        .map(|old| Record::decode_head(old.value()))
        .transpose()?;
    if let Some(deadline) = old.and_then(|h| h.expires_at) {
        expiry.remove((group, deadline, key)).map_err(backend)?;
    }
    if let Some(deadline) = record.expires_at {
        expiry
            .insert((group, deadline, key), record.version)
            .map_err(backend)?;
    }
    Ok(())
}

/// Remove `key` of `group` and its expiry index entry.
fn remove_record(
    kv: &mut KvTable<'_>,
    expiry: &mut ExpiryTable<'_>,
    group: u64,
    key: &[u8],
) -> Result<()> {
    let old = kv
        .remove((group, key))
        .map_err(backend)?
        .map(|old| Record::decode_head(old.value()))
        .transpose()?;
    if let Some(deadline) = old.and_then(|h| h.expires_at) {
        expiry.remove((group, deadline, key)).map_err(backend)?;
    }
    Ok(())
}

type SessionTable<'txn> = Table<'txn, (u64, u64, u64), &'static [u8]>;

/// Every session of `group`.
fn session_span(group: u64) -> std::ops::RangeInclusive<(u64, u64, u64)> {
    (group, 0, 0)..=(group, u64::MAX, u64::MAX)
}

type KvTable<'txn> = Table<'txn, (u64, &'static [u8]), &'static [u8]>;

/// Every redb error (I/O, corruption, transaction, table) is a backend failure to the caller.
fn backend(e: impl Display) -> StorageError {
    StorageError::backend(e)
}

/// Key range of one group in a table keyed by `(group, T)`.
type GroupSpan<T> = (Bound<(u64, T)>, Bound<(u64, T)>);

/// Every key of `group` in a table keyed by `(group, T)`, where `min` is the smallest `T`.
/// The range ends before the next group's smallest key (or at the end, for the last group id).
fn group_span<T: Copy>(group: u64, min: T) -> GroupSpan<T> {
    let end = match group.checked_add(1) {
        Some(next) => Bound::Excluded((next, min)),
        None => Bound::Unbounded,
    };
    (Bound::Included((group, min)), end)
}

/// Where the Raft log of the redb file at `path` lives: beside it, `kv.redb` -> `kv.raftlog/`.
pub(crate) fn log_dir(path: &Path) -> std::path::PathBuf {
    path.with_extension("raftlog")
}

/// redb's own default page cache.
const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// A node's storage in one redb file. Keeps the file locked while open: a second
/// [`RedbEngine::open`] of the same path fails until this one is dropped.
pub struct RedbEngine {
    db: Database,
    /// Every group's Raft log, vote, commit index and purge point.
    log: Wal,
    /// When the state machine was last committed durably (see [`DURABLE_EVERY`]).
    durable_at: Mutex<Instant>,
}

/// Largest frame [`RedbEngine::move_log_out`] writes (a frame's length is a u32).
const MOVE_FRAME_BYTES: usize = 64 << 20;

/// The longest the state machine goes without a durable commit while it is written to: what a
/// crash can make a node replay from its log, and how long redb keeps the pages of
/// non-durable commits from being reused.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

impl RedbEngine {
    /// Open the database at `path`, creating the file and its parent directory if missing,
    /// with redb's default page cache (1 GiB).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbEngine::open`] with a page cache of `cache_bytes`: the most memory redb keeps for
    /// pages read or written (it grows to that as the data is touched).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(backend)?;
        let log = Wal::open(&log_dir(path))?;
        let engine = RedbEngine {
            db,
            log,
            durable_at: Mutex::new(Instant::now()),
        };
        // Read transactions open tables without creating them; creating all of them here means
        // they never fail with "table does not exist".
        engine.write_txn(Durability::Immediate, |txn| {
            txn.open_table(LOG).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(SESSIONS).map_err(backend)?;
            txn.open_table(EXPIRY).map_err(backend)?;
            txn.open_table(CHANGES).map_err(backend)?;
            txn.open_table(CHANGE_START).map_err(backend)?;
            Ok(())
        })?;
        engine.move_log_out()?;
        Ok(engine)
    }

    /// Run `f` in one write transaction and commit it only if `f` succeeded. On error the
    /// transaction is dropped, which aborts it: nothing `f` did becomes visible.
    fn write_txn<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<R>,
    ) -> Result<R> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(durability).map_err(backend)?;
        let out = f(&txn)?;
        txn.commit().map_err(backend)?;
        Ok(out)
    }

    fn read_txn(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(backend)
    }
}

impl RedbEngine {
    /// Whether the state machine's last durable commit is older than [`DURABLE_EVERY`].
    fn durable_due(&self) -> bool {
        self.durable_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= DURABLE_EVERY
    }

    /// The state machine's part of `batches` in one redb transaction; its outcomes per batch.
    fn write_state(&self, batches: &[WriteBatch], durable: bool) -> Result<Vec<Vec<Outcome>>> {
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write_txn(durability, |txn| {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(backend)?;
            let mut changes = txn.open_table(CHANGES).map_err(backend)?;
            let mut starts = txn.open_table(CHANGE_START).map_err(backend)?;
            let mut all = Vec::with_capacity(batches.len());
            for batch in batches {
                let g = batch.group.0;
                let mut outcomes = Vec::new();
                for op in &batch.ops {
                    match op {
                        Op::AppendLog { .. } | Op::TruncateLog { .. } | Op::PurgeLog { .. } => {}
                        Op::SetMeta { key, .. } if Wal::keeps(*key) => {}
                        Op::HistoryStart { index } => {
                            forget_changes(&mut changes, g, *index)?;
                            raise_start(&mut starts, g, *index)?;
                        }
                        Op::SetMeta { key, value } => {
                            meta.insert((g, key.name()), value.as_slice())
                                .map_err(backend)?;
                        }
                        Op::Apply { commands, applied } => {
                            let mut table = GroupKv {
                                table: &mut kv,
                                expiry: &mut expiry,
                                sessions: &mut sessions,
                                changes: &mut changes,
                                group: g,
                            };
                            outcomes.extend(command::apply_all(&mut table, commands)?);
                            // Same transaction as the commands: Applied never runs ahead of
                            // or behind the data (and the history rows).
                            meta.insert((g, MetaKey::Applied.name()), applied.as_slice())
                                .map_err(backend)?;
                            raise_start(&mut starts, g, DEFAULT_START)?;
                        }
                        Op::DropGroup => {
                            clear_group(&mut meta, g, "")?;
                            clear_group(&mut kv, g, &[][..])?;
                            expiry
                                .retain_in(expiry_span(g), |_, _| false)
                                .map_err(backend)?;
                            sessions
                                .retain_in(session_span(g), |_, _| false)
                                .map_err(backend)?;
                            changes
                                .retain_in(change_span(g), |_, _| false)
                                .map_err(backend)?;
                            starts.remove(g).map_err(backend)?;
                        }
                    }
                }
                all.push(outcomes);
            }
            Ok(all)
        })
    }

    /// Move the log of a file written before the log had its own files ([`Wal`]) out of the
    /// `log` and `meta` tables: copied to the log (durably), then removed from redb. Either
    /// step may be cut short by a crash; run again, it finishes the job.
    fn move_log_out(&self) -> Result<()> {
        let kept = |name: &str| {
            MetaKey::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .filter(|k| Wal::keeps(*k))
        };
        let known: std::collections::BTreeSet<u64> = self.log.groups().into_iter().collect();
        let mut entries: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut metas: Vec<(u64, MetaKey, Vec<u8>)> = Vec::new();
        let mut found = false;
        {
            let txn = self.read_txn()?;
            let log = txn.open_table(LOG).map_err(backend)?;
            for row in log.iter().map_err(backend)? {
                let (key, value) = row.map_err(backend)?;
                let (group, index) = key.value();
                found = true;
                if !known.contains(&group) {
                    entries.push((group, index, value.value().to_vec()));
                }
            }
            let meta = txn.open_table(META).map_err(backend)?;
            for row in meta.iter().map_err(backend)? {
                let (key, value) = row.map_err(backend)?;
                let (group, name) = key.value();
                if let Some(k) = kept(name) {
                    found = true;
                    if !known.contains(&group) {
                        metas.push((group, k, value.value().to_vec()));
                    }
                }
            }
        }
        if !found {
            return Ok(());
        }
        let records: Vec<LogRecord<'_>> = entries
            .iter()
            .map(|(group, index, entry)| LogRecord::Append {
                group: *group,
                index: *index,
                entry: Cow::Borrowed(entry.as_slice()),
            })
            .chain(metas.iter().map(|(group, key, value)| LogRecord::Meta {
                group: *group,
                key: *key,
                value: Cow::Borrowed(value.as_slice()),
            }))
            .collect();
        // In frames of at most MOVE_FRAME_BYTES, entries first: a group whose metadata is in
        // the log has all its entries there too (see `known` above).
        let mut frame = Vec::new();
        let mut bytes = 0usize;
        for record in records {
            bytes += match &record {
                LogRecord::Append { entry, .. } => entry.len(),
                _ => 0,
            } + 32;
            frame.push(record);
            if bytes >= MOVE_FRAME_BYTES {
                self.log.write(&frame, true)?;
                frame.clear();
                bytes = 0;
            }
        }
        self.log.write(&frame, true)?;
        self.write_txn(Durability::Immediate, |txn| {
            txn.open_table(LOG)
                .map_err(backend)?
                .retain(|_, _| false)
                .map_err(backend)?;
            txn.open_table(META)
                .map_err(backend)?
                .retain(|(_, name), _| kept(name).is_none())
                .map_err(backend)?;
            Ok(())
        })?;
        tracing::info!(
            entries = entries.len(),
            values = metas.len(),
            "raft log moved out of the redb file into its own files"
        );
        Ok(())
    }
}

/// One group's slice of the open `kv` table, for [`command::apply`].
struct GroupKv<'a, 'txn> {
    table: &'a mut KvTable<'txn>,
    expiry: &'a mut ExpiryTable<'txn>,
    sessions: &'a mut SessionTable<'txn>,
    changes: &'a mut ChangeTable<'txn>,
    group: u64,
}

impl KvAccess for GroupKv<'_, '_> {
    fn head_of(&mut self, key: &[u8]) -> Result<Option<Head>> {
        match self.table.get((self.group, key)).map_err(backend)? {
            Some(stored) => Record::decode_head(stored.value()).map(Some),
            None => Ok(None),
        }
    }

    fn record_of(&mut self, key: &[u8]) -> Result<Option<Record>> {
        match self.table.get((self.group, key)).map_err(backend)? {
            Some(stored) => Record::decode(stored.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, key: &[u8], record: &Record) -> Result<()> {
        put_record(self.table, self.expiry, self.group, key, record)
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        remove_record(self.table, self.expiry, self.group, key)
    }

    fn session(&mut self, client: u64, seq: u64) -> Result<Option<Outcome>> {
        match self
            .sessions
            .get((self.group, client, seq))
            .map_err(backend)?
        {
            Some(stored) => Outcome::decode(stored.value()).map(Some),
            None => Ok(None),
        }
    }

    fn record_session(&mut self, client: u64, seq: u64, outcome: &Outcome) -> Result<()> {
        self.sessions
            .insert((self.group, client, seq), outcome.encode().as_slice())
            .map_err(backend)?;
        Ok(())
    }

    fn forget_sessions(&mut self, client: u64, below: u64) -> Result<()> {
        let g = self.group;
        self.sessions
            .retain_in((g, client, 0)..(g, client, below), |_, _| false)
            .map_err(backend)
    }

    fn record_change(&mut self, pos: ChangePos, change: &ChangeRef<'_>) -> Result<()> {
        self.changes
            .insert(
                (self.group, pos.index, pos.sub),
                change.encode()?.as_slice(),
            )
            .map_err(backend)?;
        Ok(())
    }
}

/// Remove every key of `group` from a table keyed by `(group, T)`.
fn clear_group<T: Copy + 'static, V: redb::Value + 'static>(
    table: &mut Table<'_, (u64, T), V>,
    group: u64,
    min: T,
) -> Result<()>
where
    (u64, T): redb::Key,
    (u64, T): std::borrow::Borrow<<(u64, T) as redb::Value>::SelfType<'static>>,
{
    table
        .retain_in(group_span(group, min), |_, _| false)
        .map_err(backend)
}

impl Engine for RedbEngine {
    /// The log side (the `wal` module) is written first, then the state machine's redb
    /// transaction, then the purges. See the module docs for why that order and what is durable.
    fn write(&self, batches: &[WriteBatch]) -> Result<Vec<Vec<Outcome>>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut log = Vec::new();
        let mut purges = Vec::new();
        let mut log_durable = false;
        let mut state = false;
        let mut state_durable = false;
        for batch in batches {
            let g = batch.group.0;
            let mut touches_state = false;
            for op in &batch.ops {
                match op {
                    Op::AppendLog { entries } => {
                        log.extend(entries.iter().map(|(index, entry)| LogRecord::Append {
                            group: g,
                            index: *index,
                            entry: Cow::Borrowed(entry.as_slice()),
                        }))
                    }
                    Op::TruncateLog { from } => log.push(LogRecord::Truncate {
                        group: g,
                        from: *from,
                    }),
                    Op::PurgeLog { through } => {
                        purges.push(LogRecord::Purge {
                            group: g,
                            through: *through,
                        });
                        // What the purged entries applied must be on disk before they go.
                        state_durable = true;
                    }
                    // The purge point goes with the purge: written before redb is durable, it
                    // would tell a restarted node that entries its state lacks are gone.
                    Op::SetMeta {
                        key: MetaKey::Purged,
                        value,
                    } => {
                        purges.push(LogRecord::Meta {
                            group: g,
                            key: MetaKey::Purged,
                            value: Cow::Borrowed(value.as_slice()),
                        });
                        state_durable = true;
                    }
                    Op::SetMeta { key, value } if Wal::keeps(*key) => log.push(LogRecord::Meta {
                        group: g,
                        key: *key,
                        value: Cow::Borrowed(value.as_slice()),
                    }),
                    Op::DropGroup => {
                        log.push(LogRecord::Drop { group: g });
                        touches_state = true;
                        state_durable = true;
                    }
                    Op::SetMeta { .. } | Op::Apply { .. } | Op::HistoryStart { .. } => {
                        touches_state = true
                    }
                }
            }
            log_durable |= batch.durable;
            state |= touches_state;
            state_durable |= touches_state && batch.durable;
        }
        // Fails at once, before the state machine is touched, if the log failed earlier: a
        // retry of this round must not apply its commands twice.
        self.log.write(&log, log_durable)?;
        let outcomes = if state || state_durable {
            let due = self.durable_due();
            let durable = state_durable || due;
            let outcomes = self.write_state(batches, durable)?;
            if durable {
                *self.durable_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            outcomes
        } else {
            vec![Vec::new(); batches.len()]
        };
        self.log.write(&purges, false)?;
        Ok(outcomes)
    }

    fn read_meta(&self, group: GroupId, key: MetaKey) -> Result<Option<Vec<u8>>> {
        if Wal::keeps(key) {
            return Ok(self.log.meta(group.0, key));
        }
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).map_err(backend)?;
        get_meta(&meta, group, key)
    }

    fn log_bounds(&self, group: GroupId) -> Result<Option<(u64, u64)>> {
        Ok(self.log.bounds(group.0))
    }

    fn read_log(&self, group: GroupId, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.log.read(group.0, from, to)
    }

    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Record>> {
        let txn = self.read_txn()?;
        let kv = txn.open_table(KV).map_err(backend)?;
        match kv.get((group.0, key)).map_err(backend)? {
            Some(stored) => Record::decode(stored.value()).map(Some),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        group: GroupId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
        live_at: Option<u64>,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let g = group.0;
        // Keys with a given prefix are contiguous and start at the prefix itself, so starting
        // at max(prefix, after) and stopping at the first key without the prefix visits exactly
        // the matching keys.
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded((g, after)),
            _ => Bound::Included((g, prefix)),
        };
        let (_, end) = group_span(g, &[][..]);
        let txn = self.read_txn()?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in kv.range((start, end)).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (_, key) = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let stored = value.value();
            if let Some(now) = live_at {
                // Expired records are skipped without copying their values.
                if !Record::decode_head(stored)?.live_at(now) {
                    continue;
                }
            }
            let record = Record::decode(stored)?;
            bytes = bytes.saturating_add(key.len() + record.value.len());
            out.push((key.to_vec(), record));
            if out.len() == limit || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn next_deadline(&self, group: GroupId) -> Result<Option<u64>> {
        let txn = self.read_txn()?;
        let expiry = txn.open_table(EXPIRY).map_err(backend)?;
        let mut range = expiry.range(expiry_span(group.0)).map_err(backend)?;
        match range.next() {
            Some(entry) => Ok(Some(entry.map_err(backend)?.0.value().1)),
            None => Ok(None),
        }
    }

    fn expired(&self, group: GroupId, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        let txn = self.read_txn()?;
        let expiry = txn.open_table(EXPIRY).map_err(backend)?;
        let mut out = Vec::new();
        // Ordered by (group, deadline): the due keys are a prefix of the group's range.
        for entry in expiry.range(expiry_span(group.0)).map_err(backend)? {
            if out.len() >= limit {
                break;
            }
            let (key, version) = entry.map_err(backend)?;
            let (_, deadline, key) = key.value();
            if deadline > now_ms {
                break;
            }
            out.push((key.to_vec(), version.value()));
        }
        Ok(out)
    }

    fn export_group(
        &self,
        group: GroupId,
        out: &mut dyn Write,
        history_from: u64,
    ) -> Result<ExportSummary> {
        // One read transaction: Applied and the records are the same point in time.
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).map_err(backend)?;
        let applied = get_meta(&meta, group, MetaKey::Applied)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let mut w = SnapshotWriter::new(out)?;
        // Streams record by record: the group is never held in memory.
        for entry in kv.range(group_span(group.0, &[][..])).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let record = Record::decode(value.value())?;
            w.record(key.value().1, &record)?;
        }
        let sessions = txn.open_table(SESSIONS).map_err(backend)?;
        for entry in sessions.range(session_span(group.0)).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (_, client, seq) = key.value();
            w.session(client, seq, &Outcome::decode(value.value())?)?;
        }
        let starts = txn.open_table(CHANGE_START).map_err(backend)?;
        let start = starts
            .get(group.0)
            .map_err(backend)?
            .map_or(DEFAULT_START, |v| v.value())
            .max(history_from);
        // The rows were written by the applies up to `applied`, read in this transaction.
        w.history_start(start)?;
        let changes = txn.open_table(CHANGES).map_err(backend)?;
        let rows = (group.0, start, 0)..=(group.0, u64::MAX, u32::MAX);
        for entry in changes.range(rows).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (_, index, sub) = key.value();
            w.change(ChangePos { index, sub }, value.value())?;
        }
        let (keys, bytes) = w.finish()?;
        Ok(ExportSummary {
            applied,
            keys,
            bytes,
        })
    }

    fn import_group(
        &self,
        group: GroupId,
        input: &mut dyn Read,
        applied: &[u8],
        history_start: u64,
    ) -> Result<u64> {
        let g = group.0;
        let mut reader = SnapshotReader::new(input, history_start)?;
        self.write_txn(Durability::Immediate, |txn| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            clear_group(&mut kv, g, &[][..])?;
            let mut expiry = txn.open_table(EXPIRY).map_err(backend)?;
            expiry
                .retain_in(expiry_span(g), |_, _| false)
                .map_err(backend)?;
            let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
            sessions
                .retain_in(session_span(g), |_, _| false)
                .map_err(backend)?;
            let mut changes = txn.open_table(CHANGES).map_err(backend)?;
            changes
                .retain_in(change_span(g), |_, _| false)
                .map_err(backend)?;
            let mut keys = 0;
            // Frames go straight into the transaction; it commits only after `next_frame`
            // returned `Ok(None)`, i.e. the trailer and checksum were verified. Any error
            // returns early and drops (aborts) the transaction.
            while let Some(frame) = reader.next_frame()? {
                match frame {
                    Frame::Record(key, record) => {
                        put_record(&mut kv, &mut expiry, g, &key, &record)?;
                        keys += 1;
                    }
                    Frame::Session {
                        client,
                        seq,
                        outcome,
                    } => {
                        sessions
                            .insert((g, client, seq), outcome.encode().as_slice())
                            .map_err(backend)?;
                    }
                    Frame::Change(pos, change) => {
                        changes
                            .insert((g, pos.index, pos.sub), change.encode()?.as_slice())
                            .map_err(backend)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert((g, MetaKey::Applied.name()), applied)
                .map_err(backend)?;
            let mut starts = txn.open_table(CHANGE_START).map_err(backend)?;
            starts.insert(g, reader.history_start()).map_err(backend)?;
            Ok(keys)
        })
    }

    fn changes(
        &self,
        group: GroupId,
        after: ChangePos,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage> {
        let g = group.0;
        // One read transaction: the start and the rows are the same point in time.
        let txn = self.read_txn()?;
        let starts = txn.open_table(CHANGE_START).map_err(backend)?;
        let start = starts
            .get(g)
            .map_err(backend)?
            .map_or(DEFAULT_START, |v| v.value());
        let changes = txn.open_table(CHANGES).map_err(backend)?;
        let mut rows = Vec::new();
        if limit == 0 {
            return Ok(ChangePage { start, rows });
        }
        let range = (
            Bound::Excluded((g, after.index, after.sub)),
            Bound::Included((g, u64::MAX, u32::MAX)),
        );
        let mut bytes = 0usize;
        for entry in changes.range(range).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (_, index, sub) = key.value();
            let change = Change::decode(value.value())?;
            bytes = bytes.saturating_add(change.size());
            rows.push((ChangePos { index, sub }, change));
            if rows.len() == limit || bytes >= max_bytes {
                break;
            }
        }
        Ok(ChangePage { start, rows })
    }

    fn history_start(&self, group: GroupId) -> Result<Option<u64>> {
        let txn = self.read_txn()?;
        let starts = txn.open_table(CHANGE_START).map_err(backend)?;
        Ok(starts.get(group.0).map_err(backend)?.map(|v| v.value()))
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).map_err(backend)?;
        let mut groups: std::collections::BTreeSet<GroupId> =
            self.log.groups().into_iter().map(GroupId).collect();
        for entry in meta.iter().map_err(backend)? {
            let (key, _) = entry.map_err(backend)?;
            groups.insert(GroupId(key.value().0));
        }
        Ok(groups.into_iter().collect())
    }
}

fn get_meta(
    meta: &ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    group: GroupId,
    key: MetaKey,
) -> Result<Option<Vec<u8>>> {
    Ok(meta
        .get((group.0, key.name()))
        .map_err(backend)?
        .map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Condition};

    fn put(key: &str) -> Command {
        Command::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            cond: Condition::Always,
        }
    }

    /// A record too short to hold a version under `key` of `group`: applying to it fails.
    fn corrupt(engine: &RedbEngine, group: u64, key: &[u8]) {
        engine
            .write_txn(Durability::Immediate, |txn| {
                let mut kv = txn.open_table(KV).map_err(backend)?;
                kv.insert((group, key), &b"short"[..]).map_err(backend)?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_failing_batch_in_a_group_commit_fails_only_its_own_group() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("node.redb")).unwrap();
        corrupt(&engine, 2, b"bad");
        let append = |g: u64, i: u64| {
            WriteBatch::new(GroupId(g), true).op(Op::AppendLog {
                entries: vec![(i, format!("e{i}").into_bytes())],
            })
        };
        let apply = |g: u64, i: u64, key: &str| {
            WriteBatch::new(GroupId(g), false).op(Op::Apply {
                commands: vec![(i, put(key))],
                applied: i.to_le_bytes().to_vec(),
            })
        };
        let round = [
            append(1, 1),
            apply(2, 1, "bad"),
            // After its group's failure: must not land either (no hole in group 2's history).
            append(2, 2),
            apply(1, 1, "ok"),
            append(3, 7),
        ];
        let results = crate::writer::commit(&engine, &round);
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, false, true, true], "{results:?}");
        assert!(matches!(results[1], Err(StorageError::Corrupt(_))));
        assert_eq!(
            results[3].as_ref().unwrap(),
            &[Outcome::Written { version: 1 }]
        );

        assert_eq!(engine.log_bounds(GroupId(1)).unwrap(), Some((1, 1)));
        assert_eq!(engine.get(GroupId(1), b"ok").unwrap().unwrap().version, 1);
        assert_eq!(engine.log_bounds(GroupId(3)).unwrap(), Some((7, 7)));
        // Group 2's append may be in its log (log writes come first and are idempotent), but
        // nothing of it was applied.
        assert_eq!(
            engine.read_meta(GroupId(2), MetaKey::Applied).unwrap(),
            None
        );
    }

    /// The purge and its purge point are written only once the state machine's commit
    /// succeeded (durably): a log that forgets entries the state may still need would lose them.
    #[test]
    fn a_round_whose_state_commit_fails_purges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("node.redb")).unwrap();
        corrupt(&engine, 2, b"bad");
        let g1 = GroupId(1);
        engine
            .write(&[WriteBatch::new(g1, true).op(Op::AppendLog {
                entries: vec![(1, b"e1".to_vec()), (2, b"e2".to_vec())],
            })])
            .unwrap();
        let purge = WriteBatch::new(g1, true)
            .op(Op::SetMeta {
                key: MetaKey::Purged,
                value: b"p1".to_vec(),
            })
            .op(Op::PurgeLog { through: 1 });
        let failing = WriteBatch::new(GroupId(2), false).op(Op::Apply {
            commands: vec![(1, put("bad"))],
            applied: b"1".to_vec(),
        });
        assert!(engine.write(&[purge.clone(), failing]).is_err());
        assert_eq!(engine.read_meta(g1, MetaKey::Purged).unwrap(), None);
        assert_eq!(engine.log_bounds(g1).unwrap(), Some((1, 2)));
        // On its own it goes through.
        engine.write(&[purge]).unwrap();
        assert_eq!(
            engine.read_meta(g1, MetaKey::Purged).unwrap(),
            Some(b"p1".to_vec())
        );
        assert_eq!(engine.log_bounds(g1).unwrap(), Some((2, 2)));
    }

    #[test]
    fn a_group_commit_without_failures_is_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("node.redb")).unwrap();
        let round: Vec<WriteBatch> = (1..=3)
            .map(|g| {
                WriteBatch::new(GroupId(g), true).op(Op::Apply {
                    commands: vec![(5, put("k"))],
                    applied: vec![1],
                })
            })
            .collect();
        let results = crate::writer::commit(&engine, &round);
        assert!(results
            .iter()
            .all(|r| r.as_ref().unwrap() == &[Outcome::Written { version: 5 }]));
    }

    #[test]
    fn a_failing_batch_aborts_the_whole_write() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("node.redb")).unwrap();
        corrupt(&engine, 2, b"bad");

        let good = WriteBatch::new(GroupId(1), true)
            .op(Op::AppendLog {
                entries: vec![(1, b"e1".to_vec())],
            })
            .op(Op::Apply {
                commands: vec![(1, put("ok"))],
                applied: b"1".to_vec(),
            });
        let bad = WriteBatch::new(GroupId(2), false).op(Op::Apply {
            commands: vec![(1, put("bad"))],
            applied: b"1".to_vec(),
        });
        let result = engine.write(&[good.clone(), bad]);
        assert!(
            matches!(result, Err(StorageError::Corrupt(_))),
            "{result:?}"
        );

        assert_eq!(engine.get(GroupId(1), b"ok").unwrap(), None);
        assert_eq!(
            engine.read_meta(GroupId(1), MetaKey::Applied).unwrap(),
            None
        );
        // The good batch alone then commits once: its command is applied exactly once, and
        // its log entry written again is the same log.
        let outcomes = engine.write(std::slice::from_ref(&good)).unwrap();
        assert_eq!(outcomes, [vec![Outcome::Written { version: 1 }]]);
        assert_eq!(engine.log_bounds(GroupId(1)).unwrap(), Some((1, 1)));
        assert_eq!(engine.groups().unwrap(), vec![GroupId(1)]);
    }

    /// A file from before the log had its own files: the log, vote and commit index in redb.
    #[test]
    fn a_file_with_its_log_inside_moves_it_to_the_raft_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                log.insert((1, 5), &b"e5"[..]).unwrap();
                log.insert((1, 6), &b"e6"[..]).unwrap();
                log.insert((2, 1), &b"f1"[..]).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert((1, "vote"), &b"v1"[..]).unwrap();
                meta.insert((1, "purged"), &b"p4"[..]).unwrap();
                meta.insert((1, "applied"), &b"a6"[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let engine = RedbEngine::open(&path).unwrap();
            let g = GroupId(1);
            assert_eq!(
                engine.read_log(g, 0, u64::MAX).unwrap(),
                [(5, b"e5".to_vec()), (6, b"e6".to_vec())]
            );
            assert_eq!(engine.log_bounds(GroupId(2)).unwrap(), Some((1, 1)));
            assert_eq!(
                engine.read_meta(g, MetaKey::Vote).unwrap(),
                Some(b"v1".to_vec())
            );
            assert_eq!(
                engine.read_meta(g, MetaKey::Purged).unwrap(),
                Some(b"p4".to_vec())
            );
            assert_eq!(
                engine.read_meta(g, MetaKey::Applied).unwrap(),
                Some(b"a6".to_vec())
            );
            // Gone from redb: the next open has nothing to move.
            let txn = engine.read_txn().unwrap();
            assert_eq!(txn.open_table(LOG).unwrap().iter().unwrap().count(), 0);
            assert_eq!(txn.open_table(META).unwrap().iter().unwrap().count(), 1);
        }
    }

    /// A file as the first version left it: no `expiry` table, records without deadlines.
    #[test]
    fn a_file_from_before_deadlines_opens_with_an_exact_empty_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(LOG).unwrap();
                txn.open_table(META).unwrap();
                txn.open_table(SESSIONS).unwrap();
                let mut kv = txn.open_table(KV).unwrap();
                // Version 5, "hi", as the first `Record::encode` wrote it.
                kv.insert((1, &b"old"[..]), &[5, 0, 0, 0, 0, 0, 0, 0, b'h', b'i'][..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let engine = RedbEngine::open(&path).unwrap();
        let g = GroupId(1);
        assert_eq!(engine.get(g, b"old").unwrap(), Some(Record::new(5, "hi")));
        assert_eq!(engine.next_deadline(g).unwrap(), None);
        assert_eq!(
            engine
                .scan(g, b"", None, 10, usize::MAX, Some(u64::MAX))
                .unwrap(),
            vec![(b"old".to_vec(), Record::new(5, "hi"))],
            "a permanent key is live at any time"
        );
        // The old record takes part in the new commands like any other.
        let refresh = Command::Refresh {
            key: b"old".to_vec(),
            expires_at: 100,
            cond: Condition::Version(5),
            now: 50,
        };
        let outcomes = engine
            .write(&[WriteBatch::new(g, true).op(Op::Apply {
                commands: vec![(6, refresh)],
                applied: vec![6],
            })])
            .unwrap();
        assert_eq!(
            outcomes,
            [[Outcome::Refreshed {
                version: 5,
                expires_at: 100
            }]]
        );
        assert_eq!(engine.expired(g, 100, 10).unwrap(), [(b"old".to_vec(), 5)]);
    }

    /// A file from before the change history: no `changes` or `change_start` table.
    #[test]
    fn a_file_from_before_the_change_history_opens_and_records_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(LOG).unwrap();
                txn.open_table(SESSIONS).unwrap();
                txn.open_table(EXPIRY).unwrap();
                let mut kv = txn.open_table(KV).unwrap();
                kv.insert((1, &b"old"[..]), Record::new(5, "hi").encode().as_slice())
                    .unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert((1, MetaKey::Applied.name()), &b"5"[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let engine = RedbEngine::open(&path).unwrap();
        let g = GroupId(1);
        let from_start = ChangePos::end_of(0);
        assert_eq!(engine.history_start(g).unwrap(), None);
        assert_eq!(
            engine.changes(g, from_start, 10, usize::MAX).unwrap(),
            ChangePage {
                start: 1,
                rows: vec![]
            }
        );
        let outcomes = engine
            .write(&[WriteBatch::new(g, true)
                .op(Op::HistoryStart { index: 6 })
                .op(Op::Apply {
                    commands: vec![(6, put("old"))],
                    applied: vec![6],
                })])
            .unwrap();
        assert_eq!(outcomes, [[Outcome::Written { version: 6 }]]);
        let page = engine.changes(g, from_start, 10, usize::MAX).unwrap();
        assert_eq!(page.start, 6);
        assert_eq!(
            page.rows,
            [(
                ChangePos { index: 6, sub: 0 },
                Change {
                    kind: crate::ChangeKind::Put,
                    key: b"old".to_vec(),
                    version: 6,
                    value: b"v".to_vec(),
                }
            )]
        );
    }

    #[test]
    fn a_record_with_a_truncated_deadline_is_corrupt_not_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("node.redb")).unwrap();
        let mut bytes = Record {
            expires_at: Some(9),
            ..Record::new(3, "")
        }
        .encode();
        bytes.truncate(12);
        engine
            .write_txn(Durability::Immediate, |txn| {
                let mut kv = txn.open_table(KV).map_err(backend)?;
                kv.insert((1, &b"k"[..]), bytes.as_slice())
                    .map_err(backend)?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            engine.get(GroupId(1), b"k"),
            Err(StorageError::Corrupt(_))
        ));
        let overwrite = WriteBatch::new(GroupId(1), true).op(Op::Apply {
            commands: vec![(4, put("k"))],
            applied: vec![4],
        });
        assert!(
            matches!(engine.write(&[overwrite]), Err(StorageError::Corrupt(_))),
            "the index entry of a record that does not decode cannot be found"
        );
    }
}
