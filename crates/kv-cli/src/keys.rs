//! The key commands (`get`, `put`, `create`, `cas`, `delete`, `scan`): each is one kv-client
//! call turned into an [`Outcome`].

use std::io::Read as _;

use anyhow::Context as _;
use bytes::Bytes;

use crate::cli::{CasArgs, DeleteArgs, GetArgs, RefreshArgs, ScanArgs, ValueSource, WriteArgs};
use crate::error::CliError;
use crate::output::Outcome;

/// `kv get`: the value, or exit code 1 if the key does not exist.
pub async fn get(client: &kv_client::Client, args: &GetArgs) -> Result<Outcome, CliError> {
    let consistency = if args.stale {
        kv_client::Consistency::Stale
    } else {
        kv_client::Consistency::Linearizable
    };
    match client.get_with(&args.key, consistency).await? {
        Some(value) => Ok(Outcome::Value {
            key: args.key.clone(),
            value,
        }),
        None => Err(not_found(&args.key)),
    }
}

/// `kv put`.
pub async fn put(client: &kv_client::Client, args: &WriteArgs) -> Result<Outcome, CliError> {
    let value = read_value(&args.value)?;
    let options = with_ttl(kv_client::PutOptions::default(), args.ttl);
    let version = client.put_with(&args.key, value, &options).await?;
    Ok(written(&args.key, version))
}

/// `kv create`: exit code 3 if the key exists.
pub async fn create(client: &kv_client::Client, args: &WriteArgs) -> Result<Outcome, CliError> {
    let value = read_value(&args.value)?;
    let options = with_ttl(kv_client::PutOptions::default().if_absent(), args.ttl);
    let version = client.put_with(&args.key, value, &options).await?;
    Ok(written(&args.key, version))
}

/// `kv cas`: exit code 3 if the key is not at `--version`.
pub async fn cas(client: &kv_client::Client, args: &CasArgs) -> Result<Outcome, CliError> {
    let value = read_value(&args.value)?;
    let options = with_ttl(
        kv_client::PutOptions::default().if_version(args.version),
        args.ttl,
    );
    let version = client.put_with(&args.key, value, &options).await?;
    Ok(written(&args.key, version))
}

/// `kv refresh`: exit code 1 if the key does not exist (or has expired).
pub async fn refresh(client: &kv_client::Client, args: &RefreshArgs) -> Result<Outcome, CliError> {
    let version = client
        .refresh(&args.key, args.ttl)
        .await?
        .ok_or_else(|| not_found(&args.key))?;
    Ok(written(&args.key, version))
}

fn with_ttl(
    options: kv_client::PutOptions,
    ttl: Option<std::time::Duration>,
) -> kv_client::PutOptions {
    match ttl {
        Some(ttl) => options.ttl(ttl),
        None => options,
    }
}

/// `kv delete`: exit code 1 if the key does not exist, 3 if it is not at `--if-version`.
pub async fn delete(client: &kv_client::Client, args: &DeleteArgs) -> Result<Outcome, CliError> {
    let version = match args.if_version {
        Some(expected) => client.compare_and_delete(&args.key, expected).await?,
        None => client
            .delete(&args.key)
            .await?
            .ok_or_else(|| not_found(&args.key))?,
    };
    Ok(Outcome::Deleted {
        key: args.key.clone(),
        version,
    })
}

/// `kv scan`.
pub async fn scan(client: &kv_client::Client, args: &ScanArgs) -> Result<Outcome, CliError> {
    let options = kv_client::ScanOptions {
        limit: Some(usize::try_from(args.limit).context("--limit is too large")?),
        after: args.after.clone(),
        keys_only: args.keys_only,
        consistency: if args.stale {
            kv_client::Consistency::Stale
        } else {
            kv_client::Consistency::Linearizable
        },
    };
    Ok(Outcome::Scan(
        client.scan_with(&args.prefix, &options).await?,
    ))
}

fn written(key: &str, version: u64) -> Outcome {
    Outcome::Written {
        key: key.to_owned(),
        version,
    }
}

fn not_found(key: &str) -> CliError {
    CliError::Client(kv_client::Error::NotFound(format!(
        "key {key:?} does not exist"
    )))
}

/// The value to write: the argument's bytes, stdin for `-`, or the file's contents.
fn read_value(source: &ValueSource) -> Result<Bytes, CliError> {
    match (&source.value, &source.file) {
        (Some(value), _) if value == "-" => {
            let mut buffer = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buffer)
                .context("reading the value from stdin")?;
            Ok(Bytes::from(buffer))
        }
        (Some(value), _) => Ok(Bytes::from(value.clone().into_encoded_bytes())),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the value from {}", path.display()))?;
            Ok(Bytes::from(bytes))
        }
        (None, None) => Err(anyhow::anyhow!("no value given").into()),
    }
}
