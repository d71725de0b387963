//! Forwarded operations travel to a peer in batches, over one channel per peer: the operations
//! any request of this node hands to one peer while the previous batches to it are on their way
//! go together in one `POST /internal/v1/kv/batch` (natural batching: at most `IN_FLIGHT`
//! batches being delivered, no timer), as etcd hands proposals to its leader in one stream. A
//! node that forwards most of its writes then pays for one peer request per round trip, not
//! per operation.
//!
//! A batch is delivered once the peer has taken it (its answer's head arrived); the peer then
//! answers each operation as soon as it is done, in the order they finish, as frames of the
//! streamed answer body. So the next batch never waits for the operations of the one before
//! (a write's fsync, a partition electing a leader), and no operation's answer waits for
//! another's.
//!
//! Wire format: the request body is a postcard [`OpBatch`] (each operation a postcard
//! [`Forwarded`](crate::wire::Forwarded), decoded and validated on its own by the peer); the
//! answer body is a sequence of frames, each a little-endian `u32` length and a postcard
//! [`OpAnswer`]: the status, the headers a client keeps and the body the client gets.
//!
//! Failure: a batch that never reached the peer (a refused connection) fails its operations as
//! not sent, so the forwarder may hand them to another node; past that, an operation without
//! an answer may have been applied, and fails as such.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use kv_raft::batching::{BatchLimits, BatchQueue};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::PeerAnswer;
use crate::wire::{OpAnswer, OpBatch, BATCH_PATH, MAX_BATCH_OPS};

/// Batches on their way to one peer at once (sent, not yet taken).
const IN_FLIGHT: usize = 2;

/// Most bytes of operations in one batch (one larger operation still goes, alone).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Most bytes of one operation's answer frame (a largest value, or a page of a scan, is far
/// below): a longer frame means the stream is broken.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// Headers of a peer's answer that the client gets.
pub fn relayed_header(name: &str) -> bool {
    matches!(name, "content-type" | "etag" | "retry-after") || name.starts_with("x-kv-")
}

/// The frame of `answer` in a streamed batch answer.
pub fn frame(answer: &OpAnswer) -> Result<Bytes, postcard::Error> {
    let encoded = postcard::to_stdvec(answer)?;
    let mut out = BytesMut::with_capacity(4 + encoded.len());
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    Ok(out.freeze())
}

/// Splits a streamed batch answer into [`OpAnswer`]s, whatever its chunks' boundaries.
#[derive(Default)]
struct Frames {
    buf: BytesMut,
}

impl Frames {
    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole answer, if one has arrived.
    fn next(&mut self) -> Option<Result<OpAnswer, String>> {
        let len_bytes: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_ANSWER_BYTES {
            return Some(Err(format!(
                "an answer of {len} bytes, at most {MAX_ANSWER_BYTES}"
            )));
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        self.buf.advance(4);
        let encoded = self.buf.split_to(len);
        Some(postcard::from_bytes(&encoded).map_err(|e| format!("undecodable answer: {e}")))
    }
}

/// Why a forwarded operation got no answer.
#[derive(Debug)]
pub enum Lost {
    /// It never reached the peer (the connection was refused): another node may take it.
    NotSent(String),
    /// It may have been applied.
    Unknown(String),
}

type Reply = oneshot::Sender<Result<PeerAnswer, Lost>>;

struct Pending {
    op: Vec<u8>,
    reply: Reply,
    deadline: Instant,
}

/// The channel to one peer.
struct Peer {
    url: String,
    /// `url`, parsed once: every batch posts to it.
    target: Result<reqwest::Url, String>,
    queue: BatchQueue<Pending>,
}

/// How much goes to one peer at once.
const LIMITS: BatchLimits = BatchLimits {
    in_flight: IN_FLIGHT,
    max_items: MAX_BATCH_OPS,
    max_bytes: MAX_BATCH_BYTES,
};

/// Every peer's channel, created on first use. Cheap to clone.
#[derive(Clone)]
pub struct OpChannels {
    http: reqwest::Client,
    scheme: &'static str,
    peers: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
}

impl OpChannels {
    pub fn new(http: reqwest::Client, tls: bool) -> Self {
        OpChannels {
            http,
            scheme: if tls { "https" } else { "http" },
            peers: Arc::default(),
        }
    }

    /// Hand the encoded operation `op` to the peer at `addr` with its next batch and wait up
    /// to `timeout` for the answer.
    pub async fn call(
        &self,
        addr: &str,
        op: Vec<u8>,
        timeout: Duration,
    ) -> Result<PeerAnswer, Lost> {
        let peer = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up first: the address is copied only for a peer seen the first time.
            match peers.get(addr) {
                Some(peer) => peer.clone(),
                None => peers
                    .entry(addr.to_string())
                    .or_insert_with(|| {
                        let url = format!("{}://{addr}{BATCH_PATH}", self.scheme);
                        Arc::new(Peer {
                            target: url.parse().map_err(|e| format!("peer address {addr}: {e}")),
                            url,
                            queue: BatchQueue::new(LIMITS, |p: &Pending| p.op.len()),
                        })
                    })
                    .clone(),
            }
        };
        let (tx, rx) = oneshot::channel();
        let start = peer.queue.push(Pending {
            op,
            reply: tx,
            deadline: Instant::now() + timeout,
        });
        if start {
            let channels = self.clone();
            tokio::spawn(async move { channels.pump(peer).await });
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(Lost::Unknown(format!(
                "no answer from {addr} within {timeout:?}"
            ))),
            Ok(Err(_)) => Err(Lost::Unknown(format!("the batch to {addr} was dropped"))),
            Ok(Ok(answer)) => answer,
        }
    }

    /// Send batches to `peer` while operations wait, at most [`IN_FLIGHT`] at a time.
    async fn pump(&self, peer: Arc<Peer>) {
        while let Some(batch) = peer.queue.next_batch().await {
            metrics::histogram!("kv_forward_batch_ops").record(batch.len() as f64);
            let http = self.http.clone();
            let peer = peer.clone();
            tokio::spawn(async move { send(&http, &peer, batch).await });
        }
    }
}

/// One batch: post it, hand each operation its answer as it arrives.
async fn send(http: &reqwest::Client, peer: &Peer, batch: Vec<Pending>) {
    let mut slot = peer.queue.slot();
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let (ops, replies): (Vec<Vec<u8>>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    let mut replies: Vec<Option<Reply>> = replies.into_iter().map(Some).collect();
    let fail_rest =
        |replies: &mut Vec<Option<Reply>>, lost: &dyn Fn(String) -> Lost, why: String| {
            for reply in replies.iter_mut().filter_map(Option::take) {
                let _ = reply.send(Err(lost(why.clone())));
            }
        };
    let body = OpBatch {
        ops: ops.into_iter().map(serde_bytes::ByteBuf::from).collect(),
    };
    let body = match postcard::to_stdvec(&body) {
        Ok(body) => body,
        Err(e) => return fail_rest(&mut replies, &Lost::NotSent, format!("encoding: {e}")),
    };
    let target = match &peer.target {
        Ok(url) => url.clone(),
        Err(e) => return fail_rest(&mut replies, &Lost::NotSent, e.clone()),
    };
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    let sent = http
        .post(target)
        .timeout(limit)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await;
    slot.release();
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            let lost = if e.is_connect() {
                Lost::NotSent
            } else {
                Lost::Unknown
            };
            let why = format!("forwarding to {} failed: {}", peer.url, root_cause(&e));
            return fail_rest(&mut replies, &lost, why);
        }
    };
    if !resp.status().is_success() {
        // The batch was refused as a whole (overloaded, unauthorized...): every operation gets
        // that answer, as a single forwarded request would have.
        let answer = whole_answer(resp).await;
        for reply in replies.iter_mut().filter_map(Option::take) {
            let _ = reply.send(match &answer {
                Ok(answer) => Ok(answer.clone()),
                Err(why) => Err(Lost::Unknown(why.clone())),
            });
        }
        return;
    }
    let mut frames = Frames::default();
    let mut open = replies.len();
    while open > 0 {
        let chunk = match resp.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let why = format!("the answer of {} broke off: {}", peer.url, root_cause(&e));
                return fail_rest(&mut replies, &Lost::Unknown, why);
            }
        };
        frames.push(&chunk);
        while let Some(answer) = frames.next() {
            let answer = match answer {
                Ok(answer) => answer,
                Err(why) => return fail_rest(&mut replies, &Lost::Unknown, why),
            };
            let reply = replies
                .get_mut(answer.index as usize)
                .and_then(Option::take);
            if let Some(reply) = reply {
                open -= 1;
                let _ = reply.send(peer_answer(answer));
            }
        }
    }
    fail_rest(
        &mut replies,
        &Lost::Unknown,
        format!("{} ended its answer early", peer.url),
    );
}

fn peer_answer(answer: OpAnswer) -> Result<PeerAnswer, Lost> {
    let status = StatusCode::from_u16(answer.status)
        .map_err(|e| Lost::Unknown(format!("a forwarded answer's status: {e}")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            if relayed_header(n.as_str()) {
                headers.append(n, v);
            }
        }
    }
    Ok(PeerAnswer {
        status,
        headers,
        body: Bytes::from(answer.body),
    })
}

/// The headers of a peer's answer that the client gets.
pub fn relayed_headers(answer: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in answer {
        if relayed_header(name.as_str()) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    headers
}

/// A whole (unframed) answer, kept as the client would get it.
async fn whole_answer(resp: reqwest::Response) -> Result<PeerAnswer, String> {
    let status = StatusCode::from_u16(resp.status().as_u16()).map_err(|e| e.to_string())?;
    let headers = relayed_headers(resp.headers());
    let body = resp.bytes().await.map_err(|e| root_cause(&e))?;
    Ok(PeerAnswer {
        status,
        headers,
        body,
    })
}

/// An error with its innermost cause (reqwest's own message rarely says what happened).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if e.to_string() == cur.to_string() {
        e.to_string()
    } else {
        format!("{e}: {cur}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn answer(index: u32, body: &[u8]) -> OpAnswer {
        OpAnswer {
            index,
            status: 200,
            headers: vec![("etag".into(), serde_bytes::ByteBuf::from(b"\"7\"".to_vec()))],
            body: body.to_vec(),
        }
    }

    #[test]
    fn frames_are_found_whatever_the_chunks() {
        let mut stream = Vec::new();
        for (i, body) in [&b"one"[..], b"", &[0u8; 300]].iter().enumerate() {
            stream.extend_from_slice(&frame(&answer(i as u32, body)).unwrap());
        }
        // Every split of the stream into two chunks, and one byte at a time.
        for cut in 0..=stream.len() {
            let mut frames = Frames::default();
            let mut got = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                frames.push(chunk);
                while let Some(a) = frames.next() {
                    got.push(a.unwrap());
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0].body, b"one");
            assert_eq!(got[2].body.len(), 300);
            assert_eq!(got[2].index, 2);
        }
        let mut frames = Frames::default();
        let mut got = 0;
        for b in &stream {
            frames.push(std::slice::from_ref(b));
            while let Some(a) = frames.next() {
                a.unwrap();
                got += 1;
            }
        }
        assert_eq!(got, 3);
    }

    #[test]
    fn a_broken_frame_is_an_error_not_a_panic() {
        let mut frames = Frames::default();
        frames.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(frames.next().unwrap().is_err());
        // A length that never completes waits for more, unless it is beyond any answer.
        frames.push(&[0xff, 0xff, 0x00, 0x00]);
        assert!(frames.next().is_none());
        let mut frames = Frames::default();
        frames.push(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(frames.next().unwrap().is_err());
    }

    #[test]
    fn only_client_headers_are_relayed() {
        let mut a = answer(0, b"x");
        a.headers
            .push(("set-cookie".into(), b"s=1".to_vec().into()));
        a.headers.push(("x-kv-node".into(), b"2".to_vec().into()));
        let got = peer_answer(a).unwrap();
        assert!(got.headers.get("set-cookie").is_none());
        assert_eq!(got.headers.get("x-kv-node").unwrap(), "2");
        assert_eq!(got.headers.get("etag").unwrap(), "\"7\"");
    }
}
