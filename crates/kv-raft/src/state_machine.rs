//! A group's state machine: the key/value data in kv-storage, applied atomically with the
//! "last applied" marker, and snapshots as files streamed from and into the store.
//!
//! Snapshots live in `{snapshot_dir}/{group}/{snapshot_id}.snap`; the metadata of the current
//! one is stored under `MetaKey::Snapshot`. Only the current snapshot's file is kept.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use kv_storage::{Command, GroupId, MetaKey, Op, Store, WriteBatch};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};

use crate::encoding::{decode, encode, sto_err, Applied};
use crate::types::{
    Entry, LogId, Membership, Request, Response, SnapshotMeta, StorageIoError, TypeConfig,
};

/// The state machine of one group. Clones share the store; openraft serializes calls.
#[derive(Clone)]
pub struct StateMachine {
    group: GroupId,
    store: Store,
    dir: PathBuf,
    membership: Membership,
    /// The file `begin_receiving_snapshot` handed out, renamed into place on install.
    incoming: std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>,
    /// Whether any key of the group may have a deadline (see [`crate::Group::has_deadlines`]):
    /// set when one is applied or installed, never cleared while the group runs.
    deadlines: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests waiting for a key to change (see [`crate::Group::wait_on`]).
    waiters: std::sync::Arc<crate::key_waiters::KeyWaiters>,
    /// The log index the stored state includes, sent after every apply and snapshot install
    /// (see [`crate::Group::applied_index`]).
    applied_index: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Entries of change history a snapshot carries behind its last index (see
    /// [`StateMachine::keeping_history`]).
    history_kept: u64,
}

impl StateMachine {
    /// Opens the state machine of `group`, with its snapshots under `snapshot_root`.
    pub async fn open(
        group: GroupId,
        store: Store,
        snapshot_root: &Path,
    ) -> Result<Self, kv_storage::StorageError> {
        let dir = snapshot_root.join(group.to_string());
        tokio::fs::create_dir_all(&dir).await?;
        // Leftovers of snapshots being built or received when the node stopped.
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        let has_deadlines = store.read(move |e| e.next_deadline(group)).await?.is_some();
        let mut sm = StateMachine {
            group,
            store,
            dir,
            membership: Membership::default(),
            incoming: Default::default(),
            deadlines: std::sync::Arc::new(has_deadlines.into()),
            waiters: Default::default(),
            applied_index: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            history_kept: 0,
        };
        // An unreadable marker must stop the group: defaulting would later persist an empty
        // membership over the real one.
        let applied = sm
            .applied()
            .await
            .map_err(|e| kv_storage::StorageError::Backend(e.to_string()))?;
        sm.membership = applied.membership;
        if let Some(last) = applied.last_applied {
            // Applied by a version from before the change history: those entries left no
            // rows, so the history starts after them. Committed before Raft applies anything.
            if sm
                .store
                .read(move |e| e.history_start(group))
                .await?
                .is_none()
            {
                let index = last.index + 1;
                tracing::info!(%group, index, "change history starts after data applied before it");
                let batch = WriteBatch::new(group, true).op(Op::HistoryStart { index });
                sm.store.write(batch).await?;
            }
            sm.applied_index.send_replace(last.index);
        }
        Ok(sm)
    }

    /// Let snapshots carry the change history of the last `entries` entries they include, so a
    /// replica that joins by snapshot can serve watch cursors from just before it (as the
    /// log store keeps that much history behind a purge, `LogStore::keeping_history`). Without
    /// it, snapshots carry no rows. The history costs bytes on every move, hence the bound.
    pub fn keeping_history(mut self, entries: u64) -> Self {
        self.history_kept = entries;
        self
    }

    /// The waiters [`crate::Group::wait_on`] registers with.
    pub(crate) fn waiters(&self) -> std::sync::Arc<crate::key_waiters::KeyWaiters> {
        self.waiters.clone()
    }

    /// What [`crate::Group::applied_index`] hands out.
    pub(crate) fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// The flag [`crate::Group::has_deadlines`] reads.
    pub(crate) fn deadlines(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.deadlines.clone()
    }

    async fn applied(&self) -> Result<Applied, StorageIoError> {
        let group = self.group;
        let bytes = self
            .store
            .read(move |e| e.read_meta(group, MetaKey::Applied))
            .await
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        match bytes {
            None => Ok(Applied::default()),
            Some(b) => {
                decode(&b).map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
            }
        }
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.snap"))
    }

    /// Record `meta` as the current snapshot and delete every other snapshot file.
    async fn set_current(&self, meta: &SnapshotMeta) -> Result<(), StorageIoError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let value = encode(meta).map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
        let batch = WriteBatch::new(self.group, true).op(Op::SetMeta {
            key: MetaKey::Snapshot,
            value,
        });
        self.store
            .write(batch)
            .await
            .map_err(|e| sto_err(subject, ErrorVerb::Write, e))?;
        let keep = format!("{}.snap", meta.snapshot_id);
        if let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".snap") && name != keep {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        Ok(())
    }
}

/// Whether the open `file` is the file at `path`. Where that cannot be told, it is not.
fn is_same_file(file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(named) = std::fs::metadata(path) else {
            return Ok(false);
        };
        let open = file.metadata()?;
        Ok(open.dev() == named.dev() && open.ino() == named.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(false)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageIoError> {
        let group = self.group;
        let tmp = self
            .dir
            .join(format!("building-{}.tmp", rand::random::<u64>()));
        let tmp_path = tmp.clone();
        // The export reads at least this far (applies do not stop for it), so the rows
        // carried are at least the last `history_kept` entries of the snapshot.
        let history_from = (*self.applied_index.borrow() + 1).saturating_sub(self.history_kept);
        let summary = self
            .store
            .read(move |engine| {
                let file = std::fs::File::create(&tmp_path)?;
                let mut out = BufWriter::new(file);
                let summary = engine.export_group(group, &mut out, history_from)?;
                let file = out
                    .into_inner()
                    .map_err(|e| kv_storage::StorageError::Backend(e.to_string()))?;
                file.sync_all()?;
                Ok(summary)
            })
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let applied: Applied = match summary.applied {
            Some(b) => {
                decode(&b).map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
            }
            None => Applied::default(),
        };
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("0-0-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let path = self.snapshot_path(&meta.snapshot_id);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        self.set_current(&meta).await?;
        tracing::info!(%group, id = %meta.snapshot_id, keys = summary.keys, bytes = summary.bytes, "built snapshot");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// Whether applying `cmd` may leave a key with a deadline.
fn gives_deadline(cmd: &Command) -> bool {
    match cmd {
        Command::TimedPut { expires_at, .. } => expires_at.is_some(),
        Command::Refresh { .. } => true,
        Command::Once { command, .. } => gives_deadline(command),
        _ => false,
    }
}

/// Where an applied entry's answer comes from, among the outcomes of its commands.
enum Slot {
    None,
    One(usize),
    /// The first outcome and how many.
    Batch(usize, usize),
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageIoError> {
        let applied = self.applied().await?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageIoError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // One response slot per entry: the range of its commands' outcomes, and whether it was
        // a batch (answered with all of them) or a single command.
        let mut slots: Vec<Slot> = Vec::new();
        let mut commands: Vec<(u64, Command)> = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Blank | EntryPayload::Normal(Request::Noop) => slots.push(Slot::None),
                EntryPayload::Normal(Request::Kv(cmd)) => {
                    slots.push(Slot::One(commands.len()));
                    commands.push((index, cmd));
                }
                // Every command of a batch is applied at the entry's index, in order (a batch
                // holds each key at most once, so versions stay unique per key).
                EntryPayload::Normal(Request::Batch(cmds)) => {
                    slots.push(Slot::Batch(commands.len(), cmds.len()));
                    commands.extend(cmds.into_iter().map(|cmd| (index, cmd)));
                }
                EntryPayload::Membership(m) => {
                    self.membership = Membership::new(Some(entry.log_id), m);
                    slots.push(Slot::None);
                }
            }
        }
        if last.is_none() {
            return Ok(Vec::new());
        }
        if commands.iter().any(|(_, cmd)| gives_deadline(cmd)) {
            self.deadlines
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let applied = Applied {
            last_applied: last,
            membership: self.membership.clone(),
        };
        let applied = encode(&applied)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        let changed: Vec<Vec<u8>> = match self.waiters.any() {
            true => commands.iter().map(|(_, cmd)| cmd.key().to_vec()).collect(),
            false => Vec::new(),
        };
        // Not fsynced: after a crash, entries after the durable "applied" marker are replayed
        // from the (durable) log.
        let batch = WriteBatch::new(self.group, false).op(Op::Apply { commands, applied });
        let mut outcomes = self
            .store
            .write(batch)
            .await
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>();
        self.waiters.applied(changed.iter().map(Vec::as_slice));
        if let Some(last) = last {
            self.applied_index.send_replace(last.index);
        }
        let mut take = |n: usize| outcomes.get_mut(n).and_then(Option::take);
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Slot::None => Response::None,
                Slot::One(n) => take(n).map_or(Response::None, Response::Kv),
                Slot::Batch(start, len) => {
                    Response::Batch((start..start + len).filter_map(&mut take).collect())
                }
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageIoError> {
        let path = self
            .dir
            .join(format!("incoming-{}.tmp", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        *self.incoming.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageIoError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let applied = encode(&Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        })
        .map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
        let file = snapshot.into_std().await;
        let path = self.snapshot_path(&meta.snapshot_id);
        let incoming = self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let group = self.group;
        // Where the history starts if the stream carries none (a snapshot from before they
        // did): complete from the entry after the snapshot.
        let history_start = meta.last_log_id.map_or(0, |l| l.index) + 1;
        let keys = self
            .store
            .read(move |engine| {
                use std::io::Seek;
                let mut file = file;
                file.sync_all()?;
                file.rewind()?;
                let mut input = BufReader::new(&file);
                let keys = engine.import_group(group, &mut input, &applied, history_start)?;
                // Keep the received stream as our current snapshot: it is exactly the state
                // just installed. Rename the file we handed out only if it is the stream we
                // were given: openraft may install a snapshot from any file (its own suite
                // does), and renaming ours then kept an empty file as the current snapshot.
                match incoming {
                    Some(src) if is_same_file(&file, &src)? => std::fs::rename(src, &path)?,
                    other => {
                        if let Some(src) = other {
                            let _ = std::fs::remove_file(src);
                        }
                        file.rewind()?;
                        let mut dst = std::fs::File::create(&path)?;
                        std::io::copy(&mut file, &mut dst)?;
                        dst.sync_all()?;
                    }
                }
                Ok(keys)
            })
            .await
            .map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
        self.membership = meta.last_membership.clone();
        self.set_current(meta).await?;
        if self
            .store
            .read(move |e| e.next_deadline(group))
            .await
            .map_err(|e| sto_err(subject, ErrorVerb::Read, e))?
            .is_some()
        {
            self.deadlines
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.waiters.all_changed();
        self.applied_index
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        tracing::info!(%group, id = %meta.snapshot_id, keys, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageIoError> {
        let group = self.group;
        let bytes = self
            .store
            .read(move |e| e.read_meta(group, MetaKey::Snapshot))
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(&bytes)
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        match tokio::fs::File::open(self.snapshot_path(&meta.snapshot_id)).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%group, id = %meta.snapshot_id, "snapshot file missing; a new one will be built");
                Ok(None)
            }
            Err(e) => Err(sto_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::NodeId;

    /// A group whose entries through 7 were applied by a version without change history.
    async fn applied_before_history(store: &Store, group: GroupId) {
        let applied = encode(&Applied {
            last_applied: Some(LogId::new(CommittedLeaderId::new(2, NodeId(1)), 7)),
            membership: Membership::default(),
        })
        .unwrap();
        let batch = WriteBatch::new(group, true).op(Op::SetMeta {
            key: MetaKey::Applied,
            value: applied,
        });
        store.write(batch).await.unwrap();
    }

    #[tokio::test]
    async fn opening_data_from_before_the_history_starts_it_after_that_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::memory().unwrap();
        let (old, fresh) = (GroupId(1), GroupId(2));
        applied_before_history(&store, old).await;

        let sm = StateMachine::open(old, store.clone(), dir.path())
            .await
            .unwrap();
        let start = store.read(move |e| e.history_start(old)).await.unwrap();
        assert_eq!(start, Some(8));
        assert_eq!(*sm.applied_index().borrow(), 7);

        let sm = StateMachine::open(fresh, store.clone(), dir.path())
            .await
            .unwrap();
        let start = store.read(move |e| e.history_start(fresh)).await.unwrap();
        assert_eq!(start, None, "a new group keeps the default start");
        assert_eq!(*sm.applied_index().borrow(), 0);
    }

    #[tokio::test]
    async fn reopening_keeps_the_rows_applied_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::memory().unwrap();
        let g = GroupId(1);
        applied_before_history(&store, g).await;
        StateMachine::open(g, store.clone(), dir.path())
            .await
            .unwrap();
        let applied = encode(&Applied {
            last_applied: Some(LogId::new(CommittedLeaderId::new(2, NodeId(1)), 8)),
            membership: Membership::default(),
        })
        .unwrap();
        let put = Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: kv_storage::Condition::Always,
        };
        store
            .write(WriteBatch::new(g, false).op(Op::Apply {
                commands: vec![(8, put)],
                applied,
            }))
            .await
            .unwrap();
        let sm = StateMachine::open(g, store.clone(), dir.path())
            .await
            .unwrap();
        assert_eq!(*sm.applied_index().borrow(), 8);
        let page = store
            .read(move |e| e.changes(g, kv_storage::ChangePos::end_of(0), 10, usize::MAX))
            .await
            .unwrap();
        assert_eq!(page.start, 8);
        assert_eq!(page.rows.len(), 1, "{page:?}");
    }
}
