//! Internal messages between nodes, apart from the public API's types (`kv_client::api`):
//! forwarded key operations ([`Forwarded`], [`KeyOp`]: decoded and validated before anything
//! acts on them), a watch's reads of a partition's history ([`ChangesRequest`]), batches of
//! operations and their streamed answers ([`OpBatch`], [`OpAnswer`]), and what nodes tell each
//! other about the cluster outside Raft ([`NodeView`], [`PeerMap`]). Public so that tests can
//! speak the peer protocol.

mod batch;
mod changes;
mod ops;
mod view;

pub use batch::{OpAnswer, OpBatch, BATCH_PATH, MAX_BATCH_OPS};
pub use changes::{
    ChangeRow, ChangeType, ChangesPage, ChangesRequest, MAX_CHANGES_LIMIT, MAX_CHANGES_WAIT,
};
pub use ops::*;
pub use view::{
    GroupView, MovePhase, MoveView, NodeView, PeerMap, ReplicaRole, MAP_PATH, VIEW_PATH,
};
