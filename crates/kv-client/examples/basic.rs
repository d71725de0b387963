//! A tour of the client: put, get, compare-and-set and scan against a running cluster.
//!
//! ```sh
//! cargo run -p kv-node &                                   # a single node on 127.0.0.1:7001
//! cargo run -p kv-client --example basic
//! KV_ENDPOINTS=http://127.0.0.1:7001,http://127.0.0.1:7002 cargo run -p kv-client --example basic
//! ```

use std::time::Duration;

use kv_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints =
        std::env::var("KV_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:7001".into());
    let client = Client::builder()
        .endpoints(
            endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty()),
        )
        .timeout(Duration::from_secs(5))
        .build()?;

    let version = client.put("example/greeting", "hello").await?;
    println!("put example/greeting = hello -> version {version}");

    if let Some(value) = client.get("example/greeting").await? {
        println!(
            "get example/greeting -> {:?} at version {}",
            String::from_utf8_lossy(&value.data),
            value.version
        );
    }

    let updated = client
        .compare_and_set("example/greeting", version, "hi")
        .await?;
    println!("cas example/greeting {version} -> hi: version {updated}");

    // The same compare-and-set again fails: the key has moved on.
    match client
        .compare_and_set("example/greeting", version, "hey")
        .await
    {
        Err(Error::PreconditionFailed { current }) => {
            println!("cas with the old version {version} refused: current version {current:?}")
        }
        other => println!("unexpected: {other:?}"),
    }

    for i in 0..3 {
        client
            .put(&format!("example/item/{i}"), format!("value {i}"))
            .await?;
    }
    let scan = client.scan("example/", 100).await?;
    println!(
        "scan example/ -> {} keys (truncated: {})",
        scan.items.len(),
        scan.truncated
    );
    for item in &scan.items {
        println!(
            "  {} = {:?} (version {})",
            item.key,
            item.value.as_deref().unwrap_or("<binary>"),
            item.version
        );
    }

    let status = client.cluster_status().await?;
    println!(
        "cluster: {} members, {} partitions, answered by node {}",
        status.members.len(),
        status.partitions,
        status.node
    );
    Ok(())
}
