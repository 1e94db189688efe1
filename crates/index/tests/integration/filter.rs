//! Filtered search: the plans against the exact filtered truth (f64 brute force over the matching rows),
//! the planner's switch, and the edge cases (no match, fewer than k, every row, deleted and unknown ids).

use m2m_index::{
    CodeKind, Error, FilterOptions, FilterPlan, Hit, IdSet, Index, IndexConfig, Lod, RowFilter, SearchParams,
};
use m2m_splat::{DigitsConfig, digits_on_sphere};

const DIM: usize = 32;

struct Data {
    base: Vec<f32>,
    queries: Vec<f32>,
    ids: Vec<u64>,
    index: Index,
}

fn data(rows: usize) -> Data {
    data_with(rows, &IndexConfig::default())
}

fn data_with(rows: usize, config: &IndexConfig) -> Data {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(40).dim(DIM)).unwrap();
    // Ids that are not row numbers, to catch any confusion of the two.
    let ids: Vec<u64> = (0..rows as u64).map(|i| i * 5 + 7).collect();
    let index = Index::build(config, DIM, &d.base, &ids).unwrap();
    Data { base: d.base, queries: d.queries, ids, index }
}

/// A filter that only answers `matches`: no ids, no selectivity (the planner must sample).
struct Only<F: Fn(u64) -> bool + Sync>(F);

impl<F: Fn(u64) -> bool + Sync> RowFilter for Only<F> {
    fn matches(&self, id: u64) -> bool {
        (self.0)(id)
    }
}

/// A pseudo-random share of the ids (about `percent` in 100), independent of the vectors.
fn random_ids(d: &Data, percent: u64) -> IdSet {
    let ids = d.ids.iter().copied().filter(|id| id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57 < percent * 128 / 100);
    IdSet::new(ids.collect(), d.ids.len())
}

/// The ids of the rows whose vectors lie nearest the given base rows (correlated with the vectors: the
/// matches sit in few clusters).
fn correlated_ids(d: &Data, seeds: &[usize], per_seed: usize) -> IdSet {
    let mut out = Vec::new();
    for &s in seeds {
        let q = &d.base[s * DIM..][..DIM];
        out.extend(truth_all(d, q, &|_| true).into_iter().take(per_seed).map(|(_, id)| id));
    }
    IdSet::new(out, d.ids.len())
}

/// Every matching row by exact cosine similarity in f64, best first.
fn truth_all(d: &Data, q: &[f32], keep: &dyn Fn(u64) -> bool) -> Vec<(f64, u64)> {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let qn = norm(q);
    let mut scored: Vec<(f64, u64)> = d
        .base
        .chunks_exact(DIM)
        .zip(&d.ids)
        .filter(|(_, id)| keep(**id))
        .map(|(x, &id)| (x.iter().zip(q).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() / (qn * norm(x)), id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
}

/// Asserts that `hits` are the exact filtered top k: as many as min(k, matches), each matching, sorted,
/// none worse than the k-th best match (within f32 rounding), no id twice.
fn assert_exact(d: &Data, q: &[f32], k: usize, f: &dyn RowFilter, hits: &[Hit]) {
    let truth = truth_all(d, q, &|id| f.matches(id));
    assert_eq!(hits.len(), k.min(truth.len()), "hits {hits:?}");
    let kth = truth.get(k.min(truth.len()).saturating_sub(1)).map_or(f64::NEG_INFINITY, |t| t.0);
    let mut seen = std::collections::HashSet::new();
    for w in hits.windows(2) {
        assert!(w[0].score >= w[1].score, "not sorted: {hits:?}");
    }
    for h in hits {
        assert!(f.matches(h.id), "id {} does not match", h.id);
        assert!(seen.insert(h.id), "id {} twice", h.id);
        let exact = truth.iter().find(|t| t.1 == h.id).map(|t| t.0).unwrap();
        assert!(exact >= kth - 1e-5, "id {} scores {exact}, below the k-th match {kth}", h.id);
    }
}

/// Recall@k of `results` against the exact filtered truth.
fn recall(d: &Data, k: usize, f: &dyn RowFilter, results: &[Vec<Hit>]) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (q, hits) in d.queries.chunks_exact(DIM).zip(results) {
        let truth: Vec<u64> = truth_all(d, q, &|id| f.matches(id)).into_iter().take(k).map(|t| t.1).collect();
        assert!(hits.iter().all(|h| f.matches(h.id)), "a hit does not match");
        found += hits.iter().filter(|h| truth.contains(&h.id)).count();
        total += truth.len();
    }
    found as f64 / total.max(1) as f64
}

fn params() -> SearchParams {
    SearchParams::default()
}

// Catches: an exact scan that offers non-matching rows (the whole-cluster kernel path without its mask),
// one that skips rows (the sparse path), a lost id -> location look-up, and a filtered Exact that is not
// exact. Each filter runs through both the resolved (batch) and the row-by-row (single) source.
#[test]
fn exact_and_the_exact_scan_plan_equal_the_filtered_truth() {
    let d = data(3_000);
    let filters: Vec<(&str, Box<dyn RowFilter>)> = vec![
        ("random 40%", Box::new(random_ids(&d, 40))),
        ("random 3%", Box::new(random_ids(&d, 3))),
        ("correlated", Box::new(correlated_ids(&d, &[5, 900, 2_000], 60))),
        ("matches only, 30%", Box::new(Only(|id: u64| id % 10 < 3))),
    ];
    let k = 10;
    for (name, f) in &filters {
        for (lod, plan) in [(Lod::Exact, None), (Lod::Rerank, Some(FilterPlan::ExactScan))] {
            let batch = d.index.search_batch_filtered_planned(&d.queries, k, lod, &params(), &**f, plan).unwrap();
            for (q, (hits, stats)) in d.queries.chunks_exact(DIM).zip(&batch) {
                assert_eq!(stats.plan, FilterPlan::ExactScan, "{name} {lod}");
                assert_exact(&d, q, k, &**f, hits);
                let (one, _) = d.index.search_filtered_planned(q, k, lod, &params(), &**f, plan).unwrap();
                assert_exact(&d, q, k, &**f, &one);
            }
        }
    }
}

// Catches: in-cluster probing that stops at nprobe (too few matches scored when 10% match), a widening
// that never ranks the clusters beyond the coarse probe, and scores of the wrong members (a position
// mix-up in the gathered code scores would lose recall at LOD 2 and put non-matching ids at LOD 1).
#[test]
fn in_cluster_recall_holds_at_every_selectivity() {
    let d = data(4_000);
    let k = 10;
    let cases: Vec<(&str, Box<dyn RowFilter>, f64)> = vec![
        ("random 50%", Box::new(random_ids(&d, 50)), 0.9),
        ("random 10%", Box::new(random_ids(&d, 10)), 0.9),
        ("correlated", Box::new(correlated_ids(&d, &[10, 1_500, 3_000], 120)), 0.9),
    ];
    for (name, f, bound) in &cases {
        for plan in [Some(FilterPlan::InCluster), None] {
            let out = d.index.search_batch_filtered_planned(&d.queries, k, Lod::Rerank, &params(), &**f, plan).unwrap();
            let hits: Vec<Vec<Hit>> = out.iter().map(|r| r.0.clone()).collect();
            let r = recall(&d, k, &**f, &hits);
            assert!(r >= *bound, "{name} {plan:?}: LOD 2 recall {r}");
            if plan.is_some() {
                assert!(out.iter().all(|r| r.1.plan == FilterPlan::InCluster));
            }
            let codes =
                d.index.search_batch_filtered_planned(&d.queries, k, Lod::Codes, &params(), &**f, plan).unwrap();
            let hits: Vec<Vec<Hit>> = codes.into_iter().map(|r| r.0).collect();
            let r1 = recall(&d, k, &**f, &hits);
            assert!(r1 >= 0.5, "{name} {plan:?}: LOD 1 recall {r1}");
        }
        // The single-query path (the filter asked row by row) keeps the same recall.
        let single: Vec<Vec<Hit>> = d
            .queries
            .chunks_exact(DIM)
            .map(|q| d.index.search_filtered(q, k, Lod::Rerank, &params(), &**f).unwrap())
            .collect();
        let r = recall(&d, k, &**f, &single);
        assert!(r >= *bound, "{name} single: recall {r}");
    }
}

// Catches: a planner that ignores the selectivity (a constant plan), a reversed comparison, and a lazy
// filter whose sampled selectivity is not used.
#[test]
fn the_plan_switches_with_selectivity() {
    let d = data(4_000);
    let q = &d.queries[..DIM];
    let wide = random_ids(&d, 60);
    let narrow = IdSet::new(d.ids.iter().copied().step_by(400).collect(), d.ids.len());
    let plan = |f: &dyn RowFilter| d.index.search_filtered_planned(q, 10, Lod::Rerank, &params(), f, None).unwrap().1;
    let batch_plan =
        |f: &dyn RowFilter| d.index.search_batch_filtered_planned(q, 10, Lod::Rerank, &params(), f, None).unwrap()[0].1;
    assert_eq!(plan(&wide).plan, FilterPlan::InCluster);
    assert_eq!(batch_plan(&wide).plan, FilterPlan::InCluster);
    assert_eq!(plan(&narrow).plan, FilterPlan::ExactScan);
    assert_eq!(batch_plan(&narrow).plan, FilterPlan::ExactScan);
    assert!((batch_plan(&narrow).selectivity - 10.0 / 4_000.0).abs() < 1e-9);
    // Without ids or a selectivity the first clusters are the sample.
    // Ids are 5 i + 7: half of them end in 2, the others in 7.
    let lazy_wide = Only(|id: u64| id % 10 < 7);
    let lazy_narrow = Only(|id: u64| id % 2_000 == 7);
    let w = plan(&lazy_wide);
    assert_eq!(w.plan, FilterPlan::InCluster);
    assert!(w.selectivity > 0.3 && w.selectivity < 0.7, "sampled {}", w.selectivity);
    let n = plan(&lazy_narrow);
    assert_eq!(n.plan, FilterPlan::ExactScan);
    assert!(n.selectivity < 0.01, "sampled {}", n.selectivity);
    // The planner's choice also holds up: the narrow filter's hits are exact.
    let hits = d.index.search_filtered(q, 10, Lod::Rerank, &params(), &lazy_narrow).unwrap();
    assert_exact(&d, q, 10, &lazy_narrow, &hits);
}

// Catches: hits returned that no filter allowed (an unfiltered fallback), and a panic on ids the index
// does not hold.
#[test]
fn no_match_and_unknown_ids_give_no_hit_at_every_level() {
    let d = data(2_000);
    let unknown = IdSet::new(vec![1, 2, 3, 10_000_000], d.ids.len());
    let none = Only(|_| false);
    let empty = IdSet::new(Vec::new(), d.ids.len());
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        for f in [&unknown as &dyn RowFilter, &none, &empty] {
            assert!(d.index.search_filtered(&d.queries[..DIM], 5, lod, &params(), f).unwrap().is_empty());
            let batch = d.index.search_batch_filtered(&d.queries, 5, lod, &params(), f).unwrap();
            assert_eq!(batch.len(), d.queries.len() / DIM);
            assert!(batch.iter().all(Vec::is_empty));
        }
    }
}

// Catches: an in-cluster search that stops before it has probed every cluster when fewer than k rows
// match (it must return all of them), and a LOD 0 that returns clusters without a match.
#[test]
fn fewer_than_k_matches_returns_all_of_them() {
    let d = data(3_000);
    // Five rows spread over the data: in different clusters, far from most queries.
    let few = IdSet::new(vec![d.ids[3], d.ids[700], d.ids[1_400], d.ids[2_100], d.ids[2_999]], d.ids.len());
    let q = &d.queries[DIM..2 * DIM];
    for plan in [None, Some(FilterPlan::InCluster), Some(FilterPlan::ExactScan)] {
        let (hits, _) = d.index.search_filtered_planned(q, 10, Lod::Rerank, &params(), &few, plan).unwrap();
        assert_exact(&d, q, 10, &few, &hits);
        let (codes, _) = d.index.search_filtered_planned(q, 10, Lod::Codes, &params(), &few, plan).unwrap();
        assert_eq!(codes.len(), 5, "{plan:?}");
        assert!(codes.iter().all(|h| few.matches(h.id)));
    }
    let exact = d.index.search_filtered(q, 10, Lod::Exact, &params(), &few).unwrap();
    assert_exact(&d, q, 10, &few, &exact);
    let (lod0, stats) = d.index.search_filtered_planned(q, 10, Lod::Centroids, &params(), &few, None).unwrap();
    assert_eq!(stats.plan, FilterPlan::Centroids);
    assert!(!lod0.is_empty() && lod0.len() <= 5);
    assert!(lod0.iter().all(|h| few.matches(h.id)));
}

// Catches: a widening rule that probes more (or less) than an unfiltered search when every row matches,
// a gathered code score that differs from the unfiltered kernel's, and a LOD 0 that does not keep the
// representatives.
#[test]
fn a_filter_every_row_matches_equals_the_unfiltered_search() {
    let d = data(3_000);
    let all = IdSet::new(d.ids.clone(), d.ids.len());
    let ids = |hits: &[Hit]| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank] {
        let plain = d.index.search_batch(&d.queries, 10, lod, &params()).unwrap();
        let batch = d
            .index
            .search_batch_filtered_planned(&d.queries, 10, lod, &params(), &all, Some(FilterPlan::InCluster))
            .unwrap();
        for (p, (f, _)) in plain.iter().zip(&batch) {
            assert_eq!(ids(p), ids(f), "{lod}");
            for (a, b) in p.iter().zip(f) {
                assert!((a.score - b.score).abs() <= 1e-6, "{lod}: {} against {}", a.score, b.score);
            }
        }
        let single = Only(|_| true);
        for (q, p) in d.queries.chunks_exact(DIM).zip(&plain) {
            let (f, _) =
                d.index.search_filtered_planned(q, 10, lod, &params(), &single, Some(FilterPlan::InCluster)).unwrap();
            assert_eq!(ids(p), ids(&f), "{lod} single");
        }
    }
    let exact = d.index.search_batch(&d.queries, 10, Lod::Exact, &params()).unwrap();
    let filtered = d.index.search_batch_filtered(&d.queries, 10, Lod::Exact, &params(), &all).unwrap();
    for (a, b) in exact.iter().zip(&filtered) {
        assert_eq!(ids(a), ids(b));
    }
}

// Catches: a stale id -> (cluster, position) map after deletes, inserts and a rebalance (a moved row
// scored at its old place, or a deleted id returned), in both sources.
#[test]
fn deleted_and_moved_rows_stay_right_under_updates() {
    let mut d = data(3_000);
    let listed = random_ids(&d, 20);
    // Delete half the listed rows, then insert copies of some rows under new ids and rebalance.
    let gone: Vec<u64> = listed.ids().iter().copied().step_by(2).collect();
    assert_eq!(d.index.delete(&gone), gone.len());
    let extra: Vec<f32> = d.base[..300 * DIM].iter().map(|x| x * 0.9 + 0.01).collect();
    let extra_ids: Vec<u64> = (0..300u64).map(|i| 1_000_000 + i).collect();
    d.index.insert(&extra, &extra_ids).unwrap();
    d.index.rebalance();
    // The truth: live rows only.
    let live: std::collections::HashSet<u64> = d.ids.iter().copied().filter(|id| !gone.contains(id)).collect();
    let keep_rows: Vec<usize> = (0..d.ids.len()).filter(|&r| live.contains(&d.ids[r])).collect();
    let mut base: Vec<f32> = keep_rows.iter().flat_map(|&r| d.base[r * DIM..][..DIM].to_vec()).collect();
    let mut ids: Vec<u64> = keep_rows.iter().map(|&r| d.ids[r]).collect();
    base.extend_from_slice(&extra);
    ids.extend_from_slice(&extra_ids);
    d.base = base;
    d.ids = ids;
    let f = IdSet::new(listed.ids().iter().copied().chain(extra_ids.iter().copied().step_by(3)).collect(), d.ids.len());
    for lod in [Lod::Exact, Lod::Rerank] {
        let batch = d
            .index
            .search_batch_filtered_planned(&d.queries, 10, lod, &params(), &f, Some(FilterPlan::ExactScan))
            .unwrap();
        for (q, (hits, _)) in d.queries.chunks_exact(DIM).zip(&batch) {
            assert!(hits.iter().all(|h| !gone.contains(&h.id)));
            assert_exact(&d, q, 10, &f, hits);
            let one = d.index.search_filtered(q, 10, lod, &params(), &f).unwrap();
            assert!(one.iter().all(|h| !gone.contains(&h.id)));
        }
    }
}

// Catches: a LOD 0 that returns a non-matching representative, or two hits from one cluster.
#[test]
fn lod0_gives_one_matching_member_per_nearest_matching_cluster() {
    let d = data(3_000);
    let f = random_ids(&d, 30);
    let plain = d.index.search_batch(&d.queries, 8, Lod::Centroids, &params()).unwrap();
    let batch = d.index.search_batch_filtered(&d.queries, 8, Lod::Centroids, &params(), &f).unwrap();
    for (p, hits) in plain.iter().zip(&batch) {
        assert_eq!(hits.len(), 8);
        assert!(hits.iter().all(|h| f.matches(h.id)));
        let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        // A representative that matches is kept as the unfiltered search returned it.
        for h in p.iter().filter(|h| f.matches(h.id)) {
            if h.score >= scores[scores.len() - 1] {
                assert!(hits.iter().any(|x| x.id == h.id), "representative {} dropped", h.id);
            }
        }
    }
}

#[test]
fn bad_queries_are_typed_errors() {
    let d = data(1_000);
    let f = random_ids(&d, 50);
    assert!(matches!(d.index.search_filtered(&d.queries[..DIM], 0, Lod::Rerank, &params(), &f), Err(Error::ZeroK)));
    assert!(matches!(
        d.index.search_filtered(&d.queries[..DIM - 1], 3, Lod::Rerank, &params(), &f),
        Err(Error::DimensionMismatch { expected: DIM, got })  if got == DIM - 1
    ));
    assert!(matches!(
        d.index.search_batch_filtered(&d.queries[..DIM + 1], 3, Lod::Rerank, &params(), &f),
        Err(Error::RaggedBatch { .. })
    ));
    for widen in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let o = FilterOptions { widen, ..FilterOptions::default() };
        assert!(matches!(
            d.index.search_filtered_planned(&d.queries[..DIM], 3, Lod::Rerank, &params(), &f, o),
            Err(Error::InvalidConfig { what: "widen", .. })
        ));
        assert!(matches!(
            d.index.search_batch_filtered_planned(&d.queries, 3, Lod::Rerank, &params(), &f, o),
            Err(Error::InvalidConfig { what: "widen", .. })
        ));
    }
    let mut bad = d.queries[..2 * DIM].to_vec();
    bad[DIM + 3] = f32::NAN;
    assert!(matches!(
        d.index.search_batch_filtered(&bad, 3, Lod::Rerank, &params(), &f),
        Err(Error::NonFinite { row: 1, column: 3, .. })
    ));
}

// PQ4 codes lie in transposed blocks of 32 rows, so the filtered scan scores whole clusters and offers
// the matching rows. Catches: the filter path scoring PQ4 codes as scalar codes (no look-up table), a
// row's code copied aside from the block layout, and the per-row path of the exact-scan plan at LOD 1.
#[test]
fn pq4_codes_are_filtered_like_scalar_codes() {
    let config = IndexConfig::default().codes(CodeKind::Pq4 { dims_per_code: 2, anisotropic: false });
    let d = data_with(3_000, &config);
    let ids = |hits: &[Hit]| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    let all = IdSet::new(d.ids.clone(), d.ids.len());
    for lod in [Lod::Codes, Lod::Rerank] {
        let plain = d.index.search_batch(&d.queries, 10, lod, &params()).unwrap();
        let batch = d
            .index
            .search_batch_filtered_planned(&d.queries, 10, lod, &params(), &all, Some(FilterPlan::InCluster))
            .unwrap();
        for (p, (f, _)) in plain.iter().zip(&batch) {
            assert_eq!(ids(p), ids(f), "{lod}");
        }
    }
    for (percent, plan) in [(50, FilterPlan::InCluster), (2, FilterPlan::ExactScan)] {
        let f = random_ids(&d, percent);
        for lod in [Lod::Codes, Lod::Rerank] {
            let out = d.index.search_batch_filtered_planned(&d.queries, 10, lod, &params(), &f, Some(plan)).unwrap();
            assert!(out.iter().flat_map(|r| &r.0).all(|h| f.matches(h.id)), "{lod} {plan:?}: a hit outside the filter");
            let hits: Vec<Vec<Hit>> = out.into_iter().map(|r| r.0).collect();
            let r = recall(&d, 10, &f, &hits);
            let bound = if lod == Lod::Rerank { 0.9 } else { 0.5 };
            assert!(r >= bound, "{lod} {plan:?} at {percent}%: recall {r}");
        }
    }
}

/// `rows` base rows and `nq` queries around `centres` Gaussian centres in `dim` dimensions (noise `sigma`
/// per coordinate around unit centres), seeded; each row's label is its centre.
fn gaussian_centres(rows: usize, nq: usize, dim: usize, centres: usize, sigma: f32) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(0x0019_5eed);
    let mut normal = move || {
        // Box-Muller: rand alone has no normal distribution.
        let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let mut c: Vec<f32> = (0..centres * dim).map(|_| normal()).collect();
    for row in c.chunks_exact_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    let mut draw = |n: usize| {
        let mut out = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let l = i % centres;
            labels.push(l as u32);
            out.extend(c[l * dim..][..dim].iter().map(|&x| x + sigma * normal()));
        }
        (out, labels)
    };
    let (base, labels) = draw(rows);
    let (queries, _) = draw(nq);
    (base, labels, queries)
}

// The shape where the earlier stop rule (as many matching members scored as the first nprobe clusters
// hold) lost recall: a filter that keeps whole Gaussian centres, so that a query's nearest matches sit in
// clusters that rank below the ones its own (filtered out) centre fills. Each query's hits are compared
// with the exact filtered answer, computed by brute force in f64.
// Catches: a walk that stops on a count of matches instead of on the centroid scores (LOD 2 recall here
// was 0.860 with that rule, measured), a reach never updated (probing stops about where the unfiltered
// search does), and a threshold taken before `depth` matches are held.
#[test]
fn a_filter_that_follows_the_clusters_finds_the_true_top_k() {
    const D: usize = 64;
    let (base, labels, queries) = gaussian_centres(20_000, 60, D, 50, 0.06);
    let ids: Vec<u64> = (0..base.len() as u64 / D as u64).map(|i| i * 3 + 1).collect();
    let index = Index::build(&IndexConfig::default(), D, &base, &ids).unwrap();
    let kept = |label: u32| label.wrapping_mul(2_654_435_761) % 10 < 3;
    let matching: Vec<u64> = ids.iter().zip(&labels).filter(|&(_, &l)| kept(l)).map(|(&id, _)| id).collect();
    let filter = IdSet::new(matching, ids.len());
    let k = 10;
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (mut found, mut total) = (0usize, 0usize);
    // The unfiltered search's recall on these queries: what the index's defaults reach on this shape.
    let plain = index.search_batch(&queries, k, Lod::Rerank, &params()).unwrap();
    let exact = index.search_batch(&queries, k, Lod::Exact, &params()).unwrap();
    let plain_found: usize =
        plain.iter().zip(&exact).map(|(p, e)| p.iter().filter(|h| e.iter().any(|x| x.id == h.id)).count()).sum();
    let plain_recall = plain_found as f64 / (k * exact.len()) as f64;
    let out = index.search_batch_filtered(&queries, k, Lod::Rerank, &params(), &filter).unwrap();
    for (q, hits) in queries.chunks_exact(D).zip(&out) {
        let mut truth: Vec<(f64, u64)> = base
            .chunks_exact(D)
            .zip(&ids)
            .zip(&labels)
            .filter(|&(_, &l)| kept(l))
            .map(|((x, &id), _)| {
                let dot: f64 = x.iter().zip(q).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                (dot / (norm(x) * norm(q)), id)
            })
            .collect();
        truth.sort_by(|a, b| b.0.total_cmp(&a.0));
        let top: Vec<u64> = truth.iter().take(k).map(|t| t.1).collect();
        assert_eq!(hits.len(), k);
        assert!(hits.iter().all(|h| filter.matches(h.id)), "a hit does not match");
        found += hits.iter().filter(|h| top.contains(&h.id)).count();
        total += k;
    }
    let r = found as f64 / total as f64;
    // Measured: 0.942 (unfiltered 0.932); the earlier rule 0.860. Probing every cluster with a match
    // reaches 0.978 (the limit the re-rank depth sets), so the bound is the unfiltered recall.
    assert!(
        r >= plain_recall && r >= 0.92,
        "LOD 2 recall {r} against the exact filtered truth (unfiltered {plain_recall})"
    );
}

// Recall at every selectivity when the filter follows the data: whole Gaussian centres kept (50%, 30%,
// 10%, one centre = 2%), then part of one centre (1%, 0.1%), and a random half of the rows beside them;
// LOD 2 batch at the defaults (the planner chooses), each query against the exact filtered truth (the
// filtered Exact search, tied to an f64 brute force by `exact_and_the_exact_scan_plan_equal_the_filtered_truth`).
// Catches: the count stop armed whatever the neighbourhood holds (a query whose own centre is filtered
// out stops after as many matches as its first clusters hold, as the earlier rule did: 0.860 at 30%),
// a walk past the first clusters that does not order the clusters it probes (it stops at an arbitrary
// centroid), and an exact-scan or in-cluster path that loses rows at the low shares.
#[test]
fn a_correlated_filter_keeps_its_recall_at_every_selectivity() {
    const D: usize = 64;
    let (base, labels, queries) = gaussian_centres(20_000, 60, D, 50, 0.06);
    let ids: Vec<u64> = (0..base.len() as u64 / D as u64).map(|i| i * 3 + 1).collect();
    let index = Index::build(&IndexConfig::default(), D, &base, &ids).unwrap();
    let k = 10;
    fn hash(x: u64) -> u64 {
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
    }
    // 17 is prime to 50: `c` whole centres, in a fixed scattered order.
    let centres = |c: u32| move |label: u32, _: u64| (label * 17 + 3) % 50 < c;
    type Keep = Box<dyn Fn(u32, u64) -> bool>;
    let cases: Vec<(&str, Keep)> = vec![
        ("centres 50%", Box::new(centres(25))),
        ("centres 30%", Box::new(centres(15))),
        ("centres 10%", Box::new(centres(5))),
        ("one centre 2%", Box::new(centres(1))),
        ("half a centre 1%", Box::new(|l: u32, id: u64| l == 7 && hash(id).is_multiple_of(2))),
        ("20 rows of a centre 0.1%", Box::new(|l: u32, id: u64| l == 11 && hash(id).is_multiple_of(20))),
        ("random 50%", Box::new(|_: u32, id: u64| hash(id).is_multiple_of(2))),
    ];
    let plain = index.search_batch(&queries, k, Lod::Rerank, &params()).unwrap();
    let exact = index.search_batch(&queries, k, Lod::Exact, &params()).unwrap();
    let plain_found: usize =
        plain.iter().zip(&exact).map(|(p, e)| p.iter().filter(|h| e.iter().any(|x| x.id == h.id)).count()).sum();
    let plain_recall = plain_found as f64 / (k * exact.len()) as f64;
    for (name, keep) in &cases {
        let matching: Vec<u64> = ids.iter().zip(&labels).filter(|&(&id, &l)| keep(l, id)).map(|(&id, _)| id).collect();
        let share = matching.len() as f64 / ids.len() as f64;
        let filter = IdSet::new(matching, ids.len());
        let truth = index.search_batch_filtered(&queries, k, Lod::Exact, &params(), &filter).unwrap();
        let out = index.search_batch_filtered(&queries, k, Lod::Rerank, &params(), &filter).unwrap();
        let (mut found, mut total) = (0usize, 0usize);
        for (hits, t) in out.iter().zip(&truth) {
            assert_eq!(hits.len(), t.len(), "{name}: fewer hits than the truth holds");
            assert!(hits.iter().all(|h| filter.matches(h.id)), "{name}: a hit does not match");
            found += hits.iter().filter(|h| t.iter().any(|x| x.id == h.id)).count();
            total += t.len();
        }
        let r = found as f64 / total.max(1) as f64;
        assert!(
            r >= 0.92_f64.min(plain_recall),
            "{name} (share {share:.4}): LOD 2 recall {r} (unfiltered {plain_recall})"
        );
    }
}

/// A filter resolved once answers every call as a batch under that filter answers it (the same plans,
/// the same hits), at every level; an insert, a delete or a rebalance makes it stale (a typed error,
/// never hits from rows that moved), an unchanged clone of the index takes it, and resolving again
/// follows the change.
///
/// Mutations caught: the stamp not renewed by `insert`, `delete` or `rebalance` (tried by hand for
/// `delete`: it fails, the stale filter is taken); `search_resolved` searching under another source
/// than the mask (hits outside the filter, or other plans than the batch's); the resolve dropping ids
/// inserted after the build (the new row missing under the new filter).
#[test]
fn a_resolved_filter_answers_as_the_batch_and_goes_stale_when_rows_move() {
    let mut d = data(3_000);
    let f = random_ids(&d, 30);
    let resolved = d.index.resolve_filter(&f);
    assert_eq!(resolved.len(), f.ids().len());
    assert!(d.index.is_current(&resolved));
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        let batch = d.index.search_batch_filtered_planned(&d.queries, 10, lod, &params(), &f, None).unwrap();
        let again = d.index.search_batch_resolved(&d.queries, 10, lod, &params(), &resolved, None).unwrap();
        for (i, q) in d.queries.chunks_exact(DIM).enumerate() {
            let one = d.index.search_resolved(q, 10, lod, &params(), &resolved, None).unwrap();
            assert_eq!(one, batch[i], "{lod:?}, query {i}");
            assert_eq!(again[i], batch[i], "{lod:?}, query {i}");
            assert!(one.0.iter().all(|h| f.matches(h.id)), "{lod:?}: a hit outside the filter");
        }
    }
    let clone = d.index.clone();
    assert!(clone.is_current(&resolved));

    // Each change moves rows: the resolved filter is refused after it, whichever it was.
    let q = d.queries[..DIM].to_vec();
    let near = d.index.search_resolved(&q, 10, Lod::Exact, &params(), &resolved, None).unwrap().0;
    for what in ["delete", "insert", "rebalance"] {
        let mut index = clone.clone();
        match what {
            "delete" => assert_eq!(index.delete(&[near[0].id]), 1),
            "insert" => index.insert(&q, &[9_999_999]).unwrap(),
            _ => _ = index.rebalance(),
        }
        assert!(!index.is_current(&resolved), "{what}");
        let err = index.search_resolved(&q, 10, Lod::Rerank, &params(), &resolved, None).unwrap_err();
        assert!(matches!(err, Error::StaleFilter), "{what}: {err}");
        let err = index.search_batch_resolved(&d.queries, 10, Lod::Rerank, &params(), &resolved, None).unwrap_err();
        assert!(matches!(err, Error::StaleFilter), "{what}: {err}");
        assert!(clone.is_current(&resolved), "{what} changed the clone it was not made on");
    }

    // Resolved again after a delete and an insert: the deleted row is gone, the inserted one found.
    d.index.delete(&[near[0].id]);
    d.index.insert(&q, &[9_999_999]).unwrap();
    let f2 = IdSet::new(f.ids().iter().copied().chain([9_999_999]).collect(), d.ids.len() + 1);
    let fresh = d.index.resolve_filter(&f2);
    assert_eq!(fresh.len(), f.ids().len());
    let hits = d.index.search_resolved(&q, 10, Lod::Exact, &params(), &fresh, None).unwrap().0;
    assert_eq!(hits[0].id, 9_999_999);
    assert!(hits.iter().all(|h| h.id != near[0].id && f2.matches(h.id)));
}
