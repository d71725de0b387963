//! Test support for kv-client integration tests: a real cluster (through
//! `kv_node::testing`), clients pointed at it, and misbehaving servers: a proxy that loses one
//! answer, a listener that never answers, a port nobody listens on.

#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_client::Client;
use kv_node::testing::{kv_node_bin, ClusterOptions, TestCluster};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Partitions of the test clusters.
pub const PARTITIONS: u32 = 4;

/// Starts a 3-node cluster with [`PARTITIONS`] partitions (plus `extra_args` for every node)
/// and waits until every node is ready. Fails with a clear message when the `kv-node` binary
/// has not been built into this target directory.
pub async fn start_cluster(extra_args: &[&str]) -> TestCluster {
    let bin = kv_node_bin();
    assert!(
        bin.exists(),
        "the kv-node binary is missing at {}: build it into the same target directory first \
         (`cargo build -p kv-node`, which `cargo test --workspace` does), or set KV_NODE_BIN",
        bin.display()
    );
    TestCluster::start(ClusterOptions {
        nodes: 3,
        partitions: PARTITIONS,
        extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A client of every node of `cluster`, with a deadline generous enough for an election.
pub fn client(cluster: &TestCluster) -> Client {
    let endpoints: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.url(id))
        .collect();
    Client::builder()
        .endpoints(endpoints)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// The partition `key` belongs to, as the server computes it.
pub fn partition_of(key: &str) -> u32 {
    kv_ring::partition_of(key.as_bytes(), PARTITIONS).0
}

/// Requests forwarded by all running nodes so far (their `kv_forwarded_requests_total`).
pub async fn forwarded_requests(cluster: &TestCluster) -> u64 {
    let mut total = 0.0;
    for id in cluster.running() {
        total += cluster
            .metric(id, "kv_forwarded_requests_total", &[])
            .await
            .unwrap();
    }
    total as u64
}

#[allow(unused_imports)] // each test file uses a different part
pub use kv_node::testing::closed_port;

/// A server that accepts connections and never answers, until dropped.
pub struct SilentServer {
    pub url: String,
    task: JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket); // held open, never read or answered
            }
        });
        SilentServer { url, task }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy to one node that loses exactly one answer: the first `PUT` with `If-Match`
/// reaches the node and completes there, then the proxy closes the client's connection
/// without relaying the answer. Everything else is relayed (one request per connection).
pub struct LosingProxy {
    pub url: String,
    lost: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl LosingProxy {
    pub async fn start(upstream: String) -> LosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lost = Arc::new(AtomicU64::new(0));
        let armed = Arc::new(AtomicBool::new(true));
        let http = reqwest::Client::new();
        let task = {
            let lost = Arc::clone(&lost);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(relay(
                        socket,
                        http.clone(),
                        upstream.clone(),
                        Arc::clone(&armed),
                        Arc::clone(&lost),
                    ));
                }
            })
        };
        LosingProxy { url, lost, task }
    }

    /// Answers lost so far (0 or 1).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request as read off the socket.
struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(socket: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawRequest {
        method,
        target,
        headers,
        body,
    })
}

async fn relay(
    mut socket: TcpStream,
    http: reqwest::Client,
    upstream: String,
    armed: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let conditional_put =
        request.method == "PUT" && request.headers.iter().any(|(n, _)| n == "if-match");
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
    let mut out = http.request(method, format!("{upstream}{}", request.target));
    for (name, value) in &request.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            out = out.header(name, value);
        }
    }
    let Ok(response) = out.body(request.body).send().await else {
        return; // the node is down: the client sees the connection close
    };
    let status = response.status();
    let headers = response.headers().clone();
    let Ok(body) = response.bytes().await else {
        return;
    };
    if conditional_put && armed.swap(false, Ordering::SeqCst) {
        // The node has applied the write and answered; the client never learns it.
        lost.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            if let Ok(value) = value.to_str() {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
        }
    }
    answer.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = answer.into_bytes();
    bytes.extend_from_slice(&body);
    let _ = socket.write_all(&bytes).await;
    let _ = socket.shutdown().await;
}
