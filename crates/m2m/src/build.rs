//! The streaming build of a stored engine: an index over more rows than the build may hold.
//!
//! [`M2m::build_index_within`] builds in memory (`build_index_with`) while the rows fit its budget;
//! beyond it, an engine with a data directory builds with m2m-index's [`Index::build_streaming`]: the
//! rows are read in place from the mapped segments a chunk at a time (their pages released from the
//! process every [`RELEASE_BYTES`]), the vectors go straight into the new `N.vec` file cluster after
//! cluster, and the hot file is written after the calibration. What the build holds is its budget of
//! full vectors plus what the index keeps anyway (ids, codes, centroids) and 4 bytes a row.
//!
//! What it does not do: learn kappa and alpha (the neighbour search behind them reads every vector in
//! RAM); the rows keep the values they have, and the build says so in the log.

use std::sync::Arc;

use m2m_index::{ColdRows, Index, IndexConfig, RowSource, StreamConfig, StreamReport};
use m2m_tier::{SectionFile, SectionKind};

use crate::engine::{INDEX_BLOB, LEARNED_BLOB, Learned, M2m, REPLACED_BLOB};
use crate::rows::RowStore;
use crate::training::NeighbourSource;
use crate::{Error, Metric, Result};

/// The full vectors a build holds at once unless told otherwise ([`M2m::build_index`]): 4 GiB.
pub const DEFAULT_BUILD_BUDGET_BYTES: u64 = 4 << 30;

/// Copies of its rows the in-memory build holds at its peak (as m2m-index's streaming build counts
/// them): the rows in memory path is taken while `rows x bytes per row x BUILD_COPIES` fits the budget.
const BUILD_COPIES: u64 = 5;

/// Bytes of mapped rows read between two releases of the segments' pages.
pub(crate) const RELEASE_BYTES: usize = 64 << 20;

/// The engine's rows as the index is built on them (unit `mu` for cosine, the raw vector otherwise),
/// read in place.
struct StoreRows<'a> {
    set: &'a RowStore,
    metric: Metric,
    dim: usize,
    since_release: usize,
}

impl RowSource for StoreRows<'_> {
    type Error = Error;

    fn rows(&self) -> usize {
        self.set.len()
    }

    fn read(&mut self, start: usize, out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        let end = start + out.len() / dim;
        if end > self.set.len() || !out.len().is_multiple_of(dim) {
            return Err(Error::Config {
                field: "rows",
                reason: format!("rows {start}..{end} asked of {} rows", self.set.len()),
            });
        }
        for (r, dst) in (start..end).zip(out.chunks_exact_mut(dim)) {
            let mu = self.set.mu_row(r);
            if self.metric == Metric::Cosine {
                dst.copy_from_slice(mu);
            } else {
                let norm = self.set.norm(r);
                dst.iter_mut().zip(mu).for_each(|(d, v)| *d = v * norm);
            }
        }
        self.since_release += out.len() * 4;
        if self.since_release >= RELEASE_BYTES {
            self.set.unmap_pages()?;
            self.since_release = 0;
        }
        Ok(())
    }
}

impl M2m {
    /// [`build_index`](Self::build_index) holding at most `budget_bytes` of full vectors at once. Rows
    /// that fit (with the in-memory build's copies of them) are built in memory, as before, with kappa
    /// and alpha learned, and `None` is returned; more rows, in an engine with a data directory, are
    /// built streaming (see the module's docs; kappa and alpha are not learned), and what the build did
    /// is returned. An engine without a data directory holds its rows in RAM anyway and always builds in
    /// memory.
    ///
    /// Errors: those of [`build_index`](Self::build_index); a budget too small to train the clusters on
    /// is `Index(InvalidConfig)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{Lod, M2m, M2mConfig};
    /// let dir = tempfile::tempdir()?;
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 3_000, queries: 0, dim: 64, ..Default::default() })?;
    /// let mut engine = M2m::create(M2mConfig::default().dim(64).data_dir(dir.path()))?;
    /// let ids = engine.add_splats(&d.base)?;
    /// // 3,000 rows of 256 bytes, with the in-memory build's copies, do not fit 1.2 MB: streamed.
    /// let report = engine.build_index_within(1_200_000)?.expect("streamed");
    /// assert!(report.sample_rows < 3_000 && report.peak_rows_held * 256 <= 1_200_000);
    /// assert_eq!(engine.retrieve(&d.base[7 * 64..8 * 64], 1, Lod::Rerank)?[0].id, ids[7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_index_within(&mut self, budget_bytes: u64) -> Result<Option<StreamReport>> {
        if self.is_empty() {
            return Err(Error::Empty);
        }
        let row_bytes = (self.config.dim * 4) as u64;
        let fits = (self.len() as u64).saturating_mul(row_bytes).saturating_mul(BUILD_COPIES) <= budget_bytes;
        if fits || self.db.is_none() || self.config.data_dir.is_none() {
            self.build_index_with(None, None)?;
            return Ok(None);
        }
        self.build_streamed(budget_bytes).map(Some)
    }

    fn build_streamed(&mut self, budget_bytes: u64) -> Result<StreamReport> {
        if !self.deleted.is_empty() {
            self.compact_rows()?;
        }
        let dim = self.config.dim;
        let metric = self.config.metric;
        let ids: Vec<u64> = self.set.ids().collect();
        let cfg =
            IndexConfig { metric, seed: self.config.seed, codes: self.config.code_kind(), ..IndexConfig::default() };
        let budget_rows = usize::try_from(budget_bytes / (dim as u64 * 4)).unwrap_or(usize::MAX);
        let stream = StreamConfig::default().budget_rows(budget_rows);
        let (Some(dir), Some(db)) = (self.config.data_dir.clone(), self.db.as_mut()) else {
            return Err(Error::Config { field: "data_dir", reason: "a streaming build needs a database".into() });
        };
        tracing::info!(rows = ids.len(), budget_bytes, "streaming build: kappa and alpha are not learned");
        let mut cold = db.index_writer("vec")?;
        cold.begin("vectors", SectionKind::F32)?;
        let mut source = StoreRows { set: &self.set, metric, dim, since_release: 0 };
        let built = Index::build_streaming(&cfg, dim, &ids, &mut source, &stream, |rows| {
            crate::stored::write_rows(&mut cold, rows, dim)
        })?;
        self.set.unmap_pages()?;
        let vec_path = cold.finish()?;
        // The index reads the file just written; committed below with its hot file.
        let file = Arc::new(SectionFile::open(&vec_path)?);
        let vectors = file.shared_f32("vectors")?;
        let mut index = Index::from_cold_parts(built.parts, ColdRows::new(vectors.clone()))?;
        crate::stored::warm_rows(&mut index, vectors, self.config.warm_budget_bytes);
        if let Some(cal) = &built.calibration {
            index.calibrate_with(cfg.target_recall, cal)?;
        }
        let learned = Learned { ids, kappa: self.kappa.to_vec(), alpha: self.alpha.to_vec() };
        let blob = postcard::to_allocvec(&learned)
            .map_err(|e| Error::Config { field: "index", reason: format!("does not serialise: {e}") })?;
        m2m_tier::store_blob(&dir, LEARNED_BLOB, &blob)?;
        drop(blob);
        let hot = crate::stored::write_hot(db, &index, &learned)?;
        drop(learned);
        db.commit_index(&[hot, vec_path])?;
        // With mapped codes (`M2M_CODES=map`) the codes built in RAM are read from the committed file
        // from now on, as at an open.
        if let ([hot, _], true) = (&db.snapshot().index[..], crate::stored::map_codes()) {
            index.attach_codes(Arc::new(hot.shared_bytes("codes")?))?;
        }
        m2m_tier::remove_blob(&dir, INDEX_BLOB)?;
        m2m_tier::remove_blob(&dir, REPLACED_BLOB)?;
        self.kappa_fit = None;
        let old = self.soc.take().map(|ctl| (ctl, self.index.take()));
        self.index = Some(index);
        self.gpu.invalidate();
        self.start_controller(NeighbourSource::Unknown, old)?;
        self.save_pile()?;
        Ok(built.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DigitsConfig, Lod, M2mConfig, digits_on_sphere};

    /// A stored engine built streaming: the build holds its budget, every index file checks out, LOD 2
    /// finds the exact neighbours (recall@10 >= 0.9 against `Lod::Exact`), and a reopened engine (the
    /// writer, and a reader) answers exactly as the engine that built it; a second build replaces the
    /// index and leaves no file of the first. The in-memory path is taken when the rows fit. Catches: a
    /// hot file whose members disagree with the vector file (answers after reopen differ, or `check`
    /// reports it), vectors written in another order than the parts' members (recall collapses), the
    /// old index's files left behind, a budget not passed down (the report's peak).
    #[test]
    fn a_streamed_build_is_stored_reopened_and_answers_as_built() {
        let dir = tempfile::tempdir().unwrap();
        let d = digits_on_sphere(&DigitsConfig { rows: 24_000, queries: 40, dim: 64, ..Default::default() }).unwrap();
        let mut engine = M2m::create(M2mConfig::default().dim(64).data_dir(dir.path()).durable(false)).unwrap();
        engine.add_splats(&d.base).unwrap();
        engine.flush().unwrap();
        let budget = 2_816_000u64;
        let report = engine.build_index_within(budget).unwrap().expect("24,000 rows of 256 bytes do not fit 2.8 MB");
        assert!(report.windows >= 3 && report.peak_rows_held as u64 * 256 <= budget, "{report:?}");
        let check = m2m_tier::Db::check(dir.path()).unwrap();
        assert_eq!(check.index_problem, None);
        let answers = |e: &M2m| -> Vec<Vec<u64>> {
            d.queries
                .chunks(64)
                .map(|q| e.retrieve(q, 10, Lod::Rerank).unwrap().iter().map(|h| h.id).collect())
                .collect()
        };
        let built = answers(&engine);
        let (mut found, mut total) = (0, 0);
        for (q, got) in d.queries.chunks(64).zip(&built) {
            let exact: Vec<u64> = engine.retrieve(q, 10, Lod::Exact).unwrap().iter().map(|h| h.id).collect();
            found += got.iter().filter(|id| exact.contains(id)).count();
            total += 10;
        }
        assert!(found as f64 / total as f64 >= 0.9, "recall@10 {}", found as f64 / total as f64);
        let files = |p: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".idx") || n.ends_with(".vec"))
                .collect();
            v.sort();
            v
        };
        let first = files(dir.path());
        assert_eq!(first.len(), 2);
        drop(engine);
        let reader = M2m::open_read_only(dir.path()).unwrap();
        assert_eq!(answers(&reader), built);
        drop(reader);
        let mut engine = M2m::open(dir.path()).unwrap();
        assert_eq!(answers(&engine), built);
        engine.build_index_within(budget).unwrap();
        let second = files(dir.path());
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|f| !first.contains(f)), "{first:?} then {second:?}");
        // Rows that fit the budget are built in memory (and kappa learned), as before.
        assert_eq!(engine.build_index_within(u64::MAX).unwrap(), None);
        assert!(engine.kappa_fit.is_some());
    }
}
