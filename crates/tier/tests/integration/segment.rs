//! Segments and the manifest on disk.

use std::fs;

use m2m_splat::{Batch, SplatSet};
use m2m_tier::{
    Error, MANIFEST_FILE, MANIFEST_VERSION, Manifest, SEGMENT_HEADER, Segment, SegmentEntry, write_segment,
};
use proptest::prelude::*;

fn set(rows: usize, dim: usize) -> SplatSet {
    let v: Vec<f32> = (0..rows * dim).map(|i| 1.0 + ((i * 13) % 29) as f32).collect();
    let ids: Vec<u64> = (0..rows as u64).map(|i| i * 7 + 3).collect();
    let kappas: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32).collect();
    let mut s = SplatSet::new(dim).unwrap();
    s.append(Batch::new(&v, dim).ids(&ids).kappas(&kappas).alpha(0.5)).unwrap();
    s
}

fn same(seg: &Segment, s: &SplatSet) -> bool {
    seg.mu() == s.mu()
        && seg.ids() == s.ids()
        && seg.norms() == s.norms()
        && seg.kappa() == s.kappa()
        && seg.alpha() == s.alpha()
}

#[test]
fn segments_round_trip_with_aligned_columns() {
    let dir = tempfile::tempdir().unwrap();
    for (rows, dim) in [(1, 1), (3, 5), (100, 384), (17, 640)] {
        let path = dir.path().join(format!("{rows}x{dim}.seg"));
        let s = set(rows, dim);
        write_segment(&path, 9, (&s).into()).unwrap();
        let seg = Segment::open(&path).unwrap();
        assert!(same(&seg, &s));
        assert_eq!((seg.rows(), seg.dim(), seg.id()), (rows, dim, 9));
        assert_eq!(seg.mu().as_ptr() as usize % 64, 0);
    }
    let leftovers = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".m2m-tmp."))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn segment_damage_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.seg");
    let s = set(10, 8);
    write_segment(&path, 1, (&s).into()).unwrap();
    let good = fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "magic",
            {
                let mut b = good.clone();
                b[0] ^= 1;
                b
            },
            0,
        ),
        (
            "header field",
            {
                let mut b = good.clone();
                b[16] ^= 1;
                b
            },
            124,
        ),
        ("truncated", good[..good.len() - 3].to_vec(), 0),
        ("trailing", [good.as_slice(), &[0u8; 8]].concat(), 0),
        ("header only", good[..50].to_vec(), 50),
    ];
    for (what, bytes, offset) in cases {
        fs::write(&path, &bytes).unwrap();
        match Segment::open(&path) {
            Err(Error::Corrupt { path: p, offset: o, .. }) => {
                assert_eq!(p, path, "{what}");
                if offset > 0 {
                    assert_eq!(o, offset, "{what}");
                }
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
    assert!(matches!(Segment::open(dir.path().join("none.seg")), Err(Error::Io { .. })));
}

/// Open does not read the vectors (`mu`); `verify` does, and finds a flipped bit there, naming the file
/// and the column's offset, while a good segment verifies. Mutations caught: `verify` not reading the
/// column (the flip passes), open still reading it (open fails), the offset of another column.
#[test]
fn a_damaged_vector_is_found_by_verify_not_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.seg");
    let s = set(10, 8);
    write_segment(&path, 1, (&s).into()).unwrap();
    Segment::open(&path).unwrap().verify().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[SEGMENT_HEADER + 4 * 8 * 3 + 5] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let seg = Segment::open(&path).expect("open leaves the vectors to verify");
    assert_eq!(seg.ids(), s.ids(), "the small columns are read as before");
    match seg.verify() {
        Err(Error::Corrupt { path: p, offset, reason }) => {
            assert_eq!((p, offset), (path.clone(), SEGMENT_HEADER as u64));
            assert!(reason.contains("mu") && reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn the_manifest_round_trips_and_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Manifest::load(dir.path()), Err(Error::Io { .. })));
    let mut m = Manifest {
        generation: 1,
        dim: 384,
        segments: vec![SegmentEntry { id: 0, file: "0000000000.seg".into(), rows: 5_000 }],
        wal: Some("0000000001.wal".into()),
        next_segment_id: 1,
        deleted: vec![42],
        index: vec![],
        schema: None,
    };
    m.store(dir.path()).unwrap();
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    // Without an index the manifest is version 1 (readable by builds that know only it); with one, 2.
    assert_eq!(std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap()[8], 1);
    m.index = vec!["0000000003.idx".into(), "0000000003.vec".into()];
    m.store(dir.path()).unwrap();
    assert_eq!(std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap()[8], 2);
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    // A version 2 manifest whose version field is changed to 1 is refused, not read without its index.
    let mut bytes = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    bytes[8] = 1;
    assert!(matches!(Manifest::decode(dir.path(), &bytes), Err(Error::Corrupt { .. })));
    // With a schema, version 3; read back as a version 2 it has bytes left over (Corrupt, not the
    // schema silently dropped). Mutation caught: writing version 2 with a schema, or reading 3 as 2.
    m.schema = Some(
        m2m_tier::Schema::new(vec![m2m_tier::Field { name: "label".into(), ty: m2m_tier::FieldType::Label }]).unwrap(),
    );
    m.store(dir.path()).unwrap();
    assert_eq!(std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap()[8], 3);
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    let mut bytes = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    bytes[8] = 2;
    assert!(matches!(Manifest::decode(dir.path(), &bytes), Err(Error::Corrupt { .. })));
    m.schema = None;
    m.index.clear();
    m.generation = 2;
    m.segments.push(SegmentEntry { id: 1, file: "0000000001.seg".into(), rows: 7 });
    m.store(dir.path()).unwrap();
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    // A segment not named by its id (a forged manifest sent the open looking for "000000000.seg"),
    // or a log name we never give: Corrupt naming the manifest, not a missing file.
    for (seg, wal) in [("000000000.seg", "0000000001.wal"), ("0000000000.seg", "notes.wal")] {
        let mut forged = m.clone();
        forged.segments[0].file = seg.into();
        forged.wal = Some(wal.into());
        forged.store(dir.path()).unwrap();
        assert!(matches!(Manifest::load(dir.path()), Err(Error::Corrupt { .. })), "{seg} {wal}");
    }
    m.store(dir.path()).unwrap();
    let temps = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".m2m-tmp."));
    assert_eq!(temps.count(), 0, "a temporary manifest left behind");

    let path = dir.path().join(MANIFEST_FILE);
    let good = fs::read(&path).unwrap();
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        fs::write(&path, &bad).unwrap();
        match Manifest::load(dir.path()) {
            Err(Error::Corrupt { .. } | Error::IncompatibleVersion { .. }) => {}
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    for cut in 0..good.len() {
        fs::write(&path, &good[..cut]).unwrap();
        assert!(matches!(Manifest::load(dir.path()), Err(Error::Corrupt { .. })), "cut at {cut}");
    }
    let mut other = good.clone();
    other[8..12].copy_from_slice(&(MANIFEST_VERSION + 1).to_le_bytes());
    fs::write(&path, &other).unwrap();
    assert!(matches!(Manifest::load(dir.path()), Err(Error::IncompatibleVersion { .. })));
}

#[test]
fn a_manifest_cannot_point_outside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["../escape.seg", "", "a/b.seg", ".."] {
        let m = Manifest {
            generation: 1,
            dim: 4,
            segments: vec![SegmentEntry { id: 0, file: name.into(), rows: 1 }],
            wal: None,
            next_segment_id: 1,
            deleted: vec![],
            index: vec![],
            schema: None,
        };
        m.store(dir.path()).unwrap();
        assert!(matches!(Manifest::load(dir.path()), Err(Error::Corrupt { .. })), "{name:?} accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any flipped byte: a typed error, or (in zero padding between columns, which holds no data) the same
    /// columns as before. Never a panic, never different data.
    #[test]
    fn segment_byte_flips_never_yield_wrong_data(at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.seg");
        let s = set(7, 9);
        write_segment(&path, 2, (&s).into()).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        fs::write(&path, &bytes).unwrap();
        // Open and verify together check every byte (open alone leaves the vectors to verify).
        match Segment::open(&path).and_then(|seg| seg.verify().map(|()| seg)) {
            Ok(seg) => prop_assert!(same(&seg, &s), "flip at {} changed the data undetected", i),
            Err(Error::Corrupt { .. } | Error::IncompatibleVersion { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn well_sealed_forgeries_are_refused_behind_the_checksums() {
    use m2m_tier::testing::decode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.seg");
    let s = set(5, 4);
    write_segment(&path, 1, (&s).into()).unwrap();
    let good = fs::read(&path).unwrap();
    let mut resealed = good.clone();
    decode::reseal_segment(&mut resealed);
    assert_eq!(resealed, good, "resealing a good file changes nothing");
    assert_eq!(decode::segment(&good).unwrap(), (5, 4));
    // kappa of row 2 set to -1 and every checksum recomputed: the value check still refuses it.
    let kappa_at = u64::from_le_bytes(good[32 + 8 * 3..40 + 8 * 3].try_into().unwrap()) as usize;
    let mut forged = good.clone();
    forged[kappa_at + 8..kappa_at + 12].copy_from_slice(&(-1.0f32).to_le_bytes());
    decode::reseal_segment(&mut forged);
    fs::write(&path, &forged).unwrap();
    match Segment::open(&path) {
        Err(Error::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, kappa_at as u64 + 8);
            assert!(reason.contains("row 2") && reason.contains("kappa"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A NaN direction component of row 3, resealed: refused too (the torture found it passing to the
    // facade, whose error named no file). Mutation caught: the value check without the directions.
    let mu_at = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    let mut forged = good.clone();
    let at = mu_at + 4 * (3 * 4 + 1);
    forged[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    decode::reseal_segment(&mut forged);
    fs::write(&path, &forged).unwrap();
    assert!(decode::segment(&forged).is_err(), "the fuzz decoder checks the vectors");
    match Segment::open(&path).and_then(|seg| seg.verify()) {
        Err(Error::Corrupt { path: p, offset, reason }) => {
            assert_eq!((p, offset), (path.clone(), (mu_at + 4 * 3 * 4) as u64));
            assert!(reason.contains("row 3") && reason.contains("mu"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
