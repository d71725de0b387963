//! When to try again: a total [`Deadline`] per call and an exponential [`Backoff`] with jitter
//! between attempts, plus which answers are worth retrying at all.
//!
//! A `503`'s `Retry-After: 1` is not waited for: an election takes a few hundred milliseconds,
//! and a backoff from 10 ms finds the new leader sooner.

use std::time::Duration;

use rand::Rng as _;
use reqwest::StatusCode;
use tokio::time::Instant;

/// First pause between attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// The instant a call gives up; every attempt and pause fits before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }

    /// Time left, zero once passed.
    pub(crate) fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub(crate) fn passed(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Pauses that double from [`FIRST_PAUSE`] up to [`MAX_PAUSE`]; each is drawn uniformly from
/// its upper half, so clients that failed together do not retry together.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            ceiling: FIRST_PAUSE,
        }
    }

    /// The next pause.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(MAX_PAUSE);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// Sleeps the next pause, unless it would end past `deadline`: then returns false at once.
    pub(crate) async fn wait(&mut self, deadline: Deadline) -> bool {
        let pause = self.next_pause();
        if pause >= deadline.remaining() {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }
}

/// Answers that may succeed when asked again (perhaps of another node): no leader or quorum
/// yet, a proxy that could not reach the node, a stale routing view, overload.
pub(crate) fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::MISDIRECTED_REQUEST
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new();
        let mut ceiling = FIRST_PAUSE;
        for _ in 0..12 {
            let pause = backoff.next_pause();
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "{pause:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_PAUSE);
        }
        assert_eq!(backoff.ceiling, MAX_PAUSE);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for status in [503, 502, 504, 421, 408, 429] {
            assert!(
                is_retryable(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 400, 404, 405, 412, 413, 500] {
            assert!(
                !is_retryable(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_pause_past_the_deadline_is_not_taken() {
        let mut backoff = Backoff::new();
        assert!(!backoff.wait(Deadline::after(Duration::ZERO)).await);
    }
}
