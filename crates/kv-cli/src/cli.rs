//! The command grammar: global flags, then one [`Command`] variant per subcommand.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::bench::BenchArgs;
use crate::duration;
use crate::endpoints::Endpoint;

/// Command-line client for the kv store.
#[derive(Debug, Parser)]
#[command(name = "kv", version, about, propagate_version = true)]
pub struct Cli {
    /// Nodes to talk to: comma-separated base URLs (`http://` is assumed when omitted).
    #[arg(
        long,
        global = true,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7001",
        value_parser = Endpoint::parse,
    )]
    pub endpoints: Vec<Endpoint>,

    /// Timeout of each HTTP request, e.g. 5s or 500ms.
    #[arg(
        long,
        global = true,
        env = "KV_TIMEOUT",
        default_value = "5s",
        value_parser = duration::parse_positive,
    )]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `kv`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive load against the cluster and report throughput and latency.
    Bench(BenchArgs),
}

/// Consistency asked of reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Served by the partition's leader after confirming its leadership.
    Linearizable,
    /// Served by any replica; may miss the latest writes.
    Stale,
}

impl Consistency {
    /// The query string that asks for this consistency (`None`: the server's default).
    pub fn query(self) -> Option<&'static str> {
        match self {
            Consistency::Linearizable => None,
            Consistency::Stale => Some("consistency=stale"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Stop;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kv").chain(args.iter().copied()))
    }

    #[test]
    fn grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let cli = parse(&["--endpoints", "http://127.0.0.1:7001", "bench"]).unwrap();
        let Command::Bench(args) = cli.command;
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.stop(), Stop::After(Duration::from_secs(10)));
        assert_eq!(args.keys, 10_000);
        assert_eq!(args.value_size, 128);
        assert_eq!(args.read_ratio, 0.0);
        assert_eq!(args.key_prefix, "bench/");
        assert_eq!(args.consistency, Consistency::Linearizable);
        assert!(!args.json);
        assert_eq!(cli.timeout, Duration::from_secs(5));
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "bench",
            "--endpoints",
            "127.0.0.1:7001,http://127.0.0.1:7002/",
            "--requests",
            "5",
            "--consistency",
            "stale",
        ])
        .unwrap();
        let endpoints: Vec<&str> = cli.endpoints.iter().map(Endpoint::as_str).collect();
        assert_eq!(
            endpoints,
            ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        let Command::Bench(args) = cli.command;
        assert_eq!(args.stop(), Stop::Requests(5));
        assert_eq!(args.consistency, Consistency::Stale);
    }

    #[test]
    fn bad_bench_flags_are_usage_errors() {
        for bad in [
            &["bench", "--read-ratio", "1.5"][..],
            &["bench", "--read-ratio", "NaN"],
            &["bench", "--concurrency", "0"],
            &["bench", "--requests", "0"],
            &["bench", "--keys", "0"],
            &["bench", "--duration", "10"],
            &["bench", "--duration", "0s"],
            &["bench", "--duration", "1s", "--requests", "3"],
            &["bench", "--consistency", "eventual"],
            &["--endpoints", "ftp://x", "bench"],
            &["bench", "--nope"],
            &[],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
