//! The streaming build: an index over more rows than RAM may hold at once.
//!
//! [`Index::build_streaming`] trains the two-level k-means tree on a seeded sample (through
//! [`Index::build`], so the same k-means, splits, refinement and quantiser), then routes every row to its
//! fine cluster in chunks (pass 1: one `u32` per row is kept), then writes the rows out cluster after
//! cluster in windows of consecutive clusters whose rows fit the budget, each window one more pass over
//! the source: the window's rows are placed, coded, handed to the caller's sink in cluster order and
//! dropped. What stays in RAM is what the index keeps anyway (ids, codes, centroids) plus that cluster
//! number per row; full vectors are held at most [`StreamConfig::budget_rows`] at a time
//! ([`StreamReport::peak_rows_held`] counts them). The exact neighbours of the calibration rows are found
//! in the same windows, so calibrating the result ([`Index::calibrate_with`]) needs no exact scan.
//!
//! When every row fits the budget (with the copies [`Index::build`] makes), the rows are read once and
//! built by [`Index::build`] itself: the result is the in-memory build's index, bit for bit.
//!
//! It does no IO: the caller's [`RowSource`] reads and its sink writes. Every row is checked in pass 1,
//! before the sink is first called, so a bad row leaves nothing written.

use rand::{SeedableRng, rngs::StdRng};
use rayon::prelude::*;

use crate::index::{
    CALIBRATION_QUERIES, Cluster, Index, IndexConfig, IndexParts, REFINE_COARSE, cluster_counts, prepare_rows,
    push_columns, representative_of, with_row,
};
use crate::kernels::{dot, dots, dots_many};
use crate::{Error, Metric};

/// Where [`Index::build_streaming`] reads its rows: a fixed number of rows that it may read several
/// times, a chunk or a single row at a time, in any order.
pub trait RowSource {
    /// The error of a failed read; the build's own errors convert into it.
    type Error: From<Error>;

    /// Number of rows.
    fn rows(&self) -> usize;

    /// Copies rows `start..start + out.len() / dim` into `out` as [`Index::build`] takes them (raw: the
    /// build normalises for cosine and checks every value).
    fn read(&mut self, start: usize, out: &mut [f32]) -> Result<(), Self::Error>;
}

/// How much of its input [`Index::build_streaming`] may hold. Defaults: a budget of 1,048,576 rows,
/// chunks of 4,096 rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// The most full vectors held at once (the training sample with the copies the tree's k-means makes,
    /// or a window of clusters plus one chunk). Ids, codes and centroids, which the index keeps anyway,
    /// are not counted, nor the one cluster number per row of pass 1.
    pub budget_rows: usize,
    /// Rows per read of a pass over the source.
    pub chunk_rows: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { budget_rows: 1 << 20, chunk_rows: 4096 }
    }
}

impl StreamConfig {
    /// A budget of `budget_rows` full vectors.
    pub fn budget_rows(mut self, rows: usize) -> Self {
        self.budget_rows = rows;
        self
    }

    /// Rows per read.
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows;
        self
    }
}

/// What a streaming build did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Rows the tree was trained on (every row when they fit the budget).
    pub sample_rows: usize,
    /// Windows of clusters written (0 when the rows fit the budget and were built in one piece).
    pub windows: usize,
    /// Passes over the source (sample reads count as one).
    pub passes: usize,
    /// The most full vectors held at once, counted as the budget counts them.
    pub peak_rows_held: usize,
    /// The most rows one read asked for.
    pub largest_read: usize,
}

/// The calibration rows of a streaming build with their exact neighbours, found during the build; hand
/// it to [`Index::calibrate_with`] once the index reads its vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    k: usize,
    queries: Vec<f32>,
    own: Vec<u64>,
    truth: Vec<Vec<u64>>,
}

/// The result of [`Index::build_streaming`].
#[derive(Clone, Debug)]
pub struct StreamBuilt {
    /// The index's parts without any full vector (ids, codes and norms per cluster): with the rows the
    /// sink received, in that order, [`Index::from_cold_parts`] makes the index.
    pub parts: IndexParts,
    /// Present when the defaults are still to be calibrated ([`Index::calibrate_with`]); `None` when the
    /// build calibrated them itself (rows within the budget) or was told not to (`target_recall` 0).
    pub calibration: Option<Calibration>,
    /// What the build did.
    pub report: StreamReport,
}

/// Copies of its rows [`Index::build`] holds at its peak, at most: the rows given, their prepared copy,
/// the per-partition copies of the fine k-means, the clusters' vectors and their bf16 halves.
const BUILD_COPIES: usize = 5;

/// Rows whose neighbours are scored against the calibration queries at once.
const TRUTH_BLOCK: usize = 1024;

/// The full vectors held, and the most held at once.
#[derive(Default)]
struct Held {
    now: usize,
    peak: usize,
}

impl Held {
    fn take(&mut self, rows: usize) {
        self.now += rows;
        self.peak = self.peak.max(self.now);
    }

    fn give(&mut self, rows: usize) {
        self.now -= rows;
    }
}

/// Reads rows `start..start + out.len() / dim`, counting the read.
fn read<S: RowSource>(
    source: &mut S,
    start: usize,
    out: &mut [f32],
    dim: usize,
    report: &mut StreamReport,
) -> Result<(), S::Error> {
    report.largest_read = report.largest_read.max(out.len() / dim);
    source.read(start, out)
}

/// The routing tables of a trained tree: what pass 1 needs, without the sample's members.
struct Router {
    dim: usize,
    coarse: Vec<f32>,
    coarse_bias: Vec<f32>,
    fine: Vec<f32>,
    fine_bias: Vec<f32>,
    children: Vec<Vec<u32>>,
}

impl Router {
    /// The best fine centroid of a prepared row among the children of its `REFINE_COARSE` best coarse
    /// centroids (as the build's refinement assigns rows).
    fn route(&self, x: &[f32], cs: &mut Vec<f32>, order: &mut Vec<u32>) -> u32 {
        let dim = self.dim;
        cs.resize(self.coarse_bias.len(), 0.0);
        dots(x, &self.coarse, cs);
        cs.iter_mut().zip(&self.coarse_bias).for_each(|(v, b)| *v += b);
        order.clear();
        order.extend((0..cs.len() as u32).filter(|&c| !self.children[c as usize].is_empty()));
        let take = REFINE_COARSE.min(order.len());
        if take == 0 {
            return 0;
        }
        order.select_nth_unstable_by(take - 1, |&a, &b| cs[b as usize].total_cmp(&cs[a as usize]));
        let mut best = (f32::NEG_INFINITY, u32::MAX);
        for &c in &order[..take] {
            for &f in &self.children[c as usize] {
                let v = dot(x, &self.fine[f as usize * dim..][..dim]) + self.fine_bias[f as usize];
                if v > best.0 || (v == best.0 && f < best.1) {
                    best = (v, f);
                }
            }
        }
        if best.1 == u32::MAX { 0 } else { best.1 }
    }
}

fn bias(metric: Metric, v: &[f32]) -> f32 {
    if metric == Metric::L2 { -0.5 * dot(v, v) } else { 0.0 }
}

/// The `k` best (score, id) of one query, best first.
fn offer(top: &mut Vec<(f32, u64)>, k: usize, score: f32, id: u64) {
    let better = |a: &(f32, u64), b: &(f32, u64)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    if top.len() == k && !better(&(score, id), &top[k - 1]) {
        return;
    }
    let at = top.partition_point(|e| better(e, &(score, id)));
    top.insert(at, (score, id));
    top.truncate(k);
}

impl Index {
    /// Builds an index over the rows of `source` (with `ids`, one per row) holding at most
    /// `stream.budget_rows` full vectors at a time; each cluster's full vectors are handed to `sink`,
    /// cluster after cluster, in the order of the returned parts' members (see the module's docs).
    ///
    /// Errors: those of [`Index::build`] (with the row of the whole source), the source's and the sink's
    /// errors, and [`Error::InvalidConfig`] for a budget that cannot hold one row per fine cluster three
    /// times over, or a zero chunk. No row is handed to the sink before every row has been read and
    /// checked.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m_index::{Error, Index, IndexConfig, Lod, RowSource, SearchParams, StreamConfig};
    ///
    /// struct Rows(Vec<f32>, usize);
    /// impl RowSource for Rows {
    ///     type Error = Error;
    ///     fn rows(&self) -> usize { self.0.len() / self.1 }
    ///     fn read(&mut self, start: usize, out: &mut [f32]) -> Result<(), Error> {
    ///         out.copy_from_slice(&self.0[start * self.1..][..out.len()]);
    ///         Ok(())
    ///     }
    /// }
    /// let dim = 8;
    /// // Pseudo-random values (a multiplicative hash of the position).
    /// let data: Vec<f32> = (0..3_000 * dim as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 16_777_216.0 - 0.5).collect();
    /// let ids: Vec<u64> = (0..3_000).collect();
    /// let mut rows = Vec::new();
    /// // 50 fine clusters trained on at most 175 sampled rows, then written in windows of 875 rows.
    /// let config = IndexConfig { n_fine: Some(50), ..IndexConfig::default() };
    /// let stream = StreamConfig::default().budget_rows(1_000).chunk_rows(256);
    /// let built = Index::build_streaming(&config, dim, &ids, &mut Rows(data.clone(), dim), &stream, |r| {
    ///     rows.extend_from_slice(r);
    ///     Ok(())
    /// })?;
    /// assert!(built.report.peak_rows_held <= 1_000 && built.report.windows > 1);
    /// let mut index = Index::from_cold_parts(built.parts, m2m_index::ColdRows::new(rows))?;
    /// if let Some(cal) = &built.calibration {
    ///     index.calibrate_with(0.95, cal)?;
    /// }
    /// // The rows the sink received are the index's vectors: a row is its own exact best match.
    /// let p = SearchParams::default();
    /// assert_eq!(index.search(&data[5 * dim..6 * dim], 1, Lod::Exact, &p)?[0].id, 5);
    /// assert_eq!(index.search(&data[5 * dim..6 * dim], 10, Lod::Rerank, &p)?.len(), 10);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn build_streaming<S: RowSource>(
        config: &IndexConfig,
        dim: usize,
        ids: &[u64],
        source: &mut S,
        stream: &StreamConfig,
        mut sink: impl FnMut(&[f32]) -> Result<(), S::Error>,
    ) -> Result<StreamBuilt, S::Error> {
        config.check()?;
        if dim == 0 {
            return Err(Error::InvalidConfig { what: "dim", reason: "must be at least 1".into() }.into());
        }
        if stream.chunk_rows == 0 {
            return Err(Error::InvalidConfig { what: "chunk_rows", reason: "must be at least 1".into() }.into());
        }
        let n = source.rows();
        if n == 0 {
            return Err(Error::EmptyBuild.into());
        }
        if ids.len() != n {
            return Err(Error::IdCount { ids: ids.len(), rows: n }.into());
        }
        let mut report = StreamReport::default();
        let mut held = Held::default();

        // Everything within the budget: the in-memory build itself, its vectors handed out after.
        if n.saturating_mul(BUILD_COPIES) <= stream.budget_rows {
            held.take(n * BUILD_COPIES);
            let mut all = vec![0.0f32; n * dim];
            for start in (0..n).step_by(stream.chunk_rows) {
                let rows = stream.chunk_rows.min(n - start);
                read(source, start, &mut all[start * dim..(start + rows) * dim], dim, &mut report)?;
            }
            let index = Index::build(config, dim, &all, ids)?;
            drop(all);
            for f in 0..index.n_fine() {
                sink(index.cluster_vectors(f))?;
            }
            let mut parts = index.p;
            for cl in &mut parts.clusters {
                cl.vectors = Vec::new();
                cl.bf16 = Vec::new();
            }
            report.sample_rows = n;
            report.passes = 1;
            report.peak_rows_held = held.peak;
            return Ok(StreamBuilt { parts, calibration: None, report });
        }

        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateId { id: w[0] }.into());
        }
        drop(sorted);
        let metric = config.metric;
        let (n_fine, n_coarse) = cluster_counts(config, n);
        let chunk = stream.chunk_rows.min(stream.budget_rows / 8).max(1);
        // The training sample, with the copies the tree's k-means makes of it, and one chunk.
        let most = stream.budget_rows.saturating_sub(chunk) / BUILD_COPIES;
        if most < 3 * n_fine {
            return Err(Error::InvalidConfig {
                what: "budget_rows",
                reason: format!(
                    "{} rows cannot train {n_fine} fine clusters on 3 rows each (with the build's {BUILD_COPIES} copies)",
                    stream.budget_rows
                ),
            }
            .into());
        }
        // Calibration rows (as `Index::build` holds them out): never trained on.
        let calibrate = config.target_recall > 0.0 && n > 2 * CALIBRATION_QUERIES;
        let held_rows = crate::index::calibration_rows(config, n);
        let want = config.train_per_centroid.saturating_mul(n_fine).min(most).min(n - held_rows.len());
        let sample: Vec<usize> = {
            let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5A3F_1E5A_3B1E);
            let mut rows = rand::seq::index::sample(&mut rng, n, (want + held_rows.len()).min(n)).into_vec();
            rows.retain(|r| held_rows.binary_search(r).is_err());
            rows.truncate(want);
            rows.sort_unstable();
            rows
        };

        // Training: the in-memory build over the sample, with the counts of the whole set; only its tree,
        // quantiser and codebook are kept.
        held.take(sample.len() * BUILD_COPIES);
        let mut data = vec![0.0f32; sample.len() * dim];
        for (i, &r) in sample.iter().enumerate() {
            read(source, r, &mut data[i * dim..(i + 1) * dim], dim, &mut report)?;
        }
        report.passes += 1;
        let sample_ids: Vec<u64> = sample.iter().map(|&r| ids[r]).collect();
        let train = IndexConfig {
            n_fine: Some(n_fine),
            n_coarse: Some(n_coarse),
            target_recall: 0.0,
            exact_prefilter: false,
            ..config.clone()
        };
        let tree = Index::build(&train, dim, &data, &sample_ids).map_err(|e| match e {
            // A bad sampled row is reported at its row of the source.
            Error::NonFinite { row, .. } | Error::ZeroNorm { row } => with_row(e, sample[row]),
            other => other,
        })?;
        drop((data, sample_ids));
        held.give(sample.len() * BUILD_COPIES);
        report.sample_rows = sample.len();
        let router = Router {
            dim,
            coarse_bias: tree.p.coarse.chunks_exact(dim).map(|c| bias(metric, c)).collect(),
            fine_bias: tree.p.fine.chunks_exact(dim).map(|c| bias(metric, c)).collect(),
            coarse: tree.p.coarse.clone(),
            fine: tree.p.fine.clone(),
            children: tree.p.children.clone(),
        };
        let k_fine = router.fine.len() / dim;
        let mut parts = IndexParts { clusters: vec![Cluster::default(); k_fine], ..tree.hollow_parts() };
        drop(tree);
        parts.config = config.clone();

        // Pass 1: every row checked and routed; the calibration rows kept.
        held.take(chunk);
        let mut buf = vec![0.0f32; chunk * dim];
        let mut assign = vec![0u32; n];
        let mut queries = Vec::with_capacity(held_rows.len() * dim);
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let raw = &mut buf[..rows * dim];
            read(source, start, raw, dim, &mut report)?;
            let prepared = prepare_rows(metric, raw, dim).map_err(|e| match e {
                Error::NonFinite { row, .. } | Error::ZeroNorm { row } => with_row(e, start + row),
                other => other,
            })?;
            prepared
                .par_chunks(dim)
                .zip(assign[start..start + rows].par_iter_mut())
                .for_each_init(|| (Vec::new(), Vec::new()), |(cs, order), (x, a)| *a = router.route(x, cs, order));
            let lo = held_rows.partition_point(|&r| r < start);
            let hi = held_rows.partition_point(|&r| r < start + rows);
            for &r in &held_rows[lo..hi] {
                queries.extend_from_slice(&prepared[(r - start) * dim..][..dim]);
            }
        }
        report.passes += 1;
        let mut sizes = vec![0usize; k_fine];
        assign.iter().for_each(|&f| sizes[f as usize] += 1);

        // Windows of consecutive clusters within the budget (a cluster larger than it is a window alone).
        let room = stream.budget_rows.saturating_sub(chunk).max(1);
        let mut windows: Vec<(usize, usize)> = Vec::new();
        let mut f = 0;
        while f < k_fine {
            let (lo, mut rows) = (f, 0usize);
            while f < k_fine && (f == lo || rows + sizes[f] <= room) {
                rows += sizes[f];
                f += 1;
            }
            windows.push((lo, f));
        }
        let kq = 11; // k = 10 neighbours besides the query itself, as `Index::calibrate` asks for.
        let own: Vec<u64> = held_rows.iter().map(|&r| ids[r]).collect();
        let mut tops: Vec<Vec<(f32, u64)>> = vec![Vec::new(); own.len()];
        let l2 = metric == Metric::L2;
        for &(lo, hi) in &windows {
            let rows_in: usize = sizes[lo..hi].iter().sum();
            held.take(rows_in);
            let mut starts = Vec::with_capacity(hi - lo + 1);
            let mut at = 0usize;
            for &s in &sizes[lo..hi] {
                starts.push(at);
                at += s;
            }
            starts.push(at);
            let mut fill = starts.clone();
            let mut window = vec![0.0f32; rows_in * dim];
            let mut window_ids = vec![0u64; rows_in];
            for start in (0..n).step_by(chunk) {
                let rows = chunk.min(n - start);
                let mine = assign[start..start + rows].iter().any(|&a| (lo..hi).contains(&(a as usize)));
                if !mine {
                    continue;
                }
                let raw = &mut buf[..rows * dim];
                read(source, start, raw, dim, &mut report)?;
                for (i, x) in raw.chunks_exact(dim).enumerate() {
                    let a = assign[start + i] as usize;
                    if !(lo..hi).contains(&a) {
                        continue;
                    }
                    let slot = fill[a - lo];
                    fill[a - lo] += 1;
                    let dst = &mut window[slot * dim..(slot + 1) * dim];
                    if metric == Metric::Cosine {
                        m2m_splat::normalize_into(x, dst, start + i).map_err(Error::from)?;
                    } else {
                        dst.copy_from_slice(x);
                    }
                    window_ids[slot] = ids[start + i];
                }
            }
            report.passes += 1;
            let clusters: Vec<Cluster> = (lo..hi)
                .into_par_iter()
                .map(|f| {
                    let (s, e) = (starts[f - lo], starts[f - lo + 1]);
                    let mut cl = Cluster::default();
                    for (x, &id) in window[s * dim..e * dim].chunks_exact(dim).zip(&window_ids[s..e]) {
                        push_columns(&parts, f, &mut cl, id, x);
                    }
                    cl.representative = representative_of(&parts, f, &window[s * dim..e * dim], &window_ids[s..e]);
                    cl
                })
                .collect();
            for (f, cl) in (lo..hi).zip(clusters) {
                parts.clusters[f] = cl;
            }
            if !own.is_empty() {
                let found: Vec<Vec<Vec<(f32, u64)>>> = window
                    .par_chunks(TRUTH_BLOCK * dim)
                    .zip(window_ids.par_chunks(TRUTH_BLOCK))
                    .map(|(block, block_ids)| {
                        let m = block_ids.len();
                        let mut scores = vec![0.0f32; own.len() * m];
                        dots_many(&queries, block, dim, &mut scores);
                        let mut local = vec![Vec::with_capacity(kq); own.len()];
                        for (q, row) in scores.chunks_exact(m).enumerate() {
                            for (j, (&s, &id)) in row.iter().zip(block_ids).enumerate() {
                                let s = if l2 {
                                    s - 0.5 * dot(&block[j * dim..][..dim], &block[j * dim..][..dim])
                                } else {
                                    s
                                };
                                offer(&mut local[q], kq, s, id);
                            }
                        }
                        local
                    })
                    .collect();
                for local in found {
                    for (top, l) in tops.iter_mut().zip(local) {
                        for (s, id) in l {
                            offer(top, kq, s, id);
                        }
                    }
                }
            }
            sink(&window)?;
            drop((window, window_ids));
            held.give(rows_in);
        }
        report.windows = windows.len();
        report.peak_rows_held = held.peak;

        let clusters = parts.clusters.len().max(1);
        parts.target_cluster_size = n as f32 / clusters as f32;
        parts.default_nprobe = (clusters / 16).max(8);
        parts.default_rerank = 40;
        parts.calibration_ids = own.clone();
        let calibration = calibrate.then(|| Calibration {
            k: kq - 1,
            queries,
            truth: tops
                .into_iter()
                .zip(&own)
                .map(|(t, &me)| t.into_iter().map(|(_, id)| id).filter(|&id| id != me).take(kq - 1).collect())
                .collect(),
            own,
        });
        Ok(StreamBuilt { parts, calibration, report })
    }

    /// Sets the default nprobe and re-rank depth as [`calibrate`](Self::calibrate) does, on the
    /// calibration rows and exact neighbours a streaming build found.
    ///
    /// Errors: those of [`calibrate`](Self::calibrate); [`Error::DimensionMismatch`] for the calibration
    /// of another index's dimension.
    pub fn calibrate_with(&mut self, target: f32, cal: &Calibration) -> crate::Result<(usize, f32)> {
        let dim = self.dim();
        if !cal.queries.len().is_multiple_of(dim) || cal.queries.len() / dim != cal.own.len() {
            return Err(Error::DimensionMismatch { expected: dim, got: cal.queries.len() / cal.own.len().max(1) });
        }
        self.calibrate_on(target, cal.k, &cal.queries, &cal.own, &cal.truth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColdRows, Lod, SearchParams};
    use rand::RngExt;

    /// A seeded mixture of `centres` Gaussian blobs in `dim` dimensions: `n` rows.
    fn mixture(n: usize, dim: usize, centres: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(7);
        let c: Vec<f32> = (0..centres * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let j = rng.random_range(0..centres);
            out.extend(c[j * dim..][..dim].iter().map(|&v| v + 0.6 * (rng.random::<f32>() - 0.5)));
        }
        out
    }

    /// Rows from a buffer, counting the rows each read asks for and failing where told.
    struct Rows {
        data: Vec<f32>,
        dim: usize,
        reads: usize,
        fail_at_read: Option<usize>,
    }

    impl RowSource for Rows {
        type Error = Error;
        fn rows(&self) -> usize {
            self.data.len() / self.dim
        }
        fn read(&mut self, start: usize, out: &mut [f32]) -> Result<(), Error> {
            self.reads += 1;
            if self.fail_at_read == Some(self.reads) {
                return Err(Error::InvalidConfig { what: "source", reason: "read failed".into() });
            }
            out.copy_from_slice(&self.data[start * self.dim..][..out.len()]);
            Ok(())
        }
    }

    fn rows(data: &[f32], dim: usize) -> Rows {
        Rows { data: data.to_vec(), dim, reads: 0, fail_at_read: None }
    }

    /// Builds streaming; returns the index over the rows the sink received (calibrated), the report and
    /// the largest piece the sink was handed.
    fn streamed(config: &IndexConfig, data: &[f32], dim: usize, stream: &StreamConfig) -> (Index, StreamReport, usize) {
        let ids: Vec<u64> = (0..(data.len() / dim) as u64).map(|i| 1_000 + 3 * i).collect();
        let mut got = Vec::new();
        let mut largest = 0;
        let built = Index::build_streaming(config, dim, &ids, &mut rows(data, dim), stream, |r| {
            largest = largest.max(r.len() / dim);
            got.extend_from_slice(r);
            Ok(())
        })
        .unwrap();
        let mut index = Index::from_cold_parts(built.parts, ColdRows::new(got)).unwrap();
        if let Some(cal) = &built.calibration {
            index.calibrate_with(config.target_recall, cal).unwrap();
        }
        (index, built.report, largest)
    }

    /// Recall@10 of LOD 2 at nprobe 8 and a re-rank depth of 40 (the same work for both indexes).
    fn recall(index: &Index, queries: &[f32], truth: &Index, dim: usize) -> f64 {
        let p = SearchParams { nprobe: 8, rerank: 40, ..SearchParams::default() };
        let mut found = 0;
        for q in queries.chunks_exact(dim) {
            let t: Vec<u64> =
                truth.search(q, 10, Lod::Exact, &SearchParams::default()).unwrap().iter().map(|h| h.id).collect();
            let got = index.search(q, 10, Lod::Rerank, &p).unwrap();
            found += got.iter().filter(|h| t.contains(&h.id)).count();
        }
        found as f64 / (queries.len() / dim * 10) as f64
    }

    /// Within the budget the result is the in-memory build's index: the same parts, the same rows in the
    /// same order, the same answers. Catches: a pass-through that reads rows at the wrong offset, hands
    /// the sink the clusters in another order, or keeps vectors in the returned parts.
    #[test]
    fn within_the_budget_it_is_the_in_memory_build() {
        let dim = 16;
        let data = mixture(1_500, dim, 20, 1);
        let ids: Vec<u64> = (0..1_500u64).map(|i| 1_000 + 3 * i).collect();
        let config = IndexConfig::default();
        let memory = Index::build(&config, dim, &data, &ids).unwrap();
        let stream = StreamConfig::default().budget_rows(1_500 * BUILD_COPIES).chunk_rows(100);
        let (index, report, _) = streamed(&config, &data, dim, &stream);
        assert_eq!((report.windows, report.sample_rows, report.largest_read), (0, 1_500, 100));
        // A cold index has no bf16 copies, so no exact prefilter (`from_cold_parts`).
        let mut want = memory.hollow_parts();
        want.config.exact_prefilter = false;
        assert_eq!(index.hollow_parts(), want);
        for f in 0..memory.n_fine() {
            assert_eq!(index.parts().clusters[f].ids, memory.parts().clusters[f].ids);
            assert_eq!(index.parts().clusters[f].codes, memory.parts().clusters[f].codes);
            assert_eq!(index.cluster_vectors(f), memory.cluster_vectors(f));
        }
        let p = SearchParams::default();
        for q in data.chunks_exact(dim).step_by(97) {
            assert_eq!(index.search(q, 10, Lod::Rerank, &p).unwrap(), memory.search(q, 10, Lod::Rerank, &p).unwrap());
        }
    }

    /// Beyond the budget: the rows held never exceed it (the windows the sink receives are counted here,
    /// not taken from the report), reads stay within a chunk, every row is indexed once with its own
    /// vector, and LOD 2 finds what the in-memory build finds, within 0.03 of its recall@10. The
    /// calibration from the build's own pass equals `calibrate`'s exact scan. Catches: windows sized
    /// without the chunk or past the budget, a row placed in another row's slot, truth found over the
    /// wrong rows or scores (another nprobe than the exact scan's), routing to a worse cluster.
    #[test]
    fn beyond_the_budget_it_holds_the_budget_and_finds_what_the_in_memory_build_finds() {
        let dim = 16;
        for metric in [Metric::Cosine, Metric::L2] {
            let n = 20_000;
            let data = mixture(n, dim, 300, 2);
            let queries = mixture(200, dim, 300, 3);
            // 40 fine clusters trained on 33 sampled rows each (a 5M-row build within 4 GiB trains on
            // about 60), in at least 3 windows.
            let config = IndexConfig { metric, n_fine: Some(40), ..IndexConfig::default() };
            let budget = 7_000;
            let stream = StreamConfig::default().budget_rows(budget).chunk_rows(256);
            let (mut index, report, largest) = streamed(&config, &data, dim, &stream);
            assert!(report.windows >= 3, "{report:?}");
            assert!(report.peak_rows_held <= budget, "{report:?}");
            assert!(largest + 256 <= budget, "a window of {largest} rows beside a chunk of 256");
            assert!(report.sample_rows * BUILD_COPIES + 256 <= budget, "{report:?}");
            assert!(report.largest_read <= 256, "{report:?}");
            assert_eq!(report.passes, 2 + report.windows);
            assert_eq!(index.len(), n);
            let prepared = prepare_rows(metric, &data, dim).unwrap();
            for r in (0..n).step_by(131) {
                let (f, pos) = index.locations.get(&(1_000 + 3 * r as u64)).copied().unwrap();
                assert_eq!(
                    &index.cluster_vectors(f as usize)[pos as usize * dim..][..dim],
                    &prepared[r * dim..][..dim]
                );
            }
            let ids: Vec<u64> = (0..n as u64).map(|i| 1_000 + 3 * i).collect();
            let memory = Index::build(&config, dim, &data, &ids).unwrap();
            let (a, b) = (recall(&index, &queries, &memory, dim), recall(&memory, &queries, &memory, dim));
            assert!(
                a >= b - 0.03,
                "{metric:?}: streamed {a} (nprobe {}), in memory {b} (nprobe {})",
                index.default_nprobe(),
                memory.default_nprobe()
            );
            let streamed_defaults = (index.default_nprobe(), index.default_rerank());
            index.calibrate(config.target_recall, 10).unwrap();
            assert_eq!((index.default_nprobe(), index.default_rerank()), streamed_defaults, "{metric:?}");
        }
    }

    /// A bad row anywhere (in the training sample or not) is reported at its row of the source before
    /// the sink is first called; a failing read or sink stops the build. Catches: rows coded without the
    /// pass-1 check (the sink would have been called), a row reported at its row in the chunk or sample.
    #[test]
    fn a_bad_row_or_a_failed_read_leaves_nothing_written() {
        let dim = 8;
        let n = 4_000;
        let clean = mixture(n, dim, 10, 4);
        let ids: Vec<u64> = (0..n as u64).collect();
        let stream = StreamConfig::default().budget_rows(1_000).chunk_rows(128);
        let config = IndexConfig { n_fine: Some(20), ..IndexConfig::default() };
        for (row, value) in [(0, f32::NAN), (n / 2 + 3, f32::INFINITY), (n - 1, 0.0), (1_234, 0.0)] {
            let mut data = clean.clone();
            if value == 0.0 {
                data[row * dim..(row + 1) * dim].fill(0.0);
            } else {
                data[row * dim + 5] = value;
            }
            let mut calls = 0;
            let err = Index::build_streaming(&config, dim, &ids, &mut rows(&data, dim), &stream, |_| {
                calls += 1;
                Ok(())
            })
            .unwrap_err();
            assert_eq!(calls, 0, "row {row}: the sink was called before the error");
            match err {
                Error::NonFinite { row: r, column: 5, .. } => assert_eq!(r, row),
                Error::ZeroNorm { row: r } => assert_eq!(r, row),
                other => panic!("row {row}: {other:?}"),
            }
        }
        // 174 single-row sample reads, then 32 chunks of pass 1, then the windows' chunks.
        for fail in [1, 190, 250] {
            let mut src = Rows { fail_at_read: Some(fail), ..rows(&clean, dim) };
            let mut calls = 0;
            let err = Index::build_streaming(&config, dim, &ids, &mut src, &stream, |_| {
                calls += 1;
                Ok(())
            });
            assert!(matches!(err, Err(Error::InvalidConfig { what: "source", .. })), "read {fail}: {err:?}");
            // Sample reads and pass 1 come before any window.
            if fail < 207 {
                assert_eq!(calls, 0);
            }
        }
        let err = Index::build_streaming(&config, dim, &ids, &mut rows(&clean, dim), &stream, |_| {
            Err(Error::InvalidConfig { what: "sink", reason: "disk full".into() })
        });
        assert!(matches!(err, Err(Error::InvalidConfig { what: "sink", .. })));
    }

    /// Input the build refuses before reading a row. Catches: duplicate ids accepted (two rows under one
    /// id), a budget that cannot train the clusters accepted.
    #[test]
    fn bad_ids_and_budgets_are_typed_errors() {
        let dim = 8;
        let data = mixture(2_000, dim, 10, 5);
        let stream = StreamConfig::default().budget_rows(600).chunk_rows(64);
        let config = IndexConfig::default();
        let mut ids: Vec<u64> = (0..2_000).collect();
        ids[1_500] = 7;
        let err = Index::build_streaming(&config, dim, &ids, &mut rows(&data, dim), &stream, |_| Ok(()));
        assert!(matches!(err, Err(Error::DuplicateId { id: 7 })), "{err:?}");
        let err = Index::build_streaming(&config, dim, &ids[..10], &mut rows(&data, dim), &stream, |_| Ok(()));
        assert!(matches!(err, Err(Error::IdCount { ids: 10, rows: 2_000 })), "{err:?}");
        let ids: Vec<u64> = (0..2_000).collect();
        let tiny = StreamConfig::default().budget_rows(100).chunk_rows(64);
        let err = Index::build_streaming(&config, dim, &ids, &mut rows(&data, dim), &tiny, |_| Ok(()));
        assert!(matches!(err, Err(Error::InvalidConfig { what: "budget_rows", .. })), "{err:?}");
        let zero = StreamConfig::default().chunk_rows(0);
        let err = Index::build_streaming(&config, dim, &ids, &mut rows(&data, dim), &zero, |_| Ok(()));
        assert!(matches!(err, Err(Error::InvalidConfig { what: "chunk_rows", .. })), "{err:?}");
    }
}
