//! Blocking reads (`GET /v1/kv/{key}?wait=..&after=N`), through real processes: a read that
//! answers once the key has changed since version N, or when the wait ends, on a replica or
//! forwarded to one.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kv_node::testing::{ClusterOptions, TestCluster};

fn etag(r: &reqwest::Response) -> u64 {
    r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// The version a write's answer gives.
async fn written(r: reqwest::Response) -> u64 {
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    body["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reads_answer_on_the_change_they_wait_for_or_when_the_wait_ends() {
    // Four nodes, three replicas: one node forwards.
    let c = TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 4,
            partitions: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (replicas, outsider) = c.replicas_and_outsider(0).await.unwrap();
    let wait = |via: u64, key: &str, query: String| {
        let url = format!("{}/v1/kv/{key}?{query}", c.url(via));
        let http = c.http().clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (r, started.elapsed())
        })
    };

    let v1 = written(c.put(1, "watched", "one").await.unwrap()).await;
    for via in [replicas[1], outsider] {
        // Waiting for a change: the write it waits for answers it, with the new value
        // (whether it lands before the read has started waiting or after).
        let before = etag(&c.get(1, "watched").await.unwrap());
        let waiting = wait(via, "watched", format!("wait=30s&after={before}"));
        let put = written(c.put(1, "watched", format!("two via {via}")).await.unwrap()).await;
        let (r, took) = waiting.await.unwrap();
        assert_eq!(r.status(), 200, "via {via}");
        assert_eq!(etag(&r), put, "via {via}");
        assert_eq!(r.text().await.unwrap(), format!("two via {via}"));
        assert!(took < Duration::from_secs(30), "waited out the whole wait");
    }
    let current = etag(&c.get(1, "watched").await.unwrap());
    assert!(current > v1);

    // Nothing changes: the answer comes when the wait ends, with the current value.
    let (r, took) = wait(outsider, "watched", format!("wait=1s&after={current}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), current);
    assert!(took >= Duration::from_secs(1), "answered after {took:?}");
    // Already changed since the version given: at once.
    let (r, took) = wait(replicas[0], "watched", "wait=30s&after=1".into())
        .await
        .unwrap();
    assert_eq!(etag(&r), current);
    assert!(took < Duration::from_secs(30));

    // after=0 on an absent key waits for it to be created; a delete answers a wait with 404.
    let created = wait(replicas[2], "later", "wait=30s&after=0".into());
    let deleted = wait(outsider, "watched", format!("wait=30s&after={current}"));
    assert_eq!(c.put(2, "later", "here").await.unwrap().status(), 200);
    let r = c
        .http()
        .delete(format!("{}/v1/kv/watched", c.url(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (r, _) = created.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "here");
    let (r, _) = deleted.await.unwrap();
    assert_eq!(r.status(), 404);

    // Refused: half a blocking read, a wait over the limit, a version that is not a number.
    for query in ["wait=10s", "after=3", "wait=10m&after=3", "wait=1s&after=x"] {
        let r = c
            .http()
            .get(format!("{}/v1/kv/watched?{query}", c.url(1)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_query", "{body}");
    }
}
