//! m2m-gpu: Vulkan compute for M2M through vulkano, with a CPU twin for every kernel.
//!
//! Kernels (GLSL in the workspace's `shaders/`, reached through the crate's `shaders` link so that the
//! published package carries them; compiled to SPIR-V at build time by one
//! `vulkano_shaders::shader!` invocation; shared definitions in `shaders/include/`):
//!
//! 1. `distances`: B queries against N candidates (`q . x` for cosine and inner product, `|q - x|^2` for
//!    L2). Candidates are uploaded once ([`Compute::upload`]) into device-local buffers, transposed so
//!    that neighbouring invocations read neighbouring addresses, and reused by every query batch.
//! 2. `topk`: the best k (at most [`MAX_K`]) of each query's scores on the device, chained after
//!    `distances` in one submission, so only k ids and scores per query come back.
//! 3. `codes`: estimated inner products from 8-bit scalar-quantised codes ([`SqCodes`]).
//! 4. `select` and `ivf`: IVF-Flat search over resident inverted lists ([`Compute::ivf_upload`],
//!    [`Compute::ivf_search`]): the probe of each query's best lists and the exact scan of their
//!    members with a device top-k, in one submission per batch.
//! 5. `langevin`: one overdamped Langevin step on the sphere against shared routed splats (the step of
//!    m2m-soc, whose `overdamped_step` the tests also compare with).
//!
//! Backends ([`Backend`]): `Cpu` runs the twins in [`cpu`]; `Gpu` runs the shaders and is an error
//! ([`Error::NoVulkan`], or [`Error::NotBuilt`] without the `vulkan` feature) when no device works;
//! `Auto` uses the GPU when one works and otherwise logs why through `tracing` and runs the twins.
//! Device choice: a discrete GPU first, then integrated, virtual, and CPU implementations (Mesa's
//! lavapipe, which CI tests on); `M2M_GPU_DEVICE=<index>` picks one. Buffers larger than the device's
//! `maxStorageBufferRange` (128 MiB on lavapipe) are split into chunks of rows. Submissions wait on a
//! fence.
//!
//! With the `vulkan` feature, `Compute::hot_tier` gives m2m-tier's hot tier (`m2m_tier::HotTier`) with
//! blocks in device-local buffers (`DeviceStorage`).
//!
//! The default build has only the twins and needs no shader compiler.
//!
//! # Example
//!
//! The same calls run on the device or on the CPU twins; `Auto` falls back to the twins when no device
//! works (always so in the default build).
//!
//! ```
//! use m2m_gpu::{Backend, Compute, Metric};
//!
//! let compute = Compute::new(Backend::Auto)?;
//! // Four candidate rows of dimension 2, uploaded once, then searched by a batch of two queries.
//! let rows = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.6, 0.8];
//! let candidates = compute.upload(&rows, 2)?;
//! let queries = [0.0, 1.0, 1.0, 0.0];
//! let best = compute.top_k(&queries, &candidates, Metric::InnerProduct, 2)?;
//! assert_eq!(best[0][0].0, 1); // (0, 1) is its own best match
//! assert_eq!(best[0][1].0, 3); // then (0.6, 0.8)
//! assert_eq!(best[1][0].0, 0);
//! // k beyond what the device kernel supports is refused, not truncated.
//! assert!(compute.top_k(&queries, &candidates, Metric::InnerProduct, m2m_gpu::MAX_K + 1).is_err());
//! # Ok::<(), m2m_gpu::Error>(())
//! ```

pub mod cpu;
mod error;
mod ivf;
#[cfg(feature = "vulkan")]
mod vulkan;

#[cfg(feature = "vulkan")]
pub use vulkan::{DeviceBlock, DeviceStorage};

/// m2m-tier's hot tier over device memory (see [`Compute::hot_tier`]).
#[cfg(feature = "vulkan")]
pub type DeviceHot = m2m_tier::HotCache<DeviceStorage>;

pub use error::{Error, Result};
pub use ivf::{IvfLists, IvfResident, MAX_IVF_DIM, MAX_LISTS, ivf_bytes};
pub use m2m_splat::Metric;

use error::{finite, shape};

/// Largest k of [`Compute::top_k`] on the device.
pub const MAX_K: usize = 32;
/// Most routed splats of [`Compute::langevin_step`].
pub const MAX_SPLATS: usize = 256;
/// Largest dimension of [`Compute::langevin_step`].
pub const MAX_STEP_DIM: usize = 1024;

/// Which implementation runs the kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The GPU when one works, otherwise the CPU twins (the reason is logged).
    #[default]
    Auto,
    /// The CPU twins.
    Cpu,
    /// The GPU, or an error.
    Gpu,
}

/// Which scores rank first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Similarities: higher first.
    Higher,
    /// Distances: lower first.
    Lower,
}

impl Direction {
    /// The direction of a metric's scores.
    pub fn of(metric: Metric) -> Direction {
        if metric == Metric::L2 { Direction::Lower } else { Direction::Higher }
    }
}

/// 8-bit scalar-quantised rows: value (r, j) is `lo[j] + step[j] * codes[r * stride + j]`.
#[derive(Clone, Copy, Debug)]
pub struct SqCodes<'a> {
    /// Dimension.
    pub dim: usize,
    /// Rows.
    pub rows: usize,
    /// Bytes per row (at least `dim`, a multiple of 4).
    pub stride: usize,
    /// The codes.
    pub codes: &'a [u8],
    /// Per-dimension offsets.
    pub lo: &'a [f32],
    /// Per-dimension steps.
    pub step: &'a [f32],
}

impl SqCodes<'_> {
    fn check(&self) -> Result<()> {
        if self.stride < self.dim || !self.stride.is_multiple_of(4) {
            return Err(Error::Invalid {
                what: "stride",
                reason: format!("{} must be >= dim {} and a multiple of 4", self.stride, self.dim),
            });
        }
        shape("codes", self.codes.len(), self.rows * self.stride)?;
        shape("lo", self.lo.len(), self.dim)?;
        shape("step", self.step.len(), self.dim)?;
        finite("lo", self.lo)?;
        finite("step", self.step)
    }
}

/// Candidate rows ready for scoring: kept on the device (Vulkan) or in RAM (CPU).
#[derive(Debug)]
pub struct Candidates {
    dim: usize,
    rows: usize,
    data: CandidateData,
}

#[derive(Debug)]
enum CandidateData {
    Cpu(Vec<f32>),
    #[cfg(feature = "vulkan")]
    Gpu(Vec<vulkan::Chunk>),
}

impl Candidates {
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of device buffers the rows were split into (1 on the CPU).
    pub fn chunks(&self) -> usize {
        match &self.data {
            CandidateData::Cpu(_) => 1,
            #[cfg(feature = "vulkan")]
            CandidateData::Gpu(c) => c.len(),
        }
    }
}

/// A backend ready to run kernels.
#[derive(Debug)]
pub struct Compute {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Cpu,
    #[cfg(feature = "vulkan")]
    Vulkan(std::sync::Arc<vulkan::Context>),
}

impl Compute {
    /// Chooses the backend (see [`Backend`]).
    pub fn new(backend: Backend) -> Result<Compute> {
        match backend {
            Backend::Cpu => Ok(Compute { kind: Kind::Cpu }),
            Backend::Gpu => Compute::gpu(),
            Backend::Auto => match Compute::gpu() {
                Ok(c) => Ok(c),
                Err(e) => {
                    tracing::info!("m2m-gpu: no GPU backend ({e}); running the CPU twins");
                    Ok(Compute { kind: Kind::Cpu })
                }
            },
        }
    }

    #[cfg(feature = "vulkan")]
    fn gpu() -> Result<Compute> {
        Ok(Compute { kind: Kind::Vulkan(std::sync::Arc::new(vulkan::Context::new()?)) })
    }

    #[cfg(not(feature = "vulkan"))]
    fn gpu() -> Result<Compute> {
        Err(Error::NotBuilt)
    }

    /// Whether kernels run on a Vulkan device.
    pub fn is_gpu(&self) -> bool {
        !matches!(self.kind, Kind::Cpu)
    }

    /// "cpu", or the device's name.
    pub fn device_name(&self) -> String {
        match &self.kind {
            Kind::Cpu => "cpu".into(),
            #[cfg(feature = "vulkan")]
            Kind::Vulkan(v) => v.name().to_string(),
        }
    }

    /// Caps the bytes of any one device buffer below the device's own limit (tests use it to force
    /// chunking); no effect on the CPU.
    #[doc(hidden)]
    pub fn limit_buffer_bytes(&mut self, bytes: u64) {
        #[cfg(feature = "vulkan")]
        if let Kind::Vulkan(v) = &mut self.kind
            && let Some(v) = std::sync::Arc::get_mut(v)
        {
            v.limit_buffer_bytes(bytes);
        }
        let _ = bytes;
    }

    /// A hot tier (m2m-tier's [`m2m_tier::HotTier`]) whose blocks live in this device's memory, with a
    /// byte budget. On the CPU backend there is no device: use `m2m_tier::RamHot`.
    #[cfg(feature = "vulkan")]
    pub fn hot_tier(&self, budget_bytes: u64) -> Result<DeviceHot> {
        match &self.kind {
            Kind::Vulkan(v) => Ok(m2m_tier::HotCache::with_storage(DeviceStorage { ctx: v.clone() }, budget_bytes)),
            Kind::Cpu => {
                Err(Error::Invalid { what: "hot_tier", reason: "the CPU backend has no device memory".into() })
            }
        }
    }

    /// Uploads candidate rows (row-major, `dim` wide) once, for any number of later queries.
    pub fn upload(&self, rows: &[f32], dim: usize) -> Result<Candidates> {
        if dim == 0 || rows.is_empty() {
            return Err(Error::Invalid { what: "candidates", reason: "no rows or dimension 0".into() });
        }
        let n = rows.len() / dim;
        shape("candidates", rows.len(), n * dim)?;
        finite("candidates", rows)?;
        let data = match &self.kind {
            Kind::Cpu => CandidateData::Cpu(rows.to_vec()),
            #[cfg(feature = "vulkan")]
            Kind::Vulkan(v) => CandidateData::Gpu(v.upload(rows, dim)?),
        };
        Ok(Candidates { dim, rows: n, data })
    }

    fn check_queries(queries: &[f32], c: &Candidates) -> Result<usize> {
        let b = queries.len() / c.dim;
        shape("queries", queries.len(), b * c.dim)?;
        if b == 0 {
            return Err(Error::Invalid { what: "queries", reason: "empty batch".into() });
        }
        finite("queries", queries)?;
        Ok(b)
    }

    /// Scores of every query against every candidate, row-major (`queries x candidates`): `q . x` for
    /// cosine (unit rows expected) and inner product, `|q - x|^2` for L2.
    pub fn scores(&self, queries: &[f32], c: &Candidates, metric: Metric) -> Result<Vec<f32>> {
        Compute::check_queries(queries, c)?;
        let l2 = metric == Metric::L2;
        match (&self.kind, &c.data) {
            (_, CandidateData::Cpu(rows)) => Ok(cpu::scores(queries, rows, c.dim, l2)),
            #[cfg(feature = "vulkan")]
            (Kind::Vulkan(v), CandidateData::Gpu(chunks)) => v.scores(queries, chunks, c, l2),
            #[cfg(feature = "vulkan")]
            (Kind::Cpu, CandidateData::Gpu(_)) => Err(foreign()),
        }
    }

    /// The best `k` (row index, score) of every query, best first (ties to the lower index).
    pub fn top_k(&self, queries: &[f32], c: &Candidates, metric: Metric, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        #[cfg_attr(not(feature = "vulkan"), allow(unused_variables, reason = "only the device path uses it"))]
        let b = Compute::check_queries(queries, c)?;
        if k == 0 || k > MAX_K {
            return Err(Error::Invalid { what: "k", reason: format!("{k} is not in 1..={MAX_K}") });
        }
        let dir = Direction::of(metric);
        match (&self.kind, &c.data) {
            (_, CandidateData::Cpu(rows)) => {
                Ok(cpu::top_k(&cpu::scores(queries, rows, c.dim, metric == Metric::L2), c.rows, k, dir))
            }
            #[cfg(feature = "vulkan")]
            (Kind::Vulkan(v), CandidateData::Gpu(chunks)) => v.top_k(queries, b, chunks, c.dim, dir, k),
            #[cfg(feature = "vulkan")]
            (Kind::Cpu, CandidateData::Gpu(_)) => Err(foreign()),
        }
    }

    /// Estimated inner products of `query` with every row of `codes`.
    pub fn code_scores(&self, query: &[f32], codes: &SqCodes<'_>) -> Result<Vec<f32>> {
        codes.check()?;
        shape("query", query.len(), codes.dim)?;
        finite("query", query)?;
        match &self.kind {
            Kind::Cpu => Ok(cpu::code_scores(query, codes)),
            #[cfg(feature = "vulkan")]
            Kind::Vulkan(v) => v.code_scores(query, codes),
        }
    }

    /// One overdamped Langevin step for every chain (unit rows of `x`, updated in place) against the
    /// splats (`mu` rows, `kappa`, `alpha`) with increments `xi`, step `dt` and temperature `temperature`.
    #[allow(clippy::too_many_arguments, reason = "the step's inputs, each a plain slice or number")]
    pub fn langevin_step(
        &self,
        x: &mut [f32],
        dim: usize,
        mu: &[f32],
        kappa: &[f32],
        alpha: &[f32],
        xi: &[f32],
        dt: f32,
        temperature: f32,
    ) -> Result<()> {
        let n = kappa.len();
        if dim == 0 || dim > MAX_STEP_DIM || n == 0 || n > MAX_SPLATS {
            return Err(Error::Invalid {
                what: "langevin_step",
                reason: format!("dim {dim} must be in 1..={MAX_STEP_DIM} and splats {n} in 1..={MAX_SPLATS}"),
            });
        }
        shape("chains", x.len(), x.len() / dim * dim)?;
        shape("mu", mu.len(), n * dim)?;
        shape("alpha", alpha.len(), n)?;
        shape("xi", xi.len(), x.len())?;
        for (what, v) in [("x", &*x), ("mu", mu), ("xi", xi)] {
            finite(what, v)?;
        }
        if kappa.iter().chain(alpha).any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Invalid { what: "kappa/alpha", reason: "must be finite and > 0".into() });
        }
        if !(dt > 0.0 && dt.is_finite() && temperature >= 0.0 && temperature.is_finite()) {
            return Err(Error::Invalid {
                what: "dt/temperature",
                reason: format!("dt {dt}, temperature {temperature}"),
            });
        }
        let scale = (2.0 * dt * temperature).sqrt();
        match &self.kind {
            Kind::Cpu => {
                cpu::langevin_step(x, mu, kappa, alpha, xi, dim, dt, scale);
                Ok(())
            }
            #[cfg(feature = "vulkan")]
            Kind::Vulkan(v) => v.langevin_step(x, dim, mu, kappa, alpha, xi, dt, scale),
        }
    }
}

#[cfg(feature = "vulkan")]
fn foreign() -> Error {
    Error::Invalid { what: "candidates", reason: "uploaded by another backend".into() }
}
