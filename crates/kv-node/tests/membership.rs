//! Nodes joining and leaving a running cluster: only the partitions the ring diff names move,
//! the data moved matches the diff, and no acknowledged write is lost while they do.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kv_client::api::{ClusterStatus, LeaveResult};
use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

const SETTLE: Duration = Duration::from_secs(90);

async fn cluster(nodes: usize, extra: ClusterOptions) -> TestCluster {
    TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes,
            partitions: 16,
            ..extra
        },
    )
    .await
    .unwrap()
}

/// Per partition: (assigned replicas, Raft voters).
fn partitions(s: &ClusterStatus) -> BTreeMap<u32, (Vec<u64>, BTreeSet<u64>)> {
    s.groups
        .iter()
        .filter_map(|g| {
            g.partition
                .map(|p| (p, (g.replicas.clone(), g.voters.iter().copied().collect())))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_take_over_only_the_partitions_the_ring_moves() {
    let mut c = cluster(3, ClusterOptions::default()).await;
    let before = partitions(&c.status(1).await.unwrap());

    let writer = c.start_writer(1);
    // Meanwhile a checker writes through one node and reads back through another: a
    // linearizable read that starts after a write was acknowledged must return it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let http = c.http().clone();
        let urls: Vec<String> = c.ids().iter().map(|id| c.url(*id)).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut checked, mut round) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let key = format!("lin/{}", round % 16);
                let value = format!("round {round}");
                let (w, r) = (&urls[round % urls.len()], &urls[(round + 1) % urls.len()]);
                let put = http
                    .put(format!("{w}/v1/kv/{key}"))
                    .body(value.clone())
                    .send()
                    .await;
                if !put.is_ok_and(|p| p.status() == 200) {
                    continue;
                }
                let Ok(got) = http.get(format!("{r}/v1/kv/{key}")).send().await else {
                    continue;
                };
                match got.status().as_u16() {
                    200 => {
                        let text = got.text().await.unwrap();
                        assert_eq!(text, value, "stale linearizable read of {key} via {r}");
                        checked += 1;
                    }
                    503 => {}
                    other => panic!("read of {key} via {r}: {other}"),
                }
            }
            checked
        })
    };
    let n4 = c.add_node(1).await.unwrap();
    let n5 = c.add_node(2).await.unwrap();
    let after = partitions(&c.wait_settled(1, SETTLE).await.unwrap());
    let acked = writer.stop().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checked = checker.await.unwrap();
    assert!(
        checked > 10,
        "linearizable read-backs during the join: {checked}"
    );
    assert!(
        acked.len() > 10,
        "the writer made progress: {}",
        acked.len()
    );

    // Partitions outside the diff kept their replicas and their Raft voters; the others
    // gained a new node.
    for (p, (replicas, voters)) in &after {
        let (old, old_voters) = &before[p];
        if old == replicas {
            assert_eq!(voters, old_voters, "partition {p} outside the diff changed");
            continue;
        }
        assert!(
            replicas.contains(&n4) || replicas.contains(&n5),
            "partition {p} moved without gaining a new node: {old:?} -> {replicas:?}"
        );
    }
    assert!(after.values().any(|(r, _)| r.contains(&n4)));
    assert!(after.values().any(|(r, _)| r.contains(&n5)));

    // Each node ends up hosting exactly the partitions the map assigns it.
    c.wait_hosting_map_share(1, Duration::from_secs(30))
        .await
        .unwrap();

    // Once the moves settled, leaderships spread over all five nodes.
    let led = c
        .wait_leaders_balanced(1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(led.len(), 5, "every node leads a partition: {led:?}");

    // No acknowledged write was lost, and every node reads them linearizably.
    let sample: Vec<_> = acked.iter().step_by(7).cloned().collect();
    c.assert_readable(&sample).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_moves_about_the_new_nodes_share_of_the_data() {
    // Small snapshot threshold: the new replicas get a snapshot plus a log tail.
    let mut c = cluster(
        3,
        ClusterOptions {
            snapshot_logs: 64,
            logs_kept: 16,
            ..Default::default()
        },
    )
    .await;
    // 1600 keys of 1 KiB, each written once; remember the partition each landed in.
    let value = "x".repeat(1024);
    let mut bytes_per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    let keys: Vec<String> = (0..1600).map(|i| format!("data/{i:05}")).collect();
    for chunk in keys.chunks(32) {
        let puts = chunk.iter().map(|k| c.put(1, k, value.clone()));
        for (k, r) in chunk.iter().zip(futures::future::join_all(puts).await) {
            let r = r.unwrap();
            let status = r.status();
            assert_eq!(
                status,
                200,
                "{k}: {}",
                if status == 200 {
                    String::new()
                } else {
                    r.text().await.unwrap()
                }
            );
            let p: u32 = r.headers()["x-kv-partition"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            *bytes_per_partition.entry(p).or_default() += (k.len() + value.len()) as u64;
        }
    }

    let n4 = c.add_node(1).await.unwrap();
    let settled = c.wait_settled(1, SETTLE).await.unwrap();
    c.wait_hosting_map_share(1, Duration::from_secs(30))
        .await
        .unwrap();
    let share: u64 = settled
        .groups
        .iter()
        .filter(|g| g.replicas.contains(&n4))
        .filter_map(|g| g.partition)
        .map(|p| bytes_per_partition.get(&p).copied().unwrap_or(0))
        .sum();
    let received = c
        .metric(
            n4,
            "kv_raft_received_bytes_total",
            &["groups=\"partition\""],
        )
        .await
        .unwrap() as u64;
    // Every byte of its partitions had to arrive, and little more: the new replicas get one
    // snapshot of the live data (record framing ~5%) plus the log tail and heartbeats.
    assert!(share > 0, "node {n4} got no partition");
    assert!(
        received >= share && received <= share + share / 4 + 256 * 1024,
        "node {n4} received {received} bytes for a share of {share}"
    );
    eprintln!("join moved {received} bytes for a share of {share} data bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_drains_before_it_goes() {
    let c = cluster(5, ClusterOptions::default()).await;
    let writer = c.start_writer(1);
    // Ask the leaving node itself: it may not lead the metadata group, and its own view of the
    // groups it is leaving goes stale once they drop it. 202 means "still draining, ask again".
    let result: LeaveResult = wait_until(SETTLE, "node 5 drained", || async {
        let r = c.remove_node(5, 5, false).await?;
        match r.status().as_u16() {
            200 => Ok(Some(r.json().await?)),
            202 => Ok(None),
            other => anyhow::bail!("leave answered {other}: {}", r.text().await?),
        }
    })
    .await
    .unwrap();
    assert_eq!(result.status, "removed");
    assert!(result.remaining.is_empty());
    let acked = writer.stop().await.unwrap();
    assert!(acked.len() > 10, "the writer made progress");

    let s = c.wait_settled(1, SETTLE).await.unwrap();
    assert!(s.members.iter().all(|m| m.id != 5));
    for g in &s.groups {
        if g.partition.is_some() {
            assert_eq!(g.voters.len(), 3, "{g:?}");
        }
        assert!(!g.voters.contains(&5) && !g.learners.contains(&5), "{g:?}");
    }
    // The leaving node dropped every copy, knows it is out, and says so on /ready.
    wait_until(Duration::from_secs(30), "node 5 empty", || async {
        Ok(c.hosted(5).await?.is_empty().then_some(()))
    })
    .await
    .unwrap();
    let ready = c
        .http()
        .get(format!("{}/ready", c.url(5)))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["error"], "removed");
    // Nothing acknowledged was lost; the remaining nodes serve it all.
    let sample: Vec<_> = acked.iter().step_by(5).cloned().collect();
    for id in 1..=4 {
        for (k, v) in &sample {
            let r = c.get(id, k).await.unwrap();
            let status = r.status();
            assert_eq!(&r.text().await.unwrap(), v, "node {id} key {k}: {status}");
        }
    }
    // Leaving again is a 404: it is no longer a member. The removed node says the same: out
    // of the metadata group, it finds the group's leader through the members.
    for via in [1, 5] {
        let again = c.remove_node(via, 5, false).await.unwrap();
        assert_eq!(again.status(), 404, "via node {via}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_by_force_and_its_partitions_re_replicated() {
    let mut c = cluster(4, ClusterOptions::default()).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        assert_eq!(c.put(1, &k, v.clone()).await.unwrap().status(), 200);
        acked.push((k, v));
    }
    let had: Vec<u32> = c.hosted(4).await.unwrap().into_iter().collect();
    assert!(!had.is_empty());
    c.kill(4).unwrap();

    // A dead node cannot drain: plain removal is refused, and changes nothing.
    let epoch = c.status(1).await.unwrap().epoch;
    let refused = c.remove_node(1, 4, false).await.unwrap();
    assert_eq!(refused.status(), 409);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "node_unreachable");
    assert_eq!(c.status(1).await.unwrap().epoch, epoch);

    let r = c.remove_node(3, 4, true).await.unwrap();
    assert_eq!(r.status(), 200);
    let s = c.wait_settled(1, SETTLE).await.unwrap();
    for g in s.groups.iter().filter(|g| g.partition.is_some()) {
        assert_eq!(g.voters.len(), 3, "{g:?}");
        assert!(!g.voters.contains(&4), "{g:?}");
    }
    c.wait_hosting_map_share(1, Duration::from_secs(30))
        .await
        .unwrap();
    c.assert_readable(&acked).await.unwrap();

    // The removed node comes back with its old data: it finds out it was removed, drops its
    // stale copies and does not claim to be ready.
    c.restart_no_wait(4).unwrap();
    wait_until(
        Duration::from_secs(30),
        "node 4 knows it is out",
        || async {
            let r = c.http().get(format!("{}/ready", c.url(4))).send().await?;
            let body: serde_json::Value = r.json().await?;
            Ok((body["error"] == "removed" && c.hosted(4).await?.is_empty()).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_requests_are_validated_and_idempotent() {
    let c = cluster(3, ClusterOptions::default()).await;
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

    // Removals: unknown id 404, bad id or parameters 400, below the replication factor 409.
    let r = c.remove_node(2, 9, false).await.unwrap();
    assert_eq!(r.status(), 404);
    for bad in [
        "/v1/cluster/nodes/x",
        "/v1/cluster/nodes/0",
        "/v1/cluster/nodes/3?wait=soon",
        "/v1/cluster/nodes/3?wait=18446744073709551615",
        "/v1/cluster/nodes/3?wait=601s",
        "/v1/cluster/nodes/3?force=maybe",
    ] {
        let r = c
            .http()
            .delete(format!("{}{bad}", c.url(1)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = c.remove_node(1, 3, false).await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_few_members", "{body}");
    assert_eq!(c.status(1).await.unwrap().epoch, epoch);
}

/// `GET /v1/cluster/routes` is the map a node routes by; after a move, a request routed by the
/// older map's epoch (`X-KV-Epoch`) to a node the partition left is answered `421` with the new
/// routes, which lead to the partition in one round trip; kv-client follows them instead of
/// having the request forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_routed_by_an_older_map_are_redirected_with_the_new_routes() {
    use kv_client::api::{Misdirected, HEADER_EPOCH};
    // One replica per partition: a partition that moves leaves its only old node.
    let mut c = cluster(
        3,
        ClusterOptions {
            replication_factor: 1,
            ..Default::default()
        },
    )
    .await;
    c.wait_settled(1, SETTLE).await.unwrap();
    let before = routes(&c, 1).await;
    let status = c.status(1).await.unwrap();
    assert_eq!(Some(before.epoch), status.epoch);
    assert_eq!(before.partitions.len(), 16);
    for (route, group) in before
        .partitions
        .iter()
        .zip(status.groups.iter().filter(|g| g.partition.is_some()))
    {
        assert_eq!(Some(route.partition), group.partition);
        assert_eq!(route.replicas, group.replicas);
        // The leader where node 1 knows it (it hosts the partition: its only replica leads).
        let hosted = route.replicas == [1];
        assert_eq!(
            route.leader,
            hosted.then_some(1),
            "partition {}",
            route.partition
        );
    }
    for id in c.ids() {
        assert_eq!(before.members[&id], c.node(id).addr);
    }
    let client = kv_client::Client::builder()
        .endpoints([c.url(1)])
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    client.put("warm", "up").await.unwrap();

    let joined = c.add_node(1).await.unwrap();
    c.wait_settled(1, SETTLE).await.unwrap();
    c.wait_hosting_map_share(1, SETTLE).await.unwrap();
    let after = routes(&c, 1).await;
    assert!(after.epoch > before.epoch);
    let moved: Vec<(u32, u64)> = before
        .partitions
        .iter()
        .zip(&after.partitions)
        .filter(|(b, a)| a.replicas == [joined] && b.replicas != [joined])
        .map(|(b, _)| (b.partition, b.replicas[0]))
        .collect();
    assert!(!moved.is_empty(), "the new node took no partition");
    let (p, left) = moved[0];
    let key_in = |p: u32, tag: &str| {
        (0u32..)
            .map(|i| format!("{tag}/{i}"))
            .find(|k| kv_ring::partition_of(k.as_bytes(), 16).0 == p)
            .unwrap()
    };
    let key = key_in(p, "moved");
    let put = |node: u64, key: String, epoch: Option<u64>| {
        let c = &c;
        async move {
            let mut req = c
                .http()
                .put(format!("{}/v1/kv/{key}", c.url(node)))
                .body("v");
            if let Some(epoch) = epoch {
                req = req.header(HEADER_EPOCH, epoch);
            }
            req.send().await.unwrap()
        }
    };
    let r = put(left, key.clone(), Some(before.epoch)).await;
    assert_eq!(r.status(), 421);
    let body: Misdirected = r.json().await.unwrap();
    assert_eq!(body.error, "misdirected");
    assert_eq!(body.epoch, after.epoch);
    assert_eq!(body.routes.epoch, after.epoch);
    let route = &body.routes.partitions[p as usize];
    assert_eq!(route.replicas, [joined]);
    // The routes lead there in one round trip.
    let target = route.leader.unwrap_or(route.replicas[0]);
    assert_eq!(body.routes.members[&target], c.node(joined).addr);
    let r = put(target, key.clone(), Some(body.epoch)).await;
    assert_eq!(r.status(), 200);
    // Without the header, or with the current epoch, the old node forwards as before; a bad
    // epoch is refused.
    assert_eq!(put(left, key.clone(), None).await.status(), 200);
    assert_eq!(
        put(left, key.clone(), Some(after.epoch)).await.status(),
        200
    );
    // A node forwarding by the older map is refused the same way (nothing runs), so it routes
    // again by the new map instead of having the operation forwarded on; one forwarding by the
    // current map is served.
    let forward = |epoch: Option<u64>| {
        let c = &c;
        let key = key.clone();
        async move {
            use kv_node::wire::{Forwarded, KeyOp, Precondition};
            let op = postcard::to_stdvec(&Forwarded {
                hops: 1,
                op: KeyOp::Put {
                    key: key.into_bytes(),
                    value: b"forwarded".to_vec(),
                    cond: Precondition::None,
                    session: None,
                },
                caller: None,
                epoch,
            })
            .unwrap();
            c.http()
                .post(format!("{}/internal/v1/kv", c.url(left)))
                .body(op)
                .send()
                .await
                .unwrap()
        }
    };
    let version = |c: &TestCluster| {
        let key = key.clone();
        let url = c.url(joined);
        let http = c.http().clone();
        async move {
            let r = http.get(format!("{url}/v1/kv/{key}")).send().await.unwrap();
            r.headers()["etag"].to_str().unwrap().to_string()
        }
    };
    let unchanged = version(&c).await;
    let r = forward(Some(before.epoch)).await;
    assert_eq!(r.status(), 421);
    let body: Misdirected = r.json().await.unwrap();
    assert_eq!(body.epoch, after.epoch);
    assert_eq!(body.routes.partitions[p as usize].replicas, [joined]);
    assert_eq!(version(&c).await, unchanged, "a refused operation ran");
    assert_eq!(forward(Some(after.epoch)).await.status(), 200);
    assert_eq!(forward(None).await.status(), 200);
    assert_ne!(version(&c).await, unchanged);
    let r = c
        .http()
        .put(format!("{}/v1/kv/{key}", c.url(left)))
        .header(HEADER_EPOCH, "soon")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // kv-client still routes by the map from before the join: it is redirected, not forwarded.
    let forwarded = c
        .metric(left, "kv_forwarded_requests_total", &[])
        .await
        .unwrap();
    let misdirected = c
        .metric(left, "kv_misdirected_requests_total", &[])
        .await
        .unwrap();
    client.put(&key_in(p, "client"), "routed").await.unwrap();
    assert_eq!(
        client
            .get(&key_in(p, "client"))
            .await
            .unwrap()
            .map(|v| v.data),
        Some(bytes::Bytes::from("routed"))
    );
    assert_eq!(
        c.metric(left, "kv_misdirected_requests_total", &[])
            .await
            .unwrap(),
        misdirected + 1.0
    );
    assert_eq!(
        c.metric(left, "kv_forwarded_requests_total", &[])
            .await
            .unwrap(),
        forwarded,
        "the old node forwarded nothing for the client"
    );
}

async fn routes(c: &TestCluster, id: u64) -> kv_client::api::Routes {
    let r = c
        .http()
        .get(format!("{}/v1/cluster/routes", c.url(id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}
