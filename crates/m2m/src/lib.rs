//! M2M: a vector search engine and training data lake over Gaussian splats.
//!
//! This facade wires the layer crates together and re-exports them; the logic lives in the layers. Today
//! it exposes the splat layer ([`splat`], with its main types at the top level) and the GPU layer
//! ([`gpu`]; its Vulkan backend behind this crate's `gpu` feature); retrieval, storage and the training
//! data lake join as the facade issue wires them (see `ARCHITECTURE.md`).
//!
//! ```
//! use m2m::{Batch, SplatSet};
//! let mut set = SplatSet::new(3)?;
//! set.append(Batch::new(&[1.0, 2.0, 2.0], 3))?;
//! assert_eq!(set.mu_row(0), &[1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
//! # Ok::<(), m2m::splat::Error>(())
//! ```

/// The GPU layer: Vulkan kernels (with the `gpu` feature) and their CPU twins, behind one `Compute`.
pub use m2m_gpu as gpu;
/// The splat layer: types, validation, vector files and the built-in data set.
pub use m2m_splat as splat;
pub use m2m_splat::{Batch, DigitsConfig, Metric, Splat, SplatId, SplatRef, SplatSet, digits_on_sphere};
