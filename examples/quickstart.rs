//! Quick start: the built-in digits projected to S^639 through the whole engine.
//!
//! `cargo run --release --example quickstart`
//!
//! Generates the original project's benchmark shape (10,000 base rows and 1,000 held-out query rows on
//! the unit sphere in 640 dimensions), ingests it, builds the index (learning kappa and alpha), retrieves
//! one query at a time at LOD 0, 1, 2 and exact with recall against exact search and latency, then
//! streams one epoch to a training loop with importance sampling and Langevin augmentation.

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Result, ensure};
use m2m::{DataLoaderConfig, DigitsConfig, Lod, M2mConfig, create_m2m, digits_on_sphere};

fn main() -> Result<()> {
    let config = DigitsConfig::default();
    let t = Instant::now();
    let digits = digits_on_sphere(&config)?;
    let dim = digits.dim;
    let nq = digits.queries.len() / dim;
    println!("generated digits on S^{}: {} base + {nq} query rows in {:.1} ms", dim - 1, config.rows, ms(t));

    let mut engine = create_m2m(M2mConfig::default().dim(dim))?;
    let t = Instant::now();
    for batch in digits.base.chunks(1_000 * dim) {
        engine.add_splats(batch)?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("ingested {} splats in {:.1} ms: {:.0} splats/s", engine.len(), secs * 1e3, engine.len() as f64 / secs);

    // A batch with one NaN is refused whole, and nothing of it is kept.
    let mut bad = digits.queries[..4 * dim].to_vec();
    bad[2 * dim + 17] = f32::NAN;
    let err = engine.add_splats(&bad).expect_err("a NaN must be refused");
    println!("refused a bad batch: {err}; the engine still has {} splats", engine.len());
    ensure!(engine.len() == config.rows);

    let t = Instant::now();
    engine.build_index()?;
    let s = engine.stats();
    println!(
        "built the index in {:.0} ms: {:?} fine/coarse clusters; learned kappa mean {:.1} (range {:.1}..{:.1})",
        ms(t),
        (s.fine_clusters.unwrap_or(0), s.coarse_clusters.unwrap_or(0)),
        s.kappa_mean,
        s.kappa_min,
        s.kappa_max
    );

    // One query at a time, as the original benchmark did.
    let exact: Vec<HashSet<u64>> = digits
        .queries
        .chunks_exact(dim)
        .map(|q| engine.retrieve(q, 10, Lod::Exact).map(|h| h.iter().map(|x| x.id).collect()))
        .collect::<Result<_, _>>()?;
    for (name, lod) in [("LOD 0", Lod::Centroids), ("LOD 1", Lod::Codes), ("LOD 2", Lod::Rerank), ("exact", Lod::Exact)]
    {
        let mut lat = Vec::with_capacity(nq);
        let mut found = 0;
        for (q, truth) in digits.queries.chunks_exact(dim).zip(&exact) {
            let t = Instant::now();
            let hits = engine.retrieve(q, 10, lod)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
        }
        lat.sort_by(f64::total_cmp);
        let mean = lat.iter().sum::<f64>() / nq as f64;
        println!(
            "{name:>5}: recall@10 {:.4}, {:.0} QPS one query at a time, p50 {:.1} us, p99 {:.1} us",
            found as f64 / (10 * nq) as f64,
            1e6 / mean,
            lat[nq / 2],
            lat[nq * 99 / 100]
        );
    }

    // One epoch to a training loop: importance sampling by the SOC controller, one Langevin sample (5
    // steps) per real row.
    for (label, generate) in [("importance sampling", false), ("importance sampling + Langevin", true)] {
        let cfg = DataLoaderConfig {
            batch_size: 256,
            importance_sampling: true,
            generate_samples: generate,
            ..Default::default()
        };
        let t = Instant::now();
        let (mut rows, mut generated, mut weight) = (0usize, 0usize, 0.0f64);
        for batch in engine.export_to_dataloader(&cfg)? {
            let batch = batch?;
            rows += batch.len();
            generated += batch.generated.iter().filter(|g| **g).count();
            weight += batch.weights.iter().map(|&w| f64::from(w)).sum::<f64>();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "data lake, {label}: {rows} rows ({generated} generated) in {:.0} ms: {:.0} splats/s; mean importance weight {:.3}",
            secs * 1e3,
            rows as f64 / secs,
            weight / rows as f64
        );
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
