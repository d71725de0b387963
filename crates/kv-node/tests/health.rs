//! One node through the real HTTP stack: health, readiness and metrics answer. (The bad-input
//! contract is checked in-process, `router.rs`; the HTTP front's own refusals, in
//! `hostile_input.rs` and `server`'s tests.)
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kv_node::testing::{ClusterOptions, TestCluster};

async fn single_node() -> TestCluster {
    TestCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_kv-node")),
        ClusterOptions {
            nodes: 1,
            partitions: 4,
            replication_factor: 1,
            extra_args: vec!["--max-value-bytes".into(), "1024".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer() {
    let c = single_node().await;
    let http = c.http();
    assert_eq!(
        http.get(format!("{}/health", c.url(1)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/ready", c.url(1)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(c.put(1, "m", "1").await.unwrap().status(), 200);
    let text = http
        .get(format!("{}/metrics", c.url(1)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("kv_http_requests_total"), "{text}");
    assert!(text.contains("kv_partitions_led 4"), "{text}");
}
