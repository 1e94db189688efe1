//! Recall and correctness of search against an f64 brute force, on the built-in digits data.

use m2m_index::{Error, Hit, Index, IndexConfig, Lod, Metric, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};

struct Data {
    dim: usize,
    base: Vec<f32>,
    queries: Vec<f32>,
    ids: Vec<u64>,
}

fn digits(rows: usize, queries: usize, dim: usize) -> Data {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(queries).dim(dim)).unwrap();
    // Ids that are not row numbers, to catch any confusion of the two.
    let ids = (0..rows as u64).map(|i| i * 3 + 1_000).collect();
    Data { dim, base: d.base, queries: d.queries, ids }
}

/// Scales each row by a different factor, so inner product and L2 differ from cosine.
fn scaled(v: &[f32], dim: usize) -> Vec<f32> {
    v.chunks_exact(dim)
        .enumerate()
        .flat_map(|(i, r)| r.iter().map(move |x| x * (0.5 + (i % 7) as f32 * 0.25)))
        .collect()
}

/// Exact top-k ids by the metric, in f64.
fn brute_force(metric: Metric, base: &[f32], ids: &[u64], q: &[f32], k: usize) -> Vec<u64> {
    let dim = q.len();
    let qn = q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let mut scored: Vec<(f64, u64)> = base
        .chunks_exact(dim)
        .zip(ids)
        .map(|(x, &id)| {
            let dot: f64 = x.iter().zip(q).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let s = match metric {
                Metric::Cosine => dot / (qn * x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()),
                Metric::InnerProduct => dot,
                Metric::L2 => -x.iter().zip(q).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>(),
            };
            (s, id)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

fn recall(index: &Index, d: &Data, base: &[f32], queries: &[f32], k: usize, lod: Lod, params: &SearchParams) -> f64 {
    let results = index.search_batch(queries, k, lod, params).unwrap();
    let mut found = 0;
    for (q, hits) in queries.chunks_exact(d.dim).zip(&results) {
        assert_eq!(hits.len(), k);
        assert_sorted(index.metric(), hits);
        let truth = brute_force(index.metric(), base, &d.ids, q, k);
        found += hits.iter().filter(|h| truth.contains(&h.id)).count();
    }
    found as f64 / (results.len() * k) as f64
}

fn assert_sorted(metric: Metric, hits: &[Hit]) {
    for w in hits.windows(2) {
        if metric.higher_is_closer() {
            assert!(w[0].score >= w[1].score, "not best first: {hits:?}");
        } else {
            assert!(w[0].score <= w[1].score, "not best first: {hits:?}");
        }
    }
}

#[test]
fn every_lod_reaches_its_recall_on_every_metric_and_code() {
    use m2m_index::CodeKind;
    let d = digits(4_000, 100, 64);
    // LOD 1 ranks by estimates only; 4-bit codes blur near-duplicate digits more than 8-bit ones.
    let cases = [
        (Metric::Cosine, CodeKind::Sq8, 0.85),
        (Metric::Cosine, CodeKind::Sq4, 0.80),
        (Metric::InnerProduct, CodeKind::Sq4, 0.80),
        (Metric::L2, CodeKind::Sq4, 0.80),
        (Metric::L2, CodeKind::Sq8, 0.85),
    ];
    for (metric, kind, lod1_floor) in cases {
        let (base, queries) = if metric == Metric::Cosine {
            (d.base.clone(), d.queries.clone())
        } else {
            (scaled(&d.base, d.dim), scaled(&d.queries, d.dim))
        };
        let config = IndexConfig::default().metric(metric).codes(kind);
        let index = Index::build(&config, d.dim, &base, &d.ids).unwrap();
        assert_eq!(index.len(), 4_000);
        let p = SearchParams { nprobe: 32, ..SearchParams::default() };
        let exact = recall(&index, &d, &base, &queries, 10, Lod::Exact, &p);
        let lod2 = recall(&index, &d, &base, &queries, 10, Lod::Rerank, &p);
        let lod1 = recall(&index, &d, &base, &queries, 10, Lod::Codes, &p);
        // Exact is exact (f32 against f64 may swap a near tie, hence not 1.0 to the bit).
        assert!(exact >= 0.995, "{metric} {kind:?}: exact recall {exact}");
        assert!(lod2 >= 0.95, "{metric} {kind:?}: LOD 2 recall {lod2}");
        assert!(lod1 >= lod1_floor, "{metric} {kind:?}: LOD 1 recall {lod1}");
        assert!(lod2 >= lod1 - 1e-9, "{metric} {kind:?}: re-ranking lost recall ({lod1} -> {lod2})");
    }
}

#[test]
fn more_probes_never_lower_recall_much_and_all_probes_is_exact() {
    let d = digits(3_000, 60, 32);
    let index = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let mut last = 0.0;
    for nprobe in [1, 4, 16, 64] {
        let r =
            recall(&index, &d, &d.base, &d.queries, 10, Lod::Rerank, &SearchParams { nprobe, ..Default::default() });
        assert!(r >= last - 0.02, "nprobe {nprobe}: {r} after {last}");
        last = r;
    }
    let all = SearchParams { nprobe: index.n_fine(), rerank: 3_000, ..Default::default() };
    assert!(recall(&index, &d, &d.base, &d.queries, 10, Lod::Rerank, &all) >= 0.995);
}

#[test]
fn lod0_returns_distinct_cluster_representatives() {
    let d = digits(2_000, 20, 32);
    let index = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let q = &d.queries[..d.dim];
    let hits = index.search(q, 15, Lod::Centroids, &SearchParams::default()).unwrap();
    assert_eq!(hits.len(), 15);
    assert_sorted(Metric::Cosine, &hits);
    let mut ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 15, "a cluster was returned twice");
    // The best representative's own cluster is the nearest centroid, so its true score is high.
    let exact = index.search(q, 1, Lod::Exact, &SearchParams::default()).unwrap();
    assert!(hits[0].score > exact[0].score - 0.2, "{} vs {}", hits[0].score, exact[0].score);
}

#[test]
fn batch_and_single_searches_agree_and_builds_are_deterministic() {
    let d = digits(2_000, 30, 48);
    let a = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let b = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    assert_eq!(a.parts(), b.parts());
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        let batch = a.search_batch(&d.queries, 5, lod, &SearchParams::default()).unwrap();
        for (q, hits) in d.queries.chunks_exact(d.dim).zip(&batch) {
            let single = a.search(q, 5, lod, &SearchParams::default()).unwrap();
            let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
            assert_eq!(ids(hits), ids(&single), "{lod:?}");
        }
    }
}

#[test]
fn bad_queries_and_builds_get_typed_errors() {
    let d = digits(500, 5, 16);
    let index = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let p = SearchParams::default();
    let q = &d.queries[..16];
    assert!(matches!(index.search(q, 0, Lod::Rerank, &p), Err(Error::ZeroK)));
    assert!(matches!(
        index.search(&q[..15], 3, Lod::Rerank, &p),
        Err(Error::DimensionMismatch { expected: 16, got: 15 })
    ));
    let mut nan = q.to_vec();
    nan[4] = f32::NAN;
    assert!(matches!(index.search(&nan, 3, Lod::Codes, &p), Err(Error::NonFinite { column: 4, .. })));
    assert!(matches!(index.search(&[0.0; 16], 3, Lod::Exact, &p), Err(Error::ZeroNorm { .. })));
    // In a batch, the error names the query's row.
    let mut batch = d.queries[..3 * 16].to_vec();
    batch[2 * 16 + 1] = f32::INFINITY;
    for lod in [Lod::Rerank, Lod::Exact] {
        assert!(
            matches!(index.search_batch(&batch, 3, lod, &p), Err(Error::NonFinite { row: 2, column: 1, .. })),
            "{lod:?}"
        );
    }
    assert!(matches!(index.search_batch(&batch[..20], 3, Lod::Rerank, &p), Err(Error::RaggedBatch { .. })));

    let cfg = IndexConfig::default();
    assert!(matches!(Index::build(&cfg, 16, &[], &[]), Err(Error::EmptyBuild)));
    assert!(matches!(Index::build(&cfg, 16, &d.base[..32], &[1]), Err(Error::IdCount { ids: 1, rows: 2 })));
    assert!(matches!(Index::build(&cfg, 16, &d.base[..32], &[7, 7]), Err(Error::DuplicateId { id: 7 })));
    assert!(matches!(Index::build(&cfg, 16, &d.base[..30], &[1, 2]), Err(Error::RaggedBatch { .. })));
    assert!(matches!(
        Index::build(&cfg.clone().n_fine(0), 16, &d.base[..32], &[1, 2]),
        Err(Error::InvalidConfig { .. })
    ));
    let mut bad = d.base[..32].to_vec();
    bad[20] = f32::NAN;
    assert!(matches!(Index::build(&cfg, 16, &bad, &[1, 2]), Err(Error::NonFinite { row: 1, column: 4, .. })));
}

#[test]
fn tiny_sets_and_k_larger_than_n_work() {
    let base = [1.0f32, 0.0, 0.0, 1.0, 0.7, 0.7];
    let index = Index::build(&IndexConfig::default(), 2, &base, &[10, 20, 30]).unwrap();
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        let hits = index.search(&[1.0, 0.1], 10, lod, &SearchParams::default()).unwrap();
        assert!(!hits.is_empty() && hits.len() <= 3, "{lod:?}: {hits:?}");
        if lod != Lod::Centroids {
            assert_eq!(hits.len(), 3);
            assert_eq!(hits[0].id, 10, "{lod:?}");
        }
    }
}

#[test]
fn lod1_estimates_are_close_to_exact_scores_for_both_code_kinds() {
    use m2m_index::CodeKind;
    let d = digits(3_000, 40, 64);
    for (kind, tol) in [(CodeKind::Sq8, 0.01), (CodeKind::Sq4, 0.05)] {
        let index = Index::build(&IndexConfig::default().codes(kind), d.dim, &d.base, &d.ids).unwrap();
        let mut worst = 0.0f32;
        let mut sum = 0.0f32;
        let mut n = 0;
        for q in d.queries.chunks_exact(d.dim) {
            let est = index.search(q, 20, Lod::Codes, &SearchParams::default()).unwrap();
            for h in &est {
                let row = ((h.id - 1_000) / 3) as usize;
                let exact: f32 = d.base[row * d.dim..][..d.dim].iter().zip(q).map(|(a, b)| a * b).sum();
                worst = worst.max((h.score - exact).abs());
                sum += (h.score - exact).abs();
                n += 1;
            }
        }
        let mean = sum / n as f32;
        assert!(mean < tol, "{kind:?}: mean |estimate - exact| = {mean}, worst {worst}");
    }
}

#[test]
fn the_default_nprobe_is_calibrated_to_the_target_recall() {
    let d = digits(5_000, 200, 48);
    let base_cfg = IndexConfig::default();
    let mut index = Index::build(&base_cfg, d.dim, &d.base, &d.ids).unwrap();
    // Held-out queries with the calibrated default: near the 0.95 target (calibration samples the base).
    let r = recall(&index, &d, &d.base, &d.queries, 10, Lod::Rerank, &SearchParams::default());
    assert!(r >= 0.93, "recall {r} at calibrated nprobe {}", index.default_nprobe());
    let (low, low_recall) = index.calibrate(0.5, 10).unwrap();
    let (high, high_recall) = index.calibrate(0.995, 10).unwrap();
    assert!(low <= high, "{low} > {high}");
    // An unreachable target stops at a quarter of the clusters.
    let cap = (index.n_fine() / 4).max(8).min(index.n_fine());
    assert!(low_recall >= 0.5 && (high_recall >= 0.995 || high == cap), "{low_recall} {high_recall} {high}");
    assert!(high <= cap);
    assert_eq!(index.default_nprobe(), high);
    assert!(matches!(index.calibrate(0.9, 0), Err(Error::ZeroK)));
    let mut bad = base_cfg.clone();
    bad.target_recall = 1.5;
    assert!(matches!(
        Index::build(&bad, d.dim, &d.base, &d.ids),
        Err(Error::InvalidConfig { what: "target_recall", .. })
    ));
}

#[test]
fn bf16_prefiltered_exact_search_equals_the_f32_scan() {
    let d = digits(3_000, 64, 40);
    for metric in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
        let (base, queries) = if metric == Metric::Cosine {
            (d.base.clone(), d.queries.clone())
        } else {
            (scaled(&d.base, d.dim), scaled(&d.queries, d.dim))
        };
        let mut cfg = IndexConfig::default().metric(metric);
        let with = Index::build(&cfg, d.dim, &base, &d.ids).unwrap();
        cfg.exact_prefilter = false;
        let without = Index::build(&cfg, d.dim, &base, &d.ids).unwrap();
        let p = SearchParams::default();
        let a = with.search_batch(&queries, 10, Lod::Exact, &p).unwrap();
        let b = without.search_batch(&queries, 10, Lod::Exact, &p).unwrap();
        for (qi, (x, y)) in a.iter().zip(&b).enumerate() {
            let single = with.search(&queries[qi * d.dim..][..d.dim], 10, Lod::Exact, &p).unwrap();
            assert_eq!(&single, x, "{metric}: single and batch differ");
            assert_eq!(x.len(), y.len());
            let kth = y.last().unwrap().score;
            for (h, g) in x.iter().zip(y) {
                assert!((h.score - g.score).abs() <= 1e-5, "{metric}: scores {} vs {}", h.score, g.score);
                // Two f32 sums in different orders may swap a near tie at the k-th place, nothing else.
                if !y.iter().any(|o| o.id == h.id) {
                    assert!((h.score - kth).abs() <= 1e-5, "{metric}: id {} not in the f32 top 10", h.id);
                }
            }
        }
    }
}

#[test]
fn every_available_isa_returns_the_same_hits_and_a_missing_one_is_refused() {
    use m2m_index::kernels::Isa;
    let d = digits(2_000, 30, 50);
    let base = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    for lod in [Lod::Codes, Lod::Rerank, Lod::Exact] {
        let mut scalar = base.clone();
        scalar.set_isa(Isa::Scalar).unwrap();
        let want = scalar.search_batch(&d.queries, 10, lod, &SearchParams::default()).unwrap();
        for isa in Isa::available() {
            let mut index = base.clone();
            index.set_isa(isa).unwrap();
            assert_eq!(index.isa(), isa);
            let got = index.search_batch(&d.queries, 10, lod, &SearchParams::default()).unwrap();
            for (g, w) in got.iter().zip(&want) {
                // Integer code scores are exact on every path, and f32 scores differ only in rounding: the
                // same ids come back, with scores equal up to that rounding.
                assert_eq!(ids(g), ids(w), "{isa:?} {lod:?}");
                for (a, b) in g.iter().zip(w) {
                    assert!((a.score - b.score).abs() <= 1e-4 * (1.0 + b.score.abs()), "{isa:?} {lod:?}");
                }
            }
        }
    }
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
        let mut index = base.clone();
        let before = index.isa();
        match index.set_isa(isa) {
            Ok(()) => assert!(isa.is_available()),
            Err(Error::IsaUnavailable { isa: name, .. }) => {
                assert!(!isa.is_available());
                assert_eq!(name, isa.name());
                assert_eq!(index.isa(), before, "a refused ISA must change nothing");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(matches!(Isa::parse("sse9"), Err(Error::UnknownIsa { .. })));
    assert_eq!(Isa::parse(" Scalar ").unwrap(), Isa::Scalar);
}
