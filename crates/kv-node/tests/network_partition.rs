//! A leader cut off by the network (packets dropped, not refused): it stops counting itself the
//! leader within a lease (check-quorum), requests sent to it fail fast with 503, the majority
//! elects new leaders and serves every partition, and after healing everything converges with
//! no acknowledged write lost. Every node runs in a network namespace of its own.
//!
//! Needs root (network namespaces, iptables). Where the machine cannot build them, the test says
//! so and passes, unless `KV_REQUIRE_NETNS=1` (CI sets it) makes that a failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use kv_node::testing::{wait_until, ClusterOptions, NetLab, TestCluster};
use kv_ring::PartitionId;

const PARTITIONS: u32 = 8;

fn lab_or_skip() -> bool {
    if NetLab::available() {
        return true;
    }
    assert!(
        std::env::var("KV_REQUIRE_NETNS").as_deref() != Ok("1"),
        "KV_REQUIRE_NETNS=1 but this machine cannot create network namespaces (needs root, ip, iptables)"
    );
    eprintln!("SKIPPED: network namespaces are not available here (needs root, ip, iptables)");
    false
}

/// One key per partition.
fn key_per_partition(prefix: &str) -> BTreeMap<u32, String> {
    let mut keys = BTreeMap::new();
    let mut i = 0;
    while keys.len() < PARTITIONS as usize {
        let key = format!("{prefix}/{i}");
        let PartitionId(p) = kv_ring::partition_of(key.as_bytes(), PARTITIONS);
        keys.entry(p).or_insert(key);
        i += 1;
    }
    keys
}

/// PUT through `via` until acknowledged (elections may be under way).
async fn put_acked(c: &TestCluster, via: u64, key: &str, value: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("PUT {key} through node {via}"),
        || async {
            let r = c.put(via, key, value.to_string()).await?;
            match r.status().as_u16() {
                200 => Ok(Some(())),
                s => Err(anyhow!("answered {s}: {}", r.text().await?)),
            }
        },
    )
    .await
    .unwrap();
}

/// The partitions node `id` leads, by its own account.
async fn led_by(c: &TestCluster, id: u64) -> anyhow::Result<Vec<u32>> {
    let r = c
        .http()
        .get(format!("{}/v1/cluster?scope=local", c.url(id)))
        .send()
        .await?;
    let s: kv_client::api::ClusterStatus = r.error_for_status()?.json().await?;
    Ok(s.groups
        .iter()
        .filter(|g| g.role == "leader")
        .filter_map(|g| g.partition)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_fails_fast_and_the_majority_serves_everything() {
    if !lab_or_skip() {
        return;
    }
    let opts = ClusterOptions {
        partitions: PARTITIONS,
        network_namespaces: true,
        ..ClusterOptions::default()
    };
    let lease = Duration::from_millis(opts.election_timeout_ms * 2);
    let c = TestCluster::start_with(Path::new(env!("CARGO_BIN_EXE_kv-node")), opts)
        .await
        .unwrap();
    let mut acked: Vec<(String, String)> = Vec::new();
    for (_, key) in key_per_partition("before") {
        put_acked(&c, 1, &key, "v0").await;
        acked.push((key, "v0".into()));
    }

    // Cut off the node that leads the most partitions.
    let mut most = (0, Vec::new());
    for id in c.ids() {
        let led = led_by(&c, id).await.unwrap();
        if led.len() > most.1.len() {
            most = (id, led);
        }
    }
    let (cut, led) = most;
    assert!(!led.is_empty());
    c.isolate(cut).unwrap();
    let isolated_at = Instant::now();

    // Within two election timeouts it counts itself leader of nothing.
    wait_until(
        2 * lease + Duration::from_millis(500),
        "the isolated node reports no leadership",
        || async {
            let still = led_by(&c, cut).await?;
            Ok(still.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
    eprintln!(
        "node {cut} (led {led:?}) reported no leadership {:?} after isolation",
        isolated_at.elapsed()
    );

    // Every request sent to it now fails fast with a 503 that says when to retry.
    for (p, key) in key_per_partition("during-cut") {
        for write in [true, false] {
            let started = Instant::now();
            let r = if write {
                c.put(cut, &key, "lost?".to_string()).await.unwrap()
            } else {
                c.get(cut, &key).await.unwrap()
            };
            let took = started.elapsed();
            assert_eq!(r.status(), 503, "partition {p} via the isolated node");
            assert!(r.headers().contains_key("retry-after"));
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unavailable");
            assert!(
                took < Duration::from_secs(1),
                "partition {p}: 503 after {took:?}, not at once"
            );
        }
    }

    // The majority elects new leaders and serves every partition.
    let majority: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    for (_, key) in key_per_partition("majority") {
        put_acked(&c, majority[0], &key, "v1").await;
        acked.push((key, "v1".into()));
    }
    for id in &majority {
        for (k, v) in &acked {
            let r = c.get(*id, k).await.unwrap();
            assert_eq!(r.status(), 200, "node {id} key {k}");
            assert_eq!(&r.text().await.unwrap(), v);
        }
    }

    // Healed: the cut-off node catches up and serves everything, nothing acknowledged is lost.
    c.heal().unwrap();
    wait_until(
        Duration::from_secs(30),
        "every node serves every acknowledged write",
        || async {
            match c.assert_readable(&acked).await {
                Ok(()) => Ok(Some(())),
                Err(e) => bail!("{e:#}"),
            }
        },
    )
    .await
    .unwrap();
    c.wait_ready(cut).await.unwrap();
}
