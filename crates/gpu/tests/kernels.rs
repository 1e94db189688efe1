//! Every kernel against its CPU twin on random inputs (relative error <= 1e-5), the twins against
//! independent references, and bad input. With the `vulkan` feature the GPU must be there (CI installs
//! lavapipe); without it the GPU comparisons are not compiled.

use m2m_gpu::{Backend, Compute, Direction, Error, IvfLists, MAX_K, Metric, SqCodes, cpu};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn unit_rows(seed: u64, rows: usize, dim: usize) -> Vec<f32> {
    let mut v = data(seed, rows * dim);
    for r in v.chunks_exact_mut(dim) {
        let n = r.iter().map(|a| a * a).sum::<f32>().sqrt();
        r.iter_mut().for_each(|a| *a /= n);
    }
    v
}

fn close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * y.abs().max(1.0), "{what}[{i}]: {x} vs {y}");
    }
}

#[cfg(feature = "vulkan")]
fn gpu() -> Compute {
    let c = Compute::new(Backend::Gpu).expect("a Vulkan device (install mesa-vulkan-drivers for lavapipe)");
    assert!(c.is_gpu());
    c
}

#[test]
fn the_cpu_twins_match_f64_references() {
    let (dim, b, n) = (37, 5, 60);
    let (q, x) = (data(1, b * dim), data(2, n * dim));
    for l2 in [false, true] {
        let s = cpu::scores(&q, &x, dim, l2);
        for i in 0..b {
            for j in 0..n {
                let want: f64 = (0..dim)
                    .map(|k| {
                        let (a, c) = (f64::from(q[i * dim + k]), f64::from(x[j * dim + k]));
                        if l2 { (a - c) * (a - c) } else { a * c }
                    })
                    .sum();
                assert!((f64::from(s[i * n + j]) - want).abs() < 1e-4, "l2 {l2}");
            }
        }
        let dir = if l2 { Direction::Lower } else { Direction::Higher };
        for (i, top) in cpu::top_k(&s, n, 7, dir).iter().enumerate() {
            let mut row: Vec<(u32, f32)> = (0..n as u32).map(|j| (j, s[i * n + j as usize])).collect();
            row.sort_by(|a, b| if l2 { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) });
            assert_eq!(top, &row[..7].to_vec());
        }
    }
    // Codes: the estimate is the inner product with the decoded rows.
    let (rows, stride) = (9, 40);
    let codes: Vec<u8> = (0..rows * stride).map(|i| (i * 37 % 256) as u8).collect();
    let (lo, step) = (data(3, dim), data(4, dim).iter().map(|v| v.abs() / 100.0).collect::<Vec<_>>());
    let sq = SqCodes { dim, rows, stride, codes: &codes, lo: &lo, step: &step };
    let est = cpu::code_scores(&q[..dim], &sq);
    for r in 0..rows {
        let want: f64 = (0..dim)
            .map(|j| f64::from(q[j]) * (f64::from(lo[j]) + f64::from(step[j]) * f64::from(codes[r * stride + j])))
            .sum();
        assert!((f64::from(est[r]) - want).abs() < 1e-4);
    }
    // The Langevin twin equals m2m-soc's step (same formula, different association of the sums).
    let (dim, chains, ns) = (32, 6, 20);
    let mu = unit_rows(5, ns, dim);
    let kappa: Vec<f32> = (0..ns).map(|i| 0.5 + (i % 5) as f32).collect();
    let alpha: Vec<f32> = (0..ns).map(|i| 0.3 + (i % 3) as f32).collect();
    let x0 = unit_rows(6, chains, dim);
    let xi = data(7, chains * dim);
    let (dt, t) = (0.01f32, 0.5f32);
    let mut a = x0.clone();
    cpu::langevin_step(&mut a, &mu, &kappa, &alpha, &xi, dim, dt, (2.0 * dt * t).sqrt());
    let mut b = x0.clone();
    let splats = m2m_soc::Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let cfg = m2m_soc::LangevinConfig { dt, temperature: t, ..Default::default() };
    m2m_soc::langevin::overdamped_step(&cfg, &mut b, &splats, &xi).unwrap();
    close(&a, &b, 1e-5, "langevin twin vs m2m-soc");
}

#[cfg(feature = "vulkan")]
#[test]
fn distances_and_top_k_on_the_gpu_match_the_cpu() {
    let g = gpu();
    for (dim, b, n) in [(384usize, 13usize, 1000usize), (37, 3, 300), (640, 9, 129)] {
        let q = data(10 + dim as u64, b * dim);
        let x = data(20 + dim as u64, n * dim);
        let c = g.upload(&x, dim).unwrap();
        for metric in [Metric::InnerProduct, Metric::L2] {
            let s = g.scores(&q, &c, metric).unwrap();
            let want = cpu::scores(&q, &x, dim, metric == Metric::L2);
            close(&s, &want, 1e-5, "scores");
            for k in [1usize, 10, MAX_K] {
                let top = g.top_k(&q, &c, metric, k).unwrap();
                // The device's order over its own scores, which equal the twin's to 1e-5.
                assert_eq!(top, cpu::top_k(&s, n, k, Direction::of(metric)), "dim {dim} k {k} {metric:?}");
            }
        }
    }
}

#[cfg(feature = "vulkan")]
#[test]
fn buffers_beyond_the_limit_are_split_into_chunks() {
    let mut g = gpu();
    g.limit_buffer_bytes(64 * 1024);
    let (dim, b, n) = (100usize, 40usize, 700usize);
    let (q, x) = (data(30, b * dim), data(31, n * dim));
    let c = g.upload(&x, dim).unwrap();
    assert!(c.chunks() >= 4, "{} chunks", c.chunks());
    let s = g.scores(&q, &c, Metric::InnerProduct).unwrap();
    close(&s, &cpu::scores(&q, &x, dim, false), 1e-5, "chunked scores");
    // Merged across chunks: the same ids as the twin's top 16 over all rows, scores to 1e-5.
    let top = g.top_k(&q, &c, Metric::L2, 16).unwrap();
    let want = cpu::top_k(&cpu::scores(&q, &x, dim, true), n, 16, Direction::Lower);
    for (got, want) in top.iter().zip(&want) {
        let ids = |v: &[(u32, f32)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        let scores = |v: &[(u32, f32)]| v.iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!(ids(got), ids(want));
        close(&scores(got), &scores(want), 1e-5, "chunked top-k scores");
    }
}

#[cfg(feature = "vulkan")]
#[test]
fn code_scores_and_langevin_steps_on_the_gpu_match_the_cpu() {
    let g = gpu();
    let (dim, rows, stride) = (384usize, 500usize, 384usize);
    let codes: Vec<u8> = data(40, rows * stride).iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
    let lo = data(41, dim);
    let step: Vec<f32> = data(42, dim).iter().map(|v| v.abs() / 200.0).collect();
    let q = data(43, dim);
    let sq = SqCodes { dim, rows, stride, codes: &codes, lo: &lo, step: &step };
    close(&g.code_scores(&q, &sq).unwrap(), &cpu::code_scores(&q, &sq), 1e-5, "code scores");

    for (dim, ns) in [(384usize, 64usize), (640, 200), (10, 3)] {
        let mu = unit_rows(50, ns, dim);
        let kappa: Vec<f32> = (0..ns).map(|i| 1.0 + (i % 50) as f32).collect();
        let alpha: Vec<f32> = (0..ns).map(|i| 0.5 + (i % 4) as f32).collect();
        let x0 = unit_rows(51, 20, dim);
        let xi = data(52, 20 * dim);
        let (mut a, mut b) = (x0.clone(), x0.clone());
        g.langevin_step(&mut a, dim, &mu, &kappa, &alpha, &xi, 1e-3, 1.0).unwrap();
        Compute::new(Backend::Cpu).unwrap().langevin_step(&mut b, dim, &mu, &kappa, &alpha, &xi, 1e-3, 1.0).unwrap();
        close(&a, &b, 1e-5, "langevin step");
        assert_ne!(a, x0, "the chains moved");
    }
}

#[test]
fn bad_input_is_refused_on_every_backend() {
    #[cfg(feature = "vulkan")]
    let backends = vec![Compute::new(Backend::Cpu).unwrap(), gpu()];
    #[cfg(not(feature = "vulkan"))]
    let backends = vec![Compute::new(Backend::Cpu).unwrap()];
    #[cfg(not(feature = "vulkan"))]
    assert!(matches!(Compute::new(Backend::Gpu), Err(Error::NotBuilt)));
    for g in backends {
        assert!(matches!(g.upload(&[1.0, 2.0, 3.0], 2), Err(Error::Shape { .. })));
        assert!(matches!(g.upload(&[1.0, f32::NAN], 2), Err(Error::Invalid { .. })));
        let c = g.upload(&data(1, 40), 4).unwrap();
        assert!(matches!(g.scores(&[1.0; 3], &c, Metric::L2), Err(Error::Shape { .. })));
        assert!(matches!(g.scores(&[], &c, Metric::L2), Err(Error::Invalid { .. })));
        assert!(matches!(g.top_k(&[1.0; 4], &c, Metric::L2, 0), Err(Error::Invalid { what: "k", .. })));
        assert!(matches!(g.top_k(&[1.0; 4], &c, Metric::L2, MAX_K + 1), Err(Error::Invalid { what: "k", .. })));
        let mut x = vec![1.0f32, 0.0];
        let r = g.langevin_step(&mut x, 2, &[1.0, 0.0], &[0.0], &[1.0], &[0.0, 0.0], 1e-3, 1.0);
        assert!(matches!(r, Err(Error::Invalid { .. })), "kappa 0");
        assert_eq!(x, vec![1.0, 0.0], "nothing changed");
    }
}

#[cfg(feature = "vulkan")]
#[test]
fn the_device_hot_tier_keeps_blocks_in_device_memory_under_its_budget() {
    use m2m_tier::{BlockKey, Error as TierError, HotKey, HotTier, Residency};
    let g = gpu();
    let hot = g.hot_tier(10_000).unwrap();
    let centroids: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
    let block = hot.upload(HotKey::Centroids, &centroids, Residency::Pinned).unwrap();
    assert_eq!(block.len(), 4000);
    assert_eq!(hot.storage().read(&block).unwrap(), centroids, "the device holds the bytes");
    hot.upload(HotKey::Codes { cluster: 0 }, &centroids, Residency::Pinned).unwrap();
    let refused = hot.upload(HotKey::Codes { cluster: 1 }, &centroids, Residency::Pinned);
    assert!(matches!(refused, Err(TierError::OverBudget { .. })), "{refused:?}");
    for b in 0..20u32 {
        hot.upload(HotKey::Vectors(BlockKey { segment: 1, block: b }), &[b as u8; 500], Residency::Evictable).unwrap();
        let s = hot.stats();
        assert!(s.resident_bytes <= s.budget_bytes, "{s:?}");
    }
    let kept: Vec<u32> =
        (0..20u32).filter(|&b| hot.get(HotKey::Vectors(BlockKey { segment: 1, block: b })).is_some()).collect();
    assert!(!kept.is_empty() && kept.len() <= 4, "{kept:?}");
    let last = hot.get(HotKey::Vectors(BlockKey { segment: 1, block: kept[kept.len() - 1] })).unwrap();
    assert_eq!(hot.storage().read(&last).unwrap(), vec![kept[kept.len() - 1] as u8; 500]);
    assert!(hot.get(HotKey::Centroids).is_some());
    assert!(Compute::new(Backend::Cpu).unwrap().hot_tier(1).is_err(), "no device memory on the CPU backend");
}

/// Inverted lists of the given sizes (an empty one, a single row and some longer than a workgroup):
/// centroids, offsets and vectors.
fn lists(seed: u64, dim: usize, sizes: &[u32]) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let centroids = data(seed, sizes.len() * dim);
    let mut offsets = vec![0u32];
    for s in sizes {
        offsets.push(offsets.last().copied().unwrap_or(0) + s);
    }
    let rows = *offsets.last().unwrap_or(&0) as usize;
    (centroids, offsets, data(seed + 1, rows * dim))
}

const SIZES: [u32; 9] = [70, 0, 1, 130, 64, 5, 33, 200, 9];

/// f64 reference of the IVF search of one query: the `nprobe` best centroids, then the best `k` members.
#[allow(clippy::too_many_arguments, reason = "a reference over the raw parts the kernel takes, one per argument")]
fn ivf_reference(
    q: &[f32],
    c: &[f32],
    off: &[u32],
    x: &[f32],
    dim: usize,
    l2: bool,
    nprobe: usize,
    k: usize,
) -> Vec<(u32, f64)> {
    let score = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(u, v)| {
                let (u, v) = (f64::from(*u), f64::from(*v));
                if l2 { (u - v) * (u - v) } else { u * v }
            })
            .sum()
    };
    let rank = |v: &mut Vec<(u32, f64)>| v.sort_by(|a, b| if l2 { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) });
    let mut cs: Vec<(u32, f64)> = c.chunks_exact(dim).enumerate().map(|(l, r)| (l as u32, score(q, r))).collect();
    rank(&mut cs);
    let mut found: Vec<(u32, f64)> = Vec::new();
    for &(l, _) in &cs[..nprobe] {
        for r in off[l as usize]..off[l as usize + 1] {
            found.push((r, score(q, &x[r as usize * dim..(r as usize + 1) * dim])));
        }
    }
    rank(&mut found);
    found.truncate(k);
    found
}

#[test]
fn the_ivf_twin_matches_an_f64_reference_and_probing_every_list_is_exact() {
    let dim = 24;
    let (c, off, x) = lists(60, dim, &SIZES);
    let q = data(61, 7 * dim);
    for l2 in [false, true] {
        for (nprobe, k) in [(1usize, 5usize), (3, 10), (SIZES.len(), MAX_K)] {
            let got = cpu::ivf_search(&q, &c, &off, &x, dim, l2, nprobe, k);
            for (i, got) in got.iter().enumerate() {
                let want = ivf_reference(&q[i * dim..(i + 1) * dim], &c, &off, &x, dim, l2, nprobe, k);
                assert_eq!(
                    got.iter().map(|h| h.0).collect::<Vec<_>>(),
                    want.iter().map(|h| h.0).collect::<Vec<_>>(),
                    "l2 {l2} nprobe {nprobe}"
                );
                for (g, w) in got.iter().zip(&want) {
                    assert!((f64::from(g.1) - w.1).abs() < 1e-4);
                }
            }
        }
        // Every list probed: the exact top k over all rows.
        let all = cpu::ivf_search(&q, &c, &off, &x, dim, l2, SIZES.len(), 10);
        let exact = cpu::top_k(
            &cpu::scores(&q, &x, dim, l2),
            x.len() / dim,
            10,
            if l2 { Direction::Lower } else { Direction::Higher },
        );
        // The same rows; the scores within f32 rounding (the twin scores one row at a time, the exact scan
        // through the blocked many-rows kernel, which may sum in another order).
        for (a, e) in all.iter().zip(&exact) {
            assert_eq!(a.iter().map(|h| h.0).collect::<Vec<_>>(), e.iter().map(|h| h.0).collect::<Vec<_>>());
            for (x, y) in a.iter().zip(e) {
                assert!((x.1 - y.1).abs() <= 1e-5 * y.1.abs().max(1.0), "{x:?} against {y:?}");
            }
        }
        assert_eq!(all.len(), exact.len());
    }
}

/// The device's IVF hits equal the twin's: scores to 1e-5 position by position, and where the rows
/// differ (scores tied within that tolerance, inside the list or at its cut), the device's row really has
/// the score it reports (`score(query, row)`), so a wrong row-to-score pairing still fails.
#[cfg(feature = "vulkan")]
fn same_hits(got: &[Vec<(u32, f32)>], want: &[Vec<(u32, f32)>], score: impl Fn(usize, u32) -> f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: queries");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: query {i} hits");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a.1 - b.1).abs() <= 1e-5 * b.1.abs().max(1.0), "{what}: query {i} hit {j}: {a:?} vs {b:?}");
            if a.0 != b.0 {
                let real = score(i, a.0);
                assert!(
                    (real - a.1).abs() <= 1e-5 * real.abs().max(1.0),
                    "{what}: query {i} hit {j}: row {} scores {real}, not {}",
                    a.0,
                    a.1
                );
            }
        }
    }
}

#[cfg(feature = "vulkan")]
#[test]
fn ivf_search_on_the_gpu_matches_the_cpu_twin() {
    let mut g = gpu();
    for dim in [37usize, 384] {
        let (c, off, x) = lists(70 + dim as u64, dim, &SIZES);
        let q = data(71, 300 * dim);
        let ivf = g.ivf_upload(&IvfLists { dim, centroids: &c, offsets: &off, vectors: &x }).unwrap();
        assert!(ivf.on_device());
        assert_eq!((ivf.n_lists(), ivf.rows()), (SIZES.len(), x.len() / dim));
        for metric in [Metric::InnerProduct, Metric::L2] {
            for (nprobe, k) in [(1usize, 1usize), (3, 10), (SIZES.len(), MAX_K)] {
                let got = g.ivf_search(&q, &ivf, metric, nprobe, k).unwrap();
                let want = cpu::ivf_search(&q, &c, &off, &x, dim, metric == Metric::L2, nprobe, k);
                let l2 = metric == Metric::L2;
                let score = |i: usize, r: u32| {
                    cpu::scores(&q[i * dim..(i + 1) * dim], &x[r as usize * dim..(r as usize + 1) * dim], dim, l2)[0]
                };
                same_hits(&got, &want, score, &format!("dim {dim} {metric:?} nprobe {nprobe} k {k}"));
            }
        }
    }
    // Queries split over several submissions (the probe scores of 7 queries fill a buffer).
    let dim = 16;
    let (c, off, x) = lists(80, dim, &SIZES);
    let ivf = g.ivf_upload(&IvfLists { dim, centroids: &c, offsets: &off, vectors: &x }).unwrap();
    g.limit_buffer_bytes(4 * 7 * SIZES.len() as u64);
    let q = data(81, 50 * dim);
    let got = g.ivf_search(&q, &ivf, Metric::InnerProduct, 2, 4).unwrap();
    let score = |i: usize, r: u32| {
        cpu::scores(&q[i * dim..(i + 1) * dim], &x[r as usize * dim..(r as usize + 1) * dim], dim, false)[0]
    };
    same_hits(&got, &cpu::ivf_search(&q, &c, &off, &x, dim, false, 2, 4), score, "split batch");
}

#[test]
fn bad_ivf_input_is_refused_on_every_backend() {
    #[cfg(feature = "vulkan")]
    let backends = vec![Compute::new(Backend::Cpu).unwrap(), gpu()];
    #[cfg(not(feature = "vulkan"))]
    let backends = vec![Compute::new(Backend::Cpu).unwrap()];
    let dim = 4;
    let (c, off, x) = lists(90, dim, &[3, 0, 5]);
    for g in backends {
        let bad = |centroids: &[f32], offsets: &[u32], vectors: &[f32], dim: usize| {
            g.ivf_upload(&IvfLists { dim, centroids, offsets, vectors }).unwrap_err()
        };
        assert!(matches!(bad(&c, &off, &x, 0), Error::Invalid { what: "ivf dim", .. }));
        assert!(matches!(bad(&c[..5], &off, &x, dim), Error::Shape { what: "ivf centroids", .. }));
        assert!(matches!(bad(&c, &off[..3], &x, dim), Error::Shape { what: "ivf offsets", .. }));
        assert!(matches!(bad(&c, &[1, 3, 3, 8], &x, dim), Error::Invalid { what: "ivf offsets", .. }));
        assert!(matches!(bad(&c, &[0, 3, 2, 8], &x, dim), Error::Invalid { what: "ivf offsets", .. }));
        assert!(matches!(bad(&c, &off, &x[..8], dim), Error::Shape { what: "ivf vectors", .. }));
        let mut nan = x.clone();
        nan[7] = f32::NAN;
        assert!(matches!(bad(&c, &off, &nan, dim), Error::Invalid { what: "ivf vectors", .. }));
        let ivf = g.ivf_upload(&IvfLists { dim, centroids: &c, offsets: &off, vectors: &x }).unwrap();
        let q = data(91, 2 * dim);
        let search = |q: &[f32], nprobe, k| g.ivf_search(q, &ivf, Metric::L2, nprobe, k).unwrap_err();
        assert!(matches!(search(&q, 0, 3), Error::Invalid { what: "nprobe", .. }));
        assert!(matches!(search(&q, 4, 3), Error::Invalid { what: "nprobe", .. }));
        assert!(matches!(search(&q, 2, 0), Error::Invalid { what: "k", .. }));
        assert!(matches!(search(&q, 2, MAX_K + 1), Error::Invalid { what: "k", .. }));
        assert!(matches!(search(&q[..5], 2, 3), Error::Shape { what: "queries", .. }));
        assert!(matches!(search(&[], 2, 3), Error::Invalid { what: "queries", .. }));
        assert!(matches!(search(&[f32::INFINITY; 4], 2, 3), Error::Invalid { what: "queries", .. }));
        // Every list probed holds 8 rows in all: 8 hits when k asks for more.
        assert!(g.ivf_search(&q, &ivf, Metric::L2, 3, 20).unwrap().iter().all(|h| h.len() == 8));
    }
}
