//! Replication: one openraft group per partition (and, later, one for cluster metadata), each
//! stored in the node's shared [`kv_storage::Store`] and talking to its peers over HTTP.
//!
//! This crate owns the Raft library's type configuration ([`TypeConfig`]), the storage adapters
//! that put a group's log ([`LogStore`]) and state machine ([`StateMachine`]) into kv-storage,
//! snapshot files, the HTTP transport ([`Transport`]) and the registry of the groups a node hosts
//! ([`RaftHost`]), and leadership transfer ([`Group::transfer_leader`], which openraft 0.9
//! lacks). It does not know HTTP routes or the ring: `kv-node` routes peer requests to
//! [`RaftHost::handle_rpc`] and decides which groups to open and where their leaders should be.
//!
//! Every peer RPC is addressed to a group (`POST /raft/{group}/{rpc}`), so a node can host many
//! groups behind one listener and one connection pool.

pub mod batching;
pub mod channel;
mod check_quorum;
mod compaction;
mod encoding;
mod entry_cache;
mod error;
mod group;
mod host;
mod key_waiters;
mod lease;
mod log_store;
mod network;
mod peer_health;
mod proposer;
mod quiesce;
mod read_index;
mod runtime;
mod state_machine;
mod supervise;
mod transfer;
mod types;
mod validate;

pub use error::GroupError;
pub use group::{Group, GroupStatus, Metrics, Role, MAX_LAG};
pub use host::{RaftHost, RaftTuning};
pub use key_waiters::KeyWait;
pub use log_store::LogStore;
pub use network::{RpcKind, Scheme, Transport};
pub use peer_health::PeerHealth;
pub use runtime::KvRuntime;
pub use state_machine::StateMachine;
pub use supervise::GroupFailure;
pub use types::{Request, Response, TypeConfig};

/// What a group's state machine stores and how it is written, from kv-storage: a node's
/// server uses these through this crate, never the storage engine itself.
pub use kv_storage::{
    Change, ChangeKind, ChangePage, ChangePos, Command, Condition, GroupId, Outcome, Record, Store,
};

/// The Raft node id (a cluster member id): the ring's, so that openraft, the ring and the node
/// name a node by one type.
pub use kv_ring::NodeId;
/// Peer address as stored in Raft membership (`host:port`).
pub type Node = openraft::BasicNode;
