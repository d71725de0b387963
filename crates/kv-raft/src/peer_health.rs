//! What this node knows of each peer's reachability, from the Raft traffic it already has: an
//! answered RPC or an RPC received from a peer shows the peer is reachable; RPCs that keep
//! failing (refused, timed out) show it is not. Routing uses it to stop sending requests to a
//! peer it cannot reach, and to tell "an election is under way" (wait for the new leader) from
//! "this node is cut off from a quorum" (answer 503 at once).
//!
//! It is a hint, never a safety input: Raft's own rules decide who leads and what commits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::NodeId;

/// Per-peer contact record, shared by every group of a node.
#[derive(Debug)]
pub struct PeerHealth {
    /// How long RPCs to a peer must keep failing, with nothing heard from it meanwhile, before
    /// the peer counts as unreachable. One timed-out heartbeat on a busy machine is not enough.
    down_after: Duration,
    peers: Mutex<HashMap<NodeId, Contact>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Contact {
    /// When RPCs to the peer started failing, with no success since; `None` while they succeed.
    failing_since: Option<Instant>,
    /// When the latest liveness ping the peer answered was sent (see `quiesce`).
    answered_ping_sent: Option<Instant>,
    /// When the latest liveness ping from the peer arrived.
    ping_received: Option<Instant>,
}

impl PeerHealth {
    /// A record in which every peer is reachable until RPCs to it fail for `down_after`.
    pub fn new(down_after: Duration) -> Self {
        PeerHealth {
            down_after,
            peers: Mutex::default(),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Contact>> {
        // Single-field updates cannot leave a record half-written: a poisoned lock is usable.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer answered an RPC, or sent one.
    pub fn note_ok(&self, peer: NodeId) {
        let mut peers = self.peers();
        let contact = peers.entry(peer).or_default();
        contact.failing_since = None;
    }

    /// An RPC to the peer failed at the transport level (refused, reset, timed out).
    pub fn note_failure(&self, peer: NodeId) {
        let mut peers = self.peers();
        let contact = peers.entry(peer).or_default();
        contact.failing_since.get_or_insert_with(Instant::now);
    }

    /// The peer answered a liveness ping sent at `sent`.
    pub(crate) fn note_ping_answered(&self, peer: NodeId, sent: Instant) {
        let mut peers = self.peers();
        let contact = peers.entry(peer).or_default();
        contact.failing_since = None;
        if contact.answered_ping_sent.is_none_or(|at| at < sent) {
            contact.answered_ping_sent = Some(sent);
        }
    }

    /// A liveness ping from the peer arrived.
    pub(crate) fn note_ping_received(&self, peer: NodeId) {
        let mut peers = self.peers();
        let contact = peers.entry(peer).or_default();
        contact.failing_since = None;
        contact.ping_received = Some(Instant::now());
    }

    /// Whether the peer answered a ping sent within `within` from now.
    pub(crate) fn answered_ping_within(&self, peer: NodeId, within: Duration) -> bool {
        self.peers()
            .get(&peer)
            .and_then(|c| c.answered_ping_sent)
            .is_some_and(|at| at.elapsed() <= within)
    }

    /// Whether a ping from the peer arrived within `within` from now.
    pub(crate) fn pinged_within(&self, peer: NodeId, within: Duration) -> bool {
        self.peers()
            .get(&peer)
            .and_then(|c| c.ping_received)
            .is_some_and(|at| at.elapsed() <= within)
    }

    /// Whether the peer may be reached: false once RPCs to it have failed for `down_after`
    /// with nothing heard from it since. Peers never contacted are reachable.
    pub fn reachable(&self, peer: NodeId) -> bool {
        self.peers()
            .get(&peer)
            .and_then(|c| c.failing_since)
            .is_none_or(|since| since.elapsed() < self.down_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_down_only_after_failing_for_a_while_and_up_again_on_contact() {
        let patient = PeerHealth::new(Duration::from_secs(60));
        assert!(patient.reachable(NodeId(2)), "never contacted");
        patient.note_failure(NodeId(2));
        assert!(
            patient.reachable(NodeId(2)),
            "failing for less than the threshold"
        );

        let strict = PeerHealth::new(Duration::ZERO);
        strict.note_failure(NodeId(2));
        assert!(!strict.reachable(NodeId(2)));
        assert!(strict.reachable(NodeId(3)), "other peers are unaffected");
        strict.note_ok(NodeId(2));
        assert!(strict.reachable(NodeId(2)), "heard from again");
    }
}
