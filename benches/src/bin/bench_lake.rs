//! `cargo xtask bench lake`: the data lake with Langevin augmentation, its speed and what its generated
//! rows are worth. An in-memory engine over the built-in digits on S^639 (index built, kappa learned)
//! streams importance-sampled epochs with one Langevin sample per real row, for each Langevin setting
//! asked (`--configs STEPSxDT,...`, default the lake's), on a fresh build each, and reports:
//!
//! * rows (real and generated) per CPU second of the whole process (user + system time from
//!   `/proc/self/stat`, so the figure does not depend on how many cores were free), for the first
//!   epoch (every seed prepared and its temperature calibrated) and for the later epochs (seeds kept);
//!   the same without Langevin for reference;
//! * the fidelity of the first epoch's first `--fidelity-rows` generated rows: mean cosine to the seed,
//!   the share inside the seed's band of real neighbours (1st to 16th), within its 16th, label agreement
//!   of their nearest real row against the real rows' own 1-NN, and copies.
//!
//! The loader runs on `--threads` threads (default 1: CPU seconds and wall seconds then agree but for
//! the consumer). Where `/proc/self/stat` is missing (not Linux) wall time is reported instead, and
//! the output says so.

#![allow(clippy::print_stdout, reason = "a benchmark reports to its terminal")]

use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use m2m::{DataLoaderConfig, DigitsConfig, M2m, M2mConfig, create_m2m, digits_on_sphere};

/// The process's user + system CPU seconds (all threads), when the platform says.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'; utime and stime
    // are fields 14 and 15 of the whole line, 12 and 13 after it, in clock ticks of 1/100 s (USER_HZ,
    // 100 on every Linux architecture we build for).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A stopwatch over CPU time (wall time where CPU time is not available).
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
}

impl Clock {
    fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: cpu_seconds() }
    }

    /// Seconds since `start`: CPU where known, else wall.
    fn seconds(&self) -> f64 {
        match (self.cpu, cpu_seconds()) {
            (Some(a), Some(b)) => b - a,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }

    fn wall(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }
}

/// What one epoch gave: rows streamed, and (for the first) the first generated rows with their seeds.
struct Epoch {
    rows: usize,
    cpu: f64,
    wall: f64,
    seeds: Vec<u64>,
    samples: Vec<f32>,
}

fn epoch(e: &M2m, cfg: &DataLoaderConfig, keep: usize) -> Result<Epoch> {
    let dim = e.config().dim;
    let clock = Clock::start();
    let (mut rows, mut seeds, mut samples) = (0usize, Vec::new(), Vec::new());
    for batch in e.export_to_dataloader(cfg)? {
        let b = batch?;
        rows += b.len();
        for i in (0..b.len()).filter(|&i| b.generated[i]) {
            if seeds.len() == keep {
                break;
            }
            seeds.push(b.ids[i]);
            samples.extend_from_slice(&b.mu[i * dim..(i + 1) * dim]);
        }
    }
    Ok(Epoch { rows, cpu: clock.seconds(), wall: clock.wall(), seeds, samples })
}

/// `STEPSxDT` (for example `8x0.04`).
fn parse_config(s: &str) -> Result<(usize, f32)> {
    let (steps, dt) = s.split_once('x').with_context(|| format!("--configs: `{s}` is not STEPSxDT"))?;
    Ok((steps.parse().context("--configs steps")?, dt.parse().context("--configs step size")?))
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "bench-lake [--rows 10000] [--noise 0.1] [--data-seed 42] [--epochs 4] [--plain-epochs 10 x epochs] [--threads 1] [--fidelity-rows 512] [--configs STEPSxDT,...]"
        );
        return Ok(());
    }
    let rows: usize = arg(&args, "--rows", 10_000)?;
    let noise: f32 = arg(&args, "--noise", 0.1)?;
    let data_seed: u64 = arg(&args, "--data-seed", 42)?;
    let epochs: u64 = arg(&args, "--epochs", 4)?;
    let threads: usize = arg(&args, "--threads", 1)?;
    let keep: usize = arg(&args, "--fidelity-rows", 512)?;
    // Epochs without Langevin for the reference column (0 leaves it out, so that a profile of the run
    // holds the Langevin epochs only).
    let plain_epochs: u64 = arg(&args, "--plain-epochs", 10 * epochs)?;
    ensure!(epochs >= 2, "--epochs: at least 2 (the first epoch, and later ones)");
    let defaults = DataLoaderConfig::default();
    let configs: Vec<(usize, f32)> = match args.iter().position(|a| a == "--configs") {
        Some(i) => {
            args.get(i + 1).context("--configs needs a list")?.split(',').map(parse_config).collect::<Result<_>>()?
        }
        None => vec![(defaults.generate_steps, defaults.step_size.unwrap_or(0.0))],
    };
    let digits =
        digits_on_sphere(&DigitsConfig { rows, queries: 0, noise, seed: data_seed, ..DigitsConfig::default() })?;
    let dim = digits.dim;
    let timing =
        if cpu_seconds().is_some() { "rows per CPU second" } else { "rows per wall second (no CPU clock here)" };
    println!(
        "Data lake on digits ({rows} rows on S^{}, noise {noise}, data seed {data_seed}), importance sampling, batch 256, loader threads {threads}, {epochs} epochs, Langevin kernels on {} (index kernels on {}); {timing}:",
        dim - 1,
        m2m_soc::kernel_isa().name(),
        m2m_index::kernels::Isa::best().name()
    );
    println!();
    println!(
        "| steps x step size | first epoch | later epochs | no Langevin | cosine to seed | in band | within 16th | label agreement (real 1-NN) | copies |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let label = |id: u64| digits.base_labels.get(id as usize).map(|&l| u32::from(l));
    for (steps, dt) in configs {
        if steps == 0 || !(dt > 0.0 && dt <= 1.0) {
            bail!("--configs: {steps}x{dt}: steps must be >= 1 and the step in (0, 1]");
        }
        // A fresh build per setting: the seeds' kept bases and temperatures belong to one setting.
        let mut e = create_m2m(M2mConfig::default().dim(dim))?;
        e.add_splats(&digits.base)?;
        e.build_index()?;
        let base = DataLoaderConfig { importance_sampling: true, threads, ..DataLoaderConfig::default() };
        // Without Langevin an epoch takes a few clock ticks: several (10 per Langevin epoch by
        // default), for a figure above the clock's 10 ms resolution.
        let (mut plain_rows, mut plain_cpu) = (0usize, 0f64);
        for ep in 0..plain_epochs {
            let r = epoch(&e, &DataLoaderConfig { start_epoch: ep, ..base.clone() }, 0)?;
            plain_rows += r.rows;
            plain_cpu += r.cpu;
        }
        let gen_cfg = |ep: u64| DataLoaderConfig {
            generate_samples: true,
            generate_steps: steps,
            step_size: Some(dt),
            start_epoch: ep,
            ..base.clone()
        };
        let first = epoch(&e, &gen_cfg(0), keep)?;
        let (mut later_rows, mut later_cpu) = (0usize, 0f64);
        for ep in 1..epochs {
            let r = epoch(&e, &gen_cfg(ep), 0)?;
            later_rows += r.rows;
            later_cpu += r.cpu;
        }
        ensure!(!first.seeds.is_empty(), "no generated rows");
        let f = e.fidelity(&first.seeds, &first.samples, Some(&label))?;
        println!(
            "| {steps} x {dt} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1}% | {:.1}% | {:.1}% ({:.1}%) | {} |",
            first.rows as f64 / first.cpu.max(1e-9),
            later_rows as f64 / later_cpu.max(1e-9),
            plain_rows as f64 / plain_cpu.max(1e-9),
            f.mean_cos_to_seed,
            100.0 * f.in_band,
            100.0 * f.within_16th,
            100.0 * f.label_agreement.unwrap_or(0.0),
            100.0 * f.real_label_agreement.unwrap_or(0.0),
            f.copies
        );
        // A fingerprint of the fidelity rows' bits (FNV-1a), so that a change meant to give the same
        // rows faster can be checked to.
        let print = first
            .samples
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3));
        println!(
            "{steps}x{dt}: first epoch {} rows in {:.2} s CPU / {:.2} s wall; later {later_rows} rows in {later_cpu:.2} s CPU; {} fidelity rows (bits {print:016x}), max cosine to a real row {:.4}",
            first.rows, first.cpu, first.wall, f.rows, f.max_cos_to_real
        );
    }
    Ok(())
}
