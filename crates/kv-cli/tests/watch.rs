//! `kv watch` against a fake node that serves scripted Server-Sent Events (not kv-node): the
//! lines it prints, the exit code of a compacted history, and Ctrl-C.

#![allow(clippy::unwrap_used)] // tests: a failure here is a failed test

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use support::{kv, kv_command, wait_until};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;

const EVENTS: &str = concat!(
    ": keep-alive\n\n",
    "id: p0:1\ndata: {\"type\":\"put\",\"key\":\"app/x\",\"version\":12,\"value\":\"text\"}\n\n",
    "id: p0:2\n\n",
    "id: p0:3\ndata: {\"type\":\"delete\",\"key\":\"app/x\",\"version\":12}\n\n",
    "id: p0:4\ndata: {\"type\":\"expire\",\"key\":\"app/t\",\"version\":2}\n\n",
);

const COMPACTED: &str = "data: {\"type\":\"error\",\"error\":\"compacted\",\"message\":\"gone\",\
                         \"current\":\"p0:90\"}\n\n";

/// A node whose `/v1/watch` sends [`EVENTS`], then either ends with [`COMPACTED`] or stays
/// open; records each request's query.
async fn fake_node(then_compacted: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let app =
        Router::new()
            .route(
                "/v1/watch",
                get(
                    move |State(queries): State<Arc<Mutex<Vec<String>>>>,
                          RawQuery(query): RawQuery| async move {
                        queries.lock().unwrap().push(query.unwrap_or_default());
                        let head =
                            futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(EVENTS))]);
                        let body = if then_compacted {
                            Body::from_stream(
                                head.chain(futures::stream::iter([Ok(Bytes::from(COMPACTED))])),
                            )
                        } else {
                            Body::from_stream(head.chain(futures::stream::pending()))
                        };
                        ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
                    },
                ),
            )
            .with_state(Arc::clone(&queries));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, queries)
}

#[tokio::test]
async fn watch_prints_a_line_per_change_and_exits_6_when_compacted() {
    let (url, queries) = fake_node(true).await;
    let output = kv(&["--endpoints", &url, "watch", "app/", "--since", "p0:0"]).await;
    assert_eq!(output.status.code(), Some(6));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "put app/x 12 text\ndelete app/x 12\nexpire app/t 2\n"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("p0:90"),
        "{stderr}"
    );
    assert_eq!(
        queries.lock().unwrap().as_slice(),
        ["prefix=app%2F&since=p0%3A0"]
    );

    let output = kv(&["--endpoints", &url, "watch", "app/", "--json"]).await;
    assert_eq!(output.status.code(), Some(6));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"cursor":"p0:1","type":"put","key":"app/x","version":12,"value":"text"}),
            serde_json::json!({"cursor":"p0:2"}),
            serde_json::json!({"cursor":"p0:3","type":"delete","key":"app/x","version":12}),
            serde_json::json!({"cursor":"p0:4","type":"expire","key":"app/t","version":2}),
            serde_json::json!({"error":"compacted","current":"p0:90","message":lines[4]["message"]}),
        ]
    );
}

#[tokio::test]
async fn ctrl_c_ends_a_watch_with_exit_code_0() {
    let (url, _) = fake_node(false).await;
    let mut child = kv_command(&["--endpoints", &url, "watch", "app/"])
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("put app/x 12 text"));
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    wait_until(|| {
        exited = child.try_wait().unwrap();
        exited.is_some()
    })
    .await;
    let exited = exited.unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
            .await
            .unwrap();
    }
    assert_eq!(exited.code(), Some(0), "{exited:?}, stderr: {stderr}");
}
