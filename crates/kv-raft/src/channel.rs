//! One channel per peer, carrying every group: appends (heartbeats included), votes and
//! timeout-now requests that any group of this node sends to one peer travel together in one
//! HTTP request (`POST /raft/batch`), batched while the previous batch to that peer is in
//! flight (natural batching, at most `IN_FLIGHT` = 2 batches out, no timer). A node leading many
//! groups then sends its followers one message per round instead of one per group, and their
//! heartbeats are coalesced into it.
//!
//! The node-level liveness ping of quiet groups (see `quiesce`) rides the same channel, so
//! it shows what the groups' own traffic would meet.
//!
//! Snapshots do not take this channel: a snapshot chunk is large and slow, and must not hold
//! back other groups' heartbeats (their election timers would fire). Nor do follower reads'
//! read-index requests, which the leader answers only after a round of its own. They keep one
//! request each. On the receiving side every call of a batch has half the leader lease to
//! finish, so one stuck group cannot delay the answers of the others past their leases.
//!
//! Wire format: the body is a postcard [`BatchRequest`]; the answer a postcard
//! [`BatchResponse`] with one result per call, in order: the same bytes a single
//! `POST /raft/{group}/{rpc}` answers, or the error that request would have got. A failed
//! batch (the connection dropped, the peer answered an error status) fails every call in it as
//! a network error, which openraft retries; Raft RPCs are idempotent, so a call delivered
//! twice changes nothing twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_storage::GroupId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::batching::{BatchLimits, BatchQueue};
use crate::encoding::{decode, encode};
use crate::network::{RpcKind, Scheme};
use crate::peer_health::PeerHealth;
use crate::NodeId;
use crate::{GroupError, RaftHost};

/// Batches to one peer in flight at once.
const IN_FLIGHT: usize = 2;
/// Most bytes of calls in one batch (one large append still goes, alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most calls in one batch; a receiver refuses a batch with more.
pub const MAX_BATCH_CALLS: usize = 1024;

/// One call inside a batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    pub group: u64,
    pub rpc: Cow<'static, str>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The body of `POST /raft/batch`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchRequest {
    pub calls: Vec<Call>,
}

/// The answer to a [`BatchRequest`]: per call, the answer bytes or why it failed.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<Result<serde_bytes::ByteBuf, CallError>>,
}

/// Why one call of a batch failed on the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallError {
    /// The HTTP status a single request would have got.
    pub status: u16,
    pub message: String,
}

impl CallError {
    fn from_group_error(e: &GroupError) -> Self {
        let status = match e {
            GroupError::UnknownGroup(_) => 404,
            GroupError::BadRequest(_) => 400,
            GroupError::Storage(_) => 500,
            _ => 503,
        };
        CallError {
            status,
            message: e.to_string(),
        }
    }
}

/// Serve the body of a `POST /raft/batch` on `host`: decode it, run every call as its own
/// `POST /raft/{group}/{rpc}` would run (all at once: one slow group does not hold back the
/// others), and encode the answer. `prepare` runs before each call, with its group, kind and
/// body size (kv-node opens a group assigned to it there, and counts bytes); an error it
/// returns is that call's answer, as is a call (with its `prepare`) that takes longer than half
/// the leader lease.
/// The whole batch is refused (`BadRequest`) when it does not decode, holds more than
/// [`MAX_BATCH_CALLS`] calls, or names a snapshot or a read index (those never come batched).
pub async fn serve_batch<F, Fut>(
    host: &RaftHost,
    body: &[u8],
    prepare: F,
) -> Result<Vec<u8>, GroupError>
where
    F: Fn(GroupId, RpcKind, usize) -> Fut,
    Fut: Future<Output = Result<(), GroupError>>,
{
    let batch: BatchRequest =
        decode(body).map_err(|e| GroupError::BadRequest(format!("undecodable batch: {e}")))?;
    if batch.calls.len() > MAX_BATCH_CALLS {
        return Err(GroupError::BadRequest(format!(
            "{} calls in one batch, at most {MAX_BATCH_CALLS}",
            batch.calls.len()
        )));
    }
    let mut kinds = Vec::with_capacity(batch.calls.len());
    for call in &batch.calls {
        match RpcKind::parse(&call.rpc) {
            Some(kind) if !matches!(kind, RpcKind::Snapshot | RpcKind::ReadIndex) => {
                kinds.push(kind)
            }
            _ => {
                return Err(GroupError::BadRequest(format!(
                    "no batched rpc {:?}",
                    call.rpc
                )))
            }
        }
    }
    let prepare = &prepare;
    // The answer goes back once every call is done: one slow group (a stuck Raft core, a slow
    // disk) must not hold the others' heartbeat answers past the sender's lease. A call cut off
    // here still runs in its Raft core; the sender sees a failed RPC and retries it.
    let budget = host.batch_call_budget();
    let results = futures::future::join_all(batch.calls.into_iter().zip(kinds).map(
        |(call, kind)| async move {
            let run = async {
                if kind == RpcKind::Liveness {
                    // Addressed to the node, not to a group.
                    return host.handle_ping(&call.body);
                }
                prepare(GroupId(call.group), kind, call.body.len()).await?;
                host.handle_rpc(call.group, kind, &call.body).await
            };
            tokio::time::timeout(budget, run).await.map_err(|_| {
                GroupError::Unavailable(format!(
                    "{} of group {} took longer than {budget:?}",
                    kind.as_str(),
                    call.group
                ))
            })?
        },
    ))
    .await
    .into_iter()
    .map(|r| {
        r.map(serde_bytes::ByteBuf::from)
            .map_err(|e| CallError::from_group_error(&e))
    })
    .collect();
    encode(&BatchResponse { results })
        .map_err(|e| GroupError::BadRequest(format!("encoding a batch answer: {e}")))
}

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

struct Pending {
    call: Call,
    reply: Reply,
    /// When its caller stops waiting; a batch is given until the latest of its calls'.
    deadline: tokio::time::Instant,
}

/// The outgoing channel to one peer.
struct Peer {
    addr: String,
    /// `{scheme}://{addr}/raft/batch`, parsed once: every batch posts to it.
    url: Result<reqwest::Url, String>,
    id: NodeId,
    queue: BatchQueue<Pending>,
}

/// How much goes to one peer at once.
const LIMITS: BatchLimits = BatchLimits {
    in_flight: IN_FLIGHT,
    max_items: MAX_BATCH_CALLS,
    max_bytes: MAX_BATCH_BYTES,
};

/// Every peer's channel, created on first use. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Channels {
    http: reqwest::Client,
    scheme: Scheme,
    health: Arc<PeerHealth>,
    peers: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
}

impl Channels {
    pub(crate) fn new(http: reqwest::Client, scheme: Scheme, health: Arc<PeerHealth>) -> Self {
        Channels {
            http,
            scheme,
            health,
            peers: Arc::default(),
        }
    }

    /// Send `kind` of `group` to peer `target` at `addr` with the next batch, and wait up to
    /// `timeout` for its answer bytes.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        addr: &str,
        group: GroupId,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let peer = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up first: the address is copied only for a peer seen the first time.
            match peers.get(addr) {
                Some(peer) => peer.clone(),
                None => peers
                    .entry(addr.to_string())
                    .or_insert_with(|| {
                        Arc::new(Peer {
                            addr: addr.to_string(),
                            url: format!("{}://{addr}/raft/batch", self.scheme.as_str())
                                .parse()
                                .map_err(|e| format!("peer address {addr}: {e}")),
                            id: target,
                            queue: BatchQueue::new(LIMITS, |p: &Pending| p.call.body.len()),
                        })
                    })
                    .clone(),
            }
        };
        let (tx, rx) = oneshot::channel();
        let start = peer.queue.push(Pending {
            call: Call {
                group: group.0,
                rpc: Cow::Borrowed(kind.as_str()),
                body,
            },
            reply: tx,
            deadline: tokio::time::Instant::now() + timeout,
        });
        if start {
            let channels = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move { channels.pump(peer).await });
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                // Silence counts against the peer as a refusal does (a cut-off peer drops
                // packets: only timeouts show it).
                if target != NodeId(0) {
                    self.health.note_failure(target);
                }
                Err(format!("no answer from {addr} within {timeout:?}"))
            }
            Ok(Err(_)) => Err(format!("the batch to {addr} was dropped")),
            Ok(Ok(answer)) => answer,
        }
    }

    /// Send batches to `peer` while calls wait, at most [`IN_FLIGHT`] at a time.
    async fn pump(&self, peer: Arc<Peer>) {
        while let Some(batch) = peer.queue.next_batch().await {
            metrics::histogram!("kv_peer_batch_calls").record(batch.len() as f64);
            let channels = self.clone();
            let sent_to = peer.clone();
            tokio::spawn(async move {
                // The slot is held until every call of the batch has its answer.
                let _slot = sent_to.queue.slot();
                channels.send(&sent_to, batch).await;
            });
        }
    }

    /// One batch: post it, hand each call its result.
    async fn send(&self, peer: &Peer, batch: Vec<Pending>) {
        let deadline = batch
            .iter()
            .map(|p| p.deadline)
            .max()
            .unwrap_or_else(tokio::time::Instant::now);
        let (calls, replies): (Vec<Call>, Vec<Reply>) =
            batch.into_iter().map(|p| (p.call, p.reply)).unzip();
        let fail_all = |replies: Vec<Reply>, why: String| {
            for reply in replies {
                let _ = reply.send(Err(why.clone()));
            }
        };
        let body = match encode(&BatchRequest { calls }) {
            Ok(body) => body,
            Err(e) => return fail_all(replies, format!("encoding a batch: {e}")),
        };
        let url = match &peer.url {
            Ok(url) => url.clone(),
            Err(e) => return fail_all(replies, e.clone()),
        };
        // Nobody waits for the batch past its calls' deadlines: give up then, and free the slot
        // for the next batch (a peer that drops packets would hold it for good otherwise).
        let limit = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(10));
        let sent = self
            .http
            .post(url)
            .timeout(limit)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.health.note_failure(peer.id);
                return fail_all(replies, format!("batch to {}: {e}", peer.addr));
            }
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.health.note_failure(peer.id);
                return fail_all(replies, format!("batch answer of {}: {e}", peer.addr));
            }
        };
        self.health.note_ok(peer.id);
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            return fail_all(
                replies,
                format!("peer {} answered {status}: {text}", peer.id),
            );
        }
        let answer = match decode::<BatchResponse>(&bytes) {
            Ok(answer) if answer.results.len() == replies.len() => answer,
            Ok(_) => return fail_all(replies, "a batch answer of the wrong length".into()),
            Err(e) => return fail_all(replies, format!("undecodable batch answer: {e}")),
        };
        for (reply, result) in replies.into_iter().zip(answer.results) {
            let _ = reply.send(
                result
                    .map(serde_bytes::ByteBuf::into_vec)
                    .map_err(|e| format!("peer {} answered {}: {}", peer.id, e.status, e.message)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The channel against a real HTTP peer on loopback that answers `POST /raft/batch` the
    //! way its test needs: held back, echoing, failing some calls, or never answering.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::routing::post;
    use axum::Router;
    use tokio::sync::Semaphore;

    /// The (group, rpc) of each call of one batch the fake peer received.
    type Seen = Vec<(u64, String)>;

    /// What the fake peer saw, and a gate that holds its answers back.
    #[derive(Clone)]
    struct Peer {
        batches: Arc<Mutex<Vec<Seen>>>,
        gate: Arc<Semaphore>,
    }

    /// Echo each call's body, or refuse calls of group 13 as an unknown group would be.
    async fn answer(State(peer): State<Peer>, body: Bytes) -> Vec<u8> {
        let batch: BatchRequest = decode(&body).unwrap();
        peer.batches.lock().unwrap().push(
            batch
                .calls
                .iter()
                .map(|c| (c.group, c.rpc.to_string()))
                .collect(),
        );
        peer.gate.acquire().await.unwrap().forget();
        let results = batch
            .calls
            .into_iter()
            .map(|c| {
                if c.group == 13 {
                    Err(CallError {
                        status: 404,
                        message: "group 13 is not hosted here".into(),
                    })
                } else {
                    Ok(serde_bytes::ByteBuf::from(c.body))
                }
            })
            .collect();
        encode(&BatchResponse { results }).unwrap()
    }

    async fn fake_peer(gate: usize) -> (String, Peer) {
        let peer = Peer {
            batches: Arc::default(),
            gate: Arc::new(Semaphore::new(gate)),
        };
        let app = Router::new()
            .route("/raft/batch", post(answer))
            .with_state(peer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, peer)
    }

    fn channels() -> (Channels, Arc<PeerHealth>) {
        let health = Arc::new(PeerHealth::new(Duration::ZERO));
        let http = reqwest::Client::new();
        (Channels::new(http, Scheme::Http, health.clone()), health)
    }

    async fn waiting(channels: &Channels, addr: &str, n: usize) {
        loop {
            let queued = channels
                .peers
                .lock()
                .unwrap()
                .get(addr)
                .map(|p| p.queue.waiting())
                .unwrap_or(0);
            if queued >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn calls_made_while_batches_are_in_flight_go_together_and_get_their_own_answers() {
        let (addr, peer) = fake_peer(0).await;
        let (channels, _) = channels();
        let call = |group: u64, body: &[u8]| {
            let channels = channels.clone();
            let addr = addr.clone();
            let body = body.to_vec();
            tokio::spawn(async move {
                channels
                    .call(
                        NodeId(2),
                        &addr,
                        GroupId(group),
                        RpcKind::Append,
                        body,
                        Duration::from_secs(10),
                    )
                    .await
            })
        };
        // Two batches go out at once and are held by the peer; the next calls queue up.
        let mut first = Vec::new();
        for (g, body) in [(1, &b"one"[..]), (2, b"two")] {
            first.push(call(g, body));
            while peer.batches.lock().unwrap().len() < g as usize {
                tokio::task::yield_now().await;
            }
        }
        let later: Vec<_> = (3..=20u64)
            .map(|g| call(g, format!("body {g}").as_bytes()))
            .collect();
        waiting(&channels, &addr, 18).await;
        peer.gate.add_permits(1000);

        for (task, want) in first.into_iter().zip([&b"one"[..], b"two"]) {
            assert_eq!(task.await.unwrap().unwrap(), want);
        }
        for (task, g) in later.into_iter().zip(3..=20u64) {
            let got = task.await.unwrap();
            if g == 13 {
                let why = got.unwrap_err();
                assert!(why.contains("404") && why.contains("not hosted"), "{why}");
            } else {
                assert_eq!(got.unwrap(), format!("body {g}").into_bytes());
            }
        }
        let batches = peer.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 3, "{batches:?}");
        let groups: Vec<u64> = batches[2].iter().map(|(g, _)| *g).collect();
        assert_eq!(
            groups,
            (3..=20).collect::<Vec<_>>(),
            "in order, in one batch"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_times_calls_out_and_frees_the_channel_for_later_ones() {
        let (addr, peer) = fake_peer(0).await;
        let (channels, health) = channels();
        let short = Duration::from_millis(200);
        let silent = (1..=3u64).map(|g| {
            let channels = channels.clone();
            let addr = addr.clone();
            async move {
                channels
                    .call(NodeId(2), &addr, GroupId(g), RpcKind::Vote, vec![1], short)
                    .await
            }
        });
        for answer in futures::future::join_all(silent).await {
            assert!(answer.unwrap_err().contains("no answer"));
        }
        assert!(
            !health.reachable(NodeId(2)),
            "silence counts against the peer"
        );

        // The peer answers again: the held batches were given up, so a new call goes out.
        peer.gate.add_permits(1000);
        let answer = channels
            .call(
                NodeId(2),
                &addr,
                GroupId(4),
                RpcKind::Vote,
                vec![7],
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(answer.unwrap(), vec![7]);
        assert!(health.reachable(NodeId(2)));
    }

    #[tokio::test]
    async fn a_refused_connection_fails_the_call_and_a_listener_that_comes_back_is_used() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let (channels, health) = channels();
        let refused = channels
            .call(
                NodeId(3),
                &addr,
                GroupId(1),
                RpcKind::Append,
                vec![1],
                Duration::from_secs(10),
            )
            .await;
        assert!(refused.unwrap_err().contains("batch to"));
        assert!(!health.reachable(NodeId(3)));

        // Something listens at that address again (the peer restarted).
        let peer = Peer {
            batches: Arc::default(),
            gate: Arc::new(Semaphore::new(1000)),
        };
        let app = Router::new()
            .route("/raft/batch", post(answer))
            .with_state(peer);
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let answer = channels
            .call(
                NodeId(3),
                &addr,
                GroupId(1),
                RpcKind::Append,
                vec![9],
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(answer.unwrap(), vec![9]);
        assert!(health.reachable(NodeId(3)));
    }
}
