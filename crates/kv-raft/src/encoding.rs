//! Byte encodings of what this crate stores in kv-storage and sends to peers: postcard, a
//! compact binary serde format. Values are opaque to kv-storage; only this module reads them.

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{LogId, Membership, StorageIoError};

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
    subject: ErrorSubject<u64>,
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
