//! End-to-end tests through the facade: data made, written, streamed and ingested as a user would.

mod attributes;
mod compaction;
mod engine;
mod hostile;
mod training;
mod upsert;
mod vocabulary;

use m2m::splat::{Error, VectorReader, VectorWriter};
use m2m::{Batch, DigitsConfig, SplatSet, digits_on_sphere};

#[test]
fn streamed_file_ingest_equals_in_memory_ingest() {
    let digits = digits_on_sphere(&DigitsConfig::default().rows(3_000).queries(0).dim(64)).unwrap();
    let dim = digits.dim;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.npy");
    let mut w = VectorWriter::<f32>::create(&path, dim).unwrap();
    for rows in digits.base.chunks(777 * dim) {
        w.write_rows(rows).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 3_000);

    let mut streamed = SplatSet::new(dim).unwrap();
    for chunk in VectorReader::open(&path).unwrap().chunks::<f32>(500) {
        streamed.append(Batch::new(&chunk.unwrap(), dim)).unwrap();
    }
    let whole = SplatSet::from_vectors(&digits.base, dim).unwrap();
    assert_eq!(streamed.mu(), whole.mu());
    assert_eq!(streamed.ids(), whole.ids());
    assert_eq!(streamed.info(), whole.info());
}

#[test]
fn a_bad_row_in_a_file_stops_ingest_at_its_chunk() {
    let dim = 8;
    let mut rows: Vec<f32> = (0..100 * dim).map(|i| 1.0 + (i % 5) as f32).collect();
    rows[63 * dim + 2] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.fvecs");
    m2m::splat::write_vectors(&path, &rows, dim).unwrap();

    let mut set = SplatSet::new(dim).unwrap();
    let mut failure = None;
    for chunk in VectorReader::open(&path).unwrap().chunks::<f32>(25) {
        if let Err(e) = set.append(Batch::new(&chunk.unwrap(), dim)) {
            failure = Some(e);
            break;
        }
    }
    // Row 63 is row 13 of the third chunk; the first two chunks are in, nothing of the third.
    assert!(matches!(failure, Some(Error::NonFinite { row: 13, column: 2, .. })), "{failure:?}");
    assert_eq!(set.len(), 50);
}
