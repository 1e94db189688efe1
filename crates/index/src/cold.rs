//! Full vectors outside RAM: an index whose members' full-precision vectors are read from rows the caller
//! owns (a memory-mapped file of m2m-tier, cluster after cluster in the index's order), so that the page
//! cache, not the index, holds them. LOD 0 and LOD 1 never read them; LOD 2's re-rank and `Exact` read
//! them in place through the same kernels (they take slices).
//!
//! A cluster that changes (an insert routed to it, a delete of one of its members, a rebalance) is copied
//! back into RAM first and lives there from then on: the mapped rows are never written. Such an index has
//! no bf16 copies (exact search is the plain f32 scan): keeping none is the point.
//!
//! The index does no IO: the rows come in as anything that derefs to `[f32]`.

use std::ops::Range;
use std::sync::Arc;

use crate::{Error, Index, IndexParts, Result};

/// A cache in front of the cold rows (the facade plugs in m2m-tier's warm cache of the `.vec` file):
/// LOD 2's re-rank and `Exact` read a cold cluster's vectors through it, and the clusters a re-rank is
/// about to read are announced first. The index does no IO: what the cache does with the hints is its
/// own business.
pub trait RowCache: Send + Sync + std::fmt::Debug {
    /// Values `range` of the cold rows (the rows of cluster `f`, always the same range for one `f`).
    fn rows(&self, f: usize, range: Range<usize>) -> ClusterRows<'_>;
    /// Cluster `f`'s rows (values `range`) will be read soon.
    fn prefetch(&self, f: usize, range: Range<usize>);
    /// A read of values `range` that [`rows`](Self::rows) served in place is over (the cache may
    /// release its pages).
    fn done(&self, range: Range<usize>);
    /// Whether a re-rank, which reads a few members of each probed cluster, should read them one by one
    /// ([`row`](Self::row)) rather than whole clusters: a cache that does not hold all the rows.
    fn by_row(&self) -> bool;
    /// One member's values `range` (inside its cluster's range).
    fn row(&self, range: Range<usize>) -> ClusterRows<'_>;
    /// Member values `range` will be read soon.
    fn prefetch_row(&self, range: Range<usize>);
    /// A batch of [`row`](Self::row) reads is over (the cache may release the pages they touched).
    fn rows_done(&self);
    /// Members' values `ranges` (each as for [`row`](Self::row)), for one re-rank: calls `each(i, row)`
    /// once for every range `i`, in any order. A cache that can reads the ones it does not hold
    /// together (one submission to the disk). The default announces them all
    /// ([`prefetch_row`](Self::prefetch_row)), reads each with [`row`](Self::row), and ends the batch
    /// ([`rows_done`](Self::rows_done)).
    fn read_rows(&self, ranges: &[Range<usize>], each: &mut dyn FnMut(usize, &[f32])) {
        for range in ranges {
            self.prefetch_row(range.clone());
        }
        for (i, range) in ranges.iter().enumerate() {
            each(i, &self.row(range.clone()));
        }
        self.rows_done();
    }
}

/// A cluster's full vectors: borrowed (RAM, or a mapping read in place) or a block a cache shares.
#[derive(Debug)]
pub enum ClusterRows<'a> {
    /// In place.
    Borrowed(&'a [f32]),
    /// A cache's copy.
    Shared(Arc<[f32]>),
}

impl std::ops::Deref for ClusterRows<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            ClusterRows::Borrowed(rows) => rows,
            ClusterRows::Shared(rows) => rows,
        }
    }
}

/// Cluster-major rows of full vectors held outside the index (a mapped file section), shared.
#[derive(Clone)]
pub struct ColdRows(Arc<dyn AsRef<[f32]> + Send + Sync>);

impl ColdRows {
    /// Rows from any owner of an `[f32]` (a memory-mapped section, or a `Vec` in tests).
    pub fn new(rows: impl AsRef<[f32]> + Send + Sync + 'static) -> ColdRows {
        ColdRows(Arc::new(rows))
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for ColdRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ColdRows({} values)", self.as_slice().len())
    }
}

/// Marks a cluster whose vectors are in RAM (`Cluster::vectors`), not in the cold rows.
const IN_RAM: usize = usize::MAX;

/// The cold rows and where each cluster's members start in them (in rows), or [`IN_RAM`].
#[derive(Clone, Debug)]
pub(crate) struct Cold {
    rows: ColdRows,
    start: Vec<usize>,
    /// The cache the cold clusters are read through by re-rank and Exact, if any.
    cache: Option<Arc<dyn RowCache>>,
}

/// First row of each cluster when the clusters' members follow each other in order; the total.
fn starts(p: &IndexParts) -> (Vec<usize>, usize) {
    let mut at = 0usize;
    let start = p
        .clusters
        .iter()
        .map(|c| {
            let s = at;
            at += c.ids.len();
            s
        })
        .collect();
    (start, at)
}

impl Index {
    /// An index over parts whose clusters carry no full vectors (and no bf16 copies), with the vectors
    /// read from `rows`: every member of cluster 0, then of cluster 1, and so on, `dim` values each, in
    /// the order of the clusters' ids. The parts are checked as [`from_parts`](Self::from_parts) checks
    /// them; the rows' length must match. Values of the rows are not read here (a forged file's NaN makes
    /// scores NaN, which no top-k keeps; checksums are the storage layer's job).
    ///
    /// Errors: [`Error::Corrupt`].
    pub fn from_cold_parts(mut p: IndexParts, rows: ColdRows) -> Result<Index> {
        p.config.exact_prefilter = false;
        let dim = p.dim;
        let (start, total) = starts(&p);
        if total.checked_mul(dim) != Some(rows.as_slice().len()) {
            return Err(Error::Corrupt {
                reason: format!("{} vector values for {total} members of dimension {dim}", rows.as_slice().len()),
            });
        }
        let mut index = Index::assemble(p, false)?;
        index.cold = Some(Cold { rows, start, cache: None });
        Ok(index)
    }

    /// Moves this index's full vectors out of RAM: from now on they are read from `rows`, which must hold
    /// exactly the vectors the index holds, cluster after cluster (what was just written to a file and
    /// mapped). Checked value by value before any RAM copy is dropped; the bf16 copies go too.
    ///
    /// Errors: [`Error::Corrupt`] when the rows differ (nothing is changed then).
    pub fn attach_cold(&mut self, rows: ColdRows) -> Result<()> {
        let dim = self.p.dim;
        let (start, total) = starts(&self.p);
        let values = rows.as_slice();
        if total.checked_mul(dim) != Some(values.len()) {
            return Err(Error::Corrupt { reason: format!("{} vector values for {total} members", values.len()) });
        }
        for (f, &s) in start.iter().enumerate() {
            let mine = self.cluster_vectors(f);
            let theirs = &values[s * dim..s * dim + mine.len()];
            // Bits, not values: a NaN must not pass, and -0.0 is not 0.0 to a file.
            if mine.iter().zip(theirs).any(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(Error::Corrupt { reason: format!("cold rows differ from cluster {f}'s vectors") });
            }
        }
        for cl in &mut self.p.clusters {
            cl.vectors = Vec::new();
            cl.bf16 = Vec::new();
        }
        self.p.config.exact_prefilter = false;
        self.cold = Some(Cold { rows, start, cache: None });
        Ok(())
    }

    /// Reads this index's codes from `owner` from now on (a mapped `codes` section just written from
    /// this index: every cluster's codes, cluster after cluster), dropping RAM copies and borrowed
    /// ranges of an older file alike. Checked byte by byte before anything changes, as
    /// [`attach_cold`](Self::attach_cold) checks the vectors.
    ///
    /// Errors: [`Error::Corrupt`] when `owner` holds other bytes (nothing is changed then).
    pub fn attach_codes(&mut self, owner: crate::SharedBytes) -> Result<()> {
        let theirs: &[u8] = (*owner).as_ref();
        let total: usize = self.p.clusters.iter().map(|c| c.codes.len()).sum();
        if total != theirs.len() {
            return Err(Error::Corrupt { reason: format!("{} code bytes for {total} in the clusters", theirs.len()) });
        }
        let mut at = 0;
        for (f, cl) in self.p.clusters.iter().enumerate() {
            if *cl.codes != theirs[at..at + cl.codes.len()] {
                return Err(Error::Corrupt { reason: format!("stored codes differ from cluster {f}'s codes") });
            }
            at += cl.codes.len();
        }
        let mut at = 0;
        for cl in &mut self.p.clusters {
            let len = cl.codes.len();
            cl.codes = crate::Codes::shared(std::sync::Arc::clone(&owner), at..at + len)
                .expect("the ranges were checked against the owner's length above");
            at += len;
        }
        Ok(())
    }

    /// Bytes the index holds on the heap per structure, as (name, bytes): codes, member ids, the id
    /// map, the clusters' other columns (L2 norms, bf16 rows), full vectors held in RAM (none for
    /// clusters read from the cold rows), centroids and the search tables. For a memory breakdown.
    pub fn heap_bytes(&self) -> Vec<(&'static str, usize)> {
        let sum = |f: &dyn Fn(&crate::Cluster) -> usize| self.p.clusters.iter().map(f).sum::<usize>();
        vec![
            ("index codes", sum(&|c| c.codes.heap_bytes())),
            ("index member ids", sum(&|c| c.ids.capacity() * 8)),
            ("index id map", self.locations.heap_bytes()),
            ("index L2 norms, bf16 rows", sum(&|c| c.half_sq_norms.capacity() * 4 + c.bf16.capacity() * 2)),
            ("index RAM vectors", sum(&|c| c.vectors.capacity() * 4)),
            (
                "index centroids and tables",
                4 * (self.p.coarse.capacity()
                    + self.p.fine.capacity()
                    + self.p.pq_codebook.capacity()
                    + self.fine_bias.capacity()
                    + self.coarse_bias.capacity())
                    + 2 * self.fine_h.capacity(),
            ),
        ]
    }

    /// Whether full vectors are read from cold rows (for some cluster at least).
    pub fn is_cold(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.start.iter().any(|&s| s != IN_RAM))
    }

    /// The full vectors of cluster `f`'s members, row-major in the order of its ids (unit rows for
    /// cosine): from RAM, or from the cold rows. Empty for a cluster that does not exist.
    pub fn cluster_vectors(&self, f: usize) -> &[f32] {
        let Some(cl) = self.p.clusters.get(f) else { return &[] };
        if let Some(cold) = &self.cold
            && let Some(&s) = cold.start.get(f)
            && s != IN_RAM
        {
            let dim = self.p.dim;
            return cold.rows.as_slice().get(s * dim..(s + cl.ids.len()) * dim).unwrap_or(&[]);
        }
        &cl.vectors
    }

    /// The shared cold rows and the first row of cluster `f`'s members in them, when its vectors are read
    /// from them (`None` for a cluster in RAM or one that does not exist): what a reader that outlives a
    /// borrow of the index (the SOC router) keeps instead of a copy of the vectors. Member `i` of the
    /// cluster (in the order of its ids) is row `start + i`.
    pub fn cold_cluster(&self, f: usize) -> Option<(ColdRows, usize)> {
        let cold = self.cold.as_ref()?;
        let &s = cold.start.get(f)?;
        (s != IN_RAM).then(|| (cold.rows.clone(), s))
    }

    /// Reads the cold clusters through `cache` from now on in LOD 2's re-rank and `Exact` (`None`: in
    /// place). The cache must serve the cold rows' own values (results do not change with it). No effect
    /// on an index without cold rows.
    pub fn set_row_cache(&mut self, cache: Option<Arc<dyn RowCache>>) {
        if let Some(cold) = &mut self.cold {
            cold.cache = cache;
        }
    }

    /// The cache and the range of values of cluster `f` in the cold rows, when `f` is cold and a cache
    /// is set.
    fn cached(&self, f: usize) -> Option<(&dyn RowCache, Range<usize>)> {
        let cold = self.cold.as_ref()?;
        let cache = cold.cache.as_deref()?;
        let &s = cold.start.get(f)?;
        let len = self.p.clusters.get(f)?.ids.len();
        let dim = self.p.dim;
        (s != IN_RAM).then(|| (cache, s * dim..(s + len) * dim))
    }

    /// Cluster `f`'s full vectors for a scoring pass: through the cache when one is set and `f` is cold,
    /// else as [`cluster_vectors`](Self::cluster_vectors). Hand them back with
    /// [`rows_done`](Self::rows_done).
    pub(crate) fn cluster_rows(&self, f: usize) -> ClusterRows<'_> {
        match self.cached(f) {
            Some((cache, range)) => cache.rows(f, range),
            None => ClusterRows::Borrowed(self.cluster_vectors(f)),
        }
    }

    /// The end of a scoring pass over [`cluster_rows`](Self::cluster_rows)`(f)`.
    pub(crate) fn rows_done(&self, f: usize, rows: ClusterRows<'_>) {
        if let (ClusterRows::Borrowed(_), Some((cache, range))) = (&rows, self.cached(f)) {
            cache.done(range);
        }
    }

    /// Announces that cluster `f`'s vectors are read next (to the cache, when one is set).
    pub(crate) fn prefetch_rows(&self, f: usize) {
        if let Some((cache, range)) = self.cached(f) {
            cache.prefetch(f, range);
        }
    }

    /// Whether a cache is set in front of cold clusters.
    pub(crate) fn has_row_cache(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.cache.is_some())
    }

    /// The cache, when one is set and it reads re-rank members one by one ([`RowCache::by_row`]).
    pub(crate) fn row_cache_by_row(&self) -> Option<&dyn RowCache> {
        self.cold.as_ref()?.cache.as_deref().filter(|c| c.by_row())
    }

    /// The range of member `pos` of cluster `f` in the cold rows, when `f` is cold.
    pub(crate) fn cold_member(&self, f: usize, pos: usize) -> Option<Range<usize>> {
        let &s = self.cold.as_ref()?.start.get(f)?;
        let dim = self.p.dim;
        (s != IN_RAM).then(|| (s + pos) * dim..(s + pos + 1) * dim)
    }

    /// Copies cluster `f`'s vectors into RAM before it changes (the cold rows are never written).
    pub(crate) fn own(&mut self, f: usize) {
        let Some(cold) = &self.cold else { return };
        if cold.start.get(f).is_none_or(|&s| s == IN_RAM) {
            return;
        }
        let copy = self.cluster_vectors(f).to_vec();
        self.p.clusters[f].vectors = copy;
        if let Some(cold) = &mut self.cold {
            cold.start[f] = IN_RAM;
        }
    }

    /// Every cluster into RAM (before a rebalance, which rewrites them all).
    pub(crate) fn own_all(&mut self) {
        for f in 0..self.p.clusters.len() {
            self.own(f);
        }
        self.cold = None;
    }

    /// The parts without any cluster's full vectors, codes, ids or bf16 copies: what a stored index
    /// keeps beside its sections of per-member columns (see the facade's `stored.rs`). Cheap: nothing
    /// per member is copied.
    pub fn hollow_parts(&self) -> IndexParts {
        let p = &self.p;
        IndexParts {
            config: p.config.clone(),
            dim: p.dim,
            coarse: p.coarse.clone(),
            fine: p.fine.clone(),
            children: p.children.clone(),
            clusters: p
                .clusters
                .iter()
                .map(|c| crate::Cluster {
                    representative: c.representative,
                    max_norm: c.max_norm,
                    ..crate::Cluster::default()
                })
                .collect(),
            sq_min: p.sq_min.clone(),
            sq_step: p.sq_step.clone(),
            target_cluster_size: p.target_cluster_size,
            default_nprobe: p.default_nprobe,
            calibration_ids: p.calibration_ids.clone(),
            default_rerank: p.default_rerank,
            pq_codebook: p.pq_codebook.clone(),
            probe_rule: p.probe_rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IndexConfig, Lod, Metric, SearchParams};

    fn data(n: usize, dim: usize) -> Vec<f32> {
        (0..n * dim).map(|i| (((i * 7919) % 211) as f32 - 105.0) / 50.0).collect()
    }

    fn rows_of(index: &Index) -> Vec<f32> {
        (0..index.n_fine()).flat_map(|f| index.cluster_vectors(f).to_vec()).collect()
    }

    /// Parts rebuilt the way the facade loads a stored index: hollow parts with ids, codes and norms
    /// put back, and the vectors as cold rows.
    fn cold_copy(index: &Index) -> Index {
        let mut p = index.hollow_parts();
        for (f, c) in p.clusters.iter_mut().enumerate() {
            let full = &index.parts().clusters[f];
            c.ids = full.ids.clone();
            c.codes = full.codes.clone();
            c.half_sq_norms = full.half_sq_norms.clone();
        }
        Index::from_cold_parts(p, ColdRows::new(rows_of(index))).unwrap()
    }

    /// `attach_codes`: the codes, owned by the clusters after a build and an insert, become ranges of
    /// one shared buffer holding the same bytes (what a just-written `codes` section is), and the index
    /// answers exactly as before at every level; a buffer with one byte changed, or one byte short, is
    /// `Corrupt` and changes nothing. Catches a range placed off by a cluster's length, the check
    /// skipped (damaged bytes adopted), a refused attach that changed clusters before failing.
    #[test]
    fn attached_codes_are_ranges_of_the_written_bytes_and_checked_first() {
        let dim = 12;
        let vectors = data(700, dim);
        let ids: Vec<u64> = (0..700).collect();
        let cfg = IndexConfig::default().n_fine(20).n_coarse(4);
        let mut index = Index::build(&cfg, dim, &vectors[..600 * dim], &ids[..600]).unwrap();
        index.insert(&vectors[600 * dim..], &ids[600..]).unwrap();
        let written: Vec<u8> = index.parts().clusters.iter().flat_map(|c| c.codes.to_vec()).collect();
        let q = &vectors[..30 * dim];
        let before: Vec<_> = [Lod::Codes, Lod::Rerank]
            .map(|lod| index.search_batch(q, 9, lod, &SearchParams::default()).unwrap())
            .into();
        for bad in [
            {
                let mut w = written.clone();
                w[written.len() / 2] ^= 1;
                w
            },
            written[..written.len() - 1].to_vec(),
        ] {
            let e = index.attach_codes(std::sync::Arc::new(bad)).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            assert!(index.parts().clusters.iter().all(|c| !c.codes.is_shared()), "a refused attach changed codes");
        }
        index.attach_codes(std::sync::Arc::new(written.clone())).unwrap();
        assert!(index.parts().clusters.iter().all(|c| c.codes.is_shared()));
        let again: Vec<u8> = index.parts().clusters.iter().flat_map(|c| c.codes.to_vec()).collect();
        assert_eq!(again, written);
        let after: Vec<_> = [Lod::Codes, Lod::Rerank]
            .map(|lod| index.search_batch(q, 9, lod, &SearchParams::default()).unwrap())
            .into();
        assert_eq!(before, after);
    }

    /// Catches: a cold index that reads the wrong rows for a cluster (an off-by-one start, rows of the
    /// wrong cluster), at every level of detail and for every metric.
    #[test]
    fn a_cold_index_answers_exactly_as_the_index_in_ram() {
        let dim = 12;
        let n = 900;
        let vectors = data(n, dim);
        let ids: Vec<u64> = (0..n as u64).map(|i| 5 * i + 2).collect();
        for metric in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
            let cfg = IndexConfig::default().metric(metric).n_fine(30).n_coarse(5);
            let warm = Index::build(&cfg, dim, &vectors, &ids).unwrap();
            let cold = cold_copy(&warm);
            assert!(cold.is_cold() && !warm.is_cold());
            assert!(cold.parts().clusters.iter().all(|c| c.vectors.is_empty() && c.bf16.is_empty()));
            for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
                let q = &vectors[..40 * dim];
                let a = warm.search_batch(q, 7, lod, &SearchParams::default()).unwrap();
                let b = cold.search_batch(q, 7, lod, &SearchParams::default()).unwrap();
                for (x, y) in a.iter().zip(&b) {
                    let xi: Vec<u64> = x.iter().map(|h| h.id).collect();
                    let yi: Vec<u64> = y.iter().map(|h| h.id).collect();
                    // The bf16 pass of a warm index may break exact ties differently; scores must agree.
                    if lod == Lod::Exact {
                        for (h, g) in x.iter().zip(y) {
                            assert!((h.score - g.score).abs() <= 1e-4 * h.score.abs().max(1.0), "{metric:?}");
                        }
                    } else {
                        assert_eq!(xi, yi, "{metric:?} {lod:?}");
                    }
                }
            }
        }
    }

    /// Catches: a change lost or applied to the wrong rows (insert and delete must copy the cluster to RAM
    /// first, with the right members), and rows that differ from the index accepted by `attach_cold`.
    #[test]
    fn changes_copy_clusters_to_ram_and_attach_checks_the_rows() {
        let dim = 8;
        let n = 600;
        let vectors = data(n, dim);
        let ids: Vec<u64> = (0..n as u64).collect();
        let cfg = IndexConfig::default().metric(Metric::InnerProduct).n_fine(20).n_coarse(4);
        let mut warm = Index::build(&cfg, dim, &vectors, &ids).unwrap();
        let rows = rows_of(&warm);
        let mut wrong = rows.clone();
        wrong[3 * dim + 1] += 1.0;
        assert!(matches!(warm.attach_cold(ColdRows::new(wrong)), Err(Error::Corrupt { .. })));
        assert!(!warm.is_cold(), "a failed attach changed the index");
        assert!(matches!(warm.attach_cold(ColdRows::new(rows[dim..].to_vec())), Err(Error::Corrupt { .. })));
        warm.attach_cold(ColdRows::new(rows)).unwrap();
        assert!(warm.is_cold());
        let extra: Vec<f32> = (0..dim).map(|j| 100.0 + j as f32).collect();
        warm.insert(&extra, &[10_000]).unwrap();
        assert_eq!(warm.delete(&[0, 1, 2]), 3);
        let hits = warm.search(&extra, 1, Lod::Exact, &SearchParams::default()).unwrap();
        assert_eq!(hits[0].id, 10_000);
        let all = warm.search(&vectors[..dim], n, Lod::Exact, &SearchParams::default()).unwrap();
        assert!(all.iter().all(|h| h.id > 2), "a deleted id is found");
        assert_eq!(all.len(), n - 3 + 1);
        // Every member's vector is still the one it was inserted with.
        for f in 0..warm.n_fine() {
            for (id, row) in warm.list_ids(f).iter().zip(warm.cluster_vectors(f).chunks_exact(dim)) {
                let want = if *id == 10_000 { &extra[..] } else { &vectors[*id as usize * dim..][..dim] };
                assert_eq!(row, want, "id {id}");
            }
        }
        warm.rebalance();
        assert!(!warm.is_cold());
    }
}
