//! Supervision of each group's Raft core. openraft stops a core for good when it panics or
//! meets a storage error (`Fatal`); without help the group would answer 503 until the process
//! restarts. Each hosted instance has a supervisor task that waits, on openraft's metrics, for
//! its core to stop; if the host did not stop it (shutdown, a closed group), the failure is
//! logged and recorded, and after a backoff the group is started again from what the store
//! holds, which Raft's recovery makes safe (the log and vote are durable). A failure that keeps
//! coming back is retried less and less often, and stays visible in [`RaftHost::failures`].

use std::time::{Duration, Instant};

use kv_storage::GroupId;

use crate::{Group, RaftHost};

/// A group whose Raft core stopped by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFailure {
    pub group: GroupId,
    /// Why the core stopped, as openraft reported it.
    pub error: String,
    /// Failures in a row (reset once the group has run for a minute without one).
    pub failures: u32,
    /// True from the failure until the group runs again.
    pub down: bool,
    at: Instant,
}

/// First pause before restarting a failed group; doubled per failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A group that ran this long since its last failure starts counting failures afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Watch `group`'s core until it stops; if it stopped by itself, start the group again and
/// watch the new instance. Ends when the group was stopped on purpose (shutdown, closed).
pub(crate) async fn supervise(host: RaftHost, mut group: Group) {
    let id = group.id;
    loop {
        // Woken by each change of the metrics: a look at them in place (openraft's `Wait`
        // would clone them and set a timer every time).
        let mut metrics = group.raft.metrics();
        let stopped = metrics
            .wait_for(|m| m.running_state.is_err())
            .await
            .map(|m| {
                m.running_state
                    .as_ref()
                    .err()
                    .map(|fatal| fatal.to_string())
            });
        let mut error = match stopped {
            Ok(fatal) => fatal.unwrap_or_else(|| "stopped".to_string()),
            // The core is gone without a word: it panicked.
            Err(_) => "the raft core ended (panicked)".to_string(),
        };
        if !host.is_current(&group) {
            return; // Stopped on purpose: shutdown, or the group was closed.
        }
        let mut old = Some(group.clone());
        group = loop {
            let failures = record(&host, id, &error);
            metrics::counter!("kv_raft_group_failures_total").increment(1);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(MAX_BACKOFF);
            tracing::error!(%id, error, failures, ?backoff, "raft core stopped; restarting the group");
            tokio::time::sleep(backoff).await;
            let _opening = host.lock_opening().await;
            if let Some(failed) = old.take() {
                if !host.remove_if_current(&failed) {
                    return; // Closed or replaced meanwhile.
                }
                let _ = failed.raft.shutdown().await;
            } else if host.group(id).is_some() {
                return; // Someone opened it meanwhile, and supervises it.
            }
            match host.start(id).await {
                Ok(restarted) => {
                    if let Some(f) = host
                        .failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&id)
                    {
                        f.down = false;
                    }
                    tracing::info!(%id, "group restarted after its raft core stopped");
                    break restarted;
                }
                Err(e) => error = format!("restarting failed: {e}"),
            }
        };
    }
}

/// Record a failure of `id`; returns the failures in a row.
fn record(host: &RaftHost, id: GroupId, error: &str) -> u32 {
    let mut all = host.failures.lock().unwrap_or_else(|p| p.into_inner());
    let failures = match all.get(&id) {
        Some(f) if f.at.elapsed() < HEALTHY_AFTER => f.failures + 1,
        _ => 1,
    };
    all.insert(
        id,
        GroupFailure {
            group: id,
            error: error.to_string(),
            failures,
            down: true,
            at: Instant::now(),
        },
    );
    failures
}
