//! Test support for `kv` integration tests: a fake node speaking the client API on a free
//! loopback port, a runner for the built `kv` binary, and `wait_until`.

#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kv_client::api::{ErrorBody, WriteResult};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest a `kv` run may take in a test before it counts as hung.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How the fake node answers key requests.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// PUT: `200 {"key":..,"version":1}`; GET: `200` with 200 bytes.
    Healthy,
    /// Every PUT and GET is answered with this status and a JSON error body.
    Fail(StatusCode),
}

/// What the fake node has seen.
#[derive(Debug, Default)]
pub struct Seen {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub stale_gets: AtomicU64,
}

struct NodeState {
    behaviour: Behaviour,
    seen: Arc<Seen>,
}

/// A fake node serving on `127.0.0.1:<free port>` until dropped.
pub struct FakeNode {
    pub endpoint: String,
    pub seen: Arc<Seen>,
    server: JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeNode {
    pub async fn start(behaviour: Behaviour) -> FakeNode {
        let seen = Arc::new(Seen::default());
        let state = Arc::new(NodeState {
            behaviour,
            seen: Arc::clone(&seen),
        });
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/v1/kv/{*key}", get(read).put(write))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeNode {
            endpoint,
            seen,
            server,
        }
    }

    pub fn puts(&self) -> u64 {
        self.seen.puts.load(Ordering::SeqCst)
    }

    pub fn gets(&self) -> u64 {
        self.seen.gets.load(Ordering::SeqCst)
    }
}

async fn write(
    State(state): State<Arc<NodeState>>,
    Path(key): Path<String>,
    _value: Bytes,
) -> Response {
    state.seen.puts.fetch_add(1, Ordering::SeqCst);
    match state.behaviour {
        Behaviour::Healthy => axum::Json(WriteResult { key, version: 1 }).into_response(),
        Behaviour::Fail(status) => failure(status),
    }
}

async fn read(State(state): State<Arc<NodeState>>, RawQuery(query): RawQuery) -> Response {
    state.seen.gets.fetch_add(1, Ordering::SeqCst);
    if query.as_deref() == Some("consistency=stale") {
        state.seen.stale_gets.fetch_add(1, Ordering::SeqCst);
    }
    match state.behaviour {
        Behaviour::Healthy => vec![b'v'; 200].into_response(),
        Behaviour::Fail(status) => failure(status),
    }
}

fn failure(status: StatusCode) -> Response {
    let body = ErrorBody {
        error: "unavailable".to_owned(),
        message: "no leader yet".to_owned(),
        current_version: None,
        leader: None,
    };
    (status, axum::Json(body)).into_response()
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The built `kv` binary with a clean environment for its `KV_*` variables.
pub fn kv_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv"));
    command
        .args(args)
        .env_remove("KV_ENDPOINTS")
        .env_remove("KV_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `kv` with `args` to completion (failing the test if it outlives [`RUN_LIMIT`]).
pub async fn kv(args: &[&str]) -> Output {
    finish(kv_command(args)).await
}

/// Runs a prepared `kv` command to completion (failing the test if it outlives [`RUN_LIMIT`]).
pub async fn finish(mut command: tokio::process::Command) -> Output {
    let child = command.spawn().unwrap();
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("kv did not stop by itself")
        .unwrap()
}

/// Polls `condition` until it holds, failing the test after [`RUN_LIMIT`].
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parses `kv bench --json` output: exactly one JSON object on stdout.
pub fn json_report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}
