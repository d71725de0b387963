//! The metadata group: one stored cluster map that every node adopts.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_follows_one_stored_map_with_at_most_five_metadata_voters() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 6,
            partitions: 8,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Group 0 has the five lowest ids as voters and the sixth node as a learner.
    let meta = wait_until(
        Duration::from_secs(20),
        "metadata learner added",
        || async {
            let s = c.status(1).await?;
            let meta = s.groups.iter().find(|g| g.partition.is_none()).cloned();
            Ok(meta.filter(|m| m.learners == vec![6]))
        },
    )
    .await
    .unwrap();
    assert_eq!(meta.replicas, vec![1, 2, 3, 4, 5]);

    // Every node, the learner included, routes by the same partition map.
    let reference: Vec<_> = c
        .status(1)
        .await
        .unwrap()
        .groups
        .into_iter()
        .filter(|g| g.partition.is_some())
        .map(|g| (g.partition, g.replicas))
        .collect();
    assert_eq!(reference.len(), 8);
    for id in c.ids() {
        let s = c.status(id).await.unwrap();
        let map: Vec<_> = s
            .groups
            .into_iter()
            .filter(|g| g.partition.is_some())
            .map(|g| (g.partition, g.replicas))
            .collect();
        assert_eq!(map, reference, "node {id} routes by another map");
    }
    // Any node reports every partition's leader, asking the replicas for the ones it lacks.
    for id in c.ids() {
        wait_until(
            Duration::from_secs(10),
            "every partition's leader known",
            || async {
                let s = c.status(id).await?;
                Ok(s.groups
                    .iter()
                    .filter(|g| g.partition.is_some())
                    .all(|g| g.leader.is_some_and(|l| g.replicas.contains(&l)))
                    .then_some(()))
            },
        )
        .await
        .unwrap();
    }
    // And the learner serves requests for every key.
    for i in 0..32 {
        let r = c.put(6, &format!("k{i}"), "v").await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
