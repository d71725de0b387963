/// Everything that can go wrong below the state machine.
///
/// The error is `Clone` because one failed group commit is reported to every writer whose
/// batch was in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The underlying file or database failed (I/O, corruption, full disk).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// Bytes read back (from disk or a snapshot stream) do not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The writer thread is gone (the store is shutting down).
    #[error("storage is closed")]
    Closed,
}

impl StorageError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        StorageError::Backend(e.to_string())
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Backend(e.to_string())
    }
}
