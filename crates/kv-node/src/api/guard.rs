//! The guards every request passes before its handler: who sent it ([`authenticate`], the
//! policy itself is `crate::auth`) and whether this node takes on one more request of its kind
//! now (the admission gates of `crate::admission`).

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::server::Conn;
use crate::state::AppState;

/// Establish who sent the request (see [`crate::auth::Caller`]) and put it in the request's
/// extensions. A token that is given but unknown is refused here (401); what each route needs
/// is checked by the route.
pub(super) async fn authenticate(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    // Served without the HTTP front (a router driven in-process): a plain connection.
    let conn = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|c| c.0.clone());
    let remote = conn.as_ref().map(|c| c.remote);
    let presented = conn.map(|c| c.presented).unwrap_or_default();
    // A node that joins knows no members until it adopts the cluster's map (which comes from
    // them): until then every node certificate of the peer CA may reach it.
    let joining = st.config.join.is_some() && st.epoch().is_none();
    let layout = st.layout();
    let member = |n: kv_ring::NodeId| joining || layout.members.contains_key(&n);
    match st.auth.caller(&presented, req.headers(), member) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(?remote, error = %e, path = req.uri().path(), "refused credentials");
            e.into_response()
        }
    }
}

/// The gate of key requests from clients.
pub(super) async fn requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    st.admission.requests(req, next).await
}

/// The gate of single forwarded operations.
pub(super) async fn forwarded(State(st): State<AppState>, req: Request, next: Next) -> Response {
    st.admission.forwarded(req, next).await
}

/// The gate of scans.
pub(super) async fn scans(State(st): State<AppState>, req: Request, next: Next) -> Response {
    st.admission.scans(req, next).await
}

/// The gate of cluster status pages and membership changes.
pub(super) async fn admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    st.admission.admin(req, next).await
}
