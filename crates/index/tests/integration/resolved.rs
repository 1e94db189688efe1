//! Resolved filters against the filter asked row by row (written by the fresh-eyes review of issue 19's
//! resolved filters): the same plans and hits, huge k, k = 0, the per-thread scratch, stamps of clones.

use m2m_index::{Error, FilterPlan, IdSet, Index, IndexConfig, Lod, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};
use rayon::prelude::*;
use std::collections::HashSet;

const DIM: usize = 32;

fn build(rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>, Vec<u64>, Index) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(20).dim(dim)).unwrap();
    let ids: Vec<u64> = (0..rows as u64).map(|i| i * 5 + 7).collect();
    let index = Index::build(&IndexConfig::default(), dim, &d.base, &ids).unwrap();
    (d.base, d.queries, ids, index)
}

fn share(ids: &[u64], percent: u64) -> IdSet {
    let keep = ids.iter().copied().filter(|id| id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57 < percent * 128 / 100);
    IdSet::new(keep.collect(), ids.len())
}

fn p() -> SearchParams {
    SearchParams::default()
}

/// The facade answers a single query's first call under a filter with `search_filtered` (the filter asked
/// lazily) and its later calls with `search_resolved`. A user repeating one query must get one answer:
/// the two paths should choose the same plan and return the same hits at every level and k. Catches
/// the planner weighing the row-by-row check (the first call then scanned exactly where the later ones
/// searched in clusters: 180 of 3,520 calls with another plan, 37 with other hits).
#[test]
fn resolved_single_answers_as_the_lazy_single_does() {
    let (_, queries, ids, index) = build(6_000, DIM);
    let mut diffs = Vec::new();
    for percent in [1, 2, 3, 5, 8, 12, 20, 30, 50, 70, 95] {
        let f = share(&ids, percent);
        let r = index.resolve_filter(&f);
        for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
            for k in [1, 10, 100, f.ids().len() + 5] {
                for (qi, q) in queries.chunks_exact(DIM).enumerate() {
                    let lazy = index.search_filtered_planned(q, k, lod, &p(), &f, None).unwrap();
                    let res = index.search_resolved(q, k, lod, &p(), &r, None).unwrap();
                    let a: Vec<u64> = lazy.0.iter().map(|h| h.id).collect();
                    let b: Vec<u64> = res.0.iter().map(|h| h.id).collect();
                    if lazy.1.plan != res.1.plan {
                        diffs.push(format!(
                            "{percent}% {lod:?} k={k} q{qi}: plans {:?} and {:?}",
                            lazy.1.plan, res.1.plan
                        ));
                    }
                    // At Exact both score every match exactly, through different kernels: orders may
                    // differ by a rounding-level near tie; compare the sets there.
                    // Same plan: the same rows scored, in another order of kernels; compare sets too.
                    let differ = if lod == Lod::Exact || lazy.1.plan == res.1.plan {
                        a.iter().collect::<HashSet<_>>() != b.iter().collect::<HashSet<_>>()
                    } else {
                        a != b
                    };
                    if differ {
                        diffs.push(format!(
                            "{percent}% {lod:?} k={k} q{qi}: lazy {:?} {} hits, resolved {:?} {} hits, first differing ids {:?}",
                            lazy.1.plan,
                            a.len(),
                            res.1.plan,
                            b.len(),
                            a.iter().zip(&b).find(|(x, y)| x != y)
                        ));
                    }
                }
            }
        }
    }
    assert!(diffs.is_empty(), "{} differences, e.g.:\n{}", diffs.len(), diffs[..diffs.len().min(12)].join("\n"));
}

/// A huge k (the index-level API does not bound it) must not panic, under either path.
#[test]
fn huge_k_does_not_panic() {
    // Catches an entry point that sizes its buffers by k (an overflow or a capacity panic).
    let (_, queries, ids, index) = build(2_000, DIM);
    let f = share(&ids, 30);
    let r = index.resolve_filter(&f);
    let q = &queries[..DIM];
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        let unfiltered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            index.search(q, usize::MAX, lod, &p()).map(|h| h.len())
        }));
        let lazy = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            index.search_filtered(q, usize::MAX, lod, &p(), &f).map(|h| h.len())
        }));
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            index.search_resolved(q, usize::MAX, lod, &p(), &r, None).map(|h| h.0.len())
        }));
        assert!(
            unfiltered.is_ok() && lazy.is_ok() && res.is_ok(),
            "{lod:?}: unfiltered panicked {}, lazy panicked {}, resolved panicked {}",
            unfiltered.is_err(),
            lazy.is_err(),
            res.is_err()
        );
    }
}

/// k = 0 is refused, k larger than the matches returns every match, resolved as lazily.
#[test]
fn k_zero_and_k_past_the_matches() {
    let (_, queries, ids, index) = build(2_000, DIM);
    let f = share(&ids, 1);
    let r = index.resolve_filter(&f);
    let q = &queries[..DIM];
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        assert!(matches!(index.search_resolved(q, 0, lod, &p(), &r, None), Err(Error::ZeroK)));
        assert!(matches!(index.search_batch_resolved(q, 0, lod, &p(), &r, None), Err(Error::ZeroK)));
        if lod == Lod::Centroids {
            continue;
        }
        let all = index.search_resolved(q, 10_000, lod, &p(), &r, None).unwrap().0;
        assert_eq!(all.len(), f.ids().len(), "{lod:?}");
    }
    // Nothing matches / everything matches.
    let none = index.resolve_filter(&IdSet::new(vec![1, 2, 3], ids.len()));
    assert!(none.is_empty());
    assert!(index.search_resolved(q, 10, Lod::Rerank, &p(), &none, None).unwrap().0.is_empty());
    let every = index.resolve_filter(&IdSet::new(ids.clone(), ids.len()));
    assert_eq!(every.len(), ids.len());
    let a = index.search_resolved(q, 10, Lod::Exact, &p(), &every, None).unwrap().0;
    let b = index.search(q, 10, Lod::Exact, &p()).unwrap();
    assert_eq!(a.iter().map(|h| h.id).collect::<Vec<_>>(), b.iter().map(|h| h.id).collect::<Vec<_>>());
}

/// One thread alternating between indexes of different sizes and dimensions through the thread-local
/// scratch, and rayon workers calling `search_resolved` inside a parallel iterator: each answer equals
/// the batch's.
#[test]
fn thread_local_scratch_across_indexes_and_inside_rayon() {
    let (_, qa, ida, a) = build(3_000, 32);
    let (_, qb, idb, b) = build(500, 12);
    let (fa, fb) = (share(&ida, 20), share(&idb, 60));
    let (ra, rb) = (a.resolve_filter(&fa), b.resolve_filter(&fb));
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        let ba = a.search_batch_resolved(&qa, 7, lod, &p(), &ra, None).unwrap();
        let bb = b.search_batch_resolved(&qb, 50, lod, &p(), &rb, None).unwrap();
        for i in 0..20 {
            assert_eq!(a.search_resolved(&qa[i * 32..][..32], 7, lod, &p(), &ra, None).unwrap(), ba[i]);
            assert_eq!(b.search_resolved(&qb[i * 12..][..12], 50, lod, &p(), &rb, None).unwrap(), bb[i]);
        }
        let par: Vec<_> = (0..20)
            .into_par_iter()
            .map(|i| {
                let x = a.search_resolved(&qa[i * 32..][..32], 7, lod, &p(), &ra, None).unwrap();
                let y = b.search_resolved(&qb[i * 12..][..12], 50, lod, &p(), &rb, None).unwrap();
                (x, y)
            })
            .collect();
        for (i, (x, y)) in par.into_iter().enumerate() {
            assert_eq!(x, ba[i]);
            assert_eq!(y, bb[i]);
        }
    }
}

/// Clones mutated apart never share a stamp; a filter resolved on one is refused by the other; a filter
/// resolved on a rebuilt-from-parts copy is refused by the original (conservative).
#[test]
fn clones_mutated_apart_do_not_share_a_stamp() {
    let (_, queries, ids, index) = build(2_000, DIM);
    let q = &queries[..DIM];
    let f = share(&ids, 50);
    let mut a = index.clone();
    let mut b = index.clone();
    a.delete(&[ids[0]]);
    b.delete(&[ids[1]]);
    let ra = a.resolve_filter(&f);
    let rb = b.resolve_filter(&f);
    assert!(!b.is_current(&ra) && !a.is_current(&rb) && !index.is_current(&ra));
    assert!(matches!(b.search_resolved(q, 5, Lod::Rerank, &p(), &ra, None), Err(Error::StaleFilter)));
    // An insert that fails (a duplicate id) changes nothing, so a filter stays usable... or not: report.
    let r = index.resolve_filter(&f);
    let mut c = index.clone();
    assert!(c.insert(q, &[ids[3]]).is_err());
    assert!(c.is_current(&r), "a refused insert made the resolved filter stale (harmless, conservative)");
    // Deleting an id that is not present changes nothing.
    assert_eq!(c.delete(&[1]), 0);
    assert!(c.is_current(&r));
    // A rebalance renews the stamp (conservative, even when it splits nothing).
    let mut d = index.clone();
    d.rebalance();
    assert!(!d.is_current(&r) && index.is_current(&r), "a rebalance left the filter current");
    // Every row the filter's ids name but the index no longer holds is left out.
    let mut e = index.clone();
    let gone: Vec<u64> = f.ids().iter().copied().take(100).collect();
    e.delete(&gone);
    let re = e.resolve_filter(&f);
    assert_eq!(re.len(), f.ids().len() - 100);
    let hits = e.search_resolved(q, 2_000, Lod::Exact, &p(), &re, None).unwrap().0;
    assert!(hits.iter().all(|h| !gone.contains(&h.id)));
    assert_eq!(hits.len(), f.ids().len() - 100);
    let _ = FilterPlan::InCluster;
}
