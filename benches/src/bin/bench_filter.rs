//! The filtered-search benchmark of m2m-index: `cargo xtask bench filter [--base B --queries Q] [--nq 1000]
//! [--threads 1] [--json OUT] [--export DIR]`.
//!
//! Synthetic attributes over the base rows, with a selectivity we control: random rows (a hash of the row
//! number below a share), and rows correlated with the vectors (a label per row: its cluster in an
//! independent k-means of `--labels` clusters; a filter takes whole labels, in a seeded order, until the
//! share is reached, so that its matches sit in few clusters). For each filter it reports recall@k
//! against the exact filtered truth, batch QPS (the filter resolved once per batch, inside the timing)
//! and one-query-at-a-time QPS on `--threads` threads, both with the filter given as ids to every call
//! and resolved once (`Index::resolve_filter`, inside the timing) and reused, each beside QPS per CPU
//! second, and the plans that ran: a markdown table on stdout, JSON with `--json`. `--export DIR` writes each filter's matching rows
//! and its truth (`filters.json`) for the peers' script (`benches/peers/filtered.py`).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports to its terminal")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use m2m_index::{FilterOptions, Hit, IdSet, Index, IndexConfig, Lod, SearchParams};
use m2m_splat::read_vectors;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Filtered recall / QPS of m2m-index on vector files")]
struct Args {
    /// Base vectors (.fvecs or .npy).
    #[arg(long)]
    base: PathBuf,
    /// Query vectors (.fvecs or .npy).
    #[arg(long)]
    queries: PathBuf,
    /// Queries used (the first ones).
    #[arg(long, default_value_t = 1000)]
    nq: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Threads for the timed searches.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads for the build and the truth (default: all cores).
    #[arg(long)]
    build_threads: Option<usize>,
    /// Shares of matching rows (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.5, 0.1, 0.01, 0.001])]
    shares: Vec<f64>,
    /// Labels of the correlated attribute (clusters of an independent k-means).
    #[arg(long, default_value_t = 1000)]
    labels: usize,
    /// Level of detail: 1 (codes), 2 (re-ranked) or exact.
    #[arg(long, default_value = "2")]
    lod: String,
    /// In-cluster widening factors to sweep (`FilterOptions::widen`, comma separated; the default 1.0).
    /// One-query-at-a-time figures are taken at the first.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1.0])]
    widen: Vec<f64>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write each filter's matching rows and exact truth here (filters.json), for the peers.
    #[arg(long)]
    export: Option<PathBuf>,
}

#[derive(Serialize)]
struct Point {
    filter: String,
    widen: f64,
    share: f64,
    matches: usize,
    recall: f64,
    batch_qps: f64,
    batch_cpu_qps: f64,
    single_recall: f64,
    single_qps: f64,
    single_cpu_qps: f64,
    resolved_recall: f64,
    resolved_qps: f64,
    resolved_cpu_qps: f64,
    plans: BTreeMap<String, usize>,
    mean_clusters_probed: f64,
    mean_rows_scored: f64,
}

#[derive(Serialize)]
struct Report {
    base: String,
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    threads: usize,
    lod: String,
    n_fine: usize,
    default_nprobe: usize,
    build_s: f64,
    isa: String,
    unfiltered_recall: f64,
    unfiltered_qps: f64,
    unfiltered_cpu_qps: f64,
    points: Vec<Point>,
}

#[derive(Serialize)]
struct Export {
    k: usize,
    nq: usize,
    filters: Vec<ExportFilter>,
}

#[derive(Serialize)]
struct ExportFilter {
    name: String,
    rows: Vec<u64>,
    truth: Vec<Vec<u64>>,
}

/// CPU seconds the live threads of this process have used: the sum of their scheduler run times
/// (`/proc/self/task/*/schedstat`, nanoseconds; the timed pools' threads live through the run), else
/// user + system from /proc/self/stat (10 ms ticks: too coarse for a run of 1,000 fast queries).
fn cpu_seconds() -> Option<f64> {
    let from_tasks = || -> Option<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 * 1e-9)
    };
    if let Some(s) = from_tasks() {
        return Some(s);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Best of three runs of `f`: (wall seconds, CPU seconds, the result).
fn timed<T>(mut f: impl FnMut() -> Result<T>) -> Result<(f64, f64, T)> {
    let mut best = (f64::INFINITY, f64::INFINITY);
    let mut out = None;
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_seconds());
        let r = f()?;
        best.0 = best.0.min(t.elapsed().as_secs_f64());
        if let (Some(c0), Some(c1)) = (c, cpu_seconds()) {
            best.1 = best.1.min((c1 - c0).max(1e-6));
        }
        out = Some(r);
    }
    Ok((best.0, best.1, out.context("no run")?))
}

fn recall(results: &[Vec<Hit>], truth: &[Vec<u64>], k: usize) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (r, t) in results.iter().zip(truth) {
        let t = &t[..k.min(t.len())];
        found += r.iter().filter(|h| t.contains(&h.id)).count();
        total += t.len();
    }
    if total == 0 { 1.0 } else { found as f64 / total as f64 }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.k == 0 || args.threads == 0 || args.nq == 0 {
        bail!("--k, --threads and --nq must be at least 1");
    }
    let lod: Lod = args.lod.parse()?;
    let base = read_vectors::<f32>(&args.base)?;
    let queries = read_vectors::<f32>(&args.queries)?;
    if base.dim != queries.dim {
        bail!("base has dimension {}, queries {}", base.dim, queries.dim);
    }
    let dim = base.dim;
    let n = base.rows();
    let nq = args.nq.min(queries.rows());
    let qs = &queries.data[..nq * dim];
    let ids: Vec<u64> = (0..n as u64).collect();
    let build_pool =
        rayon::ThreadPoolBuilder::new().num_threads(args.build_threads.unwrap_or(0)).build().context("thread pool")?;
    let t = Instant::now();
    let index = build_pool.install(|| Index::build(&IndexConfig::default(), dim, &base.data, &ids))?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!(
        "built {n} x {dim} in {build_s:.1} s: {} fine clusters, default nprobe {}, isa {}",
        index.n_fine(),
        index.default_nprobe(),
        index.isa()
    );

    // The correlated attribute: each row's cluster in an independent k-means (another seed and count,
    // no calibration), so that it is not the index's own partition.
    let labels_cfg =
        IndexConfig { target_recall: 0.0, refine_iters: 0, ..IndexConfig::default() }.n_fine(args.labels).seed(0x1abe1);
    let labelled = build_pool.install(|| Index::build(&labels_cfg, dim, &base.data, &ids))?;
    let groups: Vec<Vec<u64>> = labelled.parts().clusters.iter().map(|c| c.ids.clone()).collect();
    drop(labelled);

    let mut filters: Vec<(String, f64, IdSet)> = Vec::new();
    for &share in &args.shares {
        let cut = (share * u64::MAX as f64) as u64;
        let rows: Vec<u64> =
            ids.iter().copied().filter(|&r| (r ^ 0x5eed).wrapping_mul(0x9E37_79B9_7F4A_7C15) < cut).collect();
        filters.push((format!("random {share}"), share, IdSet::new(rows, n)));
    }
    for &share in &args.shares {
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64((share * 1e6) as u64));
        let mut rows = Vec::new();
        for g in order {
            if rows.len() as f64 >= share * n as f64 {
                break;
            }
            rows.extend_from_slice(&groups[g]);
        }
        filters.push((format!("label {share}"), share, IdSet::new(rows, n)));
    }

    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().context("thread pool")?;
    let params = SearchParams::default();
    let exact_plain = build_pool.install(|| index.search_batch(qs, args.k, Lod::Exact, &params))?;
    let plain_truth: Vec<Vec<u64>> = exact_plain.iter().map(|h| h.iter().map(|h| h.id).collect()).collect();
    let (pw, pc, plain) = timed(|| Ok(pool.install(|| index.search_batch(qs, args.k, lod, &params))?))?;
    let unfiltered_recall = recall(&plain, &plain_truth, args.k);
    println!(
        "unfiltered {lod}: recall@{} {unfiltered_recall:.4}, {:.0} QPS, {:.0} QPS per CPU s",
        args.k,
        nq as f64 / pw,
        nq as f64 / pc
    );
    println!(
        "\n| filter | widen | matches | recall@{} | batch QPS ({} thr) | per CPU s | single QPS | per CPU s | single recall | single resolved QPS | per CPU s | its recall | plans | clusters probed | rows scored |",
        args.k, args.threads
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut points = Vec::new();
    let mut export = Export { k: args.k, nq, filters: Vec::new() };
    for (name, share, f) in &filters {
        let truth_hits = build_pool.install(|| index.search_batch_filtered(qs, args.k, Lod::Exact, &params, f))?;
        let truth: Vec<Vec<u64>> = truth_hits.iter().map(|h| h.iter().map(|h| h.id).collect()).collect();
        for (wi, &widen) in args.widen.iter().enumerate() {
            let opts = FilterOptions { widen, ..FilterOptions::default() };
            let (bw, bc, batch) = timed(|| {
                let out = pool.install(|| index.search_batch_filtered_planned(qs, args.k, lod, &params, f, opts))?;
                Ok(out.into_iter().map(|r| r.0).collect::<Vec<_>>())
            })?;
            let (sw, sc, single) = if wi == 0 {
                timed(|| {
                    pool.install(|| {
                        let mut out = Vec::with_capacity(nq);
                        for q in qs.chunks_exact(dim) {
                            out.push(index.search_filtered(q, args.k, lod, &params, f)?);
                        }
                        Ok::<_, m2m_index::Error>(out)
                    })
                    .map_err(anyhow::Error::from)
                })?
            } else {
                (f64::NAN, f64::NAN, Vec::new())
            };
            let (rw, rc, resolved) = if wi == 0 {
                timed(|| {
                    pool.install(|| {
                        let r = index.resolve_filter(f);
                        let mut out = Vec::with_capacity(nq);
                        for q in qs.chunks_exact(dim) {
                            out.push(index.search_resolved(q, args.k, lod, &params, &r, opts)?.0);
                        }
                        Ok::<_, m2m_index::Error>(out)
                    })
                    .map_err(anyhow::Error::from)
                })?
            } else {
                (f64::NAN, f64::NAN, Vec::new())
            };
            let planned = pool.install(|| index.search_batch_filtered_planned(qs, args.k, lod, &params, f, opts))?;
            let mut plans: BTreeMap<String, usize> = BTreeMap::new();
            for (_, s) in &planned {
                *plans.entry(s.plan.name().to_string()).or_default() += 1;
            }
            let probed = planned.iter().map(|r| r.1.clusters_probed).sum::<usize>() as f64 / nq as f64;
            let scored = planned.iter().map(|r| r.1.rows_scored).sum::<usize>() as f64 / nq as f64;
            let p = Point {
                filter: name.clone(),
                widen,
                share: *share,
                matches: f.ids().len(),
                recall: recall(&batch, &truth, args.k),
                batch_qps: nq as f64 / bw,
                batch_cpu_qps: nq as f64 / bc,
                single_recall: if single.is_empty() { f64::NAN } else { recall(&single, &truth, args.k) },
                single_qps: nq as f64 / sw,
                single_cpu_qps: nq as f64 / sc,
                resolved_recall: if resolved.is_empty() { f64::NAN } else { recall(&resolved, &truth, args.k) },
                resolved_qps: nq as f64 / rw,
                resolved_cpu_qps: nq as f64 / rc,
                plans,
                mean_clusters_probed: probed,
                mean_rows_scored: scored,
            };
            let plans_shown: Vec<String> = p.plans.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "| {} | {} | {} | {:.4} | {:.0} | {:.0} | {:.0} | {:.0} | {:.4} | {:.0} | {:.0} | {:.4} | {} | {:.0} | {:.0} |",
                p.filter,
                p.widen,
                p.matches,
                p.recall,
                p.batch_qps,
                p.batch_cpu_qps,
                p.single_qps,
                p.single_cpu_qps,
                p.single_recall,
                p.resolved_qps,
                p.resolved_cpu_qps,
                p.resolved_recall,
                plans_shown.join(", "),
                p.mean_clusters_probed,
                p.mean_rows_scored
            );
            points.push(p);
        }
        if args.export.is_some() {
            export.filters.push(ExportFilter { name: name.clone(), rows: f.ids().to_vec(), truth });
        }
    }
    let report = Report {
        base: args.base.display().to_string(),
        n,
        dim,
        queries: nq,
        k: args.k,
        threads: args.threads,
        lod: lod.to_string(),
        n_fine: index.n_fine(),
        default_nprobe: index.default_nprobe(),
        build_s,
        isa: index.isa().to_string(),
        unfiltered_recall,
        unfiltered_qps: nq as f64 / pw,
        unfiltered_cpu_qps: nq as f64 / pc,
        points,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.export {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("filters.json");
        std::fs::write(&path, serde_json::to_string(&export)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
