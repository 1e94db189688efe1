//! `bench-ingest`: issue 19's two speeds of attributes, per CPU second so that a loaded machine does not
//! decide them.
//!
//! * The in-memory engine's add of `--rows` rows (default 50,000) with a label, a keyword, an integer
//!   and one tag per row (`add_splats_with_attributes`), beside `add_splats` of the same vectors, each
//!   into a fresh engine, `--reps` times interleaved (with, without, with, ...). The figure is rows per
//!   second of the calling thread's CPU time (`/proc/thread-self/schedstat`, nanoseconds; the add runs
//!   on that thread only), page faults of fresh memory included; creating and dropping the engine are
//!   not counted. Every run is printed, then the median.
//! * The data lake's plain epochs (no importance sampling, no Langevin, batch 256, one loader thread)
//!   over the same engine with a label field and without one (`TrainingBatch::labels` filled or empty),
//!   `--lake-epochs` epochs each, interleaved: rows per CPU second of the whole process (user + system,
//!   `/proc/self/stat`, 10 ms ticks: enough epochs make the tick small).
//!
//! The vectors are the first `--rows` of `--base` (an .fvecs file; default minilm70k's) or, without
//! the file, seeded random ones of `--dim` (default 384).

#![allow(clippy::print_stdout, reason = "a benchmark reports to its terminal")]

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use m2m::{AttrBatch, Column, DataLoaderConfig, M2m, M2mConfig};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// CPU nanoseconds of the calling thread (`/proc/thread-self/schedstat`: its first field).
fn thread_cpu_ns() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace().next().context("empty schedstat")?.parse()?)
}

/// User + system CPU seconds of the whole process (`/proc/self/stat` fields 14 and 15, 1/100 s ticks).
fn process_cpu_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("/proc/self/stat")?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok((f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?) / 100.0)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).with_context(|| format!("{name} needs a value"))?.parse()?),
        None => Ok(default),
    }
}

fn attributes(rows: usize) -> AttrBatch {
    AttrBatch::new(rows)
        .with("label", Column::Int((0..rows).map(|i| Some((i % 10) as i64)).collect()))
        .with("tenant", Column::Keyword((0..rows).map(|i| Some(format!("tenant{}", i % 100))).collect()))
        .with("t", Column::Int((0..rows).map(|i| Some(i as i64)).collect()))
        .with("tags", Column::Tags((0..rows).map(|i| Some(vec![format!("tag{}", i % 7)])).collect()))
}

/// One add into a fresh engine: rows per thread-CPU second and per wall second.
fn one_add(dim: usize, vectors: &[f32], attrs: Option<&AttrBatch>) -> Result<(f64, f64)> {
    let rows = vectors.len() / dim;
    let mut e = M2m::create(M2mConfig::default().dim(dim))?;
    let (cpu, wall) = (thread_cpu_ns()?, Instant::now());
    match attrs {
        Some(a) => e.add_splats_with_attributes(vectors, a)?,
        None => e.add_splats(vectors)?,
    };
    let (cpu, wall) = ((thread_cpu_ns()? - cpu) as f64 * 1e-9, wall.elapsed().as_secs_f64());
    ensure!(e.len() == rows, "{} rows added of {rows}", e.len());
    drop(e);
    Ok((rows as f64 / cpu, rows as f64 / wall))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rows per process CPU second over `epochs` plain epochs of `e`.
fn lake(e: &M2m, epochs: u64, with_labels: bool) -> Result<f64> {
    let cfg = DataLoaderConfig { batch_size: 256, epochs, threads: 1, ..DataLoaderConfig::default() };
    let cpu = process_cpu_s()?;
    let mut rows = 0usize;
    for batch in e.export_to_dataloader(&cfg)? {
        let b = batch?;
        ensure!(
            b.labels.len() == if with_labels { b.len() } else { 0 },
            "labels {} for {} rows",
            b.labels.len(),
            b.len()
        );
        rows += b.len();
    }
    Ok(rows as f64 / (process_cpu_s()? - cpu).max(0.01))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "bench-ingest [--base minilm70k.base.fvecs] [--rows 50000] [--dim 384] [--reps 7] [--lake-epochs 20] [--skip-lake] [--labelled-last]"
        );
        return Ok(());
    }
    let base: String = arg(&args, "--base", "/work/shared/data/minilm70k/minilm70k.base.fvecs".to_string())?;
    let rows: usize = arg(&args, "--rows", 50_000)?;
    let reps: usize = arg(&args, "--reps", 7)?;
    let lake_epochs: u64 = arg(&args, "--lake-epochs", 20)?;
    let (dim, vectors, source) = match m2m::splat::read_vectors::<f32>(&base) {
        Ok(v) => {
            let n = rows.min(v.data.len() / v.dim);
            (v.dim, v.data[..n * v.dim].to_vec(), base.clone())
        }
        Err(_) => {
            let dim: usize = arg(&args, "--dim", 384)?;
            let mut rng = StdRng::seed_from_u64(19);
            ((dim), (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(), "seeded random".into())
        }
    };
    let n = vectors.len() / dim;
    let attrs = attributes(n);
    println!("ingest: {n} rows x {dim} ({source}), a fresh in-memory engine per add, {reps} runs each, interleaved");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let (a, aw) = one_add(dim, &vectors, Some(&attrs))?;
        let (b, bw) = one_add(dim, &vectors, None)?;
        println!(
            "run {r}: with attributes {a:.0} rows/CPU s ({aw:.0} rows/wall s); without {b:.0} rows/CPU s ({bw:.0} rows/wall s)"
        );
        with.push(a);
        without.push(b);
    }
    println!("median: with attributes {:.0} rows per CPU second, without {:.0}", median(with), median(without));
    if args.iter().any(|a| a == "--skip-lake") {
        return Ok(());
    }
    // A third engine with attributes but no label field tells the labels' own cost from that of an
    // engine with a schema (or of where its rows lie in memory).
    // `--labelled-last`: the labelled engine made after the other two (where its rows lie in memory).
    let make_labelled = || -> Result<M2m> {
        let mut e = M2m::create(M2mConfig::default().dim(dim))?;
        e.add_splats_with_attributes(&vectors, &attrs)?;
        Ok(e)
    };
    let early = if args.iter().any(|a| a == "--labelled-last") { None } else { Some(make_labelled()?) };
    let mut plain = M2m::create(M2mConfig::default().dim(dim))?;
    plain.add_splats(&vectors)?;
    let mut unlabelled = M2m::create(M2mConfig::default().dim(dim))?;
    let tenants =
        AttrBatch { rows: n, columns: attrs.columns.iter().filter(|(f, _)| f == "tenant").cloned().collect() };
    unlabelled.add_splats_with_attributes(&vectors, &tenants)?;
    let labelled = match early {
        Some(e) => e,
        None => make_labelled()?,
    };
    println!("lake: plain epochs (shuffled, batch 256, 1 loader thread), {lake_epochs} epochs a run, interleaved");
    let (mut with, mut without, mut other) = (Vec::new(), Vec::new(), Vec::new());
    // The three in a rotating order: the first run after a change of engine measured slower here
    // whichever engine it was, so no engine may always go first.
    for r in 0..6 {
        let mut got = [0.0f64; 3];
        for k in 0..3 {
            let which = (r + k) % 3;
            got[which] = match which {
                0 => lake(&labelled, lake_epochs, true)?,
                1 => lake(&plain, lake_epochs, false)?,
                _ => lake(&unlabelled, lake_epochs, false)?,
            };
        }
        let [a, b, c] = got;
        println!(
            "run {r} (first: {}): with labels {a:.0} rows/CPU s; without {b:.0} rows/CPU s; attributes without a label field {c:.0} rows/CPU s",
            ["with labels", "without", "attributes without a label field"][r % 3]
        );
        with.push(a);
        without.push(b);
        other.push(c);
    }
    println!(
        "median: with labels {:.0} rows per CPU second, without {:.0}, attributes without a label field {:.0}",
        median(with),
        median(without),
        median(other)
    );
    Ok(())
}
