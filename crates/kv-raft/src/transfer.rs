//! Leadership transfer, which openraft 0.9 lacks: the Raft thesis' (§3.10), done the way etcd
//! does it. Proposals stop (the group's gate), the target catches up, heartbeats stop until the
//! followers' leader lease has lapsed (until then they refuse any vote), and the target is told
//! to campaign at once (`timeout-now`), before any other follower's election timer fires.
//! Where the target and the old leader alone are a majority (three voters), the old leader's
//! own vote elects the target, so the lease wait is skipped and writes pause for a round trip.

use std::time::Duration;

use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use tokio::time::Instant;

use crate::group::{matched, not_leading, shutting_down};
use crate::types::TypeConfig;
use crate::NodeId;
use crate::{Group, GroupError};

/// Longest a transfer waits for its target to catch up (the group's request timeout may be
/// shorter): a target further behind is the wrong choice, and writes are held meanwhile.
const MAX_CATCH_UP: Duration = Duration::from_secs(2);

/// Whether the metrics are a leader's, with `to` holding the leader's whole log.
fn caught_up(m: &RaftMetrics<NodeId, BasicNode>, to: NodeId) -> bool {
    let leads = m.state == ServerState::Leader && m.current_leader == Some(m.id);
    leads && m.last_log_index.is_some() && matched(m, to) == m.last_log_index
}

/// Turns a leader's idle heartbeats off for as long as it lives, and back on when dropped, so
/// every way out of a transfer (error, cancellation) restores them.
struct HeartbeatsOff<'a>(&'a Raft<TypeConfig>);

impl<'a> HeartbeatsOff<'a> {
    fn new(raft: &'a Raft<TypeConfig>) -> Self {
        raft.runtime_config().heartbeat(false);
        HeartbeatsOff(raft)
    }
}

impl Drop for HeartbeatsOff<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

impl Group {
    /// On the leader: whether voter `to` holds every entry of the leader's log, so it could take
    /// over at once. False on a follower and for a node that is not a member.
    pub fn replication_caught_up(&self, to: NodeId) -> bool {
        caught_up(&self.raft.metrics().borrow(), to)
    }

    /// Hand leadership to voter `to`. Call it on the leader.
    ///
    /// openraft 0.9 has no leadership transfer, so this is the Raft thesis' (§3.10), done the
    /// way etcd does it: hold back new writes, membership changes and linearizable reads (they
    /// wait, and those in flight finish first); wait until `to` holds the whole log; stop
    /// heartbeats until the followers' leader lease (`election_max`) has lapsed, since until
    /// then they refuse to vote (skipped when this leader's vote is enough, see
    /// `old_leader_vote_elects`); then tell `to` to campaign at once (the `timeout-now` RPC),
    /// before any other follower's election timer fires. Heartbeats and held-back requests
    /// resume on every way out, including cancellation; requests held back then fail with
    /// [`GroupError::NotLeader`] naming the new leader.
    ///
    /// Returns `Ok` once another node leads: normally `to`, but if a follower's timer fired
    /// first, that follower may have won instead; check [`Group::leader`] if it matters.
    ///
    /// Errors: [`GroupError::NotLeader`] if this node does not lead; [`GroupError::BadRequest`]
    /// if `to` is this node or not a voter; [`GroupError::Unavailable`] if in-flight requests
    /// did not finish or `to` did not catch up in time (nothing changed then), if `to` could
    /// not be reached (heartbeats resume at once, before another follower campaigns), or if
    /// leadership did not move within two election timeouts (it may or may not move later).
    #[tracing::instrument(level = "info", skip(self), fields(group = %self.id))]
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), GroupError> {
        self.transfer_target(to)?;
        let started = Instant::now();
        let _closed = tokio::time::timeout(self.timeout, self.gate.write())
            .await
            .map_err(|_| {
                GroupError::Unavailable(format!(
                    "requests in flight did not finish within {:?}",
                    self.timeout
                ))
            })?;
        // No lease reads from here on (they need the gate too): this leader's vote may elect
        // the target before the followers' leases lapse.
        self.lease.end();
        // A quiet group wakes first: the transfer sends and times heartbeats itself.
        self.quiet.wake(&self.raft);
        // Leadership may have changed while requests in flight drained.
        let (term, addr) = self.transfer_target(to)?;
        let config = self.raft.config();
        let heartbeat = Duration::from_millis(config.heartbeat_interval);
        let lease = Duration::from_millis(config.election_timeout_max);

        let catch_up = self.timeout.min(MAX_CATCH_UP);
        let waited = self
            .raft
            .wait(Some(catch_up))
            .metrics(
                |m| caught_up(m, to) || m.state != ServerState::Leader,
                format!("node {to} catches up"),
            )
            .await;
        match waited {
            Ok(m) if m.state != ServerState::Leader => return Err(not_leading(&m)),
            Ok(_) => {}
            Err(WaitError::Timeout(..)) => {
                return Err(GroupError::Unavailable(format!(
                    "node {to} did not catch up within {catch_up:?}"
                )))
            }
            Err(WaitError::ShuttingDown) => return Err(shutting_down()),
        }

        if self.old_leader_vote_elects(to, term, lease) {
            // Fast path: `to` and this leader are a majority, and this leader grants `to` its
            // vote at once (its own vote is older than a lease), so nobody else's lease matters.
            self.transport
                .timeout_now(self.id, &addr, term, lease)
                .await?;
        } else {
            let _heartbeats = HeartbeatsOff::new(&self.raft);
            // Followers' lease is internal state no metric shows, so this is a wait on time: one
            // lease from the last heartbeat, plus one interval for a heartbeat already in flight.
            // Other followers campaign only after lease + election_min, so `to` goes first.
            tokio::time::sleep(lease + heartbeat).await;
            if let Err(e) = self
                .transport
                .timeout_now(self.id, &addr, term, lease)
                .await
            {
                // Renew the followers' lease now, not at the next tick, before one of them
                // campaigns.
                self.raft.runtime_config().heartbeat(true);
                if let Err(f) = self.raft.trigger().heartbeat().await {
                    tracing::warn!(error = %f, "heartbeat after a failed transfer");
                }
                return Err(e);
            }
        }

        let moved = self
            .raft
            .wait(Some(2 * lease))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != m.id),
                "another node leads",
            )
            .await;
        match moved {
            Ok(m) => {
                tracing::info!(
                    %to,
                    leader = ?m.current_leader,
                    term = m.current_term,
                    took_ms = started.elapsed().as_millis(),
                    "leadership transferred"
                );
                Ok(())
            }
            Err(WaitError::Timeout(..)) => Err(GroupError::Unavailable(format!(
                "no other node took over within {:?}",
                2 * lease
            ))),
            Err(WaitError::ShuttingDown) => Err(shutting_down()),
        }
    }

    /// Whether `to`'s campaign wins with this leader's vote alone: the two are a majority of the
    /// voters, and this leader's vote (cast when it was elected) is older than a lease, so
    /// openraft's lease check does not make it refuse. Then nobody needs to wait for the other
    /// followers' leases to lapse, and the transfer pauses writes for a round trip, not a lease.
    fn old_leader_vote_elects(&self, to: NodeId, term: u64, lease: Duration) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let both = voters.contains(&to) && voters.contains(&m.id);
        both && 2 * 2 > voters.len() && self.check.led_for(term) > lease + lease / 4
    }

    /// Check that this node leads and `to` is another voter; return the term and `to`'s address.
    fn transfer_target(&self, to: NodeId) -> Result<(u64, String), GroupError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return Err(not_leading(&m));
        }
        if to == m.id {
            return Err(GroupError::BadRequest(format!(
                "node {to} already leads group {}",
                self.id
            )));
        }
        if !membership.voter_ids().any(|v| v == to) {
            return Err(GroupError::BadRequest(format!(
                "node {to} is not a voter of group {}",
                self.id
            )));
        }
        let addr = membership
            .get_node(&to)
            .map(|n| n.addr.clone())
            .ok_or_else(|| GroupError::BadRequest(format!("voter {to} has no address")))?;
        Ok((m.current_term, addr))
    }
}

impl Group {
    /// Start an election on this replica at once instead of waiting for the election timer:
    /// used right after a group is created so that the replica meant to lead it usually wins
    /// the first election. A no-op on a leader or a learner.
    pub async fn campaign(&self) -> Result<(), GroupError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| GroupError::Stopped(e.to_string()))
    }
}
