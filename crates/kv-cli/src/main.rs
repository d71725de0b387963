//! The `kv` binary: parse the command line, run it, exit with its code (see `kv_cli::run`).

use std::process::ExitCode;

use clap::Parser;
use kv_cli::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    kv_cli::run(Cli::parse()).await
}
