//! Quick start: the built-in digits projected to S^639, through the splat layer.
//!
//! `cargo run --release --example quickstart`
//!
//! Generates the original project's benchmark shape (10,000 base rows and 1,000 held-out query rows on
//! the unit sphere in 640 dimensions), ingests it into a `SplatSet` in validated batches, shows a bad
//! batch being refused whole, and writes and streams the set back through `.fvecs` and `.npy` files.
//! Retrieval, storage tiers and the training data lake join this example as their crates are built.

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use m2m::splat::{VectorReader, write_vectors};
use m2m::{Batch, DigitsConfig, SplatSet, digits_on_sphere};

fn main() -> Result<()> {
    let config = DigitsConfig::default();
    let t = Instant::now();
    let digits = digits_on_sphere(&config)?;
    let dim = digits.dim;
    println!(
        "generated digits on S^{}: {} base + {} query rows in {:.1} ms",
        dim - 1,
        digits.base.len() / dim,
        digits.queries.len() / dim,
        ms(t)
    );

    // Ingest in batches of 1,000 rows: each is validated whole, normalised and appended.
    let t = Instant::now();
    let mut set = SplatSet::with_capacity(dim, config.rows)?;
    for batch in digits.base.chunks(1_000 * dim) {
        set.append(Batch::new(batch, dim))?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ingested {} splats (kappa {}, alpha {}) in {:.1} ms: {:.0} splats/s, {:.1} MiB in RAM",
        set.len(),
        set.kappa()[0],
        set.alpha()[0],
        secs * 1e3,
        set.len() as f64 / secs,
        set.memory_bytes() as f64 / (1 << 20) as f64
    );

    // A batch with one NaN is refused whole, with the row and column, and the set is unchanged.
    let mut bad = digits.queries[..4 * dim].to_vec();
    bad[2 * dim + 17] = f32::NAN;
    let err = set.append(Batch::new(&bad, dim)).expect_err("a NaN must be refused");
    println!("refused a bad batch: {err}; the set still has {} splats", set.len());
    ensure!(set.len() == config.rows);

    // Files: write the base rows, stream them back in chunks, and compare.
    let dir = tempfile::tempdir().context("temporary directory")?;
    for name in ["digits.fvecs", "digits.npy"] {
        let path = dir.path().join(name);
        let t = Instant::now();
        write_vectors(&path, &digits.base, dim)?;
        let write_ms = ms(t);
        let t = Instant::now();
        let mut streamed = SplatSet::with_capacity(dim, config.rows)?;
        for chunk in VectorReader::open(&path)?.chunks::<f32>(2_500) {
            streamed.append(Batch::new(&chunk?, dim))?;
        }
        let read_ms = ms(t);
        ensure!(streamed.mu() == set.mu(), "{name}: streamed rows differ");
        let mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
        println!(
            "{name}: {mb:.1} MB written in {write_ms:.1} ms, streamed back into a set in {read_ms:.1} ms: identical"
        );
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
