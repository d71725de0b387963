//! Bad input through the real HTTP stack: every error is JSON with the documented status and
//! code, and changes nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kv_node::testing::{ClusterOptions, TestCluster};
use reqwest::StatusCode;

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

async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(resp.status(), status, "wrong status for code {code}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors are JSON"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_json_errors_and_changes_nothing() {
    let c = single_node().await;
    let url = c.url(1);
    let http = c.http();

    // Oversized key and value: 413.
    let long_key = "k".repeat(1025);
    expect_error(
        c.put(1, &long_key, "v").await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    expect_error(
        c.put(1, "big", vec![b'x'; 1025]).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    assert_eq!(
        c.get(1, "big").await.unwrap().status(),
        404,
        "a refused write changes nothing"
    );
    // A value exactly at the limit is fine.
    assert_eq!(
        c.put(1, "edge", vec![b'x'; 1024]).await.unwrap().status(),
        200
    );

    // Empty key: 400.
    let r = http
        .put(format!("{url}/v1/kv/"))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "empty_key").await;

    // Invalid preconditions: 400, and the key is untouched.
    assert_eq!(c.put(1, "cas", "orig").await.unwrap().status(), 200);
    for (name, value) in [
        ("If-Match", "\"abc\""),
        ("If-Match", "W/"),
        ("If-None-Match", "\"3\""),
    ] {
        let r = http
            .put(format!("{url}/v1/kv/cas"))
            .header(name, value)
            .body("changed")
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_precondition").await;
    }
    assert_eq!(c.get(1, "cas").await.unwrap().text().await.unwrap(), "orig");

    // Bad query parameters.
    let r = http
        .get(format!("{url}/v1/kv/cas?consistency=eventual"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_consistency").await;
    for limit in ["0", "abc", "-1", "1000000"] {
        let r = http
            .get(format!("{url}/v1/kv?prefix=a&limit={limit}"))
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_limit").await;
    }

    // Unknown route and method: JSON 404 / 405.
    let r = http.get(format!("{url}/v2/nothing")).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "no_route").await;
    let r = http
        .post(format!("{url}/v1/kv/cas"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // Malformed JSON on an admin route: 400.
    for body in ["{not json", "{\"id\":\"one\"}", "[]"] {
        let r = http
            .post(format!("{url}/v1/cluster/nodes"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    }

    // Garbage on a peer route is refused without harming the node.
    let r = http
        .post(format!("{url}/raft/1/append"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{url}/raft/99/append"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "unknown_group").await;
    assert_eq!(c.put(1, "still", "alive").await.unwrap().status(), 200);

    // Missing keys are JSON 404s.
    expect_error(
        c.get(1, "absent").await.unwrap(),
        StatusCode::NOT_FOUND,
        "key_not_found",
    )
    .await;
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
