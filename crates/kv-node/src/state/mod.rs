//! What every request handler and control job shares: [`AppState`], built from the layers
//! below it (config, auth, admission, TLS, the layout, the operation channels to peers) and
//! the record of partition moves ([`moves`]). Nothing here imports the API, routing or the
//! control jobs.

use std::sync::{Arc, RwLock};

use kv_raft::RaftHost;

use crate::config::Config;
use crate::layout::Layout;

mod moves;

pub(crate) use moves::{Moves, Phase, Progress};

/// Shared state of a running node. Cheap to clone: one reference count (every request
/// handler takes a clone).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What an [`AppState`] refers to.
pub struct Shared {
    pub config: Arc<Config>,
    pub host: Arc<RaftHost>,
    /// The node's one pooled HTTP client (forwarding, peer queries).
    pub http: reqwest::Client,
    layout: Arc<RwLock<(Arc<Layout>, Option<u64>)>>,
    /// The epoch of the adopted map, for the jobs that wake when it changes.
    epochs: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The partition moves this node leads.
    pub(crate) moves: Arc<Moves>,
    /// One-off background tasks, stopped when the node shuts down.
    pub background: Arc<Background>,
    /// How much client work this node takes on at once.
    pub admission: Arc<crate::admission::Admission>,
    /// The cluster's id, once this node has adopted a map that carries one.
    cluster_id: Arc<std::sync::OnceLock<u64>>,
    /// Tokens, the peer secret, and who may do what.
    pub auth: Arc<crate::auth::Auth>,
    /// The certificates of the listener and of connections to peers, if TLS is on.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The channels that carry forwarded operations to each peer.
    pub forwarding: crate::routing::channel::OpChannels,
    /// Wakes the expirer (`control::expiry`): this node led a write that gave a key a
    /// deadline, which may come before any it was waiting for.
    pub(crate) expiry: Arc<tokio::sync::Notify>,
    /// Each hosted group's fan-out of its changes to this node's watches.
    pub(crate) changes: Arc<crate::changes::Hubs>,
}

/// One-off background tasks of a node (each ends by itself; shutdown aborts the rest).
#[derive(Default)]
pub struct Background(std::sync::Mutex<tokio::task::JoinSet<()>>);

impl Background {
    /// Run `task` in the background.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Stop every task still running.
    pub fn abort_all(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).abort_all();
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        host: Arc<RaftHost>,
        http: reqwest::Client,
        layout: Layout,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        auth: Arc<crate::auth::Auth>,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Self {
        AppState(Arc::new(Shared {
            moves: Arc::new(Moves::new(config.max_moves)),
            admission: Arc::new(crate::admission::Admission::new(&config.limits)),
            config,
            host,
            layout: Arc::new(RwLock::new((Arc::new(layout), None))),
            epochs: Arc::new(tokio::sync::watch::Sender::new(None)),
            metrics,
            background: Arc::default(),
            cluster_id: Arc::default(),
            auth,
            forwarding: crate::routing::channel::OpChannels::new(http.clone(), tls.is_some()),
            expiry: Arc::default(),
            changes: Arc::default(),
            http,
            tls,
        }))
    }

    /// The URL of `path` on peer `addr` (`https` when the cluster speaks TLS).
    pub fn peer_url(&self, addr: &str, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}{path}")
    }

    /// The current cluster layout: the metadata group's map once adopted, before that the
    /// layout computed from `--initial-cluster`.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Epoch of the adopted cluster map (`None` until the first one is adopted).
    pub fn epoch(&self) -> Option<u64> {
        self.layout.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The id of the cluster this node belongs to, once known.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster_id.get().copied()
    }

    /// Record the cluster's id (it never changes; a second call is ignored).
    pub fn set_cluster_id(&self, id: u64) {
        let _ = self.cluster_id.set(id);
    }

    /// Route by `layout`, the cluster map of `epoch`, from now on.
    pub fn set_layout(&self, layout: Layout, epoch: u64) {
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(layout), Some(epoch));
        self.epochs.send_if_modified(|have| {
            let newer = *have != Some(epoch);
            *have = Some(epoch);
            newer
        });
    }

    /// Changes of the adopted map's epoch, from now on.
    pub fn epoch_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.epochs.subscribe()
    }
}
