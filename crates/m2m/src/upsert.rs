//! Upsert in the facade: splats whose ids may exist already, each replacing the live row of its id
//! (vector, kappa, alpha and attributes) or added when its id is new. The database logs it as one record
//! (`m2m_tier::Db::upsert_with`), so a crash shows the old rows or the new, never both or neither; the
//! engine's rows, the index (delete, then insert), the SOC router and the attribute table follow.
//!
//! A stored index holds the old vectors of the ids upserted after it was written: before the database's
//! record, each upserted id goes into [`REPLACED_BLOB`] with a fingerprint of its new row, and `open`
//! counts an id as replaced only when the row the database holds is one it was upserted with. So a crash
//! after the blob and before the record leaves that id as it was: its old vector stays in the index and
//! its learned kappa and alpha still apply (they were reset when the blob held ids alone). The one
//! exception: a cut upsert whose new row equals the stored one bit for bit (vector, norm, kappa, alpha)
//! counts as landed, so the id ends as that upsert would have left it (its kappa and alpha the upserted
//! ones, not the learned ones).
//!
//! `REPLACED_BLOB`'s payload (inside `m2m_tier`'s blob frame, which checksums it), postcard:
//! the 4 bytes `RPL2`; a varint count and that many varint ids of the earlier format (ids only,
//! counted as replaced whatever their rows, kept so that nothing an older build wrote is lost); a varint
//! count and that many (varint id, varint fingerprint) pairs. The fingerprint is XXH3-64 (seed 0) of the
//! row's mu (d little-endian f32), then its norm, kappa and alpha (little-endian f32 each). An earlier
//! build's payload is a varint count then that many varint ids, ascending: it cannot begin with `RPL2`
//! (ids 80 then 76 would not be ascending).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use m2m_splat::{Batch, SplatSet};
use serde::{Deserialize, Serialize};

use crate::engine::{REPLACED_BLOB, index_vectors};
use crate::rows::RowStore;
use crate::{Error, M2m, Result};

const MAGIC: [u8; 4] = *b"RPL2";

/// [`REPLACED_BLOB`]'s payload (layout in the module docs).
#[derive(Serialize, Deserialize)]
struct Record {
    magic: [u8; 4],
    any: Vec<u64>,
    rows: Vec<(u64, u64)>,
}

/// What [`REPLACED_BLOB`] says: the ids upserted, or about to be, since the stored index was written.
#[derive(Debug, Default)]
pub(crate) struct Replaced {
    /// Ids from an earlier build's blob: replaced whatever their rows.
    any: HashSet<u64>,
    /// Each id's fingerprints of the rows it was upserted with (several: upserted more than once).
    rows: HashMap<u64, Vec<u64>>,
}

/// The fingerprint of a row (module docs).
pub(crate) fn fingerprint(mu: &[f32], norm: f32, kappa: f32, alpha: f32) -> u64 {
    let mut bytes = Vec::with_capacity((mu.len() + 3) * 4);
    for v in mu.iter().chain([&norm, &kappa, &alpha]) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    twox_hash::XxHash3_64::oneshot(&bytes)
}

/// The ids and fingerprints of [`REPLACED_BLOB`] (none without the blob).
pub(crate) fn load_replaced(dir: &Path) -> Result<Replaced> {
    if !dir.join(REPLACED_BLOB).exists() {
        return Ok(Replaced::default());
    }
    let bytes = m2m_tier::load_blob(dir, REPLACED_BLOB)?;
    let corrupt = |e: postcard::Error| crate::validate::corrupt(&dir.join(REPLACED_BLOB), e.to_string());
    let trailing = |rest: &[u8]| {
        crate::validate::corrupt(&dir.join(REPLACED_BLOB), format!("{} bytes after the record", rest.len()))
    };
    if bytes.starts_with(&MAGIC) {
        let (record, rest): (Record, &[u8]) = postcard::take_from_bytes(&bytes).map_err(corrupt)?;
        if !rest.is_empty() {
            return Err(trailing(rest));
        }
        let mut rows: HashMap<u64, Vec<u64>> = HashMap::new();
        for (id, print) in record.rows {
            rows.entry(id).or_default().push(print);
        }
        Ok(Replaced { any: record.any.into_iter().collect(), rows })
    } else {
        let (ids, rest): (Vec<u64>, &[u8]) = postcard::take_from_bytes(&bytes).map_err(corrupt)?;
        if !rest.is_empty() {
            return Err(trailing(rest));
        }
        Ok(Replaced { any: ids.into_iter().collect(), rows: HashMap::new() })
    }
}

impl Replaced {
    /// Notes the rows of `batch` (validated: the rows as the database will hold them) as upserted.
    fn note(&mut self, batch: &SplatSet) {
        for (i, &id) in batch.ids().iter().enumerate() {
            let print = fingerprint(batch.mu_row(i), batch.norms()[i], batch.kappa()[i], batch.alpha()[i]);
            let prints = self.rows.entry(id).or_default();
            if !prints.contains(&print) {
                prints.push(print);
            }
        }
    }

    /// The ids whose upsert reached the database: the row `set` holds (with `kappa` and `alpha`, the
    /// database's values, indexed by row) is one of the rows the id was upserted with. Ids of an
    /// earlier build's blob count whatever their rows.
    pub(crate) fn landed(&self, set: &RowStore, kappa: &[f32], alpha: &[f32]) -> HashSet<u64> {
        self.landed_by(|id| set.row_of(id).map(|r| fingerprint(set.mu_row(r), set.norm(r), kappa[r], alpha[r])))
    }

    /// [`landed`](Self::landed) with each id's row given as its fingerprint (`None`: no live row).
    pub(crate) fn landed_by(&self, print_of: impl Fn(u64) -> Option<u64>) -> HashSet<u64> {
        let mut ids = self.any.clone();
        for (&id, prints) in &self.rows {
            if print_of(id).is_some_and(|p| prints.contains(&p)) {
                ids.insert(id);
            }
        }
        ids
    }

    /// Whether `id` is in the blob at all (landed or not).
    pub(crate) fn names(&self, id: u64) -> bool {
        self.any.contains(&id) || self.rows.contains_key(&id)
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut any: Vec<u64> = self.any.iter().copied().collect();
        any.sort_unstable();
        let mut rows: Vec<(u64, u64)> =
            self.rows.iter().flat_map(|(&id, prints)| prints.iter().map(move |&p| (id, p))).collect();
        rows.sort_unstable();
        postcard::to_allocvec(&Record { magic: MAGIC, any, rows })
            .map_err(|e| Error::Config { field: "ids", reason: format!("do not serialise: {e}") })
    }
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
                    // Every id of the batch, not only the live ones: an id deleted since the index was
                    // stored (and not compacted) is still in it, with its old vector.
                    let mut all = load_replaced(dir)?;
                    all.note(&fresh);
                    m2m_tier::store_blob(dir, REPLACED_BLOB, &all.to_bytes()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DigitsConfig, Lod, M2mConfig, create_m2m, digits_on_sphere};

    const DIM: usize = 64;

    /// Id `id`'s kappa and alpha in the engine.
    fn learned(engine: &M2m, id: u64) -> (f32, f32) {
        let r = engine.set.row_of(id).unwrap();
        (engine.kappa[r], engine.alpha[r])
    }

    /// A crash after the blob and before the database's record (the blob written as `upsert` writes it,
    /// no upsert) leaves the ids as they were: learned kappa and alpha kept, the old vector found through
    /// the index. A later upsert that lands replaces them. Mutations caught: `landed` returning every id
    /// of the blob (the learned values reset to the initial ones, as before this fix); `note` hashing
    /// anything but the row the database stores, e.g. the norm doubled (the landed upsert does not count:
    /// its kappa stays learned).
    #[test]
    fn an_upsert_cut_before_its_record_changes_nothing_and_one_that_lands_replaces() {
        let d = digits_on_sphere(&DigitsConfig { rows: 600, queries: 4, dim: DIM, ..Default::default() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut engine = create_m2m(M2mConfig::default().dim(DIM).data_dir(&db)).unwrap();
        engine.add_splats(&d.base).unwrap();
        engine.build_index().unwrap();
        drop(engine);
        let engine = M2m::open(&db).unwrap();
        let before: Vec<(f32, f32)> = [5, 6].iter().map(|&id| learned(&engine, id)).collect();
        let initial = (engine.config.init_kappa, engine.config.init_alpha);
        assert!(before.iter().any(|&ka| ka != initial), "the build learned values to lose: {before:?}");
        drop(engine);

        // The blob as upsert writes it for ids 5 and 6, then the crash.
        let fresh = {
            let mut set = SplatSet::with_capacity(DIM, 2).unwrap();
            let batch = Batch::new(&d.queries[..2 * DIM], DIM).ids(&[5, 6]).kappas(&[3.0, 3.0]).alphas(&[0.5, 0.5]);
            set.append(batch).unwrap();
            set
        };
        let mut pending = load_replaced(&db).unwrap();
        pending.note(&fresh);
        m2m_tier::store_blob(&db, REPLACED_BLOB, &pending.to_bytes().unwrap()).unwrap();
        let mut engine = M2m::open(&db).unwrap();
        let after: Vec<(f32, f32)> = [5, 6].iter().map(|&id| learned(&engine, id)).collect();
        assert_eq!(after, before, "a cut upsert reset learned values");
        let old5 = &d.base[5 * DIM..6 * DIM];
        assert_eq!(engine.retrieve(old5, 1, Lod::Rerank).unwrap()[0].id, 5);

        // Id 5 upserted for real (same row as the cut one), 6 left as it was.
        engine.upsert(&d.queries[..DIM], &[5], Some(&[3.0]), Some(&[0.5]), None).unwrap();
        drop(engine);
        let engine = M2m::open(&db).unwrap();
        assert_eq!(learned(&engine, 5), (3.0, 0.5), "the landed upsert's kappa and alpha");
        assert_eq!(learned(&engine, 6), before[1], "id 6 was never upserted");
        let hit = engine.retrieve(&d.queries[..DIM], 1, Lod::Rerank).unwrap()[0];
        assert_eq!((hit.id, hit.score > 0.999), (5, true), "the index holds 5's new vector: {hit:?}");
        // The lake reader gives what the engine gives (a review found it applying the learned values to
        // the upserted id too).
        let lake = crate::LakeReader::open(&db).unwrap();
        let config = crate::DataLoaderConfig { batch_size: 1_000, shuffle: false, ..Default::default() };
        let mut seen = HashMap::new();
        for b in lake.export_to_dataloader(&config).unwrap() {
            let b = b.unwrap();
            seen.extend(b.ids.iter().zip(b.kappa.iter().zip(&b.alpha)).map(|(&id, (&k, &a))| (id, (k, a))));
        }
        assert_eq!(seen[&5], (3.0, 0.5), "the lake reader: the landed upsert's kappa and alpha");
        assert_eq!(seen[&6], before[1], "the lake reader: id 6's learned values");
    }

    /// An id deleted after the index was stored and upserted back before any compaction: the stored index
    /// still holds its old vector, and the reopened index must hold the new one. Mutation caught: noting
    /// only the ids live at the upsert (as before this fix: Rerank then misses the new vector).
    #[test]
    fn an_id_deleted_then_upserted_gets_its_new_vector_in_the_reopened_index() {
        let d = digits_on_sphere(&DigitsConfig { rows: 600, queries: 2, dim: DIM, ..Default::default() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut engine = create_m2m(M2mConfig::default().dim(DIM).data_dir(&db)).unwrap();
        engine.add_splats(&d.base).unwrap();
        engine.build_index().unwrap();
        engine.delete(&[7]).unwrap();
        engine.upsert(&d.queries[..DIM], &[7], None, None, None).unwrap();
        drop(engine);
        let engine = M2m::open(&db).unwrap();
        let hit = engine.retrieve(&d.queries[..DIM], 1, Lod::Rerank).unwrap()[0];
        assert_eq!((hit.id, hit.score > 0.999), (7, true), "{hit:?}");
    }

    /// A payload with bytes after its record is corrupt, in either format (postcard stops reading at
    /// the record's end). Mutation caught: `from_bytes` instead of `take_from_bytes` (accepted).
    #[test]
    fn trailing_bytes_after_the_record_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut good = Replaced::default();
        let mut set = SplatSet::with_capacity(DIM, 1).unwrap();
        set.append(Batch::new(&[1.0; DIM], DIM).ids(&[9])).unwrap();
        good.note(&set);
        for mut bytes in [good.to_bytes().unwrap(), postcard::to_allocvec(&vec![3u64, 4]).unwrap()] {
            bytes.extend_from_slice(b"junk");
            m2m_tier::store_blob(dir.path(), REPLACED_BLOB, &bytes).unwrap();
            let e = load_replaced(dir.path()).unwrap_err().to_string();
            assert!(e.contains(REPLACED_BLOB) && e.contains("4 bytes after the record"), "{e}");
        }
    }

    /// An earlier build's blob (ids alone, ascending) still reads, each id replaced whatever its row, and
    /// a new record keeps them. Mutation caught: the old format refused as corrupt, or its ids dropped
    /// when the blob is rewritten.
    #[test]
    fn a_blob_of_ids_alone_still_counts_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let old = postcard::to_allocvec(&vec![3u64, 80, 700]).unwrap();
        m2m_tier::store_blob(dir.path(), REPLACED_BLOB, &old).unwrap();
        let mut replaced = load_replaced(dir.path()).unwrap();
        let rows = RowStore::new(DIM);
        let all: HashSet<u64> = [3, 80, 700].into();
        assert_eq!(replaced.landed(&rows, &[], &[]), all);
        let mut set = SplatSet::with_capacity(DIM, 1).unwrap();
        set.append(Batch::new(&[1.0; DIM], DIM).ids(&[9])).unwrap();
        replaced.note(&set);
        m2m_tier::store_blob(dir.path(), REPLACED_BLOB, &replaced.to_bytes().unwrap()).unwrap();
        let back = load_replaced(dir.path()).unwrap();
        assert_eq!(back.any, all);
        assert_eq!(back.rows.len(), 1);
    }
}
