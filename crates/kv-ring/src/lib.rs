//! Data placement for the kv store: which partition a key belongs to, and
//! which nodes replicate each partition.
//!
//! This crate owns the consistent-hash ring (physical nodes with virtual
//! nodes, built on `hashring` with a stable xxh3 hasher), the key ->
//! partition hash ([`partition_of`]), the partition -> ordered replica list
//! walk (first `RF` distinct nodes clockwise; the first is the preferred
//! leader), the target leaders that spread leadership over the members
//! ([`Placement::leaders`]), and the [`diff`] of two placements. It is pure logic: it does no
//! I/O, is not async, and knows nothing of Raft, of how a placement is
//! stored or agreed on, or of how replicas are moved.
//!
//! Start from [`Placement::compute`], which turns a member set and
//! [`RingParams`] into the partition map, and [`diff`], which lists the
//! partitions whose replica sets change between two maps. [`Ring`] is the
//! lower-level walk that `Placement` is built from.
//!
//! ```
//! use kv_ring::{NodeId, Placement, RingParams, diff};
//!
//! let three = [NodeId(1), NodeId(2), NodeId(3)];
//! let old = Placement::compute(&three, RingParams::DEFAULT)?;
//! let partition = old.partition_of(b"user:1001");
//! let replicas = old.replicas(partition).unwrap_or_default();
//! assert_eq!(replicas.len(), 3); // replicas[0] is the preferred leader
//!
//! let four = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
//! let new = Placement::compute(&four, RingParams::DEFAULT)?;
//! for moved in diff(&old, &new)? {
//!     assert_eq!(moved.added, [NodeId(4)]); // only the newcomer gains
//! }
//! # Ok::<(), kv_ring::RingError>(())
//! ```

mod error;
mod id;
mod partition;
mod placement;
mod ring;

pub use error::RingError;
pub use id::{NodeId, PartitionId};
pub use partition::partition_of;
pub use placement::{diff, PartitionMove, Placement, RingParams};
pub use ring::Ring;
