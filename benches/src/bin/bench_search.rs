//! The retrieval benchmark of m2m-index: `cargo xtask bench search --base B --queries Q [--truth T]
//! [--metric cosine|ip|l2] [--k 10] [--threads 1] [--isa scalar|avx2|avx512|neon] [--json OUT]`.
//!
//! Builds the index (reporting build seconds), then sweeps LOD 0, LOD 1 and LOD 2 over their settings plus
//! exact search, and reports for each point recall@k against the truth (computed exactly when no truth
//! file is given), batch QPS on `--threads` threads, and one-query-at-a-time p50/p95/p99 latency in
//! microseconds: a markdown table on stdout, and JSON with `--json`.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports to its terminal")]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use m2m_index::{CodeKind, Hit, Index, IndexConfig, Lod, Metric, ProbeRule, Scratch, SearchParams};
use m2m_splat::{Vectors, read_vectors};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Recall / QPS / latency sweep of m2m-index on vector files")]
struct Args {
    /// Base vectors (.fvecs or .npy).
    #[arg(long, required_unless_present = "digits")]
    base: Option<PathBuf>,
    /// Query vectors (.fvecs or .npy).
    #[arg(long, required_unless_present = "digits")]
    queries: Option<PathBuf>,
    /// Instead of files: the built-in digits projected to S^639, this many base rows and 1,000 queries.
    #[arg(long, conflicts_with_all = ["base", "queries", "truth"])]
    digits: Option<usize>,
    /// Exact neighbour ids per query (.ivecs or .npy); computed when absent.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Metric: cosine, ip or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Threads for batch search.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads for the build (default: all cores).
    #[arg(long)]
    build_threads: Option<usize>,
    /// Queries timed one at a time for the latency percentiles.
    #[arg(long, default_value_t = 1000)]
    nq_lat: usize,
    /// nprobe values for LOD 1 and LOD 2 (comma separated; 0 = the index's calibrated default).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0, 16, 32, 48, 64, 96, 128, 192, 256])]
    nprobe: Vec<usize>,
    /// Re-rank depths for LOD 2 (comma separated; 0 = max(4k, 40)).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0])]
    rerank: Vec<usize>,
    /// Override the number of fine clusters.
    #[arg(long)]
    n_fine: Option<usize>,
    /// Override the number of coarse clusters.
    #[arg(long)]
    n_coarse: Option<usize>,
    /// Coarse clusters probed (0 = rank every fine centroid).
    #[arg(long, default_value_t = 0)]
    coarse_probe: usize,
    /// Global refinement iterations of the fine centroids (default: the index's default).
    #[arg(long)]
    refine_iters: Option<usize>,
    /// Compressed codes: sq4, sq8, or pq4:D (4-bit product quantisation, D dimensions per sub-code),
    /// pq4a:D (the same with ScaNN's anisotropic encoding), or auto (`CodeKind::for_dim`, the facade's
    /// default).
    #[arg(long, default_value = "sq4")]
    codes: String,
    /// Levels to sweep (comma separated: 0, 1, 2, exact).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["0".to_string(), "1".into(), "2".into(), "exact".into()])]
    lods: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Force the kernels' instruction set (scalar, avx2, avx512, neon) for the build and the searches, as
    /// `M2M_ISA` does; one this CPU lacks is refused. Default: `M2M_ISA`, else the best detected.
    #[arg(long)]
    isa: Option<String>,
    /// After the build, write the index's full vectors (cluster-major) as an m2m-tier section file in
    /// this directory and search with them read from the memory-mapped file (`Index::attach_cold`), as a
    /// stored engine does, instead of from the index's RAM copies.
    #[arg(long)]
    cold: Option<PathBuf>,
    /// After the build, add a spilled secondary assignment (SOAR) with this penalty (`Index::spill`; 1 is
    /// the usual value) and recalibrate; its time is printed apart from the build's.
    #[arg(long)]
    spill: Option<f32>,
    /// After the build (and any spill), add LOD 2's 1-bit first stage with this confidence
    /// (`Index::enable_bitq`; RaBitQ's 1.9 is `m2m_index::BITQ_EPS`); its time is printed apart, and
    /// each LOD 2 point prints the codes per query that passed it.
    #[arg(long)]
    bitq: Option<f32>,
    /// Recall@10 the build calibrates the default nprobe (and the adaptive probe rule) to (default: the
    /// index's default, 0.95).
    #[arg(long)]
    target_recall: Option<f32>,
    /// The probe of LOD 2 at nprobe 0: `auto` (what the calibration chose: the adaptive rule where it
    /// pays, else the fixed nprobe) or `fixed` (the calibrated fixed nprobe, the rule removed: the old
    /// path, for A/B).
    #[arg(long, default_value = "auto")]
    probe: String,
    /// Extra LOD 2 points with the adaptive probe rule of these margins (comma separated) and the cap
    /// `--max-probe`, for recall / QPS curves of the rule.
    #[arg(long, value_delimiter = ',')]
    margins: Vec<f32>,
    /// The cap of the `--margins` points (default: the calibrated rule's cap, else twice the default
    /// nprobe).
    #[arg(long)]
    max_probe: Option<usize>,
}

#[derive(Serialize)]
struct Point {
    lod: String,
    params: serde_json::Value,
    recall: f64,
    /// Mean codes scanned and clusters probed per query (LOD 1 and 2).
    codes_per_query: f64,
    clusters_per_query: f64,
    qps: f64,
    /// Queries per second of this process's CPU time (see [`cpu_seconds`]).
    cpu_qps: f64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct Report {
    base: String,
    codes: String,
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    threads: usize,
    metric: String,
    n_fine: usize,
    n_coarse: usize,
    hot_bytes: usize,
    build_s: f64,
    isa: String,
    points: Vec<Point>,
}

fn recall(results: &[Vec<Hit>], truth: &[Vec<u64>], k: usize) -> f64 {
    let mut found = 0usize;
    for (r, t) in results.iter().zip(truth) {
        let t = &t[..k.min(t.len())];
        found += r.iter().filter(|h| t.contains(&h.id)).count();
    }
    found as f64 / (results.len() * k) as f64
}

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat` in clock ticks
/// of 1/100 s. On a machine shared with other jobs, wall-clock QPS falls whenever the scheduler lends the
/// core to someone else; QPS per CPU second does not, so both are reported. `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the command name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(name) = &args.isa {
        // Refused here, with the reason, before anything runs on it.
        let isa = m2m_index::kernels::Isa::parse(name)?;
        // SAFETY: nothing else runs yet (no thread pool has been built and no other thread started), so no
        // thread can read the environment concurrently. Every kernel then reads the forced choice once.
        unsafe { std::env::set_var(m2m_index::kernels::ISA_ENV, isa.name()) };
    }
    if args.k == 0 || args.threads == 0 {
        bail!("--k and --threads must be at least 1");
    }
    let (base, queries, base_name) = match (&args.digits, &args.base, &args.queries) {
        (Some(rows), _, _) => {
            let d = m2m_splat::digits_on_sphere(&m2m_splat::DigitsConfig::default().rows(*rows).queries(1_000))?;
            let dim = d.dim;
            (Vectors { dim, data: d.base }, Vectors { dim, data: d.queries }, format!("digits-S639-{rows}"))
        }
        (None, Some(b), Some(q)) => (read_vectors::<f32>(b)?, read_vectors::<f32>(q)?, b.display().to_string()),
        _ => bail!("give --base and --queries, or --digits N"),
    };
    if base.dim != queries.dim {
        bail!("base has dimension {}, queries {}", base.dim, queries.dim);
    }
    let dim = base.dim;
    let nq = queries.rows();
    let ids: Vec<u64> = (0..base.rows() as u64).collect();
    let mut config = IndexConfig::default().metric(args.metric);
    config.n_fine = args.n_fine;
    config.n_coarse = args.n_coarse;
    if let Some(r) = args.refine_iters {
        config.refine_iters = r;
    }
    config.codes = if args.codes == "auto" { CodeKind::for_dim(dim) } else { args.codes.parse()? };
    if let Some(r) = args.target_recall {
        config.target_recall = r;
    }
    println!("codes: {:?}", config.codes);

    let build_pool =
        rayon::ThreadPoolBuilder::new().num_threads(args.build_threads.unwrap_or(0)).build().context("thread pool")?;
    let t = Instant::now();
    let mut index = build_pool.install(|| Index::build(&config, dim, &base.data, &ids))?;
    let build_s = t.elapsed().as_secs_f64();
    if let Some(lambda) = args.spill {
        let t = Instant::now();
        let spilled = build_pool.install(|| index.spill(lambda))?;
        eprintln!("spilled {spilled} members (lambda {lambda}) in {:.2} s, recalibrated", t.elapsed().as_secs_f64());
    }
    if let Some(eps) = args.bitq {
        let t = Instant::now();
        let coded = build_pool.install(|| index.enable_bitq(eps))?;
        eprintln!("1-bit stage: {coded} members coded (eps {eps}) in {:.2} s", t.elapsed().as_secs_f64());
    }
    if let Some(dir) = &args.cold {
        let path = dir.join("bench-search.vec");
        let mut w = m2m_tier::SectionWriter::create(&path)?;
        w.begin("vectors", m2m_tier::SectionKind::F32)?;
        for f in 0..index.n_fine() {
            w.write_values(index.cluster_vectors(f))?;
        }
        w.finish()?;
        let file = std::sync::Arc::new(m2m_tier::SectionFile::open(&path)?);
        index.attach_cold(m2m_index::ColdRows::new(file.shared_f32("vectors")?))?;
        eprintln!("full vectors read from {} (mapped)", path.display());
    }
    match args.probe.as_str() {
        "auto" => {}
        "fixed" => index.set_probe_rule(None)?,
        other => bail!("--probe {other}: auto or fixed"),
    }
    eprintln!("probe rule: {:?}", index.probe_rule());
    eprintln!("isa: {} (detected best: {})", index.isa(), m2m_index::kernels::Isa::detected());
    eprintln!(
        "built {} x {dim} in {build_s:.2} s: {} coarse, {} fine clusters, {:.1} MB hot, default nprobe {} \
         and re-rank depth {} (calibrated for recall {})",
        base.rows(),
        index.n_coarse(),
        index.n_fine(),
        index.hot_bytes() as f64 / 1e6,
        index.default_nprobe(),
        index.default_rerank(),
        config.target_recall
    );

    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().context("thread pool")?;
    let truth: Vec<Vec<u64>> = match &args.truth {
        Some(path) => {
            let t = read_vectors::<i32>(path)?;
            if t.rows() != nq || t.dim < args.k {
                bail!("truth has {} rows of {} ids; {nq} rows of at least {} are needed", t.rows(), t.dim, args.k);
            }
            t.data.chunks_exact(t.dim).map(|r| r.iter().map(|&i| i as u64).collect()).collect()
        }
        None => {
            let exact =
                pool.install(|| index.search_batch(&queries.data, args.k, Lod::Exact, &SearchParams::default()))?;
            exact.into_iter().map(|hits| hits.into_iter().map(|h| h.id).collect()).collect()
        }
    };

    let want = |l: &str| args.lods.iter().any(|x| x == l);
    // Each point with the probe rule it runs under (LOD 2 at nprobe 0 follows it).
    let calibrated = index.probe_rule();
    let mut settings: Vec<(Lod, SearchParams, Option<ProbeRule>)> = Vec::new();
    if want("0") {
        let params = SearchParams { coarse_probe: args.coarse_probe, ..SearchParams::default() };
        settings.push((Lod::Centroids, params, calibrated));
    }
    for &nprobe in args.nprobe.iter().filter(|_| want("1")) {
        settings.push((Lod::Codes, SearchParams { nprobe, coarse_probe: args.coarse_probe, rerank: 0 }, calibrated));
    }
    for &nprobe in args.nprobe.iter().filter(|_| want("2")) {
        for &rerank in &args.rerank {
            let params = SearchParams { nprobe, coarse_probe: args.coarse_probe, rerank };
            settings.push((Lod::Rerank, params, calibrated));
        }
    }
    let max_probe = args
        .max_probe
        .unwrap_or_else(|| calibrated.map_or((2 * index.default_nprobe()).min(index.n_fine()), |r| r.max_probe));
    for &margin in &args.margins {
        for &rerank in &args.rerank {
            let params = SearchParams { nprobe: 0, coarse_probe: args.coarse_probe, rerank };
            settings.push((Lod::Rerank, params, Some(ProbeRule { max_probe, margin })));
        }
    }
    if want("exact") {
        settings.push((Lod::Exact, SearchParams::default(), calibrated));
    }

    let mut points = Vec::new();
    println!(
        "| lod | nprobe | rerank | recall@{} | codes/q | clusters/q | QPS ({} thr) | QPS per CPU s | p50 us | p95 us | p99 us |",
        args.k, args.threads
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (lod, params, rule) in settings {
        index.set_probe_rule(rule)?;
        let index = &index;
        // nprobe 0 asks for the calibrated default (or the rule): report which.
        let shown = |nprobe: usize| -> serde_json::Value {
            match (nprobe, index.probe_rule()) {
                (0, Some(r)) if lod == Lod::Rerank => format!("rule:{}/{}", r.max_probe, r.margin).into(),
                (0, _) => format!("auto:{}", index.default_nprobe()).into(),
                _ => nprobe.into(),
            }
        };
        // Batch: best of three passes over all queries.
        let mut best = f64::INFINITY;
        let mut best_cpu = f64::INFINITY;
        let mut results = Vec::new();
        for _ in 0..3 {
            let (t, c) = (Instant::now(), cpu_seconds());
            results = pool.install(|| index.search_batch(&queries.data, args.k, lod, &params))?;
            best = best.min(t.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (c, cpu_seconds()) {
                best_cpu = best_cpu.min((c1 - c0).max(0.01));
            }
        }
        let r = recall(&results, &truth, args.k);
        // Work per query, counted in one untimed pass.
        let (mut codes, mut clusters, mut refined) = (0usize, 0usize, 0usize);
        if matches!(lod, Lod::Codes | Lod::Rerank) {
            let mut scratch = Scratch::default();
            for q in queries.data.chunks_exact(dim) {
                std::hint::black_box(index.search_with(q, args.k, lod, &params, &mut scratch)?);
                codes += scratch.scanned_codes();
                clusters += scratch.probed_clusters();
                refined += scratch.refined_codes();
            }
            if index.bitq_eps().is_some() && lod == Lod::Rerank {
                eprintln!(
                    "lod 2 nprobe {}: {:.0} codes/q passed the 1-bit stage",
                    params.nprobe,
                    refined as f64 / nq as f64
                );
            }
        }
        // Latency: one query at a time on this thread.
        let mut scratch = Scratch::default();
        let mut lat: Vec<f64> = Vec::with_capacity(args.nq_lat);
        for q in queries.data.chunks_exact(dim).cycle().take(args.nq_lat.max(1)) {
            let t = Instant::now();
            let hits = index.search_with(q, args.k, lod, &params, &mut scratch)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(hits);
        }
        lat.sort_by(f64::total_cmp);
        let (name, json_params) = match lod {
            Lod::Centroids => ("0", serde_json::json!({})),
            Lod::Codes => ("1", serde_json::json!({ "nprobe": shown(params.nprobe) })),
            Lod::Rerank => ("2", serde_json::json!({ "nprobe": shown(params.nprobe), "rerank": params.rerank })),
            Lod::Exact => ("exact", serde_json::json!({})),
        };
        let p = Point {
            lod: name.into(),
            params: json_params,
            recall: r,
            codes_per_query: codes as f64 / nq as f64,
            clusters_per_query: clusters as f64 / nq as f64,
            qps: nq as f64 / best,
            cpu_qps: if best_cpu.is_finite() { nq as f64 / best_cpu } else { f64::NAN },
            p50_us: percentile(&lat, 0.5),
            p95_us: percentile(&lat, 0.95),
            p99_us: percentile(&lat, 0.99),
        };
        let show = |v: Option<&serde_json::Value>| {
            v.map_or("-".to_string(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        };
        println!(
            "| {} | {} | {} | {:.4} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            p.lod,
            show(p.params.get("nprobe")),
            show(p.params.get("rerank")),
            p.recall,
            p.codes_per_query,
            p.clusters_per_query,
            p.qps,
            p.cpu_qps,
            p.p50_us,
            p.p95_us,
            p.p99_us
        );
        points.push(p);
    }
    let report = Report {
        base: base_name,
        codes: args.codes.clone(),
        n: base.rows(),
        dim,
        queries: nq,
        k: args.k,
        threads: args.threads,
        metric: args.metric.to_string(),
        n_fine: index.n_fine(),
        n_coarse: index.n_coarse(),
        hot_bytes: index.hot_bytes(),
        build_s,
        isa: index.isa().to_string(),
        points,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("\nbuild_s {build_s:.3}\nisa {}", index.isa());
    Ok(())
}
