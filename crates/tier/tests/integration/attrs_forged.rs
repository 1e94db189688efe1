//! Forged and truncated attribute blocks, in segments and in log records of both kinds (a batch with
//! its attributes, an update by id), with every checksum recomputed so that the checks behind the
//! checksums are the ones that answer: each is a typed `Corrupt` error at open, never a panic, and never
//! an allocation of the size a forged length claims.

use std::fs;
use std::path::{Path, PathBuf};

use m2m_tier::testing::{crash_batch, decode};
use m2m_tier::{AttrBatch, Column, Db, DbOptions, Error};

const DIM: usize = 12;

/// Rows of `crash_batch(3)`.
const ROWS: usize = 4;

fn attrs(ids: &[u64]) -> AttrBatch {
    AttrBatch::new(ids.len())
        .with("label", Column::Int(ids.iter().map(|id| Some((id % 7) as i64)).collect()))
        .with("tenant", Column::Keyword(ids.iter().map(|id| Some(format!("t{}", id % 3))).collect()))
}

fn file_with(dir: &Path, ext: &str) -> PathBuf {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == ext)).unwrap()
}

fn encode(names: &[&str], columns: &[Column]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    postcard::to_allocvec(&(names, columns.to_vec())).unwrap()
}

/// A postcard length of about 2^32: a decoder that allocated what it claims would ask for gigabytes.
const HUGE: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];

/// Blocks of `ROWS` rows that decode wrongly or do not fit the schema (label, tenant), with what each is.
fn forged_blocks(real: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let label = || Column::Int(vec![Some(1); ROWS]);
    let tenant = || Column::Keyword(vec![Some("a".into()); ROWS]);
    let mut huge_columns = postcard::to_allocvec(&vec!["label".to_string(), "tenant".to_string()]).unwrap();
    huge_columns.extend_from_slice(&HUGE);
    let mut huge_values = encode(&["label", "tenant"], &[]);
    huge_values.pop(); // the empty column list's count
    huge_values.extend_from_slice(&[2, 0]); // two columns, the first an Int column ...
    huge_values.extend_from_slice(&HUGE); // ... claiming 2^32 values
    let mut trailing = real.to_vec();
    trailing.push(0);
    vec![
        ("a huge field count", HUGE.to_vec()),
        ("a huge column count", huge_columns),
        ("a huge value count", huge_values),
        ("the block cut in half", real[..real.len() / 2].to_vec()),
        ("an empty block", Vec::new()),
        ("a byte after the block", trailing),
        ("one row too many", encode(&["label", "tenant"], &[Column::Int(vec![Some(1); ROWS + 1]), tenant()])),
        ("the fields swapped", encode(&["tenant", "label"], &[tenant(), label()])),
        ("a field missing", encode(&["label"], &[label()])),
        ("a float label", encode(&["label", "tenant"], &[Column::Float(vec![Some(1.0); ROWS]), tenant()])),
        (
            "an empty keyword",
            encode(&["label", "tenant"], &[label(), Column::Keyword(vec![Some(String::new()); ROWS])]),
        ),
    ]
}

fn expect_corrupt(dir: &Path, what: &str) {
    match Db::open(dir, DbOptions::default()) {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(!reason.contains("checksum"), "{what}: stopped at a checksum, not the block check: {reason}");
        }
        other => panic!("{what}: {:?}", other.map(|db| db.len())),
    }
}

/// A database of `crash_batch(3)` with attributes, flushed into one segment (version 2) or left in the log.
fn database(dir: &Path, flush: bool) {
    let mut db = Db::create(dir, DIM, DbOptions::default()).unwrap();
    let batch = crash_batch(3, DIM);
    assert_eq!(batch.len(), ROWS);
    db.ingest_with(&batch, Some(&attrs(batch.ids()))).unwrap();
    if flush {
        db.flush().unwrap();
    }
}

/// Mutations caught: `decode_block` without the name, kind, row count or value checks, or without the
/// trailing-bytes check (the database opens); a decoder that trusts a claimed length (an allocation of
/// gigabytes, or a panic slicing past the end); `reseal_segment` not recomputing the block's checksum
/// (the error is a checksum mismatch, and the fuzz target never reaches the block checks).
#[test]
fn forged_segment_blocks_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path(), true);
    let seg = file_with(dir.path(), "seg");
    let good = fs::read(&seg).unwrap();
    assert_eq!(good[8], 2, "a segment with attributes");
    let u64_at = |o: usize| u64::from_le_bytes(good[o..o + 8].try_into().unwrap()) as usize;
    let (at, len) = (u64_at(92), u64_at(100));
    assert_eq!(at + len, good.len());
    let real = &good[at..];
    Db::open(dir.path(), DbOptions::default()).unwrap();
    for (what, block) in forged_blocks(real) {
        let mut bytes = good[..at].to_vec();
        bytes.extend_from_slice(&block);
        bytes[100..108].copy_from_slice(&(block.len() as u64).to_le_bytes());
        decode::reseal_segment(&mut bytes);
        fs::write(&seg, &bytes).unwrap();
        expect_corrupt(dir.path(), what);
        match Db::open(dir.path(), DbOptions::default()) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, at as u64, "{what}: the block's offset"),
            _ => unreachable!("checked above"),
        }
    }
    // A block length past the end of the file (and one past the address space) is refused before any
    // byte of it is read.
    for claim in [len as u64 + 1, u64::MAX] {
        let mut bytes = good.clone();
        bytes[100..108].copy_from_slice(&claim.to_le_bytes());
        decode::reseal_segment(&mut bytes);
        fs::write(&seg, &bytes).unwrap();
        match Db::open(dir.path(), DbOptions::default()) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, 100, "claim {claim}"),
            other => panic!("claim {claim}: {:?}", other.map(|db| db.len())),
        }
    }
    fs::write(&seg, &good).unwrap();
    assert_eq!(Db::open(dir.path(), DbOptions::default()).unwrap().len(), ROWS, "the good file still opens");
}

/// The log's records from byte 32: (start, end) of each.
fn records(log: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 32;
    while at + 8 <= log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, at + 8 + len));
        at += 8 + len;
    }
    out
}

/// `log` with the last record's payload from byte `keep` (of the payload) replaced by `block`, resealed.
fn replace_tail(log: &[u8], keep: usize, block: &[u8]) -> Vec<u8> {
    let &(start, _) = records(log).last().unwrap();
    let mut bytes = log[..start + 8 + keep].to_vec();
    bytes.extend_from_slice(block);
    let len = (bytes.len() - start - 8) as u32;
    bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
    decode::reseal_log(&mut bytes);
    bytes
}

/// Mutations caught: a replay that appends a batch's block without `decode_block`'s checks, or an
/// update's without `decode_update`'s (the database opens with a row of another schema, or the wrong
/// number of rows); an update of an id the database does not hold applied or ignored instead of refused.
#[test]
fn forged_log_blocks_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path(), false);
    let wal = file_with(dir.path(), "wal");
    let good = fs::read(&wal).unwrap();
    let &(start, end) = records(&good).last().unwrap();
    assert_eq!(good[start + 8], 3, "a batch record with its attributes");
    let keep = 16 + ROWS * (8 + 12 + 4 * DIM);
    let real = good[start + 8 + keep..end].to_vec();
    for (what, block) in forged_blocks(&real) {
        if block.is_empty() {
            continue; // a record of kind 3 without a block is refused by the log decoder itself
        }
        fs::write(&wal, replace_tail(&good, keep, &block)).unwrap();
        expect_corrupt(dir.path(), what);
    }
    // An update record (kind 4): a good one, then forged ones.
    fs::write(&wal, &good).unwrap();
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let id = crash_batch(3, DIM).ids()[0];
    db.set_attributes(&[id], &AttrBatch::new(1).with("label", Column::Int(vec![Some(99)]))).unwrap();
    drop(db);
    let updated = fs::read(&wal).unwrap();
    let &(start, end) = records(&updated).last().unwrap();
    assert_eq!(updated[start + 8], 4, "an update record");
    let keep = 16 + 8;
    let real = updated[start + 8 + keep..end].to_vec();
    let one = |c: Column| encode(&["label"], &[c]);
    let mut stranger = updated.clone();
    stranger[start + 8 + 16..start + 8 + 24].copy_from_slice(&123_456u64.to_le_bytes());
    decode::reseal_log(&mut stranger);
    let cases = vec![
        ("a huge field count", replace_tail(&updated, keep, &HUGE)),
        ("the update cut in half", replace_tail(&updated, keep, &real[..real.len() / 2])),
        ("an unknown field", replace_tail(&updated, keep, &encode(&["colour"], &[Column::Int(vec![Some(1)])]))),
        ("two rows for one id", replace_tail(&updated, keep, &one(Column::Int(vec![Some(1), Some(2)])))),
        ("a keyword label", replace_tail(&updated, keep, &one(Column::Keyword(vec![Some("x".into())])))),
        ("an id not in the database", stranger),
    ];
    for (what, bytes) in cases {
        fs::write(&wal, bytes).unwrap();
        expect_corrupt(dir.path(), what);
    }
    fs::write(&wal, &updated).unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(db.attributes().label(id), Some(99), "the good update still replays");
}
