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
    /// A setting or an argument out of range (`field` names it).
    #[error("invalid {field}: {reason}")]
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

/// What kind of failure an [`Error`] is: the one classification that the Python exceptions
/// (`m2m.InvalidInputError`, `m2m.CorruptError`, ...) and the CLI's messages follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input: vectors, ids, a setting, a query, a parameter out of range.
    InvalidInput,
    /// A file that fails its checks (magic, checksum, length, version).
    Corrupt,
    /// Another writer holds the database directory.
    Locked,
    /// An operating-system error on a file.
    Io,
    /// An earlier write failed; the handle refuses changes until the database is reopened.
    Poisoned,
    /// A change to an engine opened read-only.
    ReadOnly,
    /// A call that needs `build_index` first.
    NoIndex,
    /// The engine holds no splat.
    Empty,
    /// The GPU backend: no usable Vulkan device, or a Vulkan call failed.
    Device,
}

impl ErrorKind {
    /// The kind's short name (`invalid_input`, `corrupt`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Locked => "locked",
            ErrorKind::Io => "io",
            ErrorKind::Poisoned => "poisoned",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::NoIndex => "no_index",
            ErrorKind::Empty => "empty",
            ErrorKind::Device => "device",
        }
    }
}

fn tier_kind(e: &m2m_tier::Error) -> ErrorKind {
    use m2m_tier::Error as T;
    match e {
        T::Corrupt { .. } | T::IncompatibleVersion { .. } => ErrorKind::Corrupt,
        T::Locked { .. } => ErrorKind::Locked,
        T::Poisoned { .. } => ErrorKind::Poisoned,
        T::InvalidBatch { .. } | T::InvalidAttributes { .. } | T::InvalidFilter { .. } | T::OverBudget { .. } => {
            ErrorKind::InvalidInput
        }
        T::Device { .. } => ErrorKind::Device,
        // Io, and any variant added later: a storage failure.
        _ => ErrorKind::Io,
    }
}

fn index_kind(e: &m2m_index::Error) -> ErrorKind {
    match e {
        m2m_index::Error::Corrupt { .. } => ErrorKind::Corrupt,
        _ => ErrorKind::InvalidInput,
    }
}

impl Error {
    /// The kind of failure, for callers that react by kind (the Python exceptions map from it).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Splat(m2m_splat::Error::Io { .. }) => ErrorKind::Io,
            Error::Splat(m2m_splat::Error::Corrupt { .. }) => ErrorKind::Corrupt,
            Error::Splat(_) | Error::Config { .. } => ErrorKind::InvalidInput,
            Error::Index(e) | Error::Soc(m2m_soc::Error::Index(e)) => index_kind(e),
            Error::Soc(_) => ErrorKind::InvalidInput,
            Error::Tier(e) => tier_kind(e),
            Error::Gpu(m2m_gpu::Error::Shape { .. } | m2m_gpu::Error::Invalid { .. }) => ErrorKind::InvalidInput,
            Error::Gpu(_) => ErrorKind::Device,
            Error::NoIndex { .. } => ErrorKind::NoIndex,
            Error::ReadOnly { .. } => ErrorKind::ReadOnly,
            Error::Empty => ErrorKind::Empty,
        }
    }
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn each_layer_error_maps_to_the_kind_a_caller_reacts_to() {
        let path = PathBuf::from("db");
        let cases: Vec<(Error, ErrorKind)> = vec![
            (m2m_splat::Error::ZeroDimension.into(), ErrorKind::InvalidInput),
            (m2m_index::Error::ZeroK.into(), ErrorKind::InvalidInput),
            (m2m_index::Error::Corrupt { reason: "x".into() }.into(), ErrorKind::Corrupt),
            (m2m_tier::Error::Locked { path: path.clone() }.into(), ErrorKind::Locked),
            (m2m_tier::Error::Corrupt { path: path.clone(), offset: 0, reason: "x".into() }.into(), ErrorKind::Corrupt),
            (m2m_tier::Error::Poisoned { path: path.clone() }.into(), ErrorKind::Poisoned),
            (m2m_tier::Error::Io { path, source: std::io::Error::other("disk") }.into(), ErrorKind::Io),
            (m2m_gpu::Error::NotBuilt.into(), ErrorKind::Device),
            (Error::Config { field: "dim", reason: "0".into() }, ErrorKind::InvalidInput),
            (Error::NoIndex { what: "retrieve" }, ErrorKind::NoIndex),
            (Error::ReadOnly { what: "delete" }, ErrorKind::ReadOnly),
            (Error::Empty, ErrorKind::Empty),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
