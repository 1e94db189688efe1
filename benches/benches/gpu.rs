//! m2m-gpu: each kernel on the Vulkan device against its CPU twin. On this project's machines the
//! device is Mesa's lavapipe (a CPU implementation, for correctness): its figures say nothing about a
//! real GPU. On a real GPU the report to make is distances + top-k throughput as a fraction of the
//! card's memory bandwidth (bytes of candidates read per second).
//!
//! Run with `cargo xtask bench gpu`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m2m_gpu::{Backend, Compute, Metric, SqCodes};

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn kernels(c: &mut Criterion) {
    let gpu = Compute::new(Backend::Gpu).expect("a Vulkan device");
    let cpu = Compute::new(Backend::Cpu).expect("cpu");
    let name = gpu.device_name();
    let (dim, n, b) = (384usize, 20_000usize, 32usize);
    let (q, x) = (data(b * dim, 1), data(n * dim, 2));
    let mut g = c.benchmark_group(format!("gpu_distances_topk_{n}x{dim}_{b}q"));
    g.sample_size(10);
    // Bytes of candidates read per query batch.
    g.throughput(Throughput::Bytes((n * dim * 4) as u64));
    for (label, backend) in [(name.as_str(), &gpu), ("cpu_twin", &cpu)] {
        let cands = backend.upload(&x, dim).expect("upload");
        g.bench_function(BenchmarkId::new("scores", label), |bch| {
            bch.iter(|| backend.scores(&q, &cands, Metric::InnerProduct).expect("scores"))
        });
        g.bench_function(BenchmarkId::new("top10", label), |bch| {
            bch.iter(|| backend.top_k(&q, &cands, Metric::InnerProduct, 10).expect("top-k"))
        });
    }
    g.finish();

    let (rows, stride) = (20_000usize, 384usize);
    let codes: Vec<u8> = (0..rows * stride).map(|i| (i * 37 % 256) as u8).collect();
    let (lo, step) = (data(dim, 3), vec![0.01f32; dim]);
    let sq = SqCodes { dim, rows, stride, codes: &codes, lo: &lo, step: &step };
    let mut g = c.benchmark_group(format!("gpu_code_scores_{rows}x{dim}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows as u64));
    for (label, backend) in [(name.as_str(), &gpu), ("cpu_twin", &cpu)] {
        g.bench_function(label, |bch| bch.iter(|| backend.code_scores(&q[..dim], &sq).expect("codes")));
    }
    g.finish();

    let (chains, ns) = (256usize, 64usize);
    let mut mu = data(ns * dim, 4);
    for r in mu.chunks_exact_mut(dim) {
        let l = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= l);
    }
    let kappa = vec![10.0f32; ns];
    let alpha = vec![1.0f32; ns];
    let mut x0 = data(chains * dim, 5);
    for r in x0.chunks_exact_mut(dim) {
        let l = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= l);
    }
    let xi = data(chains * dim, 6);
    let mut g = c.benchmark_group(format!("gpu_langevin_step_{chains}_chains_{ns}_splats_{dim}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(chains as u64));
    for (label, backend) in [(name.as_str(), &gpu), ("cpu_twin", &cpu)] {
        let mut x = x0.clone();
        g.bench_function(label, |bch| {
            bch.iter(|| backend.langevin_step(&mut x, dim, &mu, &kappa, &alpha, &xi, 1e-3, 1.0).expect("step"))
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
