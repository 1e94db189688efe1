//! Filtered search: which rows a query may return ([`RowFilter`]), and the search under that condition.
//!
//! The index knows nothing of attributes: the layer above evaluates a filter expression over its columns
//! and hands the index a [`RowFilter`] over ids.
//!
//! This first version answers every filtered search by an exact scan, then keeps the matching hits: right
//! at every level of detail and selectivity, and as slow as Exact. The planner (in-cluster filtering with
//! wider probing against an exact scan of the matching rows) replaces it.

use crate::{Error, Hit, Index, Lod, Result, SearchParams};

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

impl Index {
    /// Searches one query among the rows `filter` matches. Hits are sorted best first; fewer than `k`
    /// when fewer rows match.
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
        let _ = lod;
        if k == 0 {
            return Err(Error::ZeroK);
        }
        let all = self.search(query, self.len().max(1), Lod::Exact, params)?;
        Ok(all.into_iter().filter(|h| filter.matches(h.id)).take(k).collect())
    }

    /// [`search_filtered`](Self::search_filtered) for many queries (row-major); one list per query.
    pub fn search_batch_filtered(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &dyn RowFilter,
    ) -> Result<Vec<Vec<Hit>>> {
        let dim = self.dim();
        if !queries.len().is_multiple_of(dim) {
            return Err(Error::RaggedBatch { len: queries.len(), dim });
        }
        queries.chunks_exact(dim).map(|q| self.search_filtered(q, k, lod, params, filter)).collect()
    }
}
