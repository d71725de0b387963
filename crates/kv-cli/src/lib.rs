//! The `kv` command-line client. It owns the command grammar ([`cli::Cli`], one
//! [`cli::Command`] variant per subcommand), talking to the cluster's HTTP API over one pooled
//! client ([`endpoints`]) and presenting results; it does not own the wire types, which come
//! from `kv_client::api`. Start from [`run`].
//!
//! Today the only subcommand is `bench` ([`bench`] drives the load, [`report`] holds the
//! figures, [`progress`] the live line on stderr).
//!
//! Exit codes: 0 success, 1 any other failure, 2 bad usage (clap), 4 an endpoint is
//! unreachable or unhealthy at start.

pub mod bench;
pub mod cli;
pub mod duration;
pub mod endpoints;
pub mod error;
pub mod progress;
pub mod report;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// Runs one parsed command line to completion. Failures are printed as one `error: ...` line
/// on stderr and turned into the exit code documented at the top of this crate.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", err.to_string().replace('\n', " "));
            ExitCode::from(err.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let client = endpoints::http_client(cli.timeout)?;
    match cli.command {
        Command::Bench(args) => {
            let report = bench::run(&client, &cli.endpoints, &args).await?;
            let text = if args.json {
                report.json()?
            } else {
                report.human()
            };
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{text}").context("writing the report to stdout")?;
            stdout.flush().context("writing the report to stdout")?;
        }
    }
    Ok(())
}
