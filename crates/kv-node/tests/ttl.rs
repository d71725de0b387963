//! Keys with a time to live, through real processes on real redb files: a deadline the leader
//! puts in the log, reads that hide a key once its deadline has passed, expiry through the log
//! on every replica, refreshes, rewrites that make a key permanent, and deadlines that hold
//! across a leader's crash, a restart of every node and a move of the partition.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kv_client::api::HEADER_TTL_REMAINING;
use kv_node::testing::{wait_until, ClusterOptions, TestCluster};

/// Expired keys are gone from every node within this long after their deadline.
const GONE_WITHIN: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(90);

async fn cluster(opts: ClusterOptions) -> TestCluster {
    TestCluster::start_with(Path::new(env!("CARGO_BIN_EXE_kv-node")), opts)
        .await
        .unwrap()
}

async fn put_ttl(c: &TestCluster, via: u64, key: &str, ttl: &str) -> reqwest::Response {
    c.http()
        .put(format!("{}/v1/kv/{key}?ttl={ttl}", c.url(via)))
        .body(format!("value of {key}"))
        .send()
        .await
        .unwrap()
}

async fn refresh(c: &TestCluster, via: u64, key: &str, query: &str) -> reqwest::Response {
    c.http()
        .post(format!("{}/v1/kv/{key}/refresh{query}", c.url(via)))
        .send()
        .await
        .unwrap()
}

fn version(r: &serde_json::Value) -> u64 {
    r["version"].as_u64().unwrap()
}

fn ttl_left(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get(HEADER_TTL_REMAINING)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// Whether `key` is absent on every running node, read linearizably and stale.
async fn gone_everywhere(c: &TestCluster, key: &str) -> anyhow::Result<Option<()>> {
    for id in c.running() {
        if c.get(id, key).await?.status() != 404 || c.get_stale(id, key).await?.status() != 404 {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

/// The first key `tag/N` of `partition` among `partitions`.
fn key_in(partition: u32, partitions: u32, tag: &str) -> String {
    (0u32..)
        .map(|i| format!("{tag}/{i}"))
        .find(|k| kv_ring::partition_of(k.as_bytes(), partitions).0 == partition)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_on_every_node_unless_refreshed_or_rewritten() {
    let c = cluster(ClusterOptions {
        partitions: 4,
        ..Default::default()
    })
    .await;

    // Written with a TTL: readable everywhere before, with the time it has left.
    let r = put_ttl(&c, 1, "lease", "2s").await;
    assert_eq!(r.status(), 200);
    for id in c.ids() {
        let r = c.get(id, "lease").await.unwrap();
        assert_eq!(r.status(), 200, "node {id}");
        let left = ttl_left(&r).unwrap();
        assert!((1..=2).contains(&left), "{left} s left");
    }
    wait_until(
        Duration::from_secs(10),
        "stale reads to see the key",
        || async {
            for id in c.ids() {
                if c.get_stale(id, "lease").await?.status() != 200 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ttl_left(&c.put(1, "forever", "v").await.unwrap()),
        None,
        "writes carry no TTL header"
    );
    assert_eq!(ttl_left(&c.get(2, "forever").await.unwrap()), None);

    // A refreshed key keeps its value and version; a rewritten one becomes permanent.
    let kept: serde_json::Value = put_ttl(&c, 2, "kept", "2s").await.json().await.unwrap();
    let r = refresh(&c, 3, "kept", "?ttl=60s").await;
    assert_eq!(r.status(), 200);
    let refreshed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(version(&refreshed), version(&kept), "{refreshed}");
    assert!(
        refreshed["ttl_ms"].as_u64().unwrap() > 55_000,
        "{refreshed}"
    );
    assert_eq!(put_ttl(&c, 1, "rewritten", "2s").await.status(), 200);
    assert_eq!(
        c.put(2, "rewritten", "for good").await.unwrap().status(),
        200
    );

    // A lock: taken if absent, refused while held, free again once it expires.
    let lock = |via: u64| {
        let c = &c;
        async move {
            c.http()
                .put(format!("{}/v1/kv/lock?ttl=2s", c.url(via)))
                .header("If-None-Match", "*")
                .body(format!("held by {via}"))
                .send()
                .await
                .unwrap()
        }
    };
    let first = lock(1).await;
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(lock(2).await.status(), 412);

    // Refused: no TTL, or one out of range; nothing changes.
    for query in ["", "?ttl=0s", "?ttl=500ms", "?ttl=soon", "?ttl=400d"] {
        let r = refresh(&c, 1, "kept", query).await;
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_ttl", "{body}");
    }
    let r = put_ttl(&c, 1, "never", "0s").await;
    assert_eq!(r.status(), 400);
    assert_eq!(c.get(1, "never").await.unwrap().status(), 404);
    assert_eq!(refresh(&c, 1, "absent", "?ttl=5s").await.status(), 404);
    assert_eq!(
        c.http()
            .post(format!("{}/v1/kv/kept", c.url(1)))
            .send()
            .await
            .unwrap()
            .status(),
        405,
        "a POST that is not a refresh"
    );

    // Gone everywhere, read either way, within a bounded delay.
    wait_until(GONE_WITHIN, "the key to expire everywhere", || {
        gone_everywhere(&c, "lease")
    })
    .await
    .unwrap();
    wait_until(GONE_WITHIN, "the lock to expire everywhere", || {
        gone_everywhere(&c, "lock")
    })
    .await
    .unwrap();
    let mut expired = 0.0;
    for id in c.ids() {
        expired += c
            .metric(id, "kv_keys_expired_total", &[])
            .await
            .unwrap_or(0.0);
    }
    assert!(expired >= 2.0, "{expired} keys expired through the log");
    assert_eq!(refresh(&c, 1, "lease", "?ttl=5s").await.status(), 404);

    // Expired alongside them, the refreshed and the rewritten keys are still there.
    let r = c.get(3, "kept").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(ttl_left(&r).unwrap() > 30);
    let r = c.get(1, "rewritten").await.unwrap();
    assert_eq!(ttl_left(&r), None);
    assert_eq!(r.text().await.unwrap(), "for good");

    // The lock is free again, at a newer version; its holder releases it by version.
    let second = lock(2).await;
    assert_eq!(second.status(), 200);
    let second: serde_json::Value = second.json().await.unwrap();
    assert!(version(&second) > version(&first));
    let release = |v: u64| {
        let c = &c;
        async move {
            c.http()
                .delete(format!("{}/v1/kv/lock", c.url(3)))
                .header("If-Match", format!("\"{v}\""))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(release(version(&first)).await, 412);
    assert_eq!(release(version(&second)).await, 200);
}

/// Kill a partition's leader shortly before a key's deadline: the new leader does not expire
/// the key early, and does once its deadline has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_expires_keys_at_their_deadline_not_before() {
    let mut c = cluster(ClusterOptions {
        partitions: 2,
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(0).await.unwrap();
    let key = key_in(0, 2, "failover");
    let written = Instant::now();
    assert_eq!(put_ttl(&c, leader, &key, "6s").await.status(), 200);
    let deadline = written + Duration::from_secs(6);
    // Until the key has at most 4 s left.
    wait_until(
        Duration::from_secs(10),
        "the deadline to come closer",
        || async {
            let r = c.get(leader, &key).await?;
            Ok(ttl_left(&r).filter(|left| *left <= 4).map(|_| ()))
        },
    )
    .await
    .unwrap();
    c.kill(leader).unwrap();
    let survivors: Vec<u64> = c.running();
    // The new leader answers before the deadline, and the key is there.
    let r = wait_until(Duration::from_secs(10), "a new leader", || async {
        let r = c.get(survivors[0], &key).await?;
        Ok((r.status() != 503).then_some(r))
    })
    .await
    .unwrap();
    let answered = Instant::now();
    assert!(
        answered < deadline,
        "the new leader took until after the deadline to answer"
    );
    assert_eq!(r.status(), 200, "expired {:?} early", deadline - answered);
    assert!(ttl_left(&r).is_some());
    wait_until(GONE_WITHIN, "the key to expire", || {
        gone_everywhere(&c, &key)
    })
    .await
    .unwrap();
    assert!(Instant::now() >= deadline, "expired before its deadline");
}

/// What expired stays expired after every node restarts and after its partition moves to a
/// new node; keys whose deadline has not come keep it through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_stay_gone_across_restarts_and_moves() {
    const P: u32 = 8;
    // One replica per partition: a move hands each partition whole to another node.
    let mut c = cluster(ClusterOptions {
        partitions: P,
        replication_factor: 1,
        ..Default::default()
    })
    .await;
    c.wait_settled(1, SETTLE).await.unwrap();
    let short: Vec<String> = (0..P).map(|p| key_in(p, P, "short")).collect();
    let long: Vec<String> = (0..P).map(|p| key_in(p, P, "long")).collect();
    for (s, l) in short.iter().zip(&long) {
        assert_eq!(put_ttl(&c, 1, s, "1s").await.status(), 200);
        assert_eq!(put_ttl(&c, 2, l, "10m").await.status(), 200);
    }
    for key in &short {
        wait_until(GONE_WITHIN, "the short keys to expire", || {
            gone_everywhere(&c, key)
        })
        .await
        .unwrap();
    }

    for id in c.ids() {
        c.kill(id).unwrap();
    }
    for id in c.ids() {
        c.restart_no_wait(id).unwrap();
    }
    for id in c.ids() {
        c.wait_ready(id).await.unwrap();
    }
    for key in &short {
        assert_eq!(c.get(1, key).await.unwrap().status(), 404, "{key} is back");
    }
    for key in &long {
        let r = c.get(3, key).await.unwrap();
        assert_eq!(r.status(), 200, "{key}");
        assert!(ttl_left(&r).unwrap() > 60, "{key} lost its deadline");
    }

    let joined = c.add_node(1).await.unwrap();
    c.wait_settled(1, SETTLE).await.unwrap();
    c.wait_hosting_map_share(1, SETTLE).await.unwrap();
    let moved = c.hosted(joined).await.unwrap();
    assert!(!moved.is_empty(), "the new node took no partition");
    for p in moved {
        let r = c.get(joined, &short[p as usize]).await.unwrap();
        assert_eq!(
            r.status(),
            404,
            "partition {p}: expired key back after its move"
        );
        let r = c.get_stale(joined, &long[p as usize]).await.unwrap();
        assert_eq!(r.status(), 200, "partition {p}");
        assert!(
            ttl_left(&r).unwrap() > 60,
            "partition {p}: deadline lost in the move"
        );
    }
}
