//! Lease reads: a leader that a quorum acknowledged a moment ago answers a linearizable read
//! from its own state, without another heartbeat round (etcd's `ReadOnlyLeaseBased`, TiKV's
//! lease read).
//!
//! **Why it is safe.** A follower that accepted a heartbeat or append from the leader refuses
//! every vote request for openraft's leader lease (`election_timeout_max`) after it got it. A
//! confirmation round (see `read_index`) that starts at `t` and succeeds has had a quorum
//! accept heartbeats sent after `t`, so no other leader can be elected before
//! `t + election_timeout_max`. This leader holds a lease until `t + election_timeout_min`
//! (half as long with the default timeouts): the difference is the margin for the two clocks'
//! rates. While the lease holds no other replica can commit anything, so the commit index this
//! leader holds covers every write acknowledged anywhere.
//!
//! **When it does not.** A lease belongs to one term: any change of term or role ends it. The
//! leader's own vote is the exception to openraft's lease (openraft never renews a leader's
//! vote timestamp, so a leader a lease past its election grants a vote to an up-to-date
//! candidate, as leadership transfer relies on): a vote request of a later term ends the lease
//! before openraft sees it. A leadership transfer holds the group's gate, and a lease read
//! needs the gate free. A restarted leader that has not yet applied its log again
//! (check-quorum's recovery floor) reads through rounds.
//!
//! **At which index.** A lease read waits until this replica has applied the commit index its
//! Raft core holds at the time of the read, not just its own applied index: a follower may
//! apply an entry before the leader does, and a read there must not be followed by an older
//! one here. A leader that has applied its whole log needs no such question to its core: what
//! it commits is in its log, so the log's last index covers the commit index.
//!
//! **Renewal.** Rounds renew the lease; a lease read made when less than half of it is left
//! starts one in the background, so a steady stream of reads keeps it fresh and almost never
//! waits for a round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One group's leader lease. Shared by the group's clones.
#[derive(Debug)]
pub(crate) struct LeaderLease {
    /// How long after the start of a successful round the lease holds.
    length: Duration,
    /// The term and the instant until which the lease holds.
    until: Mutex<Option<(u64, Instant)>>,
    /// A renewal round is under way.
    renewing: AtomicBool,
}

/// What [`LeaderLease::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Holds, with plenty left.
    Holds,
    /// Holds, but a renewal should start now.
    Renew,
    /// Does not hold: confirm leadership with a round.
    Lapsed,
}

impl LeaderLease {
    pub(crate) fn new(length: Duration) -> Self {
        LeaderLease {
            length,
            until: Mutex::new(None),
            renewing: AtomicBool::new(false),
        }
    }

    fn until(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        // A plain value, replaced whole: a poisoned lock is still usable.
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A round that started at `started` confirmed this replica's leadership in `term`.
    pub(crate) fn confirmed(&self, term: u64, started: Instant) {
        let until = started + self.length;
        let mut held = self.until();
        match *held {
            Some((t, u)) if t == term && u >= until => {}
            _ => *held = Some((term, until)),
        }
    }

    /// Whether the lease holds now for a leader in `term`.
    pub(crate) fn check(&self, term: u64) -> Lease {
        let now = Instant::now();
        match *self.until() {
            Some((t, until)) if t == term && now < until => {
                if until - now < self.length / 2 {
                    Lease::Renew
                } else {
                    Lease::Holds
                }
            }
            _ => Lease::Lapsed,
        }
    }

    /// Claim the renewal (false if one is already under way); [`LeaderLease::renewed`] ends it.
    pub(crate) fn start_renewal(&self) -> bool {
        !self.renewing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn renewed(&self) {
        self.renewing.store(false, Ordering::Release);
    }

    /// End the lease at once (a transfer is about to start).
    pub(crate) fn end(&self) {
        *self.until() = None;
    }

    /// A candidate of `term` asks this replica for its vote: end a lease of an earlier term
    /// first. A leader's own vote is not held back by openraft's lease (it never renews it), so
    /// granting it could elect someone else while this lease still looked valid.
    pub(crate) fn end_before(&self, term: u64) {
        let mut held = self.until();
        if held.is_some_and(|(t, _)| t < term) {
            *held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_its_term_until_its_length_after_the_round_started() {
        let lease = LeaderLease::new(Duration::from_secs(60));
        assert_eq!(lease.check(3), Lease::Lapsed);
        lease.confirmed(3, Instant::now());
        assert_eq!(lease.check(3), Lease::Holds);
        assert_eq!(lease.check(4), Lease::Lapsed, "another term");
        // An older round does not shorten it.
        lease.confirmed(3, Instant::now() - Duration::from_secs(50));
        assert_eq!(lease.check(3), Lease::Holds);
        lease.end();
        assert_eq!(lease.check(3), Lease::Lapsed);
        // A vote request of a later term ends it; one of its own term does not.
        lease.confirmed(3, Instant::now());
        lease.end_before(3);
        assert_eq!(lease.check(3), Lease::Holds);
        lease.end_before(4);
        assert_eq!(lease.check(3), Lease::Lapsed);
        // A round that started long ago gives a lease nearly over: renew it.
        lease.confirmed(3, Instant::now() - Duration::from_secs(40));
        assert_eq!(lease.check(3), Lease::Renew);
        lease.confirmed(3, Instant::now() - Duration::from_secs(61));
        assert_eq!(
            lease.check(3),
            Lease::Renew,
            "the newer of the two rounds counts"
        );
        let stale = LeaderLease::new(Duration::from_secs(1));
        stale.confirmed(1, Instant::now() - Duration::from_secs(2));
        assert_eq!(stale.check(1), Lease::Lapsed);
    }

    #[test]
    fn one_renewal_at_a_time() {
        let lease = LeaderLease::new(Duration::from_secs(1));
        assert!(lease.start_renewal());
        assert!(!lease.start_renewal());
        lease.renewed();
        assert!(lease.start_renewal());
    }
}
