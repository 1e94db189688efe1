//! The fine-centroid ranking reads an f16 table: the clusters it picks, their order and the LOD 0
//! scores must still be those of the f32 centroids, on every instruction set, also where f16 rounding
//! reorders the centroids and where values leave f16's range.

use m2m_index::kernels::{Isa, dot_with};
use m2m_index::{Hit, IdSet, Index, IndexConfig, Lod, Metric, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const DIM: usize = 32;
const K: usize = 10;

/// An inner-product index whose fine centroids are `scale * (base + 2e-4 * noise)`: they differ by less
/// than f16 resolves (2^-11 relative), so the f16 scores of a query order them differently from the
/// f32 ones near every cut. Codes and members are those of the original build (LOD 0 reads only the
/// centroids and the representatives).
fn near_tied(scale: f32) -> (Index, Vec<f32>) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(3_000).queries(40).dim(DIM)).unwrap();
    let ids: Vec<u64> = (0..3_000u64).map(|i| i * 5 + 7).collect();
    let config = IndexConfig { metric: Metric::InnerProduct, ..IndexConfig::default() };
    let index = Index::build(&config, DIM, &d.base, &ids).unwrap();
    let mut p = index.parts().clone();
    let mut rng = StdRng::seed_from_u64(14);
    let base: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for c in p.fine.chunks_exact_mut(DIM) {
        for (v, b) in c.iter_mut().zip(&base) {
            *v = scale * (b + 2e-4 * rng.random_range(-1.0f32..1.0));
        }
    }
    (Index::from_parts(p).unwrap(), d.queries)
}

/// LOD 0 as an f32 ranking of every fine centroid gives it: the representatives of the best clusters
/// (by `dot_with` on `isa`, ties by cluster number) with those scores, bit for bit.
fn lod0_by_f32(index: &Index, isa: Isa, q: &[f32], k: usize) -> Vec<Hit> {
    let p = index.parts();
    let mut ranked: Vec<(f32, usize)> =
        p.fine.chunks_exact(DIM).enumerate().map(|(f, c)| (dot_with(isa, q, c), f)).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.iter().filter_map(|&(score, f)| p.clusters[f].representative.map(|id| Hit { id, score })).take(k).collect()
}

fn check_lod0(index: &mut Index, queries: &[f32], query_scale: f32) -> usize {
    let all = SearchParams { coarse_probe: index.n_coarse(), ..SearchParams::default() };
    let everyone = IdSet::new(index.parts().clusters.iter().flat_map(|c| c.ids.iter().copied()).collect(), 3_000);
    let mut reordered = 0;
    for isa in Isa::available() {
        index.set_isa(isa).unwrap();
        for q in queries.chunks_exact(DIM) {
            let q: Vec<f32> = q.iter().map(|v| v * query_scale).collect();
            let want = lod0_by_f32(index, isa, &q, K);
            let got = index.search(&q, K, Lod::Centroids, &all).unwrap();
            assert_eq!(got, want, "{isa}: LOD 0 differs from the f32 ranking");
            // The filtered LOD 0 walks the whole ranking: with a filter every row passes, the same hits.
            let filtered = index.search_filtered(&q, K, Lod::Centroids, &all, &everyone).unwrap();
            assert_eq!(filtered, want, "{isa}: filtered LOD 0 differs from the f32 ranking");
            // How often f16 rounding alone would have chosen other clusters (the case this test is for).
            let p = index.parts();
            let mut by_f16: Vec<(f32, usize)> = p
                .fine
                .chunks_exact(DIM)
                .enumerate()
                .map(|(f, c)| {
                    let h: f32 = c.iter().zip(&q).map(|(&v, &x)| half::f16::from_f32(v).to_f32() * x).sum();
                    (h, f)
                })
                .collect();
            by_f16.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let f16_ids: Vec<u64> = by_f16.iter().filter_map(|&(_, f)| p.clusters[f].representative).take(K).collect();
            reordered += usize::from(f16_ids != want.iter().map(|h| h.id).collect::<Vec<_>>());
        }
    }
    reordered
}

// Catches: scores reported from the f16 table (not re-scored in f32), a cut that is not widened by the
// error bound (a cluster whose f16 score fell below the cut is lost), a bound too small for the
// rounding, and a filtered LOD 0 that orders by the f16 scores.
#[test]
fn lod0_picks_the_clusters_and_scores_of_the_f32_ranking_where_f16_reorders_them() {
    let (mut index, queries) = near_tied(1.0);
    let reordered = check_lod0(&mut index, &queries, 1.0);
    // The data must make f16 alone choose wrongly, or this test would test nothing.
    assert!(reordered >= queries.len() / DIM / 2, "f16 reordered only {reordered} rankings");
}

// Catches: a table scale that is not undone (or not a power of two) for centroids far from 1 (1e14,
// 1e-20), and an index whose centroids are too small for any f16 scale (below 2^-86) reading its empty
// table (1e-30). A query whose |q|^2 overflows f32 (1e35) ranks on the f32 rows; that check only saves
// work (an infinite bound re-scores everything), so no result could catch its removal.
#[test]
fn scaled_tables_and_values_beyond_the_f16_range_keep_the_f32_ranking() {
    for (centroids, queries) in [(1e14f32, 1e-14f32), (1e-20, 1e20), (1e-30, 1e28), (1.0, 1e35)] {
        let (mut index, q) = near_tied(centroids);
        check_lod0(&mut index, &q, queries);
    }
}

// Catches: LOD 2's band-only re-score (clusters far above the cut keep their f16 scores) probing other
// clusters than an f32 ranking, e.g. a ceiling for "surely in" at the cut instead of 2e above it. With a
// re-rank depth above every probed member, LOD 2 returns the exact top k of the probed clusters' members,
// so the probed set shows in the hits.
#[test]
fn lod2_probes_the_clusters_of_the_f32_ranking() {
    let (mut index, queries) = near_tied(1.0);
    let nprobe = 20;
    let params = SearchParams { nprobe, coarse_probe: index.n_coarse(), rerank: 3_000 };
    for isa in Isa::available() {
        index.set_isa(isa).unwrap();
        let p = index.parts();
        for q in queries.chunks_exact(DIM) {
            let mut ranked: Vec<(f32, usize)> =
                p.fine.chunks_exact(DIM).enumerate().map(|(f, c)| (dot_with(isa, q, c), f)).collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut want: Vec<(f32, u64)> = ranked[..nprobe]
                .iter()
                .flat_map(|&(_, f)| {
                    let cl = &p.clusters[f];
                    cl.ids.iter().zip(cl.vectors.chunks_exact(DIM)).map(|(&id, x)| (dot_with(isa, q, x), id))
                })
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want: Vec<u64> = want.iter().take(K).map(|w| w.1).collect();
            let got: Vec<u64> = index.search(q, K, Lod::Rerank, &params).unwrap().iter().map(|h| h.id).collect();
            assert_eq!(got, want, "{isa}: LOD 2 probed other clusters than the f32 ranking");
        }
    }
}
