//! The one error type of m2m-tier.

use std::path::PathBuf;

/// Everything that can go wrong with the files of a database directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that do not follow the format (see FORMAT.md): bad magic, checksum, length or content.
    #[error("{}: corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file written by another version of the format.
    #[error("{}: format version {found}, this build reads version {supported}", path.display())]
    IncompatibleVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A directory that is not a database and is not empty: creating a database there would mix our files
    /// with someone else's, so nothing is written into it.
    #[error("{}: not empty and not an M2M database (found {}); use an empty or new directory", path.display(), found.display())]
    NotOurs {
        /// The directory.
        path: PathBuf,
        /// The first entry that is not ours.
        found: PathBuf,
    },
    /// A file that is not ours stands where this crate must write, replace or remove one of its own
    /// files (the next segment or log, a stored index file, a blob): it is never replaced nor removed.
    #[error(
        "{}: a file that is not M2M's stands where {what} must go; it was left untouched (move it elsewhere and run the command again to continue)",
        path.display()
    )]
    Occupied {
        /// The file that is not ours.
        path: PathBuf,
        /// What this crate meant to keep there ("the next segment", "the settings blob").
        what: String,
    },
    /// Creating a database where one exists.
    #[error("{}: already holds an M2M database", path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// Another writer holds the directory.
    #[error("{}: locked by another writer", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A batch that does not fit the log: another dimension, or empty.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong.
        reason: String,
    },
    /// Attributes that do not fit the database's schema: an unknown field, a column of the wrong type or
    /// length, a value no column may hold, an invalid schema. Nothing was stored.
    #[error("invalid attributes (field {field:?}): {reason}")]
    InvalidAttributes {
        /// The field ("" when the problem is not one field's).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A filter that does not fit the database's schema: an unknown field, a value of the wrong type, a
    /// condition the field's type does not support.
    #[error("invalid filter (field {field:?}): {reason}")]
    InvalidFilter {
        /// The field ("" when the problem is not one field's).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A device of the hot tier failed (allocation, upload).
    #[error("hot tier device: {reason}")]
    Device {
        /// The device's message.
        reason: String,
    },
    /// More bytes than a tier's budget allows.
    #[error("{what} needs {bytes} bytes, over the budget of {budget}")]
    OverBudget {
        /// What did not fit.
        what: String,
        /// Bytes it would take.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// A write failed earlier, and this handle refuses further changes until the log or database is
    /// reopened, which continues from the last good state on disk.
    #[error("{}: an earlier write failed; reopen to continue from the last good state", path.display())]
    Poisoned {
        /// The log file or database directory.
        path: PathBuf,
    },
}

// Errors cross threads (prefetch workers) and go into `anyhow`: keep them Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
};

/// Result alias for m2m-tier.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), offset, reason: reason.into() }
    }
}
