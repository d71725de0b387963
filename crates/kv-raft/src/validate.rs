//! Checks on every peer RPC before openraft sees it. openraft trusts its peers: a message with a
//! term near `u64::MAX` makes its core overflow and panic (`term + 1` on the next election), on
//! every replica the message reaches and again after each restart, because the term is saved.
//! So terms and log indexes must stay far from overflow, log ids inside a message must be
//! consistent with each other, and nothing may claim a term above the message's own vote.
//!
//! Who may send a message at all is the transport's concern (peer authentication); these
//! checks bound what a message can do to a group whoever sent it.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, Vote};

use crate::types::TypeConfig;
use crate::GroupError;
use crate::NodeId;

/// Highest term a peer may name. A cluster that elects a leader every millisecond takes
/// ~8900 years to get here, and `u64` arithmetic on it cannot overflow.
pub(crate) const MAX_TERM: u64 = 1 << 48;
/// Highest log index a peer may name; as far from overflow.
pub(crate) const MAX_INDEX: u64 = 1 << 56;
/// Most entries in one AppendEntries (openraft's `max_payload_entries` is 512 here).
const MAX_ENTRIES: usize = 4096;

fn bad(what: String) -> GroupError {
    GroupError::BadRequest(what)
}

fn check_vote(vote: &Vote<NodeId>) -> Result<(), GroupError> {
    let term = vote.leader_id().term;
    if term > MAX_TERM {
        return Err(bad(format!("term {term} is out of range")));
    }
    match vote.leader_id().voted_for() {
        Some(NodeId(0)) | None => Err(bad("a vote must name a node".into())),
        Some(_) => Ok(()),
    }
}

/// A log id within bounds whose term is not above `term` (no leader can write an entry of a
/// term after its own).
fn check_log_id(log_id: &LogId<NodeId>, term: u64, what: &str) -> Result<(), GroupError> {
    if log_id.index > MAX_INDEX {
        return Err(bad(format!(
            "{what} index {} is out of range",
            log_id.index
        )));
    }
    if log_id.leader_id.term > term {
        return Err(bad(format!(
            "{what} of term {} is after the sender's term {term}",
            log_id.leader_id.term
        )));
    }
    Ok(())
}

pub(crate) fn append(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), GroupError> {
    check_vote(&req.vote)?;
    let term = req.vote.leader_id().term;
    if req.entries.len() > MAX_ENTRIES {
        return Err(bad(format!("{} entries in one message", req.entries.len())));
    }
    if let Some(prev) = &req.prev_log_id {
        check_log_id(prev, term, "prev_log_id")?;
    }
    if let Some(commit) = &req.leader_commit {
        check_log_id(commit, term, "leader_commit")?;
    }
    // Entries follow prev_log_id one index at a time, with terms that never go down.
    let first = req.prev_log_id.map_or(0, |p| p.index + 1);
    let mut last_term = req.prev_log_id.map_or(0, |p| p.leader_id.term);
    for (expected, entry) in (first..).zip(&req.entries) {
        check_log_id(&entry.log_id, term, "entry")?;
        if entry.log_id.index != expected {
            return Err(bad(format!(
                "entry index {} where {expected} was due",
                entry.log_id.index
            )));
        }
        if entry.log_id.leader_id.term < last_term {
            return Err(bad("entry terms go down".into()));
        }
        last_term = entry.log_id.leader_id.term;
    }
    Ok(())
}

pub(crate) fn vote(req: &VoteRequest<NodeId>) -> Result<(), GroupError> {
    check_vote(&req.vote)?;
    if let Some(last) = &req.last_log_id {
        check_log_id(last, req.vote.leader_id().term, "last_log_id")?;
    }
    Ok(())
}

pub(crate) fn snapshot(req: &InstallSnapshotRequest<TypeConfig>) -> Result<(), GroupError> {
    check_vote(&req.vote)?;
    let term = req.vote.leader_id().term;
    if let Some(last) = &req.meta.last_log_id {
        check_log_id(last, term, "snapshot")?;
    }
    if let Some(m) = req.meta.last_membership.log_id() {
        check_log_id(m, term, "snapshot membership")?;
    }
    if req.meta.snapshot_id.len() > 256 {
        return Err(bad("snapshot id longer than 256 bytes".into()));
    }
    if req.offset > MAX_INDEX {
        return Err(bad(format!(
            "snapshot offset {} is out of range",
            req.offset
        )));
    }
    Ok(())
}

pub(crate) fn timeout_now_term(term: u64) -> Result<(), GroupError> {
    if term > MAX_TERM {
        return Err(bad(format!("term {term} is out of range")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, NodeId(1)), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn request(
        term: u64,
        prev: Option<(u64, u64)>,
        entries: Vec<Entry<TypeConfig>>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, NodeId(1)),
            prev_log_id: prev.map(|(t, i)| log_id(t, i)),
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn appends_near_overflow_or_inconsistent_are_refused() {
        assert!(append(&request(5, Some((4, 9)), vec![entry(5, 10), entry(5, 11)])).is_ok());
        assert!(append(&request(5, None, vec![entry(1, 0), entry(5, 1)])).is_ok());
        assert!(
            append(&request(u64::MAX - 1, None, vec![])).is_err(),
            "term near u64::MAX"
        );
        assert!(append(&request(MAX_TERM + 1, None, vec![])).is_err());
        assert!(
            append(&request(5, Some((6, 9)), vec![])).is_err(),
            "prev term after vote"
        );
        assert!(
            append(&request(5, Some((4, 9)), vec![entry(5, 11)])).is_err(),
            "index gap"
        );
        assert!(
            append(&request(5, Some((4, 9)), vec![entry(6, 10)])).is_err(),
            "entry term after vote"
        );
        assert!(
            append(&request(5, Some((4, 9)), vec![entry(3, 10)])).is_err(),
            "terms go down"
        );
        assert!(
            append(&request(5, Some((4, u64::MAX)), vec![])).is_err(),
            "index near overflow"
        );
        let mut anonymous = request(5, None, vec![]);
        anonymous.vote = Vote::new_committed(5, NodeId(0));
        assert!(append(&anonymous).is_err(), "node 0 does not exist");
    }

    #[test]
    fn votes_near_overflow_are_refused() {
        let ok = VoteRequest {
            vote: Vote::new(7, NodeId(2)),
            last_log_id: Some(log_id(6, 100)),
        };
        assert!(vote(&ok).is_ok());
        let huge = VoteRequest {
            vote: Vote::new(u64::MAX - 1, NodeId(2)),
            last_log_id: None,
        };
        assert!(vote(&huge).is_err());
        let ahead = VoteRequest {
            vote: Vote::new(7, NodeId(2)),
            last_log_id: Some(log_id(8, 1)),
        };
        assert!(vote(&ahead).is_err(), "log of a term after the candidate's");
        assert!(timeout_now_term(u64::MAX).is_err());
        assert!(timeout_now_term(3).is_ok());
    }
}
