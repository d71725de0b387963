//! `kv watch`: follows a [`kv_client::Watch`] and prints a line per change as it arrives
//! ([`crate::output::watch_line`], or [`crate::output::watch_json`] with `--json`), until
//! interrupted (Ctrl-C exits 0) or the watch fails (a compacted history exits 6, naming the
//! cursor to resume from).

use std::io::Write as _;

use anyhow::Context as _;
use futures::StreamExt as _;

use crate::cli::WatchArgs;
use crate::error::CliError;
use crate::output;

/// Runs `kv watch` until Ctrl-C, a closed stdout (`kv watch | head`), or a failure.
pub async fn run(client: &kv_client::Client, args: &WatchArgs, json: bool) -> Result<(), CliError> {
    let since = args.since.as_deref();
    let watch = if args.exact {
        client.watch_key(&args.prefix, since)
    } else {
        client.watch(&args.prefix, since)
    };
    let printing = print_all(watch, json);
    // `biased`: the Ctrl-C future installs its handler when first polled, so it is polled
    // before the printing can put a line on stdout; a reader that sees a line and interrupts
    // must never meet the default SIGINT action (death by signal instead of exit 0).
    tokio::select! {
        biased;
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("waiting for Ctrl-C")?;
            Ok(())
        }
        result = printing => result,
    }
}

/// Prints every item of `watch`, flushing each line so pipes see it at once.
async fn print_all(mut watch: kv_client::Watch, json: bool) -> Result<(), CliError> {
    while let Some(item) = watch.next().await {
        let item = item?;
        let line = if json {
            Some(output::watch_json(&item).to_string())
        } else {
            output::watch_line(&item)
        };
        let Some(line) = line else {
            continue;
        };
        let mut stdout = std::io::stdout().lock();
        let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
        match written {
            Ok(()) => {}
            // The reader is gone (`kv watch | head -1`): nothing left to do.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(anyhow::Error::new(err).context("writing to stdout").into()),
        }
    }
    // A watch ends only with an error, which was returned above.
    Ok(())
}
