//! `kv bench`: drive load against the cluster and measure it.
//!
//! `concurrency` workers share one HTTP client. Each loops with one request in flight: pick a
//! random key, then PUT a value or GET it (by `read_ratio`), spreading its requests round-robin
//! over the endpoints (the nodes forward to partition leaders). With `--via-client` the
//! workers share one `kv_client::Client` instead, which sends each request to its partition's
//! leader and retries transient failures, so the two paths can be compared. Each worker keeps its own [`Tally`] (no shared lock per operation); the
//! tallies are merged into one [`Report`] when the run stops: at the duration, after the
//! request count, or on Ctrl-C, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use rand::distr::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::{header, Client, StatusCode};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::Consistency;
use crate::duration;
use crate::endpoints::{self, Endpoint};
use crate::error::CliError;
use crate::progress::{Counters, Progress};
use crate::report::{Report, Tally, Workload};

/// How long a run lasts when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Largest `--value-size`: every worker shares one value buffer, but the server holds them all.
const MAX_VALUE_SIZE: u64 = 1 << 30;

/// Flags of `kv bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Stop after this long, e.g. 10s, 500ms, 2m [default: 10s unless --requests is given].
    #[arg(long, value_parser = duration::parse_positive, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Stop after this many requests instead of after a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Size of the key space: keys are `<key-prefix>0` to `<key-prefix><keys - 1>`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// Bytes in each written value.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(0..=MAX_VALUE_SIZE))]
    pub value_size: u64,

    /// Fraction of operations that are reads: 0.0 only writes, 1.0 only reads.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Prefix of every key the benchmark touches.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,

    /// Consistency asked of reads.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,

    /// Send the load through kv-client (straight to partition leaders, with retries and
    /// failover) instead of plain HTTP requests spread round-robin over the endpoints.
    #[arg(long)]
    pub via_client: bool,

    /// Take keys in order (`0`, `1`, ...) instead of at random, wrapping at `--keys`: with
    /// `--requests N --keys N` every key is written once (to load a data set).
    #[arg(long)]
    pub sequential: bool,
}

/// When a run stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this much time.
    After(Duration),
    /// After this many requests have completed.
    Requests(u64),
}

impl BenchArgs {
    /// When this run stops by itself.
    pub fn stop(&self) -> Stop {
        match (self.requests, self.duration) {
            (Some(requests), _) => Stop::Requests(requests),
            (None, Some(duration)) => Stop::After(duration),
            (None, None) => Stop::After(DEFAULT_DURATION),
        }
    }
}

fn parse_ratio(input: &str) -> Result<f64, String> {
    let ratio: f64 = input
        .trim()
        .parse()
        .map_err(|_| format!("`{input}` is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("`{input}` is not between 0.0 and 1.0"))
    }
}

/// The kind of one benchmark operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// How the workers send their requests.
#[derive(Clone)]
enum Driver {
    /// Plain HTTP, round-robin over the endpoints.
    Http(Client),
    /// Through kv-client.
    Client(kv_client::Client),
}

/// Checks that every endpoint is healthy, runs the load until it stops, and reports it.
/// `client` (plain HTTP, with a timeout on each request) and `kv` (for `--via-client`, with a
/// deadline on each call, retries included) carry the same endpoints and credentials; `json`
/// turns the progress line off.
pub async fn run(
    client: &Client,
    kv: kv_client::ClientBuilder,
    endpoints: &[Endpoint],
    args: &BenchArgs,
    json: bool,
) -> Result<Report, CliError> {
    if endpoints.is_empty() {
        return Err(anyhow::anyhow!("no endpoints given").into());
    }
    endpoints::check_health(client, endpoints).await?;
    let driver = if args.via_client {
        Driver::Client(kv.build()?)
    } else {
        Driver::Http(client.clone())
    };

    let stop = args.stop();
    let cancel = CancellationToken::new();
    let interrupted = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let value_size = usize::try_from(args.value_size).context("--value-size is too large")?;
    let plan = Arc::new(Plan {
        endpoints: endpoints.to_vec(),
        value: Bytes::from(random_value(value_size)),
        args: args.clone(),
        issued: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
        limit: match stop {
            Stop::Requests(n) => Some(n),
            Stop::After(_) => None,
        },
    });

    // tokio installs its SIGINT handler when the Ctrl-C future is first polled: poll it here,
    // before any worker starts, so an interrupt at any later moment stops the run cleanly.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    if let std::task::Poll::Ready(Err(err)) = futures::poll!(&mut ctrl_c) {
        return Err(anyhow::Error::new(err).context("waiting for Ctrl-C").into());
    }
    let mut stoppers = JoinSet::new();
    stoppers.spawn(stop_on_ctrl_c(
        ctrl_c,
        cancel.clone(),
        Arc::clone(&interrupted),
    ));
    if let Stop::After(duration) = stop {
        stoppers.spawn(stop_after(duration, cancel.clone()));
    }

    let progress = Progress::start(stop, Arc::clone(&counters), !json);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for index in 0..args.concurrency {
        let worker = Worker {
            driver: driver.clone(),
            plan: Arc::clone(&plan),
            counters: Arc::clone(&counters),
            next_endpoint: usize::try_from(index).unwrap_or(0) % endpoints.len(),
            rng: SmallRng::from_os_rng(),
            tally: Tally::new(),
        };
        workers.spawn(worker.run(cancel.clone()));
    }

    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        let tally = joined.context("a bench worker failed")?;
        total.merge(&tally)?;
    }
    let elapsed = started.elapsed();

    // The run is over: release the deadline and Ctrl-C watchers too.
    cancel.cancel();
    stoppers.shutdown().await;
    progress.finish();

    let workload = Workload {
        endpoints: endpoints.iter().map(|e| e.as_str().to_owned()).collect(),
        concurrency: args.concurrency,
        keys: args.keys,
        value_size: args.value_size,
        read_ratio: args.read_ratio,
        consistency: args.consistency,
        via_client: args.via_client,
    };
    Ok(Report::new(
        workload,
        &total,
        elapsed,
        interrupted.load(Ordering::Relaxed),
    ))
}

/// What every worker shares.
struct Plan {
    endpoints: Vec<Endpoint>,
    /// The value every write sends; cloning `Bytes` shares the buffer.
    value: Bytes,
    args: BenchArgs,
    /// Requests started so far; with `limit`, a worker claims a request before sending it, so
    /// exactly `limit` requests are sent in all.
    issued: AtomicU64,
    limit: Option<u64>,
    /// The next key of a `--sequential` run.
    next_key: AtomicU64,
}

struct Worker {
    driver: Driver,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    next_endpoint: usize,
    rng: SmallRng,
    tally: Tally,
}

impl Worker {
    async fn run(mut self, cancel: CancellationToken) -> Tally {
        loop {
            if cancel.is_cancelled() || !self.claim() {
                break;
            }
            let (op, key) = self.next_request();
            let started = Instant::now();
            // A request still in flight when the run stops is dropped, not waited for.
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                outcome = self.send(op, &key) => outcome,
            };
            let latency = started.elapsed();
            match outcome {
                Ok(()) => self.tally.record_success(op, latency),
                Err(kind) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.tally.record_error(op, kind);
                }
            }
            self.counters.done.fetch_add(1, Ordering::Relaxed);
        }
        self.tally
    }

    /// Claims one request of the budget; false once it is spent.
    fn claim(&self) -> bool {
        match self.plan.limit {
            None => true,
            Some(limit) => self.plan.issued.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }

    /// The next operation and its key.
    fn next_request(&mut self) -> (Op, String) {
        let args = &self.plan.args;
        let op = if self.rng.random::<f64>() < args.read_ratio {
            Op::Read
        } else {
            Op::Write
        };
        let index = if args.sequential {
            self.plan.next_key.fetch_add(1, Ordering::Relaxed) % args.keys
        } else {
            self.rng.random_range(0..args.keys)
        };
        let key = format!("{}{}", args.key_prefix, index);
        (op, key)
    }

    /// Sends one operation and reads its whole answer; `Err` names the kind of failure.
    async fn send(&mut self, op: Op, key: &str) -> Result<(), String> {
        match &self.driver {
            Driver::Http(client) => {
                let endpoint = &self.plan.endpoints[self.next_endpoint];
                self.next_endpoint = (self.next_endpoint + 1) % self.plan.endpoints.len();
                let mut url = endpoint.key_url(key);
                if let (Op::Read, Some(query)) = (op, self.plan.args.consistency.query()) {
                    url.push('?');
                    url.push_str(query);
                }
                send_http(client, op, url, &self.plan.value).await
            }
            Driver::Client(kv) => {
                let outcome = match op {
                    Op::Read => {
                        let consistency = match self.plan.args.consistency {
                            Consistency::Linearizable => kv_client::Consistency::Linearizable,
                            Consistency::Stale => kv_client::Consistency::Stale,
                        };
                        kv.get_with(key, consistency).await.map(drop)
                    }
                    Op::Write => kv.put(key, self.plan.value.clone()).await.map(drop),
                };
                outcome.map_err(|e| e.kind().to_owned())
            }
        }
    }
}

/// Sends one plain HTTP operation and reads its whole answer.
async fn send_http(client: &Client, op: Op, url: String, value: &Bytes) -> Result<(), String> {
    let request = match op {
        Op::Read => client.get(url),
        Op::Write => client
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(value.clone()),
    };
    let response = request.send().await.map_err(|e| transport_kind(&e))?;
    let status = response.status();
    // Reading the body to its end lets the connection go back to the pool.
    let body = response.bytes().await.map_err(|e| transport_kind(&e))?;
    match (op, status) {
        (Op::Write, StatusCode::OK) => serde_json::from_slice::<kv_client::api::WriteResult>(&body)
            .map(drop)
            .map_err(|_| "bad_response".to_owned()),
        // A read of a key no write has reached yet is a correct answer.
        (Op::Read, StatusCode::OK | StatusCode::NOT_FOUND) => Ok(()),
        (_, status) => Err(format!("http_{}", status.as_u16())),
    }
}

/// A short, stable name for a failure below HTTP.
fn transport_kind(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "transport"
    };
    kind.to_owned()
}

fn random_value(size: usize) -> Vec<u8> {
    SmallRng::from_os_rng()
        .sample_iter(Alphanumeric)
        .take(size)
        .collect()
}

async fn stop_after(duration: Duration, cancel: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => cancel.cancel(),
        () = cancel.cancelled() => {}
    }
}

async fn stop_on_ctrl_c(
    ctrl_c: impl std::future::Future<Output = std::io::Result<()>>,
    cancel: CancellationToken,
    interrupted: Arc<AtomicBool>,
) {
    tokio::select! {
        signal = ctrl_c => {
            if signal.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
                cancel.cancel();
            }
        }
        () = cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_accepts_the_unit_interval_only() {
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1.0"), Ok(1.0));
        for bad in ["-0.1", "1.01", "NaN", "inf", "half", ""] {
            assert!(parse_ratio(bad).is_err(), "`{bad}` should be refused");
        }
    }

    #[test]
    fn random_value_has_the_asked_size() {
        assert_eq!(random_value(0).len(), 0);
        let value = random_value(300);
        assert_eq!(value.len(), 300);
        assert!(value.iter().all(u8::is_ascii_alphanumeric));
    }
}
