//! Test support for `kv` integration tests: a real cluster (through `kv_node::testing`), a
//! fake node speaking the client API on a free loopback port (over HTTP, or over TLS with
//! client certificates and a token), runners for the built `kv` binary, and `wait_until`.

#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kv_client::api::{ErrorBody, WriteResult};
use kv_node::testing::{kv_node_bin, ClusterOptions, TestCluster};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest a `kv` run may take in a test before it counts as hung.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How the fake node answers key requests.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// PUT: `200 {"key":..,"version":1}`; GET: `200` with 200 bytes and `ETag: "1"`.
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
    /// TLS connections whose client presented a certificate the node accepted.
    pub client_certs: AtomicU64,
}

/// What a TLS fake node serves with and asks for.
pub struct TlsSetup<'a> {
    /// The node's certificate and key (PEM files).
    pub cert: &'a Path,
    pub key: &'a Path,
    /// The CA that must have signed every client's certificate.
    pub client_ca: &'a Path,
    /// The token every request must carry as `Authorization: Bearer`; others get `401`.
    pub token: &'a str,
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
        let app = app(behaviour, &seen);
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

    /// A fake node serving HTTPS as `tls` says: a client must present a certificate signed by
    /// the client CA and the token. Its endpoint is `https://127.0.0.1:<port>`.
    pub async fn start_tls(behaviour: Behaviour, tls: TlsSetup<'_>) -> FakeNode {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(tls.client_ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let chain = CertificateDer::pem_file_iter(tls.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(tls.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let seen = Arc::new(Seen::default());
        let expected = format!("Bearer {}", tls.token);
        let app = app(behaviour, &seen).layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let authorized = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                async move {
                    if authorized {
                        next.run(request).await
                    } else {
                        failure(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "missing or unknown token",
                        )
                    }
                }
            },
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let counted = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app, seen) = (acceptor.clone(), app.clone(), Arc::clone(&counted));
                tokio::spawn(async move {
                    // Refused handshakes are what some tests are about.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.peer_certificates().is_some() {
                        seen.client_certs.fetch_add(1, Ordering::SeqCst);
                    }
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
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

/// The fake node's routes: `/health`, and GET and PUT of keys, answered as `behaviour` says.
fn app(behaviour: Behaviour, seen: &Arc<Seen>) -> Router {
    let state = Arc::new(NodeState {
        behaviour,
        seen: Arc::clone(seen),
    });
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/kv/{*key}", get(read).put(write))
        .with_state(state)
}

async fn write(
    State(state): State<Arc<NodeState>>,
    UrlPath(key): UrlPath<String>,
    _value: Bytes,
) -> Response {
    state.seen.puts.fetch_add(1, Ordering::SeqCst);
    match state.behaviour {
        Behaviour::Healthy => axum::Json(WriteResult { key, version: 1 }).into_response(),
        Behaviour::Fail(status) => failure(status, "unavailable", "no leader yet"),
    }
}

async fn read(State(state): State<Arc<NodeState>>, RawQuery(query): RawQuery) -> Response {
    state.seen.gets.fetch_add(1, Ordering::SeqCst);
    if query.as_deref() == Some("consistency=stale") {
        state.seen.stale_gets.fetch_add(1, Ordering::SeqCst);
    }
    match state.behaviour {
        Behaviour::Healthy => ([(header::ETAG, "\"1\"")], vec![b'v'; 200]).into_response(),
        Behaviour::Fail(status) => failure(status, "unavailable", "no leader yet"),
    }
}

fn failure(status: StatusCode, error: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: error.to_owned(),
        message: message.to_owned(),
        current_version: None,
        leader: None,
    };
    (status, axum::Json(body)).into_response()
}

#[allow(unused_imports)] // each test file uses a different part
pub use kv_node::testing::closed_port;

/// The built `kv` binary with a clean environment for its `KV_*` variables.
pub fn kv_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv"));
    command
        .args(args)
        .env_remove("KV_ENDPOINTS")
        .env_remove("KV_TIMEOUT")
        .env_remove("KV_CACERT")
        .env_remove("KV_CERT")
        .env_remove("KV_KEY")
        .env_remove("KV_TOKEN")
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

/// Polls `condition` until it holds, failing the test after [`RUN_LIMIT`] (the harness's
/// `wait_until`, for a condition that cannot fail).
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    kv_node::testing::wait_until(RUN_LIMIT, "the condition", || {
        let held = condition();
        async move { Ok(held.then_some(())) }
    })
    .await
    .unwrap();
}

/// Parses `kv bench --json` output: exactly one JSON object on stdout.
pub fn json_report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

/// A real 3-node cluster with 4 partitions, and the runtime its harness runs on, so tests can
/// run `kv` synchronously (with assert_cmd) on the test thread.
pub struct RealCluster {
    pub cluster: TestCluster,
    pub runtime: tokio::runtime::Runtime,
}

impl RealCluster {
    /// Starts the cluster and waits until every node is ready. Fails with a clear message when
    /// the `kv-node` binary has not been built into this target directory.
    pub fn start() -> RealCluster {
        Self::start_with(ClusterOptions {
            nodes: 3,
            partitions: 4,
            ..Default::default()
        })
    }

    /// [`RealCluster::start`] with other options (TLS, tokens).
    pub fn start_with(opts: ClusterOptions) -> RealCluster {
        let bin = kv_node_bin();
        assert!(
            bin.exists(),
            "the kv-node binary is missing at {}: build it into the same target directory \
             first (`cargo build -p kv-node`, which `cargo test --workspace` does), or set \
             KV_NODE_BIN",
            bin.display()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cluster = runtime.block_on(TestCluster::start(opts)).unwrap();
        RealCluster { cluster, runtime }
    }

    /// Every node's URL, comma-separated, as `--endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.cluster
            .ids()
            .into_iter()
            .map(|id| self.cluster.url(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `kv --endpoints <all nodes> <args>`, ready to run.
    pub fn kv(&self, args: &[&str]) -> assert_cmd::Command {
        let mut command = kv_sync(&["--endpoints", &self.endpoints()]);
        command.args(args);
        command
    }
}

/// The built `kv` binary as an assert_cmd command, with a clean environment for its `KV_*`
/// variables and [`RUN_LIMIT`] as its timeout.
pub fn kv_sync(args: &[&str]) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_kv"));
    command
        .args(args)
        .env_remove("KV_ENDPOINTS")
        .env_remove("KV_TIMEOUT")
        .env_remove("KV_CACERT")
        .env_remove("KV_CERT")
        .env_remove("KV_KEY")
        .env_remove("KV_TOKEN")
        .timeout(RUN_LIMIT);
    command
}

/// Stdout of a successful run, as text (failing the test with both streams otherwise).
pub fn success(command: &mut assert_cmd::Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "kv failed: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command expected to fail: its exit code, stdout, and its one-line stderr (checked to
/// be one `error: ` line).
pub fn fails(command: &mut assert_cmd::Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "not a one-line error: {stderr:?}"
    );
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        stderr,
    )
}
