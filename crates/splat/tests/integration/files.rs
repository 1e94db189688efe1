//! Vector files on disk: round trips, streaming, and every way a file can be bad.

use std::fs;
use std::path::{Path, PathBuf};

use m2m_splat::{ElementType, Error, VectorFormat, VectorReader, VectorWriter, Vectors, read_vectors, write_vectors};
use proptest::prelude::*;

fn sample(rows: usize, dim: usize) -> Vec<f32> {
    (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect()
}

fn write_f32(dir: &Path, name: &str, rows: usize, dim: usize) -> PathBuf {
    let path = dir.join(name);
    write_vectors(&path, &sample(rows, dim), dim).unwrap();
    path
}

/// The offset of a `Corrupt` error, or a failure naming what came instead.
fn corrupt_offset<T: std::fmt::Debug>(r: Result<T, Error>, path: &Path) -> u64 {
    match r {
        Err(Error::Corrupt { path: p, offset, reason }) => {
            assert_eq!(p, path, "error names another file");
            assert!(!reason.is_empty());
            offset
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn open_and_read(path: &Path) -> Result<Vectors<f32>, Error> {
    read_vectors::<f32>(path)
}

#[test]
fn f32_and_i32_round_trip_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(37, 5);
    for name in ["a.fvecs", "a.npy", "A.NPY"] {
        let path = dir.path().join(name);
        write_vectors(&path, &data, 5).unwrap();
        let back = read_vectors::<f32>(&path).unwrap();
        assert_eq!(back, Vectors { dim: 5, data: data.clone() }, "{name}");
        let info = VectorReader::open(&path).unwrap().info();
        assert_eq!((info.rows, info.dim, info.element), (37, 5, ElementType::F32));
    }
    let ids: Vec<i32> = (0..60).map(|i| i * 7 - 100).collect();
    for name in ["gt.ivecs", "gt.npy"] {
        let path = dir.path().join(name);
        write_vectors(&path, &ids, 6).unwrap();
        assert_eq!(read_vectors::<i32>(&path).unwrap(), Vectors { dim: 6, data: ids.clone() }, "{name}");
    }
    // Writes leave no temporary file behind.
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.ends_with(".tmp").then_some(n)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn npy_data_starts_64_byte_aligned_and_numpy_style_headers_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32(dir.path(), "x.npy", 3, 4);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 128 + 3 * 4 * 4);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");

    // A header as NumPy itself writes it (64-byte total, version 1.0), and a version 2.0 header.
    for version in [1u8, 2] {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let pre = if version == 1 { 10 } else { 12 };
        let total = (pre + dict.len() + 1).div_ceil(64) * 64;
        let mut header = format!("{dict:<width$}", width = total - pre - 1).into_bytes();
        header.push(b'\n');
        let mut file = b"\x93NUMPY".to_vec();
        file.extend([version, 0]);
        if version == 1 {
            file.extend((header.len() as u16).to_le_bytes());
        } else {
            file.extend((header.len() as u32).to_le_bytes());
        }
        file.extend(header);
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            file.extend(v.to_le_bytes());
        }
        let p = dir.path().join(format!("v{version}.npy"));
        fs::write(&p, file).unwrap();
        assert_eq!(read_vectors::<f32>(&p).unwrap().data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}

#[test]
fn streaming_in_chunks_and_resuming_give_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(1_000, 12);
    for name in ["s.fvecs", "s.npy"] {
        let path = dir.path().join(name);
        write_vectors(&path, &data, 12).unwrap();
        for chunk_rows in [1, 7, 333, 1_000, 5_000] {
            let chunks: Vec<Vec<f32>> =
                VectorReader::open(&path).unwrap().chunks(chunk_rows).collect::<Result<_, _>>().unwrap();
            assert_eq!(chunks.len(), 1_000usize.div_ceil(chunk_rows));
            assert_eq!(chunks.concat(), data, "{name} in chunks of {chunk_rows}");
        }
        let mut reader = VectorReader::open(&path).unwrap();
        reader.seek_row(990).unwrap();
        let mut out = Vec::new();
        assert_eq!(reader.read_rows::<f32>(100, &mut out).unwrap(), 10);
        assert_eq!(out, data[990 * 12..]);
        assert_eq!(reader.read_rows::<f32>(100, &mut out).unwrap(), 0);
        assert_eq!(reader.position(), 1_000);
    }
}

#[test]
fn streaming_writer_matches_one_shot_writer() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(50, 8);
    for ext in ["fvecs", "npy"] {
        let one = dir.path().join(format!("one.{ext}"));
        let many = dir.path().join(format!("many.{ext}"));
        write_vectors(&one, &data, 8).unwrap();
        let mut w = VectorWriter::<f32>::create(&many, 8).unwrap();
        for rows in data.chunks(8 * 9) {
            w.write_rows(rows).unwrap();
        }
        assert!(!many.exists(), "file visible before finish");
        assert_eq!(w.finish().unwrap(), 50);
        assert_eq!(fs::read(&one).unwrap(), fs::read(&many).unwrap(), "{ext}");
    }
}

#[test]
fn abandoned_or_failed_writes_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.npy");
    {
        let mut w = VectorWriter::<f32>::create(&path, 4).unwrap();
        w.write_rows(&[1.0; 8]).unwrap();
        assert!(matches!(w.write_rows(&[1.0; 5]), Err(Error::RaggedBatch { len: 5, dim: 4 })));
    }
    let empty = dir.path().join("empty.fvecs");
    let w = VectorWriter::<f32>::create(&empty, 4).unwrap();
    assert!(matches!(w.finish(), Err(Error::EmptyBatch)));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "something was left behind");

    // An existing file is not touched by an abandoned rewrite.
    let keep = write_f32(dir.path(), "keep.fvecs", 3, 2);
    let before = fs::read(&keep).unwrap();
    drop(VectorWriter::<f32>::create(&keep, 2).unwrap());
    assert_eq!(fs::read(&keep).unwrap(), before);

    // Zero rows is a valid .npy (the shape still carries the dimension).
    let z = dir.path().join("zero.npy");
    assert_eq!(VectorWriter::<f32>::create(&z, 9).unwrap().finish().unwrap(), 0);
    assert_eq!(read_vectors::<f32>(&z).unwrap(), Vectors { dim: 9, data: vec![] });
}

#[test]
fn writer_rejects_bad_requests_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no/such/dir/x.fvecs");
    match VectorWriter::<f32>::create(&missing_dir, 3) {
        Err(Error::Io { path, .. }) => assert!(path.starts_with(dir.path().join("no/such/dir"))),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(VectorWriter::<f32>::create(dir.path().join("x.fvecs"), 0), Err(Error::ZeroDimension)));
    assert!(matches!(VectorWriter::<i32>::create(dir.path().join("x.fvecs"), 3), Err(Error::Unsupported { .. })));
    assert!(matches!(VectorWriter::<f32>::create(dir.path().join("x.ivecs"), 3), Err(Error::Unsupported { .. })));
    assert!(matches!(VectorWriter::<f32>::create(dir.path().join("x.csv"), 3), Err(Error::Unsupported { .. })));
}

#[test]
fn missing_file_unknown_extension_and_wrong_element_type() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.fvecs");
    match VectorReader::open(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(VectorReader::open(dir.path().join("x.bin")), Err(Error::Unsupported { .. })));
    assert_eq!(VectorFormat::from_path(Path::new("a/b.IVECS")).unwrap(), VectorFormat::Ivecs);

    let ids = dir.path().join("gt.ivecs");
    write_vectors(&ids, &[1i32, 2, 3], 3).unwrap();
    let mut r = VectorReader::open(&ids).unwrap();
    let mut out: Vec<f32> = Vec::new();
    assert!(matches!(r.read_rows(10, &mut out), Err(Error::Unsupported { .. })));
    assert!(out.is_empty());
}

#[test]
fn fvecs_corruption_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32(dir.path(), "c.fvecs", 10, 4);
    let good = fs::read(&path).unwrap();
    let record = 4 + 4 * 4;

    fs::write(&path, b"").unwrap();
    assert_eq!(corrupt_offset(open_and_read(&path), &path), 0);
    fs::write(&path, &good[..3]).unwrap();
    assert_eq!(corrupt_offset(open_and_read(&path), &path), 3);

    // A dimension header of 0 or below.
    for dim in [0i32, -4] {
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&dim.to_le_bytes());
        fs::write(&path, &bad).unwrap();
        assert_eq!(corrupt_offset(open_and_read(&path), &path), 0);
    }

    // A truncated last record: the error points at its start.
    fs::write(&path, &good[..good.len() - 5]).unwrap();
    assert_eq!(corrupt_offset(open_and_read(&path), &path), 9 * record as u64);

    // A record in the middle whose header disagrees (same total length): found while streaming.
    let mut bad = good.clone();
    bad[6 * record..6 * record + 4].copy_from_slice(&5i32.to_le_bytes());
    fs::write(&path, &bad).unwrap();
    let mut reader = VectorReader::open(&path).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read_rows::<f32>(4, &mut out).unwrap(), 4);
    let err = reader.read_rows::<f32>(4, &mut out);
    assert_eq!(corrupt_offset(err, &path), 6 * record as u64);
    assert_eq!(out.len(), 4 * 4, "a failed read appended rows");
}

#[test]
fn fvecs_spanning_many_read_blocks_round_trips_and_locates_late_corruption() {
    // 10,000 rows of 256 floats is about 10 MB: several of the reader's and writer's 4 MiB blocks.
    let dir = tempfile::tempdir().unwrap();
    let (rows, dim) = (10_000, 256);
    let path = write_f32(dir.path(), "big.fvecs", rows, dim);
    assert_eq!(read_vectors::<f32>(&path).unwrap().data, sample(rows, dim));

    let record = 4 + 4 * dim;
    let mut bytes = fs::read(&path).unwrap();
    bytes[9_000 * record..9_000 * record + 4].copy_from_slice(&7i32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert_eq!(corrupt_offset(open_and_read(&path), &path), 9_000 * record as u64);
}

#[test]
fn npy_corruption_is_located_or_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32(dir.path(), "c.npy", 6, 3);
    let good = fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = {
        let mut magic = good.clone();
        magic[1] = b'X';
        let mut huge = good.clone();
        huge[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut garbage = good.clone();
        garbage[10..20].copy_from_slice(b"not a dict");
        vec![
            ("bad magic", magic),
            ("cut in the preamble", good[..7].to_vec()),
            ("cut in the header", good[..60].to_vec()),
            ("header longer than the file", huge),
            ("cut in the data", good[..good.len() - 1].to_vec()),
            ("trailing bytes", [good.as_slice(), &[0, 0, 0, 0]].concat()),
            ("unparsable header", garbage),
        ]
    };
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let offset = corrupt_offset(open_and_read(&path), &path);
        assert!(offset <= bytes.len() as u64, "{what}: offset {offset} past the end");
    }
    let header = |dict: &str| {
        let mut h = format!("{dict:<117}").into_bytes();
        h.push(b'\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend(118u16.to_le_bytes());
        file.extend(h);
        file
    };
    let unsupported = [
        ("float64", header("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 3), }")),
        ("big-endian", header("{'descr': '>f4', 'fortran_order': False, 'shape': (0, 3), }")),
        ("fortran", header("{'descr': '<f4', 'fortran_order': True, 'shape': (0, 3), }")),
        ("1-D", header("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }")),
        ("version 9", [b"\x93NUMPY\x09\x00".as_slice(), &good[8..]].concat()),
    ];
    for (what, bytes) in unsupported {
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(open_and_read(&path), Err(Error::Unsupported { .. })), "{what}");
    }
}

/// A shape whose element count overflows is `Corrupt` naming the file, not a panic inside npyz
/// ("attempt to multiply with overflow") nor, in release builds, a wrapped small size. Catches removing
/// `check_shape` (the test panics in the debug build) or an unchecked multiply in it.
#[test]
fn npy_shape_that_overflows_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.npy");
    for shape in [
        "(18446744073709551615, 4)",
        "(4611686018427387904, 4)",
        "(4, 4611686018427387904)",
        "(99999999999999999999, 4)",
    ] {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let mut h = format!("{dict:<117}").into_bytes();
        h.push(b'\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend(118u16.to_le_bytes());
        file.extend(h);
        file.extend([0u8; 64]);
        fs::write(&path, &file).unwrap();
        corrupt_offset(open_and_read(&path), &path);
    }
}

#[test]
fn a_file_truncated_while_streaming_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t.fvecs", "t.npy"] {
        // Larger than the reader's 1 MiB buffer, so the cut lands in bytes not read yet.
        let path = write_f32(dir.path(), name, 40_000, 16);
        let mut reader = VectorReader::open(&path).unwrap();
        let mut out = Vec::new();
        reader.read_rows::<f32>(10, &mut out).unwrap();
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
        let mut rest = Vec::new();
        let err = reader.read_rows::<f32>(100_000, &mut rest);
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{name}: {err:?}");
        assert!(rest.is_empty());
    }
}

#[test]
fn shared_minilm_files_read_with_their_documented_shape() {
    // The real benchmark data, when the checkout has ../shared beside it (as CI does).
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minilm70k");
    if !base.exists() {
        return;
    }
    let queries = VectorReader::open(base.join("minilm70k.query.fvecs")).unwrap();
    assert_eq!((queries.info().rows, queries.info().dim), (10_000, 384));
    for chunk in queries.chunks::<f32>(4_096) {
        for row in chunk.unwrap().chunks_exact(384) {
            let n: f64 = row.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "norm {n}");
        }
    }
    let gt = read_vectors::<i32>(base.join("minilm70k.gt.ivecs")).unwrap();
    assert_eq!((gt.rows(), gt.dim), (10_000, 100));
    assert!(gt.data.iter().all(|&id| (0..70_000).contains(&id)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any truncation of a valid file is either an error or (fvecs cut on a record boundary) the
    /// corresponding prefix; never a panic and never wrong data.
    #[test]
    fn truncation_anywhere_never_panics(rows in 1usize..20, dim in 1usize..9, cut in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(rows, dim);
        for name in ["p.fvecs", "p.npy"] {
            let path = dir.path().join(name);
            write_vectors(&path, &data, dim).unwrap();
            let bytes = fs::read(&path).unwrap();
            let at = cut.index(bytes.len());
            fs::write(&path, &bytes[..at]).unwrap();
            match read_vectors::<f32>(&path) {
                Err(Error::Corrupt { .. }) => {}
                Ok(v) => {
                    prop_assert!(name.ends_with("fvecs"));
                    let record = 4 + 4 * dim;
                    prop_assert_eq!(at % record, 0);
                    prop_assert_eq!(&v.data[..], &data[..at / record * dim]);
                }
                Err(other) => prop_assert!(false, "{}: unexpected {:?}", name, other),
            }
        }
    }

    /// A flipped byte anywhere gives a typed error or a file of the same shape; never a panic.
    #[test]
    fn byte_flips_never_panic(rows in 1usize..10, dim in 1usize..6, at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["f.fvecs", "f.npy"] {
            let path = dir.path().join(name);
            write_vectors(&path, &sample(rows, dim), dim).unwrap();
            let mut bytes = fs::read(&path).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
            fs::write(&path, &bytes).unwrap();
            if let Ok(v) = read_vectors::<f32>(&path) {
                prop_assert_eq!(v.data.len(), rows * dim);
            }
        }
    }
}
