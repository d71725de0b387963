//! The HTTP surface: `app(state)` builds the router so tests can drive it without a socket;
//! [`router`] builds the part one listener serves when peers have a listener of their own.
//!
//! Every request passes the guards (`guard`: who sent it, then its kind's admission gate)
//! before its handler: `kv` (keys and scans, served here or handed on by `crate::routing`),
//! `watch` (change streams from every partition's history),
//! `cluster` (status, map, routes, membership, health, readiness, metrics) and `peer` (Raft
//! RPCs into kv-raft, operations other nodes forwarded).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;

mod body;
mod cluster;
mod extract;
mod guard;
mod kv;
mod peer;
mod watch;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Clients and peers on one listener.
    Shared,
    /// Clients only: a node with a peer listener of its own (`--listen-peer`).
    Clients,
    /// Peers only: Raft RPCs, forwarded operations, maps and views, and the membership
    /// routes that nodes relay to the metadata leader or send when they join, for node
    /// credentials only.
    Peers,
}

/// Every route, on one listener.
pub fn app(state: AppState) -> Router {
    router(state, Surface::Shared)
}

/// The routes of `surface`, with `/health` on every listener.
pub fn router(state: AppState, surface: Surface) -> Router {
    let keys = Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key)
                .put(kv::put_key)
                .delete(kv::delete_key)
                .post(kv::post_key),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::requests,
        ));
    // A watch takes its room itself: it holds it for as long as its stream lasts.
    let watches = Router::new()
        .route("/v1/watch", get(watch::watch_prefix))
        .route("/v1/watch/{*key}", get(watch::watch_key));
    let scans = Router::new()
        .route("/v1/kv", get(kv::scan))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::scans));
    let status = Router::new()
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/map", get(cluster::map))
        .route("/v1/cluster/routes", get(cluster::routes))
        .route("/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics))
        .route_layer(middleware::from_fn(auth::status_readers));
    let membership = || {
        Router::new()
            .route("/v1/cluster/nodes", post(cluster::join))
            .route("/v1/cluster/nodes/{id}", delete(cluster::leave))
    };
    let admin = Router::new()
        .merge(status)
        .merge(membership())
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::admin));
    // Peer routes read their bodies themselves, within limits of their own. Raft RPCs pass no
    // admission gate: heartbeats and votes must flow whatever the client load.
    let peer = Router::new()
        .route("/raft/{group}/{rpc}", post(peer::raft_rpc))
        .route("/raft/batch", post(peer::raft_batch))
        .route("/internal/v1/view", get(cluster::view))
        // Each operation of a batch passes the forwarded-operations gate on its own.
        .route(crate::wire::BATCH_PATH, post(peer::forwarded_batch))
        .merge(
            Router::new()
                .route(crate::wire::FORWARD_PATH, post(peer::forwarded))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    guard::forwarded,
                )),
        )
        .route_layer(middleware::from_fn(auth::peers_only))
        .layer(axum::extract::DefaultBodyLimit::disable());
    // A node the cluster removed must still learn that it was, so the map is shown to any node
    // certificate of the cluster's CA (or holder of the cluster secret).
    let peer_map = Router::new()
        .route("/internal/v1/map", get(cluster::peer_map))
        .route_layer(middleware::from_fn(auth::nodes_only));
    let clients = Router::new()
        .merge(keys)
        .merge(scans)
        .merge(watches)
        .merge(admin)
        .route(
            "/v1/kv/",
            get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key),
        );
    let peers = Router::new().merge(peer).merge(peer_map);
    let routes = match surface {
        Surface::Shared => clients.merge(peers),
        Surface::Clients => clients,
        // Joins and leaves relayed by members, and a joining node's own request: each handler
        // checks who may do it (`cluster::join_access`).
        Surface::Peers => peers.merge(
            membership()
                .route_layer(middleware::from_fn_with_state(state.clone(), guard::admin))
                .route_layer(middleware::from_fn(auth::nodes_only)),
        ),
    };
    routes
        .route("/health", get(cluster::health))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .with_state(state)
}

async fn no_route(req: Request) -> ApiError {
    ApiError::NotFound {
        code: "no_route",
        message: format!("no route for {} {}", req.method(), req.uri().path()),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Count requests and their latency per route and status.
async fn record_request(State(_st): State<AppState>, req: Request, next: Next) -> Response {
    // Static labels: no allocation per request on the hot path.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = status_label(resp.status().as_str());
    metrics::counter!("kv_http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
    metrics::histogram!("kv_http_request_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp.into_response()
}

/// The routes of [`app`], as metric labels.
const ROUTES: &[&str] = &[
    "/v1/kv/{*key}",
    "/v1/kv/",
    "/v1/kv",
    "/v1/watch",
    "/v1/watch/{*key}",
    "/v1/cluster",
    "/v1/cluster/map",
    "/v1/cluster/nodes",
    "/v1/cluster/nodes/{id}",
    "/health",
    "/ready",
    "/metrics",
    "/raft/{group}/{rpc}",
    "/raft/batch",
    "/internal/v1/kv",
    "/internal/v1/view",
    "/internal/v1/map",
];

fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .copied()
        .find(|r| *r == path)
        .unwrap_or("other")
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// The status code as a `'static` label (every status the node answers is in this list).
fn status_label(status: &str) -> &'static str {
    const STATUSES: &[&str] = &[
        "200", "202", "400", "410", "401", "403", "404", "405", "408", "412", "413", "414", "421",
        "429", "431", "500", "503",
    ];
    STATUSES
        .iter()
        .copied()
        .find(|s| *s == status)
        .unwrap_or("other")
}
