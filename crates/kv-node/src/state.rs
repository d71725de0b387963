//! What every request handler shares.

use std::sync::{Arc, RwLock};

use kv_raft::RaftHost;

use crate::config::Config;
use crate::placement::Layout;

/// Shared state of a running node. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub host: Arc<RaftHost>,
    /// The node's one pooled HTTP client (forwarding, peer queries).
    pub http: reqwest::Client,
    layout: Arc<RwLock<(Arc<Layout>, Option<u64>)>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Partitions with a move in flight, and the permits bounding how many run at once.
    moves: Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
    move_slots: Arc<tokio::sync::Semaphore>,
}

/// Partition moves one node leads at once.
pub const MAX_CONCURRENT_MOVES: usize = 2;

impl AppState {
    pub fn new(
        config: Arc<Config>,
        host: Arc<RaftHost>,
        http: reqwest::Client,
        layout: Layout,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Self {
        AppState {
            config,
            host,
            http,
            layout: Arc::new(RwLock::new((Arc::new(layout), None))),
            metrics,
            moves: Arc::default(),
            move_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_MOVES)),
        }
    }

    /// Partitions whose move this node is running.
    pub fn moves_in_flight(&self) -> Vec<u32> {
        self.moves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Start moving partition `p` to `desired` unless a move of it is already running.
    pub fn start_move(
        &self,
        p: kv_ring::PartitionId,
        group: kv_raft::Group,
        desired: std::collections::BTreeSet<u64>,
        layout: Arc<Layout>,
    ) {
        if !self
            .moves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.0)
        {
            return;
        }
        let moves = self.moves.clone();
        let slots = self.move_slots.clone();
        tokio::spawn(async move {
            if let Ok(_permit) = slots.acquire_owned().await {
                if let Err(e) = crate::metadata::run_move(p, group, desired, layout).await {
                    tracing::warn!(partition = p.0, error = %format!("{e:#}"), "partition move failed; will retry");
                }
            }
            moves.lock().unwrap_or_else(|p| p.into_inner()).remove(&p.0);
        });
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

    /// Route by `layout`, the cluster map of `epoch`, from now on.
    pub fn set_layout(&self, layout: Layout, epoch: u64) {
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(layout), Some(epoch));
    }
}
