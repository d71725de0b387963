//! Nodes joining a running cluster: only the partitions the ring diff names move, and no
//! acknowledged write is lost while they do.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

/// Per partition: (assigned replicas, Raft voters) as node `id` reports them.
async fn partitions(c: &TestCluster, id: u64) -> BTreeMap<u32, (Vec<u64>, BTreeSet<u64>)> {
    c.status(id)
        .await
        .unwrap()
        .groups
        .into_iter()
        .filter_map(|g| {
            g.partition
                .map(|p| (p, (g.replicas.clone(), g.voters.iter().copied().collect())))
        })
        .collect()
}

/// Partitions node `id` hosts a group for.
async fn hosted(c: &TestCluster, id: u64) -> BTreeSet<u32> {
    let r = c
        .http()
        .get(format!("{}/v1/cluster?scope=local", c.url(id)))
        .send()
        .await
        .unwrap();
    let s: kv_client::api::ClusterStatus = r.json().await.unwrap();
    s.groups
        .into_iter()
        .filter(|g| g.role != "none")
        .filter_map(|g| g.partition)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_take_over_only_the_partitions_the_ring_moves() {
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
    let before = partitions(&c, 1).await;

    // A writer runs through node 1 for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let http = c.http().clone();
        let url = c.url(1);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{i}");
                if let Ok(r) = http
                    .put(format!("{url}/v1/kv/{key}"))
                    .body(format!("v{i}"))
                    .send()
                    .await
                {
                    if r.status() == 200 {
                        acked.push((key, format!("v{i}")));
                    }
                }
                i += 1;
            }
            acked
        })
    };

    let n4 = c.add_node(1).await.unwrap();
    let n5 = c.add_node(2).await.unwrap();

    // The moves settle: every partition's voters equal its assigned replicas.
    let after = wait_until(Duration::from_secs(90), "moves settled", || async {
        let now = partitions(&c, 1).await;
        Ok(now
            .values()
            .all(|(replicas, voters)| replicas.iter().copied().collect::<BTreeSet<_>>() == *voters)
            .then_some(now))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "the writer made progress: {}",
        acked.len()
    );

    // Partitions outside the diff kept their replicas; the others gained a new node.
    for (p, (replicas, _)) in &after {
        let (old, _) = &before[p];
        if old == replicas {
            continue;
        }
        assert!(
            replicas.contains(&n4) || replicas.contains(&n5),
            "partition {p} moved without gaining a new node: {old:?} -> {replicas:?}"
        );
    }
    assert!(
        after.values().any(|(r, _)| r.contains(&n4)),
        "node 4 got partitions"
    );
    assert!(
        after.values().any(|(r, _)| r.contains(&n5)),
        "node 5 got partitions"
    );

    // Each node ends up hosting exactly the partitions the map assigns it.
    for id in c.ids() {
        let want: BTreeSet<u32> = after
            .iter()
            .filter(|(_, (r, _))| r.contains(&id))
            .map(|(p, _)| *p)
            .collect();
        wait_until(Duration::from_secs(30), "old replicas dropped", || async {
            Ok((hosted(&c, id).await == want).then_some(()))
        })
        .await
        .unwrap();
    }

    // No acknowledged write was lost, and every node reads them linearizably.
    for id in c.ids() {
        for (k, v) in acked.iter().step_by(7) {
            let r = c.get(id, k).await.unwrap();
            assert_eq!(r.status(), 200, "node {id} key {k}");
            assert_eq!(&r.text().await.unwrap(), v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_request_is_validated_and_idempotent() {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions::default(),
    )
    .await
    .unwrap();
    let url = format!("{}/v1/cluster/nodes", c.url(2));
    let taken = c.node(1).addr.clone();
    // The id is taken by another address: 409.
    let r = c
        .http()
        .post(&url)
        .json(&serde_json::json!({"id": 1, "addr": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Re-announcing an existing member changes nothing.
    let epoch = c.status(1).await.unwrap().epoch;
    let r = c
        .http()
        .post(&url)
        .json(&serde_json::json!({"id": 1, "addr": taken}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.status(1).await.unwrap().epoch, epoch);
    // Bad members: 400.
    let r = c
        .http()
        .post(&url)
        .json(&serde_json::json!({"id": 0, "addr": "x:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
