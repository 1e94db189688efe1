//! M2M: a vector search engine and training data lake over Gaussian splats.
//!
//! [`M2m`] is the engine of the original project's API: [`create_m2m`] (or [`M2m::create`] /
//! [`M2m::open`]), [`M2m::add_splats`], [`M2m::build_index`], [`M2m::retrieve`] at a level of detail,
//! [`M2m::energy`], [`M2m::generate`] (Langevin dynamics), [`M2m::delete`], [`M2m::flush`],
//! [`M2m::stats`], and [`M2m::export_to_dataloader`], which streams batches to a training loop with
//! importance sampling and Langevin augmentation. Settings are [`M2mConfig`] (serde, every field
//! defaulted). The layers are re-exported: [`splat`], [`index`], [`tier`], [`soc`], [`gpu`] (its Vulkan
//! backend behind this crate's `gpu` feature).
//!
//! ```
//! use m2m::{Lod, M2mConfig, create_m2m};
//! let digits = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 5, dim: 64, ..Default::default() })?;
//! let mut engine = create_m2m(M2mConfig::default().dim(64))?;
//! let ids = engine.add_splats(&digits.base)?;
//! engine.build_index()?;
//! let hits = engine.retrieve(&digits.queries[..64], 10, Lod::Rerank)?;
//! assert_eq!(hits.len(), 10);
//! assert!(ids.contains(&hits[0].id) && hits[0].kappa >= 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attributes;
mod build;
mod config;
mod engine;
mod error;
mod gpu_search;
mod ingest;
mod loader;
mod rowids;
mod rows;
mod stored;
#[doc(hidden)]
pub mod testing;
mod training;
mod upsert;
mod validate;

pub use attributes::Attribute;
pub use build::DEFAULT_BUILD_BUDGET_BYTES;
pub use config::{Device, LangevinDynamics, M2mConfig};
pub use engine::{
    CONFIG_BLOB, Hit, INDEX_BLOB, LEARNED_BLOB, M2m, MAX_GENERATE_VALUES, REPLACED_BLOB, Stats, create_m2m,
};
pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use gpu_search::ForcePath;
pub use gpu_search::{CostModel, RetrievalStats};
pub use loader::{DataLoader, DataLoaderConfig, LakeReader, MAX_EPOCHS, MAX_GENERATE_STEPS, Source, TrainingBatch};
pub use training::{Fidelity, KappaFit, NEIGHBOURS_BLOB, SOC_BLOB, WeightReport};

/// The GPU layer: Vulkan kernels (with the `gpu` feature) and their CPU twins, behind one `Compute`.
pub use m2m_gpu as gpu;
/// The index layer: the KMeans++ level-of-detail tree and the distance kernels.
pub use m2m_index as index;
pub use m2m_index::{Lod, SearchParams, StreamReport};
/// The science layer: energy, kappa, the SOC controller, the sampler, Langevin dynamics.
pub use m2m_soc as soc;
/// The splat layer: types, validation, vector files and the built-in data set.
pub use m2m_splat as splat;
pub use m2m_splat::{Batch, DigitsConfig, Metric, Splat, SplatId, SplatRef, SplatSet, digits_on_sphere};
/// The storage layer: write-ahead log, segments, tiers, prefetch.
pub use m2m_tier as tier;
/// Attributes and filters (from m2m-tier, which stores them).
pub use m2m_tier::{AttrBatch, Column, Field, FieldType, Filter, Scalar, Schema, Value};
