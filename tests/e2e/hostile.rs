//! What a hostile but realistic user does to a stored engine: forged blobs with valid checksums, absurd
//! k, a database made by a GPU build, a create killed midway. Each is a typed error or a right answer,
//! never a panic.

use std::path::Path;

use m2m::index::IndexParts;
use m2m::{CONFIG_BLOB, Error, INDEX_BLOB, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 16;

/// The layout of the facade's stored index (postcard encodes a struct as its fields in order), so that
/// a test can forge one with a valid checksum.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIndex {
    parts: IndexParts,
    ids: Vec<u64>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
}

fn built(dir: &Path, rows: usize) -> Vec<f32> {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows, queries: 0, dim: DIM, ..Default::default() }).unwrap();
    let mut engine = M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(dir) }).unwrap();
    engine.add_splats(&d.base).unwrap();
    engine.build_index().unwrap();
    engine.flush().unwrap();
    d.base
}

fn forge(dir: &Path, change: impl FnOnce(&mut StoredIndex)) {
    let bytes = m2m::tier::load_blob(dir, INDEX_BLOB).unwrap();
    let mut stored: StoredIndex = postcard::from_bytes(&bytes).unwrap();
    change(&mut stored);
    m2m::tier::store_blob(dir, INDEX_BLOB, &postcard::to_allocvec(&stored).unwrap()).unwrap();
}

/// A named change to a stored index.
type Forgery = (&'static str, Box<dyn Fn(&mut StoredIndex)>);

fn names_the_index(e: &Error) -> bool {
    matches!(e, Error::Tier(m2m::tier::Error::Corrupt { path, .. }) if path.ends_with(INDEX_BLOB))
}

#[test]
fn a_forged_index_is_a_typed_error_for_readers_and_rebuilt_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path(), 600);
    let good = std::fs::read(dir.path().join(INDEX_BLOB)).unwrap();
    let forgeries: Vec<Forgery> = vec![
        (
            "one kappa value fewer",
            Box::new(|s| {
                s.kappa.pop();
            }),
        ),
        (
            "one alpha value fewer",
            Box::new(|s| {
                s.alpha.pop();
            }),
        ),
        ("a NaN kappa", Box::new(|s| s.kappa[3] = f32::NAN)),
        ("an id twice", Box::new(|s| s.ids[1] = s.ids[0])),
        ("a NaN centroid", Box::new(|s| s.parts.fine[0] = f32::NAN)),
        ("another dimension", Box::new(|s| s.parts.dim = DIM * 2)),
        (
            "a cluster member dropped",
            Box::new(|s| {
                s.parts.clusters[0].ids.pop();
            }),
        ),
    ];
    for (what, change) in forgeries {
        std::fs::write(dir.path().join(INDEX_BLOB), &good).unwrap();
        forge(dir.path(), change);
        let e = M2m::open_read_only(dir.path()).expect_err(what);
        assert!(names_the_index(&e), "{what}: {e}");
        // The writer (ingest, build) reports it and goes on without it, so that a build replaces it.
        let mut engine = M2m::open(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(engine.index().is_none(), "{what}: a forged index was loaded");
        assert!(matches!(engine.retrieve(&base[..DIM], 1, Lod::Exact), Err(Error::NoIndex { .. })));
        if what == "a NaN centroid" {
            engine.build_index().unwrap();
            drop(engine);
            let engine = M2m::open_read_only(dir.path()).unwrap();
            assert_eq!(engine.retrieve(&base[5 * DIM..6 * DIM], 1, Lod::Exact).unwrap()[0].id, 5);
        }
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
    // or a forged log used id u64::MAX.
    let dir = tempfile::tempdir().unwrap();
    let mut e = M2m::create(M2mConfig::default().dim(4).data_dir(dir.path().join("db"))).unwrap();
    e.add_splats_with(&[1.0, 0.0, 0.0, 0.0], &[u64::MAX], None, None).unwrap();
    assert!(e.contains(u64::MAX));
    // No id is left to assign: a typed error, the engine unchanged, never a wrapped or repeated id.
    assert!(e.add_splats(&[0.0, 1.0, 0.0, 0.0]).is_err());
    assert_eq!(e.len(), 1);
    drop(e);
    let e = M2m::open(dir.path().join("db")).unwrap();
    assert_eq!(e.len(), 1);
    assert!(e.contains(u64::MAX));
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
