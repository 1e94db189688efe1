//! Upsert in the facade: splats whose ids may exist already, each replacing the live row of its id
//! (vector, kappa, alpha and attributes) or added when its id is new. The database logs it as one record
//! (`m2m_tier::Db::upsert_with`), so a crash shows the old rows or the new, never both or neither; the
//! engine's rows, the index (delete, then insert), the SOC router and the attribute table follow.
//!
//! A stored index holds the old vectors of the ids upserted after it was written: their ids go into
//! [`REPLACED_BLOB`] before the database's record, and `open` re-inserts those rows into the loaded index
//! (a crash after the blob and before the record only makes `open` re-insert rows that did not change).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use m2m_splat::{Batch, SplatSet};

use crate::engine::{REPLACED_BLOB, index_vectors};
use crate::{Error, M2m, Result};

/// The ids of [`REPLACED_BLOB`] (none without the blob).
pub(crate) fn load_replaced(dir: &Path) -> Result<HashSet<u64>> {
    if !dir.join(REPLACED_BLOB).exists() {
        return Ok(HashSet::new());
    }
    let bytes = m2m_tier::load_blob(dir, REPLACED_BLOB)?;
    let ids: Vec<u64> =
        postcard::from_bytes(&bytes).map_err(|e| crate::validate::corrupt(&dir.join(REPLACED_BLOB), e.to_string()))?;
    Ok(ids.into_iter().collect())
}

impl M2m {
    /// Adds splats with the given ids, each replacing the live splat of its id when there is one: its
    /// vector, kappa and alpha (`None`: the configured initial values) and attributes (`None`, or a field
    /// the batch does not name: null). An id deleted and not yet compacted comes back. Validated whole
    /// first (dimensions, finite values, an id twice in the batch, attributes against the schema): on
    /// error nothing changes. A database logs the whole batch as one record. The index follows at once
    /// (the replaced rows' old vectors leave it, the new rows go in, as `add_splats` inserts them).
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::Lod;
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 1_000, queries: 0, dim: 64, ..Default::default() })?;
    /// let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// engine.add_splats(&d.base)?;
    /// engine.build_index()?;
    /// // Id 5 takes row 900's vector; id 5000 is new.
    /// let row = d.base[900 * 64..901 * 64].to_vec();
    /// let vectors = [row.clone(), d.base[901 * 64..902 * 64].to_vec()].concat();
    /// engine.upsert(&vectors, &[5, 5_000], None, None, None)?;
    /// assert_eq!(engine.len(), 1_001);
    /// let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    /// assert!(close(&engine.vector_of(5).unwrap(), &row));
    /// let hits: Vec<u64> = engine.retrieve(&row, 2, Lod::Exact)?.iter().map(|h| h.id).collect();
    /// assert!(hits.contains(&5) && hits.contains(&900));
    /// // An id twice in one batch is refused whole.
    /// assert!(engine.upsert(&vectors, &[6, 6], None, None, None).is_err());
    /// assert!(close(&engine.vector_of(6).unwrap(), &d.base[6 * 64..7 * 64]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upsert(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
        attrs: Option<&m2m_tier::AttrBatch>,
    ) -> Result<()> {
        self.refuse_if_read_only("upsert")?;
        let dim = self.config.dim;
        let fresh = self.validated_batch(vectors, ids, kappa, alpha)?;
        // Live ids leave the index and the router; ids this store still holds (live, or deleted and
        // awaiting compaction) are replaced in place; the others are appended.
        let live: Vec<u64> = fresh.ids().iter().copied().filter(|&id| self.contains(id)).collect();
        match (&mut self.db, &self.config.data_dir) {
            (Some(db), Some(dir)) => {
                // The attributes are checked before the replaced ids are written down: a refused upsert
                // changes no file.
                db.check_attributes(fresh.len(), attrs)?;
                if self.index.is_some() || dir.join(crate::INDEX_BLOB).exists() || !db.snapshot().index.is_empty() {
                    let mut all = load_replaced(dir)?;
                    all.extend(live.iter().copied());
                    let mut all: Vec<u64> = all.into_iter().collect();
                    all.sort_unstable();
                    let bytes = postcard::to_allocvec(&all)
                        .map_err(|e| Error::Config { field: "ids", reason: format!("do not serialise: {e}") })?;
                    m2m_tier::store_blob(dir, REPLACED_BLOB, &bytes)?;
                }
                db.upsert_with(&fresh, attrs)?;
            }
            (Some(db), None) => db.upsert_with(&fresh, attrs)?,
            (None, _) => Arc::make_mut(&mut self.attrs).replace(fresh.ids(), attrs)?,
        }
        let (mut replaced, mut added) = (Vec::new(), Vec::new());
        for (i, &id) in fresh.ids().iter().enumerate() {
            match self.set.row_of(id) {
                Some(r) => replaced.push((i, r)),
                None => added.push(i),
            }
        }
        {
            let rows = Arc::make_mut(&mut self.set);
            let (kappas, alphas) = (Arc::make_mut(&mut self.kappa), Arc::make_mut(&mut self.alpha));
            for &(i, r) in &replaced {
                rows.replace_row(r, fresh.mu_row(i), fresh.norms()[i]);
                kappas[r] = fresh.kappa()[i];
                alphas[r] = fresh.alpha()[i];
            }
        }
        for &(i, _) in &replaced {
            self.deleted.remove(&fresh.ids()[i]);
        }
        if !added.is_empty() {
            let mut extra = SplatSet::with_capacity(dim, added.len())?;
            let raw: Vec<f32> = added.iter().flat_map(|&i| vectors[i * dim..(i + 1) * dim].iter().copied()).collect();
            let new_ids: Vec<u64> = added.iter().map(|&i| fresh.ids()[i]).collect();
            let k: Vec<f32> = added.iter().map(|&i| fresh.kappa()[i]).collect();
            let a: Vec<f32> = added.iter().map(|&i| fresh.alpha()[i]).collect();
            extra.append(Batch::new(&raw, dim).ids(&new_ids).kappas(&k).alphas(&a))?;
            Arc::make_mut(&mut self.set).append(&extra)?;
            Arc::make_mut(&mut self.kappa).extend_from_slice(extra.kappa());
            Arc::make_mut(&mut self.alpha).extend_from_slice(extra.alpha());
        }
        self.next_id = self.next_id.max(ids.iter().max().map_or(0, |m| m.saturating_add(1)));
        if let Some(index) = &mut self.index {
            index.delete(&live);
            let rows: Vec<usize> = fresh.ids().iter().filter_map(|&id| self.set.row_of(id)).collect();
            let mut vectors = Vec::with_capacity(rows.len() * dim);
            for &r in &rows {
                vectors.extend(index_vectors(&self.set, r..r + 1, self.config.metric));
            }
            let row_ids: Vec<u64> = rows.iter().map(|&r| self.set.id(r)).collect();
            index.insert(&vectors, &row_ids)?;
            if let Some(ctl) = &mut self.soc {
                // Dropped from a built router (and its neighbourhoods), or remembered for one built later.
                ctl.remove(&live);
                if let Some(router) = ctl.router_mut() {
                    let k: Vec<f32> = rows.iter().map(|&r| self.kappa[r]).collect();
                    let a: Vec<f32> = rows.iter().map(|&r| self.alpha[r]).collect();
                    router.insert(&row_ids, &vectors, &k, &a)?;
                }
            }
            self.gpu.invalidate();
        }
        Ok(())
    }
}
