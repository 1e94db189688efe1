//! k at the edges: calibrate with a huge k, an index emptied by deletes at every level (written by a
//! fresh-eyes review, 2026-12-02).

use m2m_index::{IdSet, Index, IndexConfig, Lod, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};

fn build(rows: usize, dim: usize) -> (Vec<f32>, Vec<u64>, Index) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(4).dim(dim)).unwrap();
    let ids: Vec<u64> = (0..rows as u64).collect();
    let index = Index::build(&IndexConfig::default(), dim, &d.base, &ids).unwrap();
    (d.queries, ids, index)
}

/// `calibrate(target, k)` takes a k like the searches do: a huge k is a typed error or bounded by the
/// rows, never an overflow panic (`n <= k + 1` overflows at usize::MAX).
#[test]
fn calibrate_with_a_huge_k_does_not_panic() {
    let (_, _, mut index) = build(2_000, 32);
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| index.calibrate(0.9, usize::MAX).map(drop)));
    assert!(got.is_ok(), "calibrate(0.9, usize::MAX) panicked");
}

/// An index emptied by deletes answers every search with no hit (k is bounded by max(len, 1)).
#[test]
fn an_emptied_index_answers_empty_at_every_lod_and_k() {
    let (queries, ids, mut index) = build(1_500, 32);
    index.delete(&ids);
    assert_eq!(index.len(), 0);
    let q = &queries[..32];
    let none = IdSet::new(Vec::new(), 0);
    let all = IdSet::new(ids.clone(), ids.len());
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        for k in [1, 10, usize::MAX] {
            let p = SearchParams::default();
            assert!(index.search(q, k, lod, &p).unwrap().is_empty(), "{lod:?} {k}");
            assert!(index.search_batch(&queries, k, lod, &p).unwrap().iter().all(Vec::is_empty), "{lod:?} {k}");
            assert!(index.search_filtered(q, k, lod, &p, &all).unwrap().is_empty(), "{lod:?} {k}");
            assert!(index.search_filtered(q, k, lod, &p, &none).unwrap().is_empty(), "{lod:?} {k}");
            let r = index.resolve_filter(&all);
            assert!(index.search_resolved(q, k, lod, &p, &r, None).unwrap().0.is_empty(), "{lod:?} {k}");
        }
    }
}
