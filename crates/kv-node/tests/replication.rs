//! One replicated partition on three real node processes: forwarding, failover, recovery from
//! disk, snapshot catch-up and crash durability.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

async fn cluster(opts: ClusterOptions) -> TestCluster {
    TestCluster::start_with(Path::new(env!("CARGO_BIN_EXE_kv-node")), opts)
        .await
        .unwrap()
}

/// PUT `key` through `node`, retrying through elections until it is acknowledged.
async fn put_acked(c: &TestCluster, node: u64, key: &str, value: &str) -> u64 {
    wait_until(
        Duration::from_secs(15),
        &format!("PUT {key} acknowledged"),
        || async {
            let r = c.put(node, key, value.to_string()).await?;
            if r.status() == 200 {
                let body: serde_json::Value = r.json().await?;
                Ok(body["version"].as_u64())
            } else {
                anyhow::bail!("PUT answered {}", r.status())
            }
        },
    )
    .await
    .unwrap()
}

async fn read(c: &TestCluster, node: u64, key: &str) -> (u16, String) {
    let r = c.get(node, key).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// PUT `value` under `key` through `node` if the key is at `version`.
async fn cas(
    c: &TestCluster,
    node: u64,
    key: &str,
    version: u64,
    value: &str,
) -> reqwest::Response {
    c.http()
        .put(format!("{}/v1/kv/{key}", c.url(node)))
        .header("If-Match", format!("\"{version}\""))
        .body(value.to_string())
        .send()
        .await
        .unwrap()
}

fn partition0(s: &kv_client::api::ClusterStatus) -> &kv_client::api::GroupStatus {
    s.groups.iter().find(|g| g.partition == Some(0)).unwrap()
}

fn follower_of(c: &TestCluster, leader: u64) -> u64 {
    *c.ids().iter().find(|id| **id != leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_via_follower_is_readable_everywhere_and_stale_cas_changes_nothing() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let follower = follower_of(&c, leader);

    let v1 = put_acked(&c, follower, "greeting", "hello").await;
    for id in c.ids() {
        let r = c.get(id, "greeting").await.unwrap();
        assert_eq!(r.status(), 200, "node {id}");
        assert_eq!(r.headers()["etag"], format!("\"{v1}\"").as_str());
        assert_eq!(r.text().await.unwrap(), "hello");
    }

    // CAS with the current version succeeds and bumps the version.
    let r = cas(&c, follower, "greeting", v1, "hi").await;
    assert_eq!(r.status(), 200);
    let v2 = r.json::<serde_json::Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    assert!(v2 > v1);

    // A stale If-Match gets 412 with the current version and changes nothing.
    let r = cas(&c, follower, "greeting", v1, "clobbered").await;
    assert_eq!(r.status(), 412);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "precondition_failed");
    assert_eq!(body["current_version"], v2);
    for id in c.ids() {
        assert_eq!(
            read(&c, id, "greeting").await,
            (200, "hi".into()),
            "node {id}"
        );
    }

    // Create-only and delete semantics through a follower.
    let r = c
        .http()
        .put(format!("{}/v1/kv/greeting", c.url(follower)))
        .header("If-None-Match", "*")
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = c
        .http()
        .delete(format!("{}/v1/kv/greeting", c.url(follower)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read(&c, leader, "greeting").await.0, 404);
    let r = c
        .http()
        .delete(format!("{}/v1/kv/greeting", c.url(follower)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Re-created keys get a version above every earlier one.
    let v3 = put_acked(&c, follower, "greeting", "back").await;
    assert!(v3 > v2);
}

/// A follower serves linearizable reads itself (follower read: it asks the leader for a read
/// index, never for the value), and sees every write the leader acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_linearizable_reads_without_forwarding() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let follower = follower_of(&c, leader);
    let forwarded = |n| c.metric(n, "kv_forwarded_requests_total", &[]);
    let before = forwarded(follower).await.unwrap();
    for i in 0..50 {
        let value = format!("v{i}");
        let version = put_acked(&c, leader, "followed", &value).await;
        let r = c.get(follower, "followed").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["etag"], format!("\"{version}\"").as_str());
        assert_eq!(r.text().await.unwrap(), value);
    }
    assert_eq!(
        forwarded(follower).await.unwrap(),
        before,
        "the follower forwarded none of its reads"
    );
}

/// Writes a follower forwards at once travel to the leader in batches over one channel, each
/// with its own answer: its own version, the key's value, the forwarding counted per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_forwarded_writes_share_batches_and_keep_their_own_answers() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let follower = follower_of(&c, leader);
    put_acked(&c, follower, "warm", "up").await;
    let forwarded = |n| c.metric(n, "kv_forwarded_requests_total", &[]);
    let batches = |n| c.metric(n, "kv_forward_batch_ops_count", &[]);
    let (ops_before, batches_before) = (
        forwarded(follower).await.unwrap(),
        batches(follower).await.unwrap(),
    );
    const WRITES: usize = 64;
    let answers = futures::future::join_all((0..WRITES).map(|i| {
        let c = &c;
        async move {
            let r = c
                .put(follower, &format!("batched/{i}"), format!("v{i}"))
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "write {i}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["key"], format!("batched/{i}"), "write {i}");
            (i, body["version"].as_u64().unwrap())
        }
    }))
    .await;
    for (i, version) in answers {
        let r = c.get(leader, &format!("batched/{i}")).await.unwrap();
        assert_eq!(r.headers()["etag"], format!("\"{version}\"").as_str());
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    let ops = forwarded(follower).await.unwrap() - ops_before;
    let sent = batches(follower).await.unwrap() - batches_before;
    assert_eq!(ops, WRITES as f64, "each write forwarded once");
    assert!(
        sent < ops,
        "{WRITES} concurrent forwarded writes went in {sent} batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_loses_no_acknowledged_write() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let survivor = follower_of(&c, leader);
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("before/{i}");
        put_acked(&c, survivor, &key, &format!("v{i}")).await;
        acked.push((key, format!("v{i}")));
    }

    c.kill(leader).unwrap();
    let new_leader = c.wait_leader(0).await.unwrap();
    assert_ne!(new_leader, leader);

    for i in 0..50 {
        let key = format!("after/{i}");
        put_acked(&c, survivor, &key, &format!("w{i}")).await;
        acked.push((key, format!("w{i}")));
    }
    for id in c.running() {
        for (k, v) in &acked {
            assert_eq!(read(&c, id, k).await, (200, v.clone()), "node {id} key {k}");
        }
    }

    // The old leader comes back as a follower and converges.
    c.restart(leader).await.unwrap();
    for (k, v) in &acked {
        let want = v.clone();
        wait_until(Duration::from_secs(15), "old leader caught up", || async {
            let r = c.get_stale(leader, k).await?;
            Ok((r.status() == 200 && r.text().await? == want).then_some(()))
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_from_disk_and_catches_up() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let victim = follower_of(&c, leader);
    for i in 0..20 {
        put_acked(&c, leader, &format!("k{i}"), "one").await;
    }
    // Everything written so far is on the victim's disk before it stops.
    wait_until(Duration::from_secs(10), "victim applied", || async {
        let r = c.get_stale(victim, "k19").await?;
        Ok((r.status() == 200).then_some(()))
    })
    .await
    .unwrap();
    let before = partition0(&c.status(victim).await.unwrap())
        .applied_index
        .unwrap();

    c.kill(victim).unwrap();
    for i in 20..40 {
        put_acked(&c, leader, &format!("k{i}"), "two").await;
    }
    c.restart(victim).await.unwrap();

    // Recovered from disk: its own state is back without any snapshot (the log was not purged).
    let s = c.status(victim).await.unwrap();
    assert!(partition0(&s).last_log_index.unwrap() >= before);
    // And it caught up with what it missed.
    for i in 0..40 {
        let want = if i < 20 { "one" } else { "two" };
        wait_until(Duration::from_secs(15), "victim caught up", || async {
            let r = c.get_stale(victim, &format!("k{i}")).await?;
            Ok((r.status() == 200 && r.text().await? == want).then_some(()))
        })
        .await
        .unwrap();
    }
    assert!(
        !c.log_tail(victim, 10_000).contains("installed snapshot"),
        "a restart with its log intact must not need a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_is_restored_by_snapshot_install() {
    let mut c = cluster(ClusterOptions {
        snapshot_logs: 20,
        logs_kept: 5,
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(0).await.unwrap();
    let victim = follower_of(&c, leader);
    c.wipe(victim).unwrap();

    for i in 0..100 {
        put_acked(&c, leader, &format!("snap/{i}"), &format!("value-{i}")).await;
    }
    // With a snapshot every 20 entries and 5 kept, the leader's log no longer starts at 1, so
    // the wiped node can only be restored by a snapshot (asserted from its log below).

    c.restart(victim).await.unwrap();
    for i in 0..100 {
        let want = format!("value-{i}");
        wait_until(Duration::from_secs(20), "wiped node restored", || async {
            let r = c.get_stale(victim, &format!("snap/{i}")).await?;
            Ok((r.status() == 200 && r.text().await? == want).then_some(()))
        })
        .await
        .unwrap();
    }
    assert!(
        c.log_tail(victim, 10_000).contains("installed snapshot"),
        "the wiped node must have been restored from a snapshot:\n{}",
        c.log_tail(victim, 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_every_node() {
    let mut c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    // Concurrent writers, so acknowledgements come out of shared group commits.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let http = c.http().clone();
        let url = c.url(leader);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let key = format!("durable/{w}/{i}");
                let r = http
                    .put(format!("{url}/v1/kv/{key}"))
                    .body(format!("{w}-{i}"))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    acked.push((key, format!("{w}-{i}")));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(
        acked.len(),
        200,
        "every write on a healthy cluster is acknowledged"
    );

    for id in c.ids() {
        c.kill(id).unwrap();
    }
    for id in c.ids() {
        c.restart_no_wait(id).unwrap();
    }
    for id in c.ids() {
        c.wait_ready(id).await.unwrap();
    }
    for (k, v) in &acked {
        let want = v.clone();
        wait_until(
            Duration::from_secs(15),
            "acknowledged write readable",
            || async {
                let r = c.get(1, k).await?;
                Ok((r.status() == 200 && r.text().await? == want).then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_write_with_the_same_client_seq_applies_once() {
    let c = cluster(ClusterOptions::default()).await;
    let leader = c.wait_leader(0).await.unwrap();
    let follower = follower_of(&c, leader);
    let v1 = put_acked(&c, leader, "counter", "1").await;
    let cas_once = |node: u64| {
        c.http()
            .put(format!("{}/v1/kv/counter", c.url(node)))
            .header("If-Match", format!("\"{v1}\""))
            .header("x-kv-client-id", "77")
            .header("x-kv-request-seq", "5")
            .header("x-kv-ack-below", "5")
            .body("2")
            .send()
    };
    // The first attempt commits; its "lost answer" is retried through another node.
    let first = cas_once(leader).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let retry = cas_once(follower).await.unwrap();
    assert_eq!(
        retry.status(),
        200,
        "a retry is answered with the first outcome, not 412"
    );
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(first["version"], retry["version"]);
    let r = c.get(leader, "counter").await.unwrap();
    assert_eq!(
        r.headers()["etag"],
        format!("\"{}\"", first["version"]).as_str()
    );
    // Without the session headers the same request is a new write and fails its precondition.
    let plain = cas(&c, leader, "counter", v1, "2").await;
    assert_eq!(plain.status(), 412);
    // A retried delete answers like the first attempt instead of 404.
    for node in [leader, follower] {
        let r = c
            .http()
            .delete(format!("{}/v1/kv/counter", c.url(node)))
            .header("x-kv-client-id", "77")
            .header("x-kv-request-seq", "6")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "delete through node {node}");
    }
    // Malformed session headers are refused.
    let bad = c
        .http()
        .put(format!("{}/v1/kv/counter", c.url(leader)))
        .header("x-kv-client-id", "abc")
        .header("x-kv-request-seq", "1")
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
