//! Ingest and file throughput of m2m-splat on the built-in digits shape (10,000 x 640).
//!
//! Run with `cargo xtask bench` (or `cargo bench -p m2m-benches --bench splat`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m2m_splat::{Batch, DigitsConfig, SplatSet, VectorReader, digits_on_sphere, normalize_into, write_vectors};

const ROWS: usize = 10_000;

fn data() -> (Vec<f32>, usize) {
    let d = digits_on_sphere(&DigitsConfig::default().rows(ROWS).queries(0)).expect("digits");
    // Scale rows so normalisation has real work to do.
    (d.base.iter().map(|x| x * 3.0).collect(), d.dim)
}

fn ingest(c: &mut Criterion) {
    let (raw, dim) = data();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("append_10k_x_640", |b| {
        b.iter(|| {
            let mut set = SplatSet::with_capacity(dim, ROWS).expect("set");
            set.append(Batch::new(&raw, dim)).expect("append");
            set
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0.0; dim];
    g.bench_function("normalize_row_640", |b| b.iter(|| normalize_into(&raw[..dim], &mut out, 0).expect("row")));
    g.finish();
}

fn files(c: &mut Criterion) {
    let (raw, dim) = data();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes((raw.len() * 4) as u64));
    for ext in ["fvecs", "npy"] {
        let path = dir.path().join(format!("base.{ext}"));
        write_vectors(&path, &raw, dim).expect("write");
        g.bench_with_input(BenchmarkId::new("stream_chunks_4096", ext), &path, |b, path| {
            b.iter(|| {
                let reader = VectorReader::open(path).expect("open");
                let mut rows = 0;
                for chunk in reader.chunks::<f32>(4096) {
                    rows += chunk.expect("chunk").len() / dim;
                }
                assert_eq!(rows, ROWS);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Bytes((raw.len() * 4) as u64));
    for ext in ["fvecs", "npy"] {
        let path = dir.path().join(format!("out.{ext}"));
        g.bench_with_input(BenchmarkId::new("write_vectors", ext), &path, |b, path| {
            b.iter(|| write_vectors(path, &raw, dim).expect("write"))
        });
    }
    g.finish();
}

fn generate(c: &mut Criterion) {
    let mut g = c.benchmark_group("digits");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("digits_on_sphere_10k_x_640", |b| {
        b.iter(|| digits_on_sphere(&DigitsConfig::default().rows(ROWS).queries(0)).expect("digits"))
    });
    g.finish();
}

criterion_group!(benches, ingest, files, generate);
criterion_main!(benches);
