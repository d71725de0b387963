//! The node's log: `tracing` to stderr, filtered by `--log` / `RUST_LOG`, with each log
//! statement limited to a burst and then a steady rate. A node under attack or overload would
//! otherwise write the same line hundreds of thousands of times a minute (openraft logs every
//! failed leadership confirmation) and fill the disk; the count of dropped lines is the
//! `kv_log_lines_suppressed_total` metric.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Lines one log statement may write at once, and per second after that.
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 10.0;

/// A token bucket per log statement.
#[derive(Default)]
pub struct RateLimit {
    buckets: Mutex<HashMap<Identifier, (f64, Instant)>>,
}

impl RateLimit {
    /// Whether the statement at `callsite` may write a line now.
    pub fn allow(&self, callsite: Identifier) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = buckets.entry(callsite).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * PER_SECOND).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            metrics::counter!("kv_log_lines_suppressed_total").increment(1);
            false
        }
    }
}

/// Install the node's logger: `RUST_LOG` if set, else `filter` (EnvFilter syntax).
pub fn init(filter: &str) {
    let env = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let limit = RateLimit::default();
    // Spans pass; events are rate-limited per statement.
    let rate = DynFilterFn::new(move |meta, _| !meta.is_event() || limit.allow(meta.callsite()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(rate)
        .with_filter(env);
    tracing_subscriber::registry().with(fmt).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_gets_its_burst_then_is_held_back() {
        struct Site;
        static SITE: Site = Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!()
            }
        }
        let limit = RateLimit::default();
        let id = Identifier(&SITE);
        let allowed = (0..1000).filter(|_| limit.allow(id.clone())).count();
        // The burst, and whatever refilled while the loop ran (well under a second).
        assert!((50..60).contains(&allowed), "{allowed}");
    }
}
