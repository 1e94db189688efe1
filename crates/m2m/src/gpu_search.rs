//! Batch retrieval on the compute device: LOD 2 and Exact as IVF-Flat search over the index's inverted
//! lists, resident in device memory, for the batches where a cost model measured at first use says the
//! device is faster. Everything else (single queries, LOD 0 and 1, k above the device top-k, a CPU
//! backend, lists over `hot_budget_bytes`) runs on the CPU index.
//!
//! LOD 2 on the device probes the same number of lists as the CPU (the index's calibrated `nprobe`), but
//! ranks every fine centroid rather than walking the coarse level, and scores every member of the probed
//! lists exactly rather than re-ranking code estimates: its recall is at least the CPU's at that nprobe.
//! Exact probes every list. With `Device::Auto` a device that fails (upload or search) is logged once and
//! the CPU answers until the index changes; with `Device::Vulkan` the failure is the caller's error.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use m2m_gpu::{Compute, IvfLists, IvfResident, MAX_K, ivf_bytes};
use m2m_index::{Hit, Index, Lod, SearchParams};

use crate::{Device, Error, Metric, Result};

/// Queries the cost model times on each side.
const MODEL_QUERIES: usize = 64;

/// Seconds a batch of B queries takes: `gpu_fixed_s + gpu_per_query_s * B` on the device,
/// `cpu_per_query_s * B` on the CPU (all its threads). Measured once per level of detail, at the first
/// batch that could run on the device, on member vectors of the index as queries.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CostModel {
    /// The device's cost of a batch beyond its queries (submission, fence, read-back).
    pub gpu_fixed_s: f64,
    /// The device's cost per query.
    pub gpu_per_query_s: f64,
    /// The CPU's cost per query.
    pub cpu_per_query_s: f64,
}

impl CostModel {
    /// Whether a batch of `b` queries is faster on the device.
    pub fn gpu_wins(&self, b: usize) -> bool {
        let b = b as f64;
        self.gpu_fixed_s + self.gpu_per_query_s * b < self.cpu_per_query_s * b
    }
}

/// Which path answered [`M2m::retrieve_batch`](crate::M2m::retrieve_batch), and why.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetrievalStats {
    /// Queries answered on the device.
    pub gpu_queries: u64,
    /// Queries answered on the CPU.
    pub cpu_queries: u64,
    /// Whether the last batch ran on the device (`None` before the first).
    pub last_on_gpu: Option<bool>,
    /// The cost models measured since the index last changed, by level of detail.
    pub models: Vec<(Lod, CostModel)>,
}

/// Which path a batch must take, overriding the cost model (tests and benchmarks).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForcePath {
    /// The cost model decides.
    #[default]
    Model,
    /// The device whenever it can run the batch.
    Gpu,
    /// The CPU.
    Cpu,
}

#[derive(Debug, Default)]
enum State {
    /// Not uploaded since the index last changed.
    #[default]
    Unbuilt,
    /// The device failed or cannot hold the lists (logged once); the CPU answers.
    Off,
    Ready(Arc<Resident>),
}

#[derive(Debug)]
struct Resident {
    ivf: IvfResident,
    /// The id of each uploaded row.
    ids: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    stats: RetrievalStats,
    force: ForcePath,
}

/// The engine's device retrieval: the resident lists, the cost models and the counts.
#[derive(Debug, Default)]
pub(crate) struct GpuRetrieval {
    inner: Mutex<Inner>,
}

/// What one batch needs from the engine.
pub(crate) struct Request<'a> {
    pub(crate) compute: &'a Compute,
    pub(crate) device: Device,
    pub(crate) hot_budget_bytes: u64,
    pub(crate) index: &'a Index,
}

impl GpuRetrieval {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the resident lists and the models: the index changed.
    pub(crate) fn invalidate(&self) {
        let mut g = self.lock();
        g.state = State::Unbuilt;
        g.stats.models.clear();
    }

    pub(crate) fn stats(&self) -> RetrievalStats {
        self.lock().stats.clone()
    }

    pub(crate) fn force(&self, path: ForcePath) {
        self.lock().force = path;
    }

    /// The hits of a batch: on the device when it can run it and the model (or a forced path) says so,
    /// otherwise from the CPU index.
    pub(crate) fn retrieve_batch(&self, r: &Request<'_>, queries: &[f32], k: usize, lod: Lod) -> Result<Vec<Vec<Hit>>> {
        let (all, on_gpu) = match self.try_gpu(r, queries, k, lod)? {
            Some(all) => (all, true),
            None => (r.index.search_batch(queries, k, lod, &SearchParams::default())?, false),
        };
        let mut g = self.lock();
        g.stats.last_on_gpu = Some(on_gpu);
        let n = all.len() as u64;
        if on_gpu {
            g.stats.gpu_queries += n
        } else {
            g.stats.cpu_queries += n
        }
        Ok(all)
    }

    /// The device's answer, or `None` where the CPU should answer (and will report any bad input).
    fn try_gpu(&self, r: &Request<'_>, queries: &[f32], k: usize, lod: Lod) -> Result<Option<Vec<Vec<Hit>>>> {
        if !r.compute.is_gpu() || !matches!(lod, Lod::Rerank | Lod::Exact) || k == 0 || k > MAX_K {
            return Ok(None);
        }
        let force = self.lock().force;
        if force == ForcePath::Cpu {
            return Ok(None);
        }
        let Some(prepared) = prepare(r.index, queries) else { return Ok(None) };
        let b = prepared.len() / r.index.dim();
        let Some(resident) = self.resident(r)? else { return Ok(None) };
        let nprobe = match lod {
            Lod::Exact => resident.ivf.n_lists(),
            _ => r.index.default_nprobe().clamp(1, resident.ivf.n_lists()),
        };
        if force == ForcePath::Model {
            let known = self.lock().stats.models.iter().find(|(l, _)| *l == lod).map(|(_, m)| *m);
            let model = match known {
                Some(m) => m,
                None => match measure(r, &resident, lod, nprobe) {
                    Ok(m) => {
                        tracing::debug!("m2m: retrieval cost model for {lod:?}: {m:?}");
                        self.lock().stats.models.push((lod, m));
                        m
                    }
                    Err(e) => return self.failed(r.device, e).map(|()| None),
                },
            };
            if !model.gpu_wins(b) {
                return Ok(None);
            }
        }
        let found = match r.compute.ivf_search(&prepared, &resident.ivf, r.index.metric(), nprobe, k) {
            Ok(found) => found,
            Err(e) => return self.failed(r.device, e.into()).map(|()| None),
        };
        let hits = found
            .iter()
            .map(|list| list.iter().map(|&(row, score)| Hit { id: resident.ids[row as usize], score }).collect())
            .collect();
        Ok(Some(hits))
    }

    /// A device failure: the caller's error with `Device::Vulkan`; with `Auto`, one log line and the
    /// CPU from now until the index changes.
    fn failed(&self, device: Device, e: Error) -> Result<()> {
        if device == Device::Vulkan {
            return Err(e);
        }
        tracing::info!("m2m: device retrieval off until the index changes ({e}); the CPU answers");
        self.lock().state = State::Off;
        Ok(())
    }

    /// The lists in device memory, uploaded on first use (`None`: off).
    fn resident(&self, r: &Request<'_>) -> Result<Option<Arc<Resident>>> {
        let mut g = self.lock();
        match &g.state {
            State::Ready(res) => return Ok(Some(Arc::clone(res))),
            State::Off => return Ok(None),
            State::Unbuilt => {}
        }
        match upload(r) {
            Ok(res) => {
                let res = Arc::new(res);
                g.state = State::Ready(Arc::clone(&res));
                Ok(Some(res))
            }
            Err(e) => {
                drop(g);
                self.failed(r.device, e).map(|()| None)
            }
        }
    }
}

/// The queries as the index compares them (unit rows for cosine), or `None` when one is malformed (the
/// CPU index then reports it with its row).
fn prepare(index: &Index, queries: &[f32]) -> Option<Vec<f32>> {
    let dim = index.dim();
    if queries.is_empty() || !queries.len().is_multiple_of(dim) || queries.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut out = queries.to_vec();
    if index.metric() == Metric::Cosine {
        for row in out.chunks_exact_mut(dim) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !(n.is_finite() && n > 0.0) {
                return None;
            }
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    Some(out)
}

/// Gathers the index's lists and uploads them, within the hot tier's budget.
fn upload(r: &Request<'_>) -> Result<Resident> {
    let (index, dim) = (r.index, r.index.dim());
    let n_lists = index.n_lists();
    let rows: usize = (0..n_lists).map(|l| index.list_ids(l).len()).sum();
    let bytes = ivf_bytes(dim, n_lists, rows);
    if bytes > r.hot_budget_bytes {
        return Err(Error::Config {
            field: "hot_budget_bytes",
            reason: format!(
                "the index's lists take {bytes} bytes of device memory, over the budget {}",
                r.hot_budget_bytes
            ),
        });
    }
    let mut offsets = Vec::with_capacity(n_lists + 1);
    let mut ids = Vec::with_capacity(rows);
    let mut vectors = Vec::with_capacity(rows * dim);
    offsets.push(0u32);
    for l in 0..n_lists {
        ids.extend_from_slice(index.list_ids(l));
        vectors.extend_from_slice(index.list_vectors(l));
        offsets.push(u32::try_from(ids.len()).map_err(|_| Error::Config {
            field: "device",
            reason: format!("{} rows do not fit the device's 32-bit row numbers", ids.len()),
        })?);
    }
    let lists = IvfLists { dim, centroids: index.list_centroids(), offsets: &offsets, vectors: &vectors };
    Ok(Resident { ivf: r.compute.ivf_upload(&lists)?, ids })
}

/// Times both paths on up to [`MODEL_QUERIES`] member vectors (fewer for the CPU's exact scan): the
/// device on 1 and on all of them (best of two each, after a warm-up), the CPU on its batch search.
fn measure(r: &Request<'_>, res: &Resident, lod: Lod, nprobe: usize) -> Result<CostModel> {
    let (index, dim) = (r.index, r.index.dim());
    let mut sample = Vec::with_capacity(MODEL_QUERIES * dim);
    for l in 0..index.n_lists() {
        let v = index.list_vectors(l);
        sample.extend_from_slice(&v[..v.len().min(dim)]);
        if sample.len() >= MODEL_QUERIES * dim {
            break;
        }
    }
    let m = sample.len() / dim;
    let gpu = |rows: usize| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let t = Instant::now();
            r.compute.ivf_search(&sample[..rows * dim], &res.ivf, index.metric(), nprobe, 10.min(MAX_K))?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    gpu(1)?;
    let (t1, tm) = (gpu(1)?, gpu(m)?);
    let per = if m > 1 { ((tm - t1) / (m - 1) as f64).max(0.0) } else { 0.0 };
    let cpu_rows = if lod == Lod::Exact { m.min(8) } else { m };
    let t = Instant::now();
    index.search_batch(&sample[..cpu_rows * dim], 10, lod, &SearchParams::default())?;
    let cpu = t.elapsed().as_secs_f64() / cpu_rows as f64;
    Ok(CostModel { gpu_fixed_s: (t1 - per).max(0.0), gpu_per_query_s: per, cpu_per_query_s: cpu })
}

#[cfg(test)]
mod tests {
    use super::CostModel;

    #[test]
    fn the_device_wins_only_past_the_crossover_batch() {
        // 1 ms per batch plus 10 us per query on the device against 100 us per query on the CPU: the
        // device wins from 12 queries (1 + 0.12 < 1.2 ms) and not at 11 (1.11 > 1.1 ms).
        let m = CostModel { gpu_fixed_s: 1e-3, gpu_per_query_s: 1e-5, cpu_per_query_s: 1e-4 };
        assert!(!m.gpu_wins(1));
        assert!(!m.gpu_wins(11));
        assert!(m.gpu_wins(12));
        assert!(m.gpu_wins(10_000));
        let slower = CostModel { gpu_per_query_s: 2e-4, ..m };
        assert!(!slower.gpu_wins(1_000_000));
    }
}
