//! Upsert: a batch whose rows replace any row of the same id (vector and attributes), as one log record;
//! replaced rows in memory and in segments, through flush, compaction, reopening and a torn log tail.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use m2m_splat::{Batch, SplatSet};
use m2m_tier::testing::crash_batch;
use m2m_tier::{AttrBatch, Column, Db, DbOptions, Snapshot};

const DIM: usize = 12;

/// Each visible id's (kappa, label) in a view, checking that no id is visible twice: segment rows that
/// are tombstoned are hidden, rows in memory never are.
fn visible(snap: &Snapshot) -> HashMap<u64, (f32, Option<i64>)> {
    let mut out = HashMap::new();
    let segments = snap.segments.len();
    for (p, part) in snap.parts().enumerate() {
        for i in 0..part.rows() {
            let id = part.ids[i];
            if p < segments && !snap.is_live(id) {
                continue;
            }
            let label = snap.attrs.label(id);
            assert!(out.insert(id, (part.kappa[i], label)).is_none(), "id {id} visible twice");
        }
    }
    assert_eq!(out.len(), snap.len(), "Snapshot::len counts the visible rows");
    assert_eq!(snap.attrs.len(), out.len(), "one attribute row per visible row");
    out
}

fn labels(ids: &[u64], f: impl Fn(u64) -> i64) -> AttrBatch {
    AttrBatch::new(ids.len()).with("label", Column::Int(ids.iter().map(|&id| Some(f(id))).collect()))
}

/// Rows of `ids` with kappa `kappa` (a value no `crash_batch` row has below batch 50).
fn rows(ids: &[u64], kappa: f32) -> SplatSet {
    let vectors: Vec<f32> = (0..ids.len() * DIM).map(|i| 1.0 + (i % 7) as f32).collect();
    let mut set = SplatSet::new(DIM).unwrap();
    set.append(Batch::new(&vectors, DIM).ids(ids).kappa(kappa)).unwrap();
    set
}

/// The expected view: batches 3 (ids 3000..3004, flushed) and 4 (4000..4005, in memory), label id % 7,
/// kappa `1 + batch`; then the upsert of 3001, 4002, 9999 (kappa 77, label 100) and of 3002 after its
/// delete.
fn expected(upserted: bool) -> HashMap<u64, (f32, Option<i64>)> {
    let mut want = HashMap::new();
    for b in [3u64, 4] {
        for &id in crash_batch(b, DIM).ids() {
            want.insert(id, (1.0 + b as f32, Some((id % 7) as i64)));
        }
    }
    want.remove(&3002);
    if upserted {
        for id in [3001, 4002, 9999, 3002] {
            want.insert(id, (77.0, Some(100)));
        }
    }
    want
}

fn setup(dir: &Path) -> Db {
    let mut db = Db::create(dir, DIM, DbOptions::default()).unwrap();
    let b3 = crash_batch(3, DIM);
    db.ingest_with(&b3, Some(&labels(b3.ids(), |id| (id % 7) as i64))).unwrap();
    db.flush().unwrap();
    let b4 = crash_batch(4, DIM);
    db.ingest_with(&b4, Some(&labels(b4.ids(), |id| (id % 7) as i64))).unwrap();
    db.delete(&[3002]).unwrap();
    db
}

fn upsert(db: &mut Db) {
    let ids = [3001, 4002, 9999, 3002];
    db.upsert_with(&rows(&ids, 77.0), Some(&labels(&ids, |_| 100))).unwrap();
}

/// Mutations caught: tombstones applied to rows in memory (the new row of 3001 hidden: the view lacks
/// it); a replaced row in memory not removed (4002 visible twice); a flush that does not merge when a row
/// in memory shadows a tombstoned one (after the flush and reopening, 3001 is gone); a replay that
/// treats an upsert as a plain batch (open fails: "added twice") or forgets the tombstone (3001 twice);
/// attributes not following (the old label); a deleted id not revived (3002 missing).
#[test]
fn upsert_replaces_rows_in_memory_and_in_segments_through_flush_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    assert_eq!(visible(&db.snapshot()), expected(false));
    upsert(&mut db);
    assert_eq!(visible(&db.snapshot()), expected(true), "in this handle");
    assert_eq!(db.len(), expected(true).len());
    drop(db);
    assert_eq!(visible(&Db::read_snapshot(dir.path()).unwrap()), expected(true), "a reader's replay");
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(visible(&db.snapshot()), expected(true), "the writer's replay");
    db.flush().unwrap();
    assert_eq!(visible(&db.snapshot()), expected(true), "after the flush");
    drop(db);
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(visible(&db.snapshot()), expected(true), "reopened after the flush");
    // Again over rows now in the merged segment, then compaction.
    db.upsert_with(&rows(&[3000], 78.0), None).unwrap();
    let mut want = expected(true);
    want.insert(3000, (78.0, None));
    assert_eq!(visible(&db.snapshot()), want, "a row without attributes in the batch gets nulls");
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(visible(&db.snapshot()), want, "after compaction and reopening");
}

/// The first upsert starts a log of version 3; the log record is one: cut at every byte of it, the
/// database opens with all the old rows or (whole) all the new ones, never both and never neither.
/// Mutations caught: an upsert written as a delete record and a batch record (a cut between them shows
/// neither row of 3001); a version 2 log carrying kind 5 (older builds would read it as damage).
#[test]
fn a_torn_upsert_shows_the_old_rows_or_the_new_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    db.flush().unwrap();
    let wal = || {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "wal"))
            .unwrap()
    };
    let before_len = fs::metadata(wal()).unwrap().len();
    assert_eq!(fs::read(wal()).unwrap()[8], 2, "a log of version 2 before the upsert");
    upsert(&mut db);
    drop(db);
    let log = wal();
    let full = fs::read(&log).unwrap();
    assert_eq!(full[8], 3, "the upsert's log is version 3");
    // The upsert's flush left the log empty: the record is everything after the header.
    let start = 32usize;
    assert!(full.len() > start && before_len >= start as u64);
    let old = expected(false);
    let new = expected(true);
    for cut in start..=full.len() {
        fs::write(&log, &full[..cut]).unwrap();
        let got = visible(&Db::read_snapshot(dir.path()).unwrap());
        if cut == full.len() {
            assert_eq!(got, new, "the whole record");
        } else {
            assert_eq!(got, old, "cut at byte {cut}");
        }
    }
}
