//! PQ4 codes (`CodeKind::Pq4`): recall at LOD 1 and 2, every ISA the same, updates encoded with the
//! trained codebook, and the codebook's persistence and validation.

use m2m_index::kernels::Isa;
use m2m_index::{CodeKind, Error, Index, IndexConfig, IndexParts, Lod, Metric, SearchParams};
use m2m_splat::{DigitsConfig, digits_on_sphere};

const PQ: CodeKind = CodeKind::Pq4 { dims_per_code: 2, anisotropic: true };

fn data(rows: usize, dim: usize) -> Vec<f32> {
    digits_on_sphere(&DigitsConfig::default().rows(rows).queries(0).dim(dim)).unwrap().base
}

fn truth(metric: Metric, base: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<u64> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut s: Vec<(f32, u64)> = base
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, x)| {
            let d: f32 = q.iter().zip(x).map(|(a, b)| a * b).sum();
            let v = match metric {
                Metric::Cosine => d / norm(x),
                Metric::InnerProduct => d,
                Metric::L2 => -q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
            };
            (v, i as u64)
        })
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    s.into_iter().take(k).map(|(_, i)| i).collect()
}

fn recall(index: &Index, base: &[f32], dim: usize, queries: &[f32], lod: Lod, p: &SearchParams) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for q in queries.chunks_exact(dim) {
        let t = truth(index.metric(), base, dim, q, 10);
        let hits = index.search(q, 10, lod, p).unwrap();
        found += hits.iter().filter(|h| t.contains(&h.id)).count();
        total += t.len();
    }
    found as f64 / total as f64
}

/// LOD 2 over PQ4 candidates reaches the recall of SQ4 candidates within 0.02, on every metric, and LOD 1
/// (estimates only) stays well above chance. Catches a look-up table whose offsets or scale do not
/// match the codes (LOD 1 collapses), codes of the wrong cluster's residuals, and the L2 half-norm
/// term left out of PQ4 estimates.
#[test]
fn pq4_reaches_the_recall_of_sq4_on_every_metric() {
    let dim = 48;
    let all = data(3_300, dim);
    let (base, queries) = all.split_at(3_000 * dim);
    let ids: Vec<u64> = (0..3_000).collect();
    let p = SearchParams { nprobe: 24, ..SearchParams::default() };
    for metric in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
        let sq = Index::build(&IndexConfig::default().metric(metric), dim, base, &ids).unwrap();
        let pq = Index::build(&IndexConfig::default().metric(metric).codes(PQ), dim, base, &ids).unwrap();
        let (r_sq, r_pq) =
            (recall(&sq, base, dim, queries, Lod::Rerank, &p), recall(&pq, base, dim, queries, Lod::Rerank, &p));
        let l1 = recall(&pq, base, dim, queries, Lod::Codes, &p);
        assert!(r_pq >= r_sq - 0.02, "{metric}: PQ4 LOD 2 {r_pq} against SQ4 {r_sq}");
        assert!(l1 >= 0.5, "{metric}: PQ4 LOD 1 {l1}");
        assert!(pq.hot_bytes() < sq.hot_bytes(), "{metric}: PQ4 hot part not smaller");
    }
}

/// Every available ISA returns the same hits at LOD 1 (estimates from the same integers, scores equal
/// up to the f32 rounding of the centroid scores), and the same
/// seed builds the same index. Catches an ISA whose fast-scan sums differ on real codes, and training
/// that depends on thread scheduling.
#[test]
fn pq4_is_the_same_on_every_isa_and_deterministic() {
    let dim = 40;
    let all = data(2_100, dim);
    let ids: Vec<u64> = (0..2_000).collect();
    let config = IndexConfig::default().codes(PQ);
    let mut index = Index::build(&config, dim, &all[..2_000 * dim], &ids).unwrap();
    let again = Index::build(&config, dim, &all[..2_000 * dim], &ids).unwrap();
    assert_eq!(index.parts(), again.parts());
    assert_eq!(index.parts().pq_codebook, again.parts().pq_codebook);
    let queries = &all[2_000 * dim..];
    let p = SearchParams { nprobe: 16, ..SearchParams::default() };
    index.set_isa(Isa::Scalar).unwrap();
    let want = index.search_batch(queries, 10, Lod::Codes, &p).unwrap();
    for isa in Isa::available() {
        index.set_isa(isa).unwrap();
        // Centroid scores are f32 sums whose rounding differs by ISA; the code sums are exact integers.
        for (got, want) in index.search_batch(queries, 10, Lod::Codes, &p).unwrap().iter().zip(&want) {
            let ids = |h: &[m2m_index::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
            assert_eq!(ids(got), ids(want), "{isa:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g.score - w.score).abs() <= 1e-4 * w.score.abs().max(1.0), "{isa:?}: {g:?} vs {w:?}");
            }
        }
    }
}

/// Inserted rows get codes from the trained codebook (found at LOD 1 by their own vector), deleted rows
/// are gone, and the codes of the rows left equal a fresh encoding of them; rebalancing keeps them
/// searchable. Catches a delete that moves another row's nibbles, an insert encoded against the wrong
/// centroid, and a rebalance that forgets the codebook.
#[test]
fn pq4_updates_keep_codes_consistent() {
    let dim = 32;
    let all = data(3_000, dim);
    let ids: Vec<u64> = (0..2_000).collect();
    let config = IndexConfig::default().codes(PQ);
    let mut index = Index::build(&config, dim, &all[..2_000 * dim], &ids).unwrap();
    let new_ids: Vec<u64> = (2_000..3_000).collect();
    index.insert(&all[2_000 * dim..], &new_ids).unwrap();
    let gone: Vec<u64> = (0..3_000).step_by(3).collect();
    assert_eq!(index.delete(&gone), 1_000);
    let p = SearchParams { nprobe: 8, ..SearchParams::default() };
    let mut own = 0;
    for id in (1..3_000u64).filter(|i| i % 3 != 0) {
        let q = &all[id as usize * dim..][..dim];
        let hits = index.search(q, 5, Lod::Codes, &p).unwrap();
        assert!(hits.iter().all(|h| h.id % 3 != 0), "deleted id returned");
        own += usize::from(hits.iter().any(|h| h.id == id));
    }
    assert!(own >= 1_900, "{own} of 2,000 rows found among their own top 5 at LOD 1");
    // The parts equal those of the same clusters re-encoded from scratch: delete's moves kept codes.
    let before = index.parts().clone();
    let round = Index::from_parts(before.clone()).unwrap();
    assert_eq!(round.parts(), &before);
    index.rebalance();
    let hits = index.search(&all[4 * dim..][..dim], 1, Lod::Rerank, &p).unwrap();
    assert_eq!(hits[0].id, 4);
    assert_eq!(index.parts().pq_codebook.len(), before.pq_codebook.len());
}

/// The serde form does not carry the codebook: a PQ4 index decoded from it alone is refused as corrupt
/// (not searched with a missing table), and with the codebook put back it searches as before. Forged
/// codebooks and settings are typed errors. Catches `from_parts` accepting a PQ4 index without a
/// codebook (it would panic or return garbage in search) and a codebook value check that is missing.
#[test]
fn pq4_codebook_is_checked_on_load() {
    let dim = 24;
    let all = data(1_500, dim);
    let ids: Vec<u64> = (0..1_500).collect();
    let index = Index::build(&IndexConfig::default().codes(PQ), dim, &all, &ids).unwrap();
    let bytes = postcard::to_allocvec(index.parts()).unwrap();
    let mut parts: IndexParts = postcard::from_bytes(&bytes).unwrap();
    assert!(parts.pq_codebook.is_empty());
    assert!(matches!(Index::from_parts(parts.clone()), Err(Error::Corrupt { .. })));
    parts.pq_codebook = index.parts().pq_codebook.clone();
    let back = Index::from_parts(parts.clone()).unwrap();
    let p = SearchParams::default();
    assert_eq!(
        back.search_batch(&all[..5 * dim], 10, Lod::Codes, &p).unwrap(),
        index.search_batch(&all[..5 * dim], 10, Lod::Codes, &p).unwrap()
    );
    type Forgery = (&'static str, Box<dyn Fn(&mut IndexParts)>);
    let forgeries: Vec<Forgery> = vec![
        ("NaN codebook value", Box::new(|p| p.pq_codebook[7] = f32::NAN)),
        (
            "short codebook",
            Box::new(|p| {
                p.pq_codebook.pop();
            }),
        ),
        ("dims_per_code 0", Box::new(|p| p.config.codes = CodeKind::Pq4 { dims_per_code: 0, anisotropic: false })),
        (
            "dims_per_code 3 (codebook and codes of 2)",
            Box::new(|p| p.config.codes = CodeKind::Pq4 { dims_per_code: 3, anisotropic: false }),
        ),
        (
            "a block of codes missing",
            Box::new(|p| {
                let c = p.clusters[0].codes.to_mut();
                c.truncate(c.len() - 32);
            }),
        ),
        ("codebook on an SQ4 index", Box::new(|p| p.config.codes = CodeKind::Sq4)),
    ];
    for (what, forge) in forgeries {
        let mut bad = parts.clone();
        forge(&mut bad);
        assert!(matches!(Index::from_parts(bad), Err(Error::Corrupt { .. })), "{what} accepted");
    }
    let bad = IndexConfig::default().codes(CodeKind::Pq4 { dims_per_code: 17, anisotropic: false });
    assert!(matches!(Index::build(&bad, dim, &all, &ids), Err(Error::InvalidConfig { .. })));
}

/// Code kinds by name (as `bench-search --codes` and configuration files give them) and the choice by
/// dimension. Catches a parse that maps `pq4a` to the plain encoding or the other way, one that accepts
/// a `D` the build refuses (0, 17), and a `for_dim` whose choice is not a valid kind.
#[test]
fn code_kinds_parse_and_bad_names_are_typed_errors() {
    let pq = |d, a| CodeKind::Pq4 { dims_per_code: d, anisotropic: a };
    for (name, kind) in
        [("sq4", CodeKind::Sq4), ("SQ8", CodeKind::Sq8), ("pq4:2", pq(2, false)), ("pq4a:1", pq(1, true))]
    {
        assert_eq!(name.parse::<CodeKind>().unwrap(), kind, "{name}");
    }
    for name in ["pq4:0", "pq4a:17", "pq4:x", "pq8:2", "", "sq3"] {
        match name.parse::<CodeKind>() {
            Err(Error::InvalidConfig { what: "codes", reason }) => assert!(reason.contains(name), "{reason}"),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    for dim in [1usize, 50, 128, 129, 384, 1536] {
        assert!(CodeKind::for_dim(dim).check().is_ok(), "{dim}");
    }
    assert_eq!(CodeKind::for_dim(384), CodeKind::Sq4);
}
