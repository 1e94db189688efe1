//! Regenerates `BENCHMARKS.md` and `BENCHMARKS-recall-qps.svg` (run by `cargo xtask bench`, or alone by
//! `cargo xtask bench report`): the engine end to end on the digits shape (10,000 x 640, 1,000 held-out
//! queries) and on `../shared/data/minilm70k` when present, beside the original project's published
//! figures.
//!
//! For each data set: in-memory ingest (median of 3), index build (with kappa learning), recall@10 against
//! exact search, batch QPS on one thread and one-query-at-a-time p50/p95/p99 at LOD 0, 1, 2 and exact, and
//! the data lake's splats/s plain, importance-sampled and with Langevin augmentation (5 steps).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a report generator writes files and its terminal")]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use m2m::{DataLoaderConfig, DigitsConfig, Lod, M2m, M2mConfig, Source, create_m2m, digits_on_sphere};
use m2m_index::SearchParams;
use plotters::prelude::*;

/// The original project's published CPU figures (10,000 x 640).
const ORIGINAL_QPS: f64 = 62.5;
const ORIGINAL_MEAN_MS: f64 = 16.00;
const ORIGINAL_P95_MS: f64 = 19.55;
const ORIGINAL_P99_MS: f64 = 22.55;
const ORIGINAL_INGEST: f64 = 80_260.0;
const ORIGINAL_LAKE_SOC: f64 = 49_368.0;
const ORIGINAL_LAKE_LANGEVIN: f64 = 34_993.0;

struct LodRow {
    name: &'static str,
    recall: f64,
    batch_qps: f64,
    mean_us: f64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
}

struct Report {
    name: String,
    rows: usize,
    dim: usize,
    ingest: f64,
    build_s: f64,
    lods: Vec<LodRow>,
    lake_plain: f64,
    lake_importance: f64,
    lake_langevin: f64,
    /// The lake from the tiers: plain from cold pages (dropped first), and with Langevin.
    lake_tiers_cold: f64,
    lake_tiers_langevin: f64,
    curve: Vec<(f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(name: &str, base: &[f32], queries: &[f32], dim: usize) -> Result<Report> {
    let k = 10;
    let nq = queries.len() / dim;
    eprintln!("{name}: ingest");
    let mut ingest = Vec::new();
    let mut engine: Option<M2m> = None;
    for _ in 0..3 {
        let mut e = create_m2m(M2mConfig::default().dim(dim))?;
        let t = Instant::now();
        for chunk in base.chunks(10_000 * dim) {
            e.add_splats(chunk)?;
        }
        ingest.push(e.len() as f64 / t.elapsed().as_secs_f64());
        engine = Some(e);
    }
    let mut engine = engine.context("an engine")?;
    eprintln!("{name}: build");
    let t = Instant::now();
    engine.build_index()?;
    let build_s = t.elapsed().as_secs_f64();

    let exact: Vec<HashSet<u64>> =
        engine.retrieve_batch(queries, k, Lod::Exact)?.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
    let recall = |hits: &[Vec<m2m::Hit>]| {
        let found: usize = hits.iter().zip(&exact).map(|(h, e)| h.iter().filter(|x| e.contains(&x.id)).count()).sum();
        found as f64 / (k * nq) as f64
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut lods = Vec::new();
    for (label, lod) in
        [("LOD 0", Lod::Centroids), ("LOD 1", Lod::Codes), ("LOD 2", Lod::Rerank), ("exact", Lod::Exact)]
    {
        eprintln!("{name}: {label}");
        let t = Instant::now();
        let hits = pool.install(|| engine.retrieve_batch(queries, k, lod))?;
        let batch_qps = nq as f64 / t.elapsed().as_secs_f64();
        let mut lat = Vec::with_capacity(nq);
        for q in queries.chunks_exact(dim) {
            let t = Instant::now();
            engine.retrieve(q, k, lod)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mean_us = lat.iter().sum::<f64>() / nq as f64;
        lat.sort_by(f64::total_cmp);
        let pct = |p: usize| lat[(nq * p / 100).min(nq - 1)];
        lods.push(LodRow {
            name: label,
            recall: recall(&hits),
            batch_qps,
            mean_us,
            p50_us: pct(50),
            p95_us: pct(95),
            p99_us: pct(99),
        });
    }

    // Recall against QPS for LOD 2 over nprobe (the plot).
    let index = engine.index().context("index")?;
    let mut curve = Vec::new();
    for nprobe in [2usize, 4, 8, 16, 32, 64, 128] {
        let params = SearchParams { nprobe, ..SearchParams::default() };
        let t = Instant::now();
        let hits = pool.install(|| index.search_batch(queries, k, Lod::Rerank, &params))?;
        let qps = nq as f64 / t.elapsed().as_secs_f64();
        let found: usize = hits.iter().zip(&exact).map(|(h, e)| h.iter().filter(|x| e.contains(&x.id)).count()).sum();
        curve.push((found as f64 / (k * nq) as f64, qps));
    }

    eprintln!("{name}: data lake");
    let lake = |cfg: DataLoaderConfig| lake_rate(&engine, &cfg);
    let epochs = 3;
    let lake_plain = lake(DataLoaderConfig { epochs, ..Default::default() })?;
    let lake_importance = lake(DataLoaderConfig { epochs, importance_sampling: true, ..Default::default() })?;
    // Langevin epochs are short (tens of ms on the digits): three of them, the median of three runs.
    let langevin = DataLoaderConfig { epochs, importance_sampling: true, generate_samples: true, ..Default::default() };
    let lake_langevin = median((0..3).map(|_| lake(langevin.clone())).collect::<Result<Vec<_>>>()?);

    // The same lake from the tiers: an engine with a data directory (every row flushed into segments),
    // its segments' pages dropped from the page cache before the plain epoch.
    eprintln!("{name}: data lake from the tiers");
    let dir = tempfile::tempdir()?;
    let mut stored = M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(dim).data_dir(dir.path()) })?;
    for chunk in base.chunks(10_000 * dim) {
        stored.add_splats(chunk)?;
    }
    stored.flush()?;
    stored.build_index()?;
    let drop_pages = || -> Result<()> {
        for entry in std::fs::read_dir(dir.path())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                m2m_tier::Segment::open(&path)?.release_pages()?;
            }
        }
        Ok(())
    };
    let tiers = |cfg: DataLoaderConfig| lake_rate(&stored, &DataLoaderConfig { source: Source::Tiers, ..cfg });
    drop_pages()?;
    let lake_tiers_cold = tiers(DataLoaderConfig::default())?;
    let lake_tiers_langevin = median((0..3).map(|_| tiers(langevin.clone())).collect::<Result<Vec<_>>>()?);
    Ok(Report {
        name: name.into(),
        rows: base.len() / dim,
        dim,
        ingest: median(ingest),
        build_s,
        lods,
        lake_plain,
        lake_importance,
        lake_langevin,
        lake_tiers_cold,
        lake_tiers_langevin,
        curve,
    })
}

/// Rows per second of one export, generated ones included.
fn lake_rate(engine: &M2m, cfg: &DataLoaderConfig) -> Result<f64> {
    let t = Instant::now();
    let mut rows = 0usize;
    for b in engine.export_to_dataloader(cfg)? {
        rows += b?.len();
    }
    Ok(rows as f64 / t.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores available; kernels: {:?}", m2m_index::kernels::Isa::best())
}

fn plot(reports: &[Report], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_qps = reports.iter().flat_map(|r| r.curve.iter().map(|p| p.1)).fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("M2M LOD 2: recall@10 against queries per second (1 thread)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..1.0f64, (100.0f64..max_qps * 1.5).log_scale())?;
    chart.configure_mesh().x_desc("recall@10").y_desc("QPS").draw()?;
    for (i, r) in reports.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(r.curve.iter().copied(), color.stroke_width(2)))?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart.draw_series(r.curve.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

fn ratio(ours: f64, theirs: f64) -> String {
    format!("{:.0}x", ours / theirs)
}

fn markdown(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` (`benches/src/bin/bench_report.rs`); do not edit by hand. Every figure below\n\
         was measured by that run on: {}.\n",
        machine()
    );
    for r in reports {
        let _ = writeln!(s, "## {} ({} x {})\n", r.name, r.rows, r.dim);
        let _ = writeln!(s, "- In-memory ingest (median of 3): {:.0} splats/s", r.ingest);
        let _ = writeln!(s, "- Index build, with kappa and alpha learned from neighbours: {:.2} s\n", r.build_s);
        let _ = writeln!(
            s,
            "| Level | recall@10 | batch QPS (1 thread) | mean / p50 / p95 / p99 one query at a time (us) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for l in &r.lods {
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} |",
                l.name, l.recall, l.batch_qps, l.mean_us, l.p50_us, l.p95_us, l.p99_us
            );
        }
        let _ = writeln!(
            s,
            "\nData lake, splats/s (rows streamed, generated ones included; 3 epochs): plain {:.0}; \
             importance-sampled {:.0}; importance-sampled with one Langevin sample (5 steps) per row {:.0} \
             (median of 3 runs).\n",
            r.lake_plain, r.lake_importance, r.lake_langevin
        );
        let _ = writeln!(
            s,
            "The same lake from the tiers (an engine with a data directory: segments read through the warm \
             cache with prefetch, in block order): plain, pages dropped from the page cache first, {:.0}; \
             importance-sampled with Langevin {:.0} (median of 3 runs).\n",
            r.lake_tiers_cold, r.lake_tiers_langevin
        );
    }
    if let Some(d) = reports.first() {
        let lod2 = d.lods.iter().find(|l| l.name == "LOD 2");
        if let Some(l) = lod2 {
            let qps = 1e6 / l.mean_us;
            let _ = writeln!(s, "## Against the original project's published CPU figures ({})\n", d.name);
            let _ = writeln!(s, "| Figure | original | M2M | ratio |");
            let _ = writeln!(s, "|---|---|---|---|");
            let _ = writeln!(
                s,
                "| retrieval, one query at a time (LOD 2) | {ORIGINAL_QPS} QPS | {qps:.0} QPS | {} |",
                ratio(qps, ORIGINAL_QPS)
            );
            let _ = writeln!(
                s,
                "| mean latency | {ORIGINAL_MEAN_MS} ms | {:.3} ms | {} |",
                l.mean_us / 1e3,
                ratio(ORIGINAL_MEAN_MS * 1e3, l.mean_us)
            );
            let _ = writeln!(
                s,
                "| p95 latency | {ORIGINAL_P95_MS} ms | {:.3} ms | {} |",
                l.p95_us / 1e3,
                ratio(ORIGINAL_P95_MS * 1e3, l.p95_us)
            );
            let _ = writeln!(
                s,
                "| p99 latency | {ORIGINAL_P99_MS} ms | {:.3} ms | {} |",
                l.p99_us / 1e3,
                ratio(ORIGINAL_P99_MS * 1e3, l.p99_us)
            );
            let _ = writeln!(
                s,
                "| ingest | {ORIGINAL_INGEST} splats/s | {:.0} splats/s | {} |",
                d.ingest,
                ratio(d.ingest, ORIGINAL_INGEST)
            );
            let _ = writeln!(
                s,
                "| data lake, SOC importance sampling | {ORIGINAL_LAKE_SOC} splats/s | {:.0} splats/s | {} |",
                d.lake_importance,
                ratio(d.lake_importance, ORIGINAL_LAKE_SOC)
            );
            let _ = writeln!(
                s,
                "| data lake, Langevin | {ORIGINAL_LAKE_LANGEVIN} splats/s | {:.0} splats/s | {} |",
                d.lake_langevin,
                ratio(d.lake_langevin, ORIGINAL_LAKE_LANGEVIN)
            );
            let _ = writeln!(
                s,
                "\nThe original's recall was not published; M2M's LOD 2 recall@10 on this set is {:.4}.\n",
                l.recall
            );
        }
    }
    let _ = writeln!(s, "![recall against QPS](BENCHMARKS-recall-qps.svg)");
    s
}

fn main() -> Result<()> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut reports = Vec::new();
    let digits = digits_on_sphere(&DigitsConfig::default())?;
    reports.push(run("digits on S^639", &digits.base, &digits.queries, digits.dim)?);
    let minilm = root.join("../shared/data/minilm70k/minilm70k");
    let (b, q) = (minilm.with_extension("base.fvecs"), minilm.with_extension("query.fvecs"));
    if b.exists() && q.exists() {
        let base = m2m_splat::read_vectors::<f32>(&b)?;
        let queries = m2m_splat::read_vectors::<f32>(&q)?;
        reports.push(run("minilm70k", &base.data, &queries.data, base.dim)?);
    } else {
        eprintln!("{} not found: the report covers the digits only", b.display());
    }
    plot(&reports, &root.join("BENCHMARKS-recall-qps.svg"))?;
    let md = markdown(&reports);
    std::fs::write(root.join("BENCHMARKS.md"), &md).context("writing BENCHMARKS.md")?;
    println!("{md}");
    Ok(())
}
