//! The stored index in m2m-tier's section files (see `crates/tier/FORMAT.md`, "Stored index"): what
//! `build_index` writes, streaming, cluster by cluster, and what `open` maps.
//!
//! Two files of one number `N`, committed together through the manifest:
//!
//! * `N.idx`, the hot part, read into RAM at open after every section's checksum is checked (but the
//!   codes': checked by `Db::check`, `m2m verify`; `M2M_CODES=map` maps the codes): `meta` (the
//!   index's parts without any per-member column, postcard), `offsets` (n_fine + 1 u64: the first member
//!   of each fine cluster in the member order, then the total), `ids` (u64 per member), `codes` (the
//!   code stride per member), `half_sq_norms` (f32 per member for L2, empty otherwise), and the learned
//!   values of the build: `build_ids` (u64), `kappa`, `alpha` (f32 per build id), and, for PQ4 codes,
//!   `pq_codebook` (f32, the index's product-quantisation codebook, which the postcard meta does not
//!   carry). Files written before PQ4 have no `pq_codebook` section and read as before. An index whose
//!   calibration chose the adaptive probe rule has a `probe_rule` section (f32: `max_probe`, `margin`);
//!   without it (older files, or the fixed nprobe chosen) LOD 2 probes the fixed `default_nprobe`.
//! * `N.vec`, the cold part: `vectors`, every member's full vector (unit for cosine), f32, in the same
//!   member order (cluster after cluster). It is mapped and never read whole at open: the index reads
//!   its rows in place (LOD 2 re-rank, Exact), so the page cache holds what is used. Its checksum is
//!   checked by `Db::check` (`m2m verify`).
//!
//! A vector is stored once: the engine's segments hold the raw splats, this file the index's copy in
//! cluster order (the order that makes a probed cluster's rows contiguous).

use std::path::PathBuf;
use std::sync::Arc;

use m2m_index::{ClusterRows, ColdRows, Index, IndexParts, RowCache};
use m2m_tier::{CachedRows, Db, SectionFile, SectionKind, SectionWriter, VectorCache};

use crate::engine::Learned;
use crate::{Error, M2mConfig, Result};

/// Rows of vectors per write while streaming (a few MiB).
const ROWS_PER_WRITE: usize = 4096;

fn corrupt(file: &SectionFile, reason: impl Into<String>) -> Error {
    Error::Tier(m2m_tier::Error::Corrupt { path: file.path().to_path_buf(), offset: 0, reason: reason.into() })
}

/// Writes `index` and the build's learned values as a new (uncommitted) index of `db`; returns the
/// files to pass to `Db::commit_index`.
pub(crate) fn write(db: &Db, index: &Index, learned: &Learned) -> Result<Vec<PathBuf>> {
    let hot = write_hot(db, index, learned)?;
    let mut cold: SectionWriter = db.index_writer("vec")?;
    cold.begin("vectors", SectionKind::F32)?;
    for f in 0..index.n_fine() {
        write_rows(&mut cold, index.cluster_vectors(f), index.dim())?;
    }
    Ok(vec![hot, cold.finish()?])
}

/// Writes the hot file (`N.idx`) of `index` and the build's learned values; returns its path. The
/// streaming build writes the vector file itself, before.
pub(crate) fn write_hot(db: &Db, index: &Index, learned: &Learned) -> Result<PathBuf> {
    let parts = index.parts();
    let n_fine = index.n_fine();
    let meta = postcard::to_allocvec(&index.hollow_parts())
        .map_err(|e| Error::Config { field: "index", reason: format!("does not serialise: {e}") })?;
    let mut hot = db.index_writer("idx")?;
    hot.begin("meta", SectionKind::U8)?;
    hot.write(&meta)?;
    hot.begin("offsets", SectionKind::U64)?;
    let mut at = 0u64;
    for cl in &parts.clusters {
        hot.write_values(&[at])?;
        at += cl.ids.len() as u64;
    }
    hot.write_values(&[at])?;
    hot.begin("ids", SectionKind::U64)?;
    parts.clusters.iter().try_for_each(|cl| hot.write_values(&cl.ids))?;
    hot.begin("codes", SectionKind::U8)?;
    parts.clusters.iter().try_for_each(|cl| hot.write(&cl.codes))?;
    hot.begin("half_sq_norms", SectionKind::F32)?;
    parts.clusters.iter().try_for_each(|cl| hot.write_values(&cl.half_sq_norms))?;
    hot.begin("build_ids", SectionKind::U64)?;
    hot.write_values(&learned.ids)?;
    hot.begin("kappa", SectionKind::F32)?;
    hot.write_values(&learned.kappa)?;
    hot.begin("alpha", SectionKind::F32)?;
    hot.write_values(&learned.alpha)?;
    if !parts.pq_codebook.is_empty() {
        hot.begin("pq_codebook", SectionKind::F32)?;
        hot.write_values(&parts.pq_codebook)?;
    }
    if let Some(rule) = parts.probe_rule {
        // A cluster count is far below 2^24, so it is exact in f32.
        hot.begin("probe_rule", SectionKind::F32)?;
        hot.write_values(&[rule.max_probe as f32, rule.margin])?;
    }
    debug_assert_eq!(parts.clusters.len(), n_fine);
    Ok(hot.finish()?)
}

/// Writes rows of vectors (cluster order) into a vector file's `vectors` section, a few MiB per write.
pub(crate) fn write_rows(cold: &mut SectionWriter, rows: &[f32], dim: usize) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_WRITE * dim.max(1)) {
        cold.write_values(chunk)?;
    }
    Ok(())
}

/// The cold rows of a committed index's `vec` file.
pub(crate) fn cold_rows(files: &[Arc<SectionFile>]) -> Result<ColdRows> {
    Ok(ColdRows::new(vectors(files)?))
}

fn vectors(files: &[Arc<SectionFile>]) -> Result<m2m_tier::MappedF32> {
    let file = files.get(1).ok_or_else(|| Error::Config { field: "index", reason: "no vector file".into() })?;
    Ok(file.shared_f32("vectors")?)
}

/// m2m-tier's warm cache of the `vec` file as the index's row cache (blocks are fine clusters).
#[derive(Debug)]
struct WarmRows(VectorCache);

impl RowCache for WarmRows {
    fn rows(&self, f: usize, range: std::ops::Range<usize>) -> ClusterRows<'_> {
        match self.0.get(u32::try_from(f).unwrap_or(u32::MAX), range) {
            CachedRows::Cached(rows) => ClusterRows::Shared(rows),
            CachedRows::Mapped(rows) => ClusterRows::Borrowed(rows),
        }
    }

    fn prefetch(&self, f: usize, range: std::ops::Range<usize>) {
        self.0.prefetch(u32::try_from(f).unwrap_or(u32::MAX), range);
    }

    fn done(&self, range: std::ops::Range<usize>) {
        self.0.done(range);
    }

    fn by_row(&self) -> bool {
        self.0.by_row()
    }

    fn row(&self, range: std::ops::Range<usize>) -> ClusterRows<'_> {
        match self.0.row(range) {
            CachedRows::Cached(rows) => ClusterRows::Shared(rows),
            CachedRows::Mapped(rows) => ClusterRows::Borrowed(rows),
        }
    }

    fn prefetch_row(&self, range: std::ops::Range<usize>) {
        self.0.prefetch_row(range);
    }

    fn rows_done(&self) {
        self.0.rows_done();
    }

    fn read_rows(&self, ranges: &[std::ops::Range<usize>], each: &mut dyn FnMut(usize, &[f32])) {
        self.0.read_rows(ranges, each);
    }
}

/// Whether the stored index's codes are mapped rather than copied into RAM (`M2M_CODES=map`; see
/// [`load`]).
pub(crate) fn map_codes() -> bool {
    std::env::var("M2M_CODES").is_ok_and(|v| v == "map")
}

/// Points `index` at the index files `files` it was just written to (committed): its full vectors are
/// read from their mapping from now on, behind a warm cache of `budget` bytes, and with mapped codes
/// (`M2M_CODES=map`) its codes too (ranges of an older file that a compaction removed would keep that
/// file's disk space taken). Both are checked against what the index holds before anything changes.
pub(crate) fn attach(index: &mut Index, files: &[Arc<SectionFile>], budget: u64) -> Result<()> {
    let [hot, _] = files else {
        return Err(Error::Config { field: "index", reason: format!("{} index files, not 2", files.len()) });
    };
    index.attach_cold(cold_rows(files)?)?;
    if map_codes() {
        index.attach_codes(Arc::new(hot.shared_bytes("codes")?))?;
    }
    warm(index, files, budget)
}

/// Checks every section of the index files `files` against its checksum (reads them whole): what a
/// rewrite of the stored index from its mapped codes and vectors (a compaction) must do first, so that
/// damaged bytes are not copied into a new file under a fresh checksum, where `m2m verify` would no
/// longer see them.
pub(crate) fn verify(files: &[Arc<SectionFile>]) -> Result<()> {
    files.iter().try_for_each(|f| {
        let checked = f.verify();
        // The pages just read leave the process (the warm cache's budget holds during a compaction).
        if let Err(e) = f.unmap_pages() {
            tracing::debug!("m2m: could not release the pages of {}: {e}", f.path().display());
        }
        checked.map_err(Error::Tier)
    })
}

/// Puts the warm cache of `budget` bytes (the engine's `warm_budget_bytes`) in front of the mapped
/// vectors of `files` that `index` reads (after `attach_cold` or `load`): LOD 2 and Exact read through
/// it, and the mapping's pages it does not hold are released after each read.
pub(crate) fn warm(index: &mut Index, files: &[Arc<SectionFile>], budget: u64) -> Result<()> {
    warm_rows(index, vectors(files)?, budget);
    Ok(())
}

/// [`warm`] over the mapped `vectors` section `rows` of a vector file.
pub(crate) fn warm_rows(index: &mut Index, rows: m2m_tier::MappedF32, budget: u64) {
    let clusters = index.n_fine().max(1);
    let block = (rows.as_slice().len() * 4 / clusters) as u64;
    let row = (index.dim() * 4) as u64;
    index.set_row_cache(Some(Arc::new(WarmRows(VectorCache::new(rows, budget, block, row)))));
}

/// Loads the stored index of `files` (the manifest's `[N.idx, N.vec]`): the hot part into RAM (checksums
/// checked, but the codes'), the vectors mapped. Checked against the settings as the old blob was: a forged file with
/// valid checksums is `Corrupt` naming it.
pub(crate) fn load(files: &[Arc<SectionFile>], config: &M2mConfig) -> Result<(Index, Learned)> {
    let [hot, _] = files else {
        let path = files.first().map_or_else(PathBuf::new, |f| f.path().to_path_buf());
        return Err(Error::Tier(m2m_tier::Error::Corrupt {
            path,
            offset: 0,
            reason: format!("{} index files, not 2", files.len()),
        }));
    };
    let meta = hot.verified_bytes("meta", SectionKind::U8)?;
    let mut parts: IndexParts =
        postcard::from_bytes(meta).map_err(|e| corrupt(hot, format!("undecodable meta section: {e}")))?;
    // Serde pre-allocates a decoded `Vec` up to 1 MiB and doubles past it: the fine centroids (1.6 MB at
    // 70,000 rows) were held in 2 MiB. Held in what they take.
    for v in [&mut parts.coarse, &mut parts.fine, &mut parts.sq_min, &mut parts.sq_step] {
        v.shrink_to_fit();
    }
    parts.clusters.shrink_to_fit();
    parts.calibration_ids.shrink_to_fit();
    let offsets: &[u64] = hot.values("offsets", SectionKind::U64, true)?;
    let ids: &[u64] = hot.values("ids", SectionKind::U64, true)?;
    // The codes (0.5 to 1 byte a dimension a row: most of the file) are not checked against their
    // checksum at each open, which read and summed the whole file every time: any byte is a valid code
    // (a damaged one can cost recall, never memory safety or a wrong id), and `m2m verify`
    // (`Db::check`) checks every section of every index file. Every other section is checked here.
    // They are copied in one piece (one allocation, one copy; each cluster's `Codes` a range of it),
    // so that they stay resident under a memory cap, as the budget promises: a mapping's pages are
    // the first the kernel reclaims (without swap, the only ones). `M2M_CODES=map` maps them instead
    // (nothing read at open; queries bring their clusters' codes in from the page cache).
    let codes: &[u8] = hot.bytes("codes", SectionKind::U8)?;
    let map_codes = map_codes();
    let shared: m2m_index::SharedBytes =
        if map_codes { Arc::new(hot.shared_bytes("codes")?) } else { Arc::new(codes.to_vec()) };
    let half: &[f32] = hot.values("half_sq_norms", SectionKind::F32, true)?;
    let dim = parts.dim;
    let kind = parts.config.codes;
    let l2 = parts.config.metric == crate::Metric::L2;
    let members = ids.len();
    let monotone = offsets.windows(2).all(|w| w[0] <= w[1]);
    if offsets.len() != parts.clusters.len() + 1
        || offsets.first() != Some(&0)
        || offsets.last() != Some(&(members as u64))
        || !monotone
    {
        return Err(corrupt(
            hot,
            format!("offsets do not split {members} members into {} clusters", parts.clusters.len()),
        ));
    }
    // Each cluster's codes take `codes_len` bytes (whole blocks of 32 rows for PQ4), cluster after cluster.
    let code_bytes: usize = offsets.windows(2).map(|w| kind.codes_len(dim, (w[1] - w[0]) as usize)).sum();
    if codes.len() != code_bytes || half.len() != if l2 { members } else { 0 } {
        return Err(corrupt(hot, format!("codes or norms of the wrong length for {members} members")));
    }
    let mut at = 0usize;
    for (f, cl) in parts.clusters.iter_mut().enumerate() {
        let (lo, hi) = (offsets[f] as usize, offsets[f + 1] as usize);
        cl.ids = ids[lo..hi].to_vec();
        let len = kind.codes_len(dim, hi - lo);
        cl.codes = m2m_index::Codes::shared(Arc::clone(&shared), at..at + len)
            .ok_or_else(|| corrupt(hot, format!("cluster {f}'s codes lie past the codes section")))?;
        at += len;
        if l2 {
            cl.half_sq_norms = half[lo..hi].to_vec();
        }
    }
    let learned = Learned {
        ids: hot.values::<u64>("build_ids", SectionKind::U64, true)?.to_vec(),
        kappa: hot.values::<f32>("kappa", SectionKind::F32, true)?.to_vec(),
        alpha: hot.values::<f32>("alpha", SectionKind::F32, true)?.to_vec(),
    };
    crate::validate::learned(hot.path(), &learned.ids, &learned.kappa, &learned.alpha)?;
    // Absent in files of scalar codes (and in every file from before PQ4); a PQ4 index without it, or a
    // codebook of the wrong length, is refused by `from_cold_parts` below.
    if hot.sections().iter().any(|s| s.name == "pq_codebook") {
        parts.pq_codebook = hot.values::<f32>("pq_codebook", SectionKind::F32, true)?.to_vec();
    }
    // Absent in files whose calibration kept the fixed nprobe (and in every file from before the rule);
    // its values are checked by `from_cold_parts` below.
    if hot.sections().iter().any(|s| s.name == "probe_rule") {
        let v = hot.values::<f32>("probe_rule", SectionKind::F32, true)?;
        let [max_probe, margin] = v else {
            return Err(corrupt(hot, format!("probe_rule holds {} values, not 2", v.len())));
        };
        if !(max_probe.fract() == 0.0 && *max_probe >= 1.0 && *max_probe < 16_777_216.0) {
            return Err(corrupt(hot, format!("probe_rule max_probe {max_probe} is not a count")));
        }
        parts.probe_rule = Some(m2m_index::ProbeRule { max_probe: *max_probe as usize, margin: *margin });
    }
    // The hot file's sections are copied into RAM now: their pages leave the process, and the page
    // cache too (it would hold them twice), unless the codes are mapped (then read from it).
    let released = if map_codes { hot.unmap_pages() } else { hot.release_pages() };
    if let Err(e) = released {
        tracing::debug!("m2m: could not release the pages of {}: {e}", hot.path().display());
    }
    let mut index = Index::from_cold_parts(parts, cold_rows(files)?).map_err(|e| corrupt(hot, e.to_string()))?;
    crate::validate::index_matches(hot.path(), &index, config, &learned.ids)?;
    warm(&mut index, files, config.warm_budget_bytes)?;
    Ok((index, learned))
}

/// The error of index files that could not be mapped (kept by the snapshot), as this crate's error.
pub(crate) fn damage(dir: &std::path::Path, e: &m2m_tier::Error) -> Error {
    Error::Tier(match e {
        m2m_tier::Error::Corrupt { path, offset, reason } => {
            m2m_tier::Error::Corrupt { path: path.clone(), offset: *offset, reason: reason.clone() }
        }
        m2m_tier::Error::IncompatibleVersion { path, found, supported } => {
            m2m_tier::Error::IncompatibleVersion { path: path.clone(), found: *found, supported: *supported }
        }
        other => m2m_tier::Error::Corrupt { path: dir.to_path_buf(), offset: 0, reason: other.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{M2m, Metric};
    use m2m_index::{CodeKind, IndexConfig, Lod, SearchParams};
    use m2m_tier::{DbOptions, RowReads};

    const DIM: usize = 16;
    const ROWS: usize = 600;

    fn open_all(paths: &[PathBuf]) -> Vec<Arc<SectionFile>> {
        paths.iter().map(|p| Arc::new(SectionFile::open(p).unwrap())).collect()
    }

    /// Copies the hot file `from` to `to`, section by section, with `edit` applied to each (name, bytes);
    /// `None` leaves the section out.
    fn rewrite(from: &SectionFile, to: &std::path::Path, edit: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) {
        let mut w = SectionWriter::create(to).unwrap();
        for s in from.sections() {
            if let Some(bytes) = edit(&s.name, from.bytes(&s.name, s.kind).unwrap()) {
                w.begin(&s.name, s.kind).unwrap();
                w.write(&bytes).unwrap();
            }
        }
        w.finish().unwrap();
    }

    /// A PQ4 index written to its section files loads with the same codebook and answers as before; a hot
    /// file without its `pq_codebook` section, or with a NaN in it, is `Corrupt` naming that file. An SQ4
    /// index writes no such section (files stay as before PQ4). Catches a writer that drops the codebook,
    /// a loader that slices PQ4 codes by a per-row stride (blocks of 32 rows are not), and a codebook
    /// accepted unchecked.
    #[test]
    fn a_pq4_index_round_trips_and_a_forged_codebook_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
        let vectors: Vec<f32> = (0..ROWS * DIM).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let ids: Vec<u64> = (0..ROWS as u64).collect();
        let learned = Learned { ids: ids.clone(), kappa: vec![10.0; ROWS], alpha: vec![1.0; ROWS] };
        let config = M2mConfig::default().dim(DIM);
        let pq = CodeKind::Pq4 { dims_per_code: 2, anisotropic: true };
        let index = Index::build(&IndexConfig::default().codes(pq), DIM, &vectors, &ids).unwrap();
        let paths = write(&db, &index, &learned).unwrap();
        let files = open_all(&paths);
        assert!(files[0].sections().iter().any(|s| s.name == "pq_codebook"));
        let (back, _) = load(&files, &config).unwrap();
        assert_eq!(back.parts().pq_codebook, index.parts().pq_codebook);
        let p = SearchParams::default();
        let q = &vectors[..8 * DIM];
        assert_eq!(
            back.search_batch(q, 10, Lod::Codes, &p).unwrap(),
            index.search_batch(q, 10, Lod::Codes, &p).unwrap()
        );

        let forged = dir.path().join("forged.idx");
        type Edit = Box<dyn Fn(&str, &[u8]) -> Option<Vec<u8>>>;
        let forgeries: [(&str, Edit); 2] = [
            ("no codebook", Box::new(|name, b| (name != "pq_codebook").then(|| b.to_vec()))),
            (
                "NaN in the codebook",
                Box::new(|name, b| {
                    let mut b = b.to_vec();
                    if name == "pq_codebook" {
                        b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                    }
                    Some(b)
                }),
            ),
        ];
        for (what, edit) in forgeries {
            rewrite(&files[0], &forged, edit);
            let bad = vec![Arc::new(SectionFile::open(&forged).unwrap()), files[1].clone()];
            match load(&bad, &config) {
                Err(Error::Tier(m2m_tier::Error::Corrupt { path, .. })) => assert_eq!(path, forged, "{what}"),
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }

        let sq = Index::build(&IndexConfig::default(), DIM, &vectors, &ids).unwrap();
        let paths = write(&db, &sq, &learned).unwrap();
        let files = open_all(&paths);
        assert!(files[0].sections().iter().all(|s| s.name != "pq_codebook"));
        let (back, _) = load(&files, &config).unwrap();
        assert_eq!(back.search_batch(q, 10, Lod::Codes, &p).unwrap(), sq.search_batch(q, 10, Lod::Codes, &p).unwrap());
    }

    /// The adaptive probe rule survives a store and load (and LOD 2 at the default answers as before);
    /// an index without one writes no `probe_rule` section and loads without one; a section of the wrong
    /// length, a cap that is not a whole number, or a NaN margin is `Corrupt` naming the file. Catches a
    /// writer that drops the rule (the reloaded engine would probe the fixed nprobe), a loader that
    /// ignores it, and values accepted unchecked.
    #[test]
    fn the_probe_rule_round_trips_and_a_forged_one_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
        let vectors: Vec<f32> = (0..ROWS * DIM).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let ids: Vec<u64> = (0..ROWS as u64).collect();
        let learned = Learned { ids: ids.clone(), kappa: vec![10.0; ROWS], alpha: vec![1.0; ROWS] };
        let config = M2mConfig::default().dim(DIM);
        let mut index = Index::build(&IndexConfig::default(), DIM, &vectors, &ids).unwrap();
        index.set_probe_rule(None).unwrap();
        let files = open_all(&write(&db, &index, &learned).unwrap());
        assert!(files[0].sections().iter().all(|s| s.name != "probe_rule"));
        assert_eq!(load(&files, &config).unwrap().0.probe_rule(), None);

        let rule = m2m_index::ProbeRule { max_probe: 5, margin: 0.375 };
        index.set_probe_rule(Some(rule)).unwrap();
        let files = open_all(&write(&db, &index, &learned).unwrap());
        let (back, _) = load(&files, &config).unwrap();
        assert_eq!(back.probe_rule(), Some(rule));
        let (p, q) = (SearchParams::default(), &vectors[..8 * DIM]);
        assert_eq!(
            back.search_batch(q, 10, Lod::Rerank, &p).unwrap(),
            index.search_batch(q, 10, Lod::Rerank, &p).unwrap()
        );

        let forged = dir.path().join("forged.idx");
        let values = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        for (what, bad) in [
            ("three values", values(&[5.0, 0.375, 1.0])),
            ("a fractional cap", values(&[5.5, 0.375])),
            ("a cap of 0", values(&[0.0, 0.375])),
            ("a NaN margin", values(&[5.0, f32::NAN])),
        ] {
            rewrite(&files[0], &forged, |name, b| Some(if name == "probe_rule" { bad.clone() } else { b.to_vec() }));
            let bad_files = vec![Arc::new(SectionFile::open(&forged).unwrap()), files[1].clone()];
            match load(&bad_files, &config) {
                Err(Error::Tier(m2m_tier::Error::Corrupt { path, .. })) => assert_eq!(path, forged, "{what}"),
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }
    }

    /// LOD 2 and Exact answer the same through the warm cache at any budget (everything, 10% of the
    /// vectors, nothing) as in place, and the cache never holds more than its budget. Mutations caught:
    /// the cached re-rank reading another cluster's block or scoring the wrong row of it (hits differ);
    /// offering scores in another order (ties resolved differently: the lists differ); a cache that
    /// keeps blocks past its budget; a cache never used (no hit at 10%). Each budget is tried with
    /// every way of reading rows (batched through the page cache or past it, row by row, and the
    /// automatic choice): the by-row re-rank's batch (`read_rows`) scoring a row for the wrong
    /// candidate, or a batched path never taken where it is available (`batched_rows`), fail it.
    #[test]
    fn results_are_the_same_through_the_cache_at_any_budget_and_the_budget_holds() {
        let dim = 24;
        let n = 3000;
        let base: Vec<f32> = (0..n * dim).map(|i| (((i * 7919) % 263) as f32 / 60.0 - 2.0).sin()).collect();
        let queries: Vec<f32> = (0..40 * dim).map(|i| (((i * 104_729) % 241) as f32 / 50.0 - 2.4).cos()).collect();
        for metric in [Metric::Cosine, Metric::L2] {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::M2mConfig {
                durable: false,
                metric,
                learn_kappa: false,
                ..crate::M2mConfig::default().dim(dim).data_dir(dir.path().join("db"))
            };
            let mut engine = M2m::create(config).unwrap();
            engine.add_splats(&base).unwrap();
            engine.build_index().unwrap();
            drop(engine);
            let engine = M2m::open(dir.path().join("db")).unwrap();
            let mut index = engine.index().unwrap().clone();
            let files = engine.tier_snapshot().unwrap().index;
            assert!(index.is_cold());
            let params = SearchParams { nprobe: 6, ..SearchParams::default() };
            let answer = |index: &Index| {
                let mut out = Vec::new();
                for lod in [Lod::Rerank, Lod::Exact] {
                    for q in queries.chunks_exact(dim) {
                        out.push(index.search(q, 10, lod, &params).unwrap());
                    }
                    out.extend(index.search_batch(&queries, 10, lod, &params).unwrap());
                }
                out
            };
            index.set_row_cache(None);
            let in_place = answer(&index);
            let bytes = (n * dim * 4) as u64;
            let modes = [RowReads::Auto, RowReads::Batched, RowReads::Direct, RowReads::Pread];
            let runs = [bytes * 2, bytes / 10, 0].into_iter().flat_map(|b| modes.map(|m| (b, m)));
            for (budget, reads) in runs {
                let cache = Arc::new(WarmRows(
                    VectorCache::new(vectors(&files).unwrap(), budget, bytes / 100, (dim * 4) as u64)
                        .with_row_reads(reads),
                ));
                // Below the vectors' size the re-rank reads single rows (`rerank_by_row`): its answers too.
                assert_eq!(cache.by_row(), budget < bytes, "budget {budget}");
                index.set_row_cache(Some(Arc::clone(&cache) as Arc<dyn RowCache>));
                for round in 0..2 {
                    assert_eq!(answer(&index), in_place, "{metric:?}, budget {budget}, {reads:?}, round {round}");
                    let s = cache.0.stats();
                    assert!(s.resident_bytes <= budget, "{metric:?}: {} bytes held, budget {budget}", s.resident_bytes);
                    if budget > 0 {
                        assert!(s.hits > 0 && s.misses > 0, "{metric:?}, budget {budget}: {s:?}");
                    }
                    // Rows read in batches exactly where asked for and available.
                    let batched = cache.0.by_row() && cache.0.row_reads() != RowReads::Pread;
                    assert_eq!(s.batched_rows > 0, batched, "{metric:?}, budget {budget}, {reads:?}: {s:?}");
                }
            }
        }
    }
}
