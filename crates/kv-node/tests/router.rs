//! The router driven in-process: a node started in this test's process (real redb file, its
//! Raft groups and jobs running), and its routes called through `kv_node::app` with tower's
//! `oneshot`, no socket in between. The same contract the process tests check over HTTP, in a
//! fraction of the time, and with the guards that run for a request that came without a
//! connection (no client certificate, no peer token).

use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use clap::Parser;
use http_body_util::BodyExt;
use kv_node::testing::wait_until;
use kv_node::{Config, Flags, Node};
use tower::ServiceExt;

/// A one-node cluster of 4 partitions in `dir`, started in this process on a port it picks.
async fn start(dir: &std::path::Path) -> anyhow::Result<Node> {
    let flags = Flags::try_parse_from([
        "kv-node",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.display().to_string(),
        "--partitions",
        "4",
        "--heartbeat-ms",
        "50",
        "--election-timeout-ms",
        "250",
        "--max-value-bytes",
        "1024",
    ])?;
    Node::start(Config::from_flags(flags)?).await
}

/// The node started in `dir`, its router, once it is ready.
async fn ready(dir: &std::path::Path) -> anyhow::Result<(Node, Router)> {
    let node = start(dir).await?;
    let app = kv_node::app(node.state().clone());
    wait_until(Duration::from_secs(30), "the node to be ready", || {
        let app = app.clone();
        async move {
            let (status, _, _) = call(&app, Request::get("/ready").body(Body::empty())?).await?;
            Ok((status == StatusCode::OK).then_some(()))
        }
    })
    .await?;
    Ok((node, app))
}

/// Status, headers and body of `request` as the router answers it.
async fn call(
    app: &Router,
    request: Request<Body>,
) -> anyhow::Result<(StatusCode, axum::http::HeaderMap, Vec<u8>)> {
    let answer = app.clone().oneshot(request).await?;
    let (parts, body) = answer.into_parts();
    let bytes = body.collect().await?.to_bytes().to_vec();
    Ok((parts.status, parts.headers, bytes))
}

fn json(body: &[u8]) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(body).context("a JSON body")
}

#[tokio::test]
async fn the_router_serves_the_key_api_in_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, app) = ready(dir.path()).await?;

    let put = Request::put("/v1/kv/in-process").body(Body::from("one"))?;
    let (status, _, body) = call(&app, put).await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let version = json(&body)?["version"]
        .as_u64()
        .context("a version in the answer")?;

    let (status, headers, body) =
        call(&app, Request::get("/v1/kv/in-process").body(Body::empty())?).await?;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"one".as_slice())
    );
    assert_eq!(
        headers.get(header::ETAG).and_then(|v| v.to_str().ok()),
        Some(format!("\"{version}\"").as_str())
    );

    // A compare-and-set on an older version changes nothing and says what the version is.
    let stale = Request::put("/v1/kv/in-process")
        .header(header::IF_MATCH, format!("\"{}\"", version + 7))
        .body(Body::from("two"))?;
    let (status, _, body) = call(&app, stale).await?;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(json(&body)?["current_version"], version);
    let (_, _, body) = call(&app, Request::get("/v1/kv/in-process").body(Body::empty())?).await?;
    assert_eq!(body, b"one");

    // Absent keys, unknown routes and wrong methods are JSON errors with their status.
    let (status, _, body) = call(&app, Request::get("/v1/kv/absent").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)?["error"], "key_not_found");
    let (status, _, body) = call(&app, Request::get("/v2/nothing").body(Body::empty())?).await?;
    assert_eq!(
        (status, json(&body)?["error"].clone()),
        (StatusCode::NOT_FOUND, "no_route".into())
    );
    let (status, _, _) = call(
        &app,
        Request::post("/v1/kv/in-process").body(Body::empty())?,
    )
    .await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The light route table names this node as every partition's leader.
    let (status, _, body) = call(
        &app,
        Request::get("/v1/cluster/routes").body(Body::empty())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let routes: kv_client::api::Routes = serde_json::from_slice(&body)?;
    assert_eq!(routes.partitions.len(), 4);
    assert!(
        routes.partitions.iter().all(|p| p.leader == Some(1)),
        "{routes:?}"
    );

    node.shutdown().await?;
    Ok(())
}

/// A refused request's answer: `status`, JSON, the error `code` and a message.
fn expect_error(
    answer: (StatusCode, axum::http::HeaderMap, Vec<u8>),
    status: StatusCode,
    code: &str,
) {
    let (got, headers, body) = answer;
    assert_eq!(got, status, "wrong status for code {code}");
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json")),
        "errors are JSON"
    );
    let body = json(&body).expect("a JSON error body");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn put(key: &str, value: impl Into<Body>) -> Request<Body> {
    Request::put(format!("/v1/kv/{key}"))
        .body(value.into())
        .expect("a request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("a request")
}

/// Bad input: every error is JSON with the documented status and code, and changes nothing.
#[tokio::test]
async fn bad_input_gets_documented_json_errors_and_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, app) = ready(dir.path()).await?;

    // Oversized key and value: 413.
    let long_key = "k".repeat(1025);
    expect_error(
        call(&app, put(&long_key, "v")).await?,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    expect_error(
        call(&app, put("big", vec![b'x'; 1025])).await?,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_eq!(
        call(&app, get("/v1/kv/big")).await?.0,
        StatusCode::NOT_FOUND,
        "a refused write changes nothing"
    );
    // A value exactly at the limit is fine.
    assert_eq!(
        call(&app, put("edge", vec![b'x'; 1024])).await?.0,
        StatusCode::OK
    );

    // Empty key: 400.
    expect_error(
        call(&app, put("", "v")).await?,
        StatusCode::BAD_REQUEST,
        "empty_key",
    );

    // Invalid preconditions: 400, and the key is untouched.
    assert_eq!(call(&app, put("cas", "orig")).await?.0, StatusCode::OK);
    for (name, value) in [
        ("If-Match", "\"abc\""),
        ("If-Match", "W/"),
        ("If-None-Match", "\"3\""),
    ] {
        let request = Request::put("/v1/kv/cas")
            .header(name, value)
            .body(Body::from("changed"))?;
        expect_error(
            call(&app, request).await?,
            StatusCode::BAD_REQUEST,
            "invalid_precondition",
        );
    }
    assert_eq!(call(&app, get("/v1/kv/cas")).await?.2, b"orig");

    // Bad query parameters.
    expect_error(
        call(&app, get("/v1/kv/cas?consistency=eventual")).await?,
        StatusCode::BAD_REQUEST,
        "invalid_consistency",
    );
    for limit in ["0", "abc", "-1", "1000000"] {
        expect_error(
            call(&app, get(&format!("/v1/kv?prefix=a&limit={limit}"))).await?,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        );
    }

    // Unknown route and method: JSON 404 / 405.
    expect_error(
        call(&app, get("/v2/nothing")).await?,
        StatusCode::NOT_FOUND,
        "no_route",
    );
    expect_error(
        call(&app, Request::post("/v1/kv/cas").body(Body::from("x"))?).await?,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // Malformed JSON on an admin route: 400.
    for body in ["{not json", "{\"id\":\"one\"}", "[]"] {
        let request = Request::post("/v1/cluster/nodes")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))?;
        expect_error(
            call(&app, request).await?,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        );
    }

    // Garbage on a peer route is refused without harming the node.
    let garbage = |path: &str| {
        Request::post(path)
            .body(Body::from("garbage"))
            .expect("a request")
    };
    assert_eq!(
        call(&app, garbage("/raft/1/append")).await?.0,
        StatusCode::BAD_REQUEST
    );
    expect_error(
        call(&app, garbage("/raft/99/append")).await?,
        StatusCode::NOT_FOUND,
        "unknown_group",
    );
    assert_eq!(call(&app, put("still", "alive")).await?.0, StatusCode::OK);

    // Missing keys are JSON 404s.
    expect_error(
        call(&app, get("/v1/kv/absent")).await?,
        StatusCode::NOT_FOUND,
        "key_not_found",
    );

    node.shutdown().await?;
    Ok(())
}
