//! A group's Raft log and vote in kv-storage.
//!
//! Appends are queued to the store's writer thread (shared by every group of the node, so
//! concurrent appends share one fsync) and acknowledged to openraft through `LogFlushed` once
//! durable. Until then they sit in `pending`, because openraft requires appended entries to be
//! readable as soon as `append` returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kv_storage::{GroupId, MetaKey, Op, Store, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};

use crate::encoding::{decode, encode, sto_err};
use crate::entry_cache::EntryCache;
use crate::types::{Entry, LogId, StorageIoError, TypeConfig};
use crate::NodeId;

/// Appended entries not yet known durable: index -> (append sequence, encoded entry).
/// The sequence lets a flush acknowledgement remove only the bytes it wrote, not a newer
/// entry that replaced them after a truncation.
type Pending = BTreeMap<u64, (u64, Vec<u8>)>;

/// The index of the last entry of a group's log, flushed or not, kept by its [`LogStore`] for
/// the group's read path: on a leader, nothing beyond it can be committed.
#[derive(Clone, Default)]
pub(crate) struct LastIndex(Arc<AtomicU64>);

impl LastIndex {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, index: u64) {
        self.0.store(index, Ordering::SeqCst);
    }
}

/// The log of one group. Clones share state; the clone handed to openraft as reader reads
/// the same pending entries.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    store: Store,
    pending: Arc<Mutex<Pending>>,
    /// The recent tail of the log, decoded (see `entry_cache`).
    cache: Arc<Mutex<EntryCache>>,
    seq: Arc<AtomicU64>,
    last: LastIndex,
    /// How many entries of change history a purge leaves behind the purged log.
    history_kept: u64,
}

impl LogStore {
    /// The log of `group`; a purge trims the change history with it (see
    /// [`LogStore::keeping_history`]).
    pub fn new(group: GroupId, store: Store) -> Self {
        LogStore {
            group,
            store,
            pending: Arc::default(),
            cache: Arc::default(),
            seq: Arc::default(),
            last: LastIndex::default(),
            history_kept: 0,
        }
    }

    /// Keep the change history of the last `entries` purged entries: a purge through `i`
    /// trims the history to start at `i + 1 - entries`. The history then outlives a purge
    /// that only makes room for a snapshot (such as `Group::compact_log` before a replica is
    /// added), and a watch cursor from just before it stays valid.
    pub fn keeping_history(mut self, entries: u64) -> Self {
        self.history_kept = entries;
        self
    }

    /// The index of this log's last entry, kept current by appends and truncations.
    pub(crate) fn last_index(&self) -> LastIndex {
        self.last.clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        // Every change is a whole split or insert: a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removals), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: MetaKey,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageIoError> {
        let group = self.group;
        let bytes = self
            .store
            .read(move |e| e.read_meta(group, key))
            .await
            .map_err(|e| sto_err(subject.clone(), ErrorVerb::Read, e))?;
        bytes
            .map(|b| decode::<T>(&b))
            .transpose()
            .map_err(|e| sto_err(subject, ErrorVerb::Read, e))
    }

    async fn write(
        &self,
        batch: WriteBatch,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageIoError> {
        self.store
            .write(batch)
            .await
            .map(|_| ())
            .map_err(|e| sto_err(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageIoError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(cached) = self.cache().get(from, to, usize::MAX) {
            return Ok(cached);
        }
        let stored = self.read_range(from, to).await?;
        self.decode_entries(stored, usize::MAX)
    }

    /// At most `APPEND_BATCH_BYTES` of entries (at least one) from `[start, end)`: openraft
    /// sends what this returns as one AppendEntries and gives it only a heartbeat interval to
    /// be answered, so a batch must stay small in bytes, not just in entries (a batch that
    /// times out is sent again in full).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageIoError> {
        if let Some(cached) = self.cache().get(start, end, APPEND_BATCH_BYTES) {
            return Ok(cached);
        }
        let stored = self.read_range(start, end).await?;
        self.decode_entries(stored, APPEND_BATCH_BYTES)
    }
}

/// Byte budget of one replication batch (see `limited_get_log_entries`).
pub const APPEND_BATCH_BYTES: usize = 256 * 1024;

impl LogStore {
    /// Encoded entries `[from, to)`, unflushed ones included.
    async fn read_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageIoError> {
        // Take pending entries first: one flushed between the two reads is then found on disk.
        let pending: Vec<(u64, Vec<u8>)> = self
            .pending()
            .range(from..to)
            .map(|(i, (_, e))| (*i, e.clone()))
            .collect();
        let group = self.group;
        let mut stored = self
            .store
            .read(move |e| e.read_log(group, from, to))
            .await
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        if !pending.is_empty() {
            let mut merged: BTreeMap<u64, Vec<u8>> = stored.into_iter().collect();
            merged.extend(pending);
            stored = merged.into_iter().collect();
        }
        Ok(stored)
    }

    /// Decode entries in order, stopping before the one that would take the total encoded
    /// size over `budget` (the first is always taken).
    #[allow(
        clippy::result_large_err,
        reason = "openraft's StorageError, which every RaftLogStorage method returns by value"
    )]
    fn decode_entries(
        &self,
        stored: Vec<(u64, Vec<u8>)>,
        budget: usize,
    ) -> Result<Vec<Entry>, StorageIoError> {
        let mut entries = Vec::with_capacity(stored.len());
        let mut bytes_taken = 0usize;
        for (index, bytes) in stored {
            if !entries.is_empty() && bytes_taken.saturating_add(bytes.len()) > budget {
                break;
            }
            bytes_taken = bytes_taken.saturating_add(bytes.len());
            let entry: Entry = decode(&bytes).map_err(|e| {
                sto_err(
                    ErrorSubject::LogIndex(index),
                    ErrorVerb::Read,
                    format!("undecodable log entry: {e}"),
                )
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageIoError> {
        let last_purged: Option<LogId> =
            self.read_meta(MetaKey::Purged, ErrorSubject::Logs).await?;
        let last_pending = self.pending().last_key_value().map(|(_, (_, e))| e.clone());
        let group = self.group;
        let last_stored = self
            .store
            .read(move |e| match e.log_bounds(group)? {
                Some((_, last)) => Ok(e.read_log(group, last, last + 1)?.pop()),
                None => Ok(None),
            })
            .await
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|(_, b)| b);
        let mut last_log_id = last_purged;
        for bytes in [last_stored, last_pending].into_iter().flatten() {
            let entry: Entry =
                decode(&bytes).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if Some(entry.log_id) > last_log_id {
                last_log_id = Some(entry.log_id);
            }
        }
        self.last.set(last_log_id.map_or(0, |l| l.index));
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageIoError> {
        let value = encode(vote).map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let batch = WriteBatch::new(self.group, true).op(Op::SetMeta {
            key: MetaKey::Vote,
            value,
        });
        self.write(batch, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageIoError> {
        self.read_meta(MetaKey::Vote, ErrorSubject::Vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageIoError> {
        // Not fsynced: a lost value only means re-learning the commit index from the leader.
        // Queued behind earlier writes, so there is nothing to wait for.
        let value =
            encode(&committed).map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let batch = WriteBatch::new(self.group, false).op(Op::SetMeta {
            key: MetaKey::Committed,
            value,
        });
        let group = self.group;
        self.store.submit(
            batch,
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!(%group, error = %e, "saving the commit index failed");
                }
            }),
        );
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageIoError> {
        // `save_committed` does not wait for its write, so a read right after it could miss it
        // (openraft's suite then skips its re-apply test). Batches commit in submission order:
        // once this empty one is committed, every earlier `save_committed` is visible.
        self.write(WriteBatch::new(self.group, false), ErrorSubject::Store)
            .await?;
        Ok(self
            .read_meta::<Option<LogId>>(MetaKey::Committed, ErrorSubject::Store)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageIoError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut encoded = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let bytes = encode(&entry)
                .map_err(|e| sto_err(ErrorSubject::LogIndex(index), ErrorVerb::Write, e))?;
            decoded.push((entry, bytes.len()));
            encoded.push((index, bytes));
        }
        self.cache().appended(decoded);
        let indexes: Vec<u64> = encoded.iter().map(|(i, _)| *i).collect();
        // Before the write is queued: the entries cannot be flushed, so not committed, first.
        if let Some(&last) = indexes.last() {
            self.last.set(last);
        }
        {
            let mut pending = self.pending();
            for (i, b) in &encoded {
                pending.insert(*i, (seq, b.clone()));
            }
        }
        let pending = self.pending.clone();
        let batch = WriteBatch::new(self.group, true).op(Op::AppendLog { entries: encoded });
        self.store.submit(
            batch,
            Box::new(move |result| {
                if result.is_ok() {
                    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                    for i in indexes {
                        if pending.get(&i).is_some_and(|(s, _)| *s == seq) {
                            pending.remove(&i);
                        }
                    }
                }
                callback.log_io_completed(result.map(|_| ()).map_err(std::io::Error::other));
            }),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageIoError> {
        self.cache().truncate(log_id.index);
        self.last.set(log_id.index.saturating_sub(1));
        self.pending().retain(|i, _| *i < log_id.index);
        let batch = WriteBatch::new(self.group, true).op(Op::TruncateLog { from: log_id.index });
        self.write(batch, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageIoError> {
        self.cache().purge(log_id.index);
        self.pending().retain(|i, _| *i > log_id.index);
        let value =
            encode(&log_id).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // The purged marker and the deletion commit together, so a crash never leaves a hole
        // between the marker and the first stored entry.
        let batch = WriteBatch::new(self.group, false)
            .op(Op::SetMeta {
                key: MetaKey::Purged,
                value,
            })
            .op(Op::PurgeLog {
                through: log_id.index,
            })
            .op(Op::HistoryStart {
                index: (log_id.index + 1).saturating_sub(self.history_kept).max(1),
            });
        self.write(batch, ErrorSubject::Logs).await
    }
}
