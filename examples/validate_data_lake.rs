//! Checks the data lake's promises on the built-in digits and prints OK or what failed: every splat once
//! per epoch (plain order), shards disjoint and together complete, the same batches for the same seed
//! and different ones for another, importance weights averaging to about 1, and generated rows marked.
//!
//! `cargo run --release --example validate_data_lake`

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::collections::HashSet;

use anyhow::Result;
use m2m::{DataLoaderConfig, DigitsConfig, M2m, M2mConfig, TrainingBatch, create_m2m, digits_on_sphere};

fn batches(engine: &M2m, cfg: &DataLoaderConfig) -> Result<Vec<TrainingBatch>> {
    Ok(engine.export_to_dataloader(cfg)?.collect::<Result<Vec<_>, _>>()?)
}

fn main() -> Result<()> {
    let digits = digits_on_sphere(&DigitsConfig { rows: 5_000, queries: 0, dim: 640, ..Default::default() })?;
    let mut engine = create_m2m(M2mConfig::default().dim(640))?;
    engine.add_splats(&digits.base)?;
    engine.build_index()?;
    let n = engine.len();
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(what);
        }
    };

    let plain = DataLoaderConfig { batch_size: 128, seed: 7, ..Default::default() };
    let epoch = batches(&engine, &plain)?;
    let ids: Vec<u64> = epoch.iter().flat_map(|b| b.ids.iter().copied()).collect();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    check(
        ids.len() == n && unique.len() == n,
        format!("coverage: {} rows, {} distinct, of {n}", ids.len(), unique.len()),
    );

    let mut shard_ids = Vec::new();
    for rank in 0..4 {
        let cfg = DataLoaderConfig { rank, world_size: 4, ..plain.clone() };
        shard_ids.push(batches(&engine, &cfg)?.iter().flat_map(|b| b.ids.clone()).collect::<Vec<u64>>());
    }
    let total: usize = shard_ids.iter().map(Vec::len).sum();
    let union: HashSet<u64> = shard_ids.iter().flatten().copied().collect();
    check(
        total == n && union.len() == n,
        format!("4 shards: {total} rows, {} distinct (disjoint and complete)", union.len()),
    );

    check(batches(&engine, &plain)? == epoch, "determinism: the same seed gives the same batches".into());
    let other = batches(&engine, &DataLoaderConfig { seed: 8, ..plain.clone() })?;
    check(other != epoch, "another seed gives another order".into());

    let imp = DataLoaderConfig { importance_sampling: true, generate_samples: true, epochs: 3, ..plain };
    let lake = batches(&engine, &imp)?;
    let w: Vec<f64> = lake
        .iter()
        .flat_map(|b| b.weights.iter().zip(&b.generated).filter(|(_, g)| !**g).map(|(w, _)| f64::from(*w)))
        .collect();
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    check((mean - 1.0).abs() < 0.1, format!("importance weights average {mean:.3} (unbiased: about 1)"));
    let marked = lake.iter().all(|b| b.generated.iter().filter(|g| **g).count() * 2 == b.len());
    check(marked, "one generated row per real row, marked".into());

    if failures.is_empty() {
        println!("OK");
        Ok(())
    } else {
        anyhow::bail!("{} check(s) failed: {}", failures.len(), failures.join("; "))
    }
}
