//! Quiet groups (CockroachDB calls it quiescing): a group with nothing to do stops its Raft
//! heartbeats, and one node-level heartbeat per peer keeps watch for all of them. A node
//! hosting many partitions then costs almost nothing when idle, however many groups it leads.
//!
//! **The liveness ping.** Every heartbeat interval, each node sends each peer one [`Ping`] on
//! the peer channel (`RpcKind::Liveness`), naming the groups it leads and holds quiet (with
//! their term and last log index); the answer names those the peer accepted. This is the only
//! periodic job here, and it has to be: it *is* the heartbeat, one per peer instead of one per
//! group. While every group a node hosts is quiet it pings four times per lease instead
//! ([`settled_interval`]).
//!
//! **Leader.** After [`IDLE_TICKS`] intervals without a proposal, with every member holding the
//! whole log (applied up to its end, no joint membership), the leader asks its followers to go
//! quiet by listing the group in its pings. A follower accepts when it follows that leader in
//! that term and holds exactly that log, and turns its election timer off (openraft's
//! `enable_elect`). Once every other voter accepted, the leader turns its heartbeats off
//! (`enable_heartbeat`) while holding the group's gate exclusively, so no proposal is in flight.
//! Anything that makes the leader talk to its followers on a caller's behalf (a proposal, a
//! membership change, a transfer; see `Group::submit`) wakes the group first: heartbeats back
//! on. So does a voter whose pings went unanswered for half a lease, and losing leadership.
//! Reads need no wake: a read-index round sends its own heartbeats.
//!
//! **Follower.** It keeps its election timer off while its leader's pings list the group. When a
//! ping stops listing it (the leader woke), the timer comes back on with the next append the
//! leader sends (which renews the follower's lease, so the timer does not fire at once). When no
//! ping comes from the leader for a lease (plus a jitter per group and node, so the followers do
//! not all campaign together), or the follower sees another leader or term, it is back on at once:
//! the leader is presumed gone and an election follows.
//!
//! **Invariant (check-quorum for quiet groups).** A quiet leader counts as leading while a
//! quorum of its voters answered a ping sent within one lease (see `check_quorum`). A follower
//! may campaign only after a lease without pings, each received after it was sent: by then the
//! leader has stopped counting itself leader, as with Raft heartbeats. Raft's own rules decide
//! who leads and what commits; none of this is a safety input for data.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_storage::GroupId;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use crate::encoding::{decode, encode};
use crate::types::TypeConfig;
use crate::NodeId;
use crate::{GroupError, RaftHost};

/// Heartbeat intervals without a proposal before a leader asks its group to go quiet.
pub(crate) const IDLE_TICKS: u32 = 3;
/// Most groups one ping may name (a node hosts far fewer; a bigger ping is refused).
pub(crate) const MAX_PING_GROUPS: usize = 100_000;

/// A group its leader holds quiet, as a ping names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietGroup {
    pub group: u64,
    pub term: u64,
    /// The leader's last log index: a follower accepts only holding exactly this log.
    pub index: u64,
}

/// The node-level heartbeat (body of `RpcKind::Liveness`, postcard). Answer: the
/// [`QuietGroup`]s the receiver accepted, postcard `Vec<QuietGroup>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    /// The sending node.
    pub from: NodeId,
    /// The groups it leads and wants quiet, or holds quiet.
    pub quiet: Vec<QuietGroup>,
}

/// One group's quiet state, as leader and as follower. Shared by the group's clones.
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every wake (every proposal): the idle check sees it move.
    activity: u64,
    leading: Leading,
    /// As a follower: the leader whose quiet this replica accepted, and whether that leader's
    /// latest ping stopped listing the group (then the next append ends the quiet).
    following: Option<Following>,
    /// When the group last woke from quiet as leader (see [`Quiet::covers`]).
    woke_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Following {
    leader: NodeId,
    term: u64,
    unlisted: bool,
}

#[derive(Debug, Default)]
enum Leading {
    /// Heartbeating; `seen` is (activity, last log index) at the previous tick and `ticks` how
    /// many ticks in a row it stayed the same with every member caught up.
    #[default]
    Awake,
    Idle {
        seen: (u64, Option<u64>),
        ticks: u32,
    },
    /// Listed in pings; heartbeats still on until every other voter accepted.
    Asking {
        at: QuietGroup,
        activity: u64,
        accepted: BTreeSet<NodeId>,
    },
    /// Heartbeats off.
    Quiesced { at: QuietGroup },
}

/// What the leader's tick needs to know beyond the group's metrics.
pub(crate) struct LeaderTick {
    /// The group's gate was free and is held for this tick: no proposal, membership change,
    /// read confirmation or transfer is in flight.
    pub gate_free: bool,
    /// Every other voter answered a ping within half a lease.
    pub voters_answer: bool,
}

impl Quiet {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves a consistent state: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A caller needs the leader to talk to its followers: heartbeats on, if they were off.
    /// Called with the group's gate held shared (so never during the tick that quiets it).
    pub(crate) fn wake(&self, raft: &Raft<TypeConfig>) {
        let mut st = self.state();
        st.activity = st.activity.wrapping_add(1);
        match std::mem::take(&mut st.leading) {
            Leading::Quiesced { .. } => {
                st.woke_at = Some(Instant::now());
                set_timers(raft, Timers::Leader, true);
                tracing::debug!("quiet group woken");
            }
            Leading::Asking { .. } | Leading::Idle { .. } | Leading::Awake => {}
        }
    }

    /// Whether this group's heartbeats are off (its leader holds it quiet).
    pub(crate) fn is_quiesced(&self) -> bool {
        matches!(self.state().leading, Leading::Quiesced { .. })
    }

    /// Whether this group woke from quiet as leader within `lease`: check-quorum judges it by
    /// its pings until the heartbeats it sends on waking are acknowledged.
    pub(crate) fn woke_within(&self, lease: Duration) -> bool {
        self.state().woke_at.is_some_and(|at| at.elapsed() <= lease)
    }

    /// One interval's decision for this node's replica of `group`, whose metrics are `m`: returns what this node's
    /// pings should list for the group (if it leads it and wants it quiet, or holds it quiet).
    pub(crate) fn tick_leader(
        &self,
        group: u64,
        m: &RaftMetrics<NodeId, BasicNode>,
        tick: LeaderTick,
        raft: &Raft<TypeConfig>,
    ) -> Option<QuietGroup> {
        let mut st = self.state();
        let leading = m.state == ServerState::Leader && m.current_leader == Some(m.id);
        let wake = |st: &mut State| {
            if matches!(st.leading, Leading::Quiesced { .. }) {
                st.woke_at = Some(Instant::now());
                set_timers(raft, Timers::Leader, true);
            }
            st.leading = Leading::Awake;
        };
        if !leading {
            wake(&mut st);
            return None;
        }
        let settled = settled(m);
        let here = QuietGroup {
            group,
            term: m.current_term,
            index: m.last_log_index.unwrap_or(0),
        };
        let activity = st.activity;
        match std::mem::take(&mut st.leading) {
            Leading::Awake => {
                st.leading = Leading::Idle {
                    seen: (activity, m.last_log_index),
                    ticks: 0,
                };
                None
            }
            Leading::Idle { seen, ticks } => {
                let same = settled && seen == (activity, m.last_log_index);
                let ticks = if same { ticks + 1 } else { 0 };
                if ticks >= IDLE_TICKS && tick.voters_answer {
                    let at = here;
                    st.leading = Leading::Asking {
                        at,
                        activity,
                        accepted: BTreeSet::new(),
                    };
                    return Some(at);
                }
                st.leading = Leading::Idle {
                    seen: (activity, m.last_log_index),
                    ticks,
                };
                None
            }
            Leading::Asking {
                at,
                activity: asked,
                accepted,
            } => {
                let unchanged = settled
                    && asked == activity
                    && (at.term, at.index) == (here.term, here.index)
                    && tick.voters_answer;
                if !unchanged {
                    st.leading = Leading::Awake;
                    return None;
                }
                let everyone = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| *v != m.id)
                    .all(|v| accepted.contains(&v));
                if everyone && tick.gate_free {
                    set_timers(raft, Timers::Leader, false);
                    st.leading = Leading::Quiesced { at };
                    tracing::debug!(term = at.term, index = at.index, "group quiet");
                } else {
                    st.leading = Leading::Asking {
                        at,
                        activity: asked,
                        accepted,
                    };
                }
                Some(at)
            }
            Leading::Quiesced { at } => {
                let unchanged =
                    settled && (at.term, at.index) == (here.term, here.index) && tick.voters_answer;
                st.leading = Leading::Quiesced { at };
                if unchanged {
                    Some(at)
                } else {
                    wake(&mut st);
                    None
                }
            }
        }
    }

    /// Peer `from` accepted the quiet this leader asked for at `at`.
    pub(crate) fn accepted(&self, from: NodeId, at: QuietGroup) {
        if let Leading::Asking {
            at: asked,
            accepted,
            ..
        } = &mut self.state().leading
        {
            if (asked.term, asked.index) == (at.term, at.index) {
                accepted.insert(from);
            }
        }
    }

    /// A ping from `from` lists this group at `at`: accept (election timer off) if this replica
    /// follows `from` in that term and holds exactly that log.
    pub(crate) fn follow(
        &self,
        from: NodeId,
        at: QuietGroup,
        m: &RaftMetrics<NodeId, BasicNode>,
        raft: &Raft<TypeConfig>,
    ) -> bool {
        let holds = matches!(m.state, ServerState::Follower | ServerState::Learner)
            && m.current_leader == Some(from)
            && from != m.id
            && m.current_term == at.term
            && m.last_log_index == Some(at.index);
        if !holds {
            return false;
        }
        let mut st = self.state();
        st.following = Some(Following {
            leader: from,
            term: at.term,
            unlisted: false,
        });
        set_timers(raft, Timers::Follower, false);
        true
    }

    /// The leader this replica follows quietly, if any.
    pub(crate) fn quiet_leader(&self) -> Option<NodeId> {
        self.state().following.map(|f| f.leader)
    }

    /// The quiet leader's latest ping no longer lists this group: it woke.
    pub(crate) fn unlisted(&self) {
        if let Some(f) = &mut self.state().following {
            f.unlisted = true;
        }
    }

    /// An append from the leader was handled: if the leader woke, the quiet ends now (the
    /// append renewed this follower's lease, so its election timer starts afresh).
    pub(crate) fn appended(&self, raft: &Raft<TypeConfig>) {
        let mut st = self.state();
        if st.following.is_some_and(|f| f.unlisted) {
            st.following = None;
            set_timers(raft, Timers::Follower, true);
        }
    }

    /// One interval's check as a follower: the quiet ends (election timer on) when the replica
    /// sees another leader or term, or when `silent` (no ping from its leader for its patience).
    pub(crate) fn tick_follower(
        &self,
        m: &RaftMetrics<NodeId, BasicNode>,
        silent: impl FnOnce(NodeId) -> bool,
        raft: &Raft<TypeConfig>,
    ) {
        let mut st = self.state();
        let Some(f) = st.following else {
            return;
        };
        let moved = !matches!(m.state, ServerState::Follower | ServerState::Learner)
            || m.current_leader != Some(f.leader)
            || m.current_term != f.term;
        if moved || silent(f.leader) {
            st.following = None;
            set_timers(raft, Timers::Follower, true);
            tracing::debug!(leader = %f.leader, moved, "quiet ended by the follower");
        }
    }
}

/// Which of a replica's timers go off while quiet.
#[derive(Clone, Copy)]
enum Timers {
    /// Heartbeats, and the tick that drives them.
    Leader,
    /// The election timer, and the tick that drives it.
    Follower,
}

/// Turn a quiet replica's timers off, or back on. openraft's tick drives elections and
/// heartbeats and refreshes the metrics, waking everything that watches them; a quiet group
/// needs none of that. A replica that leaves the role its timers went off in (a quiet
/// follower elected by a transfer) gets them back at the next interval (`tick_follower`).
fn set_timers(raft: &Raft<TypeConfig>, timers: Timers, on: bool) {
    let config = raft.runtime_config();
    match timers {
        Timers::Leader => config.heartbeat(on),
        Timers::Follower => config.elect(on),
    }
    config.tick(on);
}

/// Every member holds the whole log and has applied it here, with no membership change under
/// way: nothing for the leader to send.
fn settled(m: &RaftMetrics<NodeId, BasicNode>) -> bool {
    let last = m.last_log_index;
    let membership = m.membership_config.membership();
    let single = membership.get_joint_config().len() == 1;
    let applied = m.last_applied.map(|l| l.index) == last;
    let replicated = m.replication.as_ref().is_some_and(|r| {
        membership
            .nodes()
            .all(|(id, _)| *id == m.id || r.get(id).is_some_and(|l| l.map(|l| l.index) == last))
    });
    single && applied && replicated
}

/// A follower's patience without pings before it may campaign: the lease, plus up to
/// `election_min` spread over groups and nodes, so the followers of a dead leader's groups do
/// not all campaign in the same instant (split votes).
pub(crate) fn patience(
    lease: Duration,
    election_min: Duration,
    node: NodeId,
    group: u64,
) -> Duration {
    let spread = u64::try_from(election_min.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mix = (node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ group.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
    .rotate_left(29);
    lease + Duration::from_millis(mix % spread)
}

/// The liveness ping job of `host`, one per node (started with its first group, stopped with
/// the host): every heartbeat interval, decide each hosted group's quiet and ping every peer.
/// While every hosted group is quiet, a round every [`settled_interval`] is enough.
pub(crate) async fn run(host: RaftHost) {
    let (heartbeat, lease, _) = host.timing();
    // Peers with a ping in flight: a slow peer gets no second one meanwhile.
    let in_flight: Arc<Mutex<HashSet<NodeId>>> = Arc::default();
    let mut next = tokio::time::Instant::now() + heartbeat;
    loop {
        tokio::time::sleep_until(next).await;
        let settled = round(&host, &in_flight);
        let pause = if settled {
            settled_interval(heartbeat, lease)
        } else {
            heartbeat
        };
        next += pause;
        // Behind (a stalled runtime): start counting from now, as `MissedTickBehavior::Delay`.
        next = next.max(tokio::time::Instant::now());
    }
}

/// The pace of rounds while every hosted group is quiet: a quarter of a lease (never faster
/// than the heartbeat). Nothing is then waiting on a tick (no group counts idle intervals),
/// and the pings still arrive four times per lease: a quiet leader's quorum check wants an
/// answer within half a lease, a follower's patience is at least a lease, so one lost ping
/// changes neither.
pub(crate) fn settled_interval(heartbeat: Duration, lease: Duration) -> Duration {
    (lease / 4).max(heartbeat)
}

/// One interval: every group's quiet decided, then one ping per peer. Returns whether every
/// hosted group is quiet (led quiet here, or following a leader that holds it quiet).
fn round(host: &RaftHost, in_flight: &Arc<Mutex<HashSet<NodeId>>>) -> bool {
    let mut settled = true;
    let (heartbeat, lease, election_min) = host.timing();
    let me = host.node_id();
    let health = host.transport().peers().clone();
    // Each peer, its address, and what its ping lists.
    let mut peers: HashMap<NodeId, (String, Vec<QuietGroup>)> = HashMap::new();
    host.for_each_group(|group| {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        for (id, node) in membership.nodes() {
            if *id != me {
                peers
                    .entry(*id)
                    .or_insert_with(|| (node.addr.clone(), Vec::new()));
            }
        }
        // Every voter of every config (a joint one has two): no set built per group and round.
        let voters_answer = membership
            .get_joint_config()
            .iter()
            .flatten()
            .filter(|v| **v != me)
            .all(|v| health.answered_ping_within(*v, lease / 2));
        let listed = {
            // Held for the tick: the quiet starts only while nothing is in flight.
            let gate = group.gate.try_write();
            let tick = LeaderTick {
                gate_free: gate.is_ok(),
                voters_answer,
            };
            group.quiet.tick_leader(group.id.0, &m, tick, &group.raft)
        };
        if let Some(at) = listed {
            for (id, _) in membership.nodes() {
                if let Some((_, quiet)) = peers.get_mut(id) {
                    quiet.push(at);
                }
            }
        }
        let wait = patience(lease, election_min, me, group.id.0);
        group.quiet.tick_follower(
            &m,
            |leader| !health.pinged_within(leader, wait),
            &group.raft,
        );
        settled &= group.quiet.is_quiesced() || group.quiet.quiet_leader().is_some();
    });
    for (peer, (addr, quiet)) in peers {
        if !in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer)
        {
            continue;
        }
        let host = host.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let ping = Ping { from: me, quiet };
            match host
                .transport()
                .ping(peer, &addr, &ping, heartbeat * 2)
                .await
            {
                Ok(accepted) => {
                    for at in accepted {
                        if let Some(g) = host.group(GroupId(at.group)) {
                            g.quiet.accepted(peer, at);
                        }
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "liveness ping unanswered"),
            }
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        });
    }
    settled
}

impl RaftHost {
    /// A peer's liveness ping (see [`Ping`]): note it, accept the quiet of the groups it lists
    /// that this replica can hold quiet, and end the quiet of those it no longer lists.
    pub(crate) fn handle_ping(&self, body: &[u8]) -> Result<Vec<u8>, GroupError> {
        let ping: Ping =
            decode(body).map_err(|e| GroupError::BadRequest(format!("undecodable ping: {e}")))?;
        if ping.quiet.len() > MAX_PING_GROUPS {
            return Err(GroupError::BadRequest(format!(
                "a ping naming {} groups, at most {MAX_PING_GROUPS}",
                ping.quiet.len()
            )));
        }
        if ping.from == self.node_id() {
            return Err(GroupError::BadRequest(
                "a ping from this node itself".into(),
            ));
        }
        self.transport().peers().note_ping_received(ping.from);
        let listed: HashMap<u64, QuietGroup> = ping.quiet.iter().map(|q| (q.group, *q)).collect();
        let mut accepted = Vec::new();
        // One pass over the hosted groups: follow the quiet of those listed, end it for those
        // that this peer held quiet and no longer lists.
        self.for_each_group(|g| match listed.get(&g.id.0) {
            Some(at) => {
                let metrics = g.raft.metrics();
                if g.quiet.follow(ping.from, *at, &metrics.borrow(), &g.raft) {
                    accepted.push(*at);
                }
            }
            None if g.quiet.quiet_leader() == Some(ping.from) => g.quiet.unlisted(),
            None => {}
        });
        encode(&accepted).map_err(|e| GroupError::BadRequest(format!("encoding an answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_is_at_least_a_lease_and_spreads_over_groups() {
        let lease = Duration::from_millis(1000);
        let min = Duration::from_millis(500);
        let all: BTreeSet<Duration> = (0..64)
            .map(|g| patience(lease, min, NodeId(2), g))
            .collect();
        assert!(all.iter().all(|p| *p >= lease && *p < lease + min));
        assert!(all.len() > 32, "spread: {all:?}");
        assert_ne!(
            patience(lease, min, NodeId(2), 7),
            patience(lease, min, NodeId(3), 7)
        );
    }
}
