//! Check-quorum (etcd's name) and the restarted leader's recovery floor: the two rules, beyond
//! openraft's own, that decide whether this replica may act as its group's leader right now.
//!
//! **Check-quorum.** openraft 0.9 never makes a leader step down for silence: a leader cut off
//! from its followers keeps believing it leads while the others elect a new one. Here a leader
//! counts as leading only while a quorum has acknowledged it within one leader lease
//! (`election_timeout_max`, openraft's `millis_since_quorum_ack`); past that it reports no
//! leadership and refuses work at once, so clients fail over instead of waiting out a request
//! timeout. The followers' lease is the same length, so by the time any other node can have
//! been elected, the old leader has stopped serving.
//!
//! **Recovery floor.** Applies and the commit index are not fsynced (the log is), so after a
//! crash a node can come back with `committed = last_applied = N-1` although entry `N` was
//! committed, applied and acknowledged before. openraft 0.9 restores a node whose stored vote
//! made it the leader as leader *in the same term*, with no new entry: its read index (the
//! larger of its commit index and the first entry of its term) can then be `N-1`, and a
//! read-index read returns the state before an acknowledged write. So a replica that restarts as
//! leader serves no linearizable read until it has applied every entry its log held at startup
//! (the floor), which requires committing them again in its term; it proposes a no-op entry at
//! once so that this happens even if its log ends with an entry of an older term. A replica that
//! restarts as follower needs nothing: a leader of a later term reads at its own first entry,
//! which is above everything committed before.
//!
//! **Quiet groups.** A leader whose group is quiet sends no heartbeats (see `quiesce`), so
//! openraft's acknowledgement ages; it then leads while a quorum of its voters answered a
//! liveness ping sent within the lease. Followers of a quiet group campaign only after a lease
//! without pings, so the rule above still holds.
//!
//! Compare-and-set and every other write is decided when its entry is applied, after every
//! entry before it in the log, so neither rule is needed for writes' correctness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics, ServerState};

use crate::peer_health::PeerHealth;
use crate::quiesce::Quiet;
use crate::NodeId;

/// How this replica judges its own leadership. Shared by a group's clones.
#[derive(Debug)]
pub(crate) struct LeaderCheck {
    /// Longest time since a quorum's acknowledgement for which a leader still leads.
    lease: Duration,
    /// The term this replica last found itself leader in, and when it noticed: a new leader has
    /// no acknowledgement yet and leads on the strength of its election for one lease; and a
    /// leadership transfer needs to know how long ago its vote was cast.
    noticed: Mutex<Option<(u64, Instant)>>,
    /// Set when the replica restarted as leader: (term, last log index at startup).
    floor: Option<(u64, u64)>,
    /// Whether the floor has been reached (or left behind by a change of term).
    recovered: AtomicBool,
    /// The group's quiet state, and the pings that stand in for heartbeats while it is quiet.
    quiet: Arc<Quiet>,
    peers: Arc<PeerHealth>,
}

impl LeaderCheck {
    /// `restored`: the term and last log index, if the replica restarts as its group's leader.
    pub(crate) fn new(
        lease: Duration,
        restored: Option<(u64, u64)>,
        quiet: Arc<Quiet>,
        peers: Arc<PeerHealth>,
    ) -> Arc<Self> {
        Arc::new(LeaderCheck {
            lease,
            noticed: Mutex::new(None),
            floor: restored,
            recovered: AtomicBool::new(restored.is_none()),
            quiet,
            peers,
        })
    }

    /// Whether metrics `m` are those of a leader a quorum acknowledged within the lease.
    pub(crate) fn leads(&self, m: &RaftMetrics<NodeId, BasicNode>) -> bool {
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return false;
        }
        let since = self.notice(m.current_term);
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        if self.quiet.is_quiesced() {
            // No heartbeats, and no ticks to refresh openraft's metrics: pings only.
            return self.quorum_answers_pings(m);
        }
        match m.millis_since_quorum_ack {
            Some(ms) if ms <= lease_ms => true,
            // Just woken: the heartbeats it sends on waking are not acknowledged yet.
            Some(_) => self.quiet.woke_within(self.lease) && self.quorum_answers_pings(m),
            None => since.elapsed() <= self.lease,
        }
    }

    /// Whether a quorum of every voter set (both, during a joint change) answered a liveness
    /// ping sent within the lease, this replica counting for itself.
    fn quorum_answers_pings(&self, m: &RaftMetrics<NodeId, BasicNode>) -> bool {
        m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|voters| {
                let answered = voters
                    .iter()
                    .filter(|v| **v == m.id || self.peers.answered_ping_within(**v, self.lease))
                    .count();
                answered * 2 > voters.len()
            })
    }

    /// When this replica first found itself leading in `term` (now, if this is the first time).
    /// Never earlier than openraft's own record of the election.
    fn notice(&self, term: u64) -> Instant {
        let mut noticed = self.noticed.lock().unwrap_or_else(|p| p.into_inner());
        match *noticed {
            Some((t, at)) if t == term => at,
            _ => {
                let now = Instant::now();
                *noticed = Some((term, now));
                now
            }
        }
    }

    /// How long this replica has led in `term`, at least (see [`Self::notice`]).
    pub(crate) fn led_for(&self, term: u64) -> Duration {
        self.notice(term).elapsed()
    }

    /// The floor a restored leader must have applied before serving reads, while it applies:
    /// `None` once reached, or once the replica's term moved on (a leader of a new term reads at
    /// its own first entry, above the floor).
    pub(crate) fn pending_floor(&self, m: &RaftMetrics<NodeId, BasicNode>) -> Option<u64> {
        if self.recovered.load(Ordering::Acquire) {
            return None;
        }
        let (term, floor) = self.floor?;
        if m.current_term < term {
            // Not yet the restored state: openraft's first metrics are blank (term 0).
            return Some(floor);
        }
        let applied = m.last_applied.map(|l| l.index);
        if m.current_term > term || applied >= Some(floor) {
            self.recovered.store(true, Ordering::Release);
            return None;
        }
        Some(floor)
    }
}
