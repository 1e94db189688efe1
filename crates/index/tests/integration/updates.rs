//! Inserts, deletes and rebalancing without a rebuild, and the serialised parts.

use m2m_index::{Error, Index, IndexConfig, IndexParts, Lod, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};

fn setup() -> (usize, Vec<f32>, Index) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(3_000).queries(0).dim(32)).unwrap();
    let ids: Vec<u64> = (0..2_000).collect();
    let index = Index::build(&IndexConfig::default(), 32, &d.base[..2_000 * 32], &ids).unwrap();
    (32, d.base, index)
}

#[test]
fn inserted_vectors_are_found_and_deleted_ones_are_not() {
    let (dim, base, mut index) = setup();
    let new_ids: Vec<u64> = (2_000..3_000).collect();
    index.insert(&base[2_000 * dim..], &new_ids).unwrap();
    assert_eq!(index.len(), 3_000);
    let p = SearchParams::default();
    for id in [2_000u64, 2_500, 2_999] {
        let q = &base[id as usize * dim..][..dim];
        for lod in [Lod::Rerank, Lod::Exact] {
            assert_eq!(index.search(q, 1, lod, &p).unwrap()[0].id, id, "{lod:?} after insert");
        }
        // LOD 1 ranks by 4-bit estimates: the vector itself is among the first few.
        assert!(index.search(q, 10, Lod::Codes, &p).unwrap().iter().any(|h| h.id == id), "LOD 1 after insert");
    }
    let gone: Vec<u64> = (0..3_000).step_by(3).collect();
    assert_eq!(index.delete(&gone), 1_000);
    assert_eq!(index.delete(&gone), 0, "deleting twice removes nothing");
    assert_eq!(index.len(), 2_000);
    for id in [0u64, 2_100, 2_997] {
        let q = &base[id as usize * dim..][..dim];
        for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
            let hits = index.search(q, 20, lod, &p).unwrap();
            assert!(hits.iter().all(|h| h.id % 3 != 0), "{lod:?} returned a deleted id");
        }
    }
    // The swap-removal bookkeeping kept every surviving id findable by itself.
    for id in (1..3_000u64).filter(|i| i % 3 != 0).step_by(97) {
        let q = &base[id as usize * dim..][..dim];
        assert_eq!(index.search(q, 1, Lod::Exact, &p).unwrap()[0].id, id);
    }
}

#[test]
fn a_rejected_insert_changes_nothing() {
    let (dim, base, mut index) = setup();
    let before = index.parts().clone();
    assert!(matches!(index.insert(&base[..dim], &[5]), Err(Error::DuplicateId { id: 5 })));
    assert!(matches!(index.insert(&base[..2 * dim], &[9_000, 9_000]), Err(Error::DuplicateId { id: 9_000 })));
    let mut nan = base[..2 * dim].to_vec();
    nan[dim + 3] = f32::NAN;
    assert!(matches!(index.insert(&nan, &[9_001, 9_002]), Err(Error::NonFinite { row: 1, column: 3, .. })));
    assert!(matches!(index.insert(&base[..dim], &[1, 2]), Err(Error::IdCount { .. })));
    assert_eq!(index.parts(), &before);
    assert_eq!(index.len(), 2_000);
}

#[test]
fn drift_triggers_a_rebalance_that_splits_and_keeps_everything_findable() {
    let (dim, base, mut index) = setup();
    // Pile many near-copies of one vector into one cluster.
    let v = &base[..dim];
    let extra: Vec<f32> =
        (0..600).flat_map(|i| v.iter().map(move |x| x * (1.0 + i as f32 * 1e-3) + (i % 5) as f32 * 1e-3)).collect();
    let ids: Vec<u64> = (10_000..10_600).collect();
    assert!(!index.needs_rebalance());
    index.insert(&extra, &ids).unwrap();
    assert!(index.needs_rebalance());
    let before = index.n_fine();
    let report = index.rebalance();
    assert!(report.split >= 1, "{report:?}");
    assert_eq!(report.clusters, index.n_fine());
    assert!(index.n_fine() > before);
    assert_eq!(index.len(), 2_600);
    let p = SearchParams::default();
    // Id 0 now ties with its copies; every other vector must still find itself.
    for id in (1..2_000u64).step_by(111) {
        let q = &base[id as usize * dim..][..dim];
        assert_eq!(index.search(q, 1, Lod::Rerank, &p).unwrap()[0].id, id);
    }
}

#[test]
fn parts_round_trip_through_postcard_and_corruption_is_caught() {
    let (dim, base, index) = setup();
    let bytes = postcard::to_allocvec(index.parts()).unwrap();
    let parts: IndexParts = postcard::from_bytes(&bytes).unwrap();
    let back = Index::from_parts(parts.clone()).unwrap();
    let p = SearchParams::default();
    let q = &base[..4 * dim];
    assert_eq!(back.search_batch(q, 10, Lod::Rerank, &p).unwrap(), index.search_batch(q, 10, Lod::Rerank, &p).unwrap());

    let mut bad = parts.clone();
    bad.clusters[3].codes.to_mut().pop();
    assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })));
    let mut bad = parts.clone();
    bad.children[0].push(0);
    assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })));
    let mut bad = parts.clone();
    let dup = bad.clusters[0].ids[0];
    bad.clusters[1].ids[0] = dup;
    assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })));
    let mut bad = parts.clone();
    bad.clusters[2].bf16.pop();
    assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })));
    let mut bad = parts;
    bad.sq_min.pop();
    assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })));
}
