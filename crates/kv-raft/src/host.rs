//! The registry of groups a node hosts, and the entry point for peers' RPCs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kv_storage::{GroupId, Store};
use openraft::error::{InitializeError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy, Vote};
use tokio::task::JoinSet;

use crate::check_quorum::LeaderCheck;
use crate::encoding::{decode, encode};
use crate::lease::LeaderLease;
use crate::network::{RpcKind, Scheme, Transport};
use crate::quiesce::Quiet;
use crate::read_index::{ReadBatcher, Rounds};
use crate::supervise::GroupFailure;
use crate::types::TypeConfig;
use crate::validate;
use crate::NodeId;
use crate::{Group, GroupError, LogStore, StateMachine};

/// Raft timing and log-compaction settings shared by every group of a node.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// How often an idle leader sends heartbeats.
    pub heartbeat: Duration,
    /// Lower bound of a follower's randomized election timeout.
    pub election_min: Duration,
    /// Upper bound of the election timeout; openraft also uses it as the leader lease during
    /// which followers refuse to vote for anyone else.
    pub election_max: Duration,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind the snapshot, so slightly lagging followers catch up from
    /// the log instead of a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long a client write or read barrier may wait for a quorum before failing.
    pub request_timeout: Duration,
    /// Let idle groups go quiet: no Raft heartbeats, one liveness ping per peer instead (see
    /// `quiesce`).
    pub quiesce: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            request_timeout: Duration::from_secs(5),
            quiesce: true,
        }
    }
}

impl RaftTuning {
    fn config(&self) -> Result<Config, GroupError> {
        let config = Config {
            cluster_name: "kv".into(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: millis(self.request_timeout).max(1_000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 512,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| GroupError::BadRequest(format!("invalid raft tuning: {e}")))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The groups hosted by one node, sharing its store and its HTTP client. Clones share
/// everything.
#[derive(Clone)]
pub struct RaftHost {
    node_id: NodeId,
    store: Store,
    transport: Transport,
    config: Arc<Config>,
    timeout: Duration,
    /// The leader lease (`election_max`): check-quorum's limit.
    lease: Duration,
    /// Raft heartbeat interval: also the liveness ping's.
    heartbeat: Duration,
    election_min: Duration,
    quiesce: bool,
    /// The liveness ping task runs (started with the first group).
    pinging: Arc<std::sync::atomic::AtomicBool>,
    snapshot_root: PathBuf,
    groups: Arc<RwLock<HashMap<GroupId, Group>>>,
    /// Serializes opening and closing groups, so two callers never build the same group twice.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Each opened Raft instance's number, to tell a group's instances apart.
    generations: Arc<AtomicU64>,
    /// Groups whose Raft core stopped by itself (see `supervise`).
    pub(crate) failures: Arc<Mutex<HashMap<GroupId, GroupFailure>>>,
    /// Per-group background tasks: the supervisors, and a restored leader's re-commit.
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl RaftHost {
    /// A host for node `node_id` with no groups yet, talking to peers with `http` by `scheme`;
    /// snapshots go under `snapshot_root`.
    pub fn new(
        node_id: NodeId,
        store: Store,
        http: reqwest::Client,
        scheme: Scheme,
        tuning: &RaftTuning,
        snapshot_root: PathBuf,
    ) -> Result<Self, GroupError> {
        Ok(RaftHost {
            node_id,
            store,
            // Two missed heartbeats in a row: one timed-out RPC on a busy machine is not enough.
            transport: Transport::new(http, scheme, tuning.heartbeat * 2),
            config: Arc::new(tuning.config()?),
            timeout: tuning.request_timeout,
            lease: tuning.election_max,
            heartbeat: tuning.heartbeat,
            election_min: tuning.election_min,
            quiesce: tuning.quiesce,
            pinging: Arc::default(),
            snapshot_root,
            groups: Arc::default(),
            opening: Arc::default(),
            generations: Arc::default(),
            failures: Arc::default(),
            tasks: Arc::default(),
        })
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// How long one call of a peer's batch may run before its answer is given up (see
    /// `channel::serve_batch`): half the leader lease, so the other calls' answers still reach
    /// their leaders within it.
    pub(crate) fn batch_call_budget(&self) -> Duration {
        self.lease / 2
    }

    /// Heartbeat interval, leader lease and minimum election timeout (for `quiesce`).
    pub(crate) fn timing(&self) -> (Duration, Duration, Duration) {
        (self.heartbeat, self.lease, self.election_min)
    }

    /// The node's Raft transport, with what it knows of the peers' reachability.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The store every hosted group keeps its log and state in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The group, if hosted here.
    pub fn group(&self, id: GroupId) -> Option<Group> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Run `f` on every hosted group, in no particular order, under the registry's read lock
    /// (so `f` must be quick and must not open or close groups): for the per-heartbeat jobs,
    /// which would otherwise clone and sort every group each round.
    pub(crate) fn for_each_group(&self, mut f: impl FnMut(&Group)) {
        for group in self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            f(group);
        }
    }

    /// Every hosted group, ordered by id.
    pub fn groups(&self) -> Vec<Group> {
        let mut groups: Vec<Group> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        groups.sort_by_key(|g| g.id);
        groups
    }

    /// Start (or return the already running) Raft instance of `id`, recovering its log, vote
    /// and state from the store.
    pub async fn open_group(&self, id: GroupId) -> Result<Group, GroupError> {
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let _guard = self.opening.lock().await;
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let group = self.start(id).await?;
        self.spawn(crate::supervise::supervise(self.clone(), group.clone()));
        if self.quiesce && !self.pinging.swap(true, Ordering::AcqRel) {
            self.spawn(crate::quiesce::run(self.clone()));
        }
        Ok(group)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Start a Raft instance for `id` from the store; the caller holds `opening` (and, but for
    /// the supervisor restarting it, supervises it).
    pub(crate) async fn start(&self, id: GroupId) -> Result<Group, GroupError> {
        let mut log = LogStore::new(id, self.store.clone())
            .keeping_history(self.config.max_in_snapshot_log_to_keep);
        let restored = self.restored_leadership(&mut log).await?;
        let log_last = log.last_index();
        let sm = StateMachine::open(id, self.store.clone(), &self.snapshot_root)
            .await?
            .keeping_history(self.config.max_in_snapshot_log_to_keep);
        let deadlines = sm.deadlines();
        let waiters = sm.waiters();
        let applied_index = sm.applied_index();
        let raft = Raft::new(
            self.node_id,
            self.config.clone(),
            self.transport.for_group(id),
            log,
            sm,
        )
        .await
        .map_err(|e| GroupError::Stopped(e.to_string()))?;
        let quiet = Arc::new(Quiet::default());
        let group = Group {
            id,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            raft,
            store: self.store.clone(),
            transport: self.transport.clone(),
            timeout: self.timeout,
            gate: Arc::default(),
            check: LeaderCheck::new(
                self.lease,
                restored,
                quiet.clone(),
                self.transport.peers().clone(),
            ),
            quiet,
            reads: Arc::new(ReadBatcher::new(Rounds::Leader)),
            follower_reads: Arc::new(ReadBatcher::new(Rounds::Follower)),
            lease: Arc::new(LeaderLease::new(self.election_min)),
            proposer: Arc::default(),
            deadlines,
            waiters,
            applied_index,
            log_last,
        };
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, group.clone());
        if restored.is_some() {
            // Ends within the request timeout, committed or not.
            let restarted = group.clone();
            self.spawn(async move { restarted.recommit_after_restart().await });
        }
        tracing::info!(node = %self.node_id, group = %id, "group started");
        Ok(group)
    }

    /// The hosted instance of `id` if it is `group`'s (not stopped and replaced since).
    pub(crate) fn is_current(&self, group: &Group) -> bool {
        self.group(group.id)
            .is_some_and(|g| g.generation == group.generation)
    }

    /// Take `group`'s instance out of the registry if it is still the current one.
    pub(crate) fn remove_if_current(&self, group: &Group) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        if groups
            .get(&group.id)
            .is_some_and(|g| g.generation == group.generation)
        {
            groups.remove(&group.id);
            return true;
        }
        false
    }

    /// Groups whose Raft core stopped by itself, with why, and whether they are running again.
    pub fn failures(&self) -> Vec<GroupFailure> {
        let mut all: Vec<GroupFailure> = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|f| f.group);
        all
    }

    /// The serialization lock of opening and closing groups.
    pub(crate) async fn lock_opening(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.opening.clone().lock_owned().await
    }

    /// If the stored vote makes this node the group's leader (openraft then restores it as
    /// leader in the same term), that term and the last log index: the recovery floor of
    /// `check_quorum`.
    async fn restored_leadership(
        &self,
        log: &mut LogStore,
    ) -> Result<Option<(u64, u64)>, GroupError> {
        use openraft::storage::RaftLogStorage;
        let stopped = |e: openraft::StorageError<NodeId>| GroupError::Stopped(e.to_string());
        let Some(vote) = log.read_vote().await.map_err(stopped)? else {
            return Ok(None);
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(self.node_id) {
            return Ok(None);
        }
        let last = log.get_log_state().await.map_err(stopped)?.last_log_id;
        Ok(Some((vote.leader_id().term, last.map_or(0, |l| l.index))))
    }

    /// Make `members` the first membership of group `id`. Calling it on every initial member
    /// with the same members is safe; a group that already has state ignores it. Returns
    /// whether this call initialized the group.
    pub async fn initialize(
        &self,
        id: GroupId,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> Result<bool, GroupError> {
        let group = self.group(id).ok_or(GroupError::UnknownGroup(id.0))?;
        match group.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(RaftError::APIError(e)) => Err(GroupError::BadRequest(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(GroupError::Stopped(f.to_string())),
        }
    }

    /// Handle a peer's RPC for group `group`: decode, dispatch to the group, encode the answer.
    pub async fn handle_rpc(
        &self,
        group: u64,
        kind: RpcKind,
        body: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let g = self
            .group(GroupId(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        let bad = |e: postcard::Error| GroupError::BadRequest(e.to_string());
        let enc = |r: Result<Vec<u8>, postcard::Error>| {
            r.map_err(|e| GroupError::BadRequest(e.to_string()))
        };
        match kind {
            RpcKind::Append => {
                let req: AppendEntriesRequest<TypeConfig> = decode(body).map_err(bad)?;
                validate::append(&req)?;
                self.heard_from(&req.vote);
                let answer = g.raft.append_entries(req).await;
                if answer.is_ok() {
                    g.quiet.appended(&g.raft);
                }
                enc(encode(&answer))
            }
            RpcKind::Vote => {
                let req: VoteRequest<NodeId> = decode(body).map_err(bad)?;
                validate::vote(&req)?;
                self.heard_from(&req.vote);
                g.lease.end_before(req.vote.leader_id().term);
                enc(encode(&g.raft.vote(req).await))
            }
            RpcKind::Snapshot => {
                let req: InstallSnapshotRequest<TypeConfig> = decode(body).map_err(bad)?;
                validate::snapshot(&req)?;
                self.heard_from(&req.vote);
                enc(encode(&g.raft.install_snapshot(req).await))
            }
            RpcKind::Liveness => self.handle_ping(body),
            RpcKind::ReadIndex => {
                let () = decode(body).map_err(bad)?;
                enc(encode(&g.read_index_for_follower().await?))
            }
            RpcKind::TimeoutNow => {
                let leader_term: u64 = decode(body).map_err(bad)?;
                validate::timeout_now_term(leader_term)?;
                let term = g.raft.metrics().borrow().current_term;
                // A late request (its transfer timed out, someone else was elected since)
                // must not disrupt a newer term.
                if term != leader_term {
                    return Err(GroupError::Unavailable(format!(
                        "timeout-now for term {leader_term}, but this replica is at term {term}"
                    )));
                }
                tracing::info!(node = %self.node_id, group = %g.id, term, "timeout-now: campaigning");
                g.raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|f| GroupError::Stopped(f.to_string()))?;
                enc(encode(&()))
            }
        }
    }

    /// A peer's RPC arrived: the node whose vote it carries can reach us.
    fn heard_from(&self, vote: &Vote<NodeId>) {
        if let Some(sender) = vote.leader_id().voted_for() {
            self.transport.peers().note_ok(sender);
        }
    }

    /// Stop group `id` and delete everything it stored on this node (log, state, snapshots):
    /// for a replica the group has removed.
    pub async fn close_group(&self, id: GroupId) -> Result<(), GroupError> {
        let _guard = self.opening.lock().await;
        let group = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(g) = group {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = %id, error = %e, "raft shutdown failed");
            }
        }
        // Through the writer queue: ordered after any write of the group still queued (a
        // `save_committed`), which would otherwise bring part of it back.
        self.store.drop_group(id).await?;
        let dir = self.snapshot_root.join(id.to_string());
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(kv_storage::StorageError::from(e).into());
            }
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        tracing::info!(node = %self.node_id, group = %id, "group closed and its data dropped");
        Ok(())
    }

    /// Stop every group's Raft instance.
    pub async fn shutdown(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
        let groups: Vec<Group> = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, g)| g)
            .collect();
        for g in groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = %g.id, error = %e, "raft shutdown failed");
            }
        }
    }
}
