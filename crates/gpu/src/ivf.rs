//! IVF-Flat search on the device: inverted lists (a centroid per list and its members' full vectors)
//! uploaded once and kept resident, then batches of queries probed and scanned without the scores
//! leaving the device. Three kernels in one submission per batch: `distances.comp` scores the queries
//! against the centroids, `select.comp` keeps the `nprobe` best lists of each query, and `ivf.comp`
//! scores the members of those lists exactly and keeps the best k. Only k row indices and scores per
//! query come back. The CPU twin is [`crate::cpu::ivf_search`].
//!
//! It does not read codes (LOD 1) and does not chunk: lists whose vectors exceed one device buffer
//! (`maxStorageBufferRange`) are refused with [`Error::Invalid`], and the caller runs the CPU path.

use crate::error::{finite, shape};
use crate::{Compute, Error, Kind, MAX_K, Metric, Result, cpu};

/// Most lists of an IVF upload (the probe keeps one key per list in shared memory).
pub const MAX_LISTS: usize = 4096;
/// Largest dimension of an IVF upload (the scan keeps the query in shared memory).
pub const MAX_IVF_DIM: usize = 2048;

/// Inverted lists to upload: list `l` has centroid row `l` of `centroids` and the members in rows
/// `offsets[l]..offsets[l + 1]` of `vectors` (row-major, `dim` wide). Search results name members by
/// their row in `vectors`.
#[derive(Clone, Copy, Debug)]
pub struct IvfLists<'a> {
    /// Dimension.
    pub dim: usize,
    /// One centroid per list, row-major.
    pub centroids: &'a [f32],
    /// Start row of each list, then the number of rows: non-decreasing, from 0.
    pub offsets: &'a [u32],
    /// Every list's members, list after list.
    pub vectors: &'a [f32],
}

impl IvfLists<'_> {
    fn check(&self) -> Result<usize> {
        let dim = self.dim;
        if dim == 0 || dim > MAX_IVF_DIM {
            return Err(Error::Invalid { what: "ivf dim", reason: format!("{dim} is not in 1..={MAX_IVF_DIM}") });
        }
        let n_lists = self.centroids.len() / dim;
        shape("ivf centroids", self.centroids.len(), n_lists * dim)?;
        if n_lists == 0 || n_lists > MAX_LISTS {
            return Err(Error::Invalid {
                what: "ivf centroids",
                reason: format!("{n_lists} lists is not in 1..={MAX_LISTS}"),
            });
        }
        shape("ivf offsets", self.offsets.len(), n_lists + 1)?;
        if self.offsets[0] != 0 || self.offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::Invalid { what: "ivf offsets", reason: "must start at 0 and never decrease".into() });
        }
        let rows = self.offsets[n_lists] as usize;
        shape("ivf vectors", self.vectors.len(), rows * dim)?;
        if rows == 0 {
            return Err(Error::Invalid { what: "ivf vectors", reason: "no rows".into() });
        }
        finite("ivf centroids", self.centroids)?;
        finite("ivf vectors", self.vectors)?;
        Ok(n_lists)
    }
}

/// Inverted lists uploaded by [`Compute::ivf_upload`]: in device memory (Vulkan) or in RAM (CPU).
#[derive(Debug)]
pub struct IvfResident {
    dim: usize,
    n_lists: usize,
    rows: usize,
    data: IvfData,
}

#[derive(Debug)]
enum IvfData {
    Cpu {
        centroids: Vec<f32>,
        offsets: Vec<u32>,
        vectors: Vec<f32>,
    },
    #[cfg(feature = "vulkan")]
    Gpu(crate::vulkan::IvfBuffers),
}

impl IvfResident {
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of lists.
    pub fn n_lists(&self) -> usize {
        self.n_lists
    }

    /// Number of member rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the lists take (centroids, offsets and vectors), in device memory on the GPU.
    pub fn bytes(&self) -> u64 {
        ivf_bytes(self.dim, self.n_lists, self.rows)
    }

    /// Whether the lists live in device memory.
    pub fn on_device(&self) -> bool {
        !matches!(self.data, IvfData::Cpu { .. })
    }
}

/// Bytes of `n_lists` lists of `rows` members in all, `dim` wide, once uploaded.
pub fn ivf_bytes(dim: usize, n_lists: usize, rows: usize) -> u64 {
    4 * ((n_lists * dim + n_lists + 1 + rows * dim) as u64)
}

impl Compute {
    /// Uploads inverted lists once, for any number of later [`ivf_search`](Self::ivf_search) batches.
    pub fn ivf_upload(&self, lists: &IvfLists<'_>) -> Result<IvfResident> {
        let n_lists = lists.check()?;
        let rows = lists.offsets[n_lists] as usize;
        let data = match &self.kind {
            Kind::Cpu => IvfData::Cpu {
                centroids: lists.centroids.to_vec(),
                offsets: lists.offsets.to_vec(),
                vectors: lists.vectors.to_vec(),
            },
            #[cfg(feature = "vulkan")]
            Kind::Vulkan(v) => IvfData::Gpu(v.ivf_upload(lists, n_lists)?),
        };
        Ok(IvfResident { dim: lists.dim, n_lists, rows, data })
    }

    /// For each query (row-major), the best `k` members of its `nprobe` best lists, as (row, score) best
    /// first: `q . x` for cosine (unit rows expected) and inner product, `|q - x|^2` for L2 (lists ranked
    /// by the same score of their centroids). `nprobe = n_lists` searches every member exactly.
    pub fn ivf_search(
        &self,
        queries: &[f32],
        ivf: &IvfResident,
        metric: Metric,
        nprobe: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let dim = ivf.dim;
        let b = queries.len() / dim;
        shape("queries", queries.len(), b * dim)?;
        if b == 0 {
            return Err(Error::Invalid { what: "queries", reason: "empty batch".into() });
        }
        finite("queries", queries)?;
        if k == 0 || k > MAX_K {
            return Err(Error::Invalid { what: "k", reason: format!("{k} is not in 1..={MAX_K}") });
        }
        if nprobe == 0 || nprobe > ivf.n_lists {
            return Err(Error::Invalid {
                what: "nprobe",
                reason: format!("{nprobe} is not in 1..={} (the lists)", ivf.n_lists),
            });
        }
        let l2 = metric == Metric::L2;
        match (&self.kind, &ivf.data) {
            (_, IvfData::Cpu { centroids, offsets, vectors }) => {
                Ok(cpu::ivf_search(queries, centroids, offsets, vectors, dim, l2, nprobe, k))
            }
            #[cfg(feature = "vulkan")]
            (Kind::Vulkan(v), IvfData::Gpu(bufs)) => v.ivf_search(queries, b, bufs, l2, nprobe, k),
            #[cfg(feature = "vulkan")]
            (Kind::Cpu, IvfData::Gpu(_)) => Err(crate::foreign()),
        }
    }
}
