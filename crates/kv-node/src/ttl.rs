//! Time to live, as requests carry it (`?ttl=30s`) and as the partition leader's clock reads
//! it: the leader turns a TTL into a deadline (unix milliseconds) in the command it proposes,
//! so every replica agrees on it (see `kv_raft::Command::TimedPut`); reads decide by the
//! leader's clock whether a key with a deadline still lives; the expirer
//! (`control::expiry`) proposes the removal of keys whose deadline has passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_client::api::{MAX_TTL, MIN_TTL};

use crate::error::ApiError;

/// This node's clock, in unix milliseconds: what a leader puts in the commands it proposes.
/// Never goes back, even if the system clock is set back: a later command must not see a key
/// live again that an earlier one saw expired.
pub fn now_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    LAST.fetch_max(wall, Ordering::Relaxed).max(wall)
}

/// A `?ttl=` value: a duration (`30s`, `1500ms`, `2m`) from [`MIN_TTL`] to [`MAX_TTL`], in
/// milliseconds.
pub fn parse(text: &str) -> Result<u64, ApiError> {
    let ttl = kv_client::api::parse_duration(text)
        .ok()
        .filter(|ttl| (MIN_TTL..=MAX_TTL).contains(ttl))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_ttl",
                format!(
                    "ttl={text:?} is not a duration like 30s or 1500ms from {}s to {} days",
                    MIN_TTL.as_secs(),
                    MAX_TTL.as_secs() / 86_400
                ),
            )
        })?;
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `ttl_ms` is a time to live a request may carry (for operations from peers).
pub fn valid(ttl_ms: u64) -> bool {
    (MIN_TTL..=MAX_TTL).contains(&Duration::from_millis(ttl_ms))
}

/// The seconds a key with deadline `expires_at` has left at `now` (both unix ms), rounded up:
/// what `X-KV-TTL-Remaining` says.
pub fn remaining_secs(expires_at: u64, now: u64) -> u64 {
    expires_at.saturating_sub(now).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_within_bounds_and_round_up_when_shown() {
        assert_eq!(parse("30s").unwrap(), 30_000);
        assert_eq!(parse("1500ms").unwrap(), 1_500);
        for bad in ["0s", "999ms", "400d", "30", "soon", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(valid(1_000) && !valid(999) && !valid(u64::MAX));
        assert_eq!(remaining_secs(10_001, 9_000), 2);
        assert_eq!(remaining_secs(10_000, 9_000), 1);
        assert_eq!(remaining_secs(9_000, 10_000), 0);
    }
}
