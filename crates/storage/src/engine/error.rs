//! Storage failures and what they mean for the node.

/// A storage failure that is an operating condition (disk, corruption, divergence),
/// not a problem with a client's SQL (those are per-statement results).
#[derive(Debug)]
pub struct StorageError {
    message: String,
    kind: StorageErrorKind,
}

/// What a storage failure means for the node, decided from SQLite's result code or the
/// operating system's error, never from message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// No room to write (SQLITE_FULL, ENOSPC): the node stops accepting writes and
    /// hands leadership on, and retries with backoff.
    DiskFull,
    /// A client statement in a group commit ran past its deadline and the group failed:
    /// the others in it may retry.
    StatementTimedOut,
    /// The changes of a write would not fit one log entry (so no follower could ever
    /// receive them): nothing was applied; the client must split the write.
    EntryTooLarge,
    Other,
}

impl StorageError {
    pub fn new(message: impl Into<String>) -> StorageError {
        StorageError { message: message.into(), kind: StorageErrorKind::Other }
    }

    pub fn with_kind(kind: StorageErrorKind, message: impl Into<String>) -> StorageError {
        StorageError { message: message.into(), kind }
    }

    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// No room to write: the disk, or `max_page_count`.
    pub fn is_disk_full(&self) -> bool {
        self.kind == StorageErrorKind::DiskFull
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> StorageError {
        let kind = match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageErrorKind::DiskFull,
            _ => StorageErrorKind::Other,
        };
        StorageError::with_kind(kind, format!("sqlite: {error}"))
    }
}

impl From<std::io::Error> for StorageError {
    fn from(error: std::io::Error) -> StorageError {
        let kind = if error.kind() == std::io::ErrorKind::StorageFull { StorageErrorKind::DiskFull } else { StorageErrorKind::Other };
        StorageError::with_kind(kind, format!("io: {error}"))
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;
