//! m2m-soc: Langevin splat-steps per second (one chain advanced one step against its 64 routed splats)
//! at d = 384 and 640, in all coordinates and by the exact reduction to the splats' span (runs of 10
//! steps, so the reduced figure includes its per-run basis and lift), alias-table draws and whole epoch plans, sandpile driving, and kappa estimation
//! for the 70,000 vectors of `../shared/data/minilm70k` (or 70,000 digits rows at d = 384 when that
//! file is absent).
//!
//! Run with `cargo xtask bench soc`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m2m_index::{Index, IndexConfig};
use m2m_soc::langevin::{Group, run, uniform_on_sphere};
use m2m_soc::{
    AliasTable, Dynamics, ImportanceSampler, KappaConfig, LangevinConfig, Method, Noise, SamplerConfig, Sandpile,
    SiteGraph, SocConfig, Splats, estimate_kappa,
};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

const ROUTED: usize = 64;
const GROUPS: usize = 4;
const CHAINS: usize = 64;
const STEPS: usize = 10;

fn langevin(c: &mut Criterion) {
    let mut g = c.benchmark_group("langevin_splat_steps_64_routed");
    g.throughput(Throughput::Elements((GROUPS * CHAINS * STEPS) as u64));
    g.sample_size(20);
    for dim in [384usize, 640] {
        let mu = uniform_on_sphere(GROUPS * ROUTED, dim, 1);
        let kappa: Vec<f32> = (0..GROUPS * ROUTED).map(|i| 1.0 + (i % 50) as f32).collect();
        let alpha = vec![1.0f32; GROUPS * ROUTED];
        let splats: Vec<Splats<'_>> = (0..GROUPS)
            .map(|k| {
                let r = k * ROUTED..(k + 1) * ROUTED;
                Splats::new(dim, &mu[r.start * dim..r.end * dim], &kappa[r.clone()], &alpha[r]).expect("splats")
            })
            .collect();
        let start = uniform_on_sphere(GROUPS * CHAINS, dim, 2);
        for (name, dynamics, noise, method) in [
            ("overdamped_gaussian", Dynamics::Overdamped, Noise::Gaussian, Method::Full),
            ("overdamped_gaussian_reduced", Dynamics::Overdamped, Noise::Gaussian, Method::Reduced),
            ("overdamped_rademacher", Dynamics::Overdamped, Noise::Rademacher, Method::Full),
            ("underdamped_gaussian", Dynamics::Underdamped, Noise::Gaussian, Method::Full),
        ] {
            let config = LangevinConfig { steps: STEPS, dynamics, noise, method, ..LangevinConfig::default() };
            let mut x = start.clone();
            g.bench_function(BenchmarkId::new(name, dim), |b| {
                b.iter(|| {
                    let mut groups: Vec<Group<'_>> =
                        x.chunks_mut(CHAINS * dim).zip(&splats).map(|(x, s)| Group { x, splats: *s }).collect();
                    run(&config, &mut groups, 7).expect("run");
                })
            });
        }
    }
    g.finish();
}

fn sampling(c: &mut Criterion) {
    let n = 70_000;
    let weights: Vec<f64> = (0..n).map(|i| 1.0 + ((i * 7919) % 97) as f64).collect();
    let table = AliasTable::new(&weights).expect("table");
    let mut g = c.benchmark_group("sampler_70k");
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("alias_draws_1m", |b| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        b.iter(|| {
            let mut acc = 0usize;
            for _ in 0..1_000_000 {
                acc = acc.wrapping_add(table.sample(&mut rng));
            }
            std::hint::black_box(acc)
        })
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("alias_table_build", |b| b.iter(|| AliasTable::new(&weights).expect("table")));
    let sampler = ImportanceSampler::new(&weights, SamplerConfig::default()).expect("sampler");
    g.bench_function("epoch_plan_with_weights_and_shuffle", |b| b.iter(|| sampler.epoch(3)));
    g.finish();

    // The sandpile over 1,058 sites (minilm70k's fine clusters) with 6 neighbours each.
    let points = uniform_on_sphere(1058, 64, 3);
    let graph = SiteGraph::knn(&points, 64, 6).expect("graph");
    let mut g = c.benchmark_group("sandpile_1058_sites");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("drive_100k_grains", |b| {
        let mut pile = Sandpile::new(graph.clone(), SocConfig::default()).expect("pile");
        let mut site = 0usize;
        b.iter(|| {
            for _ in 0..100_000 {
                site = (site * 1_103_515_245 + 12_345) % 1058;
                pile.drive(site, 1.0).expect("drive");
            }
        })
    });
    g.finish();
}

fn kappa(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/minilm70k/minilm70k.base.fvecs");
    let (dim, mu, source) = match m2m_splat::read_vectors::<f32>(path) {
        Ok(v) => {
            let set = m2m_splat::SplatSet::from_vectors(&v.data, v.dim).expect("vectors");
            (v.dim, set.mu().to_vec(), "minilm70k")
        }
        Err(_) => {
            let config = m2m_splat::DigitsConfig { rows: 70_000, queries: 0, dim: 384, ..Default::default() };
            (384, m2m_splat::digits_on_sphere(&config).expect("digits").base, "digits_70k_384")
        }
    };
    let ids: Vec<u64> = (0..(mu.len() / dim) as u64).collect();
    let index = Index::build(&IndexConfig::default(), dim, &mu, &ids).expect("index");
    let mut g = c.benchmark_group("kappa_estimation");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function(source, |b| b.iter(|| estimate_kappa(&index, &mu, &ids, &KappaConfig::default()).expect("kappa")));
    g.finish();
}

criterion_group!(benches, langevin, sampling, kappa);
criterion_main!(benches);
