//! The adaptive probe rule of LOD 2 (`ProbeRule`): where it stops, what it returns, and that the
//! calibration that chooses it keeps the target recall on held-out queries of data nobody tuned it on.

use m2m_index::{Error, Index, IndexConfig, Lod, Metric, ProbeRule, Scratch, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};
use rand::{RngExt, SeedableRng, rngs::StdRng};

struct Data {
    dim: usize,
    base: Vec<f32>,
    queries: Vec<f32>,
    ids: Vec<u64>,
}

/// A mixture of `centres` Gaussians in `dim` dimensions whose spread (`sigma` per coordinate against
/// unit-variance centres) makes neighbouring components overlap: k-means clusters cut through them, and
/// a query's neighbours spread over many clusters. Queries are fresh draws of the same mixture.
fn mixture(rows: usize, queries: usize, dim: usize, centres: usize, sigma: f32, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = move |rng: &mut StdRng| -> f32 {
        // Box-Muller: enough for a test's data.
        let u: f32 = rng.random::<f32>().max(1e-12);
        let v: f32 = rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let c: Vec<f32> = (0..centres * dim).map(|_| normal(&mut rng)).collect();
    let draw = |n: usize, rng: &mut StdRng| -> Vec<f32> {
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let j = rng.random_range(0..centres);
            for t in 0..dim {
                out.push(c[j * dim + t] + sigma * normal(rng));
            }
        }
        out
    };
    let base = draw(rows, &mut rng);
    let queries = draw(queries, &mut rng);
    let ids = (0..rows as u64).map(|i| i * 7 + 11).collect();
    Data { dim, base, queries, ids }
}

fn digits(rows: usize, queries: usize, dim: usize) -> Data {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(queries).dim(dim)).unwrap();
    let ids = (0..rows as u64).map(|i| i * 3 + 5).collect();
    Data { dim, base: d.base, queries: d.queries, ids }
}

/// Exact top-k ids in f64 by the metric.
fn truth(metric: Metric, d: &Data, q: &[f32], k: usize) -> Vec<u64> {
    let qn = q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let mut scored: Vec<(f64, u64)> = d
        .base
        .chunks_exact(d.dim)
        .zip(&d.ids)
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

fn recall(index: &Index, d: &Data, k: usize, params: &SearchParams) -> f64 {
    let results = index.search_batch(&d.queries, k, Lod::Rerank, params).unwrap();
    let mut found = 0;
    for (q, hits) in d.queries.chunks_exact(d.dim).zip(&results) {
        let t = truth(index.metric(), d, q, k);
        found += hits.iter().filter(|h| t.contains(&h.id)).count();
    }
    found as f64 / (results.len() * k) as f64
}

/// Clusters probed and codes scanned by each query at the index's default (nprobe 0).
fn probed(index: &Index, d: &Data, k: usize) -> Vec<(usize, usize)> {
    probed_with(index, d, k, &SearchParams::default())
}

fn probed_with(index: &Index, d: &Data, k: usize, params: &SearchParams) -> Vec<(usize, usize)> {
    let mut s = Scratch::default();
    d.queries
        .chunks_exact(d.dim)
        .map(|q| {
            index.search_with(q, k, Lod::Rerank, params, &mut s).unwrap();
            (s.probed_clusters(), s.scanned_codes())
        })
        .collect()
}

/// The calibrated default (the rule where the calibration chose it, else the fixed nprobe) reaches the
/// target on fresh queries of data it was not tuned on: overlapping Gaussian mixtures under three
/// metrics, and the digits. The tolerance (0.02 under the target) covers the 200 calibration queries'
/// sampling error. Catches a rule calibrated on recall it does not reach (a margin bisected the wrong
/// way, a stop test with the wrong sign or against the wrong score), and a rule kept where it reaches
/// less than the fixed nprobe it replaces.
#[test]
fn the_calibrated_default_reaches_the_target_on_held_out_queries_of_hard_data() {
    let cases = [
        ("mixture sigma 0.5, cosine", mixture(12_000, 200, 24, 60, 0.5, 1), Metric::Cosine, 0.95),
        ("mixture sigma 0.8, L2", mixture(12_000, 200, 16, 40, 0.8, 2), Metric::L2, 0.95),
        ("mixture sigma 0.5, inner product", mixture(12_000, 200, 24, 60, 0.5, 3), Metric::InnerProduct, 0.9),
        ("digits, cosine, 0.99", digits(8_000, 200, 64), Metric::Cosine, 0.99),
    ];
    let mut chosen = 0;
    for (name, d, metric, target) in cases {
        let mut config = IndexConfig::default().metric(metric);
        config.target_recall = target;
        let index = Index::build(&config, d.dim, &d.base, &d.ids).unwrap();
        let r = recall(&index, &d, 10, &SearchParams::default());
        assert!(
            r >= f64::from(target) - 0.02,
            "{name}: recall {r} for target {target} (rule {:?}, nprobe {})",
            index.probe_rule(),
            index.default_nprobe()
        );
        if let Some(rule) = index.probe_rule() {
            chosen += 1;
            // The rule probes no more than its cap, and on average fewer clusters than the fixed nprobe
            // it replaced (it was chosen for costing less).
            let p = probed(&index, &d, 10);
            assert!(p.iter().all(|&(c, _)| c <= rule.max_probe), "{name}: over the cap");
            let mean = p.iter().map(|&(c, _)| c as f64).sum::<f64>() / p.len() as f64;
            assert!(mean < rule.max_probe as f64, "{name}: the rule never stopped early ({mean})");
        }
    }
    // The rule is chosen on some of these data (else this test tests only the fixed path).
    assert!(chosen >= 1, "the calibration chose the rule nowhere");
}

/// The stop point rises with the margin, query by query (a larger margin never stops sooner), an
/// unreachable margin probes exactly the cap and returns what the fixed nprobe of the cap returns, and
/// a search that stopped after `c` clusters returns what a fixed nprobe of `c` returns. Catches a stop
/// test with the wrong sign (a larger margin would stop sooner), a stop after the cluster is scanned
/// rather than before, and a rule that changes what the probed clusters return.
#[test]
fn the_rule_stops_where_the_margin_says_and_returns_what_a_fixed_probe_of_as_many_returns() {
    let d = mixture(8_000, 100, 16, 30, 0.6, 7);
    let mut index = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    // The scalar path ranks on f32 centroids, and every fine centroid is ranked: a fixed probe of fewer
    // clusters then starts its estimates from the same `q . c` (SIMD paths start the clusters far above
    // the cut from f16 scores, which depend on where the cut is).
    index.set_isa(m2m_index::kernels::Isa::Scalar).unwrap();
    let all = SearchParams { coarse_probe: index.n_coarse(), ..SearchParams::default() };
    let cap = (3 * index.default_nprobe()).min(index.n_fine());
    let k = 10;
    let mut previous: Option<Vec<(usize, usize)>> = None;
    let mut stopped_early = 0;
    for margin in [0.0f32, 0.02, 0.05, 0.1, 0.3, 1.0, 1e30] {
        index.set_probe_rule(Some(ProbeRule { max_probe: cap, margin })).unwrap();
        let p = probed_with(&index, &d, k, &all);
        if let Some(prev) = &previous {
            for (i, (a, b)) in prev.iter().zip(&p).enumerate() {
                assert!(a.0 <= b.0, "query {i}: margin {margin} probed {} clusters, a smaller one {}", b.0, a.0);
            }
        }
        for (i, q) in d.queries.chunks_exact(d.dim).enumerate() {
            let (c, codes) = p[i];
            assert!(c >= 1 && c <= cap && codes >= k);
            stopped_early += usize::from(c < cap);
            let ruled = index.search(q, k, Lod::Rerank, &all).unwrap();
            let fixed = index.search(q, k, Lod::Rerank, &SearchParams { nprobe: c, ..all }).unwrap();
            assert_eq!(ruled, fixed, "query {i}, margin {margin}: {c} clusters");
        }
        if margin > 1e29 {
            assert!(p.iter().all(|&(c, _)| c == cap), "an unreachable margin stopped early");
        }
        previous = Some(p);
    }
    assert!(stopped_early > 0, "no margin ever stopped early: the test saw no stop");
    // LOD 1 and explicit nprobe ignore the rule.
    let q = &d.queries[..d.dim];
    let fixed = SearchParams { nprobe: 5, ..SearchParams::default() };
    let before = index.search(q, k, Lod::Rerank, &fixed).unwrap();
    index.set_probe_rule(Some(ProbeRule { max_probe: cap, margin: 0.0 })).unwrap();
    assert_eq!(index.search(q, k, Lod::Rerank, &fixed).unwrap(), before);
}

/// A rule out of range is a typed error that changes nothing; a removed rule gives the fixed default.
#[test]
fn bad_rules_are_typed_errors_and_none_restores_the_fixed_probe() {
    let d = digits(3_000, 20, 32);
    let mut index = Index::build(&IndexConfig::default(), d.dim, &d.base, &d.ids).unwrap();
    let before = index.probe_rule();
    let n = index.n_fine();
    for rule in [
        ProbeRule { max_probe: 0, margin: 0.1 },
        ProbeRule { max_probe: n + 1, margin: 0.1 },
        ProbeRule { max_probe: 4, margin: -0.1 },
        ProbeRule { max_probe: 4, margin: f32::NAN },
        ProbeRule { max_probe: 4, margin: f32::INFINITY },
    ] {
        assert!(
            matches!(index.set_probe_rule(Some(rule)), Err(Error::InvalidConfig { what: "probe rule", .. })),
            "{rule:?} accepted"
        );
        assert_eq!(index.probe_rule(), before);
    }
    index.set_probe_rule(None).unwrap();
    let fixed = SearchParams { nprobe: index.default_nprobe(), ..SearchParams::default() };
    assert_eq!(
        index.search_batch(&d.queries, 10, Lod::Rerank, &SearchParams::default()).unwrap(),
        index.search_batch(&d.queries, 10, Lod::Rerank, &fixed).unwrap()
    );
    // The parts carry the rule, and `from_parts` keeps it (and refuses a forged one).
    index.set_probe_rule(Some(ProbeRule { max_probe: 4, margin: 0.25 })).unwrap();
    let back = Index::from_parts(index.parts().clone()).unwrap();
    assert_eq!(back.probe_rule(), index.probe_rule());
    let mut forged = index.parts().clone();
    forged.probe_rule = Some(ProbeRule { max_probe: 4, margin: f32::NAN });
    assert!(matches!(Index::from_parts(forged), Err(Error::Corrupt { .. })));
}
