//! The figures of a bench run: what each worker tallies as it goes ([`Tally`]), and the
//! [`Report`] made from the merged tallies, written for people or as one JSON object.
//!
//! Latencies are recorded in microseconds and only for successful operations; failures are
//! counted by kind instead (`http_503`, `timeout`, `connect`, ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::bench::Op;
use crate::cli::Consistency;

/// Slowest latency told apart, in microseconds (one hour); slower ones are recorded as this.
const MAX_TRACKED_US: u64 = 3_600_000_000;
/// Widest `#` bar of the latency histogram.
const BAR_WIDTH: u64 = 40;

/// Counts and latencies of one worker, merged with the others' at the end.
#[derive(Debug, Clone)]
pub struct Tally {
    latency_us: Histogram<u64>,
    reads: u64,
    writes: u64,
    errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .expect("constant histogram bounds are valid"),
            reads: 0,
            writes: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Counts a successful operation that took `latency`.
    pub fn record_success(&mut self, op: Op, latency: Duration) {
        self.count(op);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
    }

    /// Counts a failed operation under `kind`.
    pub fn record_error(&mut self, op: Op, kind: String) {
        self.count(op);
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Adds `other`'s counts and latencies to this tally.
    pub fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")?;
        self.reads += other.reads;
        self.writes += other.writes;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        Ok(())
    }

    fn count(&mut self, op: Op) {
        match op {
            Op::Read => self.reads += 1,
            Op::Write => self.writes += 1,
        }
    }
}

/// What was run, repeated in the report so a saved JSON report stands on its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub endpoints: Vec<String>,
    pub concurrency: u32,
    pub keys: u64,
    pub value_size: u64,
    pub read_ratio: f64,
    pub consistency: Consistency,
    /// True when the load went through kv-client (leader routing, retries) rather than plain
    /// HTTP requests spread over the endpoints.
    pub via_client: bool,
}

/// Latency percentiles of successful operations, in milliseconds (to the microsecond).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One bar of the latency histogram: successful operations that took `from_ms <= t < to_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

/// The outcome of a bench run. `count = ok + errors = reads + writes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub workload: Workload,
    /// True when Ctrl-C stopped the run before its duration or request count.
    pub interrupted: bool,
    pub elapsed_secs: f64,
    /// Finished operations (successful or not) per second, to 2 decimals.
    pub ops_per_sec: f64,
    pub count: u64,
    pub ok: u64,
    pub errors: u64,
    /// Failures by kind: `http_<status>`, `timeout`, `connect`, `body`, `transport`,
    /// `bad_response`; through kv-client, its error kinds (`unavailable`, `timeout`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    pub reads: u64,
    pub writes: u64,
    /// `None` when no operation succeeded.
    pub latency_ms: Option<Latency>,
    /// Logarithmic buckets (1-2-5 steps) from the fastest to the slowest operation.
    pub histogram: Vec<Bucket>,
}

impl Report {
    /// The report of a run that finished `tally`'s operations in `elapsed`.
    pub fn new(workload: Workload, tally: &Tally, elapsed: Duration, interrupted: bool) -> Self {
        let hist = &tally.latency_us;
        let count = tally.reads + tally.writes;
        let errors = tally.errors.values().sum();
        let elapsed_secs = elapsed.as_secs_f64();
        let latency_ms = (!hist.is_empty()).then(|| Latency {
            min: ms(hist.min_nz()),
            mean: hist.mean().round() / 1000.0,
            p50: ms(hist.value_at_quantile(0.5)),
            p90: ms(hist.value_at_quantile(0.9)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        });
        Report {
            workload,
            interrupted,
            elapsed_secs,
            ops_per_sec: if elapsed_secs > 0.0 {
                (count as f64 / elapsed_secs * 100.0).round() / 100.0
            } else {
                0.0
            },
            count,
            ok: hist.len(),
            errors,
            error_kinds: tally.errors.clone(),
            reads: tally.reads,
            writes: tally.writes,
            latency_ms,
            histogram: buckets(hist),
        }
    }

    /// The report as one line of JSON.
    pub fn json(&self) -> anyhow::Result<String> {
        serde_json::to_string(self).context("encoding the report as JSON")
    }

    /// The report for people: figures, then the latency histogram.
    pub fn human(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        let endpoints = match w.endpoints.len() {
            1 => "1 endpoint".to_owned(),
            n => format!("{n} endpoints"),
        };
        let _ = writeln!(
            out,
            "workload    {} workers, {endpoints}, {} keys, {} B values, {:.0}% reads ({}){}",
            w.concurrency,
            w.keys,
            w.value_size,
            w.read_ratio * 100.0,
            match w.consistency {
                Consistency::Linearizable => "linearizable",
                Consistency::Stale => "stale",
            },
            if w.via_client { ", via kv-client" } else { "" },
        );
        let stopped = if self.interrupted {
            "  (interrupted)"
        } else {
            ""
        };
        let _ = writeln!(out, "elapsed     {:.2} s{stopped}", self.elapsed_secs);
        let _ = writeln!(out, "ops/s       {:.2}", self.ops_per_sec);
        let _ = writeln!(
            out,
            "count       {}  ({} reads, {} writes)",
            self.count, self.reads, self.writes
        );
        let _ = write!(out, "errors      {}", self.errors);
        if !self.error_kinds.is_empty() {
            let kinds: Vec<String> = self
                .error_kinds
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            let _ = write!(out, "  ({})", kinds.join(", "));
        }
        out.push('\n');
        match &self.latency_ms {
            None => out.push_str("latency     no successful operation\n"),
            Some(l) => {
                let _ = writeln!(
                    out,
                    "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
        }
        if !self.histogram.is_empty() {
            out.push_str("\nlatency histogram (ms)\n");
            let labels: Vec<(String, String)> = self
                .histogram
                .iter()
                .map(|b| (b.from_ms.to_string(), b.to_ms.to_string()))
                .collect();
            let from_width = labels.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
            let to_width = labels.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
            let peak = self.histogram.iter().map(|b| b.count).max().unwrap_or(0);
            for (bucket, (from, to)) in self.histogram.iter().zip(&labels) {
                let _ = writeln!(
                    out,
                    "  {from:>from_width$} - {to:<to_width$}  {:<width$}  {}",
                    "#".repeat(bar_len(bucket.count, peak)),
                    bucket.count,
                    width = usize::try_from(BAR_WIDTH).unwrap_or(40),
                );
            }
        }
        out.truncate(out.trim_end().len());
        out
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Length of the `#` bar for `count` when the tallest bucket holds `peak`; never empty for a
/// non-empty bucket.
fn bar_len(count: u64, peak: u64) -> usize {
    if count == 0 || peak == 0 {
        return 0;
    }
    let len = (count * BAR_WIDTH).div_ceil(peak).clamp(1, BAR_WIDTH);
    usize::try_from(len).unwrap_or(1)
}

/// 1, 2, 5, 10, 20, 50, ... (microseconds), up to 5e18.
fn one_two_five() -> impl Iterator<Item = u64> {
    (0..19u32).flat_map(|exp| [1, 2, 5].map(|m| m * 10u64.pow(exp)))
}

/// Buckets with 1-2-5 edges covering every recorded latency, the first holding the fastest
/// and the last the slowest.
fn buckets(hist: &Histogram<u64>) -> Vec<Bucket> {
    let recorded: Vec<(u64, u64)> = hist
        .iter_recorded()
        .map(|v| {
            (
                hist.lowest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            )
        })
        .collect();
    let (Some(&(fastest, _)), Some(&(slowest, _))) = (recorded.first(), recorded.last()) else {
        return Vec::new();
    };
    let series: Vec<u64> = one_two_five().collect();
    let first = series.iter().rposition(|&e| e <= fastest).unwrap_or(0);
    let last = series
        .iter()
        .position(|&e| e > slowest)
        .unwrap_or(series.len() - 1);
    let edges = &series[first..=last.max(first + 1)];
    let mut counts = vec![0u64; edges.len() - 1];
    let last_bucket = counts.len() - 1;
    for (value, count) in recorded {
        let index = edges.partition_point(|&e| e <= value).saturating_sub(1);
        counts[index.min(last_bucket)] += count;
    }
    edges
        .windows(2)
        .zip(counts)
        .map(|(edge, count)| Bucket {
            from_ms: ms(edge[0]),
            to_ms: ms(edge[1]),
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            endpoints: vec!["http://127.0.0.1:7001".to_owned()],
            concurrency: 4,
            keys: 100,
            value_size: 128,
            read_ratio: 0.25,
            consistency: Consistency::Linearizable,
            via_client: false,
        }
    }

    /// One write for each latency of 1..=1000 us, plus `errors` failed reads.
    fn tally(errors: u64) -> Tally {
        let mut tally = Tally::new();
        for micros in 1..=1000 {
            tally.record_success(Op::Write, Duration::from_micros(micros));
        }
        for _ in 0..errors {
            tally.record_error(Op::Read, "http_503".to_owned());
        }
        tally
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let report = Report::new(workload(), &tally(0), Duration::from_secs(2), false);
        let latency = report.latency_ms.clone().unwrap();
        assert_eq!(latency.min, 0.001);
        assert_eq!(latency.p50, 0.5);
        assert_eq!(latency.p90, 0.9);
        assert_eq!(latency.p99, 0.99);
        assert_eq!(latency.p999, 0.999);
        assert_eq!(latency.max, 1.0);
        // 500.5 us, rounded to whole microseconds.
        assert_eq!(latency.mean, 0.501);
        assert_eq!(report.count, 1000);
        assert_eq!(report.ok, 1000);
        assert_eq!(report.ops_per_sec, 500.0);
    }

    #[test]
    fn histogram_buckets_follow_1_2_5_steps_and_hold_every_success() {
        let report = Report::new(workload(), &tally(0), Duration::from_secs(1), false);
        let got: Vec<(f64, f64, u64)> = report
            .histogram
            .iter()
            .map(|b| (b.from_ms, b.to_ms, b.count))
            .collect();
        assert_eq!(
            got,
            [
                (0.001, 0.002, 1),
                (0.002, 0.005, 3),
                (0.005, 0.01, 5),
                (0.01, 0.02, 10),
                (0.02, 0.05, 30),
                (0.05, 0.1, 50),
                (0.1, 0.2, 100),
                (0.2, 0.5, 300),
                (0.5, 1.0, 500),
                (1.0, 2.0, 1),
            ]
        );
    }

    #[test]
    fn a_single_latency_gets_one_bucket() {
        let mut tally = Tally::new();
        tally.record_success(Op::Read, Duration::from_millis(3));
        let report = Report::new(workload(), &tally, Duration::from_secs(1), false);
        assert_eq!(
            report.histogram,
            [Bucket {
                from_ms: 2.0,
                to_ms: 5.0,
                count: 1
            }]
        );
    }

    #[test]
    fn merged_tallies_add_up() {
        let mut total = tally(2);
        total.merge(&tally(3)).unwrap();
        let report = Report::new(workload(), &total, Duration::from_secs(1), false);
        assert_eq!(report.count, 2005);
        assert_eq!(report.ok, 2000);
        assert_eq!(report.errors, 5);
        assert_eq!(report.error_kinds.get("http_503"), Some(&5));
        assert_eq!((report.reads, report.writes), (5, 2000));
        assert_eq!(report.latency_ms.unwrap().p50, 0.5);
    }

    #[test]
    fn json_has_one_object_with_the_figures() {
        let report = Report::new(workload(), &tally(2), Duration::from_secs(1), true);
        let text = report.json().unwrap();
        assert!(!text.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["count"], 1002);
        assert_eq!(json["ok"], 1000);
        assert_eq!(json["errors"], 2);
        assert_eq!(json["error_kinds"]["http_503"], 2);
        assert_eq!(json["reads"], 2);
        assert_eq!(json["writes"], 1000);
        assert_eq!(json["interrupted"], true);
        assert_eq!(json["ops_per_sec"], 1002.0);
        assert_eq!(json["elapsed_secs"], 1.0);
        for field in ["min", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_ms"][field].is_f64(), "latency_ms.{field}");
        }
        assert_eq!(json["latency_ms"]["p99"], 0.99);
        assert_eq!(json["histogram"][0]["from_ms"], 0.001);
        assert_eq!(json["histogram"][0]["count"], 1);
        assert_eq!(json["workload"]["consistency"], "linearizable");
        assert_eq!(json["workload"]["concurrency"], 4);
    }

    #[test]
    fn json_latency_is_null_when_nothing_succeeded() {
        let report = Report::new(workload(), &Tally::new(), Duration::ZERO, false);
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        assert!(json["latency_ms"].is_null());
        assert_eq!(json["histogram"], serde_json::json!([]));
        assert_eq!(json["ops_per_sec"], 0.0);
    }

    #[test]
    fn human_report_shows_figures_with_two_decimals_and_bars() {
        let report = Report::new(workload(), &tally(2), Duration::from_secs(1), false);
        let text = report.human();
        assert!(text.contains("ops/s       1002.00"), "{text}");
        assert!(
            text.contains("count       1002  (2 reads, 1000 writes)"),
            "{text}"
        );
        assert!(text.contains("errors      2  (http_503 2)"), "{text}");
        assert!(
            text.contains("p50 0.50  p90 0.90  p99 0.99  p99.9 1.00  max 1.00"),
            "{text}"
        );
        let bars: Vec<&str> = text.lines().filter(|l| l.contains('#')).collect();
        assert_eq!(bars.len(), 10, "{text}");
        // The fullest bucket (500) gets the whole width; the emptiest (1) still shows.
        assert!(bars[8].contains(&"#".repeat(40)), "{text}");
        assert!(bars[0].contains(" # "), "{text}");
    }

    #[test]
    fn human_report_says_when_nothing_succeeded() {
        let mut tally = Tally::new();
        tally.record_error(Op::Write, "connect".to_owned());
        let report = Report::new(workload(), &tally, Duration::from_secs(1), true);
        let text = report.human();
        assert!(text.contains("no successful operation"), "{text}");
        assert!(text.contains("(interrupted)"), "{text}");
        assert!(!text.contains('#'), "{text}");
    }
}
