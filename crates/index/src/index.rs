//! The level-of-detail index: a two-level k-means tree over cluster-major storage with compact codes
//! (SQ4 by default, SQ8 on request: [`CodeKind`]).
//!
//! Structure. `n_coarse` coarse centroids partition the vectors; inside each coarse partition k-means
//! places fine centroids in proportion to the partition's size (`n_fine` in all). Each fine cluster stores
//! its members contiguously: ids, full-precision vectors, codes of their residuals to the fine centroid,
//! and (for L2) half squared norms, plus a representative member (the one nearest the centroid).
//!
//! Scores. Internally every metric is a similarity, higher is better: `q . x` for cosine (on unit vectors)
//! and inner product, `q . x - |x|^2 / 2` for L2 (the same order as `-|q - x|^2`). Hits report cosine
//! similarity, inner product, or squared L2 distance (`|q|^2 - 2 s`); the best hit comes first either way.
//!
//! Codes. The residual `r = x - c` of each vector to its fine centroid is quantised per dimension:
//! `code_j = round((r_j - min_j) / step_j)` with global `min_j`, `step_j = (max_j - min_j) / levels`
//! (255 levels for SQ8 over the full range; 15 for SQ4, the default, over the range clipped at the
//! 0.1% and 99.9% quantiles). Then `q . x ~ q . c + q . min + sum_j (q_j step_j) code_j`; the last sum
//! runs in integers (`q_j step_j` scaled to i8), on AVX-512 VNNI where the CPU has it. SQ4 codes take
//! `dim / 2` bytes per vector (SQ8 `dim`), an eighth (a quarter) of the full vectors, and only they are
//! read at LOD 1.
//!
//! Ranking. Every search first scores fine centroids against the query. On SIMD paths it reads them from an f16 copy
//! (transposed in blocks of 16, scaled by a power of two so that every value is a finite half), half the
//! bytes of f32, with a proven bound on the score error ([`crate::kernels::f16_error_bound`]). The
//! clusters whose f16 score lies within twice that bound of the cut are re-scored from the f32 centroids
//! before the best are chosen, so the probed clusters and the scores LOD 0 and LOD 1 start from are those
//! of an f32 ranking (LOD 2, which re-ranks exactly, re-scores only the clusters near the cut).

use std::collections::HashSet;

use crate::IdMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::{Isa, dot, dots, sq8_dots_with};
use crate::kmeans::KMeans;
use crate::topk::{Entry, TopK};
use crate::{Error, Metric, Result};

/// Settings of [`Index::build`]. Every field has a documented default; `None` counts are derived from N.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Metric. Default cosine.
    pub metric: Metric,
    /// Fine clusters. Default `round(4 * sqrt(N))`, the usual IVF rule (about 1,058 at N = 70,000).
    pub n_fine: Option<usize>,
    /// Coarse clusters. Default `round(sqrt(n_fine))`.
    pub n_coarse: Option<usize>,
    /// Lloyd iterations per k-means. Default 10.
    pub kmeans_iters: usize,
    /// Each k-means trains on at most this many rows per centroid (a seeded sample). Default 128.
    pub train_per_centroid: usize,
    /// A fine cluster larger than this multiple of the mean size is split in two. Default 3.0.
    pub max_cluster_factor: f32,
    /// Seed of every random choice. Default 42.
    pub seed: u64,
    /// The compressed codes every vector gets (what LOD 1 reads). Default [`CodeKind::Sq4`].
    pub codes: CodeKind,
    /// Recall@10 that the default `nprobe` is calibrated to reach at LOD 2, measured at build time on a
    /// sample of the indexed vectors (see [`Index::calibrate`]). Default 0.95; 0 skips calibration and
    /// uses `max(8, n_fine / 16)`.
    pub target_recall: f32,
    /// Keep a bf16 copy of every vector (2 bytes per dimension) for exact search: a first pass scores
    /// bf16 with `vdpbf16ps` (twice the multiply-adds per instruction, half the bytes), a proven error bound
    /// keeps every row that could still be in the top k, and those are rescored in f32, so results equal
    /// the f32 scan. Used where the CPU has AVX-512 BF16; elsewhere exact search scans f32. Default true.
    pub exact_prefilter: bool,
    /// Lloyd iterations over all fine centroids at once after the per-partition k-means (each vector may
    /// move to a fine cluster of another coarse partition; each fine centroid is then re-attached to its
    /// nearest coarse centroid). This brings the clusters close to a flat k-means, so fewer probes reach a
    /// given recall. Default 1 (on minilm70k one iteration raised LOD 2 recall at nprobe 48 from 0.943 to
    /// 0.952; a second added nothing measurable and 0.3 s of build).
    pub refine_iters: usize,
}

/// The compressed code of a vector: its residual to the fine centroid, scalar-quantised per dimension
/// (SQ8, SQ4) or product-quantised with 4-bit sub-codes (PQ4, see `pq.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodeKind {
    /// 8 bits per dimension over the full residual range: `dim` bytes per vector, the closer estimate.
    Sq8,
    /// 4 bits per dimension over the residual range clipped at its 0.1% and 99.9% quantiles:
    /// `dim / 2` bytes (rounded up to 64) per vector, half the memory traffic of SQ8 per scanned vector.
    #[default]
    Sq4,
    /// Product quantisation: the residual is cut into sub-vectors of `dims_per_code` dimensions (1 to
    /// 16), each coded by the 4-bit number of one of 16 sub-centroids trained per index (k-means per
    /// sub-space on the residuals). `ceil(dim / dims_per_code / 2)` bytes per vector (48 at d = 384 with
    /// 4 dimensions per code, 13 at d = 50 with 2), stored in the fast-scan layout (blocks of 32 rows,
    /// scored with in-register table look-ups). `anisotropic` refines each code with ScaNN's
    /// score-aware loss (threshold 0.2), which weighs the error along the vector's own direction.
    Pq4 {
        /// Dimensions per 4-bit sub-code.
        dims_per_code: u8,
        /// Encode with the anisotropic loss rather than the nearest sub-centroid.
        anisotropic: bool,
    },
}

impl CodeKind {
    /// The code kind chosen by measurement for vectors of dimension `dim` (notes/issue-14.md, round 4):
    /// up to 128 dimensions PQ4 with one dimension per sub-code and the anisotropic encoding (16 trained
    /// levels per dimension: a higher LOD 1 ceiling than SQ4's 16 uniform ones, and `dim / 2` bytes per
    /// row where SQ4 pads every row to 64); above, SQ4, whose LOD 1 ceiling at d = 384 (0.94) PQ4 with 2
    /// dimensions per code does not reach (0.85), at the same LOD 2 speed and a build several times faster.
    pub fn for_dim(dim: usize) -> CodeKind {
        if dim <= 128 { CodeKind::Pq4 { dims_per_code: 1, anisotropic: true } } else { CodeKind::Sq4 }
    }

    /// Checks the settings of the kind: PQ4's `dims_per_code` must lie in `1..=MAX_DIMS_PER_CODE`.
    ///
    /// Errors: [`Error::InvalidConfig`] naming `codes`.
    pub fn check(self) -> Result<()> {
        if let CodeKind::Pq4 { dims_per_code, .. } = self
            && !(1..=MAX_DIMS_PER_CODE).contains(&dims_per_code)
        {
            return Err(Error::InvalidConfig {
                what: "codes",
                reason: format!("PQ4 dims_per_code {dims_per_code} is not in 1..={MAX_DIMS_PER_CODE}"),
            });
        }
        Ok(())
    }

    /// Bytes per vector of dimension `dim`.
    pub fn stride(self, dim: usize) -> usize {
        match self {
            CodeKind::Sq8 => dim,
            CodeKind::Sq4 => crate::kernels::sq4_stride(dim),
            CodeKind::Pq4 { dims_per_code, .. } => {
                crate::kernels::pq4_pairs(crate::pq::Shape::new(dim, dims_per_code).m)
            }
        }
    }

    /// Bytes of the codes of `rows` vectors of dimension `dim` in one cluster: `rows * stride` for SQ, and
    /// whole blocks of 32 rows for PQ4 (the fast-scan layout).
    pub fn codes_len(self, dim: usize, rows: usize) -> usize {
        match self.pq_shape(dim) {
            Some(shape) => crate::kernels::pq4_codes_len(rows, shape.m),
            None => rows * self.stride(dim),
        }
    }

    /// The PQ4 code shape at dimension `dim`, `None` for scalar codes.
    pub(crate) fn pq_shape(self, dim: usize) -> Option<crate::pq::Shape> {
        match self {
            CodeKind::Pq4 { dims_per_code, .. } => Some(crate::pq::Shape::new(dim, dims_per_code)),
            _ => None,
        }
    }

    /// Length of the PQ4 codebook at dimension `dim` (0 for scalar codes).
    pub fn codebook_len(self, dim: usize) -> usize {
        self.pq_shape(dim).map_or(0, crate::pq::Shape::codebook_len)
    }

    fn levels(self) -> f32 {
        match self {
            CodeKind::Sq8 => 255.0,
            CodeKind::Sq4 | CodeKind::Pq4 { .. } => 15.0,
        }
    }

    /// Fraction of residuals clipped at each end of a dimension's range.
    fn clip(self) -> f64 {
        match self {
            CodeKind::Sq8 | CodeKind::Pq4 { .. } => 0.0,
            CodeKind::Sq4 => 0.001,
        }
    }
}

/// Names as `bench-search --codes` takes them: `sq4`, `sq8`, `pq4:D` or `pq4a:D` (PQ4 with `D`
/// dimensions per sub-code, `a` for the anisotropic encoding), case-insensitive.
impl std::str::FromStr for CodeKind {
    type Err = Error;

    /// Errors: [`Error::InvalidConfig`] naming `codes`, for an unknown name or a `D` outside
    /// `1..=MAX_DIMS_PER_CODE`.
    fn from_str(s: &str) -> Result<CodeKind> {
        let bad = || Error::InvalidConfig {
            what: "codes",
            reason: format!("{s:?} is not sq4, sq8, pq4:D or pq4a:D with D in 1..={MAX_DIMS_PER_CODE}"),
        };
        let lower = s.trim().to_ascii_lowercase();
        let kind = match lower.as_str() {
            "sq4" => CodeKind::Sq4,
            "sq8" => CodeKind::Sq8,
            other => match other.split_once(':') {
                Some((name @ ("pq4" | "pq4a"), d)) => {
                    CodeKind::Pq4 { dims_per_code: d.parse().map_err(|_| bad())?, anisotropic: name == "pq4a" }
                }
                _ => return Err(bad()),
            },
        };
        kind.check().map_err(|_| bad())?;
        Ok(kind)
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            metric: Metric::Cosine,
            n_fine: None,
            n_coarse: None,
            kmeans_iters: 10,
            train_per_centroid: 128,
            max_cluster_factor: 3.0,
            seed: 42,
            codes: CodeKind::default(),
            target_recall: 0.95,
            exact_prefilter: true,
            refine_iters: 1,
        }
    }
}

impl IndexConfig {
    /// Sets the metric.
    pub fn metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the number of fine clusters.
    pub fn n_fine(mut self, n: usize) -> Self {
        self.n_fine = Some(n);
        self
    }

    /// Sets the number of coarse clusters.
    pub fn n_coarse(mut self, n: usize) -> Self {
        self.n_coarse = Some(n);
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the kind of compressed code.
    pub fn codes(mut self, codes: CodeKind) -> Self {
        self.codes = codes;
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |what, reason: &str| Err(Error::InvalidConfig { what, reason: reason.into() });
        if self.n_fine == Some(0) {
            return bad("n_fine", "must be at least 1");
        }
        if self.n_coarse == Some(0) {
            return bad("n_coarse", "must be at least 1");
        }
        if self.train_per_centroid == 0 {
            return bad("train_per_centroid", "must be at least 1");
        }
        if !(self.max_cluster_factor.is_finite() && self.max_cluster_factor > 1.0) {
            return bad("max_cluster_factor", "must be finite and > 1");
        }
        if !(0.0..=1.0).contains(&self.target_recall) {
            return bad("target_recall", "must lie in [0, 1]");
        }
        self.codes.check()
    }
}

/// Level of detail of a search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lod {
    /// LOD 0: centroids only; each hit is the representative member of one of the nearest fine clusters,
    /// scored by its centroid. No code or vector is read.
    Centroids,
    /// LOD 1: estimates from the compact codes (SQ4 by default, SQ8 on request) of the members of the
    /// probed clusters; scores are estimates.
    Codes,
    /// LOD 2: LOD 1 candidates re-ranked with exact full-precision scores. The default.
    #[default]
    Rerank,
    /// Exhaustive exact scan: recall 1.
    Exact,
}

impl Lod {
    /// LOD by number: 0, 1, 2; anything above 2 is exact.
    pub fn from_level(level: u8) -> Lod {
        match level {
            0 => Lod::Centroids,
            1 => Lod::Codes,
            2 => Lod::Rerank,
            _ => Lod::Exact,
        }
    }

    /// The level's number: 0 (centroids), 1 (codes), 2 (re-ranked) or 3 (exact).
    pub fn level(self) -> u8 {
        match self {
            Lod::Centroids => 0,
            Lod::Codes => 1,
            Lod::Rerank => 2,
            Lod::Exact => 3,
        }
    }

    /// The level's name, the same in Rust, Python and the CLI: `centroids`, `codes`, `rerank`, `exact`.
    pub fn name(self) -> &'static str {
        match self {
            Lod::Centroids => "centroids",
            Lod::Codes => "codes",
            Lod::Rerank => "rerank",
            Lod::Exact => "exact",
        }
    }
}

impl std::fmt::Display for Lod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Lod {
    type Err = Error;

    /// A level by number (`0` to `3`) or by name (`centroids`, `codes`, `rerank` or `reranked`, `exact`),
    /// in any case. Unlike [`Lod::from_level`], a number above 3 is refused.
    fn from_str(s: &str) -> Result<Lod> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "centroids" => Ok(Lod::Centroids),
            "1" | "codes" => Ok(Lod::Codes),
            "2" | "rerank" | "reranked" => Ok(Lod::Rerank),
            "3" | "exact" => Ok(Lod::Exact),
            _ => Err(Error::InvalidConfig {
                what: "lod",
                reason: format!("{s:?}: 0 or centroids, 1 or codes, 2 or rerank, 3 or exact"),
            }),
        }
    }
}

/// Search knobs. The default (all zeros) lets the index choose every one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchParams {
    /// Fine clusters whose members are scored (LOD 1 and 2). 0 (the default) uses the index's calibrated
    /// value ([`Index::default_nprobe`]).
    pub nprobe: usize,
    /// Coarse clusters whose fine centroids are ranked. 0 (the default) chooses by itself: the best coarse
    /// clusters are taken until their children number at least `max(8 * nprobe, 256)` (for LOD 0,
    /// `max(8 * k, 256)`), so the cost of ranking follows nprobe rather than the size of the index.
    pub coarse_probe: usize,
    /// LOD 2: candidates from the codes that are re-ranked exactly. 0 (the default) uses the depth
    /// calibrated at build time for k = 10, scaled by k / 10 (and at least k).
    pub rerank: usize,
}

/// One result: an id and its score (cosine similarity, inner product, or squared L2 distance).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The vector's id.
    pub id: u64,
    /// Its score under the index's metric.
    pub score: f32,
}

/// The members of one fine cluster, stored contiguously.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Member ids.
    pub ids: Vec<u64>,
    /// Member vectors (unit for cosine), row-major.
    pub vectors: Vec<f32>,
    /// Codes of the residuals, [`CodeKind::stride`] bytes per member (owned, or borrowed from a
    /// mapped file: see [`Codes`](crate::Codes)).
    pub codes: crate::Codes,
    /// `|x|^2 / 2` per member for L2, empty otherwise.
    pub half_sq_norms: Vec<f32>,
    /// The member nearest the centroid, if any.
    pub representative: Option<u64>,
    /// Members rounded to bf16, padded to [`crate::kernels::bf16_stride`] (empty without
    /// `exact_prefilter`).
    pub bf16: Vec<u16>,
    /// An upper bound of the members' norms (for the bf16 error bound).
    pub max_norm: f32,
}

impl Cluster {
    /// Turns `q . x` scores of the members (in order) into the index's similarity: subtracts `|x|^2 / 2`
    /// for L2, and leaves cosine and inner-product scores as they are.
    fn to_similarity(&self, scores: &mut [f32]) {
        scores.iter_mut().zip(&self.half_sq_norms).for_each(|(sc, h)| *sc -= h);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the cluster has no member.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Every part of an index, as it is serialised (see [`Index::parts`] and [`Index::from_parts`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexParts {
    /// The build settings.
    pub config: IndexConfig,
    /// Vector dimension.
    pub dim: usize,
    /// Coarse centroids, row-major.
    pub coarse: Vec<f32>,
    /// Fine centroids, row-major; the fine clusters of coarse `c` are `children[c]`.
    pub fine: Vec<f32>,
    /// Fine cluster indices under each coarse centroid.
    pub children: Vec<Vec<u32>>,
    /// The fine clusters' members.
    pub clusters: Vec<Cluster>,
    /// Quantiser offset per dimension.
    pub sq_min: Vec<f32>,
    /// Quantiser step per dimension.
    pub sq_step: Vec<f32>,
    /// Mean members per fine cluster at build time (the reference for rebalancing).
    pub target_cluster_size: f32,
    /// The nprobe used when a search asks for 0 (calibrated at build time).
    pub default_nprobe: usize,
    /// Ids of the vectors held out of k-means training to calibrate `default_nprobe` as unseen queries.
    pub calibration_ids: Vec<u64>,
    /// Re-rank depth for k = 10 used when a search asks for 0 (calibrated at build time).
    pub default_rerank: usize,
    /// The PQ4 codebook ([`CodeKind::Pq4`]; empty for scalar codes): sub-space after sub-space, 16
    /// sub-centroids of `dims_per_code` values each. Not part of the serde form (which stays the one of
    /// indexes stored before PQ4 existed): a stored index keeps it in a section of its own (the facade's
    /// `pq_codebook`), and parts of a PQ4 index decoded without it are refused by
    /// [`Index::from_parts`] as corrupt.
    #[serde(skip)]
    pub pq_codebook: Vec<f32>,
    /// The adaptive probe rule a LOD 2 search that leaves `nprobe` to the index follows
    /// ([`crate::ProbeRule`]; `None`: it probes `default_nprobe` clusters). Chosen by the calibration
    /// only where it costs less than the fixed nprobe at the target recall. Not part of the serde form
    /// (a stored index keeps it in a section of its own, the facade's `probe_rule`); parts decoded
    /// without it probe `default_nprobe` clusters, which the calibration also set.
    #[serde(skip)]
    pub probe_rule: Option<crate::ProbeRule>,
}

/// Per-query working memory; reuse one per thread to search without allocating.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) q: Vec<f32>,
    pub(crate) coarse_scores: Vec<f32>,
    pub(crate) fine: Vec<(f32, u32)>,
    /// How far an entry of `fine` may be from its f32 score `q . c` (0: all are f32 scores); see
    /// [`Index::rank_fine`].
    pub(crate) fine_err: f32,
    pub(crate) coarse_order: Vec<u32>,
    pub(crate) scores: Vec<f32>,
    pub(crate) row_scores: Vec<f32>,
    /// The cold rows a by-row re-rank reads, and the candidate each belongs to.
    pub(crate) cold_ranges: Vec<std::ops::Range<usize>>,
    pub(crate) cold_of: Vec<u32>,
    pub(crate) qi8: Vec<i8>,
    pub(crate) est: Vec<i32>,
    pub(crate) lut: Vec<u8>,
    pub(crate) table: Vec<f32>,
    pub(crate) top: TopK,
    pub(crate) top2: TopK,
    /// Of the last LOD 1 or LOD 2 search: fine centroids scored, clusters probed, codes scanned.
    pub(crate) ranked: usize,
    pub(crate) probed: usize,
    pub(crate) scanned: usize,
    /// Of the last LOD 2 search with the 1-bit first stage: codes that passed it and were scored.
    pub(crate) refined: usize,
    /// The query's side of the 1-bit first stage, the members of a cluster that pass it, and their
    /// codes gathered.
    pub(crate) bq: crate::bitq::BitQuery,
    pub(crate) surv: Vec<u32>,
    pub(crate) gather: Vec<u8>,
}

impl Scratch {
    /// Fine clusters whose codes the last LOD 1 or LOD 2 search with this scratch scanned (with the
    /// adaptive probe rule, fewer than its `nprobe` cap when it stopped early).
    pub fn probed_clusters(&self) -> usize {
        self.probed
    }

    /// Codes (members, and spill entries) the last LOD 1 or LOD 2 search with this scratch scored.
    pub fn scanned_codes(&self) -> usize {
        self.scanned
    }

    /// Of the codes the last LOD 2 search scanned with the 1-bit first stage ([`Index::enable_bitq`]),
    /// how many were scored by their SQ4 / SQ8 code: those that passed it, and those of the clusters
    /// scanned before the re-rank's threshold existed, which skip it (0 without the stage).
    pub fn refined_codes(&self) -> usize {
        self.refined
    }
}

/// A prepared query: the vector as the index compares it, plus what is needed to report scores.
pub(crate) struct Query {
    q_sq: f32,
}

/// A built index. Immutable for search (`&self`); updates take `&mut self`.
#[derive(Clone, Debug)]
pub struct Index {
    pub(crate) p: IndexParts,
    /// Fine cluster ids in the order of their coarse parents (`children` concatenated).
    order: Vec<u32>,
    /// For each coarse centroid, its children's positions in `order`.
    coarse_range: Vec<(u32, u32)>,
    /// Fine centroids in `order`, times `fine_h_scale`, rounded to f16 and transposed into blocks of 16
    /// for [`crate::kernels::dots_t16h_with`]: the table every ranking of fine centroids reads (half the
    /// bytes of f32). Empty when the centroids' range does not fit ([`crate::kernels::f16_scale`]); the
    /// ranking then scores the f32 rows.
    pub(crate) fine_h: Vec<u16>,
    /// `1 / s` for the power of two `s` the table was scaled by.
    fine_h_unscale: f32,
    /// The largest fine-centroid norm, for the f16 error bound.
    pub(crate) fine_norm_max: f32,
    pub(crate) coarse_bias: Vec<f32>,
    pub(crate) fine_bias: Vec<f32>,
    pub(crate) locations: IdMap<(u32, u32)>,
    isa: Isa,
    /// Full vectors read from outside RAM (a mapped file), cluster by cluster; clusters changed since
    /// are back in RAM (see `cold.rs`).
    pub(crate) cold: Option<crate::cold::Cold>,
    /// Spill lists by fine cluster ([`Index::spill`]); empty when the index has none.
    pub(crate) spill: Vec<crate::spill::SpillList>,
    /// The 1-bit first stage of LOD 2 ([`Index::enable_bitq`]); `None` when the index has none.
    pub(crate) bitq: Option<Box<crate::bitq::BitQ>>,
    /// Which state of the members this is: taken fresh ([`next_stamp`]) by the build and by every change
    /// of which row sits where (insert, delete, rebalance; spill lists leave the members in place); a
    /// clone keeps it, since it holds the same rows in the same places. A [`crate::ResolvedFilter`] remembers the stamp it was made for.
    pub(crate) stamp: u64,
}

/// A stamp no index has had before in this process (see `Index::stamp`).
pub(crate) fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Counts of [`Index::rebalance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebalanceReport {
    /// Clusters that were split.
    pub split: usize,
    /// Clusters after rebalancing.
    pub clusters: usize,
}

fn check_rows(data: &[f32], dim: usize) -> Result<usize> {
    if !data.len().is_multiple_of(dim) {
        return Err(Error::RaggedBatch { len: data.len(), dim });
    }
    Ok(data.len() / dim)
}

/// Validates rows and returns them as the index stores them (normalised for cosine).
pub(crate) fn prepare_rows(metric: Metric, data: &[f32], dim: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; data.len()];
    for (row, (src, dst)) in data.chunks_exact(dim).zip(out.chunks_exact_mut(dim)).enumerate() {
        if metric == Metric::Cosine {
            m2m_splat::normalize_into(src, dst, row)?;
        } else {
            if let Some((column, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite { row, column, value });
            }
            dst.copy_from_slice(src);
        }
    }
    Ok(out)
}

/// How much of the next probed cluster's codes [`Index::scan_codes`] prefetches while it scores the
/// current one.
const PREFETCH_CODE_BYTES: usize = 1024;

/// Hints the CPU to bring the first `max_bytes` of `bytes` into cache, one request per 64-byte line (no
/// effect off x86-64).
#[inline]
fn prefetch_lines(bytes: &[u8], max_bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes[..bytes.len().min(max_bytes)].chunks(64) {
        // SAFETY: a prefetch is a hint that never faults; the address lies within `bytes`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, max_bytes);
}

/// The bytes of an f32 slice (for [`prefetch_lines`]).
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: any initialised f32 is 4 initialised bytes; u8 has alignment 1; the length is in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn bias(metric: Metric, v: &[f32]) -> f32 {
    if metric == Metric::L2 { -0.5 * dot(v, v) } else { 0.0 }
}

/// Derived cluster counts for `n` vectors.
pub(crate) fn cluster_counts(config: &IndexConfig, n: usize) -> (usize, usize) {
    let n_fine = config.n_fine.unwrap_or_else(|| (4.0 * (n as f64).sqrt()).round() as usize).clamp(1, n);
    let n_coarse = config.n_coarse.unwrap_or_else(|| (n_fine as f64).sqrt().round() as usize).clamp(1, n_fine);
    (n_fine, n_coarse)
}

impl Index {
    /// Builds an index over `vectors` (row-major, `dim` per row) with the given ids.
    ///
    /// Errors: [`Error::EmptyBuild`], [`Error::RaggedBatch`], [`Error::IdCount`], [`Error::DuplicateId`],
    /// [`Error::NonFinite`], [`Error::ZeroNorm`] (cosine), [`Error::InvalidConfig`].
    pub fn build(config: &IndexConfig, dim: usize, vectors: &[f32], ids: &[u64]) -> Result<Index> {
        config.check()?;
        Isa::forced()?;
        if dim == 0 {
            return Err(Error::InvalidConfig { what: "dim", reason: "must be at least 1".into() });
        }
        let n = check_rows(vectors, dim)?;
        if n == 0 {
            return Err(Error::EmptyBuild);
        }
        if ids.len() != n {
            return Err(Error::IdCount { ids: ids.len(), rows: n });
        }
        let mut seen = HashSet::with_capacity(n);
        if let Some(&id) = ids.iter().find(|&&id| !seen.insert(id)) {
            return Err(Error::DuplicateId { id });
        }
        drop(seen);
        let metric = config.metric;
        let data = prepare_rows(metric, vectors, dim)?;
        let spherical = metric == Metric::Cosine;
        let (n_fine, n_coarse) = cluster_counts(config, n);
        // Calibration rows: a seeded sample that k-means never trains on, so that they measure recall as
        // unseen queries would (rows a clustering was fitted to are found more easily).
        let held = calibration_rows(config, n);
        let mut is_held = vec![false; n];
        held.iter().for_each(|&r| is_held[r] = true);

        // Level 1: coarse k-means over a sample, then every row assigned.
        let coarse_km = KMeans {
            k: n_coarse,
            iters: config.kmeans_iters,
            spherical,
            max_train: config.train_per_centroid.saturating_mul(n_coarse).max(n_coarse),
            seed: config.seed,
        };
        let coarse = coarse_km.run_held_out(&data, dim, |r| is_held[r]);
        let n_coarse = coarse.centroids.len() / dim;
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); n_coarse];
        for (row, &c) in coarse.assign.iter().enumerate() {
            members[c as usize].push(row as u32);
        }

        // Level 2: inside each coarse partition, fine clusters in proportion to its size.
        let cap = ((n as f64 / n_fine as f64) * f64::from(config.max_cluster_factor)).ceil().max(2.0) as usize;
        let partitions: Vec<(Vec<f32>, Vec<Vec<u32>>)> = members
            .par_iter()
            .enumerate()
            .map(|(c, rows)| {
                if rows.is_empty() {
                    return (Vec::new(), Vec::new());
                }
                let local: Vec<f32> =
                    rows.iter().flat_map(|&r| data[r as usize * dim..][..dim].iter().copied()).collect();
                let k = ((n_fine as f64 * rows.len() as f64 / n as f64).round() as usize).clamp(1, rows.len());
                let km = KMeans {
                    k,
                    iters: config.kmeans_iters,
                    spherical,
                    max_train: config.train_per_centroid.saturating_mul(k).max(k),
                    seed: config.seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                };
                let r = km.run_held_out(&local, dim, |i| is_held[rows[i] as usize]);
                let k = r.centroids.len() / dim;
                let mut groups: Vec<Vec<u32>> = vec![Vec::new(); k];
                for (i, &f) in r.assign.iter().enumerate() {
                    groups[f as usize].push(rows[i]);
                }
                let (centroids, groups) = split_oversized(&data, dim, r.centroids, groups, cap, spherical, km.seed);
                // Drop clusters that ended empty: they would only cost probes.
                let mut cents = Vec::new();
                let mut kept = Vec::new();
                for (cent, g) in centroids.chunks_exact(dim).zip(groups) {
                    if !g.is_empty() {
                        cents.extend_from_slice(cent);
                        kept.push(g);
                    }
                }
                (cents, kept)
            })
            .collect();

        let mut fine = Vec::new();
        let mut children: Vec<Vec<u32>> = Vec::with_capacity(n_coarse);
        let mut groups = Vec::new();
        for (cents, g) in partitions {
            let start = groups.len() as u32;
            children.push((start..start + g.len() as u32).collect());
            fine.extend_from_slice(&cents);
            groups.extend(g);
        }
        if config.refine_iters > 0 {
            (groups, children) =
                refine(&data, dim, &mut fine, &coarse.centroids, &children, config.refine_iters, spherical, &is_held);
        }

        let rows_of = &data;
        let members = groups
            .iter()
            .enumerate()
            .flat_map(|(f, rows)| rows.iter().map(move |&r| (f, &rows_of[r as usize * dim..][..dim])));
        let (sq_min, sq_step) = quantiser(config.codes, dim, &fine, n, members.clone());
        let pq_codebook = crate::pq::train_on_members(config.codes, dim, &fine, n, members, config.seed);

        let mut p = IndexParts {
            config: config.clone(),
            dim,
            coarse: coarse.centroids,
            fine,
            children,
            clusters: Vec::new(),
            sq_min,
            sq_step,
            target_cluster_size: n as f32 / groups.len().max(1) as f32,
            default_nprobe: (groups.len() / 16).max(8),
            default_rerank: 40,
            calibration_ids: held.iter().map(|&r| ids[r]).collect(),
            pq_codebook,
            probe_rule: None,
        };
        p.clusters = groups
            .par_iter()
            .enumerate()
            .map(|(f, rows)| {
                let mut cl = Cluster::default();
                for &r in rows {
                    let x = &data[r as usize * dim..][..dim];
                    push_member(&p, f, &mut cl, ids[r as usize], x);
                }
                cl.representative = representative(&p, f, &cl);
                cl
            })
            .collect();
        let mut index = Index::from_parts(p)?;
        if config.target_recall > 0.0 {
            index.calibrate(config.target_recall, 10)?;
        }
        Ok(index)
    }

    /// The nprobe a search uses when it asks for 0.
    pub fn default_nprobe(&self) -> usize {
        self.p.default_nprobe
    }

    /// The re-rank depth a search for k = 10 uses when it asks for 0 (scaled by k / 10 for other k).
    pub fn default_rerank(&self) -> usize {
        self.p.default_rerank
    }

    /// Sets the default nprobe to the smallest value on a ladder (8, 10, 12, 14, 17, ..., steps of about
    /// 20%) at which LOD 2 (re-ranking a generous `max(4k, 40)` candidates)
    /// reaches `target` recall@k, measured on up to 200 indexed vectors used as queries against their exact
    /// neighbours (each query's own id left out of both). The queries are the vectors the build held out of
    /// k-means training, so they behave like unseen queries. Returns the chosen nprobe and the recall measured
    /// with it; when the target is not reached by probing a quarter of the clusters, the default stays at
    /// that quarter (raise `SearchParams::nprobe` explicitly for more).
    ///
    /// Then it chooses the adaptive probe rule ([`crate::ProbeRule`], [`Index::probe_rule`]) that
    /// reaches the same recall on the same queries at the least modelled cost, if that cost is at least
    /// [`crate::MIN_GAIN`] below the fixed nprobe's; otherwise there is none and LOD 2 probes the fixed
    /// nprobe. Then it sets the default re-rank depth to the smallest of k, 1.5k, 2k, 3k that loses at
    /// most 0.002 of that recall (with the rule, if one was chosen). Recall is measured, never assumed:
    /// the build calls this with its `target_recall`, and after many inserts a caller can run it again.
    pub fn calibrate(&mut self, target: f32, k: usize) -> Result<(usize, f32)> {
        if k == 0 {
            return Err(Error::ZeroK);
        }
        let dim = self.p.dim;
        let n = self.len();
        let n_fine = self.n_fine();
        if n <= k.saturating_add(1) {
            self.p.probe_rule = None;
            self.p.default_nprobe = n_fine.max(1);
            return Ok((self.p.default_nprobe, 1.0));
        }
        // The held-out calibration vectors still in the index, or else a deterministic spread of members
        // (every (n / 200)-th in cluster order), which measures recall somewhat optimistically.
        let mut queries = Vec::with_capacity(CALIBRATION_QUERIES * dim);
        let mut own = Vec::with_capacity(CALIBRATION_QUERIES);
        for &id in &self.p.calibration_ids {
            if let Some(&(f, pos)) = self.locations.get(&id) {
                queries.extend_from_slice(&self.cluster_vectors(f as usize)[pos as usize * dim..][..dim]);
                own.push(id);
            }
        }
        if own.len() < CALIBRATION_QUERIES / 2 {
            queries.clear();
            own.clear();
            let m = n.min(CALIBRATION_QUERIES);
            let step = n / m;
            let mut i = 0usize;
            'outer: for (f, cl) in self.p.clusters.iter().enumerate() {
                for (pos, &id) in cl.ids.iter().enumerate() {
                    if i.is_multiple_of(step) {
                        queries.extend_from_slice(&self.cluster_vectors(f)[pos * dim..][..dim]);
                        own.push(id);
                        if own.len() == m {
                            break 'outer;
                        }
                    }
                    i += 1;
                }
            }
        }
        let truth: Vec<Vec<u64>> = self
            .search_batch(&queries, k + 1, Lod::Exact, &SearchParams::default())?
            .into_iter()
            .zip(&own)
            .map(|(h, &me)| h.into_iter().map(|h| h.id).filter(|&id| id != me).take(k).collect())
            .collect();
        self.calibrate_on(target, k, &queries, &own, &truth)
    }

    /// [`calibrate`](Self::calibrate) with its queries (prepared rows), their own ids and the `k` exact
    /// neighbours of each other than itself given (the streaming build finds them in its own pass).
    pub(crate) fn calibrate_on(
        &mut self,
        target: f32,
        k: usize,
        queries: &[f32],
        own: &[u64],
        truth: &[Vec<u64>],
    ) -> Result<(usize, f32)> {
        let n_fine = self.n_fine();
        // A geometric ladder, steps of about 20%: 8, 10, 12, 14, 17, 20, 24, 29, ...
        // Probing more than a quarter of the clusters is no longer an index search: the ladder stops there,
        // and data on which the target needs more keeps that cap (the measured recall is returned).
        let cap = (n_fine / 4).max(8).min(n_fine);
        let mut ladder = vec![8usize.min(cap)];
        while *ladder.last().unwrap_or(&8) < cap {
            let last = *ladder.last().unwrap_or(&8);
            ladder.push((last + 1).max((last as f64 * 1.2).round() as usize));
        }
        let calib =
            crate::probe::Calibration { queries: queries.to_vec(), own: own.to_vec(), truth: truth.to_vec(), k };
        // nprobe first, with a generous re-rank depth so that probing alone decides.
        let deep = (4 * (k + 1)).max(40);
        let mut chosen = (cap, 1.0f32);
        let mut at = None;
        for &nprobe in &ladder {
            let nprobe = nprobe.min(cap);
            let m = calib.measure(self, nprobe, deep, None)?;
            if m.recall >= target || nprobe >= cap {
                chosen = (nprobe, m.recall);
                at = Some(m);
                break;
            }
        }
        // Then the adaptive probe rule, where it reaches the same recall for less.
        self.p.probe_rule = None;
        let mut base = (chosen.0, None, chosen.1);
        if let Some(at) = at
            && at.recall >= target
            && let Some((rule, m)) = self.calibrate_probe_rule(&calib, chosen.0, deep, at)?
        {
            self.p.probe_rule = Some(rule);
            base = (rule.max_probe, Some(rule.margin), m.recall);
        }
        // Then the smallest depth that loses no more than 0.002 of that recall.
        let mut depth = deep;
        for d in [k + 1, 3 * (k + 1) / 2, 2 * (k + 1), 3 * (k + 1)] {
            if d < deep && calib.measure(self, base.0, d, base.1)?.recall >= base.2 - 0.002 {
                depth = d;
                break;
            }
        }
        self.p.default_nprobe = chosen.0;
        // Stored for k = 10 and scaled by k at search time.
        self.p.default_rerank = (depth * 10).div_ceil(k + 1).max(1);
        Ok(chosen)
    }

    /// The instruction set this index's kernels run on: `M2M_ISA` if set, otherwise the best detected.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Forces the instruction set of this index's kernels (for tests and benchmarks that compare paths).
    /// An instruction set this CPU lacks is refused with [`Error::IsaUnavailable`] and changes nothing.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        self.isa = isa.require()?;
        Ok(())
    }

    /// Rebuilds an index from its parts (after deserialisation), checking that they agree.
    pub fn from_parts(p: IndexParts) -> Result<Index> {
        Index::assemble(p, true)
    }

    /// [`from_parts`](Self::from_parts); `vectors_in_ram` false accepts clusters without their vectors
    /// and bf16 copies (a cold index adds them from its mapped rows).
    pub(crate) fn assemble(p: IndexParts, vectors_in_ram: bool) -> Result<Index> {
        crate::validate::parts(&p)?;
        let corrupt = |reason: String| Err(Error::Corrupt { reason });
        let dim = p.dim;
        if dim == 0 {
            return corrupt("dimension 0".into());
        }
        let n_coarse = p.coarse.len() / dim;
        let n_fine = p.fine.len() / dim;
        if !p.coarse.len().is_multiple_of(dim) || !p.fine.len().is_multiple_of(dim) || n_coarse == 0 {
            return corrupt("centroid arrays are not whole rows".into());
        }
        if p.children.len() != n_coarse || p.clusters.len() != n_fine {
            return corrupt(format!(
                "{} child lists for {n_coarse} coarse centroids, {} clusters for {n_fine} fine centroids",
                p.children.len(),
                p.clusters.len()
            ));
        }
        let mut owned = vec![false; n_fine];
        for &f in p.children.iter().flatten() {
            match owned.get_mut(f as usize) {
                Some(o) if !*o => *o = true,
                _ => return corrupt(format!("fine cluster {f} is missing or listed twice")),
            }
        }
        if owned.iter().any(|o| !o) {
            return corrupt("a fine cluster belongs to no coarse centroid".into());
        }
        if p.sq_min.len() != dim || p.sq_step.len() != dim {
            return corrupt("quantiser parameters of the wrong length".into());
        }
        if p.pq_codebook.len() != p.config.codes.codebook_len(dim) {
            return corrupt(format!(
                "PQ codebook of {} values, {} expected for {:?} at dimension {dim}",
                p.pq_codebook.len(),
                p.config.codes.codebook_len(dim),
                p.config.codes
            ));
        }
        let l2 = p.config.metric == Metric::L2;
        let mut locations = Vec::with_capacity(p.clusters.iter().map(|c| c.ids.len()).sum());
        for (f, c) in p.clusters.iter().enumerate() {
            let m = c.ids.len();
            let codes_len = p.config.codes.codes_len(dim, m);
            let norms = if l2 { m } else { 0 };
            let bf16 =
                if p.config.exact_prefilter && vectors_in_ram { m * crate::kernels::bf16_stride(dim) } else { 0 };
            if c.vectors.len() != if vectors_in_ram { m * dim } else { 0 }
                || c.codes.len() != codes_len
                || c.half_sq_norms.len() != norms
                || c.bf16.len() != bf16
                || !(c.max_norm.is_finite() && c.max_norm >= 0.0)
            {
                return corrupt(format!("cluster {f}: column lengths disagree with {m} members"));
            }
            locations.extend(c.ids.iter().enumerate().map(|(pos, &id)| (id, (f as u32, pos as u32))));
        }
        let locations = match IdMap::from_pairs(locations) {
            Ok(map) => map,
            Err(id) => return corrupt(format!("id {id} stored twice")),
        };
        let metric = p.config.metric;
        let coarse_bias = p.coarse.chunks_exact(dim).map(|c| bias(metric, c)).collect();
        let fine_bias: Vec<f32> = p.fine.chunks_exact(dim).map(|c| bias(metric, c)).collect();
        let order: Vec<u32> = p.children.iter().flatten().copied().collect();
        let mut coarse_range = Vec::with_capacity(n_coarse);
        let mut at = 0u32;
        for ch in &p.children {
            coarse_range.push((at, at + ch.len() as u32));
            at += ch.len() as u32;
        }
        let ordered: Vec<f32> = order.iter().flat_map(|&f| p.fine[f as usize * dim..][..dim].iter().copied()).collect();
        let max_abs = p.fine.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (fine_h, fine_h_unscale) = match crate::kernels::f16_scale(max_abs) {
            Some(scale) => (crate::kernels::transpose_t16h(&ordered, dim, scale), 1.0 / scale),
            None => (Vec::new(), 1.0),
        };
        let fine_norm_max = p.fine.chunks_exact(dim).fold(0.0f32, |m, c| m.max(dot(c, c).sqrt()));
        // A bad M2M_ISA is refused here rather than silently ignored.
        let isa = Isa::forced()?.unwrap_or_else(Isa::detected);
        Ok(Index {
            p,
            order,
            coarse_range,
            fine_h,
            fine_h_unscale,
            fine_norm_max,
            coarse_bias,
            fine_bias,
            locations,
            isa,
            cold: None,
            spill: Vec::new(),
            stamp: next_stamp(),
            bitq: None,
        })
    }

    /// The index's parts, for persistence. A cluster whose full vectors are read from cold rows
    /// ([`Index::from_cold_parts`], [`Index::attach_cold`]) has empty `vectors` and `bf16` here: read
    /// vectors through [`cluster_vectors`](Self::cluster_vectors).
    pub fn parts(&self) -> &IndexParts {
        &self.p
    }

    /// Dimension of vectors and queries.
    pub fn dim(&self) -> usize {
        self.p.dim
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.p.config.metric
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// Whether the index holds no vector (possible after deletes).
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Number of fine clusters.
    pub fn n_fine(&self) -> usize {
        self.p.clusters.len()
    }

    /// Number of coarse clusters.
    pub fn n_coarse(&self) -> usize {
        self.p.children.len()
    }

    /// Whether `id` is in the index.
    pub fn contains(&self, id: u64) -> bool {
        self.locations.contains_key(&id)
    }

    /// The fine cluster that holds `id`, if the index holds it.
    pub fn cluster_of(&self, id: u64) -> Option<u32> {
        self.locations.get(&id).map(|&(f, _)| f)
    }

    /// Bytes of the parts that a search at LOD 1 reads (centroids and codes): what the hot tier holds.
    pub fn hot_bytes(&self) -> usize {
        4 * (self.p.coarse.len() + self.p.fine.len() + self.p.pq_codebook.len())
            + self.p.clusters.iter().map(|c| c.codes.len()).sum::<usize>()
            + self.spill_bytes()
            + self.bitq_bytes()
    }

    fn check_query(&self, q: &[f32], k: usize) -> Result<()> {
        if k == 0 {
            return Err(Error::ZeroK);
        }
        if q.len() != self.p.dim {
            return Err(Error::DimensionMismatch { expected: self.p.dim, got: q.len() });
        }
        Ok(())
    }

    /// Copies `q` into scratch as the index compares it (normalised for cosine).
    pub(crate) fn prepare(&self, q: &[f32], s: &mut Scratch) -> Result<Query> {
        s.q.resize(self.p.dim, 0.0);
        if self.metric() == Metric::Cosine {
            m2m_splat::normalize_into(q, &mut s.q, 0)?;
        } else {
            if let Some((column, &value)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite { row: 0, column, value });
            }
            s.q.copy_from_slice(q);
        }
        Ok(Query { q_sq: crate::kernels::dot_with(self.isa, &s.q, &s.q) })
    }

    /// Reported score from an internal similarity.
    pub(crate) fn report(&self, q: &Query, s: f32) -> f32 {
        if self.metric() == Metric::L2 { (q.q_sq - 2.0 * s).max(0.0) } else { s }
    }

    /// Searches one query. Hits are sorted best first (highest similarity, or lowest L2 distance).
    ///
    /// Errors: [`Error::ZeroK`], [`Error::DimensionMismatch`], [`Error::NonFinite`], [`Error::ZeroNorm`].
    pub fn search(&self, query: &[f32], k: usize, lod: Lod, params: &SearchParams) -> Result<Vec<Hit>> {
        self.search_with(query, k, lod, params, &mut Scratch::default())
    }

    /// [`search`](Self::search) with caller-owned scratch space.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        s: &mut Scratch,
    ) -> Result<Vec<Hit>> {
        self.check_query(query, k)?;
        // No more hits than rows: a huge k would otherwise size buffers by it (and overflow products).
        let k = k.min(self.len().max(1));
        let q = self.prepare(query, s)?;
        let resolved;
        // LOD 2 left to the index follows the calibrated probe rule, if the calibration chose one.
        let rule = if params.nprobe == 0 && lod == Lod::Rerank { self.p.probe_rule } else { None };
        let params = if params.nprobe == 0 {
            let nprobe = rule.map_or(self.p.default_nprobe, |r| r.max_probe).max(1);
            resolved = SearchParams { nprobe, ..*params };
            &resolved
        } else {
            params
        };
        let entries = match lod {
            Lod::Centroids => return Ok(self.lod0(&q, k, params, s)),
            Lod::Codes => {
                self.rank_fine(params, Self::rank_target(params.nprobe.max(k)), s);
                if self.spill.is_empty() {
                    self.scan_codes(k, k, params.nprobe, true, None, s);
                    s.top.drain_sorted()
                } else {
                    // A member may come twice (its cluster and a spill list): room for both, merged after.
                    self.scan_codes(k, 2 * k, params.nprobe, true, None, s);
                    let mut entries = self.resolve_spill(s.top.drain_sorted());
                    entries.truncate(k);
                    entries
                }
            }
            Lod::Rerank => self.lod2(k, params, rule.map(|r| r.margin), s),
            Lod::Exact if self.bf16_usable() => self.exact_bf16(&s.q, k).pop().unwrap_or_default(),
            Lod::Exact => {
                s.top.reset(k);
                for (f, cl) in self.p.clusters.iter().enumerate() {
                    self.score_exact(f, cl, &s.q, &mut s.top, &mut s.row_scores);
                }
                s.top.drain_sorted()
            }
        };
        Ok(entries.iter().map(|e| self.hit(&q, e)).collect())
    }

    /// LOD 2 over a prepared query in `s.q`, probing up to `params.nprobe` clusters; with `stop`, the
    /// adaptive probe rule of that margin ends the probing early ([`crate::ProbeRule`]).
    pub(crate) fn lod2(&self, k: usize, params: &SearchParams, stop: Option<f32>, s: &mut Scratch) -> Vec<Entry> {
        let depth =
            if params.rerank == 0 { (self.p.default_rerank * k).div_ceil(10).max(k) } else { params.rerank.max(k) };
        self.rank_fine(params, Self::rank_target(params.nprobe), s);
        // The re-rank scores exactly: the code estimates may start from f16 `q . c`. A member may come
        // twice (its cluster and a spill list): room for both, so that `depth` distinct members are
        // re-ranked.
        let room = if self.spill.is_empty() { depth } else { 2 * depth };
        self.scan_codes(k, room, params.nprobe, false, stop, s);
        self.rerank(k, depth, s)
    }

    pub(crate) fn hit(&self, q: &Query, e: &Entry) -> Hit {
        Hit { id: self.p.clusters[e.cluster as usize].ids[e.pos as usize], score: self.report(q, e.score) }
    }

    /// Searches many queries (row-major) in parallel; one result list per query, in order.
    pub fn search_batch(&self, queries: &[f32], k: usize, lod: Lod, params: &SearchParams) -> Result<Vec<Vec<Hit>>> {
        let dim = self.p.dim;
        let n = check_rows(queries, dim)?;
        if k == 0 {
            return Err(Error::ZeroK);
        }
        let k = k.min(self.len().max(1));
        if lod == Lod::Exact {
            return self.exact_batch(queries, n, k);
        }
        queries
            .par_chunks(dim)
            .map_init(Scratch::default, |s, q| self.search_with(q, k, lod, params, s))
            .enumerate()
            .map(|(row, r)| r.map_err(|e| with_row(e, row)))
            .collect()
    }

    /// Exact search blocked over queries: each cluster's vectors are scored against 32 queries at a time
    /// while they sit in cache.
    fn exact_batch(&self, queries: &[f32], n: usize, k: usize) -> Result<Vec<Vec<Hit>>> {
        const BLOCK: usize = 64;
        let dim = self.p.dim;
        let blocks: Vec<Result<Vec<Vec<Hit>>>> = queries
            .par_chunks(BLOCK * dim)
            .enumerate()
            .map(|(b, block)| {
                let nq = block.len() / dim;
                let mut prepared = vec![0.0f32; block.len()];
                let mut qs = Vec::with_capacity(nq);
                let mut s = Scratch::default();
                for (i, (src, dst)) in block.chunks_exact(dim).zip(prepared.chunks_exact_mut(dim)).enumerate() {
                    let q = self.prepare(src, &mut s).map_err(|e| with_row(e, b * BLOCK + i))?;
                    dst.copy_from_slice(&s.q);
                    qs.push(q);
                }
                if self.bf16_usable() {
                    let entries = self.exact_bf16(&prepared, k);
                    return Ok(entries
                        .iter()
                        .zip(&qs)
                        .map(|(es, q)| es.iter().map(|e| self.hit(q, e)).collect())
                        .collect());
                }
                let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::default()).collect();
                tops.iter_mut().for_each(|t| t.reset(k));
                let mut scores = Vec::new();
                for (f, cl) in self.p.clusters.iter().enumerate() {
                    let m = cl.len();
                    if m == 0 {
                        continue;
                    }
                    scores.resize(nq * m, 0.0);
                    let rows = self.cluster_rows(f);
                    crate::kernels::dots_many_with(self.isa, &prepared, &rows, dim, &mut scores);
                    self.rows_done(f, rows);
                    for (t, row) in tops.iter_mut().zip(scores.chunks_exact_mut(m)) {
                        cl.to_similarity(row);
                        t.offer(f as u32, row);
                    }
                }
                Ok(tops
                    .iter_mut()
                    .zip(&qs)
                    .map(|(t, q)| t.drain_sorted().iter().map(|e| self.hit(q, e)).collect())
                    .collect())
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for b in blocks {
            out.extend(b?);
        }
        Ok(out)
    }

    /// The exact similarity of member `pos` of cluster `cluster` to the prepared query `q`.
    pub(crate) fn member_score(&self, q: &[f32], cluster: u32, pos: u32) -> f32 {
        let dim = self.p.dim;
        self.score_row(q, cluster, pos, &self.cluster_vectors(cluster as usize)[pos as usize * dim..][..dim])
    }

    /// The exact score of member `pos` of `cluster`, whose full vector is `row` (read from wherever it
    /// lives: RAM, the mapping, a cache).
    fn score_row(&self, q: &[f32], cluster: u32, pos: u32, row: &[f32]) -> f32 {
        let cl = &self.p.clusters[cluster as usize];
        let dot = crate::kernels::dot_with(self.isa, q, row);
        if cl.half_sq_norms.is_empty() { dot } else { dot - cl.half_sq_norms[pos as usize] }
    }

    /// Hints the CPU to bring member `pos` of `cluster`'s full vector into cache (no effect off x86-64).
    #[inline]
    fn prefetch_member(&self, cluster: u32, pos: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let dim = self.p.dim;
            let rows = self.cluster_vectors(cluster as usize);
            if let Some(row) = rows.get(pos as usize * dim..(pos as usize + 1) * dim) {
                for line in row.chunks(16) {
                    // SAFETY: a prefetch is a hint that never faults; the address lies within `row`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (cluster, pos);
    }

    /// Whether exact search can take the bf16 first pass here.
    fn bf16_usable(&self) -> bool {
        self.p.config.exact_prefilter
            && self.cold.is_none()
            && self.isa == Isa::Avx512
            && crate::kernels::has_bf16_dot()
    }

    /// Exact top-k of prepared queries (row-major), by a bf16 first pass with a proven error bound and an
    /// f32 rescoring of every row the bound cannot rule out. Entries are best first, one list per query.
    ///
    /// For each row the bf16 score `b` bounds the true similarity within `[b - e, b + e]` with
    /// `e = bf16_error_bound(dim) * |q| * max_norm` of its cluster. `L`, the k-th largest lower bound seen
    /// so far, is at most the true k-th best score; so a row whose upper bound is below `L` (then or later,
    /// as `L` only rises) cannot be in the top k. Every other row is rescored exactly.
    fn exact_bf16(&self, prepared: &[f32], k: usize) -> Vec<Vec<Entry>> {
        use crate::kernels::{bf16_dots_many_with, bf16_error_bound, bf16_stride, to_bf16};
        let dim = self.p.dim;
        let nq = prepared.len() / dim;
        let stride = bf16_stride(dim);
        let mut qb = vec![0u16; nq * stride];
        for (src, dst) in prepared.chunks_exact(dim).zip(qb.chunks_exact_mut(stride)) {
            to_bf16(src, dst);
        }
        let rel = bf16_error_bound(dim);
        let qnorm: Vec<f32> = prepared.chunks_exact(dim).map(|q| dot(q, q).sqrt() * (1.0 + 1e-5)).collect();
        let mut lower: Vec<TopK> = (0..nq).map(|_| TopK::default()).collect();
        lower.iter_mut().for_each(|t| t.reset(k));
        let mut cands: Vec<Vec<Entry>> = vec![Vec::new(); nq];
        let mut scores = Vec::new();
        for (f, cl) in self.p.clusters.iter().enumerate() {
            let m = cl.len();
            if m == 0 {
                continue;
            }
            scores.resize(nq * m, 0.0);
            bf16_dots_many_with(self.isa, &qb, &cl.bf16, stride, &mut scores);
            // The L2 form subtracts |x|^2 / 2 exactly; allow for that subtraction's rounding too.
            let l2_slack = if cl.half_sq_norms.is_empty() { 0.0 } else { f32::EPSILON * cl.max_norm * cl.max_norm };
            for (qi, row) in scores.chunks_exact_mut(m).enumerate() {
                cl.to_similarity(row);
                let e = rel * qnorm[qi] * cl.max_norm + l2_slack;
                let (low, cand) = (&mut lower[qi], &mut cands[qi]);
                let mut bar = low.threshold() - e;
                for (c, chunk) in row.chunks(16).enumerate() {
                    if !chunk.iter().fold(false, |hit, &v| hit | (v >= bar)) {
                        continue;
                    }
                    for (i, &b) in chunk.iter().enumerate() {
                        if b >= bar {
                            let pos = (c * 16 + i) as u32;
                            cand.push(Entry { score: b + e, cluster: f as u32, pos });
                            low.push(Entry { score: b - e, cluster: f as u32, pos });
                            bar = low.threshold() - e;
                        }
                    }
                }
                // Keep the candidate list short: drop rows the risen bound now rules out.
                if cand.len() > 64 * k.max(16) {
                    let l = low.threshold();
                    cand.retain(|e| e.score >= l);
                }
            }
        }
        let mut top = TopK::default();
        cands
            .into_iter()
            .zip(&lower)
            .zip(prepared.chunks_exact(dim))
            .map(|((cand, low), q)| {
                let l = low.threshold();
                top.reset(k);
                for c in cand.into_iter().filter(|c| c.score >= l) {
                    top.push(Entry { score: self.member_score(q, c.cluster, c.pos), ..c });
                }
                top.drain_sorted()
            })
            .collect()
    }

    /// Scores fine centroids into `s.fine` as `(q . c, fine id)`, unordered: the children of the
    /// `params.coarse_probe` best coarse centroids, or (0) of as many as hold at least `want` children.
    ///
    /// The scores come from the f16 table and are within `s.fine_err` of the f32 ones. Whoever reads a
    /// score or an order from `s.fine` goes through [`top_fine`](Self::top_fine) (its front is exact, and
    /// the same clusters in the same order as an f32 ranking) or [`rescore_fine`](Self::rescore_fine).
    pub(crate) fn rank_fine(&self, params: &SearchParams, want: usize, s: &mut Scratch) {
        let n_coarse = self.n_coarse();
        s.fine.clear();
        let err = self.fine_error(&s.q);
        s.fine_err = err.unwrap_or(0.0);
        let half = err.is_some();
        let fixed = params.coarse_probe.min(n_coarse);
        if fixed == n_coarse || (fixed == 0 && want >= self.order.len()) {
            self.score_order_range_into(0, self.order.len(), half, &s.q, &mut s.fine);
            return;
        }
        s.coarse_scores.resize(n_coarse, 0.0);
        crate::kernels::dots_with(self.isa, &s.q, &self.p.coarse, &mut s.coarse_scores);
        for (v, b) in s.coarse_scores.iter_mut().zip(&self.coarse_bias) {
            *v += b;
        }
        let sc = &s.coarse_scores;
        s.coarse_order.clear();
        s.coarse_order.extend(0..n_coarse as u32);
        s.coarse_order.sort_unstable_by(|&a, &b| sc[b as usize].total_cmp(&sc[a as usize]).then(a.cmp(&b)));
        let mut taken = 0usize;
        for (i, &c) in s.coarse_order.iter().enumerate() {
            let (lo, hi) = self.coarse_range[c as usize];
            if (fixed > 0 && i >= fixed) || (fixed == 0 && taken >= want) {
                break;
            }
            taken += (hi - lo) as usize;
            self.score_order_range_into(lo as usize, hi as usize, half, &s.q, &mut s.fine);
        }
    }

    /// How many fine centroids the automatic coarse probe ranks to pick `n` clusters from.
    pub(crate) fn rank_target(n: usize) -> usize {
        (8 * n).max(256)
    }

    /// Pushes `(q . c, fine id)` for the fine centroids at positions `lo..hi` of `order`, from the f16
    /// table if `half`, otherwise from the f32 rows.
    fn score_order_range_into(&self, lo: usize, hi: usize, half: bool, q: &[f32], fine: &mut Vec<(f32, u32)>) {
        use crate::kernels::T16;
        let dim = self.p.dim;
        if !half {
            fine.extend(self.order[lo..hi].iter().map(|&f| (self.centroid_dot(q, f), f)));
            return;
        }
        let mut out = [0.0f32; T16];
        let mut b = lo / T16;
        while b * T16 < hi {
            crate::kernels::dots_t16h_with(self.isa, q, &self.fine_h[b * T16 * dim..][..T16 * dim], &mut out);
            for (l, &v) in out.iter().enumerate() {
                let i = b * T16 + l;
                if i >= lo && i < hi {
                    fine.push((v * self.fine_h_unscale, self.order[i]));
                }
            }
            b += 1;
        }
    }

    /// `q . c` of fine centroid `f` in f32, from its row.
    #[inline]
    pub(crate) fn centroid_dot(&self, q: &[f32], f: u32) -> f32 {
        let dim = self.p.dim;
        crate::kernels::dot_with(self.isa, q, &self.p.fine[f as usize * dim..][..dim])
    }

    /// The bound `s.fine_err` for query `q` when its ranking reads the f16 table:
    /// [`crate::kernels::f16_error_bound`] times `|q|` times the largest centroid norm. `None` (rank on
    /// the f32 rows) when the index has no table, runs the scalar kernels, or the bound is not finite. A finite `|q|^2` keeps
    /// `|q| < 2^64`, so the scaled scores (`|q . h| <= |q| * 2^15 * sqrt(dim)`) cannot overflow f32. The
    /// check saves work rather than results: with an infinite bound [`top_fine`](Self::top_fine) would
    /// re-score every cluster in f32.
    fn fine_error(&self, q: &[f32]) -> Option<f32> {
        // The portable widening of halves costs more than the bytes it saves (measured: the scalar
        // f16 kernel ran at 0.1-0.4x the scalar f32 one), so the scalar path ranks on the f32 rows.
        if self.fine_h.is_empty() || self.isa == Isa::Scalar {
            return None;
        }
        let q_norm = crate::kernels::dot_with(self.isa, q, q).sqrt();
        let err = crate::kernels::f16_error_bound(self.p.dim) * q_norm * self.fine_norm_max;
        err.is_finite().then_some(err)
    }

    /// Replaces the scores of `s.fine[from..]` by their f32 values, then orders that part best first (by
    /// biased score, ties by id): for readers that walk past the front [`top_fine`](Self::top_fine) made
    /// exact.
    pub(crate) fn rescore_fine(&self, from: usize, s: &mut Scratch) {
        let from = from.min(s.fine.len());
        if s.fine_err > 0.0 {
            for e in &mut s.fine[from..] {
                e.0 = self.centroid_dot(&s.q, e.1);
            }
        }
        let bias = &self.fine_bias;
        s.fine[from..].sort_unstable_by(|a, b| {
            (b.0 + bias[b.1 as usize]).total_cmp(&(a.0 + bias[a.1 as usize])).then(a.1.cmp(&b.1))
        });
    }

    /// Moves the `n` best fine clusters of `s.fine` (by biased score) to its front, best first; the rest
    /// follow in no order. Entries keep the unbiased `q . c`.
    ///
    /// The front is what an f32 ranking gives, with f32 scores, although `s.fine` holds f16 scores within
    /// `e = s.fine_err` of them: let `t` be the n-th best f16 key. The n clusters of f16 key >= t have
    /// f32 keys >= t - e, so the n-th best f32 key is >= t - e, and every cluster of the f32 top n has
    /// an f16 key >= t - 2e. Those (the top n and the clusters within 2e below the cut) are re-scored in
    /// f32 and the top n chosen among them. The f32 rounding of the biased keys (score + bias) is covered
    /// by a few ulps more.
    pub(crate) fn top_fine(&self, n: usize, s: &mut Scratch) {
        self.top_fine_with(n, true, s);
    }

    /// [`top_fine`](Self::top_fine); without `exact_front`, the clusters whose f16 key lies more than
    /// `2e` above the cut (in the f32 top n for sure: their f32 key exceeds `cut + e`, and the n-th best
    /// f32 key is at most `cut + e`) keep their f16 scores, within `e` of the f32 ones, and only the band
    /// around the cut is re-scored: the same clusters, fewer f32 rows read.
    fn top_fine_with(&self, n: usize, exact_front: bool, s: &mut Scratch) {
        let bias = &self.fine_bias;
        let key = |e: &(f32, u32)| e.0 + bias[e.1 as usize];
        let order = |a: &(f32, u32), b: &(f32, u32)| key(b).total_cmp(&key(a)).then(a.1.cmp(&b.1));
        let n = n.min(s.fine.len());
        if n == 0 {
            return;
        }
        if n < s.fine.len() {
            s.fine.select_nth_unstable_by(n - 1, order);
        }
        if s.fine_err > 0.0 {
            let cut = key(&s.fine[n - 1]);
            let slack = 4.0 * f32::EPSILON * cut.abs();
            let floor = cut - 2.0 * s.fine_err - slack;
            let mut sure = 0;
            if !exact_front {
                let ceiling = cut + 2.0 * s.fine_err + slack;
                for i in 0..n {
                    if key(&s.fine[i]) > ceiling {
                        s.fine.swap(sure, i);
                        sure += 1;
                    }
                }
            }
            let mut end = n;
            for i in n..s.fine.len() {
                if key(&s.fine[i]) >= floor {
                    s.fine.swap(end, i);
                    end += 1;
                }
            }
            for e in &mut s.fine[sure..end] {
                e.0 = self.centroid_dot(&s.q, e.1);
            }
            // `sure < n`: the cut's own cluster is not above the ceiling.
            if end > n {
                s.fine[sure..end].select_nth_unstable_by(n - sure - 1, order);
            }
        }
        s.fine[..n].sort_unstable_by(order);
    }

    fn lod0(&self, q: &Query, k: usize, params: &SearchParams, s: &mut Scratch) -> Vec<Hit> {
        self.rank_fine(params, Self::rank_target(k), s);
        // A few spare clusters for the empty ones; doubled while k representatives are not found.
        let mut want = (k + k / 2 + 4).min(s.fine.len());
        let mut hits = Vec::with_capacity(k);
        loop {
            self.top_fine(want, s);
            hits.clear();
            for &(v, f) in &s.fine[..want] {
                if let Some(id) = self.p.clusters[f as usize].representative {
                    hits.push(Hit { id, score: self.report(q, v + self.fine_bias[f as usize]) });
                    if hits.len() == k {
                        return hits;
                    }
                }
            }
            if want >= s.fine.len() {
                return hits;
            }
            want = (want * 2).min(s.fine.len());
        }
    }

    /// LOD 1 scan: code estimates of the members of the best `nprobe` clusters into `s.top` (size `depth`).
    /// Clusters keep being probed, best first, until at least `k` members were seen, so that a search
    /// returns k hits whenever the index holds k vectors. With `stop` (a margin), probing ends before the
    /// first cluster whose centroid key trails the k-th best estimate by more than it (the adaptive
    /// probe rule, [`crate::ProbeRule`]); the k members are seen first all the same.
    fn scan_codes(&self, k: usize, depth: usize, nprobe: usize, exact_front: bool, stop: Option<f32>, s: &mut Scratch) {
        let dim = self.p.dim;
        let nprobe = nprobe.clamp(1, s.fine.len().max(1));
        self.top_fine_with(nprobe, exact_front, s);
        // Quantise w_j = q_j * step_j to i8; q . min is the same for every vector.
        let mut wmax = 0.0f32;
        for (q, st) in s.q.iter().zip(&self.p.sq_step) {
            wmax = wmax.max((q * st).abs());
        }
        let scale = if wmax > 0.0 { 127.0 / wmax } else { 1.0 };
        let kind = self.p.config.codes;
        let stride = kind.stride(dim);
        let pq = kind.pq_shape(dim);
        let (q_min, inv) = if let Some(shape) = pq {
            crate::pq::lut(shape, &self.p.pq_codebook, &s.q, &mut s.table, &mut s.lut)
        } else {
            s.qi8.clear();
            s.qi8.extend(s.q.iter().zip(&self.p.sq_step).map(|(q, st)| (q * st * scale).round() as i8));
            if kind == CodeKind::Sq4 {
                s.qi8.resize(2 * stride, 0);
            }
            (crate::kernels::dot_with(self.isa, &s.q, &self.p.sq_min), 1.0 / scale)
        };
        s.ranked = s.fine.len();
        s.probed = 0;
        s.scanned = 0;
        s.refined = 0;
        s.top.reset_watching(depth, if stop.is_some() { k } else { 0 });
        // The 1-bit first stage runs in LOD 2 (the only caller without an exact front).
        let bitq = if exact_front || !self.spill.is_empty() { None } else { self.bitq.as_deref() };
        let q_sq = if let Some(b) = bitq {
            b.prepare(&s.q, &mut s.bq);
            crate::kernels::dot_with(self.isa, &s.q, &s.q)
        } else {
            0.0
        };
        let mut seen = 0usize;
        let mut i = 0;
        while i < s.fine.len() {
            if i == nprobe {
                if seen >= k {
                    break;
                }
                // Too few members in the probed clusters: order the rest and keep going.
                self.rescore_fine(nprobe, s);
            }
            let (qc, f) = s.fine[i];
            // The clusters come in order of key: once one trails the k-th best estimate by more than
            // the margin, so does every later one. Until k estimates are held the watched score is -inf.
            if let Some(margin) = stop
                && qc + self.fine_bias[f as usize] + margin < s.top.watched()
            {
                break;
            }
            i += 1;
            // The next cluster's codes start a new stream the hardware prefetcher has not seen: ask for
            // its first lines while this cluster is scored.
            if let Some(&(_, next)) = s.fine.get(i) {
                match bitq.and_then(|b| b.list(next as usize)) {
                    // With the 1-bit stage the next cluster's 1-bit codes and factors are read first.
                    Some(list) => {
                        prefetch_lines(list.codes, PREFETCH_CODE_BYTES);
                        for factors in [list.k0, list.k1, list.k2] {
                            prefetch_lines(bytemuck_f32(factors), 256);
                        }
                    }
                    None => prefetch_lines(&self.p.clusters[next as usize].codes, PREFETCH_CODE_BYTES),
                }
                if let Some(list) = self.spill.get(next as usize) {
                    prefetch_lines(&list.codes, PREFETCH_CODE_BYTES);
                }
            }
            let cl = &self.p.clusters[f as usize];
            let m = cl.len();
            seen += m;
            s.probed += 1;
            s.scanned += m + self.spill.get(f as usize).map_or(0, |l| l.ids.len());
            // The spill list's codes are residuals to the same centroid: the same base.
            let base = qc + q_min;
            if m > 0 {
                match bitq {
                    // Until the collector holds `depth` estimates every member would pass: the 1-bit
                    // pass would only add work.
                    Some(_) if s.top.threshold() == f32::NEG_INFINITY => {
                        s.refined += m;
                        self.score_codes(&cl.codes, m, &cl.half_sq_norms, f, base, inv, s)
                    }
                    Some(b) if b.list(f as usize).is_some_and(|l| l.k0.len() == m) => {
                        let qc_norm = (q_sq - 2.0 * qc + b.c_sq[f as usize]).max(0.0).sqrt();
                        self.score_bitq(b, cl, f, qc, qc_norm, base, inv, s);
                    }
                    _ => self.score_codes(&cl.codes, m, &cl.half_sq_norms, f, base, inv, s),
                }
            }
            if let Some(list) = self.spill.get(f as usize)
                && !list.ids.is_empty()
            {
                let tag = f | crate::spill::SPILL_BIT;
                self.score_codes(&list.codes, list.ids.len(), &list.half_sq_norms, tag, base, inv, s);
            }
        }
    }

    /// Offers the estimates of `rows` codes (`codes`, in the index's layout; `half_sq_norms` for L2,
    /// else empty) to `s.top` as entries of `cluster`: `base + estimate * inv`, minus `|x|^2 / 2` for L2.
    #[allow(clippy::too_many_arguments, reason = "internal; the state of scan_codes")]
    fn score_codes(
        &self,
        codes: &[u8],
        rows: usize,
        half_sq_norms: &[f32],
        cluster: u32,
        base: f32,
        inv: f32,
        s: &mut Scratch,
    ) {
        let kind = self.p.config.codes;
        let stride = kind.stride(self.p.dim);
        s.est.resize(rows, 0);
        match kind {
            CodeKind::Sq8 => sq8_dots_with(self.isa, &s.qi8, codes, stride, &mut s.est),
            CodeKind::Sq4 => crate::kernels::sq4_dots_with(self.isa, &s.qi8, codes, stride, &mut s.est),
            CodeKind::Pq4 { .. } => {
                let m = kind.pq_shape(self.p.dim).map_or(0, |shape| shape.m);
                crate::kernels::pq4_scan_with(self.isa, &s.lut, codes, m, &mut s.est)
            }
        }
        if half_sq_norms.is_empty() {
            // Cosine and inner product: the score is monotone in the integer estimate, so chunks
            // are tested on it and only a chunk that can enter the collector is converted.
            s.top.offer_est(cluster, &s.est, base, inv);
            return;
        }
        s.scores.clear();
        s.scores.extend(s.est.iter().zip(half_sq_norms).map(|(&e, h)| base + e as f32 * inv - h));
        s.top.offer(cluster, &s.scores);
    }

    /// The 1-bit first stage over cluster `f` (`cl`, centroid score `qc`, `|q - c| = qc_norm`): every
    /// member's upper bound from its 1-bit code; only the members whose bound reaches `s.top`'s threshold
    /// are scored by their code into `s.top` (`base + estimate * inv`, minus `|x|^2 / 2` for L2), as [`score_codes`](Self::score_codes)
    /// scores them. See `bitq.rs` for the estimator and its bound.
    #[allow(clippy::too_many_arguments, reason = "internal; the state of scan_codes")]
    fn score_bitq(
        &self,
        b: &crate::bitq::BitQ,
        cl: &Cluster,
        f: u32,
        qc: f32,
        qc_norm: f32,
        base: f32,
        inv: f32,
        s: &mut Scratch,
    ) {
        let m = cl.len();
        let half = &cl.half_sq_norms;
        b.upper(self.isa, &s.bq, f as usize, (qc, qc_norm, s.fine_err), half, &mut s.est, &mut s.row_scores);
        // A member whose upper bound is below the depth-th best estimate held cannot enter the re-rank
        // by its true score (the threshold only rises; only its code estimate's own error could lift it in).
        let threshold = s.top.threshold();
        s.surv.clear();
        s.surv.extend((0..m as u32).filter(|&i| s.row_scores[i as usize] >= threshold));
        if s.surv.is_empty() {
            return;
        }
        s.refined += s.surv.len();
        let kind = self.p.config.codes;
        let stride = kind.stride(self.p.dim);
        // The survivors' rows are scattered over the cluster's codes: ask for all of them before the
        // first is copied.
        for &i in &s.surv {
            prefetch_lines(&cl.codes[i as usize * stride..][..stride], stride);
        }
        s.gather.clear();
        for &i in &s.surv {
            s.gather.extend_from_slice(&cl.codes[i as usize * stride..][..stride]);
        }
        s.est.resize(s.surv.len(), 0);
        match kind {
            CodeKind::Sq8 => sq8_dots_with(self.isa, &s.qi8, &s.gather, stride, &mut s.est),
            _ => crate::kernels::sq4_dots_with(self.isa, &s.qi8, &s.gather, stride, &mut s.est),
        }
        for (&i, &e) in s.surv.iter().zip(&s.est) {
            let score = base + e as f32 * inv - half.get(i as usize).copied().unwrap_or(0.0);
            if score > s.top.threshold() {
                s.top.push(Entry { score, cluster: f, pos: i });
            }
        }
    }

    /// LOD 2: exact scores of the best `depth` distinct candidates in `s.top`, best `k` first.
    fn rerank(&self, k: usize, depth: usize, s: &mut Scratch) -> Vec<Entry> {
        let mut candidates = s.top.drain_sorted();
        if !self.spill.is_empty() {
            candidates = self.resolve_spill(candidates);
            candidates.truncate(depth);
        }
        s.top2.reset(k);
        if self.has_row_cache() {
            return self.rerank_cached(candidates, s);
        }
        for (i, e) in candidates.iter().enumerate() {
            // The rows are scattered over the full vectors: ask for the next one while this one is
            // scored.
            if let Some(next) = candidates.get(i + 1) {
                self.prefetch_member(next.cluster, next.pos);
            }
            s.top2.push(Entry { score: self.member_score(&s.q, e.cluster, e.pos), ..*e });
        }
        s.top2.drain_sorted()
    }

    /// [`rerank`](Self::rerank) through the row cache: the candidates' clusters are announced, then
    /// each is read once and its candidates scored; the scores are offered in the candidates' order, so
    /// the result is the one without a cache.
    fn rerank_cached(&self, candidates: Vec<Entry>, s: &mut Scratch) -> Vec<Entry> {
        if let Some(cache) = self.row_cache_by_row() {
            return self.rerank_by_row(cache, candidates, s);
        }
        let dim = self.p.dim;
        let mut by_cluster: Vec<u32> = (0..candidates.len() as u32).collect();
        by_cluster.sort_unstable_by_key(|&i| candidates[i as usize].cluster);
        let mut last = u32::MAX;
        for &i in &by_cluster {
            let f = candidates[i as usize].cluster;
            if f != last {
                self.prefetch_rows(f as usize);
                last = f;
            }
        }
        let mut scores = vec![0f32; candidates.len()];
        for group in by_cluster.chunk_by(|&a, &b| candidates[a as usize].cluster == candidates[b as usize].cluster) {
            let f = candidates[group[0] as usize].cluster;
            let rows = self.cluster_rows(f as usize);
            for &i in group {
                let pos = candidates[i as usize].pos;
                scores[i as usize] = self.score_row(&s.q, f, pos, &rows[pos as usize * dim..][..dim]);
            }
            self.rows_done(f as usize, rows);
        }
        for (e, score) in candidates.into_iter().zip(scores) {
            s.top2.push(Entry { score, ..e });
        }
        s.top2.drain_sorted()
    }

    /// [`rerank`](Self::rerank) through a cache that reads single rows: the cold candidates' rows are
    /// asked for in one batch ([`RowCache::read_rows`]: the cache may read them from the disk together,
    /// in one submission), each scored as it arrives; the scores are offered in the candidates' order,
    /// so the result is the one without a cache.
    fn rerank_by_row(&self, cache: &dyn crate::RowCache, candidates: Vec<Entry>, s: &mut Scratch) -> Vec<Entry> {
        let mut scores = std::mem::take(&mut s.row_scores);
        scores.clear();
        s.cold_ranges.clear();
        s.cold_of.clear();
        for (i, e) in candidates.iter().enumerate() {
            match self.cold_member(e.cluster as usize, e.pos as usize) {
                Some(range) => {
                    s.cold_ranges.push(range);
                    s.cold_of.push(i as u32);
                    scores.push(f32::NAN);
                }
                None => scores.push(self.member_score(&s.q, e.cluster, e.pos)),
            }
        }
        cache.read_rows(&s.cold_ranges, &mut |j, row| {
            if let Some(&i) = s.cold_of.get(j) {
                let e = &candidates[i as usize];
                scores[i as usize] = self.score_row(&s.q, e.cluster, e.pos, row);
            }
        });
        for (e, &score) in candidates.into_iter().zip(&scores) {
            s.top2.push(Entry { score, ..e });
        }
        s.row_scores = scores;
        s.top2.drain_sorted()
    }

    fn score_exact(&self, f: usize, cl: &Cluster, q: &[f32], top: &mut TopK, buf: &mut Vec<f32>) {
        let m = cl.len();
        buf.resize(m, 0.0);
        let rows = self.cluster_rows(f);
        crate::kernels::dots_with(self.isa, q, &rows, buf);
        self.rows_done(f, rows);
        cl.to_similarity(buf);
        top.offer(f as u32, buf);
    }

    /// The fine cluster a prepared vector belongs to: best coarse centroid, then its best child.
    fn route(&self, x: &[f32]) -> usize {
        let mut best = (f32::NEG_INFINITY, 0usize);
        for (c, (cent, &b)) in self.p.coarse.chunks_exact(self.p.dim).zip(&self.coarse_bias).enumerate() {
            let v = dot(x, cent) + b;
            if v > best.0 && !self.p.children[c].is_empty() {
                best = (v, c);
            }
        }
        let mut fbest = (f32::NEG_INFINITY, 0usize);
        for &f in &self.p.children[best.1] {
            let v = dot(x, &self.p.fine[f as usize * self.p.dim..][..self.p.dim]) + self.fine_bias[f as usize];
            if v > fbest.0 {
                fbest = (v, f as usize);
            }
        }
        fbest.1
    }

    /// Inserts vectors after the build: each is routed to its fine cluster and its code appended, without
    /// a rebuild. The batch is validated whole first; on error nothing is inserted.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m_index::{Error, Index, IndexConfig, Lod, SearchParams};
    ///
    /// let dim = 8;
    /// let vectors: Vec<f32> = (0..400 * dim).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
    /// let mut index = Index::build(&IndexConfig::default(), dim, &vectors, &(0..400).collect::<Vec<u64>>())?;
    /// let fresh: Vec<f32> = (0..dim).map(|i| i as f32 + 0.5).collect();
    /// index.insert(&fresh, &[1_000])?;
    /// let p = SearchParams::default();
    /// assert_eq!(index.search(&fresh, 1, Lod::Rerank, &p)?[0].id, 1_000);
    /// // An id the index holds is refused, and nothing is inserted.
    /// assert!(matches!(index.insert(&fresh, &[7]), Err(Error::DuplicateId { id: 7 })));
    /// assert_eq!(index.delete(&[1_000, 5_000]), 1); // only 1,000 was present
    /// assert_ne!(index.search(&fresh, 1, Lod::Exact, &p)?[0].id, 1_000);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn insert(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        let dim = self.p.dim;
        let n = check_rows(vectors, dim)?;
        if ids.len() != n {
            return Err(Error::IdCount { ids: ids.len(), rows: n });
        }
        let mut seen = HashSet::with_capacity(n);
        if let Some(&id) = ids.iter().find(|&&id| self.locations.contains_key(&id) || !seen.insert(id)) {
            return Err(Error::DuplicateId { id });
        }
        let data = prepare_rows(self.metric(), vectors, dim)?;
        // The 1-bit lists follow the members' order; a changed cluster would not match them.
        self.bitq = None;
        let routes: Vec<usize> = data.par_chunks(dim).map(|x| self.route(x)).collect();
        self.stamp = next_stamp();
        let mut touched = HashSet::new();
        for ((x, &id), &f) in data.chunks_exact(dim).zip(ids).zip(&routes) {
            self.own(f);
            let mut cl = std::mem::take(&mut self.p.clusters[f]);
            push_member(&self.p, f, &mut cl, id, x);
            self.locations.insert(id, (f as u32, (cl.len() - 1) as u32));
            self.p.clusters[f] = cl;
            touched.insert(f);
        }
        for f in touched {
            self.p.clusters[f].representative = representative(&self.p, f, &self.p.clusters[f]);
        }
        Ok(())
    }

    /// Deletes ids without a rebuild; returns how many were present.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        let dim = self.p.dim;
        let stride = self.p.config.codes.stride(dim);
        let pq = self.p.config.codes.pq_shape(dim);
        let bstride = crate::kernels::bf16_stride(dim);
        let mut removed = 0;
        for &id in ids {
            let Some((f, pos)) = self.locations.remove(&id) else { continue };
            let (f, pos) = (f as usize, pos as usize);
            self.own(f);
            let cl = &mut self.p.clusters[f];
            let last = cl.len() - 1;
            cl.ids.swap_remove(pos);
            if !cl.half_sq_norms.is_empty() {
                cl.half_sq_norms.swap_remove(pos);
            }
            if pos != last {
                cl.vectors.copy_within(last * dim..(last + 1) * dim, pos * dim);
                match pq {
                    Some(shape) => crate::kernels::pq4_copy_row(cl.codes.to_mut(), shape.m, last, pos),
                    None => cl.codes.to_mut().copy_within(last * stride..(last + 1) * stride, pos * stride),
                }
                if !cl.bf16.is_empty() {
                    cl.bf16.copy_within(last * bstride..(last + 1) * bstride, pos * bstride);
                }
                self.locations.insert(cl.ids[pos], (f as u32, pos as u32));
            }
            cl.vectors.truncate(last * dim);
            match pq {
                Some(shape) => crate::kernels::pq4_truncate(cl.codes.to_mut(), shape.m, last),
                None => cl.codes.to_mut().truncate(last * stride),
            }
            cl.bf16.truncate(if cl.bf16.is_empty() { 0 } else { last * bstride });
            if cl.representative == Some(id) {
                let rep = representative(&self.p, f, &self.p.clusters[f]);
                self.p.clusters[f].representative = rep;
            }
            removed += 1;
        }
        if removed > 0 {
            self.stamp = next_stamp();
        }
        if removed > 0 && !self.spill.is_empty() {
            self.unspill(ids);
        }
        if removed > 0 {
            self.bitq = None;
        }
        removed
    }

    /// Whether some fine cluster has grown past `max_cluster_factor` times the build-time mean size.
    pub fn needs_rebalance(&self) -> bool {
        let cap = self.cap();
        self.p.clusters.iter().any(|c| c.len() > cap)
    }

    fn cap(&self) -> usize {
        (self.p.target_cluster_size * self.p.config.max_cluster_factor).ceil().max(2.0) as usize
    }

    /// Splits every fine cluster that drifted past the size cap (2-means inside it, the new cluster under
    /// the same coarse centroid) and re-derives the SQ8 ranges, re-encoding every code.
    pub fn rebalance(&mut self) -> RebalanceReport {
        let dim = self.p.dim;
        let cap = self.cap();
        let spherical = self.metric() == Metric::Cosine;
        // Splitting moves members and re-encoding rewrites every cluster: all of them in RAM first.
        self.own_all();
        self.stamp = next_stamp();
        let mut report = RebalanceReport::default();
        let mut f = 0;
        while f < self.p.clusters.len() {
            if self.p.clusters[f].len() <= cap {
                f += 1;
                continue;
            }
            let cl = std::mem::take(&mut self.p.clusters[f]);
            let km = KMeans { k: 2, iters: 10, spherical, max_train: usize::MAX, seed: self.p.config.seed ^ f as u64 };
            let r = km.run(&cl.vectors, dim);
            if r.centroids.len() < 2 * dim || r.assign.iter().all(|&a| a == r.assign[0]) {
                // Identical vectors cannot be split; keep the cluster as it is.
                self.p.clusters[f] = cl;
                f += 1;
                continue;
            }
            let new_f = self.p.clusters.len();
            self.p.fine[f * dim..(f + 1) * dim].copy_from_slice(&r.centroids[..dim]);
            self.p.fine.extend_from_slice(&r.centroids[dim..2 * dim]);
            let parent = self.p.children.iter().position(|ch| ch.contains(&(f as u32))).unwrap_or(0);
            self.p.children[parent].push(new_f as u32);
            self.p.clusters.push(Cluster::default());
            let mut halves = [Cluster::default(), Cluster::default()];
            for (i, &a) in r.assign.iter().enumerate() {
                let target = if a == 0 { f } else { new_f };
                push_member(&self.p, target, &mut halves[a as usize], cl.ids[i], &cl.vectors[i * dim..][..dim]);
            }
            let [h0, h1] = halves;
            self.p.clusters[f] = h0;
            self.p.clusters[new_f] = h1;
            report.split += 1;
        }
        self.reencode();
        report.clusters = self.p.clusters.len();
        report
    }

    /// Re-derives the SQ8 ranges from the current members, re-encodes every code, and refreshes the
    /// derived tables.
    fn reencode(&mut self) {
        let dim = self.p.dim;
        let total = self.p.clusters.iter().map(Cluster::len).sum();
        if total > 0 {
            let members = self
                .p
                .clusters
                .iter()
                .enumerate()
                .flat_map(|(f, cl)| cl.vectors.chunks_exact(dim).map(move |x| (f, x)));
            let (lo, st) = quantiser(self.p.config.codes, dim, &self.p.fine, total, members.clone());
            self.p.sq_min = lo;
            self.p.sq_step = st;
            let seed = self.p.config.seed;
            self.p.pq_codebook =
                crate::pq::train_on_members(self.p.config.codes, dim, &self.p.fine, total, members, seed);
        }
        let mut clusters = std::mem::take(&mut self.p.clusters);
        clusters.par_iter_mut().enumerate().for_each(|(f, cl)| {
            let old = std::mem::take(cl);
            for (i, &id) in old.ids.iter().enumerate() {
                push_member(&self.p, f, cl, id, &old.vectors[i * dim..][..dim]);
            }
            cl.representative = representative(&self.p, f, cl);
        });
        self.p.clusters = clusters;
        let p = std::mem::replace(&mut self.p, empty_parts());
        // The parts were consistent before and splitting keeps them so.
        if let Ok(index) = Index::from_parts(p) {
            *self = index;
        }
    }
}

/// Rows sampled per dimension to place the quantiser's range.
const RANGE_SAMPLE: usize = 16_384;

/// Per-dimension offset and step of the residual quantiser, from a deterministic sample of at most about
/// [`RANGE_SAMPLE`] residuals `x - c` (every n-th of the `total` members, given as (fine cluster, vector)),
/// clipped at the kind's quantiles.
fn quantiser<'a>(
    kind: CodeKind,
    dim: usize,
    fine: &[f32],
    total: usize,
    members: impl Iterator<Item = (usize, &'a [f32])>,
) -> (Vec<f32>, Vec<f32>) {
    if kind.pq_shape(dim).is_some() {
        // PQ4 codes have no per-dimension range; the fields keep their shape (offset 0, step 1).
        return (vec![0.0; dim], vec![1.0; dim]);
    }
    let every = total.div_ceil(RANGE_SAMPLE).max(1);
    let mut residuals: Vec<f32> = Vec::with_capacity((total / every + 1) * dim);
    for (f, x) in members.step_by(every) {
        residuals.extend(x.iter().zip(&fine[f * dim..][..dim]).map(|(x, c)| x - c));
    }
    ranges_from_residuals(kind, dim, &residuals)
}

fn ranges_from_residuals(kind: CodeKind, dim: usize, residuals: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = residuals.len() / dim;
    let levels = kind.levels();
    let clip = ((n as f64) * kind.clip()).floor() as usize;
    (0..dim)
        .into_par_iter()
        .map(|j| {
            let mut col: Vec<f32> = residuals.iter().skip(j).step_by(dim).copied().collect();
            if col.is_empty() {
                return (0.0, 1.0);
            }
            col.sort_unstable_by(f32::total_cmp);
            let lo = col[clip.min(col.len() - 1)];
            let hi = col[col.len() - 1 - clip.min(col.len() - 1)];
            (lo, ((hi - lo) / levels).max(f32::MIN_POSITIVE))
        })
        .unzip()
}

/// Global Lloyd refinement of the fine centroids (see [`IndexConfig::refine_iters`]): every row is
/// assigned to its best fine centroid among all of them, the centroids are recomputed from the rows not
/// held out, and at the end each fine centroid is attached to its best coarse centroid. Clusters that end
/// empty are dropped. Returns the members of each fine cluster and the children of each coarse centroid.
#[allow(clippy::too_many_arguments, reason = "one internal step of the build, called once")]
fn refine(
    data: &[f32],
    dim: usize,
    fine: &mut Vec<f32>,
    coarse: &[f32],
    children: &[Vec<u32>],
    iters: usize,
    spherical: bool,
    is_held: &[bool],
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let k = fine.len() / dim;
    // A vector's best fine centroid is searched among the children of its REFINE_COARSE best coarse
    // centroids (as search probes), not among all of them: the cost per vector follows the children of a
    // few coarse centroids rather than n_fine.
    let coarse_bias: Vec<f32> =
        coarse.chunks_exact(dim).map(|c| if spherical { 0.0 } else { -0.5 * dot(c, c) }).collect();
    let assign_near = |fine: &[f32]| -> Vec<u32> {
        let fine_bias: Vec<f32> =
            fine.chunks_exact(dim).map(|c| if spherical { 0.0 } else { -0.5 * dot(c, c) }).collect();
        data.par_chunks(dim)
            .map_init(
                || (vec![0.0f32; coarse_bias.len()], Vec::new(), Vec::new()),
                |(cs, order, fs): &mut (Vec<f32>, Vec<u32>, Vec<f32>), x| {
                    dots(x, coarse, cs);
                    cs.iter_mut().zip(&coarse_bias).for_each(|(v, b)| *v += b);
                    order.clear();
                    order.extend(0..cs.len() as u32);
                    let take = REFINE_COARSE.min(order.len());
                    order.select_nth_unstable_by(take - 1, |&a, &b| cs[b as usize].total_cmp(&cs[a as usize]));
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for &c in &order[..take] {
                        let ch = &children[c as usize];
                        let (Some(&lo), Some(&hi)) = (ch.first(), ch.last()) else { continue };
                        // Children of one coarse centroid are contiguous during the build.
                        let (lo, hi) = (lo as usize, hi as usize + 1);
                        fs.resize(hi - lo, 0.0);
                        dots(x, &fine[lo * dim..hi * dim], fs);
                        for (i, (&v, &b)) in fs.iter().zip(&fine_bias[lo..hi]).enumerate() {
                            if v + b > best.0 {
                                best = (v + b, (lo + i) as u32);
                            }
                        }
                    }
                    best.1
                },
            )
            .collect()
    };
    let mut assign = assign_near(fine);
    for _ in 0..iters {
        let (sums, counts) = crate::kmeans::cluster_sums(data, dim, &assign, k, |row| is_held[row]);
        for (j, c) in fine.chunks_exact_mut(dim).enumerate() {
            if counts[j] == 0 {
                continue;
            }
            let inv = 1.0 / f64::from(counts[j]);
            c.iter_mut().zip(&sums[j * dim..][..dim]).for_each(|(c, &s)| *c = (s * inv) as f32);
            if spherical {
                let n = dot(c, c).sqrt();
                if n > 0.0 {
                    c.iter_mut().for_each(|v| *v /= n);
                }
            }
        }
        assign = assign_near(fine);
    }
    // Members per fine cluster; empty clusters are dropped and the rest renumbered.
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (row, &c) in assign.iter().enumerate() {
        members[c as usize].push(row as u32);
    }
    let kept: Vec<usize> = (0..k).filter(|&j| !members[j].is_empty()).collect();
    let new_fine: Vec<f32> = kept.iter().flat_map(|&j| fine[j * dim..][..dim].iter().copied()).collect();
    let groups: Vec<Vec<u32>> = kept.iter().map(|&j| std::mem::take(&mut members[j])).collect();
    *fine = new_fine;
    // Each fine centroid under its best coarse centroid (the same criterion as routing).
    let parents = crate::kmeans::assign(fine, dim, coarse, spherical);
    let mut by_coarse: Vec<Vec<u32>> = vec![Vec::new(); coarse.len() / dim];
    for (f, &c) in parents.iter().enumerate() {
        by_coarse[c as usize].push(f as u32);
    }
    // Renumber fine clusters so that each coarse centroid's children are contiguous.
    let order: Vec<u32> = by_coarse.iter().flatten().copied().collect();
    let renumbered_fine: Vec<f32> =
        order.iter().flat_map(|&f| fine[f as usize * dim..][..dim].iter().copied()).collect();
    let renumbered_groups: Vec<Vec<u32>> = order.iter().map(|&f| groups[f as usize].clone()).collect();
    let mut children = Vec::with_capacity(by_coarse.len());
    let mut at = 0u32;
    for ch in &by_coarse {
        children.push((at..at + ch.len() as u32).collect());
        at += ch.len() as u32;
    }
    *fine = renumbered_fine;
    (renumbered_groups, children)
}

fn empty_parts() -> IndexParts {
    IndexParts {
        config: IndexConfig::default(),
        dim: 0,
        coarse: Vec::new(),
        fine: Vec::new(),
        children: Vec::new(),
        clusters: Vec::new(),
        sq_min: Vec::new(),
        sq_step: Vec::new(),
        target_cluster_size: 0.0,
        default_nprobe: 1,
        calibration_ids: Vec::new(),
        default_rerank: 40,
        pq_codebook: Vec::new(),
        probe_rule: None,
    }
}

/// Vectors held out of training to calibrate the default nprobe.
pub(crate) const CALIBRATION_QUERIES: usize = 200;

/// The rows of `n` held out for the calibration (a seeded sample, ascending; none when the config does not
/// calibrate or the rows are too few): the in-memory and the streaming build hold out the same ones.
pub(crate) fn calibration_rows(config: &IndexConfig, n: usize) -> Vec<usize> {
    use rand::{SeedableRng, rngs::StdRng};
    if config.target_recall <= 0.0 || n <= 2 * CALIBRATION_QUERIES {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0xCA11_B8A7E);
    let mut rows = rand::seq::index::sample(&mut rng, n, CALIBRATION_QUERIES).into_vec();
    rows.sort_unstable();
    rows
}

/// Largest `dims_per_code` of [`CodeKind::Pq4`].
pub const MAX_DIMS_PER_CODE: u8 = 16;

/// Coarse centroids whose children a vector may move to during refinement.
pub(crate) const REFINE_COARSE: usize = 4;

pub(crate) fn with_row(e: Error, row: usize) -> Error {
    match e {
        Error::NonFinite { column, value, .. } => Error::NonFinite { row, column, value },
        Error::ZeroNorm { .. } => Error::ZeroNorm { row },
        other => other,
    }
}

/// Appends one prepared vector to cluster `f`'s storage `cl` (codes clamp to the SQ8 range).
fn push_member(p: &IndexParts, f: usize, cl: &mut Cluster, id: u64, x: &[f32]) {
    let dim = p.dim;
    push_columns(p, f, cl, id, x);
    cl.vectors.extend_from_slice(x);
    if p.config.exact_prefilter {
        let at = cl.bf16.len();
        cl.bf16.resize(at + crate::kernels::bf16_stride(dim), 0);
        crate::kernels::to_bf16(x, &mut cl.bf16[at..]);
    }
}

/// Appends what cluster `f` keeps of one prepared vector besides the vector itself (and its bf16 copy):
/// its id, code, half squared norm (L2) and the bound of the norms. The streaming build keeps only these
/// in RAM.
pub(crate) fn push_columns(p: &IndexParts, f: usize, cl: &mut Cluster, id: u64, x: &[f32]) {
    cl.ids.push(id);
    push_code(p, f, cl.codes.to_mut(), cl.ids.len() - 1, x);
    let sq = dot(x, x);
    if p.config.metric == Metric::L2 {
        cl.half_sq_norms.push(0.5 * sq);
    }
    // A little above the computed norm, so that f32 rounding cannot make the bound too small.
    cl.max_norm = cl.max_norm.max(sq.sqrt() * (1.0 + 1e-5));
}

/// Appends the code of `x`'s residual to fine centroid `f` as row `row` of `codes` (the code storage of
/// a cluster or of its spill list).
pub(crate) fn push_code(p: &IndexParts, f: usize, codes: &mut Vec<u8>, row: usize, x: &[f32]) {
    let dim = p.dim;
    let c = &p.fine[f * dim..][..dim];
    let kind = p.config.codes;
    let levels = kind.levels();
    let quantised = x
        .iter()
        .zip(c)
        .zip(p.sq_min.iter().zip(&p.sq_step))
        .map(|((&xj, &cj), (&lo, &st))| ((xj - cj - lo) / st).round().clamp(0.0, levels) as u8);
    match kind {
        CodeKind::Pq4 { dims_per_code, anisotropic } => {
            let shape = crate::pq::Shape::new(dim, dims_per_code);
            let r: Vec<f32> = x.iter().zip(c).map(|(a, b)| a - b).collect();
            let mut sub = vec![0u8; shape.m];
            let eta = if anisotropic { crate::pq::eta(dim) } else { 1.0 };
            crate::pq::encode(shape, &p.pq_codebook, &r, x, eta, &mut sub);
            crate::kernels::pq4_push(codes, shape.m, row, &sub);
        }
        CodeKind::Sq8 => codes.extend(quantised),
        CodeKind::Sq4 => {
            let unpacked: Vec<u8> = quantised.collect();
            let at = codes.len();
            codes.resize(at + kind.stride(dim), 0);
            crate::kernels::sq4_pack(&unpacked, &mut codes[at..]);
        }
    }
}

/// The member of cluster `f` nearest its centroid.
fn representative(p: &IndexParts, f: usize, cl: &Cluster) -> Option<u64> {
    representative_of(p, f, &cl.vectors, &cl.ids)
}

/// The member nearest fine centroid `f` among `vectors` (row-major) with their `ids`.
pub(crate) fn representative_of(p: &IndexParts, f: usize, vectors: &[f32], ids: &[u64]) -> Option<u64> {
    let dim = p.dim;
    let c = &p.fine[f * dim..][..dim];
    let l2 = p.config.metric == Metric::L2;
    vectors
        .chunks_exact(dim)
        .zip(ids)
        .map(|(x, &id)| (if l2 { -crate::kernels::l2_sq(x, c) } else { dot(x, c) }, id))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, id)| id)
}

/// Splits clusters larger than `cap` with 2-means until none is (or a split makes no progress).
fn split_oversized(
    data: &[f32],
    dim: usize,
    mut centroids: Vec<f32>,
    mut groups: Vec<Vec<u32>>,
    cap: usize,
    spherical: bool,
    seed: u64,
) -> (Vec<f32>, Vec<Vec<u32>>) {
    let mut i = 0;
    while i < groups.len() {
        if groups[i].len() <= cap {
            i += 1;
            continue;
        }
        let rows = std::mem::take(&mut groups[i]);
        let local: Vec<f32> = rows.iter().flat_map(|&r| data[r as usize * dim..][..dim].iter().copied()).collect();
        let km = KMeans { k: 2, iters: 10, spherical, max_train: usize::MAX, seed: seed ^ (i as u64) };
        let r = km.run(&local, dim);
        let a = if r.centroids.len() == 2 * dim { r.assign } else { vec![0; rows.len()] };
        let (g0, g1): (Vec<u32>, Vec<u32>) = {
            let mut halves = (Vec::new(), Vec::new());
            for (&r, &a) in rows.iter().zip(&a) {
                if a == 0 { halves.0.push(r) } else { halves.1.push(r) }
            }
            halves
        };
        if g0.is_empty() || g1.is_empty() {
            groups[i] = rows;
            i += 1;
            continue;
        }
        centroids[i * dim..(i + 1) * dim].copy_from_slice(&r.centroids[..dim]);
        centroids.extend_from_slice(&r.centroids[dim..2 * dim]);
        groups[i] = g0;
        groups.push(g1);
    }
    (centroids, groups)
}
