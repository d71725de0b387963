//! Log compaction on demand, ahead of adding a replica.
//!
//! openraft finds where a new replica's log matches the leader's by binary search, and every
//! probe carries a full batch of entries that the empty replica then rejects: a learner added to
//! a group with a long log receives that log several times over. Snapshotting and purging the
//! log first makes the leader send the state as one snapshot (the live data and the recent
//! change history, not every entry of the log) followed by the short tail written since. The
//! purge leaves that much history in place (`LogStore::keeping_history`) and the snapshot
//! carries it (`StateMachine::keeping_history`): a recent watch cursor stays valid on every
//! replica, the new one included.

use std::time::Duration;

use crate::NodeId;
use crate::{Group, GroupError};

impl Group {
    /// Snapshot everything applied so far and purge the log up to that snapshot. Returns the
    /// snapshot's log index (`None` for a group that has applied nothing). Gives up waiting
    /// after `timeout`, which is not an error: the purge then happens a little later, once
    /// replication to the followers has moved past the purged entries.
    pub async fn compact_log(&self, timeout: Duration) -> Result<Option<u64>, GroupError> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        let Some(applied) = applied else {
            return Ok(None);
        };
        let stopped = |e: openraft::error::Fatal<NodeId>| GroupError::Stopped(e.to_string());
        let snapshot_at =
            |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| m.snapshot.map(|l| l.index);
        if snapshot_at(&self.raft.metrics().borrow()) < Some(applied) {
            self.raft.trigger().snapshot().await.map_err(stopped)?;
        }
        let waited = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| snapshot_at(m) >= Some(applied),
                "snapshot of the applied state",
            )
            .await;
        let Ok(metrics) = waited else {
            return Ok(snapshot_at(&self.raft.metrics().borrow()));
        };
        let Some(index) = snapshot_at(&metrics) else {
            return Ok(None);
        };
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(stopped)?;
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.purged.map(|l| l.index) >= Some(index),
                "log purged up to the snapshot",
            )
            .await;
        Ok(Some(index))
    }
}
