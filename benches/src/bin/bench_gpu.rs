//! The device benchmark of the engine (`cargo xtask bench gpu`, and the release binary that
//! `scripts/device-gpu.sh` runs on a lent GPU): on one data set,
//!
//! 1. batch LOD 2 and Exact through `M2m::retrieve_batch` on the CPU path (on `--cpu-threads` threads,
//!    and on all of them) and on the device path: QPS and recall@k against exact neighbours computed on
//!    the CPU;
//! 2. what the cost model measured at first use, and which path it picks for one query and for the batch;
//! 3. distances + top-k (`Compute::top_k` over resident candidates) for several batch sizes: seconds,
//!    GB/s of candidate bytes read once per batch, and GFLOP/s;
//! 4. Langevin steps (`Compute::langevin_step`) in chain-steps per second.
//!
//! Prints a table last and writes every figure as JSON with `--json`.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports to its terminal")]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use m2m::gpu::{Backend, Compute};
use m2m::{Device, ForcePath, Lod, M2m, M2mConfig, Metric};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Engine retrieval on the device against the CPU, kernel throughput, Langevin steps")]
struct Args {
    /// Base vectors (.fvecs or .npy); without it, the built-in digits on S^63 (correctness-size runs).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Query vectors (.fvecs or .npy).
    #[arg(long, requires = "base")]
    queries: Option<PathBuf>,
    /// Queries used (the first ones of the file).
    #[arg(long, default_value_t = 2000)]
    n_queries: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Threads of the CPU path it is compared with.
    #[arg(long, default_value_t = 2)]
    cpu_threads: usize,
    /// Timed repetitions of each device measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Chains of the Langevin measurement.
    #[arg(long, default_value_t = 16384)]
    chains: usize,
    /// Only check that the Vulkan device works: one IVF batch against the CPU twin, then exit.
    #[arg(long)]
    smoke: bool,
    /// Write every figure here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
struct Row {
    what: String,
    path: String,
    queries: usize,
    seconds: f64,
    qps: f64,
    recall: Option<f64>,
}

#[derive(Serialize, Debug)]
struct Kernel {
    batch: usize,
    rows: usize,
    dim: usize,
    seconds: f64,
    candidate_gb_per_s: f64,
    gflop_per_s: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    device: String,
    rows: usize,
    dim: usize,
    n_lists: usize,
    nprobe: usize,
    build_seconds: f64,
    retrieval: Vec<Row>,
    cost_models: Vec<String>,
    model_picks_gpu_for_one: Option<bool>,
    model_picks_gpu_for_batch: Option<bool>,
    kernels: Vec<Kernel>,
    langevin_chain_steps_per_s: Option<f64>,
}

/// What a timed retrieval needs.
struct Run<'a> {
    engine: &'a M2m,
    pool: &'a rayon::ThreadPool,
    queries: &'a [f32],
    truth: &'a [Vec<m2m::Hit>],
    k: usize,
}

impl Run<'_> {
    /// The median of `reps` timed batches, on the small pool or the global one.
    fn timed(&self, what: &str, path: &str, lod: Lod, small_pool: bool, reps: usize) -> Result<Row> {
        let mut secs = Vec::new();
        let mut got = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            got = if small_pool {
                self.pool.install(|| self.engine.retrieve_batch(self.queries, self.k, lod))?
            } else {
                self.engine.retrieve_batch(self.queries, self.k, lod)?
            };
            secs.push(t.elapsed().as_secs_f64());
        }
        let seconds = median(secs);
        let queries = self.truth.len();
        let row = Row {
            what: what.into(),
            path: path.into(),
            queries,
            seconds,
            qps: queries as f64 / seconds,
            recall: Some(recall(&got, self.truth, self.k)),
        };
        eprintln!("{row:?}");
        Ok(row)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn recall(got: &[Vec<m2m::Hit>], truth: &[Vec<m2m::Hit>], k: usize) -> f64 {
    let mut hit = 0usize;
    for (g, t) in got.iter().zip(truth) {
        let want: std::collections::HashSet<u64> = t.iter().take(k).map(|h| h.id).collect();
        hit += g.iter().take(k).filter(|h| want.contains(&h.id)).count();
    }
    hit as f64 / (truth.len() * k) as f64
}

fn load(args: &Args) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    match (&args.base, &args.queries) {
        (Some(b), Some(q)) => {
            let base = m2m::splat::read_vectors::<f32>(b).with_context(|| format!("reading {}", b.display()))?;
            let queries = m2m::splat::read_vectors::<f32>(q).with_context(|| format!("reading {}", q.display()))?;
            if base.dim != queries.dim {
                bail!("base dim {} but queries dim {}", base.dim, queries.dim);
            }
            let n = args.n_queries.min(queries.rows());
            Ok((base.data, queries.data[..n * queries.dim].to_vec(), base.dim))
        }
        _ => {
            let cfg = m2m::DigitsConfig { rows: 20_000, queries: args.n_queries, dim: 64, ..Default::default() };
            let d = m2m::digits_on_sphere(&cfg)?;
            Ok((d.base, d.queries, d.dim))
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.smoke {
        return smoke();
    }
    let (base, queries, dim) = load(&args)?;
    let (rows, nq, k) = (base.len() / dim, queries.len() / dim, args.k);
    let config =
        M2mConfig { dim, metric: Metric::Cosine, learn_kappa: false, device: Device::Vulkan, ..Default::default() };
    let mut engine = M2m::create(config).context("an engine on the Vulkan device")?;
    engine.add_splats(&base)?;
    let t = Instant::now();
    engine.build_index()?;
    let build_seconds = t.elapsed().as_secs_f64();
    let index = engine.index().context("index")?;
    let (n_lists, nprobe) = (index.n_lists(), index.default_nprobe());
    let device = engine.stats().device;
    eprintln!(
        "{device}: {rows} rows x {dim}, {nq} queries, {n_lists} lists, nprobe {nprobe}, build {build_seconds:.1} s"
    );

    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.cpu_threads).build()?;
    let mut retrieval = Vec::new();
    engine.force_retrieval_path(ForcePath::Cpu);
    let t = Instant::now();
    let truth = engine.retrieve_batch(&queries, k, Lod::Exact)?;
    let exact_cpu = t.elapsed().as_secs_f64();
    let run = Run { engine: &engine, pool: &pool, queries: &queries, truth: &truth, k };
    let cpu_label = format!("cpu {} threads", args.cpu_threads);
    let all = format!("cpu {} threads", rayon::current_num_threads());
    retrieval.push(run.timed("LOD 2", &cpu_label, Lod::Rerank, true, 3)?);
    retrieval.push(run.timed("LOD 2", &all, Lod::Rerank, false, 3)?);
    retrieval.push(Row {
        what: "Exact".into(),
        path: all,
        queries: nq,
        seconds: exact_cpu,
        qps: nq as f64 / exact_cpu,
        recall: Some(1.0),
    });
    engine.force_retrieval_path(ForcePath::Gpu);
    engine.retrieve_batch(&queries, k, Lod::Rerank)?; // upload and warm-up
    retrieval.push(run.timed("LOD 2", "device", Lod::Rerank, false, args.reps)?);
    retrieval.push(run.timed("Exact", "device", Lod::Exact, false, args.reps)?);
    let on_gpu = engine.stats().retrieval.last_on_gpu;
    if on_gpu != Some(true) {
        bail!("the forced device path did not run on the device ({on_gpu:?})");
    }

    // The cost model, measured on first use in a fresh engine state.
    engine.force_retrieval_path(ForcePath::Model);
    let one = engine.retrieve_batch(&queries[..dim], k, Lod::Rerank).map(|_| engine.stats().retrieval.last_on_gpu)?;
    let batch = engine.retrieve_batch(&queries, k, Lod::Rerank).map(|_| engine.stats().retrieval.last_on_gpu)?;
    let cost_models: Vec<String> = engine.stats().retrieval.models.iter().map(|m| format!("{m:?}")).collect();
    eprintln!("cost models {cost_models:?}; one query on gpu {one:?}, batch on gpu {batch:?}");

    // Distances + top-k over resident candidates, and Langevin steps, on the bare kernels.
    let compute = Compute::new(Backend::Gpu)?;
    let cand = compute.upload(&base, dim)?;
    let mut kernels = Vec::new();
    for b in [8usize, 64, 512, nq] {
        let b = b.min(nq);
        let q = &queries[..b * dim];
        compute.top_k(q, &cand, Metric::Cosine, k)?;
        let mut secs = Vec::new();
        for _ in 0..args.reps {
            let t = Instant::now();
            compute.top_k(q, &cand, Metric::Cosine, k)?;
            secs.push(t.elapsed().as_secs_f64());
        }
        let seconds = median(secs);
        let kern = Kernel {
            batch: b,
            rows,
            dim,
            seconds,
            candidate_gb_per_s: (rows * dim * 4) as f64 / seconds / 1e9,
            gflop_per_s: 2.0 * (b * rows * dim) as f64 / seconds / 1e9,
        };
        eprintln!("{kern:?}");
        kernels.push(kern);
    }
    let langevin = langevin(&compute, dim.min(m2m::gpu::MAX_STEP_DIM), args.chains, args.reps)?;
    let report = Report {
        device,
        rows,
        dim,
        n_lists,
        nprobe,
        build_seconds,
        retrieval,
        cost_models,
        model_picks_gpu_for_one: one,
        model_picks_gpu_for_batch: batch,
        kernels,
        langevin_chain_steps_per_s: Some(langevin),
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print_table(&report);
    Ok(())
}

/// The device is found and its IVF search equals the CPU twin's on random lists.
fn smoke() -> Result<()> {
    let compute = Compute::new(Backend::Gpu)?;
    let (dim, n_lists, per) = (384usize, 50usize, 40u32);
    let val = |i: usize| (((i as u64 * 2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0;
    let centroids: Vec<f32> = (0..n_lists * dim).map(val).collect();
    let offsets: Vec<u32> = (0..=n_lists as u32).map(|l| l * per).collect();
    let vectors: Vec<f32> = (0..n_lists * per as usize * dim).map(|i| val(i + 7_777_777)).collect();
    let queries: Vec<f32> = (0..64 * dim).map(|i| val(i + 99_999_999)).collect();
    let lists = m2m::gpu::IvfLists { dim, centroids: &centroids, offsets: &offsets, vectors: &vectors };
    let ivf = compute.ivf_upload(&lists)?;
    let got = compute.ivf_search(&queries, &ivf, Metric::InnerProduct, 5, 10)?;
    let want = m2m::gpu::cpu::ivf_search(&queries, &centroids, &offsets, &vectors, dim, false, 5, 10);
    let mut worst = 0f32;
    let mut same_ids = 0usize;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a.1 - b.1).abs() / b.1.abs().max(1.0));
            same_ids += usize::from(a.0 == b.0);
        }
    }
    println!(
        "smoke: {} | ids equal {same_ids}/640 | worst relative score difference {worst:.2e}",
        compute.device_name()
    );
    if worst > 1e-4 || same_ids < 600 {
        bail!("the device's IVF search differs from the CPU twin");
    }
    Ok(())
}

/// Chain-steps per second of `Compute::langevin_step` (64 routed splats), median of `reps` steps.
fn langevin(compute: &Compute, dim: usize, chains: usize, reps: usize) -> Result<f64> {
    let ns = 64;
    let unit = |seed: u64, rows: usize| -> Vec<f32> {
        let mut v: Vec<f32> =
            (0..rows * dim).map(|i| (((i as u64 + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
        for r in v.chunks_exact_mut(dim) {
            let n = r.iter().map(|a| a * a).sum::<f32>().sqrt();
            r.iter_mut().for_each(|a| *a /= n);
        }
        v
    };
    let (mu, mut x, xi) = (unit(1, ns), unit(2, chains), unit(3, chains));
    let (kappa, alpha) = (vec![10.0f32; ns], vec![1.0f32; ns]);
    let mut secs = Vec::new();
    for _ in 0..reps.max(1) + 1 {
        let t = Instant::now();
        compute.langevin_step(&mut x, dim, &mu, &kappa, &alpha, &xi, 1e-3, 1.0)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.remove(0);
    Ok(chains as f64 / median(secs))
}

fn print_table(r: &Report) {
    println!(
        "\n{} | {} rows x {} | {} lists, nprobe {} | index build {:.1} s",
        r.device, r.rows, r.dim, r.n_lists, r.nprobe, r.build_seconds
    );
    println!("| retrieval | path | queries | QPS | recall@10 |");
    println!("|---|---|---:|---:|---:|");
    for row in &r.retrieval {
        println!(
            "| {} | {} | {} | {:.0} | {:.4} |",
            row.what,
            row.path,
            row.queries,
            row.qps,
            row.recall.unwrap_or(f64::NAN)
        );
    }
    println!("cost models: {}", r.cost_models.join("; "));
    println!(
        "model picks device: one query {:?}, the batch {:?}",
        r.model_picks_gpu_for_one, r.model_picks_gpu_for_batch
    );
    println!("| distances+top-k batch | ms | candidate GB/s | GFLOP/s |");
    println!("|---:|---:|---:|---:|");
    for k in &r.kernels {
        println!("| {} | {:.3} | {:.1} | {:.0} |", k.batch, k.seconds * 1e3, k.candidate_gb_per_s, k.gflop_per_s);
    }
    if let Some(l) = r.langevin_chain_steps_per_s {
        println!("langevin: {l:.0} chain-steps/s");
    }
}
