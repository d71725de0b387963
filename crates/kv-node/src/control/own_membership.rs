//! This node's own membership, seen from the node: joining the cluster (`--join`), making sure
//! the map says where clients reach it (a peer listener apart), and noticing that the cluster
//! removed it while it was away.

use std::time::Duration;

use super::membership::add_member;
use crate::layout::{Layout, META_GROUP};
use crate::state::AppState;
use crate::wire::{PeerMap, MAP_PATH};

/// How often a node checks whether the cluster removed it while it was away: no event can
/// tell it, since a removed node hears nothing more from the metadata group.
const REMOVAL_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The removal check job, until `stop` turns true (see [`notice_removal`]).
pub(super) async fn watch_removal(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = super::safety_net(REMOVAL_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = notice_removal(&st).await {
            tracing::debug!(node = %st.config.id, error = %format!("{e:#}"), "removal check");
        }
    }
}

/// The job that publishes this node's client address, until `stop` turns true: on every new
/// map epoch, and on the safety-net tick until the map has it (a retry).
pub(super) async fn publish_client_addr(
    st: AppState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if st.config.listen_peer.is_none() {
        return;
    }
    let mut epochs = st.epoch_changes();
    let mut tick = super::safety_net(super::RECHECK_EVERY);
    while super::next_wake(&mut epochs, &mut tick, &mut stop).await {
        if let Err(e) = publish_once(&st).await {
            tracing::debug!(node = %st.config.id, error = %format!("{e:#}"), "publishing the client address");
        }
    }
}

/// A node the cluster removed while it was down (or cut off) never hears of it through group 0:
/// the leader stopped replicating to it. So a node compares its map with the metadata leader's
/// (or, with no leader known, any member's) now and then; if that map is newer and leaves it
/// out, it adopts it, stops counting itself a member and drops its partitions.
async fn notice_removal(st: &AppState) -> anyhow::Result<()> {
    let me = st.config.id;
    let Some(mine) = st.epoch() else {
        return Ok(());
    };
    if !st.layout().members.contains_key(&me) {
        return Ok(());
    }
    let leader = st
        .host
        .group(META_GROUP)
        .and_then(|g| g.leader())
        .filter(|(id, _)| *id != me)
        .map(|(_, addr)| addr);
    let layout = st.layout();
    let peers: Vec<String> = match leader {
        Some(addr) => vec![addr],
        None => layout
            .members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, a)| a.clone())
            .collect(),
    };
    for addr in peers {
        let answer = st
            .http
            .get(st.peer_url(&addr, MAP_PATH))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        let Ok(theirs) = answer.json::<PeerMap>().await else {
            continue;
        };
        let Some(epoch) = theirs.epoch.filter(|e| *e > mine) else {
            continue;
        };
        if theirs.members.contains_key(&me) {
            // Still a member: group 0 brings the newer map here soon enough.
            return Ok(());
        }
        let layout = Layout::compute(theirs.members, theirs.ring)?;
        tracing::warn!(
            node = %me,
            epoch,
            "the cluster removed this node while it was away; dropping its partitions"
        );
        st.set_layout(layout, epoch);
        return Ok(());
    }
    Ok(())
}

/// What this node asks to be added as.
fn join_request(st: &AppState) -> kv_client::api::JoinRequest {
    let config = &st.config;
    kv_client::api::JoinRequest {
        id: config.id.0,
        addr: config.peer_advertise.clone(),
        client_addr: config
            .listen_peer
            .is_some()
            .then(|| config.advertise.clone()),
    }
}

/// routes by those addresses): when the map it adopted says otherwise, it asks the metadata
/// leader to record its client address, as a join of a member already there.
async fn publish_once(st: &AppState) -> anyhow::Result<()> {
    let config = &st.config;
    let layout = st.layout();
    if config.listen_peer.is_none()
        || st.epoch().is_none()
        || layout.addr(config.id) != Some(config.peer_advertise.as_str())
        || layout.client_addr(config.id) == Some(config.advertise.as_str())
    {
        return Ok(());
    }
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| anyhow::anyhow!("no metadata group"))?;
    let request = join_request(st);
    if group.is_leader() {
        add_member(st, config.id, &request.addr, request.client_addr.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(());
    }
    let Some((_, leader)) = group.leader() else {
        return Ok(());
    };
    let answer = st
        .http
        .post(st.peer_url(&leader, "/v1/cluster/nodes"))
        .timeout(st.config.raft.request_timeout)
        .json(&request)
        .send()
        .await?;
    if !answer.status().is_success() {
        anyhow::bail!("the metadata leader answered {}", answer.status());
    }
    tracing::info!(client_addr = %config.advertise, "published this node's client address");
    Ok(())
}

/// For a node started with `--join`: ask the cluster to add it, until it has.
pub(super) async fn join(st: AppState, via: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let body = join_request(&st);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = st
            .http
            .post(st.peer_url(&via, "/v1/cluster/nodes"))
            .timeout(st.config.raft.request_timeout * 2)
            .json(&body)
            .send();
        let attempt = tokio::select! {
            attempt = attempt => attempt,
            _ = stop.wait_for(|s| *s) => return,
        };
        match attempt {
            Ok(r) if r.status().is_success() => {
                tracing::info!(via, "joined the cluster");
                return;
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(via, %status, answer = %text, "join refused; retrying");
            }
            Err(e) => tracing::warn!(via, error = %e, "join request failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
