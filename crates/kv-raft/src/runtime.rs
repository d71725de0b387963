//! openraft's async runtime for every group: tokio, but with the groups' tick timers coalesced.
//!
//! Each openraft 0.9 instance runs a tick loop that sleeps one tick interval (1.5 heartbeats)
//! and then, if its ticks are on, nudges the Raft core. The loop wakes even while the ticks
//! are off (a quiet group, see `quiesce`), and a node hosting many groups has as many loops,
//! each on its own phase: every wake-up of each is a wake-up of a worker thread, which on an
//! idle node costs more than everything else it does.
//!
//! So [`KvRuntime::sleep_until`], which openraft 0.9 uses only in that loop, moves the deadline
//! to the nearest multiple of the sleep's own length (whole milliseconds, counted from a
//! process-wide epoch): all groups' loops then wake at the same instants, one worker wake-up for
//! all of them. The interval between ticks is unchanged; only the first tick of a loop moves, by
//! at most half an interval. Every other timer is tokio's, untouched.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};

/// [`openraft::TokioRuntime`] with tick timers on a shared grid (see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KvRuntime;

/// The instant every grid is counted from.
fn epoch() -> TokioInstant {
    static EPOCH: OnceLock<TokioInstant> = OnceLock::new();
    *EPOCH.get_or_init(TokioInstant::now)
}

/// `deadline`, set `now` for a sleep of its length, moved to the nearest multiple of that
/// length (rounded to whole milliseconds) since `epoch`.
fn on_grid(epoch: TokioInstant, now: TokioInstant, deadline: TokioInstant) -> TokioInstant {
    let length = deadline.saturating_duration_since(now);
    let step = Duration::from_millis(u64::try_from((length.as_micros() + 500) / 1000).unwrap_or(0));
    if step.is_zero() || deadline < epoch {
        return deadline;
    }
    let since = (deadline - epoch).as_micros();
    let step_us = step.as_micros();
    let steps = (since + step_us / 2) / step_us;
    let Ok(steps) = u32::try_from(steps) else {
        return deadline;
    };
    epoch + step * steps
}

impl AsyncRuntime for KvRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = <TokioRuntime as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        let epoch = epoch();
        tokio::time::sleep_until(on_grid(epoch, TokioInstant::now(), deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        TokioRuntime::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(150);

    /// The tick instants of a loop started at `start` whose timer fires `late` after each
    /// deadline, as timers do.
    fn ticks(epoch: TokioInstant, start: TokioInstant, late: Duration) -> Vec<TokioInstant> {
        let mut now = start;
        let mut ticks = Vec::new();
        for _ in 0..5 {
            let next = on_grid(epoch, now, now + TICK);
            assert!(next >= now + TICK / 2 && next <= now + TICK * 3 / 2);
            ticks.push(next);
            now = next + late;
        }
        ticks
    }

    #[test]
    fn loops_started_apart_tick_together_and_keep_their_interval() {
        let epoch = TokioInstant::now();
        let a = ticks(
            epoch,
            epoch + Duration::from_millis(37),
            Duration::from_micros(900),
        );
        let b = ticks(
            epoch,
            epoch + Duration::from_micros(251_300),
            Duration::from_micros(1_700),
        );
        for pair in a.windows(2).chain(b.windows(2)) {
            assert_eq!(pair[1] - pair[0], TICK, "the interval is unchanged");
        }
        assert_eq!(
            a[2..],
            b[..3],
            "after their first ticks, one wake-up for both"
        );
    }

    #[test]
    fn a_deadline_that_is_due_stays_due() {
        let epoch = TokioInstant::now();
        let now = epoch + Duration::from_millis(500);
        assert_eq!(on_grid(epoch, now, now), now);
        let past = now - Duration::from_millis(3);
        assert_eq!(on_grid(epoch, now, past), past);
    }
}
