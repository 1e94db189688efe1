//! The engine's rows without a full copy of their vectors in RAM: ids in RAM (nothing per row for ids
//! in sequence, `rowids.rs`), each row's unit `mu` and norm read in place from where the database holds
//! them (a memory-mapped segment, or a chunk of the database's in-memory table of rows not yet flushed),
//! and only the rows added by this session (and every row of an engine without a data directory) in RAM.
//!
//! The mapped rows are read through the page cache: `open` touches none of them, and a retrieval that
//! reads none (the index answers from its own files) leaves them on disk. After a flush or a compaction
//! the engine points its rows at the new segments ([`RowStore::remap`]) and the RAM copies go.
//!
//! What it does not do: write anything (m2m-tier owns files), or decide which rows are live (the engine's
//! `deleted` set does).

use std::collections::HashMap;
use std::sync::Arc;

use crate::rowids::RowIds;
use m2m_splat::{Batch, SplatSet};
use m2m_tier::{Columns, Segment, Snapshot};

use crate::{Error, Result};

/// A part of a database view whose rows the store reads in place.
#[derive(Clone, Debug)]
enum Part {
    Segment(Arc<Segment>),
    Chunk(Arc<Columns>),
}

impl Part {
    fn mu(&self) -> &[f32] {
        match self {
            Part::Segment(s) => s.mu(),
            Part::Chunk(c) => &c.mu,
        }
    }

    fn norms(&self) -> &[f32] {
        match self {
            Part::Segment(s) => s.norms(),
            Part::Chunk(c) => &c.norms,
        }
    }
}

/// Where a row's `mu` lies: in part `part` at row `row`, or in the store's own RAM rows when `part` is
/// [`IN_RAM`].
#[derive(Clone, Copy, Debug)]
struct Loc {
    part: u32,
    row: u32,
}

const IN_RAM: u32 = u32::MAX;

/// Rows `start..` (up to the next run's start) lie in part `part` at rows `row, row + 1, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u32,
    part: u32,
    row: u32,
}

impl Run {
    /// Whether row `at` lying at `l` continues this run.
    fn continued_by(&self, at: u32, l: Loc) -> bool {
        l.part == self.part && u64::from(l.row) == u64::from(self.row) + u64::from(at - self.start)
    }
}

/// Each row's [`Loc`], stored as runs of consecutive rows that lie one after the other in one part: a
/// segment read whole is one run of 12 bytes, where a location per row took 8 bytes a row. A row is
/// found by a binary search over the runs. The runs are kept as few as the locations allow (a change
/// splits a run and merges what it can), so their number is the number of breaks in the layout.
#[derive(Clone, Debug, Default)]
struct Locations {
    runs: Vec<Run>,
    len: u32,
}

impl Locations {
    fn len(&self) -> usize {
        self.len as usize
    }

    /// Appends the location of the next row. The caller keeps the row count within `u32`.
    fn push(&mut self, l: Loc) {
        match self.runs.last() {
            Some(last) if last.continued_by(self.len, l) => {}
            _ => self.runs.push(Run { start: self.len, part: l.part, row: l.row }),
        }
        self.len += 1;
    }

    /// The run holding row `r` (`r < len`).
    fn run_of(&self, r: u32) -> usize {
        self.runs.partition_point(|run| run.start <= r) - 1
    }

    /// Row `r`'s location.
    ///
    /// # Panics
    /// If `r >= self.len()`, like slice indexing.
    fn get(&self, r: usize) -> Loc {
        assert!(r < self.len(), "row {r} of {}", self.len);
        let r = r as u32;
        let run = self.runs[self.run_of(r)];
        Loc { part: run.part, row: run.row + (r - run.start) }
    }

    /// Sets row `r`'s location: its run is split around it, and runs that now continue each other are
    /// merged.
    ///
    /// # Panics
    /// If `r >= self.len()`.
    fn set(&mut self, r: usize, l: Loc) {
        assert!(r < self.len(), "row {r} of {}", self.len);
        let r = r as u32;
        let i = self.run_of(r);
        let run = self.runs[i];
        let end = self.runs.get(i + 1).map_or(self.len, |next| next.start);
        let mut pieces = Vec::with_capacity(3);
        if r > run.start {
            pieces.push(run);
        }
        pieces.push(Run { start: r, part: l.part, row: l.row });
        if r + 1 < end {
            pieces.push(Run { start: r + 1, part: run.part, row: run.row + (r + 1 - run.start) });
        }
        let added = pieces.len();
        self.runs.splice(i..=i, pieces);
        // Only the boundaries from the run before the pieces to the run after them can have changed.
        let (lo, hi) = (i.saturating_sub(1), (i + added + 1).min(self.runs.len()));
        for j in (lo + 1..hi).rev() {
            let (a, b) = (self.runs[j - 1], self.runs[j]);
            if a.continued_by(b.start, Loc { part: b.part, row: b.row }) {
                self.runs.remove(j);
            }
        }
    }

    fn shrink_to_fit(&mut self) {
        self.runs.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Run>()
    }
}

/// The engine's rows: ids, and the unit `mu` and norm of each, in place (see the module's docs).
#[derive(Clone, Debug)]
pub(crate) struct RowStore {
    dim: usize,
    /// Each row's id and each id's row (nothing per row for ids in sequence: see `rowids.rs`).
    ids: RowIds,
    loc: Locations,
    parts: Vec<Part>,
    /// Unit rows held in RAM (rows added by this session, or every row without a data directory).
    ram: Vec<f32>,
    /// The norm of each RAM row (the norms of the other rows are read in place, beside their `mu`).
    ram_norms: Vec<f32>,
}

/// The rows of `snap` that `keep` accepts, as the store's parts and locations, with their ids, kappa
/// and alpha, in the view's order (segments first, then the in-memory rows).
struct Viewed {
    parts: Vec<Part>,
    loc: Locations,
    ids: Vec<u64>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
}

/// `keep` is asked with whether the row is in a segment (tombstones hide segment rows only) and its id.
fn view(snap: &Snapshot, keep: impl Fn(bool, u64) -> bool) -> Result<Viewed> {
    let mut parts: Vec<Part> = snap.segments.iter().cloned().map(Part::Segment).collect();
    parts.extend(snap.memtable.chunks().iter().cloned().map(Part::Chunk));
    let mut v = Viewed { parts, loc: Locations::default(), ids: Vec::new(), kappa: Vec::new(), alpha: Vec::new() };
    let segments = snap.segments.len();
    for (p, cols) in snap.parts().enumerate() {
        let part = u32::try_from(p).map_err(|_| too_many("parts"))?;
        for i in 0..cols.rows() {
            if keep(p < segments, cols.ids[i]) {
                if v.loc.len() >= u32::MAX as usize {
                    return Err(too_many("rows"));
                }
                v.loc.push(Loc { part, row: u32::try_from(i).map_err(|_| too_many("rows of a part"))? });
                v.ids.push(cols.ids[i]);
                v.kappa.push(cols.kappa[i]);
                v.alpha.push(cols.alpha[i]);
            }
        }
    }
    Ok(v)
}

fn too_many(what: &str) -> Error {
    Error::Config { field: "rows", reason: format!("more than {} {what}", u32::MAX) }
}

impl RowStore {
    /// An empty store of dimension `dim`.
    pub(crate) fn new(dim: usize) -> RowStore {
        RowStore {
            dim,
            ids: RowIds::default(),
            loc: Locations::default(),
            parts: Vec::new(),
            ram: Vec::new(),
            ram_norms: Vec::new(),
        }
    }

    /// The live rows of a database view (read in place), with their kappa and alpha. An id twice in the
    /// view is `DuplicateId` (as appending it to a set was).
    pub(crate) fn from_snapshot(dim: usize, snap: &Snapshot) -> Result<(RowStore, Vec<f32>, Vec<f32>)> {
        let mut v = view(snap, |in_segment, id| !in_segment || snap.is_live(id))?;
        // Grown row by row: up to twice the bytes held (measured: 15 bytes a row of ids instead of 8).
        for col in [&mut v.kappa, &mut v.alpha] {
            col.shrink_to_fit();
        }
        v.ids.shrink_to_fit();
        v.loc.shrink_to_fit();
        let dup = |id: u64, ids: &[u64]| {
            let row = ids.iter().enumerate().filter(|(_, x)| **x == id).nth(1).map_or(0, |(r, _)| r);
            Error::Splat(m2m_splat::Error::DuplicateId { row, id })
        };
        let ids = match RowIds::of(v.ids) {
            Ok(ids) => ids,
            Err(id) => {
                let all: Vec<u64> = view(snap, |in_segment, id| !in_segment || snap.is_live(id))?.ids;
                return Err(dup(id, &all));
            }
        };
        let store = RowStore { dim, ids, loc: v.loc, parts: v.parts, ram: Vec::new(), ram_norms: Vec::new() };
        Ok((store, v.kappa, v.alpha))
    }

    /// Appends the rows of a validated set (copied into RAM: the database holds them in its log and
    /// in-memory table until a flush, after which [`remap`](Self::remap) reads them in place). Ids
    /// already here are `DuplicateId`, and nothing is appended then.
    pub(crate) fn append(&mut self, set: &SplatSet) -> Result<std::ops::Range<usize>> {
        if let Some((row, &id)) = set.ids().iter().enumerate().find(|(_, id)| self.row_of(**id).is_some()) {
            return Err(Error::Splat(m2m_splat::Error::DuplicateId { row, id }));
        }
        let start = self.ids.len();
        u32::try_from(start + set.len()).map_err(|_| too_many("rows"))?;
        let ram_rows = self.ram.len() / self.dim;
        self.ram.extend_from_slice(set.mu());
        self.ram_norms.extend_from_slice(set.norms());
        for i in 0..set.len() {
            self.loc.push(Loc { part: IN_RAM, row: (ram_rows + i) as u32 });
        }
        // The new ids were checked against the old ones above, and a set's own ids are distinct.
        self.ids.extend(set.ids());
        Ok(start..self.ids.len())
    }

    /// Appends the raw rows of `batch` with their ids, normalising each vector straight into the RAM
    /// rows as it is checked ([`Batch::normalise_onto`]: one read and one write of each vector). The
    /// caller has run [`Batch::check`] and checked that the ids are new and distinct. On error (a row
    /// that is not finite or has no direction, too many rows) nothing changes.
    pub(crate) fn append_batch(&mut self, batch: &Batch<'_>, ids: &[u64]) -> Result<std::ops::Range<usize>> {
        let start = self.ids.len();
        u32::try_from(start + ids.len()).map_err(|_| too_many("rows"))?;
        let ram_rows = self.ram.len() / self.dim;
        batch.normalise_onto(&mut self.ram, &mut self.ram_norms)?;
        for i in 0..ids.len() {
            self.loc.push(Loc { part: IN_RAM, row: (ram_rows + i) as u32 });
        }
        // Ids in sequence stay a run (no per-row cost); the caller checked they are new and distinct.
        self.ids.extend(ids);
        Ok(start..self.ids.len())
    }

    /// Replaces row `r`'s unit `mu` and norm (an upsert): the new `mu` goes into RAM (the old copy there,
    /// if any, stays until the next [`retain_rows`](Self::retain_rows) or [`remap`](Self::remap)).
    pub(crate) fn replace_row(&mut self, r: usize, mu: &[f32], norm: f32) {
        let row = (self.ram.len() / self.dim) as u32;
        self.ram.extend_from_slice(mu);
        self.ram_norms.push(norm);
        self.loc.set(r, Loc { part: IN_RAM, row });
    }

    /// Keeps only rows `keep` (in that order; each at most once).
    pub(crate) fn retain_rows(&mut self, keep: &[usize]) {
        let (mut ram, mut ram_norms) = (Vec::new(), Vec::new());
        let mut loc = Locations::default();
        for &r in keep {
            let l = self.loc.get(r);
            if l.part == IN_RAM {
                loc.push(Loc { part: IN_RAM, row: ram_norms.len() as u32 });
                ram.extend_from_slice(self.mu_row(r));
                ram_norms.push(self.norm(r));
            } else {
                loc.push(l);
            }
        }
        self.ids.retain_rows(keep);
        self.loc = loc;
        self.ram = ram;
        self.ram_norms = ram_norms;
    }

    /// Points every row that `snap` holds (live) at it, and copies into RAM any other row (one the view
    /// no longer holds), so that parts that left the database (a compacted segment) are released. Ids,
    /// norms and the order of the rows do not change.
    pub(crate) fn remap(&mut self, snap: &Snapshot) -> Result<()> {
        // Deleted rows that a segment still holds are read there too until the engine drops them. An
        // upserted id is in the view twice (its replaced segment row, then its new row in memory): the
        // later, new one wins in `at`.
        let v = view(snap, |_, id| self.row_of(id).is_some())?;
        let at: HashMap<u64, Loc> = v.ids.iter().enumerate().map(|(i, &id)| (id, v.loc.get(i))).collect();
        let (mut ram, mut ram_norms) = (Vec::new(), Vec::new());
        let mut loc = Locations::default();
        for (r, id) in self.ids.iter().enumerate() {
            match at.get(&id) {
                // The database's copy of an id is the one this store read or appended: ids are never
                // reused while the engine holds them.
                Some(&l) => loc.push(l),
                None => {
                    loc.push(Loc { part: IN_RAM, row: ram_norms.len() as u32 });
                    ram.extend_from_slice(self.mu_row(r));
                    ram_norms.push(self.norm(r));
                }
            }
        }
        self.loc = loc;
        self.ram = ram;
        self.ram_norms = ram_norms;
        self.parts = v.parts;
        Ok(())
    }

    /// Dimension.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows (deleted ones included until the engine drops them).
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no row.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.len() == 0
    }

    /// The id of row `r`.
    ///
    /// # Panics
    /// If `r >= self.len()`, like slice indexing.
    pub(crate) fn id(&self, r: usize) -> u64 {
        self.ids.get(r)
    }

    /// The id of each row, in row order.
    pub(crate) fn ids(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        self.ids.iter()
    }

    /// The largest id, if any.
    pub(crate) fn max_id(&self) -> Option<u64> {
        self.ids.max()
    }

    /// The norm of row `r`'s original vector, in place beside its `mu`.
    ///
    /// # Panics
    /// If `r >= self.len()`, like slice indexing.
    pub(crate) fn norm(&self, r: usize) -> f32 {
        let Loc { part, row } = self.loc.get(r);
        if part == IN_RAM { self.ram_norms[row as usize] } else { self.parts[part as usize].norms()[row as usize] }
    }

    /// The row of `id`.
    pub(crate) fn row_of(&self, id: u64) -> Option<usize> {
        self.ids.row_of(id)
    }

    /// Row `r`'s unit `mu`, in place.
    ///
    /// # Panics
    /// If `r >= self.len()`, like slice indexing.
    pub(crate) fn mu_row(&self, r: usize) -> &[f32] {
        let Loc { part, row } = self.loc.get(r);
        let (rows, at) =
            if part == IN_RAM { (&self.ram[..], row as usize) } else { (self.parts[part as usize].mu(), row as usize) };
        &rows[at * self.dim..(at + 1) * self.dim]
    }

    /// Drops the pages of the mapped segments from the process (the page cache keeps them): a reader
    /// that went over many rows (the streaming build) calls it so that they do not stay resident.
    pub(crate) fn unmap_pages(&self) -> Result<()> {
        for part in &self.parts {
            if let Part::Segment(s) = part {
                s.unmap_pages()?;
            }
        }
        Ok(())
    }

    /// Bytes this store holds on the heap per structure, as (name, bytes).
    pub(crate) fn heap_bytes(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("engine ids and id map", self.ids.heap_bytes()),
            ("engine row locations", self.loc.heap_bytes()),
            ("engine RAM rows and norms", (self.ram.capacity() + self.ram_norms.capacity()) * 4),
        ]
    }

    #[cfg(test)]
    /// Bytes of vectors this store holds in RAM (its own rows; the database's in-memory rows it shares
    /// are not counted).
    pub(crate) fn ram_vector_bytes(&self) -> usize {
        self.ram.len() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use crate::{M2m, M2mConfig};

    fn rows(n: usize, dim: usize, seed: usize) -> Vec<f32> {
        (0..n * dim).map(|i| (((i + seed) * 7919) % 211) as f32 / 50.0 - 2.0 + ((i % dim) == 0) as u8 as f32).collect()
    }

    fn vectors(engine: &M2m, ids: &[u64]) -> Vec<Vec<f32>> {
        ids.iter().map(|&id| engine.vector_of(id).unwrap_or_default()).collect()
    }

    /// A stored engine holds no copy of its vectors: after open, its rows are read from the mapped
    /// segments (and the database's unflushed rows), and the SOC router reads the index's mapped rows.
    /// Rows added by the session are held in RAM until a flush, compaction drops deleted rows and reads
    /// the merged segment. Through all of it `vector_of` returns each id's own vector. Mutations caught:
    /// `load` copying the rows (RAM bytes above 0 after open), `remap` after flush not pointing the rows
    /// at the new segment (bytes left), a row pointed at another row of the view (a wrong part or
    /// position: the vectors differ), compaction leaving a deleted row or losing a live one.
    #[test]
    fn a_stored_engine_reads_its_rows_in_place_and_returns_every_vector() {
        let dim = 16;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let config = M2mConfig { durable: false, ..M2mConfig::default().dim(dim).data_dir(&path) };
        let first = rows(600, dim, 1);
        let mut engine = M2m::create(config).unwrap();
        let mut ids = engine.add_splats(&first[..300 * dim]).unwrap();
        engine.flush().unwrap();
        assert_eq!(engine.set.ram_vector_bytes(), 0, "flushed rows are read from their segment");
        ids.extend(engine.add_splats(&first[300 * dim..]).unwrap());
        assert_eq!(engine.set.ram_vector_bytes(), 300 * dim * 4, "unflushed rows of the session in RAM");
        engine.build_index().unwrap();
        let want = vectors(&engine, &ids);
        assert!(want.iter().all(|v| v.len() == dim));
        drop(engine);

        let mut engine = M2m::open(&path).unwrap();
        assert_eq!(engine.set.ram_vector_bytes(), 0, "nothing copied at open");
        let ctl = engine.soc.as_ref().expect("a cosine index starts the controller");
        assert!(ctl.built_router().is_none(), "open builds no router");
        assert_eq!(engine.set.loc.runs.len(), 2, "a segment and the log's rows, each read whole: one run each");
        let router = engine.router("test").unwrap();
        assert_eq!(router.ram_vector_bytes(), 0, "the router reads the index's mapped rows");
        assert_eq!(vectors(&engine, &ids), want);
        // Half the rows come from the log (the database's in-memory rows), the other half from a segment.
        let more = rows(50, dim, 2);
        let new = engine.add_splats(&more).unwrap();
        engine.delete(&ids[..40]).unwrap();
        engine.delete(&new[..5]).unwrap();
        assert_eq!(vectors(&engine, &ids[40..]), want[40..]);
        engine.compact().unwrap();
        assert_eq!(engine.set.ram_vector_bytes(), 0, "after compaction every row is read from the merged segment");
        assert_eq!(engine.set.len(), 600 - 40 + 45);
        assert_eq!(vectors(&engine, &ids[40..]), want[40..]);
        assert!(ids[..40].iter().all(|&id| engine.vector_of(id).is_none()));
        for (i, &id) in new.iter().enumerate().skip(5) {
            let got = engine.vector_of(id).unwrap();
            let gap = got.iter().zip(&more[i * dim..(i + 1) * dim]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-4, "id {id}: {gap}");
        }
        drop(engine);
        let engine = M2m::open(&path).unwrap();
        assert_eq!(vectors(&engine, &ids[40..]), want[40..]);
    }

    /// The row store's ids and norms through appends (ids in sequence, then out of order), a refused
    /// duplicate, an upsert's `replace_row` and a `retain_rows`: every row's id, id's row and norm
    /// equal a reference list's, and ids in sequence cost no byte. Mutations caught: `norm` reading
    /// the RAM norms at the wrong row (a norm of another row), `replace_row` not recording the new
    /// norm, `retain_rows` dropping the norms of RAM rows or keeping them in the old order, a refused
    /// append that left rows or norms behind.
    #[test]
    fn ids_and_norms_follow_appends_upserts_and_retains() {
        let dim = 4;
        let mut store = super::RowStore::new(dim);
        let mut want: Vec<(u64, f32)> = Vec::new();
        let set_of = |ids: &[u64]| {
            let v: Vec<f32> = ids.iter().flat_map(|&id| [1.0 + id as f32, 2.0, 0.5, id as f32 % 3.0]).collect();
            let mut s = m2m_splat::SplatSet::with_capacity(dim, ids.len()).unwrap();
            s.append(m2m_splat::Batch::new(&v, dim).ids(ids)).unwrap();
            s
        };
        let check = |store: &super::RowStore, want: &[(u64, f32)], what: &str| {
            assert_eq!(store.len(), want.len(), "{what}");
            for (r, &(id, norm)) in want.iter().enumerate() {
                assert_eq!((store.id(r), store.row_of(id), store.norm(r)), (id, Some(r), norm), "{what}: row {r}");
            }
            assert_eq!(store.row_of(1_000_000), None);
        };
        for ids in [(0..50).collect::<Vec<u64>>(), (50..120).collect()] {
            let set = set_of(&ids);
            store.append(&set).unwrap();
            want.extend(ids.iter().zip(set.norms()).map(|(&id, &n)| (id, n)));
        }
        assert_eq!(store.heap_bytes()[0], ("engine ids and id map", 0), "ids in sequence cost nothing");
        check(&store, &want, "in sequence");
        let back = set_of(&[130, 125, 300]);
        store.append(&back).unwrap();
        want.extend(back.ids().iter().zip(back.norms()).map(|(&id, &n)| (id, n)));
        check(&store, &want, "out of order");
        assert!(store.append(&set_of(&[301, 40])).is_err(), "id 40 is there");
        check(&store, &want, "after a refused append");
        // An upsert of row 7 (id 7) with a new vector and norm.
        store.replace_row(7, &[0.6, 0.8, 0.0, 0.0], 42.0);
        want[7].1 = 42.0;
        check(&store, &want, "after an upsert");
        let keep: Vec<usize> = (0..store.len()).rev().filter(|r| r % 3 != 1).collect();
        store.retain_rows(&keep);
        want = keep.iter().map(|&r| want[r]).collect();
        check(&store, &want, "after retain_rows");
    }

    /// The runs answer as a location per row would, through appends, single changes and rebuilds from a
    /// subset, over random layouts (parts of random lengths read whole or in pieces, RAM rows, upserts
    /// into RAM, deletes), and stay as few as the layout allows. Mutations caught: a split that leaves
    /// the rows after the changed one at the old offset or the changed row's neighbours in another
    /// part (the locations differ), a run that swallows a row of another part or a gap (`continued_by`
    /// without its part or offset check), no merging after a change (more runs than breaks).
    #[test]
    fn row_locations_as_runs_answer_as_one_location_per_row_over_random_layouts() {
        use super::{IN_RAM, Loc, Locations};
        use rand::{RngExt, SeedableRng, rngs::StdRng};

        fn check(runs: &Locations, want: &[Loc], what: &str) {
            assert_eq!(runs.len(), want.len(), "{what}: length");
            for (r, w) in want.iter().enumerate() {
                let got = runs.get(r);
                assert_eq!((got.part, got.row), (w.part, w.row), "{what}: row {r}");
            }
            let breaks = (0..want.len())
                .filter(|&r| {
                    r == 0 || want[r].part != want[r - 1].part || want[r].row != want[r - 1].row.wrapping_add(1)
                })
                .count();
            assert_eq!(runs.runs.len(), breaks, "{what}: runs are not as few as the layout allows");
        }

        let mut rng = StdRng::seed_from_u64(15);
        for round in 0..300 {
            let (mut runs, mut want) = (Locations::default(), Vec::new());
            let mut ram_rows = 0u32;
            // A view: parts, each read whole or with holes (deleted rows), then rows in RAM.
            for part in 0..rng.random_range(0..6u32) {
                let len = rng.random_range(0..40u32);
                let holes = rng.random_bool(0.5);
                for row in (0..len).filter(|_| !holes || rng.random_bool(0.8)) {
                    want.push(Loc { part, row });
                }
            }
            for _ in 0..rng.random_range(0..20) {
                want.push(Loc { part: IN_RAM, row: ram_rows });
                ram_rows += 1;
            }
            want.iter().for_each(|&l| runs.push(l));
            check(&runs, &want, &format!("round {round}, view"));
            for step in 0..30 {
                if want.is_empty() {
                    break;
                }
                match rng.random_range(0..4) {
                    // An upsert: the row's new vector in RAM.
                    0 => {
                        let r = rng.random_range(0..want.len());
                        want[r] = Loc { part: IN_RAM, row: ram_rows };
                        ram_rows += 1;
                        runs.set(r, want[r]);
                    }
                    // A change back to where the row's neighbour says it continues (merges runs).
                    1 if want.len() > 1 => {
                        let r = rng.random_range(1..want.len());
                        want[r] = Loc { part: want[r - 1].part, row: want[r - 1].row.wrapping_add(1) };
                        runs.set(r, want[r]);
                    }
                    // Deletes dropped: the store keeps a subset, in order.
                    2 => {
                        let kept: Vec<Loc> = want.iter().copied().filter(|_| rng.random_bool(0.85)).collect();
                        runs = Locations::default();
                        kept.iter().for_each(|&l| runs.push(l));
                        want = kept;
                    }
                    // An added row.
                    _ => {
                        want.push(Loc { part: IN_RAM, row: ram_rows });
                        ram_rows += 1;
                        runs.push(*want.last().unwrap());
                    }
                }
                check(&runs, &want, &format!("round {round}, step {step}"));
            }
        }
    }

    /// A query-only open builds no SOC router (the heap breakdown names none), and the first
    /// generation after it builds one that generates exactly what the engine generated before it was
    /// closed (from the stored neighbourhoods and the index read back). A row upserted before the first use leaves
    /// the lazily built router as it leaves a built one. Mutations caught: `open` or `retrieve`
    /// building the router (the breakdown names it), a lazy build without the stored neighbourhoods or
    /// with another index's members (generated rows differ), retrieval hits recorded nowhere while the
    /// router is not built (the pile's loads do not move), an upsert before the first use not
    /// remembered (the lazily built router still routes the upserted seed to its old neighbourhood).
    #[test]
    fn a_query_only_open_builds_no_router_and_generate_builds_the_same_one() {
        use crate::Lod;
        let dim = 16;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let config = M2mConfig { durable: false, ..M2mConfig::default().dim(dim).data_dir(&path) };
        let data = rows(800, dim, 3);
        let mut engine = M2m::create(config).unwrap();
        let ids = engine.add_splats(&data).unwrap();
        engine.build_index().unwrap();
        assert!(engine.kappa_fit().is_some(), "the build learned kappa (the neighbourhoods are stored)");
        assert!(engine.soc.as_ref().unwrap().built_router().is_none(), "a build builds no router");
        let before = engine.generate_n(12, 20).unwrap();
        assert!(engine.soc.as_ref().unwrap().built_router().is_some(), "generate builds the router");
        let energy = engine.energy(&data[..dim]).unwrap();
        drop(engine);

        let engine = M2m::open(&path).unwrap();
        let names = |e: &M2m| e.heap_bytes().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        assert!(!names(&engine).contains("router"), "open built a router: {}", names(&engine));
        let loads =
            |e: &M2m| e.soc.as_ref().unwrap().pile(e.index.as_ref()).unwrap().with(|p| p.loads().to_vec()).unwrap();
        let idle = loads(&engine);
        for q in data.chunks_exact(dim).take(50) {
            engine.retrieve(q, 10, Lod::Rerank).unwrap();
        }
        assert!(!names(&engine).contains("router"), "a query built the router: {}", names(&engine));
        assert_ne!(loads(&engine), idle, "retrieval hits reach the pile without a router");
        assert_eq!(engine.generate_n(12, 20).unwrap(), before, "the lazily built router generates the same rows");
        assert!(names(&engine).contains("router"));
        assert_eq!(engine.energy(&data[..dim]).unwrap(), energy);
        drop(engine);

        // An upsert before the router is built leaves it as an upsert after: the id is routed with its
        // new row and its stored neighbourhood is no longer its own (in-memory engines: held
        // neighbourhoods).
        let memory = || {
            let mut e = M2m::create(M2mConfig::default().dim(dim)).unwrap();
            e.add_splats(&data).unwrap();
            e.build_index().unwrap();
            e
        };
        let (mut first, mut later) = (memory(), memory());
        let moved: Vec<f32> = data[dim..2 * dim].iter().rev().copied().collect();
        let x = &data[..dim];
        let seeded = |e: &M2m| e.router("test").unwrap().route_seed(Some(ids[0]), x, 4, 17).unwrap().ids;
        let hood = seeded(&first);
        assert_eq!(hood.len(), 17, "the seed and its 16 stored neighbours");
        first.upsert(&moved, &ids[..1], None, None, None).unwrap();
        later.upsert(&moved, &ids[..1], None, None, None).unwrap();
        assert!(later.soc.as_ref().unwrap().built_router().is_none());
        assert_eq!(seeded(&later), seeded(&first), "an upserted seed routed as a built router routes it");
        assert_ne!(seeded(&later), hood, "the upserted seed kept its old neighbourhood");
        let (a, b) = (first.router("test").unwrap().gather(&ids[..1]), later.router("test").unwrap().gather(&ids[..1]));
        // The same splat; its row as the index holds it (normalised again) against the engine's unit row.
        assert_eq!((&a.ids, &a.kappa, &a.alpha), (&b.ids, &b.kappa, &b.alpha));
        assert!(a.mu.iter().zip(&b.mu).all(|(u, v)| (u - v).abs() < 1e-6), "{a:?} against {b:?}");
        assert!(a.mu.iter().zip(&moved).all(|(u, v)| u.signum() == v.signum()), "the new row is routed");
    }
}
