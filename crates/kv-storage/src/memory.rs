//! The in-memory engine: everything in ordered maps behind one lock. Used for tests and for
//! `--storage memory` nodes, which lose their data on restart.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::RwLock;

use crate::change::{Change, ChangePage, ChangePos, ChangeRef, DEFAULT_START};
use crate::command::{self, KvAccess};
use crate::engine::{Engine, ExportSummary, GroupId, MetaKey, Op, WriteBatch};
use crate::record::Head;
use crate::snapshot::{Frame, SnapshotReader, SnapshotWriter};
use crate::{Outcome, Record, Result, StorageError};

#[derive(Default)]
struct State {
    log: BTreeMap<(GroupId, u64), Vec<u8>>,
    meta: HashMap<(GroupId, MetaKey), Vec<u8>>,
    kv: Kv,
    /// (group, client, seq) -> outcome of that client write.
    sessions: BTreeMap<(GroupId, u64, u64), Outcome>,
    /// (group, index, sub) -> the change history row there.
    changes: BTreeMap<(GroupId, u64, u32), Change>,
    /// Each group's stored history start.
    history_start: HashMap<GroupId, u64>,
}

impl State {
    /// Delete the group's history rows with `index < below`.
    fn forget_changes(&mut self, group: GroupId, below: u64) {
        let doomed: Vec<_> = self
            .changes
            .range((group, 0, 0)..(group, below, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            self.changes.remove(&k);
        }
    }

    /// Raise the group's history start to at least `start`.
    fn raise_start(&mut self, group: GroupId, start: u64) {
        let stored = self.history_start.entry(group).or_insert(DEFAULT_START);
        *stored = (*stored).max(start);
    }
}

/// The key/value records of all groups with their expiry index.
///
/// Invariant: `expiry` holds `(group, deadline, key) -> version` exactly for the records with
/// a deadline. Every change of `records` goes through the methods below, which keep it.
#[derive(Default)]
struct Kv {
    records: BTreeMap<(GroupId, Vec<u8>), Record>,
    expiry: BTreeMap<(GroupId, u64, Vec<u8>), u64>,
}

impl Kv {
    fn put(&mut self, group: GroupId, key: &[u8], record: Record) {
        let new = record
            .expires_at
            .map(|d| ((group, d, key.to_vec()), record.version));
        if let Some(old) = self.records.insert((group, key.to_vec()), record) {
            self.unindex(group, key, &old);
        }
        if let Some((k, version)) = new {
            self.expiry.insert(k, version);
        }
    }

    fn remove(&mut self, group: GroupId, key: &[u8]) {
        if let Some(old) = self.records.remove(&(group, key.to_vec())) {
            self.unindex(group, key, &old);
        }
    }

    fn unindex(&mut self, group: GroupId, key: &[u8], old: &Record) {
        if let Some(d) = old.expires_at {
            self.expiry.remove(&(group, d, key.to_vec()));
        }
    }

    fn clear(&mut self, group: GroupId) {
        self.records.retain(|(g, _), _| *g != group);
        self.expiry.retain(|(g, _, _), _| *g != group);
    }
}

/// Keeps all groups' data in memory; nothing survives the process.
#[derive(Default)]
pub struct MemoryEngine {
    state: RwLock<State>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        self.state
            .read()
            .map_err(|_| StorageError::Backend("memory engine lock poisoned".into()))
    }

    fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>> {
        self.state
            .write()
            .map_err(|_| StorageError::Backend("memory engine lock poisoned".into()))
    }
}

struct GroupKv<'a> {
    kv: &'a mut Kv,
    sessions: &'a mut BTreeMap<(GroupId, u64, u64), Outcome>,
    changes: &'a mut BTreeMap<(GroupId, u64, u32), Change>,
    group: GroupId,
}

impl GroupKv<'_> {
    fn record(&self, key: &[u8]) -> Option<&Record> {
        self.kv.records.get(&(self.group, key.to_vec()))
    }
}

impl KvAccess for GroupKv<'_> {
    fn head_of(&mut self, key: &[u8]) -> Result<Option<Head>> {
        Ok(self.record(key).map(Record::head))
    }
    fn record_of(&mut self, key: &[u8]) -> Result<Option<Record>> {
        Ok(self.record(key).cloned())
    }
    fn put(&mut self, key: &[u8], record: &Record) -> Result<()> {
        self.kv.put(self.group, key, record.clone());
        Ok(())
    }
    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.kv.remove(self.group, key);
        Ok(())
    }
    fn session(&mut self, client: u64, seq: u64) -> Result<Option<Outcome>> {
        Ok(self.sessions.get(&(self.group, client, seq)).cloned())
    }
    fn record_session(&mut self, client: u64, seq: u64, outcome: &Outcome) -> Result<()> {
        self.sessions
            .insert((self.group, client, seq), outcome.clone());
        Ok(())
    }
    fn forget_sessions(&mut self, client: u64, below: u64) -> Result<()> {
        let g = self.group;
        let doomed: Vec<_> = self
            .sessions
            .range((g, client, 0)..(g, client, below))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            self.sessions.remove(&k);
        }
        Ok(())
    }
    fn record_change(&mut self, pos: ChangePos, change: &ChangeRef<'_>) -> Result<()> {
        self.changes
            .insert((self.group, pos.index, pos.sub), change.owned());
        Ok(())
    }
}

impl Engine for MemoryEngine {
    fn write(&self, batches: &[WriteBatch]) -> Result<Vec<Vec<Outcome>>> {
        let mut guard = self.write_lock()?;
        // All or nothing, as the trait requires: no op below can fail once the lock is held
        // (command application fails only on storage errors, which memory does not have).
        let state = &mut *guard;
        let mut all = Vec::with_capacity(batches.len());
        for batch in batches {
            let g = batch.group;
            let mut outcomes = Vec::new();
            for op in &batch.ops {
                match op {
                    Op::AppendLog { entries } => {
                        for (i, e) in entries {
                            state.log.insert((g, *i), e.clone());
                        }
                    }
                    Op::TruncateLog { from } => {
                        let doomed: Vec<_> = state
                            .log
                            .range((g, *from)..=(g, u64::MAX))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in doomed {
                            state.log.remove(&k);
                        }
                    }
                    Op::PurgeLog { through } => {
                        let doomed: Vec<_> = state
                            .log
                            .range((g, 0)..=(g, *through))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in doomed {
                            state.log.remove(&k);
                        }
                    }
                    Op::HistoryStart { index } => {
                        state.forget_changes(g, *index);
                        state.raise_start(g, *index);
                    }
                    Op::SetMeta { key, value } => {
                        state.meta.insert((g, *key), value.clone());
                    }
                    Op::Apply { commands, applied } => {
                        let mut kv = GroupKv {
                            kv: &mut state.kv,
                            sessions: &mut state.sessions,
                            changes: &mut state.changes,
                            group: g,
                        };
                        outcomes.extend(command::apply_all(&mut kv, commands)?);
                        state.meta.insert((g, MetaKey::Applied), applied.clone());
                        state.history_start.entry(g).or_insert(DEFAULT_START);
                    }
                    Op::DropGroup => {
                        state.kv.clear(g);
                        state.log.retain(|(group, _), _| *group != g);
                        state.meta.retain(|(group, _), _| *group != g);
                        state.sessions.retain(|(group, _, _), _| *group != g);
                        state.changes.retain(|(group, _, _), _| *group != g);
                        state.history_start.remove(&g);
                    }
                }
            }
            all.push(outcomes);
        }
        Ok(all)
    }

    fn read_meta(&self, group: GroupId, key: MetaKey) -> Result<Option<Vec<u8>>> {
        Ok(self.read()?.meta.get(&(group, key)).cloned())
    }

    fn log_bounds(&self, group: GroupId) -> Result<Option<(u64, u64)>> {
        let state = self.read()?;
        let mut range = state.log.range((group, 0)..=(group, u64::MAX));
        let first = range.next().map(|(k, _)| k.1);
        let last = range.next_back().map(|(k, _)| k.1);
        Ok(first.map(|f| (f, last.unwrap_or(f))))
    }

    fn read_log(&self, group: GroupId, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .read()?
            .log
            .range((group, from)..(group, to))
            .map(|(k, v)| (k.1, v.clone()))
            .collect())
    }

    fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Record>> {
        Ok(self.read()?.kv.records.get(&(group, key.to_vec())).cloned())
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
        let state = self.read()?;
        let start = (group, prefix.to_vec());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let matching = state
            .kv
            .records
            .range(start..)
            .take_while(|((g, k), _)| *g == group && k.starts_with(prefix))
            .filter(|((_, k), _)| after.is_none_or(|a| k.as_slice() > a))
            .filter(|(_, r)| live_at.is_none_or(|now| r.live_at(now)))
            .take(limit);
        for ((_, k), r) in matching {
            bytes = bytes.saturating_add(k.len() + r.value.len());
            out.push((k.clone(), r.clone()));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn next_deadline(&self, group: GroupId) -> Result<Option<u64>> {
        let state = self.read()?;
        let first = state
            .kv
            .expiry
            .range((group, 0, Vec::new())..)
            .next()
            .filter(|((g, _, _), _)| *g == group)
            .map(|((_, deadline, _), _)| *deadline);
        Ok(first)
    }

    fn expired(&self, group: GroupId, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        let state = self.read()?;
        // Ordered by (group, deadline): the due keys are a prefix of the group's range.
        Ok(state
            .kv
            .expiry
            .range((group, 0, Vec::new())..)
            .take_while(|((g, deadline, _), _)| *g == group && *deadline <= now_ms)
            .take(limit)
            .map(|((_, _, key), version)| (key.clone(), *version))
            .collect())
    }

    fn export_group(
        &self,
        group: GroupId,
        out: &mut dyn Write,
        history_from: u64,
    ) -> Result<ExportSummary> {
        let state = self.read()?;
        let applied = state.meta.get(&(group, MetaKey::Applied)).cloned();
        let mut w = SnapshotWriter::new(out)?;
        for ((_, k), r) in state
            .kv
            .records
            .range((group, Vec::new())..)
            .take_while(|((g, _), _)| *g == group)
        {
            w.record(k, r)?;
        }
        for ((_, client, seq), outcome) in state
            .sessions
            .range((group, 0, 0)..=(group, u64::MAX, u64::MAX))
        {
            w.session(*client, *seq, outcome)?;
        }
        let start = state
            .history_start
            .get(&group)
            .copied()
            .unwrap_or(DEFAULT_START)
            .max(history_from);
        w.history_start(start)?;
        for ((_, index, sub), change) in state
            .changes
            .range((group, start, 0)..=(group, u64::MAX, u32::MAX))
        {
            w.change(
                ChangePos {
                    index: *index,
                    sub: *sub,
                },
                &change.encode()?,
            )?;
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
        // Decode fully before touching the state so a bad stream changes nothing.
        let mut reader = SnapshotReader::new(input, history_start)?;
        let mut records = Vec::new();
        let mut sessions = Vec::new();
        let mut changes = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            match frame {
                Frame::Record(k, r) => records.push((k, r)),
                Frame::Session {
                    client,
                    seq,
                    outcome,
                } => sessions.push(((group, client, seq), outcome)),
                Frame::Change(pos, change) => changes.push(((group, pos.index, pos.sub), change)),
            }
        }
        let mut state = self.write_lock()?;
        state.kv.clear(group);
        state.sessions.retain(|(g, _, _), _| *g != group);
        let n = records.len() as u64;
        for (k, r) in records {
            state.kv.put(group, &k, r);
        }
        state.sessions.extend(sessions);
        state
            .meta
            .insert((group, MetaKey::Applied), applied.to_vec());
        state.changes.retain(|(g, _, _), _| *g != group);
        state.changes.extend(changes);
        state.history_start.insert(group, reader.history_start());
        Ok(n)
    }

    fn changes(
        &self,
        group: GroupId,
        after: ChangePos,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage> {
        use std::ops::Bound;
        let state = self.read()?;
        let start = state
            .history_start
            .get(&group)
            .copied()
            .unwrap_or(DEFAULT_START);
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let range = (
            Bound::Excluded((group, after.index, after.sub)),
            Bound::Included((group, u64::MAX, u32::MAX)),
        );
        for ((_, index, sub), change) in state.changes.range(range).take(limit) {
            bytes = bytes.saturating_add(change.size());
            rows.push((
                ChangePos {
                    index: *index,
                    sub: *sub,
                },
                change.clone(),
            ));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(ChangePage { start, rows })
    }

    fn history_start(&self, group: GroupId) -> Result<Option<u64>> {
        Ok(self.read()?.history_start.get(&group).copied())
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        let mut groups: Vec<GroupId> = self.read()?.meta.keys().map(|(g, _)| *g).collect();
        groups.sort();
        groups.dedup();
        Ok(groups)
    }
}
