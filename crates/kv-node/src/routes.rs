//! The HTTP surface: `app(state)` builds the router so tests can drive it without a socket.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{admission, cluster_api, kv_api, peer_api};

pub fn app(state: AppState) -> Router {
    let keys = Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv_api::get_key)
                .put(kv_api::put_key)
                .delete(kv_api::delete_key),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission::requests,
        ));
    let scans = Router::new()
        .route("/v1/kv", get(kv_api::scan))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission::scans,
        ));
    let admin = Router::new()
        .route("/v1/cluster", get(cluster_api::status))
        .route("/v1/cluster/map", get(cluster_api::map))
        .route("/v1/cluster/nodes", post(cluster_api::join))
        .route("/v1/cluster/nodes/{id}", delete(cluster_api::leave))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admin,
        ));
    // Peer routes read their bodies themselves, within limits of their own. Raft RPCs pass no
    // gate: heartbeats and votes must flow whatever the client load.
    let peer = Router::new()
        .route("/raft/{group}/{rpc}", post(peer_api::raft_rpc))
        .merge(
            Router::new()
                .route(crate::forward::FORWARD_PATH, post(peer_api::forwarded))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    admission::forwarded,
                )),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .merge(keys)
        .merge(scans)
        .merge(admin)
        .merge(peer)
        .route(
            "/v1/kv/",
            get(kv_api::empty_key)
                .put(kv_api::empty_key)
                .delete(kv_api::empty_key),
        )
        .route("/health", get(cluster_api::health))
        .route("/ready", get(cluster_api::ready))
        .route("/metrics", get(cluster_api::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("kv_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("kv_http_request_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp.into_response()
}
