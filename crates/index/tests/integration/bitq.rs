//! LOD 2's 1-bit first stage (`Index::enable_bitq`): what it returns, what it prunes, and what refuses or
//! drops it.

use m2m_index::kernels::Isa;
use m2m_index::{BITQ_EPS, CodeKind, Error, Index, IndexConfig, Lod, Metric, Scratch, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};

fn data(rows: usize, queries: usize, dim: usize) -> (Vec<f32>, Vec<f32>, Vec<u64>) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(rows).queries(queries).dim(dim)).unwrap();
    (d.base, d.queries, (0..rows as u64).map(|i| 3 * i + 1).collect())
}

/// Recall@k of LOD 2 against exact search, and the mean codes scanned and scored by code per query.
fn measure(index: &Index, queries: &[f32], k: usize, params: &SearchParams) -> (f64, f64, f64) {
    let dim = index.dim();
    let mut s = Scratch::default();
    let (mut found, mut scanned, mut refined) = (0usize, 0usize, 0usize);
    let n = queries.len() / dim;
    for q in queries.chunks_exact(dim) {
        let exact = index.search(q, k, Lod::Exact, &SearchParams::default()).unwrap();
        let hits = index.search_with(q, k, Lod::Rerank, params, &mut s).unwrap();
        found += hits.iter().filter(|h| exact.iter().any(|e| e.id == h.id)).count();
        scanned += s.scanned_codes();
        refined += s.refined_codes();
    }
    (found as f64 / (n * k) as f64, scanned as f64 / n as f64, refined as f64 / n as f64)
}

/// With a confidence so large that the bounds prune nothing (but a member equal to its centroid, whose
/// bound is exact), every member is scored by its code as without the stage: the hits (ids and scores) are the plain scan's, on cosine, inner product and L2,
/// SQ4 and SQ8, every available ISA. Catches: a survivor's code gathered from the wrong row (wrong
/// stride or position), an entry pushed with the wrong position or cluster, L2's `|x|^2 / 2` left out
/// of the refined scores, a cluster skipped or scored twice.
#[test]
fn a_stage_that_prunes_nothing_returns_what_the_plain_scan_returns() {
    let dim = 40;
    let (base, queries, ids) = data(2_500, 30, dim);
    for (metric, codes) in
        [(Metric::Cosine, CodeKind::Sq4), (Metric::InnerProduct, CodeKind::Sq8), (Metric::L2, CodeKind::Sq4)]
    {
        let config = IndexConfig { target_recall: 0.0, ..IndexConfig::default() }.metric(metric).codes(codes);
        let plain = Index::build(&config, dim, &base, &ids).unwrap();
        let mut staged = plain.clone();
        assert_eq!(staged.enable_bitq(1e6).unwrap(), ids.len());
        assert!(staged.hot_bytes() > plain.hot_bytes());
        for isa in Isa::available() {
            let (mut a, mut b) = (plain.clone(), staged.clone());
            a.set_isa(isa).unwrap();
            b.set_isa(isa).unwrap();
            let params = SearchParams { nprobe: 6, rerank: 15, ..SearchParams::default() };
            let mut s = Scratch::default();
            for q in queries.chunks_exact(dim) {
                let want = a.search(q, 10, Lod::Rerank, &params).unwrap();
                let got = b.search_with(q, 10, Lod::Rerank, &params, &mut s).unwrap();
                assert_eq!(got, want, "{metric:?} {codes:?} {isa:?}");
                // Only a member equal to its centroid (a one-member cluster) has an exact, zero-width
                // bound and may be pruned.
                let (refined, scanned) = (s.refined_codes(), s.scanned_codes());
                assert!(
                    refined <= scanned && refined + 2 >= scanned,
                    "{metric:?} {isa:?}: {refined} of {scanned} scored"
                );
            }
        }
    }
}

/// At RaBitQ's confidence the stage scores at most half the scanned codes by their SQ4 code (on this
/// data 79 of 329 at nprobe 12, 81 of 817 at 32), and LOD 2's recall stays within 0.01 of the plain scan's. Catches: a bound so
/// loose it prunes nothing (an `eps` ignored, the bound not scaled down by `sqrt(d - 1)`), a bound too
/// tight or of the wrong sign (recall falls), a threshold taken from the wrong heap.
#[test]
fn the_stage_prunes_most_codes_and_keeps_the_recall() {
    let dim = 128;
    let (base, queries, ids) = data(8_000, 60, dim);
    for metric in [Metric::Cosine, Metric::L2] {
        let config = IndexConfig { target_recall: 0.0, ..IndexConfig::default() }.metric(metric);
        let plain = Index::build(&config, dim, &base, &ids).unwrap();
        let mut staged = plain.clone();
        staged.enable_bitq(BITQ_EPS).unwrap();
        assert_eq!(staged.bitq_eps(), Some(BITQ_EPS));
        for nprobe in [12, 32] {
            let params = SearchParams { nprobe, rerank: 20, ..SearchParams::default() };
            let (r0, scanned0, refined0) = measure(&plain, &queries, 10, &params);
            let (r1, scanned1, refined1) = measure(&staged, &queries, 10, &params);
            assert_eq!(refined0, 0.0);
            assert_eq!(scanned0, scanned1);
            assert!(refined1 <= 0.5 * scanned1, "{metric:?} nprobe {nprobe}: {refined1} of {scanned1} scored");
            assert!(r1 >= r0 - 0.01, "{metric:?} nprobe {nprobe}: recall {r0:.4} plain, {r1:.4} staged");
        }
    }
}

/// Bad confidences, PQ4 and spilled indexes are refused without change; insert, delete and a spill drop
/// the stage (its lists follow the members' order). Catches: a refused call that still installs the
/// stage, an update that keeps lists that no longer match the clusters.
#[test]
fn bad_settings_are_refused_and_updates_drop_the_stage() {
    let dim = 24;
    let (base, queries, ids) = data(1_200, 2, dim);
    let config = IndexConfig { target_recall: 0.0, ..IndexConfig::default() };
    let mut index = Index::build(&config, dim, &base, &ids).unwrap();
    for eps in [-1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(index.enable_bitq(eps), Err(Error::InvalidConfig { what: "bitq eps", .. })));
        assert_eq!(index.bitq_eps(), None);
    }
    let pq = IndexConfig { target_recall: 0.0, ..IndexConfig::default() }
        .codes(CodeKind::Pq4 { dims_per_code: 2, anisotropic: false });
    let mut pq_index = Index::build(&pq, dim, &base, &ids).unwrap();
    assert!(matches!(pq_index.enable_bitq(BITQ_EPS), Err(Error::InvalidConfig { what: "bitq", .. })));
    assert_eq!(pq_index.bitq_eps(), None);
    let mut spilled = index.clone();
    spilled.spill(1.0).unwrap();
    assert!(matches!(spilled.enable_bitq(BITQ_EPS), Err(Error::InvalidConfig { what: "bitq", .. })));

    index.enable_bitq(BITQ_EPS).unwrap();
    let mut a = index.clone();
    a.insert(&queries[..dim], &[1]).unwrap_err(); // id 1 is held: refused, nothing changes
    assert_eq!(a.bitq_eps(), Some(BITQ_EPS));
    a.insert(&queries[..dim], &[2]).unwrap();
    assert_eq!(a.bitq_eps(), None);
    let mut b = index.clone();
    assert_eq!(b.delete(&[4]), 1);
    assert_eq!(b.bitq_eps(), None);
    let mut c = index.clone();
    c.spill(1.0).unwrap();
    assert_eq!(c.bitq_eps(), None);
    index.disable_bitq();
    assert_eq!(index.bitq_eps(), None);
}
