//! A handle on one hosted Raft group: writes through the log, reads at the consistency asked,
//! and the group's state for status pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_storage::{Command, GroupId, Outcome, Record, Store};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState};
use tokio::sync::RwLock;

use crate::network::Transport;
use crate::types::{Request, Response, TypeConfig};
use crate::GroupError;

/// One group hosted on this node. Cheap to clone; clones share the Raft instance and the gate.
#[derive(Clone)]
pub struct Group {
    pub(crate) id: GroupId,
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
}

/// A group's Raft state as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Addresses of every member, voter or learner.
    pub nodes: BTreeMap<u64, String>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: the highest index each member is known to hold.
    pub replication: Option<BTreeMap<u64, Option<u64>>>,
}

/// Pause between attempts to confirm leadership for a read.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(20);

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> GroupError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
        RaftError::APIError(e) => GroupError::Unavailable(e.to_string()),
        RaftError::Fatal(f) => GroupError::Stopped(f.to_string()),
    }
}

/// `NotLeader` from a non-leader's metrics, naming the leader it knows of.
pub(crate) fn not_leading(m: &RaftMetrics<u64, BasicNode>) -> GroupError {
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

fn not_leader(f: ForwardToLeader<u64, BasicNode>) -> GroupError {
    GroupError::NotLeader {
        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
    }
}

impl Group {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The underlying Raft instance, for membership changes and tests.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Commit `cmd` through the log and return its outcome and log index. Waits while a
    /// leadership transfer runs (then fails with [`GroupError::NotLeader`] if it moved), all
    /// within the group's request timeout.
    pub async fn write(&self, cmd: Command) -> Result<(Outcome, u64), GroupError> {
        let attempt = async {
            let _open = self.gate.read().await;
            self.raft.client_write(Request::Kv(cmd)).await
        };
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| {
                GroupError::Unavailable(format!("write not committed within {:?}", self.timeout))
            })?;
        match result {
            Ok(resp) => match resp.data {
                Response::Kv(outcome) => Ok((outcome, resp.log_id.index)),
                Response::None => Err(GroupError::Stopped("write produced no outcome".into())),
            },
            Err(e) => Err(write_error(e)),
        }
    }

    /// Voters and learners of the membership this node currently sees. Reads the metrics
    /// snapshot: no round trip to the Raft core, cheap enough for a reconcile loop.
    pub fn members(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
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
    pub async fn add_learner(&self, id: u64, addr: &str, wait: bool) -> Result<(), GroupError> {
        let limit = self.timeout * 2;
        let attempt = async {
            let _open = self.gate.read().await;
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
    pub async fn set_voters(&self, voters: BTreeSet<u64>) -> Result<(), GroupError> {
        self.change_members(ChangeMembers::ReplaceAllVoters(voters))
            .await
    }

    /// Remove non-voting members.
    pub async fn remove_learners(&self, ids: BTreeSet<u64>) -> Result<(), GroupError> {
        self.change_members(ChangeMembers::RemoveNodes(ids)).await
    }

    /// One membership change (two log entries with joint consensus), within twice the request
    /// timeout: without a quorum it fails instead of holding its caller (and the gate) forever.
    /// A change that timed out may still commit later.
    async fn change_members(
        &self,
        change: ChangeMembers<u64, BasicNode>,
    ) -> Result<(), GroupError> {
        let limit = self.timeout * 2;
        let attempt = async {
            let _open = self.gate.read().await;
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
    /// transfer runs, within the group's request timeout.
    pub async fn read_barrier(&self) -> Result<(), GroupError> {
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
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await;
            let err = match attempt {
                Err(_) => return Err(unconfirmed()),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(not_leader(f))
                }
                Ok(Err(RaftError::APIError(e))) => e.to_string(),
                Ok(Err(RaftError::Fatal(f))) => return Err(GroupError::Stopped(f.to_string())),
            };
            if tokio::time::Instant::now() + READ_RETRY_PAUSE >= deadline {
                return Err(GroupError::Unavailable(err));
            }
            tokio::time::sleep(READ_RETRY_PAUSE).await;
        }
    }

    /// Read `key`; linearizable unless `stale` (then: whatever this replica has applied).
    pub async fn get(&self, key: Vec<u8>, stale: bool) -> Result<Option<Record>, GroupError> {
        if !stale {
            self.read_barrier().await?;
        }
        let group = self.id;
        Ok(self.store.read(move |e| e.get(group, &key)).await?)
    }

    /// Up to `limit` keys with `prefix` after `after`, ascending.
    pub async fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        stale: bool,
    ) -> Result<Vec<(Vec<u8>, Record)>, GroupError> {
        if !stale {
            self.read_barrier().await?;
        }
        let group = self.id;
        Ok(self
            .store
            .read(move |e| e.scan(group, &prefix, after.as_deref(), limit))
            .await?)
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The leader, waiting up to `timeout` for one to be known (an election or a leadership
    /// transfer in progress leaves followers without one for a moment).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(u64, String)> {
        if let Some(known) = self.leader() {
            return Some(known);
        }
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader
                        .is_some_and(|l| m.membership_config.membership().get_node(&l).is_some())
                },
                "a known leader",
            )
            .await;
        self.leader()
    }

    /// Whether this node currently leads the group.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id) && m.state == ServerState::Leader
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
        GroupStatus {
            group: self.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
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
