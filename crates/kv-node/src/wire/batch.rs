//! Forwarded operations in batches: the body of `POST /internal/v1/kv/batch` and the frames of
//! its streamed answer (the channel that sends them is `crate::routing::channel`).

use serde::{Deserialize, Serialize};

/// The peer route that takes batches of forwarded operations.
pub const BATCH_PATH: &str = "/internal/v1/kv/batch";

/// Most operations in one batch; a peer refuses a batch with more.
pub const MAX_BATCH_OPS: usize = 256;

/// The body of `POST /internal/v1/kv/batch`: postcard-encoded forwarded operations.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OpBatch {
    pub ops: Vec<serde_bytes::ByteBuf>,
}

/// The answer to one operation of a batch, as the client gets it.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpAnswer {
    /// The operation's place in its batch.
    pub index: u32,
    pub status: u16,
    pub headers: Vec<(String, serde_bytes::ByteBuf)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}
