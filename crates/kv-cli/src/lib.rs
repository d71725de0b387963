//! The `kv` command-line client. It owns the command grammar ([`cli::Cli`], one
//! [`cli::Command`] variant per subcommand), running each command through `kv_client` (key
//! commands in [`keys`], membership in [`cluster`]) and presenting the results ([`output`]:
//! human text by default, one JSON object with `--json`). It does not own the wire types or the
//! talking to the cluster (routing, retries): both come from `kv_client`. Start from [`run`].
//!
//! `bench` drives load ([`mod@bench`]; [`report`] holds the figures, [`progress`] the live line on
//! stderr), through plain HTTP over the [`endpoints`] or, with `--via-client`, through
//! `kv_client`.
//!
//! For a TLS cluster, `cert` makes the certificates ([`certs`] the PEM, [`cert_files`] the
//! files) and `auth` the client tokens ([`auth`]). The global `--cacert`, `--cert`, `--key`
//! and `--token` flags give every command that talks to a node the same credentials: they are
//! set on one `kv_client::ClientBuilder`, which also configures `bench`'s own HTTP client.
//!
//! Exit codes (also in `kv --help`, see [`cli::EXIT_CODES`]): 0 success, 1 not found, 2 bad
//! usage (clap), 3 precondition failed, 4 the cluster is unavailable or unreachable, 5 any other
//! failure (refused tokens and certificates included: retrying cannot fix them), 6 a watch whose
//! history was compacted. Failures are one `error: ...` line on stderr.
//!
//! `watch` ([`mod@watch`]) is the one command that runs until interrupted, printing a line per
//! change as it comes.

pub mod auth;
pub mod bench;
pub mod cert_files;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod duration;
pub mod endpoints;
pub mod error;
pub mod keys;
pub mod output;
pub mod progress;
pub mod report;
pub mod watch;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;
use crate::output::Outcome;

/// Runs one parsed command line to completion. Failures are printed as one `error: ...` line
/// on stderr (and with `--json` as one JSON object on stdout) and turned into the exit code
/// documented at the top of this crate.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if cli.json {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{}", err.json());
                let _ = stdout.flush();
            }
            eprintln!("error: {}", err.to_string().replace('\n', " "));
            ExitCode::from(err.exit_code())
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<(), CliError> {
    let outcome = match &cli.command {
        Command::Bench(args) => {
            let kv = client_builder(cli)?;
            let http = endpoints::http_client(&kv, cli.timeout)?;
            let report = bench::run(&http, kv, &cli.endpoints, args, cli.json).await?;
            let text = if cli.json {
                report.json()?
            } else {
                report.human()
            };
            return print(format!("{text}\n").as_bytes());
        }
        Command::Get(args) => keys::get(&client(cli)?, args).await?,
        Command::Put(args) => keys::put(&client(cli)?, args).await?,
        Command::Create(args) => keys::create(&client(cli)?, args).await?,
        Command::Cas(args) => keys::cas(&client(cli)?, args).await?,
        Command::Delete(args) => keys::delete(&client(cli)?, args).await?,
        Command::Refresh(args) => keys::refresh(&client(cli)?, args).await?,
        Command::Scan(args) => keys::scan(&client(cli)?, args).await?,
        Command::Watch(args) => return watch::run(&client(cli)?, args, cli.json).await,
        Command::Cluster(command) => cluster::run(&client(cli)?, command).await?,
        Command::Cert(command) => cert_files::run(command)?,
        Command::Auth(command) => auth::run(command)?,
    };
    if cli.json {
        return print(format!("{}\n", outcome.json()).as_bytes());
    }
    let mut text = outcome.human();
    match &outcome {
        // A raw value is printed as is, so `kv get k > file` copies it exactly; on a terminal
        // the prompt goes on its own line.
        Outcome::Value { .. } if std::io::stdout().is_terminal() && !text.ends_with(b"\n") => {
            text.push(b'\n');
        }
        Outcome::Scan(scan) if scan.truncated => {
            eprintln!("(more keys match: raise --limit, or continue with --after)");
        }
        _ => {}
    }
    print(&text)
}

/// The kv-client for the global flags.
fn client(cli: &Cli) -> Result<kv_client::Client, CliError> {
    Ok(client_builder(cli)?.build()?)
}

/// A kv-client builder for the global flags: `--endpoints`, `--timeout` as each call's
/// deadline, and the credentials (`--cacert`, `--cert` with `--key`, `--token`), the files
/// read now. clap has made sure that `--cert` and `--key` come together.
fn client_builder(cli: &Cli) -> Result<kv_client::ClientBuilder, CliError> {
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))
    };
    let mut builder = kv_client::Client::builder()
        .endpoints(cli.endpoints.iter().map(|e| e.as_str().to_owned()))
        .timeout(cli.timeout);
    if let Some(path) = &cli.cacert {
        builder = builder.ca_cert_pem(read(path, "--cacert")?);
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        builder = builder.client_cert_pem(read(cert, "--cert")?, read(key, "--key")?);
    }
    if let Some(token) = &cli.token {
        builder = builder.token(token.clone());
    }
    Ok(builder)
}

fn print(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    Ok(())
}
