//! m2m-index: the retrieval core of M2M.
//!
//! A two-level k-means tree (coarse centroids, fine clusters under them) over cluster-major storage, with
//! compact codes of every vector (SQ4 by default, or SQ8) for fast estimated scores, and four levels of
//! detail:
//!
//! * [`Lod::Centroids`] (LOD 0): the representatives of the nearest fine clusters, from centroids alone;
//! * [`Lod::Codes`] (LOD 1): code estimates over the members of the `nprobe` nearest clusters;
//! * [`Lod::Rerank`] (LOD 2, default): LOD 1 candidates re-ranked with exact full-precision scores;
//! * [`Lod::Exact`]: an exhaustive scan, blocked over queries in batches.
//!
//! The distance kernels ([`kernels`]) dispatch at run time to AVX-512 (with VNNI for the codes),
//! AVX2+FMA, aarch64 NEON (with `sdot` for the codes where present) or portable code;
//! `M2M_ISA=scalar|avx2|avx512|neon` or [`Index::set_isa`] forces one. The index does no file IO:
//! [`IndexParts`] serialises with serde so that m2m-tier can persist it, and an index can read its
//! full vectors from rows it does not own ([`ColdRows`]: a memory-mapped file in the facade) instead
//! of holding them in RAM.
//!
//! ```
//! use m2m_index::{Index, IndexConfig, Lod, SearchParams};
//!
//! let dim = 8;
//! let vectors: Vec<f32> = (0..400 * dim).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
//! let ids: Vec<u64> = (0..400).collect();
//! let index = Index::build(&IndexConfig::default(), dim, &vectors, &ids)?;
//! let hits = index.search(&vectors[5 * dim..6 * dim], 3, Lod::Exact, &SearchParams::default())?;
//! assert_eq!(hits[0].id, 5); // a vector is its own nearest neighbour
//! # Ok::<(), m2m_index::Error>(())
//! ```

mod bitq;
mod codes;
mod cold;
mod error;
mod filter;
mod idmap;
mod index;
pub mod kernels;
mod kmeans;
mod pq;
mod probe;
mod spill;
mod stream;
mod topk;
mod validate;
mod view;

pub use bitq::BITQ_EPS;
pub use codes::{Codes, SharedBytes};
pub use cold::{ClusterRows, ColdRows, RowCache};
pub use error::{Error, Result};
pub use filter::{CHECK_COST, CODE_COST, FilterOptions, FilterPlan, FilterStats, IdSet, ResolvedFilter, RowFilter};
pub use idmap::IdMap;
pub use index::{
    Cluster, CodeKind, Hit, Index, IndexConfig, IndexParts, Lod, MAX_DIMS_PER_CODE, RebalanceReport, Scratch,
    SearchParams,
};
pub use m2m_splat::Metric;
pub use probe::{MIN_GAIN, ProbeRule};
pub use stream::{Calibration, RowSource, StreamBuilt, StreamConfig, StreamReport};
