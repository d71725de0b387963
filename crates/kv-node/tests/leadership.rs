//! Leadership balance: partition leaders end up spread over the nodes (each partition on its
//! target leader), also after a node was down and every leadership moved off it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_back_over_a_node_that_restarted() {
    let mut c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 16,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let led = c
        .wait_leaders_balanced(1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(led.len(), 3, "every node leads something: {led:?}");

    // Node 1 goes down: the other two take over its partitions.
    c.kill(1).unwrap();
    wait_until(
        Duration::from_secs(30),
        "nodes 2 and 3 lead everything",
        || async {
            let s = c.status(2).await?;
            Ok(s.groups
                .iter()
                .filter(|g| g.partition.is_some())
                .all(|g| g.leader.is_some_and(|l| l != 1))
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let mut acked = Vec::new();
    for i in 0..50 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        assert_eq!(c.put(2, &k, v.clone()).await.unwrap().status(), 200);
        acked.push((k, v));
    }
    // Back up, it gets its share of leaderships back, while a writer keeps writing.
    c.restart(1).await.unwrap();
    let writer = c.start_writer(3);
    let led = c
        .wait_leaders_balanced(2, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(led.get(&1).is_some_and(|n| *n > 0), "{led:?}");
    let written = writer.stop().await.unwrap();
    assert!(!written.is_empty());
    acked.extend(written.into_iter().step_by(3));
    c.assert_readable(&acked).await.unwrap();
}
