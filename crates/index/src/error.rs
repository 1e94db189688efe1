//! The one error type of m2m-index.

/// Everything that can go wrong when building, searching or updating an index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `k = 0` asks for nothing.
    #[error("k must be at least 1")]
    ZeroK,
    /// A query or vector of the wrong dimension.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The dimension given.
        got: usize,
    },
    /// A buffer whose length is not a whole number of rows.
    #[error("{len} values are not a whole number of rows of dimension {dim}")]
    RaggedBatch {
        /// Number of values.
        len: usize,
        /// Row dimension.
        dim: usize,
    },
    /// A NaN or infinite value in a query or vector.
    #[error("non-finite value {value} at row {row}, column {column}")]
    NonFinite {
        /// Row of the batch (0 for a single query).
        row: usize,
        /// Column.
        column: usize,
        /// The value.
        value: f32,
    },
    /// A zero vector where a direction is needed (cosine).
    #[error("row {row} has zero norm; cosine needs a direction")]
    ZeroNorm {
        /// Row of the batch (0 for a single query).
        row: usize,
    },
    /// Building an index over no vectors.
    #[error("cannot build an index over zero vectors")]
    EmptyBuild,
    /// Ids and vectors of different counts.
    #[error("{ids} ids for {rows} vectors")]
    IdCount {
        /// Number of ids.
        ids: usize,
        /// Number of vectors.
        rows: usize,
    },
    /// An id that is already in the index (or twice in one batch).
    #[error("id {id} is already in the index")]
    DuplicateId {
        /// The id.
        id: u64,
    },
    /// An invalid setting.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An instruction-set name that is not `scalar`, `avx2`, `avx512` or `neon` (from `M2M_ISA` or
    /// [`crate::kernels::Isa::parse`]).
    #[error("unknown instruction set {name:?} (M2M_ISA takes scalar, avx2, avx512 or neon)")]
    UnknownIsa {
        /// The name given.
        name: String,
    },
    /// Forcing an instruction set this CPU does not have.
    #[error("this CPU cannot run the {isa} kernels (available: {available})")]
    IsaUnavailable {
        /// The instruction set asked for.
        isa: &'static str,
        /// The ones this CPU can run.
        available: String,
    },
    /// A [`crate::ResolvedFilter`] used with an index whose rows moved since it was resolved (an
    /// insert, delete or rebalance), or with another index.
    #[error(
        "the resolved filter was made for another state of the index (rows inserted, deleted or moved since): resolve it again"
    )]
    StaleFilter,
    /// Deserialised index parts that contradict each other.
    #[error("corrupt index: {reason}")]
    Corrupt {
        /// What is inconsistent.
        reason: String,
    },
}

// Errors cross threads (rayon, prefetch workers) and go into `anyhow`: keep them Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
};

/// Result alias for m2m-index.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<m2m_splat::Error> for Error {
    fn from(e: m2m_splat::Error) -> Self {
        match e {
            m2m_splat::Error::NonFinite { row, column, value } => Error::NonFinite { row, column, value },
            m2m_splat::Error::ZeroNorm { row } => Error::ZeroNorm { row },
            m2m_splat::Error::DimensionMismatch { expected, got } => Error::DimensionMismatch { expected, got },
            other => Error::InvalidConfig { what: "input", reason: other.to_string() },
        }
    }
}
