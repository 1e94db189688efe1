//! The stored index's section files inside a database: committed through the manifest, replaced whole,
//! never mixed after a failure at any write, sync, create or rename, and foreign files left alone.

use std::fs;
use std::path::{Path, PathBuf};

use m2m_tier::fault::{self, Fault};
use m2m_tier::testing::crash_batch;
use m2m_tier::{Db, DbOptions, Error, SectionKind};

const DIM: usize = 8;

/// Writes an index generation whose every value is `tag`: an `idx` file with a small section and a `vec`
/// file with `rows` x DIM floats.
fn write_index(db: &Db, tag: f32, rows: usize) -> Result<Vec<PathBuf>, Error> {
    let mut hot = db.index_writer("idx")?;
    hot.begin("meta", SectionKind::F32)?;
    hot.write_values(&[tag; 3])?;
    let mut cold = db.index_writer("vec")?;
    cold.begin("vectors", SectionKind::F32)?;
    for _ in 0..rows {
        cold.write_values(&[tag; DIM])?;
    }
    Ok(vec![hot.finish()?, cold.finish()?])
}

/// The tag of the stored index a fresh reader sees, or None without one; every value of both files must
/// carry the same tag (never a mix of generations).
fn stored_tag(dir: &Path) -> Option<f32> {
    let snap = Db::read_snapshot(dir).unwrap();
    assert!(snap.index_error.is_none(), "{:?}", snap.index_error);
    if snap.index.is_empty() {
        return None;
    }
    assert_eq!(snap.index.len(), 2);
    let meta: &[f32] = snap.index[0].values("meta", SectionKind::F32, true).unwrap();
    let vectors: &[f32] = snap.index[1].values("vectors", SectionKind::F32, true).unwrap();
    let tag = meta[0];
    assert!(meta.iter().chain(vectors).all(|&v| v == tag), "a mix of index generations");
    Some(tag)
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

/// Catches: an index not named by the manifest (lost on reopen), old files not removed after a
/// replacement, an uncommitted file kept, or a foreign file with an index-like name removed.
#[test]
fn an_index_is_committed_replaced_and_its_old_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(1, DIM)).unwrap();
    fs::write(dir.path().join("notes.idx"), b"mine").unwrap();
    let first = write_index(&db, 1.0, 100).unwrap();
    db.commit_index(&first).unwrap();
    assert_eq!(db.snapshot().index.len(), 2);
    assert_eq!(stored_tag(dir.path()), Some(1.0));
    let second = write_index(&db, 2.0, 50).unwrap();
    assert_ne!(first, second, "each generation gets new names");
    // Before the commit the old index is still the one a reader sees.
    assert_eq!(stored_tag(dir.path()), Some(1.0));
    db.commit_index(&second).unwrap();
    assert_eq!(stored_tag(dir.path()), Some(2.0));
    assert!(first.iter().all(|p| !p.exists()), "old index files stay");
    // A finished but never committed index (a build killed before its commit) goes at the next open.
    let orphan = write_index(&db, 3.0, 10).unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert!(orphan.iter().all(|p| !p.exists()), "an uncommitted index file stays");
    assert_eq!(stored_tag(dir.path()), Some(2.0));
    assert!(names(dir.path()).contains(&"notes.idx".to_string()), "a foreign file was removed");
    // Files not made by this database's writer are refused.
    let mut db = db;
    let foreign = dir.path().join("notes.idx");
    assert!(matches!(db.commit_index(&[foreign]), Err(Error::InvalidBatch { .. })));
    // Segments and the index coexist through flush and compaction.
    db.flush().unwrap();
    db.compact().unwrap();
    assert_eq!(stored_tag(dir.path()), Some(2.0));
    db.drop_index().unwrap();
    assert_eq!(stored_tag(dir.path()), None);
    assert!(second.iter().all(|p| !p.exists()));
}

/// Catches: a commit that names files before they are complete and synced, or that removes the old
/// index before the new manifest is stored: after a failure at any fault point, the reopened database
/// holds the old index or the new one, whole.
#[test]
fn a_failure_at_any_point_of_an_index_build_leaves_the_old_or_the_new_index() {
    let root = tempfile::tempdir().unwrap();
    let mut outcomes = [0usize; 2];
    for fault in [Fault::NoSpace, Fault::Eio, Fault::ShortWrite] {
        for at in 0.. {
            let dir = root.path().join(format!("{fault:?}-{at}"));
            let mut db = Db::create(&dir, DIM, DbOptions::default()).unwrap();
            db.ingest(&crash_batch(1, DIM)).unwrap();
            let old = write_index(&db, 1.0, 40).unwrap();
            db.commit_index(&old).unwrap();
            let guard = fault::arm(at, fault);
            let result = write_index(&db, 2.0, 40_000).and_then(|files| db.commit_index(&files));
            let fired = fault::fired();
            drop(guard);
            drop(db);
            let reopened = Db::open(&dir, DbOptions::default()).unwrap();
            let tag = stored_tag(&dir);
            match result {
                Ok(()) => {
                    assert!(!fired);
                    assert_eq!(tag, Some(2.0));
                    assert!(at > 5, "only {at} fault points");
                    break;
                }
                Err(Error::Io { .. }) => {
                    assert!(fired);
                    assert!(tag == Some(1.0) || tag == Some(2.0), "{fault:?} at {at}: {tag:?}");
                    outcomes[usize::from(tag == Some(2.0))] += 1;
                }
                Err(e) => panic!("{fault:?} at {at}: {e}"),
            }
            // Only the live index's files, the segment-less log and the manifest remain.
            let left = names(&dir);
            assert_eq!(left.iter().filter(|n| n.ends_with(".idx") || n.ends_with(".vec")).count(), 2, "{left:?}");
            assert!(!left.iter().any(|n| n.starts_with(".m2m-tmp.")), "{left:?}");
            drop(reopened);
        }
    }
    assert!(outcomes[0] > 10, "{outcomes:?}");
}

/// Catches: `check` not reading the index's sections (a flipped byte in the vectors must be reported),
/// or reporting index damage as an error that blocks the whole check.
#[test]
fn check_reports_a_damaged_index_file_and_open_leaves_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(1, DIM)).unwrap();
    let files = write_index(&db, 1.0, 100).unwrap();
    db.commit_index(&files).unwrap();
    drop(db);
    assert!(Db::check(dir.path()).unwrap().index_problem.is_none());
    let mut bytes = fs::read(&files[1]).unwrap();
    bytes[64 + 4 * 77] ^= 1;
    fs::write(&files[1], &bytes).unwrap();
    let check = Db::check(dir.path()).unwrap();
    let problem = check.index_problem.expect("the flipped byte is found");
    assert!(problem.contains("checksum") && problem.contains(".vec"), "{problem}");
    // Header damage: the files are not mapped; the snapshot says why.
    bytes[0] ^= 1;
    fs::write(&files[1], &bytes).unwrap();
    let snap = Db::read_snapshot(dir.path()).unwrap();
    assert!(snap.index.is_empty() && snap.index_error.is_some());
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    db.drop_index().unwrap();
    assert!(Db::check(dir.path()).unwrap().index_problem.is_none());
}
