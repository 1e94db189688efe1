//! Quick start: the built-in digits projected to S^639 through the whole engine.
//!
//! `cargo run --release --example quickstart`
//!
//! Generates the original project's benchmark shape (10,000 base rows and 1,000 held-out query rows on
//! the unit sphere in 640 dimensions), ingests it, builds the index (learning kappa and alpha), retrieves
//! one query at a time at LOD 0, 1, 2 and exact with recall against exact search and latency, then
//! streams one epoch to a training loop with importance sampling and Langevin augmentation, and reports
//! what the samples are worth: the importance weights' range and effective sample size, the share of
//! kappa clipped, and the generated rows' fidelity to their seeds.

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

    // One epoch to a training loop: importance sampling by the SOC controller, one Langevin sample (the
    // lake's default steps) per real row.
    for (label, generate) in [("importance sampling", false), ("importance sampling + Langevin", true)] {
        let cfg = DataLoaderConfig {
            batch_size: 256,
            importance_sampling: true,
            generate_samples: generate,
            ..Default::default()
        };
        let t = Instant::now();
        let (mut rows, mut generated) = (0usize, 0usize);
        let (mut seeds, mut samples) = (Vec::new(), Vec::new());
        for batch in engine.export_to_dataloader(&cfg)? {
            let batch = batch?;
            rows += batch.len();
            generated += batch.generated.iter().filter(|g| **g).count();
            // Keep the first 512 generated rows (with their seeds' ids) for the fidelity report.
            for i in (0..batch.len()).filter(|&i| batch.generated[i]) {
                if seeds.len() == 512 {
                    break;
                }
                seeds.push(batch.ids[i]);
                samples.extend_from_slice(&batch.mu[i * dim..(i + 1) * dim]);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "data lake, {label}: {rows} rows ({generated} generated) in {:.0} ms: {:.0} splats/s",
            secs * 1e3,
            rows as f64 / secs
        );
        if !seeds.is_empty() {
            // Generated rows are worth what their fidelity says; the labels are the digits'.
            let label = |id: u64| digits.base_labels.get(id as usize).map(|&l| u32::from(l));
            let f = engine.fidelity(&seeds, &samples, Some(&label))?;
            // Exact sums over every splat: 64 rows are enough for a median.
            let mut dropped = engine.routing_truncation(&samples[..64 * dim], Some(&seeds[..64]))?;
            dropped.sort_by(f64::total_cmp);
            println!(
                "  generated rows ({} measured): cosine to seed {:.3}; {:.1}% inside the seed's band of real neighbours (1st-16th); nearest real row has the seed's digit {:.1}% (real rows' own 1-NN: {:.1}%); {} copies (max cosine to a real row {:.4}); routed energy drops {:.2e} of the mixture (median of 64; max {:.2e})",
                f.rows,
                f.mean_cos_to_seed,
                100.0 * f.in_band,
                100.0 * f.label_agreement.unwrap_or(0.0),
                100.0 * f.real_label_agreement.unwrap_or(0.0),
                f.copies,
                f.max_cos_to_real,
                dropped[dropped.len() / 2],
                dropped[dropped.len() - 1]
            );
        }
    }
    // The sampling distribution, honestly: after the retrievals above (and no training feedback) the
    // weights are close to 1; `M2m::feedback` with a model's losses is what moves them.
    let w = engine.weight_report()?;
    println!(
        "importance weights: min {:.3}, max {:.3}, effective sample size {:.1}% of the draws; kappa clipped for {:.1}% of the splats",
        w.min,
        w.max,
        100.0 * w.ess_share,
        100.0 * engine.stats().kappa_clipped.unwrap_or(0.0)
    );
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
