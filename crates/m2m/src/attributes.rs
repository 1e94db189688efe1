//! Attributes and filtered retrieval in the facade: the engine's attribute table (the database's, or its
//! own in memory), attribute updates by id, and retrieval under a [`Filter`] at every level of detail.
//!
//! The filter is evaluated over the attribute table (per-field indexes in m2m-tier) into the sorted ids
//! of the matching live rows, which the index searches among through its [`m2m_index::RowFilter`]
//! ([`m2m_index::IdSet`]: `matching_ids` and `selectivity` for its planner). Rows added after the index
//! build are in the index already (`add_splats` inserts them), and deleted rows are in neither.

use m2m_index::{IdSet, Lod, SearchParams};
use m2m_tier::{AttrBatch, AttrTable, Filter, Schema, Value};

use crate::{Error, Hit, M2m, Result};

/// One field of a hit's attributes: its name and value (`None`: null).
pub type Attribute = (String, Option<Value>);

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

    /// The `k` best splats for `query` among those `filter` matches, at a level of detail (fewer than
    /// `k` when fewer match). Like [`retrieve`](Self::retrieve), each hit adds load to the SOC sites.
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
        let rows = self.row_filter(filter)?;
        let k = crate::validate::bound_k(k, self.len());
        let hits = index.search_filtered(query, k, lod, params, &rows)?;
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
        let rows = self.row_filter(filter)?;
        let k = crate::validate::bound_k(k, self.len());
        let all = index.search_batch_filtered(queries, k, lod, params, &rows)?;
        self.record_use(all.iter().flatten().map(|h| h.id));
        Ok(all.iter().map(|hits| hits.iter().map(|h| self.hit(h.id, h.score)).collect()).collect())
    }

    /// Hits with their attributes (schema order; empty without a schema).
    pub fn with_attributes(&self, hits: &[Hit]) -> Vec<(Hit, Vec<Attribute>)> {
        hits.iter().map(|h| (*h, self.attr_table().row(h.id).unwrap_or_default())).collect()
    }
}
