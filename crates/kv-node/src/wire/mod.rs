//! Internal messages between nodes, apart from the public API's types (`kv_client::api`):
//! forwarded key operations ([`Forwarded`], [`KeyOp`]: decoded and validated before anything
//! acts on them), their batches and streamed answers ([`OpBatch`], [`OpAnswer`]), and what
//! nodes tell each other about the cluster outside Raft ([`NodeView`], [`PeerMap`]). Public so
//! that tests can speak the peer protocol.

mod batch;
mod ops;
mod view;

pub use batch::{OpAnswer, OpBatch, BATCH_PATH, MAX_BATCH_OPS};
pub use ops::*;
pub use view::{
    GroupView, MovePhase, MoveView, NodeView, PeerMap, ReplicaRole, MAP_PATH, VIEW_PATH,
};
