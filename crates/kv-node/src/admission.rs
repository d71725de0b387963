//! How much client work a node takes on at once, per kind of request. Over the limit, a request
//! is refused at once with `429` and `Retry-After` (JSON) instead of queueing: a burst then
//! cannot pile up work that starves the Raft cores' heartbeats and votes, which have no limit
//! here (peer RPCs are never admitted through these gates).

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::ApiError;

/// One gate per kind of request.
pub struct Admission {
    /// Key requests from clients.
    requests: Arc<Semaphore>,
    /// Operations forwarded by other nodes (scan pages included).
    forwarded: Arc<Semaphore>,
    scans: Arc<Semaphore>,
    /// Cluster status and membership changes.
    admin: Arc<Semaphore>,
    /// Blocking reads (`?wait=`), from clients or forwarded: they mostly wait, so they have
    /// a gate of their own instead of holding the others' room.
    waits: Arc<Semaphore>,
    /// Watch streams open at once (each holds a connection until its client leaves).
    watches: Arc<Semaphore>,
}

/// Blocking reads waiting at once on one node.
pub const MAX_WAITING_READS: usize = 4096;

/// Watch streams open at once on one node.
pub const MAX_WATCHES: usize = 4096;

/// Cluster status pages and membership changes served at once.
const MAX_ADMIN: usize = 16;

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Admission {
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            forwarded: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            scans: Arc::new(Semaphore::new(limits.max_concurrent_scans)),
            admin: Arc::new(Semaphore::new(MAX_ADMIN)),
            waits: Arc::new(Semaphore::new(MAX_WAITING_READS)),
            watches: Arc::new(Semaphore::new(MAX_WATCHES)),
        }
    }
}

impl Admission {
    /// Room for one more forwarded operation (one of a batch), or the `429` it gets.
    pub fn try_forwarded(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        try_admit(&self.forwarded, "forwarded operations")
    }

    /// Room for one more blocking read, or the `429` it gets.
    pub fn try_wait(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        try_admit(&self.waits, "blocking reads")
    }

    /// Room for one more watch stream, held until the stream ends, or the `429` it gets.
    pub fn try_watch(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        try_admit(&self.watches, "watches")
    }
}

fn try_admit(gate: &Arc<Semaphore>, what: &'static str) -> Result<OwnedSemaphorePermit, ApiError> {
    gate.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("kv_requests_refused_total", "kind" => what).increment(1);
        ApiError::Overloaded(format!(
            "this node is serving as many {what} as it takes; retry"
        ))
    })
}

async fn admit(gate: &Arc<Semaphore>, what: &'static str, req: Request, next: Next) -> Response {
    match try_admit(gate, what) {
        Ok(_permit) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

impl Admission {
    /// Run a key request from a client through its gate.
    pub(crate) async fn requests(&self, req: Request, next: Next) -> Response {
        let blocking = req.method() == axum::http::Method::GET
            && req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=")));
        match blocking {
            true => admit(&self.waits, "blocking reads", req, next).await,
            false => admit(&self.requests, "requests", req, next).await,
        }
    }

    /// Run a single forwarded operation through its gate.
    pub(crate) async fn forwarded(&self, req: Request, next: Next) -> Response {
        admit(&self.forwarded, "forwarded operations", req, next).await
    }

    /// Run a scan through its gate.
    pub(crate) async fn scans(&self, req: Request, next: Next) -> Response {
        admit(&self.scans, "scans", req, next).await
    }

    /// Run a cluster status page or membership change through its gate.
    pub(crate) async fn admin(&self, req: Request, next: Next) -> Response {
        admit(&self.admin, "cluster requests", req, next).await
    }
}
