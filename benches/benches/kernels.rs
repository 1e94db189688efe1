//! The distance kernels of m2m-index, every instruction set side by side (384 and 640 dimensions).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m2m_index::kernels::{Isa, dot_with, dots_many_with, l2_sq_with, sq8_dot_with};

fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn kernels(c: &mut Criterion) {
    for dim in [384usize, 640] {
        let (a, b) = (data(dim), data(dim + 7)[7..].to_vec());
        let codes: Vec<u8> = (0..dim).map(|i| (i * 37 % 256) as u8).collect();
        let q8: Vec<i8> = (0..dim).map(|i| (i * 11 % 255) as i8).collect();
        let mut g = c.benchmark_group(format!("kernels_{dim}"));
        g.throughput(Throughput::Elements(dim as u64));
        for isa in Isa::available() {
            let name = format!("{isa:?}");
            g.bench_with_input(BenchmarkId::new("dot", &name), &isa, |bch, &isa| bch.iter(|| dot_with(isa, &a, &b)));
            g.bench_with_input(BenchmarkId::new("l2_sq", &name), &isa, |bch, &isa| {
                bch.iter(|| l2_sq_with(isa, &a, &b))
            });
            g.bench_with_input(BenchmarkId::new("sq8_dot", &name), &isa, |bch, &isa| {
                bch.iter(|| sq8_dot_with(isa, &codes, &q8))
            });
        }
        g.finish();
        // 32 queries x 256 rows: the exhaustive-search block.
        let (qs, rows) = (data(32 * dim), data(256 * dim));
        let mut out = vec![0.0f32; 32 * 256];
        let mut g = c.benchmark_group(format!("dots_many_32x256_{dim}"));
        g.throughput(Throughput::Elements((32 * 256 * dim) as u64));
        for isa in Isa::available() {
            g.bench_with_input(BenchmarkId::from_parameter(format!("{isa:?}")), &isa, |bch, &isa| {
                bch.iter(|| dots_many_with(isa, &qs, &rows, dim, &mut out))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
