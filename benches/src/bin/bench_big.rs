//! A large stored engine, measured: ingest, the streaming build (time, peak RSS), open (time, RSS), one
//! query's latency and LOD 2 recall@10 against exact neighbours found by a streaming brute-force pass.
//!
//! The data: row `i` is a row of minilm70k picked by a seeded generator plus Gaussian noise of standard
//! deviation `--sigma` per dimension (clouds of near-duplicates around real sentence embeddings). It is
//! generated on the fly, chunk by chunk (each chunk seeded by its number), so every pass over it (ingest,
//! ground truth) sees the same rows without a 7.7 GB file; the queries are 200 rows of the same law drawn
//! from a stream of their own and never ingested. Each step is its own process (a subcommand), so RSS
//! figures are the step's alone:
//!
//! ```text
//! bench-big ingest --dir /work/big/db --rows 5000000     # writes /work/big/queries.fvecs beside it
//! bench-big truth  --dir /work/big/db --rows 5000000     # writes /work/big/truth.ivecs
//! bench-big build  --dir /work/big/db --budget-mib 2048
//! sync; echo 3 > /proc/sys/vm/drop_caches; bench-big open --dir /work/big/db   # cold; again for warm
//! ```
//! Every subcommand prints one JSON line.

#![allow(clippy::print_stdout, reason = "a benchmark reports to its terminal")]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use m2m::{Lod, M2m, M2mConfig};
use m2m_splat::{read_vectors, write_vectors};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Ingest, streaming build, open and query of a large synthetic engine")]
struct Args {
    #[command(subcommand)]
    step: Step,
    /// The engine's data directory; the queries and truth files go beside it.
    #[arg(long, global = true, default_value = "/work/big/db")]
    dir: PathBuf,
    /// Rows of the data set.
    #[arg(long, global = true, default_value_t = 5_000_000)]
    rows: usize,
    /// minilm70k's base vectors (the centres of the noise).
    #[arg(long, global = true)]
    base: Option<PathBuf>,
    /// Noise per dimension.
    #[arg(long, global = true, default_value_t = 0.025)]
    sigma: f32,
    #[arg(long, global = true, default_value_t = 15)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Creates the engine and adds the rows, a flush every `--flush-rows`.
    Ingest {
        #[arg(long, default_value_t = 500_000)]
        flush_rows: usize,
    },
    /// Exact top-10 of the queries over every row, streaming.
    Truth,
    /// Opens the engine and builds its index within `--budget-mib` of full vectors.
    Build {
        #[arg(long, default_value_t = 2048)]
        budget_mib: u64,
    },
    /// Opens the engine, then queries it.
    Open {
        /// Open as a reader (`open_read_only`) rather than as the writer.
        #[arg(long)]
        read_only: bool,
        /// Queries timed one by one after the first.
        #[arg(long, default_value_t = 200)]
        nq: usize,
    },
}

const CHUNK: usize = 65_536;
const QUERIES: usize = 200;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the command name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

fn beside(args: &Args, name: &str) -> PathBuf {
    args.dir.parent().unwrap_or(Path::new(".")).join(name)
}

struct Generator {
    base: Vec<f32>,
    dim: usize,
    sigma: f32,
    seed: u64,
}

impl Generator {
    fn new(args: &Args) -> Result<Generator> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/minilm70k/minilm70k.base.fvecs");
        let path = args.base.clone().unwrap_or(root);
        let b = read_vectors::<f32>(&path).with_context(|| format!("{}", path.display()))?;
        Ok(Generator { dim: b.dim, base: b.data, sigma: args.sigma, seed: args.seed })
    }

    /// Rows of stream `stream`, chunk `c` (`rows` of them): each a base row plus noise.
    fn chunk(&self, stream: u64, c: u64, rows: usize) -> Vec<f32> {
        let dim = self.dim;
        let n_base = self.base.len() / dim;
        let mut out = vec![0.0f32; rows * dim];
        // Blocks of 1,024 rows in parallel, each with its own generator: the same rows whatever the threads.
        out.par_chunks_mut(1024 * dim).enumerate().for_each(|(b, block)| {
            let mut rng = StdRng::seed_from_u64(self.seed ^ (stream << 48) ^ (c << 16) ^ b as u64);
            for row in block.chunks_exact_mut(dim) {
                let j = rng.random_range(0..n_base);
                let src = &self.base[j * dim..(j + 1) * dim];
                for (pair, s) in row.chunks_mut(2).zip(src.chunks(2)) {
                    // Box-Muller: two standard normal deviates from two uniforms.
                    let u1: f32 = rng.random::<f32>().max(1e-12);
                    let u2: f32 = rng.random::<f32>();
                    let r = (-2.0 * u1.ln()).sqrt() * self.sigma;
                    let t = std::f32::consts::TAU * u2;
                    let g = [r * t.cos(), r * t.sin()];
                    for ((o, &v), g) in pair.iter_mut().zip(s).zip(g) {
                        *o = v + g;
                    }
                }
            }
        });
        out
    }
}

fn ingest(args: &Args, flush_rows: usize) -> Result<()> {
    let g = Generator::new(args)?;
    let queries = g.chunk(1, 0, QUERIES);
    write_vectors(beside(args, "queries.fvecs"), &queries, g.dim)?;
    let config = M2mConfig::default().dim(g.dim).data_dir(&args.dir).durable(false);
    let mut engine = M2m::create(config)?;
    let (start, cpu0) = (Instant::now(), cpu_s());
    let mut since = 0;
    for (c, at) in (0..args.rows).step_by(CHUNK).enumerate() {
        let rows = CHUNK.min(args.rows - at);
        let data = g.chunk(0, c as u64, rows);
        let ids: Vec<u64> = (at as u64..(at + rows) as u64).collect();
        engine.add_splats_with(&data, &ids, None, None)?;
        since += rows;
        if since >= flush_rows {
            engine.flush()?;
            since = 0;
        }
    }
    engine.flush()?;
    println!(
        "{}",
        json!({ "step": "ingest", "rows": args.rows, "dim": g.dim, "sigma": args.sigma, "wall_s": start.elapsed().as_secs_f64(),
                "cpu_s": cpu_s() - cpu0, "peak_rss_kb": status_kb("VmHWM:") })
    );
    Ok(())
}

fn unit(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

fn truth(args: &Args) -> Result<()> {
    let g = Generator::new(args)?;
    let dim = g.dim;
    let mut q = read_vectors::<f32>(beside(args, "queries.fvecs"))?.data;
    unit(&mut q, dim);
    let nq = q.len() / dim;
    let (start, cpu0) = (Instant::now(), cpu_s());
    let mut best: Vec<Vec<(f32, u64)>> = vec![Vec::new(); nq];
    for (c, at) in (0..args.rows).step_by(CHUNK).enumerate() {
        let rows = CHUNK.min(args.rows - at);
        let mut data = g.chunk(0, c as u64, rows);
        unit(&mut data, dim);
        let found: Vec<Vec<(f32, u64)>> = data
            .par_chunks(1024 * dim)
            .enumerate()
            .map(|(b, block)| {
                let m = block.len() / dim;
                let mut s = vec![0.0f32; nq * m];
                m2m_index::kernels::dots_many(&q, block, dim, &mut s);
                s.chunks_exact(m)
                    .map(|row| {
                        let mut v: Vec<(f32, u64)> =
                            row.iter().enumerate().map(|(j, &x)| (x, (at + b * 1024 + j) as u64)).collect();
                        v.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
                        v.truncate(10);
                        v
                    })
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect();
        // `found` holds, per block, one list per query in query order.
        for (i, list) in found.into_iter().enumerate() {
            best[i % nq].extend(list);
        }
        for b in &mut best {
            b.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            b.truncate(10);
        }
    }
    let ids: Vec<i32> = best.iter().flat_map(|b| b.iter().map(|&(_, id)| id as i32)).collect();
    write_vectors(beside(args, "truth.ivecs"), &ids, 10)?;
    println!(
        "{}",
        json!({ "step": "truth", "rows": args.rows, "queries": nq, "wall_s": start.elapsed().as_secs_f64(), "cpu_s": cpu_s() - cpu0 })
    );
    Ok(())
}

fn build(args: &Args, budget_mib: u64) -> Result<()> {
    let (start, cpu0) = (Instant::now(), cpu_s());
    let mut engine = M2m::open(&args.dir)?;
    let open_s = start.elapsed().as_secs_f64();
    let rss_open_kb = status_kb("VmRSS:");
    let report = engine.build_index_within(budget_mib << 20)?;
    let stats = engine.stats();
    println!(
        "{}",
        json!({ "step": "build", "rows": engine.len(), "budget_mib": budget_mib, "open_s": open_s, "rss_open_kb": rss_open_kb,
                "wall_s": start.elapsed().as_secs_f64(), "cpu_s": cpu_s() - cpu0, "peak_rss_kb": status_kb("VmHWM:"),
                "rss_after_kb": status_kb("VmRSS:"),
                "streamed": report.is_some(), "report": report.map(|r| json!({ "sample_rows": r.sample_rows, "windows": r.windows,
                  "passes": r.passes, "peak_rows_held": r.peak_rows_held, "largest_read": r.largest_read })),
                "fine_clusters": stats.fine_clusters, "nprobe": stats.nprobe, "rerank": stats.rerank })
    );
    Ok(())
}

fn open(args: &Args, read_only: bool, nq: usize) -> Result<()> {
    let q = read_vectors::<f32>(beside(args, "queries.fvecs"))?;
    let t = read_vectors::<i32>(beside(args, "truth.ivecs"))?;
    let own_kb = ((q.data.len() + t.data.len()) * 4 / 1024) as u64;
    let rss0 = status_kb("VmRSS:");
    let (start, cpu0) = (Instant::now(), cpu_s());
    let engine = if read_only { M2m::open_read_only(&args.dir)? } else { M2m::open(&args.dir)? };
    let (open_s, open_cpu_s) = (start.elapsed().as_secs_f64(), cpu_s() - cpu0);
    let rss_open_kb = status_kb("VmRSS:");
    if engine.index().is_none() {
        bail!("no index: run `bench-big build` first");
    }
    let dim = q.dim;
    let t0 = Instant::now();
    let first = engine.retrieve(&q.data[..dim], 10, Lod::Rerank)?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (mut found, mut lat) = (first.iter().filter(|h| t.data[..10].contains(&(h.id as i32))).count(), Vec::new());
    let n = q.rows().min(nq.max(1));
    for r in 1..n {
        let t0 = Instant::now();
        let hits = engine.retrieve(&q.data[r * dim..(r + 1) * dim], 10, Lod::Rerank)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        found += hits.iter().filter(|h| t.data[r * 10..r * 10 + 10].contains(&(h.id as i32))).count();
    }
    lat.sort_by(f64::total_cmp);
    let median = lat.get(lat.len() / 2).copied().unwrap_or(first_ms);
    let n_rows = engine.len();
    println!(
        "{}",
        json!({ "step": "open", "read_only": read_only, "rows": n_rows, "open_s": open_s, "open_cpu_s": open_cpu_s, "rss_before_open_kb": rss0,
                "rss_open_kb": rss_open_kb, "own_kb": own_kb,
                "bytes_per_dim_per_vector_after_open": (rss_open_kb.saturating_sub(own_kb) as f64 * 1024.0) / (n_rows as f64 * dim as f64),
                "first_query_ms": first_ms, "median_query_ms": median, "queries": n, "recall10_lod2": found as f64 / (n * 10) as f64,
                "rss_after_queries_kb": status_kb("VmRSS:"), "peak_rss_kb": status_kb("VmHWM:") })
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.step {
        Step::Ingest { flush_rows } => ingest(&args, *flush_rows),
        Step::Truth => truth(&args),
        Step::Build { budget_mib } => build(&args, *budget_mib),
        Step::Open { read_only, nq } => open(&args, *read_only, *nq),
    }
}
