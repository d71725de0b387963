//! Membership changes, on the metadata leader: adding a member (a join) and removing one (a
//! leave, or the forced removal of a dead node), each a compare-and-set of the cluster map with
//! the placement recomputed over the new member set.

use super::map::{local_map, write_command};
use crate::config::valid_addr;
use crate::error::ApiError;
use crate::layout::{ClusterMap, META_GROUP};
use crate::state::AppState;
use kv_raft::{NodeId, Outcome};

/// On the metadata leader: add member `id` at `addr` (and, with a peer listener apart, serving
/// clients at `client_addr`) by writing a new map (epoch + 1) with a placement recomputed over
/// the new member set. Idempotent for the same id and address; for a member already there, a
/// new `client_addr` is recorded (that is how a member publishes it).
pub(crate) async fn add_member(
    st: &AppState,
    id: NodeId,
    addr: &str,
    client_addr: Option<&str>,
) -> Result<u64, ApiError> {
    if id.0 == 0 || !valid_addr(addr) || !client_addr.is_none_or(valid_addr) {
        return Err(ApiError::bad_request(
            "invalid_member",
            format!("a member needs a positive id and host:port addresses, got {id} at {addr:?}"),
        ));
    }
    let taken = |a: &String| ApiError::Conflict {
        code: "member_exists",
        message: format!("node {id} is already a member at {a}"),
    };
    let current = local_map(st).await.ok().flatten();
    let members = current
        .as_ref()
        .map(|(_, m)| m.members.clone())
        .unwrap_or_default();
    let known = match members.get(&id) {
        Some(a) if a != addr => return Err(taken(a)),
        Some(_) => true,
        None => false,
    };
    if let Some((other, _)) = members.iter().find(|(m, a)| **m != id && *a == addr) {
        return Err(ApiError::Conflict {
            code: "address_in_use",
            message: format!("{addr} is the address of member {other}"),
        });
    }
    if !known {
        check_identity(st, id, addr, current.and_then(|(_, m)| m.cluster_id)).await?;
    }
    // Where clients reach it: recorded only when it differs from the member address.
    let serves_clients_at = client_addr.filter(|c| *c != addr);
    let epoch = change_members(st, |map| {
        let mut next = map.clone();
        match map.members.get(&id) {
            Some(a) if a != addr => return Err(taken(a)),
            Some(_) if map.clients.get(&id).map(String::as_str) == serves_clients_at => {
                return Ok(None)
            }
            _ => {}
        }
        next.members.insert(id, addr.to_string());
        match serves_clients_at {
            Some(c) => next.clients.insert(id, c.to_string()),
            None => next.clients.remove(&id),
        };
        Ok(Some(next))
    })
    .await?;
    tracing::info!(%id, addr, client_addr, epoch, "member added or updated");
    Ok(epoch)
}

/// A node asking to join must be who it says: the node answering at `addr` must have id `id`
/// and must not belong to another cluster. (A node may not claim a member's address, and a
/// typo must not become a member that partitions move to and never reach.)
async fn check_identity(
    st: &AppState,
    id: NodeId,
    addr: &str,
    cluster: Option<u64>,
) -> Result<(), ApiError> {
    let Some(found) = super::peers::identity(st, addr).await else {
        return Err(ApiError::bad_request(
            "invalid_member",
            format!("no kv node answers at {addr}; start it (with --join) before adding it"),
        ));
    };
    if found.node != id {
        return Err(ApiError::Conflict {
            code: "identity_mismatch",
            message: format!("the node at {addr} is node {}, not node {id}", found.node),
        });
    }
    if let (Some(theirs), Some(ours)) = (found.cluster_id, cluster) {
        if theirs != ours {
            return Err(ApiError::Conflict {
                code: "other_cluster",
                message: format!("the node at {addr} belongs to another cluster ({theirs:016x})"),
            });
        }
    }
    Ok(())
}

/// On the metadata leader: remove member `id` by writing a map without it, so its partitions
/// are re-replicated onto the others before it leaves their groups. Without `force` the node
/// must be up (it drains); `force` removes a dead node, re-replicating from the survivors.
/// Refuses to leave fewer members than the replication factor.
pub(crate) async fn remove_member(st: &AppState, id: NodeId, force: bool) -> Result<u64, ApiError> {
    if !force {
        let addr = local_map(st)
            .await
            .ok()
            .flatten()
            .and_then(|(_, map)| map.members.get(&id).cloned());
        if let Some(addr) = addr {
            if !super::peers::answers_health(st, &addr).await {
                return Err(ApiError::Conflict {
                    code: "node_unreachable",
                    message: format!(
                        "node {id} does not answer at {addr}, so it cannot drain; remove a dead node with ?force=true"
                    ),
                });
            }
        }
    }
    // Partitions move onto the remaining members: they must all be up, or those moves stall.
    let others: Vec<(NodeId, String)> = local_map(st)
        .await
        .ok()
        .flatten()
        .map(|(_, map)| map.members.into_iter().filter(|(m, _)| *m != id).collect())
        .unwrap_or_default();
    for (other, addr) in &others {
        if !super::peers::answers_health(st, addr).await {
            return Err(ApiError::Conflict {
                code: "member_unreachable",
                message: format!(
                    "node {other} does not answer at {addr}, and partitions of node {id} would move onto it; bring it back, or remove it first"
                ),
            });
        }
    }
    let epoch = change_members(st, |map| {
        let members = &map.members;
        if !members.contains_key(&id) {
            return Err(ApiError::NotFound {
                code: "not_member",
                message: format!("node {id} is not a member of the cluster"),
            });
        }
        let rf = st.layout().placement.params().replication_factor as usize;
        if members.len() - 1 < rf {
            return Err(ApiError::Conflict {
                code: "too_few_members",
                message: format!(
                    "removing node {id} would leave {} members for a replication factor of {rf}; add a replacement first",
                    members.len() - 1
                ),
            });
        }
        let mut next = map.clone();
        next.members.remove(&id);
        next.clients.remove(&id);
        Ok(Some(next))
    })
    .await?;
    tracing::info!(
        %id,
        force,
        epoch,
        "member removed from the map; its partitions will move"
    );
    Ok(epoch)
}

/// Compare-and-set the map's member set on the metadata leader: `plan` sees the current map
/// and returns the next one's members and client addresses (`None`: nothing to change). The
/// placement is recomputed over the new members. Returns the epoch of the resulting map.
async fn change_members<F>(st: &AppState, mut plan: F) -> Result<u64, ApiError>
where
    F: FnMut(&ClusterMap) -> Result<Option<ClusterMap>, ApiError>,
{
    let group = st
        .host
        .group(META_GROUP)
        .ok_or_else(|| ApiError::unavailable("no metadata group here"))?;
    for _ in 0..5 {
        group.read_barrier().await?;
        let (epoch, map) = local_map(st)
            .await
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))?
            .ok_or_else(|| ApiError::unavailable("no cluster map yet"))?;
        let Some(planned) = plan(&map)? else {
            return Ok(epoch);
        };
        let computed = ClusterMap::compute(planned.members, map.placement.params())
            .map_err(|e| ApiError::bad_request("invalid_member", format!("{e:#}")))?;
        let next = ClusterMap {
            clients: planned
                .clients
                .into_iter()
                .filter(|(id, _)| computed.members.contains_key(id))
                .collect(),
            generation: map.generation + 1,
            cluster_id: map.cluster_id.or_else(|| Some(rand::random())),
            ..computed
        };
        let cmd =
            write_command(&next, Some(epoch)).map_err(|e| ApiError::Internal(e.to_string()))?;
        match group.write(cmd).await? {
            (Outcome::Written { version }, _) => return Ok(version),
            // Someone else changed the map first: plan again on the new one.
            (Outcome::PreconditionFailed { .. }, _) => continue,
            (other, _) => {
                return Err(ApiError::Internal(format!(
                    "unexpected outcome writing the cluster map: {other:?}"
                )))
            }
        }
    }
    Err(ApiError::unavailable(
        "the cluster map kept changing; retry",
    ))
}
