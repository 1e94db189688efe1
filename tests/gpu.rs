//! Batch retrieval on the compute device through the engine: the device's hits against the CPU's,
//! the index's changes reaching the device, the hot-tier budget, and the path reported in stats. The
//! device tests need the `gpu` feature and a Vulkan device (lavapipe in CI); the CPU one runs always.

#[cfg(feature = "gpu")]
use std::collections::HashSet;

#[cfg(feature = "gpu")]
use m2m::Hit;
use m2m::{Device, ForcePath, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 64;

fn engine(device: Device, rows: usize) -> (M2m, Vec<f32>) {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows, queries: 200, dim: DIM, ..Default::default() }).unwrap();
    let config = M2mConfig { device, learn_kappa: false, ..M2mConfig::default().dim(DIM) };
    let mut e = M2m::create(config).unwrap();
    e.add_splats(&d.base).unwrap();
    e.build_index().unwrap();
    (e, d.queries)
}

#[test]
fn the_cpu_device_answers_batches_on_the_cpu_and_says_so() {
    let (e, q) = engine(Device::Cpu, 2_000);
    e.force_retrieval_path(ForcePath::Gpu);
    assert_eq!(e.retrieve_batch(&q, 10, Lod::Rerank).unwrap().len(), 200);
    let s = e.stats().retrieval;
    assert_eq!((s.gpu_queries, s.cpu_queries, s.last_on_gpu), (0, 200, Some(false)));
    assert!(s.models.is_empty(), "no model without a device");
}

#[cfg(feature = "gpu")]
fn recall(got: &[Vec<Hit>], truth: &[Vec<Hit>]) -> f64 {
    let mut found = 0;
    for (g, t) in got.iter().zip(truth) {
        let want: HashSet<u64> = t.iter().map(|h| h.id).collect();
        found += g.iter().filter(|h| want.contains(&h.id)).count();
    }
    found as f64 / (10 * truth.len()) as f64
}

#[cfg(feature = "gpu")]
#[test]
fn device_batches_equal_the_cpu_and_follow_the_index() {
    let (mut e, q) = engine(Device::Vulkan, 3_000);
    e.force_retrieval_path(ForcePath::Cpu);
    let exact_cpu = e.retrieve_batch(&q, 10, Lod::Exact).unwrap();
    let lod2_cpu = e.retrieve_batch(&q, 10, Lod::Rerank).unwrap();
    e.force_retrieval_path(ForcePath::Gpu);
    let exact_gpu = e.retrieve_batch(&q, 10, Lod::Exact).unwrap();
    let s = e.stats().retrieval;
    assert_eq!((s.gpu_queries, s.last_on_gpu), (200, Some(true)), "{s:?}");
    // Exact on the device: the CPU's hits, scores to 1e-5, ids equal except between tied scores.
    for (g, c) in exact_gpu.iter().zip(&exact_cpu) {
        assert_eq!(g.len(), 10);
        for (a, b) in g.iter().zip(c) {
            assert!((a.score - b.score).abs() <= 1e-5, "{a:?} vs {b:?}");
            assert!(a.id == b.id || c.iter().any(|o| o.id == a.id && (o.score - b.score).abs() <= 1e-5));
            assert_eq!((a.kappa, a.alpha), (b.kappa, b.alpha), "the engine's kappa and alpha of the id");
        }
    }
    // LOD 2 on the device scores every member of the probed lists exactly: at least the CPU's recall.
    let lod2_gpu = e.retrieve_batch(&q, 10, Lod::Rerank).unwrap();
    let (rg, rc) = (recall(&lod2_gpu, &exact_cpu), recall(&lod2_cpu, &exact_cpu));
    assert!(rg >= rc - 0.005 && rg > 0.9, "device {rg} cpu {rc}");

    // Deleted ids leave the device's answers, and added ones join them.
    let gone: Vec<u64> = exact_gpu.iter().map(|h| h[0].id).collect();
    e.delete(&gone).unwrap();
    let after = e.retrieve_batch(&q, 10, Lod::Exact).unwrap();
    let gone: HashSet<u64> = gone.into_iter().collect();
    assert!(after.iter().flatten().all(|h| !gone.contains(&h.id)), "a deleted id came back from the device");
    let new_ids = e.add_splats(&q[..DIM]).unwrap();
    let top = e.retrieve_batch(&q[..DIM * 2], 10, Lod::Exact).unwrap();
    assert_eq!(top[0][0].id, new_ids[0], "the added copy of query 0 is its best hit");
    assert_eq!(e.stats().retrieval.last_on_gpu, Some(true));

    // The cost model: measured at the first batch, one per level of detail, with positive times.
    e.force_retrieval_path(ForcePath::Model);
    e.retrieve_batch(&q, 10, Lod::Rerank).unwrap();
    let models = e.stats().retrieval.models;
    assert_eq!(models.len(), 1);
    let (lod, m) = models[0];
    assert_eq!(lod, Lod::Rerank);
    assert!(m.cpu_per_query_s > 0.0 && m.gpu_per_query_s >= 0.0 && m.gpu_fixed_s >= 0.0, "{m:?}");
    assert_eq!(e.stats().retrieval.last_on_gpu, Some(m.gpu_wins(200)));
}

#[cfg(feature = "gpu")]
#[test]
fn lists_over_the_hot_budget_are_an_error_on_vulkan_and_the_cpu_on_auto() {
    for device in [Device::Vulkan, Device::Auto] {
        let d =
            digits_on_sphere(&m2m::DigitsConfig { rows: 1_000, queries: 20, dim: DIM, ..Default::default() }).unwrap();
        let config =
            M2mConfig { device, learn_kappa: false, hot_budget_bytes: 10_000, ..M2mConfig::default().dim(DIM) };
        let mut e = M2m::create(config).unwrap();
        e.add_splats(&d.base).unwrap();
        e.build_index().unwrap();
        e.force_retrieval_path(ForcePath::Gpu);
        let r = e.retrieve_batch(&d.queries, 10, Lod::Rerank);
        if device == Device::Vulkan {
            assert!(matches!(r, Err(m2m::Error::Config { field: "hot_budget_bytes", .. })), "{r:?}");
        } else {
            assert_eq!(r.unwrap().len(), 20);
            assert_eq!(e.stats().retrieval.last_on_gpu, Some(false));
        }
    }
}
