//! The kv store server. One `kv-node` process is one cluster member: it hosts the Raft groups
//! of the partitions the ring assigns it, serves the HTTP/JSON client API for every key (serving
//! what it leads, forwarding the rest), and answers its peers' Raft RPCs on the same listener or,
//! with `--listen-peer`, on one of their own.
//!
//! Start from [`Config`] (flags, `KV_*` environment, TOML file) and [`Node::start`], which returns
//! a running node; [`run`] is what the binary calls, with the sockets it may have [`Inherited`]. The crate in layers, each using only those
//! below it:
//!
//! - `api`: the HTTP routes. A client request (`api::kv`: get, put, delete, scan; `api::cluster`:
//!   status, map, routes, membership, health, metrics) passes the guards (`api::guard`:
//!   authentication, admission), and its key's partition is looked up and the operation served
//!   here or handed on by `routing`. A watch (`api::watch`) streams the changes of keys from
//!   every partition's history, one feed task per partition for as long as the stream lasts
//!   (fed by `changes` where this node hosts the partition).
//!   Peer routes (`api::peer`) take Raft RPCs into kv-raft and run operations other nodes
//!   forwarded.
//! - `control`: the background jobs, one owner task each, started and stopped by [`Node`]: the
//!   metadata group (the cluster map and membership), partition moves, leadership balance and
//!   this node's own membership (see its table of jobs and what wakes each).
//! - `routing`: where an operation goes (this node, a replica, the leader) and the batched
//!   operation channel to each peer (`routing::channel`).
//! - `state`: [`AppState`], what every handler and job shares.
//! - below: `layout` (the map as routing sees it, and group numbering), [`wire`] (internal
//!   messages between nodes), `changes` (each hosted group's hub, handing its changes to the
//!   watches they match), `auth`, `admission`, `tls`, `listeners` (bound or inherited sockets),
//!   `server` (what serves a listener), `config`, `error`.
//!
//! `testing` (feature `test-util`) starts whole clusters of real processes for tests.

mod admission;
mod api;
pub mod auth;
mod changes;
mod config;
mod control;
mod error;
mod layout;
mod listeners;
pub mod logging;
mod routing;
mod server;
mod state;
#[cfg(feature = "test-util")]
pub mod testing;
mod tls;
mod ttl;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use kv_raft::RaftHost;
use kv_raft::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;

pub use api::{app, router, Surface};
pub use config::{Config, Flags, StorageKind};
pub use listeners::Inherited;
pub use state::AppState;

use crate::control::Control;
use crate::layout::Layout;

/// The process-wide Prometheus recorder (metrics macros write to one global recorder).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// A running node.
pub struct Node {
    state: AppState,
    addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    peer_server: Option<JoinHandle<std::io::Result<()>>>,
    control: Control,
    reloader: JoinHandle<()>,
}

impl Node {
    /// Open storage, start serving, and start (or recover) this node's partition groups.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Node::start_with(config, Inherited::none()).await
    }

    /// [`Node::start`] on the listening sockets the parent process handed over, where it did.
    pub async fn start_with(mut config: Config, inherited: Inherited) -> anyhow::Result<Node> {
        if let Some(path) = &config.listen_addr_file {
            listeners::ListenAddrs::clear(path).await?;
        }
        // First, so that port 0 is a real port in every address the node hands out.
        let listeners = listeners::Listeners::open(&config, inherited).await?;
        let addr = listeners.clients.local_addr()?;
        let peer_addr = listeners
            .peers
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        config.bound_to(addr, peer_addr);
        let config = Arc::new(config);
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let store = match config.storage {
            StorageKind::Redb => {
                let path = config.data_dir.join("kv.redb");
                let cache = config.cache_bytes;
                let open =
                    tokio::task::spawn_blocking(move || Store::redb_with_cache(&path, cache));
                open.await?.context("cannot open the redb store")?
            }
            StorageKind::Memory => Store::memory()?,
        };
        let tls = match config.tls.enabled() {
            true => Some(tls::Tls::load(config.tls.clone()).context("cannot set up TLS")?),
            false => None,
        };
        let auth = auth::Auth::load(
            config.auth_file.clone(),
            config.peer_token_file.clone(),
            tls.is_some(),
            config.metrics_public,
        )
        .context("cannot read the auth files")?;
        warn_if_open(&config, &auth);
        let http = peer_client(&auth, tls.as_deref())?;
        let scheme = match tls {
            Some(_) => kv_raft::Scheme::Https,
            None => kv_raft::Scheme::Http,
        };
        let host = Arc::new(RaftHost::new(
            config.id,
            store,
            http.clone(),
            scheme,
            &config.raft,
            config.data_dir.join("snapshots"),
        )?);
        let layout = Layout::compute(config.initial_cluster.clone(), config.ring)?;
        let state = AppState::new(
            config.clone(),
            host.clone(),
            http,
            layout,
            metrics_handle(),
            auth,
            tls.clone(),
        );

        let listeners::Listeners {
            clients: listener,
            peers: peer_listener,
            inherited,
        } = listeners;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let limits = server::ServerLimits {
            max_connections: config.limits.max_connections,
            header_read_timeout: config.limits.client_timeout,
            // The body timeout of the handlers answers 408 first; this only ends a stall.
            stall_timeout: Some(config.limits.client_timeout * 2),
            key_prefix: Some("/v1/kv/"),
            ..server::ServerLimits::default()
        };
        let until_stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let client_surface = match peer_listener {
            Some(_) => api::Surface::Clients,
            None => api::Surface::Shared,
        };
        let server = tokio::spawn(server::serve(
            listener,
            api::router(state.clone(), client_surface),
            limits.clone(),
            tls.clone().map(|t| (t, tls::Side::Clients)),
            until_stopped(stop.clone()),
        ));
        let peer_server = peer_listener.map(|listener| {
            tokio::spawn(server::serve(
                listener,
                api::router(state.clone(), api::Surface::Peers),
                server::ServerLimits {
                    key_prefix: None,
                    ..limits
                },
                tls.clone().map(|t| (t, tls::Side::Peers)),
                until_stopped(stop),
            ))
        });
        let reloader = tokio::spawn(reload_on_sighup(state.clone(), shutdown.subscribe()));
        // A stable line: tools and tests read the addresses and `inherited` from it.
        match peer_addr {
            Some(peers) => {
                tracing::info!(node = %config.id, %addr, %peers, %inherited, "listening for clients and, apart, for peers")
            }
            None => tracing::info!(node = %config.id, %addr, %inherited, "listening"),
        }
        if let Some(path) = &config.listen_addr_file {
            let report = listeners::ListenAddrs {
                listen: addr,
                listen_peer: peer_addr,
            };
            report.write(path).await?;
        }

        let control = Control::start(&state).await?;
        Ok(Node {
            state,
            addr,
            peer_addr,
            shutdown,
            server,
            peer_server,
            control,
            reloader,
        })
    }

    /// The address the node listens on (for clients, when peers have a listener apart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the peer listener, if peers have one apart (`--listen-peer`).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stop accepting requests, finish in-flight ones, stop every group, flush storage.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.control.stop(&self.state).await;
        let _ = self.reloader.await;
        self.state.background.abort_all();
        let servers = async {
            let peers = async {
                match self.peer_server {
                    Some(server) => server.await,
                    None => Ok(Ok(())),
                }
            };
            let (clients, peers) = tokio::join!(self.server, peers);
            clients??;
            peers??;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), servers).await {
            Ok(done) => done?,
            Err(_) => tracing::warn!("in-flight requests did not finish within 10s"),
        }
        self.state.host.shutdown().await;
        Ok(())
    }
}

/// The node's one HTTP client, for everything it sends to peers: with the node certificate and
/// the peer CA when the cluster speaks TLS, and the cluster secret when it has one.
fn peer_client(auth: &auth::Auth, tls: Option<&tls::Tls>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(secret) = auth.peer_token() {
        let mut value = reqwest::header::HeaderValue::from_bytes(&secret)
            .context("the peer token must be printable ASCII")?;
        value.set_sensitive(true);
        headers.insert(auth::HEADER_PEER_TOKEN, value);
    }
    let builder = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(1))
        .pool_idle_timeout(Duration::from_secs(60))
        // Peers answer; they never redirect. Not following keeps a forged 3xx from sending
        // a request (and the peer secret it carries) elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true);
    let builder = match tls.and_then(tls::Tls::peer_client_config) {
        Some(config) => builder.tls_backend_preconfigured(config),
        // Plain HTTP: no CA store is needed (minimal images have none).
        None => builder.tls_certs_only(Vec::new()),
    };
    builder.build().context("cannot build the HTTP client")
}

/// Say once, at start, what is not protected.
fn warn_if_open(config: &Config, auth: &auth::Auth) {
    if !config.tls.enabled() {
        tracing::warn!(
            "TLS is off: requests and replication travel in clear text (see --cert-file, --peer-cert-file)"
        );
        if !auth.peers_guarded() {
            tracing::warn!(
                "peer routes are open to anyone who reaches this port: set --peer-token-file or node certificates"
            );
        }
    }
    if !auth.tokens_required() {
        tracing::warn!("no --auth-file: every client may read, write and change membership");
    }
}

/// Reload the TLS files and the auth files on SIGHUP, until shutdown.
async fn reload_on_sighup(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; certificates reload only on restart");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Some(tls) = &st.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificates")
                    }
                }
            }
            match st.auth.reload() {
                Ok(()) => tracing::info!("SIGHUP: auth files reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: auth reload failed; keeping the old tokens")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (st, stop.wait_for(|s| *s).await);
    }
}

/// Run a node until SIGINT or SIGTERM, then shut it down gracefully.
pub async fn run(config: Config, inherited: Inherited) -> anyhow::Result<()> {
    let node = Node::start_with(config, inherited).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
