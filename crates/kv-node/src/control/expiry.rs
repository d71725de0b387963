//! The expirer: on every partition this node leads, the keys whose deadline has passed are
//! removed through the log. For each, it proposes `Expire { key, version, now }` with the
//! version it saw and its clock; the entry removes the key only if it still has that version
//! and a deadline at or before that `now`, so a key rewritten or refreshed in between survives
//! (`kv_raft::Command::Expire`). Until then, reads already hide the key (see `crate::ttl`).
//!
//! A new leader expires nothing until it has led for one leader lease (the election timeout's
//! upper bound): the old leader may still be answering within its lease, and waiting longer
//! than it keeps a key from being expired early by the new leader's clock (as etcd extends
//! every lease by an election timeout when leadership changes). A key's deadline is kept
//! within that lease plus one round of this job.

use std::collections::HashMap;
use std::time::Duration;

use kv_raft::{Command, GroupId};
use kv_ring::PartitionId;
use tokio::time::Instant;

use crate::layout::group_of;
use crate::state::AppState;

/// Most keys one partition expires in one round (the rest in the next, at once).
const EXPIRE_BATCH: usize = 256;

/// When nothing woke the job: a leadership this node gained (no event here shows it) is
/// noticed within this long.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Expire due keys on the partitions this node leads until `stop` turns true. Woken by the
/// earliest deadline it knows of, by a write this node led that gave a key a deadline
/// (`AppState::expiry`), or by the safety-net re-check.
pub(super) async fn run(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let lease = st.config.raft.election_max;
    // Since when this node has led each group, in which term.
    let mut leading: HashMap<GroupId, (u64, Instant)> = HashMap::new();
    loop {
        let now = Instant::now();
        let mut wake = now + RECHECK_EVERY;
        let layout = st.layout();
        for p in (0..layout.partitions()).map(PartitionId) {
            let id = group_of(p);
            let Some(group) = st.host.group(id).filter(|g| g.is_leader()) else {
                leading.remove(&id);
                continue;
            };
            let term = group.metrics().borrow().current_term;
            let since = match leading.get(&id) {
                Some((t, since)) if *t == term => *since,
                _ => {
                    leading.insert(id, (term, now));
                    now
                }
            };
            let next = match group.next_deadline().await {
                Ok(Some(deadline)) => deadline,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(partition = p.0, error = %e, "expiry: reading deadlines");
                    continue;
                }
            };
            let wall = crate::ttl::now_ms();
            let due = now + Duration::from_millis(next.saturating_sub(wall));
            let at = due.max(since + lease);
            if at > now {
                wake = wake.min(at);
                continue;
            }
            match expire_due(&group, wall).await {
                // More may be due: go round again at once.
                Ok(n) if n == EXPIRE_BATCH => wake = now,
                Ok(_) => {}
                Err(e) => tracing::debug!(partition = p.0, error = %e, "expiry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = st.expiry.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Propose the expiry of up to [`EXPIRE_BATCH`] keys of `group` due at `now` (unix ms), all at
/// once (the group batches them into few entries); how many were due.
async fn expire_due(group: &kv_raft::Group, now: u64) -> Result<usize, kv_raft::GroupError> {
    let due = group.expired(now, EXPIRE_BATCH).await?;
    let n = due.len();
    let proposals = due
        .into_iter()
        .map(|(key, version)| group.write(Command::Expire { key, version, now }));
    for result in futures::future::join_all(proposals).await {
        match result {
            Ok((outcome, _)) => {
                if matches!(outcome, kv_raft::Outcome::Expired { .. }) {
                    metrics::counter!("kv_keys_expired_total").increment(1);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
