//! The live progress line on stderr while a bench runs: operations done and the current rate.
//! It is drawn only when stderr is a terminal.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::bench::Stop;

const TICK: Duration = Duration::from_millis(200);
/// The "current" rate is measured over about this many past ticks.
const RATE_WINDOW_TICKS: usize = 5;

/// Live counters the workers bump after every operation and the progress line reads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Operations finished, successful or not.
    pub done: AtomicU64,
    /// Operations that failed.
    pub errors: AtomicU64,
}

/// The progress line and the task that redraws it; [`Progress::finish`] stops both.
pub struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts redrawing the line, unless `wanted` is false or stderr is not a terminal.
    pub fn start(stop: Stop, counters: Arc<Counters>, wanted: bool) -> Self {
        if !wanted || !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let (len, template) = match stop {
            Stop::Requests(requests) => (requests, "{bar:40.cyan/blue} {pos}/{len} ops  {msg}"),
            Stop::After(duration) => (millis(duration), "{bar:40.cyan/blue} {msg}"),
        };
        let style = ProgressStyle::with_template(template)
            .expect("the progress templates are constant and valid")
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(style);
        let ticker = tokio::spawn(redraw(bar.clone(), stop, counters));
        Progress {
            bar,
            ticker: Some(ticker),
        }
    }

    /// Stops redrawing and erases the line, so the report starts on a clean screen.
    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

async fn redraw(bar: ProgressBar, stop: Stop, counters: Arc<Counters>) {
    let started = Instant::now();
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::with_capacity(RATE_WINDOW_TICKS + 1);
    samples.push_back((started, 0));
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let now = Instant::now();
        let done = counters.done.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        samples.push_back((now, done));
        if samples.len() > RATE_WINDOW_TICKS + 1 {
            samples.pop_front();
        }
        let rate = match samples.front() {
            Some(&(then, done_then)) if now > then => {
                done.saturating_sub(done_then) as f64 / (now - then).as_secs_f64()
            }
            _ => 0.0,
        };
        match stop {
            Stop::Requests(_) => {
                bar.set_position(done);
                bar.set_message(format!("{rate:.0} ops/s  {errors} errors"));
            }
            Stop::After(duration) => {
                let elapsed = now - started;
                bar.set_position(millis(elapsed.min(duration)));
                bar.set_message(format!(
                    "{done} ops  {rate:.0} ops/s  {errors} errors  {:.0}/{:.0}s",
                    elapsed.as_secs_f64(),
                    duration.as_secs_f64()
                ));
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
