//! The write-ahead log on disk.

use std::fs;
use std::path::Path;

use m2m_tier::testing::crash_batch;
use m2m_tier::{Durability, Error, WAL_HEADER, Wal, WalBatch, WalRecord};
use proptest::prelude::*;

const DIM: usize = 6;

/// The batches of a log that holds only batches.
fn only_batches(records: Vec<WalRecord>) -> Vec<WalBatch> {
    records
        .into_iter()
        .map(|r| match r {
            WalRecord::Batch(b) => b,
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

fn assert_is_batch(b: &WalBatch, n: u64) {
    let want = crash_batch(n, DIM);
    assert_eq!(b.seq, n);
    assert_eq!(b.columns.dim, DIM);
    assert_eq!(b.columns.ids, want.ids());
    assert_eq!(b.columns.norms, want.norms());
    assert_eq!(b.columns.kappa, want.kappa());
    assert_eq!(b.columns.alpha, want.alpha());
    assert_eq!(b.columns.mu, want.mu());
}

/// A log of `n` batches; returns its bytes and the end offset of each record.
fn log_of(path: &Path, n: u64) -> (Vec<u8>, Vec<u64>) {
    let mut wal = Wal::create(path, DIM, Durability::NoSync).unwrap();
    let mut ends = Vec::new();
    for i in 0..n {
        assert_eq!(wal.append(&crash_batch(i, DIM)).unwrap(), i);
        ends.push(wal.len_bytes());
    }
    wal.sync().unwrap();
    (fs::read(path).unwrap(), ends)
}

fn corrupt_offset(r: Result<(Wal, Vec<WalRecord>), Error>) -> u64 {
    match r {
        Err(Error::Corrupt { offset, .. }) => offset,
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok((_, b)) => panic!("expected Corrupt, recovered {} batches", b.len()),
    }
}

#[test]
fn batches_round_trip_and_appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wal");
    log_of(&path, 4);
    let (mut wal, records) = Wal::open(&path, Durability::Fsync).unwrap();
    let batches = only_batches(records);
    assert_eq!(batches.len(), 4);
    for (i, b) in batches.iter().enumerate() {
        assert_is_batch(b, i as u64);
    }
    assert_eq!(wal.append(&crash_batch(4, DIM)).unwrap(), 4);
    drop(wal);
    let batches = only_batches(Wal::read(&path).unwrap());
    assert_eq!(batches.len(), 5);
    assert_is_batch(&batches[4], 4);
    assert!(matches!(Wal::create(&path, DIM, Durability::Fsync), Err(Error::Io { .. })), "create overwrote a log");
}

#[test]
fn bad_batches_are_refused_without_touching_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.wal");
    let mut wal = Wal::create(&path, DIM, Durability::Fsync).unwrap();
    assert!(matches!(wal.append(&crash_batch(0, DIM + 1)), Err(Error::InvalidBatch { .. })));
    assert!(matches!(wal.append(&m2m_splat::SplatSet::new(DIM).unwrap()), Err(Error::InvalidBatch { .. })));
    assert_eq!(wal.len_bytes(), WAL_HEADER);
    assert!(matches!(Wal::create(dir.path().join("z.wal"), 0, Durability::Fsync), Err(Error::InvalidBatch { .. })));
    drop(wal);
    assert_eq!(fs::metadata(&path).unwrap().len(), WAL_HEADER);
}

#[test]
fn a_torn_tail_at_every_byte_is_dropped_and_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.wal");
    let (bytes, ends) = log_of(&full, 3);
    let path = dir.path().join("torn.wal");
    for cut in WAL_HEADER as usize..=bytes.len() {
        fs::write(&path, &bytes[..cut]).unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut as u64).count();
        let (mut wal, records) = Wal::open(&path, Durability::Fsync).unwrap();
        let batches = only_batches(records);
        assert_eq!(batches.len(), complete, "cut at {cut}");
        for (i, b) in batches.iter().enumerate() {
            assert_is_batch(b, i as u64);
        }
        let good_end = if complete == 0 { WAL_HEADER } else { ends[complete - 1] };
        assert_eq!(fs::metadata(&path).unwrap().len(), good_end, "torn tail not cut at {cut}");
        // The log goes on from its last good record.
        assert_eq!(wal.append(&crash_batch(complete as u64, DIM)).unwrap(), complete as u64);
    }
}

#[test]
fn damage_in_the_middle_is_refused_with_the_record_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wal");
    let (bytes, ends) = log_of(&path, 3);
    let second = ends[0];
    // A flipped payload byte of the second record, with a third after it.
    let mut bad = bytes.clone();
    bad[second as usize + 20] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    assert_eq!(corrupt_offset(Wal::open(&path, Durability::Fsync)), second);
    // A length field grown past the end of the file, with good records after it.
    let mut bad = bytes.clone();
    bad[second as usize + 2] = 0x7F;
    fs::write(&path, &bad).unwrap();
    assert_eq!(corrupt_offset(Wal::open(&path, Durability::Fsync)), second);
    // A flipped checksum byte.
    let mut bad = bytes.clone();
    bad[second as usize + 5] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert_eq!(corrupt_offset(Wal::open(&path, Durability::Fsync)), second);
    // Nothing was cut from a corrupt log.
    assert_eq!(fs::read(&path).unwrap(), bad);
}

#[test]
fn header_damage_and_versions_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.wal");
    let (bytes, _) = log_of(&path, 1);
    for (at, what) in [(0usize, "magic"), (13, "dimension"), (29, "checksum")] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let r = Wal::open(&path, Durability::Fsync);
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{what}: {r:?}");
    }
    // Another version, with a correct header checksum.
    let mut other = bytes.clone();
    other[8..12].copy_from_slice(&4u32.to_le_bytes());
    let crc = crc32c_of(&other[..28]);
    other[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &other).unwrap();
    assert!(matches!(
        Wal::open(&path, Durability::Fsync),
        Err(Error::IncompatibleVersion { found: 4, supported: 3, .. })
    ));
    fs::write(&path, &bytes[..20]).unwrap();
    assert!(matches!(Wal::open(&path, Durability::Fsync), Err(Error::Corrupt { offset: 20, .. })));
    match Wal::open(dir.path().join("missing.wal"), Durability::Fsync) {
        Err(Error::Io { path: p, .. }) => assert!(p.ends_with("missing.wal")),
        other => panic!("{other:?}"),
    }
}

/// CRC32C (Castagnoli), bit by bit: an independent reference for the header test.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A flipped byte anywhere: a typed error, or a prefix of the batches that were written (a flip in the
    /// last record reads as a torn tail). Never a panic, never a wrong batch.
    #[test]
    fn byte_flips_never_panic_or_invent_data(at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wal");
        let (mut bytes, _) = log_of(&path, 4);
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        fs::write(&path, &bytes).unwrap();
        match Wal::read(&path).map(only_batches) {
            Ok(batches) => {
                prop_assert!(batches.len() <= 4);
                for (n, b) in batches.iter().enumerate() {
                    assert_is_batch(b, n as u64);
                }
            }
            Err(Error::Corrupt { .. } | Error::IncompatibleVersion { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn delete_records_round_trip_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.wal");
    let mut wal = Wal::create(&path, DIM, Durability::Fsync).unwrap();
    wal.append(&crash_batch(0, DIM)).unwrap();
    assert_eq!(wal.append_delete(&[0, 7, 1]).unwrap(), 1);
    wal.append(&crash_batch(2, DIM)).unwrap();
    assert!(matches!(wal.append_delete(&[]), Err(Error::InvalidBatch { .. })));
    drop(wal);
    let records = Wal::read(&path).unwrap();
    assert_eq!(records.len(), 3);
    assert!(matches!(&records[0], WalRecord::Batch(b) if b.seq == 0));
    assert_eq!(records[1], WalRecord::Delete { seq: 1, ids: vec![0, 7, 1] });
    assert!(matches!(&records[2], WalRecord::Batch(b) if b.seq == 2 && b.columns.ids == crash_batch(2, DIM).ids()));
}

#[test]
fn a_well_sealed_record_with_invalid_values_is_refused() {
    use m2m_tier::testing::decode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.wal");
    let (good, _) = log_of(&path, 3);
    let mut resealed = good.clone();
    decode::reseal_log(&mut resealed);
    assert_eq!(resealed, good, "resealing a good log changes nothing");
    assert_eq!(decode::log(&good).unwrap().len(), 3);
    // A NaN in the first record's mu, checksum recomputed: still corrupt, at the first record.
    let mut forged = good.clone();
    let rows = 1; // crash_batch(0) has one row: ids, norm, kappa, alpha, then mu
    let mu_at = WAL_HEADER as usize + 8 + 16 + rows * 20;
    forged[mu_at..mu_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    decode::reseal_log(&mut forged);
    match decode::log(&forged) {
        Err(Error::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, WAL_HEADER);
            assert!(reason.contains("mu"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_zero_tail_of_any_length_is_cut_and_reported_not_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000001.wal");
    let (good, ends) = log_of(&path, 3);
    // 8 zero bytes are a record header of length 0 whose checksum (of nothing) is 0: it must not pass
    // as a record; neither must longer runs of zeros.
    for zeros in [1usize, 7, 8, 9, 16, 24, 100, 4096] {
        let mut bytes = good.clone();
        bytes.resize(good.len() + zeros, 0);
        fs::write(&path, &bytes).unwrap();
        let check = m2m_tier::LogCheck::of(&path).unwrap();
        assert_eq!((check.records.len(), check.end, check.tail_bytes()), (3, ends[2], zeros as u64), "{zeros} zeros");
        assert_eq!(check.tail_rows, None);
        assert_eq!(fs::read(&path).unwrap(), bytes, "a check changed the file");
        let (wal, records) = Wal::open(&path, Durability::NoSync).unwrap();
        assert_eq!(only_batches(records).len(), 3);
        assert_eq!(wal.len_bytes(), ends[2]);
        drop(wal);
        assert_eq!(fs::read(&path).unwrap(), good, "the writer's open cuts the zeros");
    }
    // A zero-length record followed by a good one is damage in the middle, not a tail.
    let mut bytes = good[..ends[1] as usize].to_vec();
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&good[ends[1] as usize..]);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(Wal::read(&path), Err(Error::Corrupt { .. })));
}

#[test]
fn a_damaged_last_record_is_reported_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000001.wal");
    let (mut bytes, ends) = log_of(&path, 3);
    let last = bytes.len() - 5;
    bytes[last] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let check = m2m_tier::LogCheck::of(&path).unwrap();
    assert_eq!(check.records.len(), 2);
    assert_eq!(check.tail_bytes(), bytes.len() as u64 - ends[1]);
    assert_eq!(check.tail_rows, Some(crash_batch(2, DIM).len() as u64));
    assert_eq!(fs::read(&path).unwrap(), bytes, "a check changed the file");
}
