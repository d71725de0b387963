//! The openraft type configuration shared by every group.

use kv_storage::{Command, Outcome};

use crate::NodeId;
use serde::{Deserialize, Serialize};

/// What a Raft log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A key/value write to a data partition.
    Kv(Command),
    /// Changes nothing: a leader restored after a restart proposes one to commit an entry of
    /// its own term (see `Group::read_barrier`). Appended after `Kv`, so entries written
    /// before it existed still decode.
    Noop,
    /// Writes proposed together (see `proposer`), applied in order at the entry's index; no
    /// two touch the same key. Appended last, like `Noop`.
    Batch(Vec<Command>),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Kv(cmd) => write_command(f, cmd),
            Request::Noop => write!(f, "noop"),
            Request::Batch(cmds) => write!(f, "batch of {} writes", cmds.len()),
        }
    }
}

fn write_command(f: &mut std::fmt::Formatter<'_>, cmd: &Command) -> std::fmt::Result {
    match cmd {
        Command::Put { key, value, .. } => {
            write!(
                f,
                "put {:?} ({} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            )
        }
        Command::Delete { key, .. } => write!(f, "delete {:?}", String::from_utf8_lossy(key)),
        Command::TimedPut {
            key,
            value,
            expires_at,
            ..
        } => {
            write!(
                f,
                "put {:?} ({} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            )?;
            match expires_at {
                Some(deadline) => write!(f, " expiring at {deadline}"),
                None => Ok(()),
            }
        }
        Command::TimedDelete { key, .. } => {
            write!(f, "delete {:?}", String::from_utf8_lossy(key))
        }
        Command::Refresh {
            key, expires_at, ..
        } => write!(
            f,
            "refresh {:?} to expire at {expires_at}",
            String::from_utf8_lossy(key)
        ),
        Command::Expire { key, version, .. } => write!(
            f,
            "expire {:?} at version {version}",
            String::from_utf8_lossy(key)
        ),
        Command::Once {
            client,
            seq,
            command,
            ..
        } => {
            write!(f, "[client {client} seq {seq}] ")?;
            write_command(f, command)
        }
    }
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Result of a [`Request::Kv`].
    Kv(Outcome),
    /// Results of a [`Request::Batch`], in its order.
    Batch(Vec<Outcome>),
    /// Blank and membership entries produce nothing.
    None,
}

openraft::declare_raft_types!(
    /// Type configuration of every group: [`NodeId`] node ids, `host:port` nodes, snapshot data in
    /// files so snapshots stream from and to disk instead of memory, tokio with the groups'
    /// tick timers coalesced (`runtime`).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = crate::runtime::KvRuntime,
);

pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub(crate) type StorageIoError = openraft::StorageError<NodeId>;
