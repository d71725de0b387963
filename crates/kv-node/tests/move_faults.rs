//! Crashes in the middle of a partition move: the cluster still converges to the map, every
//! partition ends with exactly its replicas, and no acknowledged write is lost.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use kv_client::api::MoveStatus;
use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

const SETTLE: Duration = Duration::from_secs(90);

/// Keys written before the moves, and their value.
const PRELOADED: usize = 960;
fn preloaded_value() -> String {
    "y".repeat(16 * 1024)
}

/// Three nodes with ~15 MiB of data and one move at a time per node, so that a join takes
/// long enough for a crash to land in the middle of it.
async fn loaded_cluster() -> TestCluster {
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 3,
            partitions: 16,
            extra_args: vec!["--max-moves".into(), "1".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let value = preloaded_value();
    let keys: Vec<String> = (0..PRELOADED).map(|i| format!("pre/{i}")).collect();
    for chunk in keys.chunks(32) {
        let puts = chunk.iter().map(|k| c.put(2, k, value.clone()));
        for r in futures::future::join_all(puts).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    c
}

/// Wait for a move towards `node` that has not reached the voter change yet.
async fn move_towards(c: &TestCluster, via: u64, node: u64) -> MoveStatus {
    wait_until(Duration::from_secs(60), "a move in flight", || async {
        let s = c.status(via).await?;
        Ok(s.moves
            .into_iter()
            .find(|m| m.to.contains(&node) && (m.phase == "queued" || m.phase == "catching_up")))
    })
    .await
    .unwrap()
}

/// The kill landed mid-move: once node `via` routes by the map of the observed move (its
/// view can lag by a reconcile tick), moves towards node 4 are still listed, or some partition
/// the map gives node 4 does not count it among its voters yet.
async fn assert_unfinished(c: &TestCluster, via: u64, epoch: u64) {
    let s = wait_until(
        Duration::from_secs(10),
        "the move's map adopted",
        || async {
            let s = c.status(via).await?;
            Ok((s.epoch >= Some(epoch)).then_some(s))
        },
    )
    .await
    .unwrap();
    let moving = s.moves.iter().any(|m| m.to.contains(&4));
    let pending = s
        .groups
        .iter()
        .any(|g| g.replicas.contains(&4) && !g.voters.contains(&4));
    assert!(
        moving || pending,
        "every move had finished before the kill: {s:?}"
    );
}

/// After the faults: moves settle, every node hosts exactly its share, nothing acknowledged
/// is lost, and the replicas of every partition hold the same data.
async fn assert_converged(c: &TestCluster, acked: &[(String, String)]) {
    c.wait_settled(1, SETTLE).await.unwrap();
    c.wait_hosting_map_share(1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut sample: Vec<_> = acked.iter().step_by(5).cloned().collect();
    // The data written before the move, which travelled in snapshots.
    let value = preloaded_value();
    sample.extend(
        (0..PRELOADED)
            .step_by(7)
            .map(|i| (format!("pre/{i}"), value.clone())),
    );
    c.assert_readable(&sample).await.unwrap();
    let status = c.status(1).await.unwrap();
    for (k, v) in sample.iter().take(40) {
        let r = c.get(1, k).await.unwrap();
        let p: u32 = r.headers()["x-kv-partition"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let g = status
            .groups
            .iter()
            .find(|g| g.partition == Some(p))
            .unwrap();
        for id in &g.replicas {
            wait_until(Duration::from_secs(10), "replica applied", || async {
                let r = c.get_stale(*id, k).await?;
                Ok((r.status() == 200 && r.text().await? == *v).then_some(()))
            })
            .await
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_killed_mid_move_catches_up_after_restart() {
    let mut c = loaded_cluster().await;
    let writer = c.start_writer(2);
    let n4 = c.add_node_no_wait(1).unwrap();
    let m = move_towards(&c, 1, n4).await;
    c.kill(n4).unwrap();
    eprintln!("killed learner {n4} during {m:?}");
    assert_unfinished(&c, 1, m.epoch).await;
    // While it is down, no partition loses a replica: the voters still form a full set.
    let s = c.status(1).await.unwrap();
    for g in s.groups.iter().filter(|g| g.partition.is_some()) {
        assert!(g.voters.len() >= 3, "{g:?}");
    }
    c.restart(n4).await.unwrap();
    let acked = writer.stop().await.unwrap();
    assert!(!acked.is_empty());
    assert_converged(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_mid_move_hands_the_move_to_the_next_leader() {
    let mut c = loaded_cluster().await;
    let n4 = c.add_node_no_wait(1).unwrap();
    let m = move_towards(&c, 1, n4).await;
    let leader = m.node;
    c.kill(leader).unwrap();
    eprintln!("killed partition leader {leader} during {m:?}");
    let via = c.running().into_iter().find(|id| *id != n4).unwrap();
    assert_unfinished(&c, via, m.epoch).await;
    let writer = c.start_writer(via);
    // The survivors finish the move without it: the partition's new leader takes it over.
    wait_until(SETTLE, "the interrupted move finished", || async {
        let s = c.status(via).await?;
        let g = s
            .groups
            .iter()
            .find(|g| g.partition == Some(m.partition))
            .unwrap();
        let mut voters = g.voters.clone();
        voters.sort_unstable();
        let mut replicas = g.replicas.clone();
        replicas.sort_unstable();
        Ok((voters == replicas && g.leader.is_some_and(|l| l != leader)).then_some(()))
    })
    .await
    .unwrap();
    c.restart(leader).await.unwrap();
    let acked = writer.stop().await.unwrap();
    assert!(!acked.is_empty());
    assert_converged(&c, &acked).await;
}
