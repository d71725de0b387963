//! A handle on one hosted Raft group: writes through the log, reads at the consistency asked,
//! and the group's state for status pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_storage::{ChangePage, ChangePos, Command, GroupId, Outcome, Record, Store};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState};
use tokio::sync::RwLock;

use crate::check_quorum::LeaderCheck;
use crate::lease::{LeaderLease, Lease};
use crate::network::Transport;
use crate::proposer::Proposer;
use crate::quiesce::Quiet;
use crate::read_index::ReadBatcher;
use crate::types::{Request, Response, TypeConfig};
use crate::{GroupError, NodeId};

/// A group's Raft metrics (openraft's, with this crate's node types).
pub type Metrics = RaftMetrics<NodeId, BasicNode>;

/// One group hosted on this node. Cheap to clone; clones share the Raft instance and the gate.
#[derive(Clone)]
pub struct Group {
    pub(crate) id: GroupId,
    /// Which of the host's Raft instances of this group it is (a failed one is replaced).
    pub(crate) generation: u64,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) store: Store,
    pub(crate) transport: Transport,
    pub(crate) timeout: Duration,
    /// The gate for everything that makes the leader talk to followers on a caller's behalf
    /// (proposals, membership changes, read barriers): they hold it shared, a leadership
    /// transfer holds it exclusively. While a transfer runs the log does not grow and nothing
    /// renews the followers' leader lease, which the transfer waits out. tokio's lock is fair,
    /// so a waiting transfer holds back new requests instead of starving behind them.
    pub(crate) gate: Arc<RwLock<()>>,
    /// Check-quorum and the restarted leader's recovery floor (see `check_quorum`).
    pub(crate) check: Arc<LeaderCheck>,
    /// Reads waiting for a leadership confirmation (see `read_index`).
    pub(crate) reads: Arc<ReadBatcher>,
    /// Follower reads waiting for a read index from the leader (see `read_index`).
    pub(crate) follower_reads: Arc<ReadBatcher>,
    /// The leader lease that lets reads skip a confirmation round (see `lease`).
    pub(crate) lease: Arc<LeaderLease>,
    /// Writes waiting to be proposed (see `proposer`).
    pub(crate) proposer: Arc<Proposer>,
    /// Whether the group is quiet, as leader or follower (see `quiesce`).
    pub(crate) quiet: Arc<Quiet>,
    /// Set by the state machine once a key with a deadline is applied or installed.
    pub(crate) deadlines: Arc<std::sync::atomic::AtomicBool>,
    /// Requests waiting for a key to change, woken by the state machine.
    pub(crate) waiters: Arc<crate::key_waiters::KeyWaiters>,
    /// The log index this replica's stored state includes, from the state machine.
    pub(crate) applied_index: tokio::sync::watch::Receiver<u64>,
    /// The index of the last entry of this replica's log (see `log_store`).
    pub(crate) log_last: crate::log_store::LastIndex,
}

/// A proposal handed to openraft, waiting for its commit.
pub(crate) struct Submitted {
    answer: <openraft::raft::responder::OneshotResponder<TypeConfig> as openraft::raft::responder::Responder<TypeConfig>>::Receiver,
    /// Held until the proposal is done: a leadership transfer waits for it.
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// A replica's role in its group, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Leads the group (and, with check-quorum, still hears from a quorum).
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    /// The role's name in status documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// Entries a replica may lag behind the leader and still count as keeping up
/// ([`GroupStatus::keeps_up`]).
pub const MAX_LAG: u64 = 64;

/// On a leader's metrics: the highest log index member `id` is known to hold. `None` on a
/// follower, for a member with nothing known yet and for a non-member.
pub(crate) fn matched(m: &RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// A group's Raft state as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Addresses of every member, voter or learner.
    pub nodes: BTreeMap<NodeId, String>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: the highest index each member is known to hold.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
}

impl GroupStatus {
    /// On the leader's status: the highest log index member `id` is known to hold (`None` on
    /// a follower's status, or while nothing is known of `id`).
    pub fn matched(&self, id: NodeId) -> Option<u64> {
        self.replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
    }

    /// On the leader's status: whether member `id` holds the log up to `index`.
    pub fn holds(&self, id: NodeId, index: u64) -> bool {
        self.matched(id).is_some_and(|m| m >= index)
    }

    /// On the leader's status: whether member `id` holds the log to within [`MAX_LAG`]
    /// entries (a leadership transfer to it then waits for the rest, which takes a moment).
    pub fn keeps_up(&self, id: NodeId) -> bool {
        let last = self.last_log_index.unwrap_or(0);
        self.matched(id)
            .is_some_and(|m| last.saturating_sub(m) <= MAX_LAG)
    }
}

/// Pause between attempts to confirm leadership for a read.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(20);

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> GroupError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
        RaftError::APIError(e) => GroupError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => GroupError::Stopped(f.to_string()),
    }
}

/// `NotLeader` from a non-leader's metrics, naming the leader it knows of.
pub(crate) fn not_leading(m: &RaftMetrics<NodeId, BasicNode>) -> GroupError {
    let membership = m.membership_config.membership();
    let leader = m
        .current_leader
        .filter(|l| *l != m.id)
        .and_then(|l| membership.get_node(&l).map(|n| (l, n.addr.clone())));
    GroupError::NotLeader { leader }
}

pub(crate) fn shutting_down() -> GroupError {
    GroupError::Stopped("raft is shutting down".into())
}

/// A leader cut off from its quorum: it knows no leader it could forward to.
fn no_quorum() -> GroupError {
    GroupError::NotLeader { leader: None }
}

fn not_leader(f: ForwardToLeader<NodeId, BasicNode>) -> GroupError {
    GroupError::NotLeader {
        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
    }
}

impl Group {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The group's Raft metrics as they change, for the jobs that wake on them (a new leader, a
    /// membership change, an applied entry).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<Metrics> {
        self.raft.metrics()
    }

    /// The underlying Raft instance, for membership changes and tests.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Commit `cmd` through the log and return its outcome and log index. Waits while a
    /// leadership transfer runs (then fails with [`GroupError::NotLeader`] if it moved), all
    /// within the group's request timeout. Fails at once with [`GroupError::NotLeader`] on a
    /// leader cut off from its quorum (check-quorum), also while the write is in flight: its
    /// outcome is then unknown, as after a timeout.
    /// Concurrent writes go into the log together (see `proposer`).
    pub async fn write(&self, cmd: Command) -> Result<(Outcome, u64), GroupError> {
        self.proposer.write(self, cmd).await
    }

    /// Commit `req` and return what applying it produced, with its log index.
    pub(crate) async fn propose(&self, req: Request) -> Result<(Response, u64), GroupError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let submitted = self.submit(req, deadline).await?;
        self.committed(submitted, deadline).await
    }

    /// Hand `req` to openraft (in the order of calls: openraft appends in the order it receives),
    /// without waiting for the commit; within the group's request timeout. Waits while a
    /// leadership transfer runs; the returned proposal keeps transfers out until it is done.
    pub(crate) async fn submit(
        &self,
        req: Request,
        deadline: tokio::time::Instant,
    ) -> Result<Submitted, GroupError> {
        let timed_out =
            || GroupError::Unavailable(format!("write not committed within {:?}", self.timeout));
        let gate = tokio::time::timeout_at(deadline, self.gate.clone().read_owned())
            .await
            .map_err(|_| timed_out())?;
        self.quiet.wake(&self.raft);
        tokio::time::timeout_at(deadline, self.regain_quorum())
            .await
            .map_err(|_| timed_out())??;
        let answer = self
            .raft
            .client_write_ff(req)
            .await
            .map_err(|f| GroupError::Stopped(f.to_string()))?;
        Ok(Submitted {
            answer,
            _gate: gate,
        })
    }

    /// Wait for a submitted proposal's commit and apply, until `deadline`; fails at once on a
    /// leader cut off from its quorum (the outcome is then unknown, as after a timeout).
    pub(crate) async fn committed(
        &self,
        submitted: Submitted,
        deadline: tokio::time::Instant,
    ) -> Result<(Response, u64), GroupError> {
        let answer = async {
            tokio::select! {
                answer = submitted.answer => match answer {
                    Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
                    Ok(Err(e)) => Err(write_error(RaftError::APIError(e))),
                    Err(_) => Err(shutting_down()),
                },
                lost = self.quorum_lost() => Err(lost),
            }
        };
        tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| {
                GroupError::Unavailable(format!("write not committed within {:?}", self.timeout))
            })?
    }

    /// Ok unless this replica is openraft's leader but has not heard from a quorum for a lease
    /// and does not within a grace period after asking (it sends heartbeats at once; a leader
    /// whose heartbeats were paused, by a transfer that then failed, regains its quorum here).
    async fn regain_quorum(&self) -> Result<(), GroupError> {
        let cut_off = |m: &RaftMetrics<NodeId, BasicNode>| {
            m.state == ServerState::Leader && !self.check.leads(m)
        };
        if !cut_off(&self.raft.metrics().borrow()) {
            return Ok(());
        }
        if self.raft.trigger().heartbeat().await.is_err() {
            return Err(shutting_down());
        }
        let grace = Duration::from_millis(self.raft.config().heartbeat_interval * 2);
        let check = self.check.clone();
        self.raft
            .wait(Some(grace))
            .metrics(
                move |m| m.state != ServerState::Leader || check.leads(m),
                "a quorum acknowledges the leader",
            )
            .await
            .map(|_| ())
            .map_err(|_| no_quorum())
    }

    /// Resolves once this replica leads without a quorum's acknowledgement within the lease,
    /// and cannot regain it.
    async fn quorum_lost(&self) -> GroupError {
        let mut metrics = self.raft.metrics();
        loop {
            // Every proposal in flight waits here, woken by each change of the metrics (several
            // per entry): a look at them in place, not openraft's `Wait`, which clones them and
            // sets a timer on every change.
            let lost = metrics
                .wait_for(|m| m.state == ServerState::Leader && !self.check.leads(m))
                .await
                .map(drop);
            if lost.is_err() {
                return shutting_down();
            }
            if let Err(lost) = self.regain_quorum().await {
                return lost;
            }
        }
    }

    /// On a replica that restarted as leader: propose a no-op so that the entries its log held
    /// at startup are committed again in its term (see `check_quorum`). Returns at once
    /// elsewhere.
    pub(crate) async fn recommit_after_restart(&self) {
        if self
            .check
            .pending_floor(&self.raft.metrics().borrow())
            .is_none()
        {
            return;
        }
        match self.propose(Request::Noop).await {
            Ok((_, index)) => {
                tracing::info!(group = %self.id, index, "restarted leader re-committed its log")
            }
            Err(e) => {
                tracing::info!(group = %self.id, error = %e, "restarted leader's no-op not committed")
            }
        }
    }

    /// Voters and learners of the membership this node currently sees. Reads the metrics
    /// snapshot: no round trip to the Raft core, cheap enough for a reconcile loop.
    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    }

    /// Add node `id` at `addr` as a learner; with `wait`, return only once it holds the log up
    /// to the membership entry that added it (or fail with [`GroupError::NotLeader`] if this
    /// node stops leading first).
    pub async fn add_learner(&self, id: NodeId, addr: &str, wait: bool) -> Result<(), GroupError> {
        let limit = self.timeout * 2;
        let attempt = async {
            let _open = self.gate.read().await;
            self.quiet.wake(&self.raft);
            self.raft.add_learner(id, BasicNode::new(addr), false).await
        };
        let added = tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| {
                GroupError::Unavailable(format!(
                    "adding learner {id} not committed within {limit:?}"
                ))
            })?
            .map_err(write_error)?;
        if !wait {
            return Ok(());
        }
        // Catching up can take long (a snapshot), so not under the gate: a transfer waiting
        // for the gate would hold every write back meanwhile.
        let added_at = Some(added.log_id.index);
        let done = self
            .raft
            .wait(None)
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id));
                    m.state != ServerState::Leader
                        || id == m.id
                        || matched.is_some_and(|l| l.map(|l| l.index) >= added_at)
                },
                format!("learner {id} catches up"),
            )
            .await
            .map_err(|_| shutting_down())?;
        if done.state != ServerState::Leader {
            return Err(not_leading(&done));
        }
        Ok(())
    }

    /// Make `voters` the voter set, through joint consensus.
    pub async fn set_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), GroupError> {
        self.change_members(ChangeMembers::ReplaceAllVoters(voters))
            .await
    }

    /// Remove non-voting members.
    pub async fn remove_learners(&self, ids: BTreeSet<NodeId>) -> Result<(), GroupError> {
        self.change_members(ChangeMembers::RemoveNodes(ids)).await
    }

    /// One membership change (two log entries with joint consensus), within twice the request
    /// timeout: without a quorum it fails instead of holding its caller (and the gate) forever.
    /// A change that timed out may still commit later.
    async fn change_members(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), GroupError> {
        let limit = self.timeout * 2;
        let attempt = async {
            let _open = self.gate.read().await;
            self.quiet.wake(&self.raft);
            self.raft.change_membership(change, false).await
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| {
                GroupError::Unavailable(format!("membership change not committed within {limit:?}"))
            })?
            .map(|_| ())
            .map_err(write_error)
    }

    /// Make sure this node is the leader and has applied everything committed before the call
    /// (read-index), so a following local read is linearizable. Waits while a leadership
    /// transfer runs, within the group's request timeout. On a replica that restarted as leader
    /// it also waits until the entries its log held at startup are applied again (see
    /// `check_quorum`: its read index alone may be below an acknowledged write). Concurrent
    /// calls share confirmation rounds (see `read_index`).
    ///
    /// On a follower that is a voter, this is a follower read: it asks the leader for a read
    /// index (the leader confirms its leadership as for its own reads and answers with what it
    /// has applied, which covers every write acknowledged before) and waits until this replica
    /// has applied up to it. So a follower serves a linearizable read without the value
    /// crossing the network. Should the leader not answer, the error names it
    /// ([`GroupError::NotLeader`]) so the caller can send the read there instead.
    pub async fn read_barrier(&self) -> Result<(), GroupError> {
        let (me, voter, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id);
            (m.id, voter, self.leader_in(&m))
        };
        match leader {
            // A learner (being added) or a replica on its way out may lag without bound: it
            // does not serve reads of its own.
            Some((id, _)) if id != me && voter => match self.follower_reads.confirm(self).await {
                // Leadership came here while the read waited: a leader's round serves it.
                Err(GroupError::NotLeader {
                    leader: Some((id, _)),
                }) if id == me => self.leader_read().await,
                done => done,
            },
            _ => self.leader_read().await,
        }
    }

    /// A read on the leader: once this replica has applied its read index (see
    /// [`Group::leader_read_index`]).
    async fn leader_read(&self) -> Result<(), GroupError> {
        let index = self.leader_read_index().await?;
        let mut applied = self.applied_index.clone();
        if *applied.borrow() >= index {
            return Ok(());
        }
        let waited = tokio::time::timeout(self.timeout, async {
            applied.wait_for(|a| *a >= index).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(GroupError::Stopped("the state machine is gone".into())),
            Err(_) => Err(GroupError::Unavailable(format!(
                "the read index {index} was not applied within {:?}",
                self.timeout
            ))),
        }
    }

    /// On the leader, an index that covers every write acknowledged before the call: while
    /// the lease holds (see `lease`), the commit index the Raft core holds now (a follower may
    /// have applied an entry this leader has not yet, so its own applied index is not enough),
    /// or the last index of its log when it has applied all of it (nothing beyond can be
    /// committed, and no round trip to the core is needed);
    /// otherwise what it has applied after a confirmation round shared with the other reads
    /// waiting (see `read_index`).
    async fn leader_read_index(&self) -> Result<u64, GroupError> {
        match self.lease_check() {
            Lease::Lapsed => {
                self.reads.confirm(self).await?;
                Ok(self
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |l| l.index))
            }
            lease => {
                if lease == Lease::Renew && self.lease.start_renewal() {
                    let group = self.clone();
                    tokio::spawn(async move {
                        let renewed = group.reads.confirm(&group).await;
                        group.lease.renewed();
                        if let Err(e) = renewed {
                            tracing::debug!(group = group.id.0, error = %e, "lease not renewed");
                        }
                    });
                }
                // A leader commits only what its log holds: once it has applied all of it,
                // its last index covers the commit index without asking the Raft core.
                let last = self.log_last.get();
                if *self.applied_index.borrow() >= last {
                    return Ok(last);
                }
                let committed = self
                    .raft
                    .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
                    .await
                    .map_err(|e| GroupError::Stopped(e.to_string()))?;
                Ok(committed)
            }
        }
    }

    /// Whether this replica's lease lets it answer a read now: it leads in the lease's term, no
    /// transfer holds the gate, and a restarted leader has applied its log again.
    fn lease_check(&self) -> Lease {
        let Ok(_open) = self.gate.try_read() else {
            return Lease::Lapsed;
        };
        let m = self.raft.metrics();
        let m = m.borrow();
        let leads = m.state == ServerState::Leader && m.current_leader == Some(m.id);
        if !leads || self.check.pending_floor(&m).is_some() {
            return Lease::Lapsed;
        }
        self.lease.check(m.current_term)
    }

    /// One round of follower reads (see `read_index`): a read index from the leader known now,
    /// applied here. Fails with [`GroupError::NotLeader`] naming the leader now known (this
    /// node, or none) when that is not another node.
    pub(crate) async fn follower_round(&self) -> Result<(), GroupError> {
        let (me, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.id, self.leader_in(&m))
        };
        match leader {
            Some((id, addr)) if id != me => self.follower_barrier(id, addr).await,
            leader => Err(GroupError::NotLeader { leader }),
        }
    }

    /// [`Group::read_barrier`] on a follower whose leader is `leader` at `addr`.
    async fn follower_barrier(&self, leader: NodeId, addr: String) -> Result<(), GroupError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let elsewhere = |addr: String| GroupError::NotLeader {
            leader: Some((leader, addr)),
        };
        let index = match self
            .transport
            .read_index(leader, &addr, self.id, self.timeout)
            .await
        {
            Ok(index) => index,
            Err(e) => {
                tracing::debug!(group = self.id.0, %leader, error = %e, "follower read: no read index");
                return Err(elsewhere(addr));
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "follower read")
            .await
        {
            Ok(_) => Ok(()),
            Err(_) => Err(elsewhere(addr)),
        }
    }

    /// On the leader, for a follower's read: confirm leadership (shared with this node's own
    /// reads) and answer with the applied index, at or above the read index.
    pub(crate) async fn read_index_for_follower(&self) -> Result<u64, GroupError> {
        self.leader_read_index().await
    }

    /// How many read-index rounds this instance has run as a follower (see `read_index`).
    pub fn follower_read_rounds(&self) -> u64 {
        self.follower_reads
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this replica leads the group and holds it quiet: no Raft heartbeats, its
    /// followers' election timers off (see `quiesce`).
    pub fn is_quiesced(&self) -> bool {
        self.quiet.is_quiesced()
    }

    /// How many leadership confirmation rounds this instance has run for reads.
    pub fn read_rounds(&self) -> u64 {
        self.reads.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One confirmation round of [`Group::read_barrier`].
    pub(crate) async fn confirm_leadership(&self) -> Result<(), GroupError> {
        let unconfirmed = || {
            GroupError::Unavailable(format!(
                "leadership not confirmed within {:?}",
                self.timeout
            ))
        };
        // openraft gives followers only one heartbeat interval to confirm leadership, so a busy
        // follower can make one attempt fail; retry within the request's time budget.
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Confirming leadership sends heartbeats, which a transfer must not have sent.
        let _open = tokio::time::timeout_at(deadline, self.gate.read())
            .await
            .map_err(|_| unconfirmed())?;
        loop {
            self.regain_quorum().await?;
            let started = std::time::Instant::now();
            let term = self.raft.metrics().borrow().current_term;
            let attempt = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    read = self.raft.ensure_linearizable() => Ok(read),
                    lost = self.quorum_lost() => Err(lost),
                }
            })
            .await;
            let err = match attempt {
                Err(_) => return Err(unconfirmed()),
                Ok(Err(lost)) => return Err(lost),
                Ok(Ok(Ok(_))) => {
                    self.wait_recovered(deadline).await?;
                    // Heartbeats sent after `started` reached a quorum in `term`: a lease.
                    if self.raft.metrics().borrow().current_term == term {
                        self.lease.confirmed(term, started);
                    }
                    return Ok(());
                }
                Ok(Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))))) => {
                    return Err(not_leader(f))
                }
                Ok(Ok(Err(RaftError::APIError(e)))) => e.to_string(),
                Ok(Ok(Err(RaftError::Fatal(f)))) => return Err(GroupError::Stopped(f.to_string())),
            };
            if tokio::time::Instant::now() + READ_RETRY_PAUSE >= deadline {
                return Err(GroupError::Unavailable(err));
            }
            tokio::time::sleep(READ_RETRY_PAUSE).await;
        }
    }

    /// Wait, until `deadline`, for a restarted leader to apply what its log held at startup.
    async fn wait_recovered(&self, deadline: tokio::time::Instant) -> Result<(), GroupError> {
        let Some(floor) = self.check.pending_floor(&self.raft.metrics().borrow()) else {
            return Ok(());
        };
        let check = self.check.clone();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(remaining))
            .metrics(
                move |m| check.pending_floor(m).is_none(),
                "the restarted leader's log applied again",
            )
            .await
            .map(|_| ())
            .map_err(|_| {
                GroupError::Unavailable(format!(
                    "restarted as leader; its log up to {floor} is not yet committed again"
                ))
            })
    }

    /// Read `key`; linearizable unless `stale` (then: whatever this replica has applied).
    pub async fn get(&self, key: Vec<u8>, stale: bool) -> Result<Option<Record>, GroupError> {
        if !stale {
            self.read_barrier().await?;
        }
        let group = self.id;
        Ok(self.store.get(group, key).await?)
    }

    /// Up to `limit` keys with `prefix` after `after`, ascending, and at most about `max_bytes`
    /// of keys and values (at least one row; see [`kv_storage::Engine::scan`]). With
    /// `live_at: Some(now)` (unix ms), keys whose deadline has passed by then are left out.
    pub async fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        max_bytes: usize,
        stale: bool,
        live_at: Option<u64>,
    ) -> Result<Vec<(Vec<u8>, Record)>, GroupError> {
        if !stale {
            self.read_barrier().await?;
        }
        let group = self.id;
        Ok(self
            .store
            .read(move |e| e.scan(group, &prefix, after.as_deref(), limit, max_bytes, live_at))
            .await?)
    }

    /// This replica's change history after `after`, ascending, with the history start read
    /// alongside (see [`kv_storage::Engine::changes`]): at most `limit` rows and about
    /// `max_bytes` of keys and values, at least one row if there is any. Whatever this replica
    /// has applied; replicas hold the same rows at the same positions. A cursor before
    /// `ChangePos::end_of(start - 1)` can no longer be served from here.
    pub async fn changes(
        &self,
        after: ChangePos,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, GroupError> {
        let group = self.id;
        Ok(self
            .store
            .read(move |e| e.changes(group, after, limit, max_bytes))
            .await?)
    }

    /// The log index this replica's stored state includes (0 before any), updated after every
    /// apply and snapshot install: wait on it, then read [`Group::changes`]. The channel
    /// belongs to this Raft instance: a group restarted after a failure is a new [`Group`]
    /// with a new channel.
    pub fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.clone()
    }

    /// Wait for changes of `key` on this replica: while the guard lives,
    /// [`KeyWait::next_change`](crate::KeyWait::next_change) wakes once a command on the key
    /// has been applied here. Register, look at the key, then wait: nothing is missed.
    pub fn wait_on(&self, key: &[u8]) -> crate::KeyWait {
        self.waiters.wait_on(key)
    }

    /// Whether any key of this replica may have a deadline (a time to live): false until one is
    /// applied here or arrives in a snapshot. Until then the untimed commands (`Put`,
    /// `Delete`, which nodes from before TTLs also apply) mean the same as the timed ones.
    pub fn has_deadlines(&self) -> bool {
        self.deadlines.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The earliest deadline (unix ms) of any key of this replica, expired or not.
    pub async fn next_deadline(&self) -> Result<Option<u64>, GroupError> {
        let group = self.id;
        Ok(self.store.read(move |e| e.next_deadline(group)).await?)
    }

    /// Up to `limit` keys of this replica whose deadline is at or before `now` (unix ms),
    /// earliest first, each with its version: what the leader proposes
    /// [`Command::Expire`](kv_storage::Command::Expire) for.
    pub async fn expired(&self, now: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>, GroupError> {
        let group = self.id;
        Ok(self
            .store
            .read(move |e| e.expired(group, now, limit))
            .await?)
    }

    /// The leader this node knows of, with its address: another node openraft follows, or this
    /// node while a quorum acknowledges it (check-quorum).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.leader_in(&self.raft.metrics().borrow())
    }

    fn leader_in(&self, m: &RaftMetrics<NodeId, BasicNode>) -> Option<(NodeId, String)> {
        let id = m.current_leader?;
        if id == m.id && !self.check.leads(m) {
            return None;
        }
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The leader, waiting up to `timeout` for one to be known.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        if let Some(known) = self.leader() {
            return Some(known);
        }
        let me = self.clone();
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(move |m| me.leader_in(m).is_some(), "a known leader")
            .await
            .ok()?;
        self.leader_in(&waited)
    }

    /// The leader to send this group's requests to: this node, or a peer that is not in
    /// `unreachable` and that this node can reach (see [`crate::PeerHealth`]). Waits up to
    /// `timeout` for one (an election or a leadership transfer leaves followers without a
    /// leader for a moment), woken by openraft's metrics, which it refreshes at least every
    /// tick. Fails at once with [`GroupError::Unavailable`] when this node cannot reach a
    /// quorum of the voters: then no leader it could use exists or can be elected.
    pub async fn usable_leader(
        &self,
        timeout: Duration,
        unreachable: &[NodeId],
    ) -> Result<(NodeId, String), GroupError> {
        let cut_off = || {
            GroupError::Unavailable(format!(
                "this node cannot reach a quorum of the replicas of {}",
                self.id
            ))
        };
        let found = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if let Some(leader) = self.usable_leader_in(&m, unreachable) {
                return Ok(leader);
            }
            self.reaches_quorum_in(&m, unreachable)
        };
        if !found {
            return Err(cut_off());
        }
        let me = self.clone();
        let skip = unreachable.to_vec();
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(
                move |m| me.usable_leader_in(m, &skip).is_some() || !me.reaches_quorum_in(m, &skip),
                "a usable leader",
            )
            .await;
        match waited {
            Ok(m) => self.usable_leader_in(&m, unreachable).ok_or_else(cut_off),
            Err(_) => Err(GroupError::Unavailable(format!(
                "{} has no leader this node can reach (waited {timeout:?})",
                self.id
            ))),
        }
    }

    fn usable_leader_in(
        &self,
        m: &RaftMetrics<NodeId, BasicNode>,
        unreachable: &[NodeId],
    ) -> Option<(NodeId, String)> {
        self.leader_in(m).filter(|(id, _)| {
            *id == m.id || (!unreachable.contains(id) && self.transport.peers().reachable(*id))
        })
    }

    /// Whether this node currently leads the group: openraft's leader, acknowledged by a quorum
    /// within the lease (check-quorum).
    pub fn is_leader(&self) -> bool {
        self.check.leads(&self.raft.metrics().borrow())
    }

    /// Whether this node could form a quorum of the group's voters with the peers it can
    /// reach, leaving out `also_unreachable`. False means it is cut off.
    pub fn reaches_quorum(&self, also_unreachable: &[NodeId]) -> bool {
        self.reaches_quorum_in(&self.raft.metrics().borrow(), also_unreachable)
    }

    fn reaches_quorum_in(
        &self,
        m: &RaftMetrics<NodeId, BasicNode>,
        also_unreachable: &[NodeId],
    ) -> bool {
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters.is_empty() {
            return true;
        }
        let peers = self.transport.peers();
        let reachable = voters
            .iter()
            .filter(|v| **v == m.id || (!also_unreachable.contains(v) && peers.reachable(**v)))
            .count();
        reachable * 2 > voters.len()
    }

    /// This node's view of the group, for status pages.
    pub async fn status(&self) -> GroupStatus {
        let commit_index = self
            .raft
            .with_raft_state(|st| st.committed.map(|c| c.index))
            .await
            .ok()
            .flatten();
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let leads = self.check.leads(&m);
        GroupStatus {
            group: self.id,
            role: match m.state {
                ServerState::Leader if leads => Role::Leader,
                // Cut off from its quorum (check-quorum): no longer counts itself the leader.
                ServerState::Leader => Role::Follower,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            term: m.current_term,
            leader: self.leader_in(&m).map(|(id, _)| id),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            last_log_index: m.last_log_index,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            replication: m.replication.map(|r| {
                r.into_iter()
                    .map(|(id, l)| (id, l.map(|l| l.index)))
                    .collect()
            }),
        }
    }
}
