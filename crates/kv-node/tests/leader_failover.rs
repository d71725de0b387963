//! A partition leader crashes: requests sent to nodes that are not replicas of the partition
//! must not fail at once because the dead leader refuses connections; they go to the other
//! replicas, which wait for the new leader, and succeed within the request timeout.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kv_node::testing::{ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_non_replicas_wait_for_the_new_leader_after_a_leader_crash() {
    let opts = ClusterOptions {
        nodes: 5,
        partitions: 4,
        request_timeout_ms: 4_000,
        ..ClusterOptions::default()
    };
    let mut c = TestCluster::start_with(Path::new(env!("CARGO_BIN_EXE_kv-node")), opts)
        .await
        .unwrap();
    let status = c.status(1).await.unwrap();
    let group = status
        .groups
        .iter()
        .find(|g| g.partition == Some(0))
        .unwrap();
    let replicas = group.replicas.clone();
    let outsiders: Vec<u64> = c
        .ids()
        .into_iter()
        .filter(|id| !replicas.contains(id))
        .collect();
    assert_eq!(outsiders.len(), 2, "5 nodes, 3 replicas");
    let leader = c.wait_leader(0).await.unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| kv_ring::partition_of(k.as_bytes(), 4).0 == 0)
        .unwrap();
    let r = c.put(outsiders[0], &key, "v".to_string()).await.unwrap();
    assert_eq!(r.status(), 200);

    c.kill(leader).unwrap();
    let killed = Instant::now();
    // Reads through both outsiders, in a loop, until a new leader has served a while.
    let mut answered = 0;
    while killed.elapsed() < Duration::from_secs(3) {
        for via in &outsiders {
            let started = Instant::now();
            let r = c.get(*via, &key).await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(
                (status.as_u16(), text.as_str()),
                (200, "v"),
                "GET via node {via}, {:?} after the crash, answered in {:?}",
                started.duration_since(killed),
                started.elapsed()
            );
            answered += 1;
        }
    }
    assert!(answered >= 4);
}
