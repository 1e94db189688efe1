//! Gaussian splats on the unit sphere: the data model of M2M.
//!
//! A splat is an embedding stored as a mean direction `mu` (a unit vector), a concentration `kappa > 0`
//! and a weight `alpha > 0`, with a `u64` id. This crate owns:
//!
//! * the types: [`Splat`], [`SplatRef`], and the columnar [`SplatSet`] (row-major `mu` in one 64-byte
//!   aligned buffer, plus id, kappa, alpha and norm columns);
//! * ingest: [`Batch`] describes raw vectors with optional ids and parameters, [`SplatSet::append`]
//!   validates the whole batch, normalises it onto the sphere and appends it, or rejects it untouched;
//! * the [`Metric`] type (cosine, inner product, L2) and what each means for stored splats;
//! * vector files: streaming [`VectorReader`] and atomic [`VectorWriter`] for `.fvecs`, `.ivecs` and
//!   `.npy`;
//! * the built-in data set: [`load_digits`] and [`digits_on_sphere`].
//!
//! It does not search (m2m-index), persist sets (m2m-tier) or learn kappa (m2m-soc).
//!
//! ```
//! use m2m_splat::{Batch, DigitsConfig, Error, SplatSet, digits_on_sphere};
//!
//! let digits = digits_on_sphere(&DigitsConfig::default().rows(500).queries(10))?;
//! let mut set = SplatSet::new(digits.dim)?;
//! let rows = set.append(Batch::new(&digits.base, digits.dim))?;
//! assert_eq!(rows.len(), 500);
//!
//! // A bad batch is refused whole, with the reason, and the set is unchanged.
//! let mut bad = digits.queries.clone();
//! bad[digits.dim + 3] = f32::NAN;
//! let err = set.append(Batch::new(&bad, digits.dim)).unwrap_err();
//! assert!(matches!(err, Error::NonFinite { row: 1, column: 3, .. }));
//! assert_eq!(set.len(), 500);
//! # Ok::<(), Error>(())
//! ```

mod digits;
mod error;
mod io;
mod metric;
mod normalize;
mod set;
mod splat;

pub use digits::{
    DIGIT_IMAGES, DIGIT_PIXELS, Digits, DigitsConfig, DigitsSphere, PROJECTION_SEED, digits_on_sphere, load_digits,
};
pub use error::{Error, Result};
pub use io::{
    Chunks, Element, ElementType, VectorFileInfo, VectorFormat, VectorReader, VectorWriter, Vectors, read_vectors,
    write_vectors,
};
pub use metric::Metric;
pub use normalize::{normalize, normalize_extend, normalize_into};
pub use set::{Batch, MU_ALIGN, SplatSet, SplatSetInfo, Values};
pub use splat::{DEFAULT_ALPHA, DEFAULT_KAPPA, Splat, SplatId, SplatRef};
