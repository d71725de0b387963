//! Talking to the other members outside Raft: is a node up, and what does each member see.

use std::time::Duration;

use kv_client::api::ClusterStatus;

use crate::state::AppState;

/// Whether a kv node answers `GET /health` at `addr` within a second.
pub async fn answers_health(st: &AppState, addr: &str) -> bool {
    st.http
        .get(st.peer_url(addr, "/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Who a node says it is, in its `/health` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node: u64,
    pub cluster_id: Option<u64>,
}

/// The identity of the kv node answering `GET /health` at `addr` within a second.
pub async fn identity(st: &AppState, addr: &str) -> Option<Identity> {
    let answer = st
        .http
        .get(st.peer_url(addr, "/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let health: kv_client::api::Health = answer.json().await.ok()?;
    let cluster_id = match health.cluster_id.as_deref() {
        None => None,
        Some(hex) => Some(u64::from_str_radix(hex, 16).ok()?),
    };
    Some(Identity {
        node: health.node,
        cluster_id,
    })
}

/// What every other member of the map sees (`/internal/v1/view`), asked concurrently;
/// members that do not answer within two seconds are left out (a loaded node builds its view
/// slowly: one Raft round trip per hosted group).
pub async fn member_views(st: &AppState) -> Vec<ClusterStatus> {
    let layout = st.layout();
    let peers: Vec<&String> = layout
        .members
        .iter()
        .filter(|(id, _)| **id != st.config.id)
        .map(|(_, addr)| addr)
        .collect();
    let answers = futures::future::join_all(peers.iter().map(|addr| async move {
        let answer = st
            .http
            .get(st.peer_url(addr, "/internal/v1/view"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        answer.json::<ClusterStatus>().await.ok()
    }))
    .await;
    answers.into_iter().flatten().collect()
}
