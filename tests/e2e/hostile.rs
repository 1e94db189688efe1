//! What a hostile but realistic user does to a stored engine: forged blobs with valid checksums, absurd
//! k, a database made by a GPU build, a create killed midway. Each is a typed error or a right answer,
//! never a panic.

use std::path::{Path, PathBuf};

use m2m::index::IndexParts;
use m2m::tier::{SectionFile, SectionKind, SectionWriter};
use m2m::{CONFIG_BLOB, Error, ErrorKind, INDEX_BLOB, LEARNED_BLOB, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 16;

fn built(dir: &Path, rows: usize) -> Vec<f32> {
    built_with(dir, rows, None)
}

/// [`built`] with the given code kind (`None`: the default for the dimension).
fn built_with(dir: &Path, rows: usize, codes: Option<m2m::index::CodeKind>) -> Vec<f32> {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows, queries: 0, dim: DIM, ..Default::default() }).unwrap();
    let config = M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(dir).codes(codes) };
    let mut engine = M2m::create(config).unwrap();
    engine.add_splats(&d.base).unwrap();
    engine.build_index().unwrap();
    engine.flush().unwrap();
    d.base
}

/// The stored index's files as (name, kind, bytes) per section: `[N.idx, N.vec]`.
type Sections = Vec<(String, SectionKind, Vec<u8>)>;

fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx" || x == "vec"))
        .collect();
    files.sort_by_key(|p| p.extension().unwrap_or_default() == "vec");
    assert_eq!(files.len(), 2, "{files:?}");
    files
}

fn read_sections(path: &Path) -> Sections {
    let f = SectionFile::open(path).unwrap();
    f.sections().iter().map(|e| (e.name.clone(), e.kind, f.bytes(&e.name, e.kind).unwrap().to_vec())).collect()
}

/// Rewrites a section file with valid checksums (a forger who knows the format).
fn write_sections(path: &Path, sections: &Sections) {
    let mut w = SectionWriter::create(path).unwrap();
    for (name, kind, bytes) in sections {
        w.begin(name, *kind).unwrap();
        w.write(bytes).unwrap();
    }
    w.finish().unwrap();
}

/// What a forgery may change: the hot file's sections (with the decoded `meta`) and the vector file's.
struct Stored {
    meta: IndexParts,
    hot: Sections,
    cold: Sections,
}

impl Stored {
    fn section(&mut self, name: &str) -> &mut Vec<u8> {
        let all = self.hot.iter_mut().chain(self.cold.iter_mut());
        all.into_iter().find(|(n, _, _)| n == name).map(|(_, _, b)| b).unwrap()
    }

    fn set_f32(&mut self, name: &str, i: usize, v: f32) {
        self.section(name)[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u64(&mut self, name: &str, i: usize, v: u64) {
        self.section(name)[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn get_u64(&mut self, name: &str, i: usize) -> u64 {
        u64::from_le_bytes(self.section(name)[8 * i..8 * i + 8].try_into().unwrap())
    }
}

fn forge(dir: &Path, change: impl FnOnce(&mut Stored)) {
    let files = index_files(dir);
    let hot = read_sections(&files[0]);
    let meta = postcard::from_bytes(&hot.iter().find(|s| s.0 == "meta").unwrap().2).unwrap();
    let mut stored = Stored { meta, hot, cold: read_sections(&files[1]) };
    change(&mut stored);
    let meta = postcard::to_allocvec(&stored.meta).unwrap();
    *stored.section("meta") = meta;
    write_sections(&files[0], &stored.hot);
    write_sections(&files[1], &stored.cold);
}

/// A named change to a stored index.
type Forgery = (&'static str, Box<dyn Fn(&mut Stored)>);

fn names_the_index(e: &Error) -> bool {
    matches!(e, Error::Tier(m2m::tier::Error::Corrupt { path, .. })
        if path.extension().is_some_and(|x| x == "idx" || x == "vec"))
}

/// Catches: a decoded value of the stored index used unchecked (a panic or a wrong answer instead of
/// `Corrupt` naming the file), and a writer that refuses to open, instead of rebuilding, over a bad index.
#[test]
fn a_forged_index_is_a_typed_error_for_readers_and_rebuilt_by_the_writer() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let base = built(&pristine, 600);
    let forgeries: Vec<Forgery> = vec![
        (
            "one kappa value fewer",
            Box::new(|s| {
                let k = s.section("kappa");
                k.truncate(k.len() - 4);
            }),
        ),
        (
            "one alpha value fewer",
            Box::new(|s| {
                let a = s.section("alpha");
                a.truncate(a.len() - 4);
            }),
        ),
        ("a NaN kappa", Box::new(|s| s.set_f32("kappa", 3, f32::NAN))),
        (
            "an id twice",
            Box::new(|s| {
                let first = s.get_u64("build_ids", 0);
                s.set_u64("build_ids", 1, first);
            }),
        ),
        (
            "a member id twice",
            Box::new(|s| {
                let first = s.get_u64("ids", 0);
                s.set_u64("ids", 1, first);
            }),
        ),
        ("a NaN centroid", Box::new(|s| s.meta.fine[0] = f32::NAN)),
        ("another dimension", Box::new(|s| s.meta.dim = DIM * 2)),
        (
            "a cluster member dropped",
            Box::new(|s| {
                let ids = s.section("ids");
                ids.truncate(ids.len() - 8);
            }),
        ),
        ("offsets out of order", Box::new(|s| s.set_u64("offsets", 1, 10_000))),
        (
            "codes cut short",
            Box::new(|s| {
                let c = s.section("codes");
                c.truncate(c.len() - 1);
            }),
        ),
        (
            "one vector fewer",
            Box::new(|s| {
                let v = s.section("vectors");
                v.truncate(v.len() - 4 * DIM);
            }),
        ),
    ];
    for (n, (what, change)) in forgeries.into_iter().enumerate() {
        let dir = root.path().join(format!("forged-{n}"));
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(&pristine).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let dir = dir.as_path();
        forge(dir, change);
        let e = M2m::open_read_only(dir).expect_err(what);
        assert!(names_the_index(&e), "{what}: {e}");
        // The writer (ingest, build) reports it and goes on without it, so that a build replaces it.
        let mut engine = M2m::open(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(engine.index().is_none(), "{what}: a forged index was loaded");
        assert!(matches!(engine.retrieve(&base[..DIM], 1, Lod::Exact), Err(Error::NoIndex { .. })));
        if what == "a NaN centroid" {
            engine.build_index().unwrap();
            drop(engine);
            let engine = M2m::open_read_only(dir).unwrap();
            assert_eq!(engine.retrieve(&base[5 * DIM..6 * DIM], 1, Lod::Exact).unwrap()[0].id, 5);
            assert_eq!(index_files(dir).len(), 2, "the forged files stay beside the new ones");
        }
    }
}

/// The layout of the index blob of builds before the section files (postcard encodes a struct as its
/// fields in order).
#[derive(serde::Serialize, serde::Deserialize)]
struct LegacyIndex {
    parts: IndexParts,
    ids: Vec<u64>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
}

/// Catches: a database of an older build (its index in `m2m-index.blob`, a version 1 manifest) that no
/// longer opens with its index, and a build that leaves the old blob beside the new files.
#[test]
fn a_database_with_the_old_index_blob_opens_and_the_next_build_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    // Older builds stored SQ4 codes only (the blob's serde form has no PQ4 codebook: a PQ4 index in it
    // is refused as corrupt), so this database is built with SQ4, whatever the default at DIM.
    let sq4 = Some(m2m::index::CodeKind::Sq4);
    let base = built_with(dir.path(), 500, sq4);
    let stored = M2m::open_read_only(dir.path()).unwrap();
    let want = stored.retrieve_batch(&base[..20 * DIM], 5, Lod::Rerank).unwrap();
    drop(stored);
    // The same index with its vectors in RAM (the build is deterministic for the seed), and the learned
    // values of the build, as an older build stored them.
    let mut ram = M2m::create(M2mConfig::default().dim(DIM).codes(sq4)).unwrap();
    ram.add_splats(&base).unwrap();
    ram.build_index().unwrap();
    #[derive(serde::Deserialize)]
    struct Learned {
        ids: Vec<u64>,
        kappa: Vec<f32>,
        alpha: Vec<f32>,
    }
    let learned: Learned = postcard::from_bytes(&m2m::tier::load_blob(dir.path(), LEARNED_BLOB).unwrap()).unwrap();
    let legacy = LegacyIndex {
        parts: ram.index().unwrap().parts().clone(),
        ids: learned.ids,
        kappa: learned.kappa,
        alpha: learned.alpha,
    };
    let mut db = m2m::tier::Db::open(dir.path(), m2m::tier::DbOptions::default()).unwrap();
    db.drop_index().unwrap();
    drop(db);
    m2m::tier::store_blob(dir.path(), INDEX_BLOB, &postcard::to_allocvec(&legacy).unwrap()).unwrap();
    assert_eq!(std::fs::read(dir.path().join("MANIFEST")).unwrap()[8], 1, "an old build's manifest");
    let reader = M2m::open_read_only(dir.path()).unwrap();
    assert!(reader.index().is_some_and(|i| !i.is_cold()), "the blob's index is read whole");
    assert_eq!(reader.retrieve_batch(&base[..20 * DIM], 5, Lod::Rerank).unwrap(), want);
    drop(reader);
    let mut writer = M2m::open(dir.path()).unwrap();
    writer.build_index().unwrap();
    drop(writer);
    assert!(!dir.path().join(INDEX_BLOB).exists(), "the old blob stays beside the new index");
    let reader = M2m::open_read_only(dir.path()).unwrap();
    assert!(reader.index().is_some_and(m2m::index::Index::is_cold));
    // Rebuilt from the segments (unit rows times norms, normalised again): the same neighbours, scores
    // and learned values within f32 rounding.
    let got = reader.retrieve_batch(&base[..20 * DIM], 5, Lod::Rerank).unwrap();
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert_eq!(g.id, w.id);
        assert!((g.score - w.score).abs() < 1e-5 && (g.kappa - w.kappa).abs() < 1e-3 * w.kappa, "{g:?} {w:?}");
    }
}

#[test]
fn any_k_is_answered_with_at_most_every_live_splat() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path(), 300);
    let mut engine = M2m::open(dir.path()).unwrap();
    engine.delete(&[0, 1]).unwrap();
    for k in [usize::MAX, 1 << 62, 1_000_000_000, 299] {
        for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
            let hits = engine.retrieve(&base[..DIM], k, lod).unwrap();
            assert!(hits.len() <= 298, "k {k} at {lod:?}: {} hits", hits.len());
            let batch = engine.retrieve_batch(&base[..2 * DIM], k, lod).unwrap();
            assert_eq!(batch.len(), 2);
        }
        assert_eq!(engine.retrieve(&base[..DIM], k, Lod::Exact).unwrap().len(), 298, "k {k}");
    }
    assert!(matches!(engine.retrieve(&base[..DIM], 0, Lod::Exact), Err(Error::Index(_))), "k = 0 is refused");
}

#[test]
fn absurd_generate_sizes_and_dimensions_are_typed_errors_not_aborts_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path(), 300);
    let engine = M2m::open(dir.path()).unwrap();
    // Each of these once allocated until the process aborted, or ran for ever.
    let field = |r: m2m::Result<Vec<f32>>| match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {:?}", other.map(|v| v.len())),
    };
    assert_eq!(field(engine.generate_n(1 << 40, 1)), "n");
    assert_eq!(field(engine.generate_n(usize::MAX, 1)), "n");
    assert_eq!(field(engine.generate_n(1, usize::MAX)), "steps");
    assert_eq!(field(engine.generate(&base[..DIM], m2m::MAX_GENERATE_STEPS + 1)), "steps");
    // Within them they run.
    assert_eq!(engine.generate_n(4, 1).unwrap().len(), 4 * DIM);
    assert_eq!(engine.generate(&base[..DIM], 3).unwrap().len(), DIM);
    let too_many = M2mConfig { langevin_steps: m2m::MAX_GENERATE_STEPS + 1, ..M2mConfig::default().dim(DIM) };
    assert!(matches!(M2m::create(too_many), Err(Error::Config { field: "langevin_steps", .. })));
    // A dimension no row can have is refused before anything is written: the directory stays empty.
    let fresh = dir.path().join("huge");
    let huge = M2mConfig::default().dim(1 << 40).data_dir(&fresh);
    assert!(matches!(M2m::create(huge), Err(Error::Config { field: "dim", .. })));
    assert!(!fresh.exists(), "nothing made for a refused create");
    assert!(matches!(M2m::create(M2mConfig::default().dim(1 << 40)), Err(Error::Config { field: "dim", .. })));
}

#[test]
fn a_database_created_for_vulkan_opens_in_any_build() {
    let dir = tempfile::tempdir().unwrap();
    built(dir.path(), 200);
    let json = m2m::tier::load_blob(dir.path(), CONFIG_BLOB).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&json).unwrap();
    config["device"] = "Vulkan".into();
    m2m::tier::store_blob(dir.path(), CONFIG_BLOB, &serde_json::to_vec(&config).unwrap()).unwrap();
    // The device is a preference of the machine that made it, not a property of the data.
    let reader = M2m::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.len(), 200);
    let writer = M2m::open(dir.path()).unwrap();
    assert!(writer.index().is_some());
}

#[test]
fn a_create_killed_before_the_settings_is_created_again_and_an_unused_one_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // What a create killed between the database's manifest and the settings leaves.
    drop(m2m::tier::Db::create(&path, DIM * 2, m2m::tier::DbOptions::default()).unwrap());
    assert!(M2m::open(&path).is_err(), "no settings: not an engine");
    let mut engine = M2m::create(M2mConfig::default().dim(DIM).data_dir(&path)).unwrap();
    assert_eq!(engine.config().dim, DIM);
    engine.add_splats(&[0.5; 3 * DIM]).unwrap();
    drop(engine);
    assert_eq!(M2m::open(&path).unwrap().len(), 3);
    // A used database is not discarded; a never-used one leaves the directory empty.
    assert!(M2m::open(&path).unwrap().discard().is_err());
    assert_eq!(M2m::open(&path).unwrap().len(), 3);
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    M2m::create(M2mConfig::default().dim(DIM).data_dir(&fresh)).unwrap().discard().unwrap();
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0, "the directory is as it was");
}

#[test]
fn the_largest_id_is_accepted_and_no_later_add_panics() {
    // `next_id = max + 1` overflowed (a panic in debug builds, a wrap to id 0 in release) when a caller
    // or a forged log used the largest id. `u64::MAX` itself is reserved (it marks the padding of short
    // hit lists): refused by add with a typed error; `u64::MAX - 1` is the largest id a row may have.
    let dir = tempfile::tempdir().unwrap();
    let mut e = M2m::create(M2mConfig::default().dim(4).data_dir(dir.path().join("db"))).unwrap();
    let err = e.add_splats_with(&[1.0, 0.0, 0.0, 0.0], &[u64::MAX], None, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(e.is_empty());
    e.add_splats_with(&[1.0, 0.0, 0.0, 0.0], &[u64::MAX - 1], None, None).unwrap();
    assert!(e.contains(u64::MAX - 1));
    // No id is left to assign: a typed error, the engine unchanged, never a wrapped or repeated id.
    assert!(e.add_splats(&[0.0, 1.0, 0.0, 0.0]).is_err());
    assert_eq!(e.len(), 1);
    drop(e);
    let e = M2m::open(dir.path().join("db")).unwrap();
    assert_eq!(e.len(), 1);
    assert!(e.contains(u64::MAX - 1));
}

/// A writer's open that cuts a damaged log tail says what it dropped (`cut_tail`, and a warning), and a
/// forged setting's error names `m2m-config.blob`. Mutations caught: `open_config` not reading
/// `Db::cut_tail` (None here), `stored_config` passing `check`'s error on without the blob's path.
#[test]
fn a_cut_tail_is_reported_and_a_forged_setting_names_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut e = M2m::create(M2mConfig::default().dim(4).data_dir(&db)).unwrap();
    e.add_splats(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
    e.add_splats(&[0.0, 0.0, 1.0, 0.0]).unwrap();
    drop(e);
    let wal = std::fs::read_dir(&db)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&wal, &bytes).unwrap();
    let e = M2m::open(&db).unwrap();
    let cut = e.cut_tail().expect("the cut is reported");
    assert_eq!((cut.path.as_path(), cut.rows), (wal.as_path(), Some(1)));
    assert_eq!(e.len(), 2, "the damaged last record (1 row) is dropped, the first kept");
    drop(e);
    assert!(M2m::open(&db).unwrap().cut_tail().is_none());

    let json = String::from_utf8(m2m::tier::load_blob(&db, CONFIG_BLOB).unwrap()).unwrap();
    let forged = json.replacen("\"dim\": 4", "\"dim\": 0", 1);
    assert_ne!(json, forged, "the settings hold \"dim\": 4");
    m2m::tier::store_blob(&db, CONFIG_BLOB, forged.as_bytes()).unwrap();
    for r in [M2m::open(&db).map(drop), M2m::open_read_only(&db).map(drop)] {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(CONFIG_BLOB), "{msg}");
    }
}

/// A flipped byte in the stored index's codes: the open maps the codes without reading their checksum
/// (any byte is a code), so readers and the writer open and answer, and `Db::check` (`m2m verify`)
/// reports the file and the section. A flipped byte in the member ids (checked at every open) is still
/// refused by the open, typed and naming the file. Mutations caught: `Db::check` without the index
/// files' checksums (no problem reported), the open reading every section unchecked (the ids pass).
#[test]
fn a_damaged_code_is_found_by_verify_and_a_damaged_id_by_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path(), 600);
    let files = index_files(dir.path());
    let flip = |name: &str| {
        let offset = SectionFile::open(&files[0]).unwrap().sections().iter().find(|e| e.name == name).unwrap().offset;
        let mut bytes = std::fs::read(&files[0]).unwrap();
        bytes[offset as usize + 5] ^= 0x01;
        std::fs::write(&files[0], &bytes).unwrap();
    };
    flip("codes");
    let reader = M2m::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.retrieve(&base[..DIM], 10, Lod::Rerank).unwrap().len(), 10);
    let writer = M2m::open(dir.path()).unwrap();
    assert!(writer.index().is_some(), "the writer left the index out");
    drop((reader, writer));
    let problem = m2m::tier::Db::check(dir.path()).unwrap().index_problem.expect("verify finds the damage");
    assert!(problem.contains("codes") && problem.contains(&*files[0].to_string_lossy()), "{problem}");
    flip("codes");
    assert!(m2m::tier::Db::check(dir.path()).unwrap().index_problem.is_none(), "the byte flipped back");
    flip("ids");
    let e = M2m::open_read_only(dir.path()).unwrap_err();
    assert!(names_the_index(&e) && e.to_string().contains("ids"), "{e}");
}

/// The open maps the codes and vectors unchecked (`m2m verify` checks them): a compaction, which stores
/// the index again from those mappings, checks them first. Damaged codes are refused there, naming
/// the file, and nothing is written: the damage stays where `m2m verify` sees it, never copied into a
/// new file under a fresh checksum. Catches `compact` without `stored::verify`.
#[test]
fn a_compaction_refuses_damaged_codes_instead_of_storing_them_again() {
    let dir = tempfile::tempdir().unwrap();
    built(dir.path(), 600);
    let files = index_files(dir.path());
    let offset = SectionFile::open(&files[0]).unwrap().sections().iter().find(|e| e.name == "codes").unwrap().offset;
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[offset as usize + 7] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut writer = M2m::open(dir.path()).unwrap();
    writer.delete(&[3]).unwrap();
    let e = writer.compact().unwrap_err();
    assert!(names_the_index(&e) && e.to_string().contains("codes"), "{e}");
    drop(writer);
    assert_eq!(index_files(dir.path()), files, "a compaction that failed wrote an index");
    let problem = m2m::tier::Db::check(dir.path()).unwrap().index_problem.expect("verify still finds the damage");
    assert!(problem.contains("codes"), "{problem}");
}

/// After a compaction the hot file it replaced is not kept mapped (its disk space would stay taken until
/// the engine is dropped), and the index answers as before. With the default (codes copied at open)
/// this guards against a change that maps them without re-pointing them after a compaction; the
/// re-pointing itself (`attach_codes`, used with `M2M_CODES=map`) is tested in m2m-index.
#[test]
fn a_compaction_leaves_no_removed_index_file_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path(), 600);
    let old = index_files(dir.path());
    let mut writer = M2m::open(dir.path()).unwrap();
    writer.add_splats(&base[..4 * DIM]).unwrap();
    writer.delete(&[5]).unwrap();
    let before = writer.retrieve(&base[7 * DIM..8 * DIM], 10, Lod::Codes).unwrap();
    writer.compact().unwrap();
    assert!(!old[0].exists(), "the compaction stored the index again");
    let here = dir.path().to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let stale: Vec<&str> = maps.lines().filter(|l| l.contains(&here) && l.contains("(deleted)")).collect();
    assert!(stale.is_empty(), "removed files still mapped: {stale:#?}");
    let after = writer.retrieve(&base[7 * DIM..8 * DIM], 10, Lod::Codes).unwrap();
    assert_eq!(before, after, "the codes read from the new file answer as before");
}

/// A damaged saved SOC pile (a valid checksum over bytes that do not decode) is the reader's typed
/// error at the pile's first read, but a writer's first read of it can come after a flush or a build
/// has committed: there it starts a fresh pile (a warning) and the save replaces the blob, so that a
/// committed flush or build never reports failure. Catches the writer's `pile` returning the error
/// (the flush and the build then fail after committing, and the build leaves no controller).
#[test]
fn a_damaged_soc_pile_fails_no_write_after_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = digits_on_sphere(&m2m::DigitsConfig { rows: 800, queries: 0, dim: DIM, ..Default::default() }).unwrap();
    {
        let config = M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(dir.path()) };
        let mut e = M2m::create(config).unwrap();
        let ids = e.add_splats(&d.base).unwrap();
        e.build_index().unwrap();
        e.feedback(&ids, &vec![1.0; ids.len()]).unwrap();
        e.tick().unwrap();
        e.flush().unwrap();
    }
    m2m::tier::store_blob(dir.path(), m2m::SOC_BLOB, b"forged, with a valid checksum").unwrap();
    let reader = M2m::open_read_only(dir.path()).unwrap();
    let e = reader.tick().unwrap_err();
    assert!(e.to_string().contains(m2m::SOC_BLOB), "{e}");
    assert!(reader.check_deferred().is_err(), "verify's check misses the damaged pile");
    drop(reader);
    let mut writer = M2m::open(dir.path()).unwrap();
    for q in d.base.chunks_exact(DIM).take(10) {
        writer.retrieve(q, 10, Lod::Rerank).unwrap();
    }
    let segments = writer.stats().segments;
    writer.add_splats(&d.base[..10 * DIM]).unwrap();
    writer.flush().expect("a flush that committed reports success");
    assert_eq!(writer.stats().segments, segments + 1);
    writer.build_index().expect("a build that committed reports success");
    writer.tick().expect("the controller survives the build");
    drop(writer);
    let reader = M2m::open_read_only(dir.path()).unwrap();
    reader.check_deferred().expect("the writer's save replaced the damaged pile");
}
