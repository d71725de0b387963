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
    layout: Arc<RwLock<Arc<Layout>>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

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
            layout: Arc::new(RwLock::new(Arc::new(layout))),
            metrics,
        }
    }

    /// The current cluster layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
