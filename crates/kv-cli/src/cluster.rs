//! The cluster commands (`cluster status`, `join`, `leave`), through kv-client.

use crate::cli::{ClusterCommand, JoinArgs, LeaveArgs};
use crate::error::CliError;
use crate::output::Outcome;

/// Runs one `kv cluster` subcommand.
pub async fn run(
    client: &kv_client::Client,
    command: &ClusterCommand,
) -> Result<Outcome, CliError> {
    match command {
        ClusterCommand::Status => Ok(Outcome::Status(client.cluster_status().await?)),
        ClusterCommand::Join(args) => join(client, args).await,
        ClusterCommand::Leave(args) => leave(client, args).await,
    }
}

async fn join(client: &kv_client::Client, args: &JoinArgs) -> Result<Outcome, CliError> {
    client.join(args.id, &args.addr).await?;
    Ok(Outcome::Done(format!(
        "node {} at {} joined the cluster",
        args.id, args.addr
    )))
}

async fn leave(client: &kv_client::Client, args: &LeaveArgs) -> Result<Outcome, CliError> {
    let result = client.leave(args.id, args.force).await?;
    if result.status != "removed" {
        // Not a success: a script that stops the node next must not do so yet.
        return Err(CliError::Unreachable(format!(
            "node {} is still draining (map epoch {}): {} partitions still count it; run the command again to keep waiting",
            args.id,
            result.epoch,
            result.remaining.len()
        )));
    }
    Ok(Outcome::Done(format!(
        "node {} left the cluster (map epoch {}); it holds no partition and may be stopped",
        args.id, result.epoch
    )))
}
