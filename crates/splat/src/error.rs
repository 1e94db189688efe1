//! The one error type of m2m-splat, shared by batch validation and vector-file IO.

use std::path::PathBuf;

/// Everything that can go wrong when building splats or reading and writing vector files.
///
/// Each variant carries what a person needs to find and fix the problem: the row and column of a bad
/// value, the expected and actual dimension, the path and byte offset of a corrupt file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dimension of zero was asked for; splats live on a sphere of at least one dimension.
    #[error("dimension must be at least 1")]
    ZeroDimension,
    /// Vectors of one dimension were given where another is required.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The dimension of the set, file or query that was expected.
        expected: usize,
        /// The dimension that was given.
        got: usize,
    },
    /// A flat row-major buffer whose length is not a multiple of the dimension.
    #[error("{len} values are not a whole number of rows of dimension {dim}")]
    RaggedBatch {
        /// Number of values in the buffer.
        len: usize,
        /// Row dimension.
        dim: usize,
    },
    /// A batch with no rows.
    #[error("empty batch: at least one row is required")]
    EmptyBatch,
    /// A per-row column (ids, kappa, alpha) whose length differs from the number of rows.
    #[error("column `{column}` has {got} values for a batch of {expected} rows")]
    ColumnLength {
        /// The column's name.
        column: &'static str,
        /// Number of rows in the batch.
        expected: usize,
        /// Number of values given for the column.
        got: usize,
    },
    /// A NaN or infinite value in a vector.
    #[error("non-finite value {value} at row {row}, column {column}")]
    NonFinite {
        /// Row of the batch (0-based).
        row: usize,
        /// Column within the row (0-based).
        column: usize,
        /// The offending value.
        value: f32,
    },
    /// A vector whose norm is zero has no direction to put on the sphere.
    #[error("row {row} has zero norm and has no direction on the unit sphere")]
    ZeroNorm {
        /// Row of the batch (0-based).
        row: usize,
    },
    /// A concentration that is not finite or not strictly positive.
    #[error("row {row}: kappa must be finite and > 0, got {value}")]
    InvalidKappa {
        /// Row of the batch (0-based).
        row: usize,
        /// The offending value.
        value: f32,
    },
    /// A weight that is not finite or not strictly positive.
    #[error("row {row}: alpha must be finite and > 0, got {value}")]
    InvalidAlpha {
        /// Row of the batch (0-based).
        row: usize,
        /// The offending value.
        value: f32,
    },
    /// An id that is already in the set, or that appears twice in one batch.
    #[error("row {row}: id {id} is already in use")]
    DuplicateId {
        /// Row of the batch (0-based).
        row: usize,
        /// The repeated id.
        id: u64,
    },
    /// Automatic id assignment would pass `u64::MAX`.
    #[error("no ids left: assigning {rows} more ids would overflow u64")]
    IdsExhausted {
        /// Number of ids that were asked for.
        rows: usize,
    },
    /// A metric name that is not one of `cosine`, `ip`, `l2`.
    #[error("unknown metric `{name}` (expected cosine, ip or l2)")]
    UnknownMetric {
        /// The name that was given.
        name: String,
    },
    /// An invalid setting of a generator or reader (for example a negative noise level).
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file whose bytes do not follow its format.
    #[error("{}: corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset at which the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed file (or file name) that this crate does not read: another dtype, Fortran order, an
    /// unknown extension.
    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, and what to do instead.
        reason: String,
    },
}

// Errors cross threads (prefetch workers, rayon) and go into `anyhow`: keep them Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
};

/// Result alias for m2m-splat.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), offset, reason: reason.into() }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), reason: reason.into() }
    }
}
