//! Storage for one node: the key/value state machine of every Raft group the node hosts, each
//! group's Raft log, its vote and other small metadata, behind one [`Engine`] trait with two
//! backends, [`MemoryEngine`] and [`RedbEngine`] (per node, one redb file for the state machine
//! and append-only segment files for every group's Raft log, see `wal`).
//!
//! It knows nothing about Raft library types or HTTP: log entries and metadata are opaque bytes
//! chosen by the caller (`kv-raft`), while the key/value semantics (versions, compare-and-set) are
//! defined here by [`Command`] and [`Outcome`] so that a batch of commands applies atomically with
//! the caller's "last applied" marker.
//!
//! Start from [`Store`]: it owns the engine and a dedicated writer thread that commits whatever
//! writes are queued (from many groups) in one commit, so concurrent writers share one fsync
//! (group commit). Point reads ([`Store::get`]) go to a few reader threads of its own; other reads
//! run on tokio's blocking pool via [`Store::read`]; nothing here blocks an async worker thread.
//!
//! Per-key TTLs are part of the state machine too: a [`Record`] may carry a deadline set by a
//! [`Command::TimedPut`] or [`Command::Refresh`], removed by a [`Command::Expire`] that the
//! partition leader proposes for the keys [`Engine::expired`] lists. Storage never reads a
//! clock; every time it compares against comes from a command or from the caller (the rules
//! are on [`Command`]).
//!
//! Each group also keeps a change history, one row per applied command that changed a key, at
//! its log position ([`ChangePos`]), which [`Engine::changes`] pages through for watchers.

mod change;
mod command;
mod engine;
mod error;
mod memory;
mod reader;
mod record;
mod redb_engine;
mod snapshot;
pub mod testing;
mod wal;
mod writer;

pub use change::{Change, ChangeKind, ChangePage, ChangePos};
pub use command::{Command, Condition, Outcome, SESSION_WINDOW};
pub use engine::{Engine, ExportSummary, GroupId, MetaKey, Op, WriteBatch};
pub use error::StorageError;
pub use memory::MemoryEngine;
pub use record::Record;
pub use redb_engine::RedbEngine;
pub use writer::{Store, WriteCallback};

/// Result type of every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
