//! The facade's error type: each layer's errors, and the engine's own.

/// Everything the engine can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad vectors or splats (dimension, NaN, kappa <= 0, empty batch, duplicate id...).
    #[error(transparent)]
    Splat(#[from] m2m_splat::Error),
    /// The index refused (a bad query, k = 0...).
    #[error(transparent)]
    Index(#[from] m2m_index::Error),
    /// Storage: IO, a corrupt or locked database.
    #[error(transparent)]
    Tier(#[from] m2m_tier::Error),
    /// The energy, sampler or Langevin refused an input.
    #[error(transparent)]
    Soc(#[from] m2m_soc::Error),
    /// The GPU backend.
    #[error(transparent)]
    Gpu(#[from] m2m_gpu::Error),
    /// A setting out of range.
    #[error("config field {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A call that needs `build_index` first.
    #[error("{what} needs an index: call build_index first")]
    NoIndex {
        /// The call.
        what: &'static str,
    },
    /// A change to an engine opened with `M2m::open_read_only`.
    #[error("{what} on an engine opened read-only")]
    ReadOnly {
        /// The call.
        what: &'static str,
    },
    /// The engine holds no splat.
    #[error("the engine holds no splat")]
    Empty,
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
