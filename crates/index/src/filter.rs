//! Filtered search: which rows a query may return ([`RowFilter`]), and the planner that searches under
//! that condition without losing recall.
//!
//! The index knows nothing of attributes: the layer above evaluates a filter expression over its columns
//! and hands the index a [`RowFilter`] over ids. This module does not evaluate expressions.
//!
//! # Plans
//!
//! A filtered search at LOD 1 or LOD 2 runs one of two plans ([`FilterPlan`]), chosen per query by a
//! cost model over the estimated selectivity `s` (the share of rows that match):
//!
//! * **In-cluster** ([`FilterPlan::InCluster`]): the fine clusters are probed in centroid order as an
//!   unfiltered search probes them, and only matching members become candidates (codes, then the exact
//!   re-rank at LOD 2). The first `nprobe` clusters are scored whole, matching or not; probing then goes
//!   on, in centroid order, until the next centroid's score trails the `depth`-th matching candidate by
//!   more than `reach`, the largest (member score - its centroid's score) seen so far: no member of that
//!   cluster, nor of any later one, is then expected to enter the candidates. Until `depth` matches are
//!   held, probing goes on. While every row probed matched, it stops where an unfiltered search stops,
//!   so a filter every row matches gives exactly the unfiltered search. Clusters without a match after
//!   the first `nprobe` cost a mask test only.
//!
//!   A second stop, the **count stop**, ends the walk sooner where the filter does not follow the data
//!   near the query: when the selectivity is known and the first `nprobe` clusters hold matches at no
//!   less than 0.7 times the filter's overall share, probing also ends once as many matching members
//!   were scored as those first clusters hold (times `widen`; at least `depth`), whichever stop comes
//!   first. Around such a query matches are spread as the filter's share says, so that many matching
//!   candidates serve the re-rank as the unfiltered search's candidates serve it; `reach`, a maximum
//!   over every cluster probed, keeps growing on such a walk (minilm70k at 50%: 219 clusters probed by
//!   the `reach` stop alone, 83 with both, at recall 0.987 and 0.967). Where the neighbourhood holds fewer matches than the share
//!   (a filter that follows the clusters, with the query's own cluster filtered out), only the `reach`
//!   stop applies: counting there stops before the nearest matches, which sit in clusters that rank
//!   low, are reached (the rule of an earlier round, which counted always, lost recall so).
//!
//!   Past the first `nprobe` clusters the walk keeps the centroid scores of the (f16) ranking, orders
//!   them a few at a time as it goes, and scores a probed cluster's centroid in f32 when it probes it;
//!   its stop tests add the ranking's error bound.
//! * **Exact scan** ([`FilterPlan::ExactScan`]): every matching row is scored (exactly at LOD 2 and
//!   Exact, by its code at LOD 1), through the index's id -> (cluster, position) map, which insert, delete
//!   and rebalance keep current. At LOD 2 its results equal the exact filtered truth.
//!
//! The model counts work in full-vector dot products: an in-cluster search ranks its share of the fine
//! centroids (one each), scores its matching candidates by code ([`CODE_COST`] each) and re-ranks its
//! depth (one each); an exact scan costs one per matching row. The cheaper plan runs. A filter asked
//! row by row pays about [`CHECK_COST`] more per row it asks about, which the model leaves out on
//! purpose: the plan is the one a resolved filter would get, so that a query gets the same answer
//! before and after its filter is resolved (the facade resolves a single query's filter at its second
//! use; with the check weighed, a first call took an exact scan where the later ones searched in
//! clusters, and some answers differed). The selectivity comes from, in order: the resolved filter (exact), the filter's
//! [`selectivity`](RowFilter::selectivity), the length of its [`matching_ids`](RowFilter::matching_ids),
//! and else the matching share of the rows of the first `nprobe` probed clusters (a sample that an
//! in-cluster search checks anyway; it then either goes on or turns into an exact scan).
//!
//! Every level has a defined meaning under a filter:
//!
//! * [`Lod::Centroids`] (LOD 0): the nearest fine clusters that hold a match, best first, scored by their
//!   centroid as unfiltered LOD 0 is; each gives one hit: its representative when that matches, else its
//!   matching member nearest the centroid. Plan [`FilterPlan::Centroids`].
//! * [`Lod::Codes`] (LOD 1): code estimates of matching rows only (in-cluster or exact scan).
//! * [`Lod::Rerank`] (LOD 2): LOD 1's matching candidates re-ranked exactly, or the exact scan.
//! * [`Lod::Exact`]: always the exact scan: the exact filtered truth.
//!
//! # Resolving a filter
//!
//! [`Index::search_batch_filtered`] resolves the filter once per batch into a bit per stored row (in
//! cluster order; from `matching_ids` through the id map when the filter has them, else by asking
//! `matches` of every row, in parallel), so that each query's per-row test is a bit test and a cluster
//! without a match is skipped in one step. A single [`Index::search_filtered`] asks `matches` only for
//! the members of the clusters it probes (or looks its `matching_ids` up), since resolving every row
//! would cost more than one query. A caller that searches one query at a time under one filter many
//! times resolves it once ([`Index::resolve_filter`], a [`ResolvedFilter`]) and searches under it
//! ([`Index::search_resolved`]): each call then runs as a batch's query does. A resolved filter is tied
//! to the index's rows: an insert, delete or rebalance makes it stale ([`Error::StaleFilter`]).
//!
//! Ids the filter names that are not in the index (deleted, or never added) are never returned.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::index::{Query, Scratch, with_row};
use crate::kernels::{dot_with, dots_with, sq4_dots_with, sq8_dots_with};
use crate::topk::{Entry, TopK};
use crate::{CodeKind, Error, Hit, Index, Lod, Metric, Result, SearchParams};

/// Cost of scoring one row by its code, in full-vector dot products (the plan's cost model).
pub const CODE_COST: f64 = 0.35;

/// Cost of asking a [`RowFilter`] about one row, in full-vector dot products (the plan's cost model).
pub const CHECK_COST: f64 = 0.5;

/// The in-cluster count stop is armed when the first `nprobe` clusters hold matching rows at no less
/// than this fraction of the filter's overall share (see the module documentation).
const NEAR_SHARE: f64 = 0.7;

/// Which rows a filtered search may return.
pub trait RowFilter: Sync {
    /// True when the row with this id may be returned.
    fn matches(&self, id: u64) -> bool;

    /// The matching ids, ascending, when the caller has them (from per-field indexes). Lets a planner
    /// scan exactly these rows when few match.
    fn matching_ids(&self) -> Option<&[u64]> {
        None
    }

    /// The fraction of rows that match, in `[0, 1]`, when the caller knows it.
    fn selectivity(&self) -> Option<f64> {
        None
    }
}

/// A set of ids, kept sorted: the plain [`RowFilter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdSet {
    ids: Vec<u64>,
    universe: usize,
}

impl IdSet {
    /// The set of `ids` (any order, duplicates allowed) out of `universe` rows (for the selectivity).
    pub fn new(mut ids: Vec<u64>, universe: usize) -> IdSet {
        ids.sort_unstable();
        ids.dedup();
        IdSet { ids, universe }
    }

    /// The ids, ascending.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }
}

impl RowFilter for IdSet {
    fn matches(&self, id: u64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    fn matching_ids(&self) -> Option<&[u64]> {
        Some(&self.ids)
    }

    fn selectivity(&self) -> Option<f64> {
        (self.universe > 0).then(|| (self.ids.len() as f64 / self.universe as f64).min(1.0))
    }
}

/// How a filtered search found its hits (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterPlan {
    /// Clusters probed in centroid order, only matching members scored, probing widened until enough
    /// matches were scored.
    #[default]
    InCluster,
    /// Every matching row scored.
    ExactScan,
    /// LOD 0: the nearest clusters holding a match, one matching member each.
    Centroids,
}

impl FilterPlan {
    /// The plan's name: `in-cluster`, `exact-scan` or `centroids`.
    pub fn name(self) -> &'static str {
        match self {
            FilterPlan::InCluster => "in-cluster",
            FilterPlan::ExactScan => "exact-scan",
            FilterPlan::Centroids => "centroids",
        }
    }
}

impl std::fmt::Display for FilterPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Knobs of a filtered search; the default chooses the plan and widens as the module documentation says.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterOptions {
    /// The plan at LOD 1 and 2: forced (`Some`) or chosen by the cost model (`None`, the default). LOD 0
    /// and Exact keep their own.
    pub plan: Option<FilterPlan>,
    /// Scales both in-cluster stops, `reach` and the count (see the module documentation): below 1
    /// probing stops sooner (faster, lower recall), above 1 later. Default 1.0. A filter every row matches gives the
    /// unfiltered search at any `widen`. Must be finite and positive.
    pub widen: f64,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions { plan: None, widen: 1.0 }
    }
}

impl From<Option<FilterPlan>> for FilterOptions {
    fn from(plan: Option<FilterPlan>) -> Self {
        FilterOptions { plan, ..FilterOptions::default() }
    }
}

/// What one filtered search did: the plan that ran and its work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterStats {
    /// The plan that produced the hits.
    pub plan: FilterPlan,
    /// The selectivity the planner used (see the module documentation for where it comes from).
    pub selectivity: f64,
    /// Fine clusters whose members were considered (in-cluster and LOD 0).
    pub clusters_probed: usize,
    /// Rows the filter was asked about during the search (0 when it was resolved up front).
    pub rows_checked: usize,
    /// Matching rows scored (by code or exactly).
    pub rows_scored: usize,
}

/// A filter resolved against one state of the index: a bit per member position, each cluster's bits
/// starting on a word of its own.
#[derive(Clone, Debug)]
struct Mask {
    words: Vec<u64>,
    /// First word of each cluster, then the total.
    start: Vec<usize>,
    /// Matching members per cluster.
    count: Vec<u32>,
    total: usize,
}

impl Mask {
    fn resolve(index: &Index, filter: &dyn RowFilter) -> Mask {
        let clusters = &index.p.clusters;
        let mut start = Vec::with_capacity(clusters.len() + 1);
        let mut at = 0usize;
        for cl in clusters {
            start.push(at);
            at += cl.len().div_ceil(64);
        }
        start.push(at);
        let mut words = vec![0u64; at];
        match filter.matching_ids() {
            // One id-map look-up per listed id beats asking about every row when the list is shorter.
            Some(ids) if ids.len() <= index.len() => {
                for id in ids {
                    if let Some(&(f, pos)) = index.locations.get(id) {
                        words[start[f as usize] + pos as usize / 64] |= 1 << (pos % 64);
                    }
                }
            }
            _ => {
                let mut rest = words.as_mut_slice();
                let mut parts = Vec::with_capacity(clusters.len());
                for (f, cl) in clusters.iter().enumerate() {
                    let (mine, tail) = rest.split_at_mut(start[f + 1] - start[f]);
                    parts.push((cl, mine));
                    rest = tail;
                }
                parts.into_par_iter().for_each(|(cl, mine)| {
                    for (pos, &id) in cl.ids.iter().enumerate() {
                        if filter.matches(id) {
                            mine[pos / 64] |= 1 << (pos % 64);
                        }
                    }
                });
            }
        }
        let count: Vec<u32> =
            (0..clusters.len()).map(|f| words[start[f]..start[f + 1]].iter().map(|w| w.count_ones()).sum()).collect();
        let total = count.iter().map(|&c| c as usize).sum();
        Mask { words, start, count, total }
    }

    fn positions(&self, f: usize, out: &mut Vec<u32>) {
        out.clear();
        for (w, &bits) in self.words[self.start[f]..self.start[f + 1]].iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                out.push((w * 64) as u32 + b.trailing_zeros());
                b &= b - 1;
            }
        }
    }
}

/// A [`RowFilter`] resolved once against one state of an index ([`Index::resolve_filter`]): a bit per
/// stored row, in cluster order, and the matching rows per cluster. Searching under it
/// ([`Index::search_resolved`], [`Index::search_batch_resolved`]) tests a row with one bit and skips a
/// cluster without a match in one step, and costs nothing to set up: what a batch does once, made
/// reusable across calls, for a caller that searches many times under one filter (the facade keeps the
/// filters it resolved).
///
/// It is tied to the rows of the index it was resolved against: an insert, delete or rebalance of that
/// index moves rows, and a search under it then returns [`Error::StaleFilter`] (check with
/// [`Index::is_current`]). A clone of that index, unchanged, takes it. Its size is one bit per row
/// (each fine cluster's bits starting on a 64-bit word) plus 12 bytes per fine cluster
/// ([`heap_bytes`](Self::heap_bytes)).
#[derive(Clone, Debug)]
pub struct ResolvedFilter {
    mask: Mask,
    /// The `Index::stamp` it was resolved against.
    stamp: u64,
}

impl ResolvedFilter {
    /// Rows of the index that match.
    pub fn len(&self) -> usize {
        self.mask.total
    }

    /// Whether no row of the index matches.
    pub fn is_empty(&self) -> bool {
        self.mask.total == 0
    }

    /// Bytes on the heap (for a cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.mask.words.capacity() * 8 + self.mask.start.capacity() * 8 + self.mask.count.capacity() * 4
    }
}

/// Where a search learns which rows match: a resolved mask, or the filter asked row by row.
#[derive(Clone, Copy)]
enum Source<'a> {
    Mask(&'a Mask),
    Lazy(&'a dyn RowFilter),
}

/// Per-query working memory of a filtered search.
#[derive(Default)]
struct FilterScratch {
    s: Scratch,
    pos: Vec<u32>,
    buf: Vec<f32>,
    est: Vec<i32>,
    gather: Vec<u8>,
    rows: Vec<(u32, u32)>,
    visited: Vec<bool>,
}

/// Past this k a one-query search under a resolved filter gives its per-thread buffers back (see
/// `search_resolved`).
const KEEP_SCRATCH_K: usize = 1024;

thread_local! {
    /// The working memory of one-query searches under a resolved filter, kept per thread: a call then
    /// allocates nothing but its hits (the ranking of ~`nprobe / s` centroids and the candidates'
    /// buffers are the size of a query's work; with a fresh set per call the resolved single query ran
    /// at 0.89-1.04x of the batch's QPS per CPU second, with this one at 0.94-1.03x: two interleaved
    /// rounds on minilm70k, loaded machine, issue 19's notes).
    static FILTER_SCRATCH: std::cell::RefCell<FilterScratch> = std::cell::RefCell::new(FilterScratch::default());
}

/// The code-scoring state of one prepared query (see `scan_codes` in index.rs: the same estimate).
struct Codes {
    q_min: f32,
    inv: f32,
    stride: usize,
    kind: CodeKind,
    /// PQ4 sub-spaces (0 for scalar codes).
    pq_m: usize,
}

fn check_options(o: FilterOptions) -> Result<FilterOptions> {
    if !(o.widen.is_finite() && o.widen > 0.0) {
        return Err(Error::InvalidConfig {
            what: "widen",
            reason: format!("{}: must be finite and positive", o.widen),
        });
    }
    Ok(o)
}

impl Index {
    /// Searches one query among the rows `filter` matches. Hits are sorted best first; fewer than `k`
    /// when fewer rows match. The plan is chosen per query (see the module documentation).
    ///
    /// Errors: those of [`Index::search`].
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &dyn RowFilter,
    ) -> Result<Vec<Hit>> {
        Ok(self.search_filtered_planned(query, k, lod, params, filter, None)?.0)
    }

    /// [`search_filtered`](Self::search_filtered) with [`FilterOptions`] (or just the plan: `Some` forced,
    /// `None` chosen), returning what the search did beside the hits.
    ///
    /// Errors: those of [`Index::search`]; [`Error::InvalidConfig`] for a `widen` that is not finite and
    /// positive.
    pub fn search_filtered_planned(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &dyn RowFilter,
        options: impl Into<FilterOptions>,
    ) -> Result<(Vec<Hit>, FilterStats)> {
        let options = check_options(options.into())?;
        self.check_filtered(query.len(), k)?;
        self.filtered_one(query, k, lod, params, Source::Lazy(filter), &options, &mut FilterScratch::default())
    }

    /// Resolves `filter` against this index's rows for [`search_resolved`](Self::search_resolved) and
    /// [`search_batch_resolved`](Self::search_batch_resolved): one id-map look-up per listed id when the
    /// filter has [`matching_ids`](RowFilter::matching_ids), else `matches` asked about every row (in
    /// parallel). Ids the filter names that the index does not hold are left out.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m_index::{IdSet, Index, IndexConfig, Lod, SearchParams};
    /// let dim = 8;
    /// let data: Vec<f32> = (0..2_000 * dim).map(|i| ((i * 7_919 % 211) as f32 - 105.0) / 50.0).collect();
    /// let ids: Vec<u64> = (0..2_000).collect();
    /// let mut index = Index::build(&IndexConfig::default(), dim, &data, &ids)?;
    /// let even = index.resolve_filter(&IdSet::new((0..2_000).step_by(2).collect(), 2_000));
    /// let p = SearchParams::default();
    /// for q in data.chunks_exact(dim).take(5) {
    ///     let (hits, _) = index.search_resolved(q, 10, Lod::Rerank, &p, &even, None)?;
    ///     assert!(hits.iter().all(|h| h.id % 2 == 0));
    /// }
    /// // A delete moves rows: the resolved filter must be made again.
    /// index.delete(&[4]);
    /// assert!(!index.is_current(&even));
    /// assert!(index.search_resolved(&data[..dim], 10, Lod::Rerank, &p, &even, None).is_err());
    /// # Ok::<(), m2m_index::Error>(())
    /// ```
    pub fn resolve_filter(&self, filter: &dyn RowFilter) -> ResolvedFilter {
        ResolvedFilter { mask: Mask::resolve(self, filter), stamp: self.stamp }
    }

    /// Whether `filter` was resolved against the rows this index holds now (by this index, or by one it
    /// is an unchanged clone of).
    pub fn is_current(&self, filter: &ResolvedFilter) -> bool {
        filter.stamp == self.stamp
    }

    fn check_current(&self, filter: &ResolvedFilter) -> Result<()> {
        if self.is_current(filter) { Ok(()) } else { Err(Error::StaleFilter) }
    }

    /// [`search_filtered_planned`](Self::search_filtered_planned) under a filter resolved by
    /// [`resolve_filter`](Self::resolve_filter): the same plans and results as a batch under that filter.
    ///
    /// Errors: those of [`search_filtered_planned`](Self::search_filtered_planned);
    /// [`Error::StaleFilter`] when the index changed since the filter was resolved.
    pub fn search_resolved(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &ResolvedFilter,
        options: impl Into<FilterOptions>,
    ) -> Result<(Vec<Hit>, FilterStats)> {
        let options = check_options(options.into())?;
        self.check_current(filter)?;
        self.check_filtered(query.len(), k)?;
        let src = Source::Mask(&filter.mask);
        FILTER_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut fs) => {
                let found = self.filtered_one(query, k, lod, params, src, &options, &mut fs);
                // The kept buffers grow with k (the candidates' heaps): a call of a large k does not
                // leave them that large for the thread's life.
                if k > KEEP_SCRATCH_K {
                    *fs = FilterScratch::default();
                }
                found
            }
            // Entered again on this thread while a search holds it (nothing in the search calls back
            // today; a row cache or a work-stealing pool could): a scratch of its own, never a panic.
            Err(_) => self.filtered_one(query, k, lod, params, src, &options, &mut FilterScratch::default()),
        })
    }

    /// [`search_resolved`](Self::search_resolved) for many queries (row-major), in parallel; one list per
    /// query, with its statistics.
    ///
    /// Errors: those of [`search_batch_filtered_planned`](Self::search_batch_filtered_planned);
    /// [`Error::StaleFilter`] when the index changed since the filter was resolved.
    pub fn search_batch_resolved(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &ResolvedFilter,
        options: impl Into<FilterOptions>,
    ) -> Result<Vec<(Vec<Hit>, FilterStats)>> {
        self.check_current(filter)?;
        self.batch_masked(queries, k, lod, params, &filter.mask, check_options(options.into())?)
    }

    /// [`search_filtered`](Self::search_filtered) for many queries (row-major), in parallel; one list per
    /// query. The filter is resolved once for the whole batch.
    ///
    /// Errors: those of [`Index::search_batch`].
    pub fn search_batch_filtered(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &dyn RowFilter,
    ) -> Result<Vec<Vec<Hit>>> {
        Ok(self
            .search_batch_filtered_planned(queries, k, lod, params, filter, None)?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// [`search_batch_filtered`](Self::search_batch_filtered) with the plan forced or chosen (as
    /// [`search_filtered_planned`](Self::search_filtered_planned)), with each query's statistics.
    ///
    /// Errors: those of [`Index::search_batch`].
    pub fn search_batch_filtered_planned(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &dyn RowFilter,
        options: impl Into<FilterOptions>,
    ) -> Result<Vec<(Vec<Hit>, FilterStats)>> {
        let options = check_options(options.into())?;
        self.check_batch(queries.len(), k)?;
        self.batch_masked(queries, k, lod, params, &Mask::resolve(self, filter), options)
    }

    fn check_batch(&self, len: usize, k: usize) -> Result<()> {
        let dim = self.dim();
        if !len.is_multiple_of(dim) {
            return Err(Error::RaggedBatch { len, dim });
        }
        if k == 0 {
            return Err(Error::ZeroK);
        }
        Ok(())
    }

    fn batch_masked(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        mask: &Mask,
        options: FilterOptions,
    ) -> Result<Vec<(Vec<Hit>, FilterStats)>> {
        self.check_batch(queries.len(), k)?;
        // No more hits than rows: a huge k would otherwise size buffers by it.
        let k = k.min(self.len().max(1));
        queries
            .par_chunks(self.dim())
            .map_init(FilterScratch::default, |fs, q| {
                self.filtered_one(q, k, lod, params, Source::Mask(mask), &options, fs)
            })
            .enumerate()
            .map(|(row, r)| r.map_err(|e| with_row(e, row)))
            .collect()
    }

    fn check_filtered(&self, len: usize, k: usize) -> Result<()> {
        if k == 0 {
            return Err(Error::ZeroK);
        }
        if len != self.dim() {
            return Err(Error::DimensionMismatch { expected: self.dim(), got: len });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments, reason = "the one internal entry of both public forms")]
    fn filtered_one(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        src: Source<'_>,
        options: &FilterOptions,
        fs: &mut FilterScratch,
    ) -> Result<(Vec<Hit>, FilterStats)> {
        let force = options.plan;
        self.check_filtered(query.len(), k)?;
        let k = k.min(self.len().max(1));
        let q = self.prepare(query, &mut fs.s)?;
        let n = self.len();
        let mut stats = FilterStats::default();
        // The selectivity when it is known before probing.
        let known: Option<f64> = match src {
            Source::Mask(m) => Some(if n == 0 { 0.0 } else { m.total as f64 / n as f64 }),
            Source::Lazy(f) => f
                .selectivity()
                .or_else(|| f.matching_ids().map(|ids| if n == 0 { 0.0 } else { ids.len() as f64 / n as f64 }))
                .map(|s| s.clamp(0.0, 1.0)),
        };
        stats.selectivity = known.unwrap_or(f64::NAN);
        if n == 0 || known == Some(0.0) || matches!(src, Source::Mask(m) if m.total == 0) {
            stats.plan = if lod == Lod::Centroids { FilterPlan::Centroids } else { FilterPlan::ExactScan };
            return Ok((Vec::new(), stats));
        }
        // LOD 2 left to the index follows the calibrated probe rule as the unfiltered search does.
        let rule = if params.nprobe == 0 && lod == Lod::Rerank { self.probe_rule() } else { None };
        let nprobe =
            if params.nprobe == 0 { rule.map_or(self.default_nprobe(), |r| r.max_probe).max(1) } else { params.nprobe };
        let depth = match lod {
            Lod::Rerank if params.rerank == 0 => (self.default_rerank() * k).div_ceil(10).max(k),
            Lod::Rerank => params.rerank.max(k),
            _ => k,
        };
        let entries = match lod {
            Lod::Centroids => {
                stats.plan = FilterPlan::Centroids;
                return Ok((self.filtered_lod0(&q, k, params, src, fs, &mut stats), stats));
            }
            Lod::Exact => {
                stats.plan = FilterPlan::ExactScan;
                self.exact_scan(k, true, src, fs, &mut stats)
            }
            Lod::Codes | Lod::Rerank => {
                let exact_rows = lod == Lod::Rerank;
                let plan = match (force, known) {
                    (Some(p @ (FilterPlan::InCluster | FilterPlan::ExactScan)), _) => p,
                    (_, Some(s)) => self.choose(s, nprobe, depth),
                    // Unknown: start in-cluster; its first clusters measure the selectivity.
                    (_, None) => FilterPlan::InCluster,
                };
                if plan == FilterPlan::ExactScan {
                    stats.plan = FilterPlan::ExactScan;
                    self.exact_scan(k, exact_rows, src, fs, &mut stats)
                } else {
                    let adaptive = force.is_none() && known.is_none();
                    match self.in_cluster(
                        k,
                        depth,
                        nprobe,
                        known,
                        options.widen,
                        params,
                        src,
                        adaptive,
                        rule.map(|r| r.margin),
                        fs,
                        &mut stats,
                    ) {
                        Some(()) => {
                            stats.plan = FilterPlan::InCluster;
                            if exact_rows { self.rerank_filtered(k, fs) } else { fs.s.top.drain_sorted() }
                        }
                        None => {
                            stats.plan = FilterPlan::ExactScan;
                            self.exact_scan(k, exact_rows, src, fs, &mut stats)
                        }
                    }
                }
            }
        };
        Ok((entries.iter().map(|e| self.hit(&q, e)).collect(), stats))
    }

    /// The cost model of the module documentation: which plan is cheaper at selectivity `s`, the same
    /// for a filter asked row by row as for a resolved one (see there).
    fn choose(&self, s: f64, nprobe: usize, depth: usize) -> FilterPlan {
        let n = self.len() as f64;
        let n_fine = self.n_fine().max(1) as f64;
        let mean = n / n_fine;
        let s = s.max(1e-9);
        let need = (nprobe as f64 * mean).max(depth as f64);
        let probes = (need / (s * mean)).min(n_fine);
        let ranked = (Self::rank_target(probes.ceil() as usize) as f64).min(n_fine);
        let in_cluster = ranked + need.min(s * n) * CODE_COST + depth as f64;
        let exact = s * n;
        if exact <= in_cluster { FilterPlan::ExactScan } else { FilterPlan::InCluster }
    }

    /// The code-scoring state of the prepared query in `s.q` (quantised into `s.qi8`).
    fn code_query(&self, s: &mut Scratch) -> Codes {
        let kind = self.p.config.codes;
        let stride = kind.stride(self.dim());
        if let Some(shape) = kind.pq_shape(self.dim()) {
            let (q_min, inv) = crate::pq::lut(shape, &self.p.pq_codebook, &s.q, &mut s.table, &mut s.lut);
            return Codes { q_min, inv, stride, kind, pq_m: shape.m };
        }
        let mut wmax = 0.0f32;
        for (q, st) in s.q.iter().zip(&self.p.sq_step) {
            wmax = wmax.max((q * st).abs());
        }
        let scale = if wmax > 0.0 { 127.0 / wmax } else { 1.0 };
        s.qi8.clear();
        s.qi8.extend(s.q.iter().zip(&self.p.sq_step).map(|(q, st)| (q * st * scale).round() as i8));
        if kind == CodeKind::Sq4 {
            s.qi8.resize(2 * stride, 0);
        }
        Codes { q_min: dot_with(self.isa(), &s.q, &self.p.sq_min), inv: 1.0 / scale, stride, kind, pq_m: 0 }
    }

    /// Code estimates of the members `pos` of cluster `f` into `top`; `qc` is the query's dot product
    /// with the cluster's centroid. Every member is scored when `whole` is set or `pos` covers most of
    /// them (one kernel call over the contiguous codes), else only `pos`. Returns the best score of every
    /// row scored, matching or not (`-inf` when none was): what the in-cluster stop rule learns from.
    #[allow(clippy::too_many_arguments, reason = "internal; the scratch buffers are split for borrows")]
    fn offer_codes(
        &self,
        f: usize,
        qc: f32,
        c: &Codes,
        qi8: &[i8],
        lut: &[u8],
        pos: &[u32],
        whole: bool,
        est: &mut Vec<i32>,
        buf: &mut Vec<f32>,
        gather: &mut Vec<u8>,
        top: &mut TopK,
    ) -> f32 {
        let cl = &self.p.clusters[f];
        let m = cl.len();
        let base = qc + c.q_min;
        let score_rows = |codes: &[u8], out: &mut [i32]| match c.kind {
            CodeKind::Sq8 => sq8_dots_with(self.isa(), qi8, codes, c.stride, out),
            CodeKind::Sq4 => sq4_dots_with(self.isa(), qi8, codes, c.stride, out),
            CodeKind::Pq4 { .. } => crate::kernels::pq4_scan_with(self.isa(), lut, codes, c.pq_m, out),
        };
        let best = |buf: &[f32]| buf.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // PQ4 codes are stored in transposed blocks of 32 rows: a row's code cannot be copied aside.
        if whole || 2 * pos.len() >= m || c.pq_m > 0 {
            // The whole cluster by one kernel call over its contiguous codes (cheaper than copying the
            // matching half aside), the same scores as an unfiltered scan; then only the matching offered.
            est.resize(m, 0);
            score_rows(&cl.codes, est);
            buf.clear();
            buf.extend(est.iter().map(|&e| base + e as f32 * c.inv));
            buf.iter_mut().zip(&cl.half_sq_norms).for_each(|(sc, h)| *sc -= h);
            if pos.len() == m {
                top.offer(f as u32, buf);
            } else {
                for &p in pos {
                    let score = buf[p as usize];
                    if score > top.threshold() {
                        top.push(Entry { score, cluster: f as u32, pos: p });
                    }
                }
            }
            return best(buf);
        }
        // Otherwise the matching codes are gathered side by side and scored by one kernel call (the
        // kernels score four rows per step; one call per row costs several times more, and scoring the
        // whole cluster scores rows that cannot be returned).
        gather.clear();
        for &p in pos {
            gather.extend_from_slice(&cl.codes[p as usize * c.stride..][..c.stride]);
        }
        est.resize(pos.len(), 0);
        score_rows(gather, est);
        let mut most = f32::NEG_INFINITY;
        for (&p, &e) in pos.iter().zip(est.iter()) {
            let mut score = base + e as f32 * c.inv;
            if let Some(h) = cl.half_sq_norms.get(p as usize) {
                score -= h;
            }
            most = most.max(score);
            if score > top.threshold() {
                top.push(Entry { score, cluster: f as u32, pos: p });
            }
        }
        most
    }

    /// Matching positions of cluster `f` into `out`; returns the rows the filter was asked about.
    fn matching(&self, f: usize, src: Source<'_>, out: &mut Vec<u32>) -> usize {
        match src {
            Source::Mask(m) => {
                if m.count[f] == 0 {
                    out.clear();
                } else {
                    m.positions(f, out);
                }
                0
            }
            Source::Lazy(filter) => {
                out.clear();
                let ids = &self.p.clusters[f].ids;
                out.extend(ids.iter().enumerate().filter(|&(_, &id)| filter.matches(id)).map(|(p, _)| p as u32));
                ids.len()
            }
        }
    }

    /// The in-cluster plan into `fs.s.top` (size `depth`). `None` when, with the selectivity measured on
    /// the first `nprobe` clusters (`adaptive`), an exact scan is the cheaper way to finish.
    #[allow(clippy::too_many_arguments, reason = "internal; mirrors scan_codes plus the filter")]
    fn in_cluster(
        &self,
        k: usize,
        depth: usize,
        nprobe: usize,
        s_known: Option<f64>,
        widen: f64,
        params: &SearchParams,
        src: Source<'_>,
        adaptive: bool,
        stop: Option<f32>,
        fs: &mut FilterScratch,
        stats: &mut FilterStats,
    ) -> Option<()> {
        let n_fine = self.n_fine();
        let expected = ((nprobe as f64 / s_known.unwrap_or(1.0).max(1e-9)).ceil() as usize)
            .clamp(nprobe.min(n_fine), n_fine.max(1));
        self.rank_fine(params, Self::rank_target(expected), &mut fs.s);
        let nprobe = nprobe.clamp(1, fs.s.fine.len().max(1));
        self.top_fine(nprobe, &mut fs.s);
        let codes = self.code_query(&mut fs.s);
        let FilterScratch { s, pos, buf, est, gather, visited, .. } = fs;
        s.top.reset_watching(depth, if stop.is_some() { k } else { 0 });
        let bias = &self.fine_bias;
        // Rows of the probed clusters (for the unfiltered stop) and how many of them matched.
        let mut rows = 0usize;
        let mut matched = 0usize;
        // The largest (code score of a member - its cluster's centroid score) seen so far.
        let mut reach = 0.0f32;
        let first = nprobe.min(s.fine.len());
        let mut walking = false;
        let mut ranked_all = s.fine.len() == n_fine;
        let mut i = 0;
        // Past the first clusters, once the filter has removed a row: the rest of `s.fine` is put in
        // order a few entries at a time (`ordered` is the end of the ordered part) and keeps its f16
        // scores; a probed cluster's `q . c` is computed in f32 when it is scored, and the stop test
        // adds the f16 error bound. Most ranked clusters are never probed, so re-scoring and sorting
        // them all (as an unfiltered walk past nprobe does) cost more than the probing at 50%.
        let mut lazy = false;
        let mut ordered = 0usize;
        // The count stop: armed when the first clusters hold matches at least at `NEAR_SHARE` times
        // the filter's overall share (see the module documentation).
        let mut count_stop: Option<usize> = None;
        loop {
            // The probe rule ends the first clusters as in an unfiltered search, against the k-th best
            // matching estimate (-inf until k matches are held); then nothing more is probed.
            if !walking
                && let Some(margin) = stop
                && let Some(&(qc, f)) = s.fine.get(i)
                && i < first
                && qc + bias[f as usize] + margin < s.top.watched()
            {
                break;
            }
            if i == first && !walking {
                walking = true;
                if let Some(share) = s_known
                    && rows > 0
                    && matched as f64 >= NEAR_SHARE * share * rows as f64
                {
                    count_stop = Some(((rows as f64 * widen).ceil() as usize).max(depth));
                }
                if adaptive && stats.rows_checked > 0 {
                    // The members an unfiltered search scores for this query (times `widen`), at least k:
                    // what the planner's cost model assumes an in-cluster search goes on to score.
                    let need = ((rows as f64 * widen).ceil() as usize).max(k);
                    let s_local = matched as f64 / stats.rows_checked as f64;
                    stats.selectivity = s_local;
                    if matched < need && self.choose(s_local, nprobe, depth) == FilterPlan::ExactScan {
                        return None;
                    }
                }
                if matched < rows {
                    lazy = true;
                    ordered = i;
                } else {
                    self.rescore_fine(i, s);
                    ordered = s.fine.len();
                }
            }
            if lazy && i == ordered && i < s.fine.len() {
                ordered = order_next(&mut s.fine, i, bias);
            }
            let slack = if lazy { s.fine_err } else { 0.0 };
            if walking {
                if matched == rows {
                    // The filter has removed nothing yet: stop where an unfiltered search stops.
                    if matched >= k {
                        break;
                    }
                } else if count_stop.is_some_and(|c| matched >= c) {
                    break;
                } else if let Some(&(qc, f)) = s.fine.get(i)
                    && qc + slack + bias[f as usize] + widen as f32 * reach < s.top.threshold()
                {
                    // No member of this cluster (nor of any later one, their centroids rank lower) is
                    // expected above the depth-th match: members have stood at most `reach` above
                    // their centroid. Until `depth` matches are held the threshold is -inf.
                    break;
                }
            }
            if i == s.fine.len() {
                if ranked_all {
                    break;
                }
                // The coarse probe ranked too few clusters: rank every one, skip those already probed.
                visited.clear();
                visited.resize(n_fine, false);
                s.fine.iter().for_each(|&(_, f)| visited[f as usize] = true);
                let all = SearchParams { coarse_probe: self.n_coarse(), ..*params };
                self.rank_fine(&all, 0, s);
                s.fine.retain(|&(_, f)| !visited[f as usize]);
                if lazy {
                    ordered = 0;
                } else {
                    self.rescore_fine(0, s);
                    ordered = s.fine.len();
                }
                ranked_all = true;
                i = 0;
                if s.fine.is_empty() {
                    break;
                }
                continue;
            }
            let (mut qc, f) = s.fine[i];
            i += 1;
            let m = self.p.clusters[f as usize].len();
            if m == 0 {
                continue;
            }
            rows += m;
            stats.clusters_probed += 1;
            stats.rows_checked += self.matching(f as usize, src, pos);
            // The first clusters are scored whole, matching or not, to learn how far members stand above
            // their centroid near this query; later ones only when they hold a match.
            if pos.is_empty() && walking {
                continue;
            }
            matched += pos.len();
            if lazy && s.fine_err > 0.0 {
                qc = self.centroid_dot(&s.q, f);
            }
            let most =
                self.offer_codes(f as usize, qc, &codes, &s.qi8, &s.lut, pos, !walking, est, buf, gather, &mut s.top);
            reach = reach.max(most - (qc + bias[f as usize]));
        }
        stats.rows_scored = matched;
        Some(())
    }

    /// LOD 2's exact re-rank of the candidates in `fs.s.top`, best `k` first.
    fn rerank_filtered(&self, k: usize, fs: &mut FilterScratch) -> Vec<Entry> {
        let s = &mut fs.s;
        let candidates = s.top.drain_sorted();
        s.top2.reset(k);
        for e in candidates {
            s.top2.push(Entry { score: self.member_score(&s.q, e.cluster, e.pos), ..e });
        }
        s.top2.drain_sorted()
    }

    /// Every matching row scored, exactly (`exact_rows`) or by its code; best `k` first.
    fn exact_scan(
        &self,
        k: usize,
        exact_rows: bool,
        src: Source<'_>,
        fs: &mut FilterScratch,
        stats: &mut FilterStats,
    ) -> Vec<Entry> {
        let dim = self.dim();
        let codes = if exact_rows { None } else { Some(self.code_query(&mut fs.s)) };
        let FilterScratch { s, pos, buf, est, gather, rows, .. } = fs;
        s.top.reset(k);
        let mut scored = 0usize;
        let centroid_dot = |f: usize, q: &[f32]| dot_with(self.isa(), q, &self.p.fine[f * dim..][..dim]);
        if let Source::Lazy(filter) = src
            && let Some(ids) = filter.matching_ids()
        {
            // Listed ids, each looked up in the id map (ids not in the index are skipped), then scored in
            // storage order, which reads memory forwards instead of at random.
            rows.clear();
            rows.extend(ids.iter().filter_map(|id| self.locations.get(id).copied()));
            rows.sort_unstable();
            for &(f, p) in rows.iter() {
                scored += 1;
                match &codes {
                    None => {
                        let score = self.member_score(&s.q, f, p);
                        if score > s.top.threshold() {
                            s.top.push(Entry { score, cluster: f, pos: p });
                        }
                    }
                    Some(c) => {
                        let qc = centroid_dot(f as usize, &s.q);
                        self.offer_codes(f as usize, qc, c, &s.qi8, &s.lut, &[p], false, est, buf, gather, &mut s.top);
                    }
                }
            }
            stats.rows_checked += ids.len();
            stats.rows_scored = scored;
            return s.top.drain_sorted();
        }
        for f in 0..self.n_fine() {
            let m = self.p.clusters[f].len();
            if m == 0 {
                continue;
            }
            stats.rows_checked += self.matching(f, src, pos);
            if pos.is_empty() {
                continue;
            }
            scored += pos.len();
            match &codes {
                Some(c) => {
                    let qc = centroid_dot(f, &s.q);
                    self.offer_codes(f, qc, c, &s.qi8, &s.lut, pos, false, est, buf, gather, &mut s.top);
                }
                // Most members match: one many-row kernel call, then only the matching scores offered.
                None if 4 * pos.len() >= m => {
                    buf.resize(m, 0.0);
                    dots_with(self.isa(), &s.q, self.cluster_vectors(f), buf);
                    let cl = &self.p.clusters[f];
                    buf.iter_mut().zip(&cl.half_sq_norms).for_each(|(sc, h)| *sc -= h);
                    for &p in pos.iter() {
                        let score = buf[p as usize];
                        if score > s.top.threshold() {
                            s.top.push(Entry { score, cluster: f as u32, pos: p });
                        }
                    }
                }
                None => {
                    for &p in pos.iter() {
                        let score = self.member_score(&s.q, f as u32, p);
                        if score > s.top.threshold() {
                            s.top.push(Entry { score, cluster: f as u32, pos: p });
                        }
                    }
                }
            }
        }
        stats.rows_scored = scored;
        s.top.drain_sorted()
    }

    /// LOD 0 under a filter (see the module documentation).
    fn filtered_lod0(
        &self,
        q: &Query,
        k: usize,
        params: &SearchParams,
        src: Source<'_>,
        fs: &mut FilterScratch,
        stats: &mut FilterStats,
    ) -> Vec<Hit> {
        let dim = self.dim();
        let l2 = self.metric() == Metric::L2;
        let s = &mut fs.s;
        let mut hits = Vec::with_capacity(k);
        let mut ranked_all = false;
        self.rank_fine(params, Self::rank_target(k), s);
        let mut visited = std::mem::take(&mut fs.visited);
        visited.clear();
        visited.resize(self.n_fine(), false);
        loop {
            self.rescore_fine(0, s);
            for &(v, f) in s.fine.iter() {
                if visited[f as usize] {
                    continue;
                }
                visited[f as usize] = true;
                let cl = &self.p.clusters[f as usize];
                if cl.is_empty() {
                    continue;
                }
                stats.clusters_probed += 1;
                stats.rows_checked += self.matching(f as usize, src, &mut fs.pos);
                if fs.pos.is_empty() {
                    continue;
                }
                stats.rows_scored += 1;
                let rep = cl.representative.filter(|r| fs.pos.iter().any(|&p| cl.ids[p as usize] == *r));
                let id = rep.unwrap_or_else(|| {
                    // The matching member nearest the centroid (as `representative` picks among all).
                    let c = &self.p.fine[f as usize * dim..][..dim];
                    let xs = self.cluster_vectors(f as usize);
                    let near = |p: u32| {
                        let x = &xs[p as usize * dim..][..dim];
                        if l2 { -crate::kernels::l2_sq(x, c) } else { dot_with(self.isa(), x, c) }
                    };
                    let best = fs
                        .pos
                        .iter()
                        .map(|&p| (near(p), cl.ids[p as usize]))
                        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
                    best.map_or(cl.ids[fs.pos[0] as usize], |b| b.1)
                });
                hits.push(Hit { id, score: self.report(q, v + self.fine_bias[f as usize]) });
                if hits.len() == k {
                    fs.visited = visited;
                    return hits;
                }
            }
            if ranked_all || s.fine.len() >= self.n_fine() {
                fs.visited = visited;
                return hits;
            }
            let all = SearchParams { coarse_probe: self.n_coarse(), ..*params };
            self.rank_fine(&all, 0, s);
            ranked_all = true;
        }
    }
}

/// Orders the next few entries of `fine[from..]` best first by biased key (the f16 scores, not
/// re-scored), leaving the rest unordered behind them; returns the end of the ordered part.
fn order_next(fine: &mut [(f32, u32)], from: usize, bias: &[f32]) -> usize {
    const CHUNK: usize = 32;
    let order = |a: &(f32, u32), b: &(f32, u32)| {
        (b.0 + bias[b.1 as usize]).total_cmp(&(a.0 + bias[a.1 as usize])).then(a.1.cmp(&b.1))
    };
    let rest = &mut fine[from..];
    let n = CHUNK.min(rest.len());
    if n < rest.len() {
        rest.select_nth_unstable_by(n - 1, order);
    }
    rest[..n].sort_unstable_by(order);
    from + n
}
