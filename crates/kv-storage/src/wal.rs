//! The Raft log of every group of a node, in append-only segment files (a write-ahead log, as
//! etcd's `wal` and TiKV's raft-engine keep it): each [`Wal::write`] is one frame at the end of
//! the active segment, written with one `write` and, when durable, one `fdatasync`, however
//! many groups and entries it carries. The state machine stays in redb; see `redb_engine` for
//! how the two are committed together.
//!
//! **Files.** `dir/<sequence>.wal`, numbered from 1. A frame is `len: u32, crc32: u32,
//! payload` (little-endian; the checksum covers the payload), and a payload is a sequence of
//! [`Record`]s. Every segment starts with a checkpoint frame holding every group's metadata
//! (vote, commit index, purge point), so no older segment is ever needed for metadata. Opening
//! replays the segments in order into an in-memory index (per group: entry index -> where its
//! bytes are), truncates a torn frame at the end of the last segment (a crash in the middle of
//! a write that was never acknowledged), and refuses any other damage as corrupt. It then
//! starts a new segment, so that a segment is never appended to after a restart.
//!
//! **Preallocation.** A new segment is allocated whole (`fallocate`, as etcd's WAL does) and
//! frames are written into it at their offsets: an `fdatasync` then flushes data only, with no
//! file-size change for the file system to journal (here about 90 instead of 135 µs per
//! fsync, and a third less CPU). The segment's data ends where only zeros are left; replay
//! stops there and cuts the last segment back to its data before it is closed. File systems
//! without `fallocate` get segments that grow as they are written.
//!
//! **Space.** A segment that holds no live entry (all purged, truncated or replaced) and is
//! older than every segment that still does is deleted; segments are only ever deleted oldest
//! first, so replaying what is left gives the same log. A group that writes rarely would keep
//! the oldest segment alive forever: when more than [`MAX_SEGMENTS`] exist, the live entries of
//! the oldest are written again at the end (a rewrite) and it is deleted.
//!
//! **Failures.** A failed write or fsync leaves the file in an unknown state (fsyncgate): the
//! log refuses every later write until the node restarts and replays it.
//!
//! Concurrency: one writer at a time (the `Store` writer thread); reads take the index lock
//! only to find where entries are, then read them from the segment files without it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::MetaKey;
use crate::{Result, StorageError};

/// A segment is closed and a new one started once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Past this many segments the oldest is rewritten (see the module docs).
pub(crate) const MAX_SEGMENTS: usize = 8;
/// Frame header: payload length and checksum.
const HEADER: usize = 8;

/// One change to the log, as stored in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// Store `entry` at `index` of `group`, replacing what was there.
    Append {
        group: u64,
        index: u64,
        entry: Cow<'a, [u8]>,
    },
    /// Delete the group's entries with index >= `from`.
    Truncate { group: u64, from: u64 },
    /// Delete the group's entries with index <= `through`.
    Purge { group: u64, through: u64 },
    /// Set one of the metadata values the log keeps ([`Wal::keeps`]).
    Meta {
        group: u64,
        key: MetaKey,
        value: Cow<'a, [u8]>,
    },
    /// Forget everything of the group.
    Drop { group: u64 },
}

const APPEND: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const META: u8 = 4;
const DROP: u8 = 5;

fn meta_code(key: MetaKey) -> Option<u8> {
    match key {
        MetaKey::Vote => Some(0),
        MetaKey::Committed => Some(1),
        MetaKey::Purged => Some(2),
        MetaKey::Applied | MetaKey::Snapshot => None,
    }
}

fn meta_key(code: u8) -> Option<MetaKey> {
    match code {
        0 => Some(MetaKey::Vote),
        1 => Some(MetaKey::Committed),
        2 => Some(MetaKey::Purged),
        _ => None,
    }
}

impl Record<'_> {
    /// Append the record to `out`; returns the offset of an appended entry's bytes in `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Option<usize> {
        match self {
            Record::Append {
                group,
                index,
                entry,
            } => {
                out.push(APPEND);
                out.extend_from_slice(&group.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&(entry.len() as u64).to_le_bytes());
                let at = out.len();
                out.extend_from_slice(entry);
                return Some(at);
            }
            Record::Truncate { group, from } => {
                out.push(TRUNCATE);
                out.extend_from_slice(&group.to_le_bytes());
                out.extend_from_slice(&from.to_le_bytes());
            }
            Record::Purge { group, through } => {
                out.push(PURGE);
                out.extend_from_slice(&group.to_le_bytes());
                out.extend_from_slice(&through.to_le_bytes());
            }
            Record::Meta { group, key, value } => {
                out.push(META);
                out.extend_from_slice(&group.to_le_bytes());
                // `Wal::write` refuses keys the log does not keep before encoding.
                out.push(meta_code(*key).unwrap_or(u8::MAX));
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            Record::Drop { group } => {
                out.push(DROP);
                out.extend_from_slice(&group.to_le_bytes());
            }
        }
        None
    }
}

/// Reads records out of one frame's payload.
struct Decoder<'a> {
    payload: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    fn corrupt(&self, what: &str) -> StorageError {
        StorageError::Corrupt(format!("raft log frame: {what} at byte {}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.payload.len())
            .ok_or_else(|| self.corrupt("truncated record"))?;
        let bytes = &self.payload[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// A length-prefixed byte string: its offset in the payload and its bytes.
    fn bytes(&mut self) -> Result<(usize, &'a [u8])> {
        let len = usize::try_from(self.u64()?).map_err(|_| self.corrupt("length"))?;
        let at = self.at;
        Ok((at, self.take(len)?))
    }

    /// The next record with, for an append, its entry's offset in the payload.
    fn next(&mut self) -> Result<Option<(Record<'a>, usize)>> {
        if self.at == self.payload.len() {
            return Ok(None);
        }
        let tag = self.u8()?;
        let group = self.u64()?;
        let record = match tag {
            APPEND => {
                let index = self.u64()?;
                let (at, entry) = self.bytes()?;
                return Ok(Some((
                    Record::Append {
                        group,
                        index,
                        entry: Cow::Borrowed(entry),
                    },
                    at,
                )));
            }
            TRUNCATE => Record::Truncate {
                group,
                from: self.u64()?,
            },
            PURGE => Record::Purge {
                group,
                through: self.u64()?,
            },
            META => {
                let key = meta_key(self.u8()?).ok_or_else(|| self.corrupt("metadata key"))?;
                let (_, value) = self.bytes()?;
                Record::Meta {
                    group,
                    key,
                    value: Cow::Borrowed(value),
                }
            }
            DROP => Record::Drop { group },
            _ => return Err(self.corrupt("record tag")),
        };
        Ok(Some((record, 0)))
    }
}

/// Where an entry's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    len: usize,
}

#[derive(Debug, Default)]
struct GroupLog {
    entries: BTreeMap<u64, Loc>,
    meta: BTreeMap<MetaKey, Vec<u8>>,
}

impl GroupLog {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.meta.is_empty()
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Entries of the index that live in this segment.
    live: u64,
}

/// The in-memory index: what replaying every segment gives.
#[derive(Debug, Default)]
struct Index {
    groups: BTreeMap<u64, GroupLog>,
    segments: BTreeMap<u64, Segment>,
}

impl Index {
    fn forget(&mut self, loc: Loc) {
        if let Some(s) = self.segments.get_mut(&loc.segment) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Apply `record`; for an append, `loc` is where its entry is.
    fn apply(&mut self, record: &Record<'_>, loc: Option<Loc>) {
        match record {
            Record::Append { group, index, .. } => {
                let Some(loc) = loc else { return };
                let old = self
                    .groups
                    .entry(*group)
                    .or_default()
                    .entries
                    .insert(*index, loc);
                if let Some(s) = self.segments.get_mut(&loc.segment) {
                    s.live += 1;
                }
                if let Some(old) = old {
                    self.forget(old);
                }
            }
            Record::Truncate { group, from } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return;
                };
                let gone = g.entries.split_off(from);
                self.forget_all(gone.into_values());
                self.drop_if_empty(*group);
            }
            Record::Purge { group, through } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return;
                };
                let kept = match through.checked_add(1) {
                    Some(from) => g.entries.split_off(&from),
                    None => BTreeMap::new(),
                };
                let gone = std::mem::replace(&mut g.entries, kept);
                self.forget_all(gone.into_values());
                self.drop_if_empty(*group);
            }
            Record::Meta { group, key, value } => {
                self.groups
                    .entry(*group)
                    .or_default()
                    .meta
                    .insert(*key, value.to_vec());
            }
            Record::Drop { group } => {
                if let Some(g) = self.groups.remove(group) {
                    self.forget_all(g.entries.into_values());
                }
            }
        }
    }

    fn forget_all(&mut self, locs: impl Iterator<Item = Loc>) {
        for loc in locs {
            self.forget(loc);
        }
    }

    fn drop_if_empty(&mut self, group: u64) {
        if self.groups.get(&group).is_some_and(GroupLog::is_empty) {
            self.groups.remove(&group);
        }
    }

    /// Every group's metadata, as the records that set it: a new segment's checkpoint.
    fn checkpoint(&self) -> Vec<Record<'_>> {
        self.groups
            .iter()
            .flat_map(|(group, g)| {
                g.meta.iter().map(|(key, value)| Record::Meta {
                    group: *group,
                    key: *key,
                    value: Cow::Borrowed(value.as_slice()),
                })
            })
            .collect()
    }
}

/// The segment being appended to.
struct Active {
    sequence: u64,
    file: Arc<File>,
    len: u64,
    /// Set by a failed write: nothing more is written.
    failed: Option<String>,
}

/// The Raft logs of every group of one node. See the module docs.
pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    max_segments: usize,
    index: Mutex<Index>,
    active: Mutex<Active>,
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Frame `payload` (header, then payload) into `out`.
fn frame(payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| StorageError::Backend("raft log write over 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

impl Wal {
    /// Whether the log keeps `key` (the rest of a group's metadata is the state machine's).
    pub(crate) fn keeps(key: MetaKey) -> bool {
        meta_code(key).is_some()
    }

    /// Open (or create) the log in `dir`, replaying it. See the module docs.
    pub(crate) fn open(dir: &Path) -> Result<Wal> {
        Self::open_with(dir, SEGMENT_BYTES, MAX_SEGMENTS)
    }

    /// [`Wal::open`] with other segment limits (tests use small ones).
    pub(crate) fn open_with(dir: &Path, segment_bytes: u64, max_segments: usize) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut sequences = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                sequences.push(seq);
            }
        }
        sequences.sort_unstable();
        let mut index = Index::default();
        for (i, seq) in sequences.iter().enumerate() {
            let last = i + 1 == sequences.len();
            replay(dir, *seq, last, &mut index)?;
        }
        // The last segment is about to be closed: what the previous run wrote to it without an
        // fsync (and this replay acted on) must be on disk before a later segment exists.
        if let Some(last) = sequences.last().and_then(|s| index.segments.get(s)) {
            last.file.sync_all()?;
        }
        let next = sequences.last().map_or(1, |s| s + 1);
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            max_segments: max_segments.max(2),
            index: Mutex::new(index),
            active: Mutex::new(Active {
                sequence: 0,
                file: Arc::new(File::open(dir)?),
                len: 0,
                failed: None,
            }),
        };
        {
            let mut active = wal.active();
            wal.start_segment(&mut active, next)?;
            wal.collect(&mut active)?;
        }
        Ok(wal)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Every update of the index is applied whole before the lock is released.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn active(&self) -> MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start segment `sequence`, preallocated (see the module docs), with a checkpoint of every
    /// group's metadata, durably.
    fn start_segment(&self, active: &mut Active, sequence: u64) -> Result<()> {
        let path = segment_path(&self.dir, sequence);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        preallocate(&file, self.segment_bytes);
        let mut payload = Vec::new();
        for record in self.index().checkpoint() {
            record.encode(&mut payload);
        }
        let mut bytes = Vec::with_capacity(payload.len() + HEADER);
        frame(&payload, &mut bytes)?;
        file.write_all_at(&bytes, 0)?;
        // Also makes the allocation and the file's size durable: later fsyncs flush data only.
        file.sync_data()?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.index().segments.insert(
            sequence,
            Segment {
                file: file.clone(),
                live: 0,
            },
        );
        *active = Active {
            sequence,
            file,
            len: bytes.len() as u64,
            failed: None,
        };
        Ok(())
    }

    /// Write `records` as one frame (fdatasync'd if `durable`) and apply them to the index.
    /// After a failure every later write fails too (see the module docs).
    /// An empty, non-durable write only checks that the log still takes writes.
    pub(crate) fn write(&self, records: &[Record<'_>], durable: bool) -> Result<()> {
        if records
            .iter()
            .any(|r| matches!(r, Record::Meta { key, .. } if !Wal::keeps(*key)))
        {
            return Err(StorageError::Backend(
                "the raft log keeps only vote, commit index and purge point".into(),
            ));
        }
        let mut active = self.active();
        if let Some(e) = &active.failed {
            return Err(StorageError::Backend(format!(
                "the raft log failed earlier and takes no more writes until restarted: {e}"
            )));
        }
        if records.is_empty() && !durable {
            return Ok(());
        }
        match self.write_locked(&mut active, records, durable) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed; refusing further writes");
                active.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn write_locked(
        &self,
        active: &mut Active,
        records: &[Record<'_>],
        durable: bool,
    ) -> Result<()> {
        if !records.is_empty() {
            self.append(active, records, durable)?;
        } else if durable {
            active.file.sync_data()?;
        }
        self.collect(active)
    }

    /// Append `records` as one frame at the end of the active segment (starting the next one
    /// first if it is full), fdatasync'd if `durable`, and apply them to the index.
    fn append(&self, active: &mut Active, records: &[Record<'_>], durable: bool) -> Result<()> {
        if active.len >= self.segment_bytes {
            // The closed segment must be whole on disk before a later one exists.
            active.file.sync_data()?;
            let next = active.sequence + 1;
            self.start_segment(active, next)?;
        }
        let mut payload = Vec::new();
        let offsets: Vec<Option<usize>> = records.iter().map(|r| r.encode(&mut payload)).collect();
        let mut bytes = Vec::with_capacity(payload.len() + HEADER);
        frame(&payload, &mut bytes)?;
        active.file.write_all_at(&bytes, active.len)?;
        let base = active.len + HEADER as u64;
        active.len += bytes.len() as u64;
        if durable {
            active.file.sync_data()?;
        }
        let mut index = self.index();
        for (record, offset) in records.iter().zip(offsets) {
            let loc = match (record, offset) {
                (Record::Append { entry, .. }, Some(at)) => Some(Loc {
                    segment: active.sequence,
                    offset: base + at as u64,
                    len: entry.len(),
                }),
                _ => None,
            };
            index.apply(record, loc);
        }
        Ok(())
    }

    /// Delete the oldest segments while they hold no live entry, rewriting the oldest one's
    /// entries first when there are too many segments.
    fn collect(&self, active: &mut Active) -> Result<()> {
        let oldest = {
            let index = self.index();
            if index.segments.len() <= self.max_segments {
                None
            } else {
                index
                    .segments
                    .iter()
                    .next()
                    .filter(|(seq, s)| **seq != active.sequence && s.live > 0)
                    .map(|(seq, _)| *seq)
            }
        };
        if let Some(oldest) = oldest {
            self.rewrite(active, oldest)?;
        }
        let doomed: Vec<u64> = {
            let index = self.index();
            index
                .segments
                .iter()
                .take_while(|(seq, s)| **seq != active.sequence && s.live == 0)
                .map(|(seq, _)| *seq)
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        // The purges that emptied them must be on disk before the entries they removed go.
        active.file.sync_data()?;
        for seq in &doomed {
            match std::fs::remove_file(segment_path(&self.dir, *seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            // One at a time, oldest first: a crash never leaves an older segment behind a
            // deleted newer one (its entries, replayed without the newer records that ended
            // them, would come back).
            sync_dir(&self.dir)?;
            self.index().segments.remove(seq);
        }
        tracing::debug!(segments = ?doomed, "raft log segments deleted");
        Ok(())
    }

    /// Append the live entries of segment `seq` again at the end, durably.
    fn rewrite(&self, active: &mut Active, seq: u64) -> Result<()> {
        let (file, live) = {
            let index = self.index();
            let Some(segment) = index.segments.get(&seq) else {
                return Ok(());
            };
            let live: Vec<(u64, u64, Loc)> = index
                .groups
                .iter()
                .flat_map(|(group, g)| {
                    g.entries
                        .iter()
                        .filter(|(_, loc)| loc.segment == seq)
                        .map(|(i, loc)| (*group, *i, *loc))
                })
                .collect();
            (segment.file.clone(), live)
        };
        let mut records = Vec::with_capacity(live.len());
        for (group, index, loc) in live {
            records.push(Record::Append {
                group,
                index,
                entry: Cow::Owned(read_at(&file, loc)?),
            });
        }
        tracing::debug!(
            segment = seq,
            entries = records.len(),
            "raft log segment rewritten"
        );
        // Not through `write_locked`: that would collect again. Durable: the segment the
        // entries leave is deleted next.
        self.append(active, &records, true)
    }

    /// A metadata value the log keeps.
    pub(crate) fn meta(&self, group: u64, key: MetaKey) -> Option<Vec<u8>> {
        self.index()
            .groups
            .get(&group)
            .and_then(|g| g.meta.get(&key).cloned())
    }

    /// First and last index of the group's entries.
    pub(crate) fn bounds(&self, group: u64) -> Option<(u64, u64)> {
        let index = self.index();
        let entries = &index.groups.get(&group)?.entries;
        Some((*entries.keys().next()?, *entries.keys().next_back()?))
    }

    /// The group's entries with `from <= index < to`, ascending.
    pub(crate) fn read(&self, group: u64, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let wanted: Vec<(u64, Loc, Arc<File>)> = {
            let index = self.index();
            let Some(g) = index.groups.get(&group) else {
                return Ok(Vec::new());
            };
            g.entries
                .range(from..to)
                .filter_map(|(i, loc)| {
                    let file = index.segments.get(&loc.segment)?.file.clone();
                    Some((*i, *loc, file))
                })
                .collect()
        };
        wanted
            .into_iter()
            .map(|(i, loc, file)| Ok((i, read_at(&file, loc)?)))
            .collect()
    }

    /// Groups with metadata in the log (entries alone do not make a hosted group).
    pub(crate) fn groups(&self) -> Vec<u64> {
        self.index()
            .groups
            .iter()
            .filter(|(_, g)| !g.meta.is_empty())
            .map(|(group, _)| *group)
            .collect()
    }

    /// How many segment files there are (for tests).
    #[cfg(test)]
    fn segments(&self) -> usize {
        self.index().segments.len()
    }
}

/// Allocate the first `len` bytes of a new segment (its size becomes `len`, reading as zeros).
/// A file system that cannot is left to grow the file as frames are written.
fn preallocate(file: &File, len: u64) {
    if let Err(e) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        tracing::debug!(error = %e, "raft log: segment not preallocated");
    }
}

fn read_at(file: &File, loc: Loc) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.len];
    file.read_exact_at(&mut buf, loc.offset)?;
    Ok(buf)
}

/// Replay segment `seq` into `index`. A torn frame at the end of the `last` segment is cut off;
/// anything else that does not check out is corruption.
fn replay(dir: &Path, seq: u64, last: bool, index: &mut Index) -> Result<()> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes)?;
    index.segments.insert(
        seq,
        Segment {
            file: Arc::new(file),
            live: 0,
        },
    );
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.iter().all(|b| *b == 0) {
            // The unwritten rest of a preallocated segment: the data ends here. The last
            // segment is about to be closed, so it gives that space back.
            if last {
                if let Some(s) = index.segments.get(&seq) {
                    s.file.set_len(at as u64)?;
                    s.file.sync_all()?;
                }
            }
            return Ok(());
        }
        let frame = rest.get(..HEADER).and_then(|h| {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let payload = rest.get(HEADER..HEADER.checked_add(len)?)?;
            Some((len, crc, payload))
        });
        let payload = match frame {
            Some((_, crc, payload)) if crc32fast::hash(payload) == crc => payload,
            frame => {
                // A write cut short by a crash: the last frame is incomplete, or complete but
                // with the wrong checksum (some of its sectors never reached the disk), with
                // nothing but zeros (unwritten, preallocated space) after it. Anything else
                // (damage followed by more data, or in a closed segment) may have been
                // acknowledged: refuse it rather than lose it.
                let torn = match frame {
                    None => true,
                    Some((len, _, _)) => rest
                        .get(HEADER + len..)
                        .is_none_or(|after| after.iter().all(|b| *b == 0)),
                };
                if !last || !torn {
                    return Err(StorageError::Corrupt(format!(
                        "{}: damaged frame at byte {at}{}",
                        path.display(),
                        if last {
                            " with data after it"
                        } else {
                            " in a closed segment"
                        }
                    )));
                }
                tracing::warn!(segment = %path.display(), at, dropped = rest.len(), "raft log: cutting a torn write off the end");
                if let Some(s) = index.segments.get(&seq) {
                    s.file.set_len(at as u64)?;
                    s.file.sync_all()?;
                }
                return Ok(());
            }
        };
        let len = payload.len();
        let base = (at + HEADER) as u64;
        let mut decoder = Decoder { payload, at: 0 };
        while let Some((record, offset)) = decoder.next()? {
            let loc = match &record {
                Record::Append { entry, .. } => Some(Loc {
                    segment: seq,
                    offset: base + offset as u64,
                    len: entry.len(),
                }),
                _ => None,
            };
            index.apply(&record, loc);
        }
        at += HEADER + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn append(group: u64, index: u64, entry: &str) -> Record<'_> {
        Record::Append {
            group,
            index,
            entry: Cow::Borrowed(entry.as_bytes()),
        }
    }

    fn meta(group: u64, key: MetaKey, value: &[u8]) -> Record<'_> {
        Record::Meta {
            group,
            key,
            value: Cow::Borrowed(value),
        }
    }

    fn entries(wal: &Wal, group: u64) -> Vec<(u64, String)> {
        wal.read(group, 0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, e)| (i, String::from_utf8(e).unwrap()))
            .collect()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.pop().unwrap()
    }

    #[test]
    fn a_reopened_log_replays_appends_truncations_purges_metadata_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.write(
                &[
                    append(1, 1, "a"),
                    append(1, 2, "b"),
                    append(1, 3, "c"),
                    append(2, 1, "x"),
                ],
                true,
            )
            .unwrap();
            wal.write(
                &[
                    Record::Truncate { group: 1, from: 3 },
                    append(1, 3, "C"),
                    Record::Purge {
                        group: 1,
                        through: 1,
                    },
                    meta(1, MetaKey::Vote, b"v1"),
                    meta(3, MetaKey::Committed, b"c3"),
                    Record::Drop { group: 2 },
                ],
                true,
            )
            .unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(entries(&wal, 1), [(2, "b".into()), (3, "C".into())]);
        assert_eq!(wal.bounds(1), Some((2, 3)));
        assert_eq!(wal.bounds(2), None);
        assert_eq!(wal.meta(1, MetaKey::Vote), Some(b"v1".to_vec()));
        assert_eq!(wal.meta(3, MetaKey::Committed), Some(b"c3".to_vec()));
        assert_eq!(wal.groups(), [1, 3]);
        assert_eq!(wal.read(1, 3, 3).unwrap(), vec![]);
    }

    /// Where the data of a segment file ends: after its last byte that is not zero.
    fn data_end(bytes: &[u8]) -> usize {
        bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_off_and_the_log_before_it_kept() {
        // The last frame loses its last 3 bytes, as a crash in the middle of its write would:
        // in a preallocated segment they read as zeros, in a growing one the file is short.
        for preallocated in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            {
                let wal = Wal::open(dir.path()).unwrap();
                wal.write(&[append(1, 1, "kept")], true).unwrap();
                wal.write(&[append(1, 2, "torn")], true).unwrap();
            }
            let path = only_segment(dir.path());
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let end = data_end(&std::fs::read(&path).unwrap()) as u64;
            if preallocated {
                file.write_all_at(&[0; 3], end - 3).unwrap();
            } else {
                file.set_len(end - 3).unwrap();
            }
            drop(file);
            let wal = Wal::open(dir.path()).unwrap();
            assert_eq!(entries(&wal, 1), [(1, "kept".into())], "{preallocated}");
            // It takes writes again, and they survive the next restart.
            wal.write(&[append(1, 2, "again")], true).unwrap();
            drop(wal);
            let wal = Wal::open(dir.path()).unwrap();
            assert_eq!(entries(&wal, 1), [(1, "kept".into()), (2, "again".into())]);
        }
    }

    #[test]
    fn segments_are_preallocated_and_cut_back_to_their_data_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let first = segment_path(dir.path(), 1);
        {
            let wal = Wal::open_with(dir.path(), 1 << 20, 8).unwrap();
            wal.write(&[append(1, 1, "one"), meta(1, MetaKey::Vote, b"v")], true)
                .unwrap();
            // Allocated whole up front: its size does not change as frames are written.
            assert_eq!(std::fs::metadata(&first).unwrap().len(), 1 << 20);
            wal.write(&[append(1, 2, "two")], true).unwrap();
            assert_eq!(std::fs::metadata(&first).unwrap().len(), 1 << 20);
        }
        let wal = Wal::open_with(dir.path(), 1 << 20, 8).unwrap();
        assert_eq!(entries(&wal, 1), [(1, "one".into()), (2, "two".into())]);
        assert_eq!(wal.meta(1, MetaKey::Vote), Some(b"v".to_vec()));
        // Closed by the restart: only its data is left, and it ends in a frame, not in zeros.
        let closed = std::fs::read(&first).unwrap();
        assert!(closed.len() < 200, "{} bytes", closed.len());
        assert_eq!(data_end(&closed), closed.len());
        // The new segment is preallocated in turn, and the log goes on in it.
        let second = segment_path(dir.path(), 2);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 1 << 20);
        wal.write(&[append(1, 3, "three")], true).unwrap();
        drop(wal);
        let wal = Wal::open_with(dir.path(), 1 << 20, 8).unwrap();
        assert_eq!(entries(&wal, 1).len(), 3);
    }

    #[test]
    fn a_damaged_closed_segment_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.write(&[append(1, 1, "entry one")], true).unwrap();
        }
        // A restart starts another segment: the first is closed.
        drop(Wal::open(dir.path()).unwrap());
        // Flip a byte of its entry.
        let first = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        match Wal::open(dir.path()) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("closed segment"), "{msg}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a damaged closed segment was accepted"),
        }
    }

    #[test]
    fn damage_in_the_last_segment_with_frames_after_it_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.write(&[append(1, 1, "damaged")], true).unwrap();
            wal.write(&[append(1, 2, "acknowledged after it")], true)
                .unwrap();
        }
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(7).position(|w| w == b"damaged").unwrap();
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        match Wal::open(dir.path()) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("data after it"), "{msg}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("damage before an acknowledged frame was cut off silently"),
        }
    }

    #[test]
    fn emptied_segments_are_deleted_and_a_quiet_group_is_rewritten_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let big = "e".repeat(1000);
        {
            let wal = Wal::open_with(dir.path(), 4096, 3).unwrap();
            // A quiet group writes once, early, and never again.
            wal.write(
                &[append(9, 1, "quiet"), meta(9, MetaKey::Vote, b"v9")],
                true,
            )
            .unwrap();
            // A busy group fills many segments and purges behind itself.
            for i in 1..=200u64 {
                wal.write(&[append(1, i, &big)], false).unwrap();
                if i % 10 == 0 {
                    wal.write(
                        &[Record::Purge {
                            group: 1,
                            through: i - 5,
                        }],
                        false,
                    )
                    .unwrap();
                }
                assert!(wal.segments() <= 4, "{} segments at {i}", wal.segments());
            }
            wal.write(&[], true).unwrap();
        }
        let wal = Wal::open_with(dir.path(), 4096, 3).unwrap();
        assert_eq!(entries(&wal, 9), [(1, "quiet".into())]);
        assert_eq!(wal.meta(9, MetaKey::Vote), Some(b"v9".to_vec()));
        assert_eq!(wal.bounds(1), Some((196, 200)));
        assert_eq!(entries(&wal, 1).len(), 5);
    }

    #[test]
    fn metadata_the_log_does_not_keep_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        assert!(wal.write(&[meta(1, MetaKey::Applied, &[1])], true).is_err());
        // The refusal is about that write only: the log still takes others.
        wal.write(&[append(1, 1, "e")], true).unwrap();
    }
}
