//! Attributes in the database: carried by the log, flush, compaction and reopening; validated at ingest
//! (nothing stored on error); updated by id; databases of the format before attributes still open.

use std::fs;
use std::path::Path;

use m2m_tier::testing::crash_batch;
use m2m_tier::{AttrBatch, Column, Db, DbOptions, Error, Field, FieldType, Filter, Scalar, Schema, Value};

const DIM: usize = 12;

/// Attributes of `crash_batch(n)`: label = id % 7, tenant "t{id % 3}", tags ["even"] for even ids.
fn attrs_of(n: u64) -> AttrBatch {
    let ids = crash_batch(n, DIM).ids().to_vec();
    AttrBatch::new(ids.len())
        .with("label", Column::Int(ids.iter().map(|id| Some((id % 7) as i64)).collect()))
        .with("tenant", Column::Keyword(ids.iter().map(|id| Some(format!("t{}", id % 3))).collect()))
        .with(
            "tags",
            Column::Tags(ids.iter().map(|id| Some(if id % 2 == 0 { vec!["even".into()] } else { vec![] })).collect()),
        )
}

/// Every live id's label as the database's table holds it, checked against `id % 7`, with the count.
fn check_labels(db_attrs: &m2m_tier::AttrTable, live: &[u64]) {
    assert_eq!(db_attrs.len(), live.len(), "rows in the attribute table");
    for &id in live {
        assert_eq!(db_attrs.label(id), Some((id % 7) as i64), "id {id}");
        let row = db_attrs.row(id).unwrap();
        assert_eq!(row[1].1, Some(Value::Keyword(format!("t{}", id % 3))), "id {id}");
    }
}

fn live_ids(batches: std::ops::Range<u64>, gone: &[u64]) -> Vec<u64> {
    batches.flat_map(|b| crash_batch(b, DIM).ids().to_vec()).filter(|id| !gone.contains(id)).collect()
}

/// Mutations caught: a flush or compaction that drops the block or writes it in another row order (a
/// label off after reopening); a replay that ignores the log's blocks (labels missing before a flush);
/// deletes not following into the table (row count).
#[test]
fn attributes_survive_the_log_flush_compaction_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    for b in 0..3 {
        db.ingest_with(&crash_batch(b, DIM), Some(&attrs_of(b))).unwrap();
    }
    assert_eq!(db.schema().unwrap().fields[0].ty, FieldType::Label, "inferred from the first batch");
    drop(db);
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    check_labels(db.attributes(), &live_ids(0..3, &[]));
    db.flush().unwrap();
    for b in 3..6 {
        db.ingest_with(&crash_batch(b, DIM), Some(&attrs_of(b))).unwrap();
    }
    db.flush().unwrap();
    db.delete(&[2001, 4002]).unwrap();
    drop(db);
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    check_labels(db.attributes(), &live_ids(0..6, &[2001, 4002]));
    let manifest = fs::read(dir.path().join("MANIFEST")).unwrap();
    assert_eq!(manifest[8], 3, "a manifest with a schema is version 3");
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    check_labels(db.attributes(), &live_ids(0..6, &[2001, 4002]));
    let seg = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"));
    assert_eq!(fs::read(seg.unwrap()).unwrap()[8], 2, "a segment with attributes is version 2");
    // The filter sees the same rows: label 3 among the live ids.
    let want: Vec<u64> = live_ids(0..6, &[2001, 4002]).into_iter().filter(|id| id % 7 == 3).collect();
    let mut want = want;
    want.sort_unstable();
    assert_eq!(db.attributes().evaluate(&Filter::eq("label", Scalar::Int(3))).unwrap(), want);
    assert!(!want.is_empty());
}

/// Mutations caught: validation after the log append (the log grows, or the row is in after reopening);
/// an attribute error that poisons the handle (the next good ingest fails).
#[test]
fn invalid_attributes_are_typed_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest_with(&crash_batch(0, DIM), Some(&attrs_of(0))).unwrap();
    let log = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let before = fs::metadata(&log).unwrap().len();
    let batch = crash_batch(1, DIM);
    let rows = batch.len();
    let cases = [
        (AttrBatch::new(rows).with("colour", Column::Int(vec![Some(1); rows])), "colour"),
        (AttrBatch::new(rows).with("label", Column::Keyword(vec![Some("x".into()); rows])), "label"),
        (AttrBatch::new(rows).with("label", Column::Int(vec![Some(1); rows + 1])), "label"),
        (AttrBatch::new(rows + 1), ""),
    ];
    for (bad, field) in cases {
        match db.ingest_with(&batch, Some(&bad)) {
            Err(Error::InvalidAttributes { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(fs::metadata(&log).unwrap().len(), before, "nothing logged");
    assert_eq!(db.len(), 1);
    db.ingest_with(&batch, Some(&attrs_of(1))).unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    check_labels(db.attributes(), &live_ids(0..2, &[]));
}

/// Mutations caught: a flush that retires the log without writing the update of a segment row into a
/// segment (the old label after the flush and reopening); a replay that ignores update records.
#[test]
fn set_attributes_is_logged_and_carried_by_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(vec![
        Field { name: "label".into(), ty: FieldType::Label },
        Field { name: "tenant".into(), ty: FieldType::Keyword },
        Field { name: "tags".into(), ty: FieldType::Tags },
        Field { name: "doc".into(), ty: FieldType::Payload },
    ])
    .unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.set_schema(schema.clone()).unwrap();
    db.ingest_with(&crash_batch(3, DIM), Some(&attrs_of(3))).unwrap();
    db.flush().unwrap();
    db.ingest_with(&crash_batch(4, DIM), Some(&attrs_of(4))).unwrap();
    // 3001 is in a segment, 4000 in memory.
    let update = AttrBatch::new(2)
        .with("label", Column::Int(vec![Some(100), None]))
        .with("doc", Column::Bytes(vec![Some(b"{\"a\":1}".to_vec()), Some(vec![7])]));
    db.set_attributes(&[3001, 4000], &update).unwrap();
    assert!(matches!(db.set_attributes(&[9], &AttrBatch::new(1)), Err(Error::InvalidBatch { .. })));
    let unknown = AttrBatch::new(1).with("nope", Column::Int(vec![Some(1)]));
    assert!(matches!(db.set_attributes(&[3001], &unknown), Err(Error::InvalidAttributes { .. })));
    let expect = |db: &Db| {
        let t = db.attributes();
        assert_eq!(t.label(3001), Some(100));
        assert_eq!(t.label(4000), None, "a null clears the value");
        assert_eq!(t.row(3001).unwrap()[3].1, Some(Value::Bytes(b"{\"a\":1}".to_vec())));
        assert_eq!(t.row(3001).unwrap()[1].1, Some(Value::Keyword("t1".into())), "unnamed fields kept");
        assert_eq!(t.label(3002), Some(3002 % 7));
    };
    drop(db);
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    expect(&db);
    db.flush().unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    expect(&db);
    assert_eq!(db.schema(), Some(&schema));
}

/// Copies the fixture database written by the build before attributes (`tests/data/v1-db`, made by
/// the commit before this format change: manifest, log and segments of version 1) into `to`.
fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-db");
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A database written by the old writer opens, reads the same rows, takes a schema and attributes (old
/// rows null), flushes and compacts into the new format. Mutation caught: refusing version 1 files,
/// or decoding a version 1 manifest as version 3.
#[test]
fn a_database_written_before_attributes_still_opens_and_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let snap = Db::read_snapshot(dir.path()).unwrap();
    // Batches 0..7 of `crash_batch`, 1000 (in a segment) and 5000 (in the log) deleted.
    let live = live_ids(0..7, &[1000, 5000]);
    assert_eq!(snap.len(), live.len());
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert!(db.schema().is_none());
    db.ingest_with(&crash_batch(7, DIM), Some(&attrs_of(7))).unwrap();
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(db.len(), live.len() + crash_batch(7, DIM).len());
    for &id in &live {
        assert_eq!(db.attributes().label(id), None, "old row {id} has no label");
        assert!(db.attributes().contains(id));
    }
    check_labels_of(&db, 7);
}

fn check_labels_of(db: &Db, batch: u64) {
    for &id in crash_batch(batch, DIM).ids() {
        assert_eq!(db.attributes().label(id), Some((id % 7) as i64), "id {id}");
    }
}
