//! Attributes and filtered retrieval in the facade: the engine's attribute table (the database's, or its
//! own in memory), attribute updates by id, and retrieval under a [`Filter`] at every level of detail.
//!
//! The filter is evaluated over the attribute table (per-field indexes in m2m-tier) into the sorted ids
//! of the matching live rows, which the index searches among through its [`m2m_index::RowFilter`]
//! ([`m2m_index::IdSet`]: `matching_ids` and `selectivity` for its planner). Rows added after the index
//! build are in the index already (`add_splats` inserts them), and deleted rows are in neither.
//!
//! # Filters kept resolved
//!
//! Users pass a filter with every call (Qdrant, LanceDB and Milvus take it per query; nobody prepares
//! one), and most applications repeat a few filters ("this tenant", "label 3") across many calls. So the
//! engine keeps, as Lucene's query cache keeps filter bitsets, the filters it resolved against the index
//! ([`m2m_index::ResolvedFilter`]: a bit per row), keyed by the filter, the attribute table's
//! [`stamp`](m2m_tier::AttrTable::stamp) and the index's state: a call under a kept filter evaluates
//! nothing and tests each row with one bit, as a batch does. Any change of attributes or rows makes the
//! kept ones stale (their stamps no longer match) and they are dropped at the next filtered call; no
//! call site has to remember to clear anything.
//!
//! A single query resolves its filter the second time it sees it among recent calls (resolving costs
//! one id-map look-up per matching row, more than one query under a one-off filter spends checking the
//! rows it probes); a batch of two or more queries resolves it at once (it would anyway) and keeps it.
//! At most [`KEPT_FILTERS`] filters and [`KEPT_BYTES`] bytes are kept, the least recently used dropped
//! first.

use std::sync::{Arc, Mutex};

use m2m_index::{IdSet, Index, Lod, ResolvedFilter, SearchParams};
use m2m_tier::{AttrBatch, AttrTable, Filter, Schema, Value};

use crate::{Error, Hit, M2m, Result};

/// One field of a hit's attributes: its name and value (`None`: null).
pub type Attribute = (String, Option<Value>);

/// Resolved filters an engine keeps at most (see the module documentation).
pub(crate) const KEPT_FILTERS: usize = 8;

/// Bytes of resolved filters an engine keeps at most (one bit per indexed row each: 64 MiB holds eight
/// filters over 67M rows); a filter larger than this is resolved for its call and not kept.
pub(crate) const KEPT_BYTES: usize = 64 << 20;

/// Single-query filters remembered as seen (not resolved), most recent first.
const SEEN_FILTERS: usize = 32;

/// Largest filter (its own bytes: fields, values, nesting) the engine remembers or keeps: a larger one
/// (an allow-list of many values) is resolved for its call and forgotten, so that the filters held as
/// keys stay within (8 + 32) x 64 KiB whatever the callers send.
const KEY_BYTES: usize = 64 << 10;

/// Bytes `filter` holds (its nodes, strings and values; an estimate of the heap it takes), counted
/// without recursion (a filter is checked for depth after the look-up).
fn filter_bytes(filter: &Filter) -> usize {
    let scalar = |v: &m2m_tier::Scalar| {
        std::mem::size_of::<m2m_tier::Scalar>() + if let m2m_tier::Scalar::Str(s) = v { s.len() } else { 0 }
    };
    let (mut bytes, mut stack) = (0usize, vec![filter]);
    while let Some(f) = stack.pop() {
        bytes += std::mem::size_of::<Filter>();
        bytes += match f {
            Filter::Eq { field, value } => field.len() + scalar(value),
            Filter::In { field, values } => field.len() + values.iter().map(scalar).sum::<usize>(),
            Filter::Range { field, gte, gt, lte, lt } => {
                field.len() + [gte, gt, lte, lt].into_iter().flatten().map(scalar).sum::<usize>()
            }
            Filter::Tag { field, value } => field.len() + value.len(),
            Filter::IsNull { field } => field.len(),
            Filter::And(all) | Filter::Or(all) => {
                stack.extend(all);
                0
            }
            Filter::Not(f) => {
                stack.push(f);
                0
            }
        };
        if bytes > KEY_BYTES {
            break;
        }
    }
    bytes
}

/// The filters an engine keeps resolved, and those a single query has seen once (see the module
/// documentation). Behind a lock: retrieval takes `&self` and may run on many threads; the lock is held
/// for the look-up only, never during a search.
#[derive(Default)]
pub(crate) struct FilterCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// Most recently used first.
    kept: Vec<Kept>,
    /// Filters a single query was answered under without resolving, with the attribute stamp then.
    seen: Vec<(Filter, u64)>,
}

struct Kept {
    filter: Filter,
    attrs: u64,
    resolved: Arc<ResolvedFilter>,
}

/// What the cache has for a call.
enum Lookup {
    /// Resolved against the index as it is now.
    Kept(Arc<ResolvedFilter>),
    /// Not kept, but a single query saw it recently: resolve and keep it.
    Seen,
    /// First seen (now recorded).
    New,
}

impl std::fmt::Debug for FilterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("FilterCache").field("kept", &st.kept.len()).field("seen", &st.seen.len()).finish()
    }
}

impl FilterCache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state is a cache: a panic elsewhere while it was held leaves it consistent enough (each
        // entry is checked against the stamps before use).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lookup(&self, filter: &Filter, attrs: u64, index: &Index, single: bool) -> Lookup {
        if filter_bytes(filter) > KEY_BYTES {
            // Never remembered nor kept (see `KEY_BYTES`): a single query asks it row by row, a batch
            // resolves it for itself.
            return if single { Lookup::New } else { Lookup::Seen };
        }
        let mut st = self.state();
        // Entries of another state of the attributes or the index can never be used again.
        st.kept.retain(|e| e.attrs == attrs && index.is_current(&e.resolved));
        st.seen.retain(|e| e.1 == attrs);
        if let Some(at) = st.kept.iter().position(|e| &e.filter == filter) {
            let e = st.kept.remove(at);
            let resolved = Arc::clone(&e.resolved);
            st.kept.insert(0, e);
            return Lookup::Kept(resolved);
        }
        if !single {
            return Lookup::Seen;
        }
        if let Some(at) = st.seen.iter().position(|e| &e.0 == filter) {
            st.seen.remove(at);
            return Lookup::Seen;
        }
        st.seen.insert(0, (filter.clone(), attrs));
        st.seen.truncate(SEEN_FILTERS);
        Lookup::New
    }

    fn keep(&self, filter: &Filter, attrs: u64, resolved: Arc<ResolvedFilter>) {
        let key = filter_bytes(filter);
        if key > KEY_BYTES || resolved.heap_bytes() + key > KEPT_BYTES {
            return;
        }
        let mut st = self.state();
        st.kept.retain(|e| &e.filter != filter);
        st.kept.insert(0, Kept { filter: filter.clone(), attrs, resolved });
        let mut bytes = 0usize;
        let mut n = 0usize;
        for e in &st.kept {
            bytes += e.resolved.heap_bytes() + filter_bytes(&e.filter);
            if bytes > KEPT_BYTES || n == KEPT_FILTERS {
                break;
            }
            n += 1;
        }
        st.kept.truncate(n);
    }

    /// Resolved filters kept now (for tests).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.state().kept.len()
    }
}

/// The index's own errors for a call it would refuse (k = 0, a query of the wrong length, a ragged
/// batch), before its filter is resolved and kept: a refused call does no work for its filter.
fn refuse_before_resolving(len: usize, dim: usize, k: usize, single: bool) -> Result<()> {
    if k == 0 {
        return Err(Error::Index(m2m_index::Error::ZeroK));
    }
    if single && len != dim {
        return Err(Error::Index(m2m_index::Error::DimensionMismatch { expected: dim, got: len }));
    }
    if !single && !len.is_multiple_of(dim) {
        return Err(Error::Index(m2m_index::Error::RaggedBatch { len, dim }));
    }
    Ok(())
}

/// How a call searches under its filter.
enum Under {
    Resolved(Arc<ResolvedFilter>),
    Ids(IdSet),
}

impl M2m {
    /// The attribute table: the database's, or the engine's own in memory (and a reader's snapshot).
    pub(crate) fn attr_table(&self) -> &AttrTable {
        match &self.db {
            Some(db) => db.attributes(),
            None => &self.attrs,
        }
    }

    /// The attribute schema, when the engine has one (declared, or inferred from the first add with
    /// attributes).
    pub fn schema(&self) -> Option<Schema> {
        let s = self.attr_table().schema();
        (!s.is_empty()).then(|| s.clone())
    }

    /// Declares the attribute schema of an engine that has none (stored in the database's manifest);
    /// the same schema again is a no-op, another one an error (a schema is fixed once set).
    pub fn set_schema(&mut self, schema: Schema) -> Result<()> {
        self.refuse_if_read_only("set_schema")?;
        match &mut self.db {
            Some(db) => db.set_schema(schema)?,
            None => std::sync::Arc::make_mut(&mut self.attrs).declare(schema)?,
        }
        Ok(())
    }

    /// The attributes of a live splat, in schema order; `None` for an id that is not live.
    pub fn attributes(&self, id: u64) -> Option<Vec<Attribute>> {
        if !self.contains(id) {
            return None;
        }
        self.attr_table().row(id)
    }

    /// The label of a live splat, when the schema has a label field and the splat a value.
    pub fn label(&self, id: u64) -> Option<i64> {
        self.attr_table().label(id)
    }

    /// Sets attributes of live splats by id (a database logs the change): the fields `attrs` names take
    /// its values (a null clears one), the others keep theirs. The payload is one such field
    /// (`set_payload` of other engines). Errors: an unknown field, a wrong type or row count, an id that
    /// is not live; nothing changes then.
    pub fn set_attributes(&mut self, ids: &[u64], attrs: &AttrBatch) -> Result<()> {
        self.refuse_if_read_only("set_attributes")?;
        if let Some(id) = ids.iter().find(|id| !self.contains(**id)) {
            return Err(Error::Config { field: "ids", reason: format!("id {id} is not a live splat") });
        }
        match &mut self.db {
            Some(db) => db.set_attributes(ids, attrs)?,
            None => std::sync::Arc::make_mut(&mut self.attrs).set(ids, attrs)?,
        }
        Ok(())
    }

    /// The ids of the live splats `filter` matches, ascending. Errors: an invalid filter (unknown field,
    /// a value of the wrong type), as [`crate::ErrorKind::InvalidInput`].
    pub fn matching_ids(&self, filter: &Filter) -> Result<Vec<u64>> {
        Ok(self.attr_table().evaluate(filter)?)
    }

    fn row_filter(&self, filter: &Filter) -> Result<IdSet> {
        Ok(IdSet::new(self.matching_ids(filter)?, self.len()))
    }

    /// The filter of a call on `index`: kept resolved, resolved now (and kept), or as matching ids (see
    /// the module documentation). `single`: a call of one query.
    fn under(&self, index: &Index, filter: &Filter, single: bool) -> Result<Under> {
        let attrs = self.attr_table().stamp();
        Ok(match self.filters.lookup(filter, attrs, index, single) {
            Lookup::Kept(resolved) => Under::Resolved(resolved),
            Lookup::Seen => {
                let resolved = Arc::new(index.resolve_filter(&self.row_filter(filter)?));
                self.filters.keep(filter, attrs, Arc::clone(&resolved));
                Under::Resolved(resolved)
            }
            Lookup::New => Under::Ids(self.row_filter(filter)?),
        })
    }

    /// The `k` best splats for `query` among those `filter` matches, at a level of detail (fewer than
    /// `k` when fewer match). Like [`retrieve`](Self::retrieve), each hit adds load to the SOC sites.
    ///
    /// A filter used again is not evaluated again: the engine keeps the last 8 filters it resolved
    /// against the index (at most 64 MiB, a bit per row each), until the attributes or the rows change;
    /// a single query resolves a filter the second time it comes, a batch at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{AttrBatch, Column, Filter, Lod, M2m, M2mConfig};
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 2, dim: 64, ..Default::default() })?;
    /// let labels = AttrBatch::new(2_000).with("label", Column::Int(d.base_labels.iter().map(|&l| Some(i64::from(l))).collect()));
    /// let mut engine = M2m::create(M2mConfig::default().dim(64))?;
    /// engine.add_splats_with_attributes(&d.base, &labels)?;
    /// engine.build_index()?;
    /// // The JSON form (Python and the CLI use it) and the typed form are the same filter.
    /// let filter: Filter = serde_json::from_str(r#"{"in": {"field": "label", "values": [3, 7]}}"#)?;
    /// let hits = engine.retrieve_filtered(&d.queries[..64], 10, Lod::Rerank, &filter)?;
    /// assert_eq!(hits.len(), 10);
    /// for (_, attrs) in engine.with_attributes(&hits) {
    ///     assert!(matches!(attrs[0].1, Some(m2m::Value::Int(3 | 7))));
    /// }
    /// // A filter on a field the schema does not have is a typed error.
    /// let bad: Filter = serde_json::from_str(r#"{"eq": {"field": "colour", "value": "red"}}"#)?;
    /// assert!(engine.retrieve_filtered(&d.queries[..64], 10, Lod::Rerank, &bad).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retrieve_filtered(&self, query: &[f32], k: usize, lod: Lod, filter: &Filter) -> Result<Vec<Hit>> {
        self.retrieve_filtered_with(query, k, lod, &SearchParams::default(), filter)
    }

    /// [`retrieve_filtered`](Self::retrieve_filtered) with search parameters (see
    /// [`retrieve_with`](Self::retrieve_with)).
    pub fn retrieve_filtered_with(
        &self,
        query: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &Filter,
    ) -> Result<Vec<Hit>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve_filtered" })?;
        let k = crate::validate::bound_k(k, self.len());
        refuse_before_resolving(query.len(), self.config.dim, k, true)?;
        let hits = match self.under(index, filter, true)? {
            Under::Resolved(r) => index.search_resolved(query, k, lod, params, &r, None)?.0,
            Under::Ids(rows) => index.search_filtered(query, k, lod, params, &rows)?,
        };
        self.record_use(hits.iter().map(|h| h.id));
        Ok(hits.iter().map(|h| self.hit(h.id, h.score)).collect())
    }

    /// [`retrieve_filtered`](Self::retrieve_filtered) for many queries (row-major); one list per query.
    pub fn retrieve_batch_filtered(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        self.retrieve_batch_filtered_with(queries, k, lod, &SearchParams::default(), filter)
    }

    /// [`retrieve_batch_filtered`](Self::retrieve_batch_filtered) with search parameters (see
    /// [`retrieve_with`](Self::retrieve_with)).
    pub fn retrieve_batch_filtered_with(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve_batch_filtered" })?;
        let k = crate::validate::bound_k(k, self.len());
        let single = queries.len() <= self.config.dim;
        refuse_before_resolving(queries.len(), self.config.dim, k, false)?;
        let all: Vec<Vec<m2m_index::Hit>> = match self.under(index, filter, single)? {
            Under::Resolved(r) => {
                index.search_batch_resolved(queries, k, lod, params, &r, None)?.into_iter().map(|r| r.0).collect()
            }
            Under::Ids(rows) => index.search_batch_filtered(queries, k, lod, params, &rows)?,
        };
        self.record_use(all.iter().flatten().map(|h| h.id));
        Ok(all.iter().map(|hits| hits.iter().map(|h| self.hit(h.id, h.score)).collect()).collect())
    }

    /// Hits with their attributes (schema order; empty without a schema).
    pub fn with_attributes(&self, hits: &[Hit]) -> Vec<(Hit, Vec<Attribute>)> {
        hits.iter().map(|h| (*h, self.attr_table().row(h.id).unwrap_or_default())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DigitsConfig, M2mConfig, digits_on_sphere};
    use m2m_tier::{Column, Scalar};

    fn engine() -> (M2m, Vec<f32>) {
        let d = digits_on_sphere(&DigitsConfig { rows: 2_000, queries: 4, dim: 32, ..Default::default() }).unwrap();
        let labels = AttrBatch::new(2_000)
            .with("label", Column::Int(d.base_labels.iter().map(|&l| Some(i64::from(l))).collect()));
        let mut engine = M2m::create(M2mConfig::default().dim(32)).unwrap();
        engine.add_splats_with_attributes(&d.base, &labels).unwrap();
        engine.build_index().unwrap();
        (engine, d.queries)
    }

    fn label(l: i64) -> Filter {
        serde_json::from_str(&format!(r#"{{"eq": {{"field": "label", "value": {l}}}}}"#)).unwrap()
    }

    /// When a filter is kept: a single query's at its second call, a batch's at once, at most
    /// `KEPT_FILTERS` of them, the least recently used dropped; none kept of an earlier state.
    /// Mutations caught: a cache that never keeps (every count below 1), one that keeps one-off single
    /// filters (1 after the first call), one that grows without bound (10 kept), a look-up that does not
    /// refresh an entry's use (label 0 dropped instead of label 1), stale entries kept (count after the
    /// change).
    #[test]
    fn filters_are_kept_on_second_use_or_by_a_batch_and_dropped_when_stale() {
        let (mut engine, queries) = engine();
        let q = &queries[..32];
        engine.retrieve_filtered(q, 5, Lod::Rerank, &label(0)).unwrap();
        assert_eq!(engine.filters.kept(), 0, "a one-off single filter is not resolved");
        engine.retrieve_filtered(q, 5, Lod::Rerank, &label(0)).unwrap();
        assert_eq!(engine.filters.kept(), 1);
        engine.retrieve_batch_filtered(&queries[..64], 5, Lod::Rerank, &label(1)).unwrap();
        assert_eq!(engine.filters.kept(), 2, "a batch keeps its filter at once");
        for l in 2..10 {
            engine.retrieve_batch_filtered(&queries[..64], 5, Lod::Rerank, &label(l)).unwrap();
            // Label 0 used again each time: the least recently used is label 1, then 2, ...
            engine.retrieve_filtered(q, 5, Lod::Rerank, &label(0)).unwrap();
        }
        assert_eq!(engine.filters.kept(), KEPT_FILTERS);
        let kept: Vec<Filter> = engine.filters.state().kept.iter().map(|e| e.filter.clone()).collect();
        assert!(kept.contains(&label(0)) && !kept.contains(&label(1)) && kept.contains(&label(9)));
        // An attribute change makes every kept filter stale: dropped at the next filtered call.
        let one = AttrBatch::new(1).with("label", Column::Int(vec![Some(3)]));
        engine.set_attributes(&[0], &one).unwrap();
        engine.retrieve_filtered(q, 5, Lod::Rerank, &label(4)).unwrap();
        assert_eq!(engine.filters.kept(), 0);
    }

    /// A filter too large to hold as a key (an allow-list of 20,000 values, ~0.5 MB) is answered but
    /// never remembered nor kept, single or batch; a refused call (k = 0, a query of another length)
    /// resolves and keeps nothing. Mutations caught: `lookup` or `keep` without the `KEY_BYTES` test
    /// (the large filter kept: 1), `filter_bytes` missing `In`'s values, the checks moved after `under`.
    #[test]
    fn large_filters_and_refused_calls_are_not_kept() {
        let (engine, queries) = engine();
        let q = &queries[..32];
        let big = Filter::In { field: "label".into(), values: (0..20_000).map(Scalar::Int).collect() };
        assert!(filter_bytes(&big) > KEY_BYTES);
        for _ in 0..3 {
            assert_eq!(engine.retrieve_filtered(q, 5, Lod::Rerank, &big).unwrap().len(), 5);
        }
        engine.retrieve_batch_filtered(&queries[..64], 5, Lod::Rerank, &big).unwrap();
        let st = engine.filters.state();
        assert_eq!((st.kept.len(), st.seen.len()), (0, 0), "a large filter was remembered");
        drop(st);
        for _ in 0..2 {
            assert!(engine.retrieve_filtered(q, 0, Lod::Rerank, &label(2)).is_err());
            assert!(engine.retrieve_filtered(&q[..31], 5, Lod::Rerank, &label(2)).is_err());
        }
        assert!(engine.retrieve_batch_filtered(&queries[..63], 5, Lod::Rerank, &label(2)).is_err());
        assert_eq!(engine.filters.kept(), 0, "a refused call kept its filter");
    }
}
