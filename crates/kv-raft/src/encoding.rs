//! Byte encodings of what this crate stores in kv-storage and sends to peers: postcard, a
//! compact binary serde format. Values are opaque to kv-storage; only this module reads them.

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{LogId, Membership, StorageIoError};
use crate::NodeId;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The state machine's position, stored under `MetaKey::Applied` with every apply.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

/// Wrap any error as an openraft storage error on `subject`.
pub(crate) fn sto_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageIoError {
    let io = std::io::Error::other(e.to_string());
    StorageIoError::from(StorageIOError::new(
        subject,
        verb,
        openraft::AnyError::new(&io),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership, Vote};

    use super::encode;
    use crate::NodeId;

    /// Node ids were `u64` before they were [`NodeId`]: votes, log ids and memberships stored
    /// or sent by then must decode as they are, so both encode to the same bytes.
    #[test]
    fn node_ids_encode_as_the_u64s_they_replaced() {
        assert_eq!(
            encode(&Vote::new_committed(7, NodeId(3))).unwrap(),
            encode(&Vote::new_committed(7, 3u64)).unwrap()
        );
        let log_id = LogId::new(CommittedLeaderId::new(7, NodeId(300)), 42);
        let old_log_id = LogId::new(CommittedLeaderId::new(7, 300u64), 42);
        assert_eq!(encode(&log_id).unwrap(), encode(&old_log_id).unwrap());
        let membership = Membership::new(
            vec![BTreeSet::from([NodeId(1), NodeId(2)])],
            BTreeMap::from([
                (NodeId(1), BasicNode::new("a:1")),
                (NodeId(2), BasicNode::new("b:2")),
                (NodeId(1000), BasicNode::new("c:3")),
            ]),
        );
        let old_membership = Membership::new(
            vec![BTreeSet::from([1u64, 2])],
            BTreeMap::from([
                (1u64, BasicNode::new("a:1")),
                (2, BasicNode::new("b:2")),
                (1000, BasicNode::new("c:3")),
            ]),
        );
        assert_eq!(
            encode(&StoredMembership::new(Some(log_id), membership)).unwrap(),
            encode(&StoredMembership::new(Some(old_log_id), old_membership)).unwrap()
        );
    }
}
