//! `cargo xtask bench train`: does the data lake's training science change training? Classifiers on the
//! built-in digits (projected to S^639, with their labels) trained through `export_to_dataloader`, over
//! several seeds, with a fixed budget of steps:
//!
//! 1. Class imbalance: three digits keep 5% of their training rows; the test set (held-out images) is
//!    balanced. Uniform sampling against loss-driven SOC sampling (the training loop's per-row losses go
//!    back through `feedback`, `tick` ends each epoch) with the importance weights applied, and without.
//!    Balanced and worst-class test accuracy.
//! 2. Low data: 10% of the training rows, without and with Langevin augmentation (one generated row per
//!    real row at the engine's defaults, labelled by its seed's id). Test accuracy.
//!
//! The learning rate is chosen per seed for the uniform baseline, on a validation split of the training
//! rows (20%, never trained on, never the test set), from a fixed grid ([`LR_GRID`]); every other
//! method of that seed and part trains with the same rate. So the baseline is as good as the grid
//! makes it, and the other samplers are not tuned at all. With `--lr-per-method` each SOC sampler of
//! the imbalance part gets its own rate, chosen the same way (a fresh engine per rate tried).
//!
//! It also reports the fidelity of generated rows at the defaults (with labels). Every figure is a mean
//! and standard deviation over the seeds; a claim is "met" only when the paired per-seed difference has
//! a mean above two of its standard deviations, and the output says which are met and which missed.

#![allow(clippy::print_stdout, reason = "a benchmark reports to its terminal")]

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use m2m::{DataLoaderConfig, DigitsConfig, M2m, M2mConfig, create_m2m, digits_on_sphere};

const CLASSES: usize = 10;
const MINORITY: [u8; 3] = [3, 8, 9];
const BATCH: usize = 64;
/// Learning rates tried for the uniform baseline on the validation split.
const LR_GRID: [f32; 5] = [0.5, 2.0, 8.0, 32.0, 128.0];

/// A softmax classifier (multinomial logistic regression) trained by SGD.
struct Softmax {
    dim: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Softmax {
    fn new(dim: usize) -> Softmax {
        Softmax { dim, w: vec![0.0; CLASSES * dim], b: vec![0.0; CLASSES] }
    }

    fn probs(&self, x: &[f32], out: &mut [f32; CLASSES]) {
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.b[c] + self.w[c * self.dim..(c + 1) * self.dim].iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
        let m = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        out.iter_mut().for_each(|v| *v = (*v - m).exp());
        let z: f32 = out.iter().sum();
        out.iter_mut().for_each(|v| *v /= z);
    }

    /// One step on rows `x` with labels `y` and per-row loss weights; returns each row's cross-entropy.
    fn step(&mut self, x: &[f32], y: &[u8], weights: &[f32], lr: f32) -> Vec<f32> {
        let n = y.len();
        let mut gw = vec![0f32; self.w.len()];
        let mut gb = [0f32; CLASSES];
        let mut losses = Vec::with_capacity(n);
        let mut p = [0f32; CLASSES];
        for i in 0..n {
            let row = &x[i * self.dim..(i + 1) * self.dim];
            self.probs(row, &mut p);
            losses.push(-p[y[i] as usize].max(1e-12).ln());
            for c in 0..CLASSES {
                let g = weights[i] * (p[c] - f32::from(u8::from(c == y[i] as usize)));
                gb[c] += g;
                gw[c * self.dim..(c + 1) * self.dim].iter_mut().zip(row).for_each(|(a, b)| *a += g * b);
            }
        }
        let scale = lr / n as f32;
        self.w.iter_mut().zip(&gw).for_each(|(w, g)| *w -= scale * g);
        self.b.iter_mut().zip(&gb).for_each(|(b, g)| *b -= scale * g);
        losses
    }

    /// (balanced accuracy, worst-class accuracy, the worst class) on `x`, `y`.
    fn evaluate(&self, x: &[f32], y: &[u8]) -> (f64, f64, usize) {
        let (mut right, mut total) = ([0usize; CLASSES], [0usize; CLASSES]);
        let mut p = [0f32; CLASSES];
        for (row, &label) in x.chunks_exact(self.dim).zip(y) {
            self.probs(row, &mut p);
            let best = (0..CLASSES).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
            total[label as usize] += 1;
            right[label as usize] += usize::from(best == label as usize);
        }
        let acc: Vec<(usize, f64)> =
            (0..CLASSES).filter(|&c| total[c] > 0).map(|c| (c, right[c] as f64 / total[c] as f64)).collect();
        let worst = acc.iter().copied().fold((0, 1.0), |w, a| if a.1 < w.1 { a } else { w });
        (acc.iter().map(|a| a.1).sum::<f64>() / acc.len() as f64, worst.1, worst.0)
    }
}

/// Training and test rows of one seed.
struct Split {
    dim: usize,
    train: Vec<f32>,
    train_labels: Vec<u8>,
    test: Vec<f32>,
    test_labels: Vec<u8>,
}

fn split(seed: u64) -> Result<Split> {
    let d = digits_on_sphere(&DigitsConfig { rows: 6_000, queries: 3_000, seed, ..DigitsConfig::default() })?;
    // A balanced test set: as many held-out rows of each digit as the rarest digit has.
    let per_class = (0..CLASSES as u8).map(|c| d.query_labels.iter().filter(|&&l| l == c).count()).min().unwrap_or(0);
    let (mut test, mut test_labels, mut taken) = (Vec::new(), Vec::new(), [0usize; CLASSES]);
    for (row, &l) in d.queries.chunks_exact(d.dim).zip(&d.query_labels) {
        if taken[l as usize] < per_class {
            taken[l as usize] += 1;
            test.extend_from_slice(row);
            test_labels.push(l);
        }
    }
    Ok(Split { dim: d.dim, train: d.base, train_labels: d.base_labels, test, test_labels })
}

/// The rows of `s` kept by `keep(row index, label)`.
fn subset(s: &Split, keep: impl Fn(usize, u8) -> bool) -> (Vec<f32>, Vec<u8>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, (row, &l)) in s.train.chunks_exact(s.dim).zip(&s.train_labels).enumerate() {
        if keep(i, l) {
            x.extend_from_slice(row);
            y.push(l);
        }
    }
    (x, y)
}

/// A deterministic pseudo-random u64 of (seed, i) (splitmix64).
fn hash(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An in-memory engine over rows `x` (ids 0..n), index built.
fn engine(x: &[f32], dim: usize, seed: u64) -> Result<M2m> {
    let mut e = create_m2m(M2mConfig { seed, ..M2mConfig::default().dim(dim) })?;
    e.add_splats(x)?;
    e.build_index()?;
    Ok(e)
}

#[derive(Clone, Copy, PartialEq)]
enum Sampling {
    Uniform,
    SocWeighted,
    SocUnweighted,
}

/// What one training run gave: balanced and worst-class accuracy on the evaluation rows, and the share
/// of the real rows drawn that belong to the minority digits.
struct Trained {
    balanced: f64,
    worst: f64,
    worst_class: usize,
    minority_share: f64,
}

/// Trains for `steps` batches drawn from `engine` (labels by id) at learning rate `lr` and evaluates
/// on `eval` (rows, labels).
#[allow(clippy::too_many_arguments, reason = "one call per table cell")]
fn train(
    e: &M2m,
    labels: &[u8],
    eval: (&[f32], &[u8]),
    sampling: Sampling,
    augment: bool,
    steps: usize,
    seed: u64,
    lr: f32,
) -> Result<Trained> {
    let dim = e.config().dim;
    let (mut drawn, mut minority) = (0usize, 0usize);
    let mut model = Softmax::new(dim);
    let (mut done, mut epoch) = (0usize, 0u64);
    while done < steps {
        let cfg = DataLoaderConfig {
            batch_size: BATCH,
            importance_sampling: sampling != Sampling::Uniform,
            generate_samples: augment,
            seed,
            start_epoch: epoch,
            threads: 1,
            ..DataLoaderConfig::default()
        };
        for batch in e.export_to_dataloader(&cfg)? {
            let b = batch?;
            let y: Vec<u8> = b.ids.iter().map(|&id| labels[id as usize]).collect();
            for (&l, &g) in y.iter().zip(&b.generated) {
                drawn += usize::from(!g);
                minority += usize::from(!g && MINORITY.contains(&l));
            }
            let w: Vec<f32> = if sampling == Sampling::SocWeighted { b.weights.clone() } else { vec![1.0; y.len()] };
            let losses = model.step(&b.mu, &y, &w, lr);
            if sampling != Sampling::Uniform {
                // Real rows only: a generated row's loss says how it was made as much as the model.
                let real: Vec<usize> = (0..b.len()).filter(|&i| !b.generated[i]).collect();
                let ids: Vec<u64> = real.iter().map(|&i| b.ids[i]).collect();
                let l: Vec<f32> = real.iter().map(|&i| losses[i]).collect();
                e.feedback(&ids, &l)?;
            }
            done += 1;
            if done == steps {
                break;
            }
        }
        if sampling != Sampling::Uniform {
            e.tick()?;
        }
        epoch += 1;
    }
    let (balanced, worst, worst_class) = model.evaluate(eval.0, eval.1);
    Ok(Trained { balanced, worst, worst_class, minority_share: minority as f64 / drawn.max(1) as f64 })
}

/// Rows `x`, `y` split into (training, validation): 20% to validation by a hash of (seed, row).
#[allow(clippy::type_complexity, reason = "two (rows, labels) pairs")]
fn holdout(x: &[f32], y: &[u8], dim: usize, seed: u64) -> ((Vec<f32>, Vec<u8>), (Vec<f32>, Vec<u8>)) {
    let (mut t, mut v) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, (row, &l)) in x.chunks_exact(dim).zip(y).enumerate() {
        let to = if hash(seed ^ 0x7A1D, i as u64) % 100 < 20 { &mut v } else { &mut t };
        to.0.extend_from_slice(row);
        to.1.push(l);
    }
    (t, v)
}

/// The rate of [`LR_GRID`] with the best balanced accuracy on the validation rows for uniform
/// sampling (ties: the smaller rate).
fn choose_lr(e: &M2m, labels: &[u8], val: (&[f32], &[u8]), steps: usize, seed: u64) -> Result<f32> {
    let mut best = (f64::NEG_INFINITY, LR_GRID[0]);
    for lr in LR_GRID {
        let bal = train(e, labels, val, Sampling::Uniform, false, steps, seed, lr)?.balanced;
        if bal > best.0 {
            best = (bal, lr);
        }
    }
    Ok(best.1)
}

/// [`choose_lr`] for `sampling` (with `--lr-per-method`): a fresh engine over `x` per rate, since
/// SOC sampling's feedback changes the engine it trains from.
#[allow(clippy::too_many_arguments, reason = "one call per method and seed")]
fn choose_lr_for(
    sampling: Sampling,
    x: &[f32],
    dim: usize,
    labels: &[u8],
    val: (&[f32], &[u8]),
    steps: usize,
    seed: u64,
) -> Result<f32> {
    let mut best = (f64::NEG_INFINITY, LR_GRID[0]);
    for lr in LR_GRID {
        let bal = train(&engine(x, dim, seed)?, labels, val, sampling, false, steps, seed, lr)?.balanced;
        if bal > best.0 {
            best = (bal, lr);
        }
    }
    Ok(best.1)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

fn cell(v: &[f64]) -> String {
    let (m, s) = mean_sd(v);
    format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
}

/// "met" or "missed" for `better` against `base`, paired by seed.
fn verdict(name: &str, better: &[f64], base: &[f64]) -> String {
    let diff: Vec<f64> = better.iter().zip(base).map(|(a, b)| a - b).collect();
    let (m, s) = mean_sd(&diff);
    let met = m > 2.0 * s && m > 0.0;
    format!(
        "{name}: paired difference {:+.1} ± {:.1} points over {} seeds: {}",
        100.0 * m,
        100.0 * s,
        diff.len(),
        if met { "MET (mean > 2 sd)" } else { "MISSED (mean <= 2 sd)" }
    )
}

/// Three figures per seed.
type PerSeed = (Vec<f64>, Vec<f64>, Vec<f64>);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = match args.iter().position(|a| a == "--seeds") {
        Some(i) => args.get(i + 1).context("--seeds needs a number")?.parse()?,
        None => 5,
    };
    let steps: usize = match args.iter().position(|a| a == "--steps") {
        Some(i) => args.get(i + 1).context("--steps needs a number")?.parse()?,
        None => 600,
    };
    ensure!(seeds >= 2, "at least two seeds, for a spread");
    let per_method = args.iter().any(|a| a == "--lr-per-method");
    // Per sampling: balanced accuracy, worst-class accuracy, minority share of the drawn rows.
    let mut imb: HashMap<&str, PerSeed> = HashMap::new();
    let mut minority_rows = Vec::new();
    let (mut plain, mut aug) = (Vec::new(), Vec::new());
    let mut fid = Vec::new();
    let mut lrs: (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    for seed in 0..seeds {
        let s = split(1000 + seed)?;
        let test = (&s.test[..], &s.test_labels[..]);
        // 1. Imbalance: three digits keep 5% of their rows; 20% of those kept go to validation.
        let (x, y) = subset(&s, |i, l| !MINORITY.contains(&l) || hash(seed, i as u64) % 100 < 5);
        let ((x, y), (vx, vy)) = holdout(&x, &y, s.dim, seed);
        minority_rows.push(y.iter().filter(|l| MINORITY.contains(l)).count() as f64 / y.len().max(1) as f64);
        let lr = choose_lr(&engine(&x, s.dim, seed)?, &y, (&vx, &vy), steps, seed)?;
        lrs.0.push(lr);
        for (name, sampling) in [
            ("uniform", Sampling::Uniform),
            ("SOC, weighted", Sampling::SocWeighted),
            ("SOC, unweighted", Sampling::SocUnweighted),
        ] {
            // With `--lr-per-method` each SOC sampler gets its own rate from the same grid and split.
            let lr = if per_method && sampling != Sampling::Uniform {
                choose_lr_for(sampling, &x, s.dim, &y, (&vx, &vy), steps, seed)?
            } else {
                lr
            };
            let e = engine(&x, s.dim, seed)?;
            let t = train(&e, &y, test, sampling, false, steps, seed, lr)?;
            println!(
                "seed {seed}, {name} (lr {lr}): worst class digit {} at {:.1}%, balanced {:.1}%, minority share of draws {:.1}%",
                t.worst_class,
                100.0 * t.worst,
                100.0 * t.balanced,
                100.0 * t.minority_share
            );
            let entry = imb.entry(name).or_default();
            entry.0.push(t.balanced);
            entry.1.push(t.worst);
            entry.2.push(t.minority_share);
        }
        // 2. Low data: 10% of the rows; 20% of those go to validation.
        let (x, y) = subset(&s, |i, _| hash(seed ^ 0xDA7A, i as u64) % 100 < 10);
        let ((x, y), (vx, vy)) = holdout(&x, &y, s.dim, seed);
        let e = engine(&x, s.dim, seed)?;
        let lr = choose_lr(&e, &y, (&vx, &vy), steps, seed)?;
        lrs.1.push(lr);
        plain.push(train(&e, &y, test, Sampling::Uniform, false, steps, seed, lr)?.balanced);
        aug.push(train(&e, &y, test, Sampling::Uniform, true, steps, seed, lr)?.balanced);
        // Fidelity of generated rows at the defaults, with labels.
        let g = e.export_to_dataloader(&DataLoaderConfig {
            batch_size: 512,
            generate_samples: true,
            seed,
            ..Default::default()
        })?;
        let b = g.into_iter().next().context("no batch")??;
        let gen_rows: Vec<usize> = (0..b.len()).filter(|&i| b.generated[i]).collect();
        let seeds_ids: Vec<u64> = gen_rows.iter().map(|&i| b.ids[i]).collect();
        let rows: Vec<f32> = gen_rows.iter().flat_map(|&i| b.mu[i * s.dim..(i + 1) * s.dim].iter().copied()).collect();
        let label = |id: u64| y.get(id as usize).map(|&l| u32::from(l));
        fid.push(e.fidelity(&seeds_ids, &rows, Some(&label))?);
        println!("seed {seed} done");
    }
    println!();
    println!(
        "Class imbalance (digits {MINORITY:?} at 5% of their rows; balanced test set; softmax, {steps} steps of {BATCH}; {seeds} seeds; learning rate per seed from {LR_GRID:?} on a 20% validation split for uniform sampling: {:?}{}):",
        lrs.0,
        if per_method {
            "; each SOC sampler's own rate chosen the same way (--lr-per-method, rates in the seed lines)"
        } else {
            ""
        }
    );
    println!();
    println!("| sampling | balanced accuracy % | worst-class accuracy % | minority digits' share of drawn rows % |");
    println!("|---|---|---|---|");
    for name in ["uniform", "SOC, weighted", "SOC, unweighted"] {
        let (b, w, m) = &imb[name];
        println!("| {name} | {} | {} | {} |", cell(b), cell(w), cell(m));
    }
    println!();
    println!("The minority digits are {} of the training rows (mean over the seeds).", cell(&minority_rows) + "%");
    println!();
    println!(
        "{}",
        verdict("loss-driven SOC (weighted) vs uniform, worst class", &imb["SOC, weighted"].1, &imb["uniform"].1)
    );
    println!(
        "{}",
        verdict("loss-driven SOC (unweighted) vs uniform, worst class", &imb["SOC, unweighted"].1, &imb["uniform"].1)
    );
    println!();
    println!(
        "Low data (10% of the training rows, 20% of them for validation; {steps} steps; {seeds} seeds; learning rate per seed as above: {:?}):",
        lrs.1
    );
    println!();
    println!("| training rows | test accuracy % |");
    println!("|---|---|");
    println!("| real only | {} |", cell(&plain));
    println!("| real + Langevin (one per row, defaults) | {} |", cell(&aug));
    println!();
    println!("{}", verdict("Langevin augmentation vs none, test accuracy", &aug, &plain));
    println!();
    let avg = |f: &dyn Fn(&m2m::Fidelity) -> f64| fid.iter().map(f).sum::<f64>() / fid.len() as f64;
    println!(
        "Fidelity at the defaults (low-data engines, {} generated rows per seed): cosine to seed {:.3}, inside the seed's band {:.1}%, within its 16th neighbour {:.1}%, label agreement {:.1}% (real rows' 1-NN {:.1}%), copies {}, max cosine to a real row {:.4}",
        fid[0].rows,
        avg(&|f| f.mean_cos_to_seed),
        100.0 * avg(&|f| f.in_band),
        100.0 * avg(&|f| f.within_16th),
        100.0 * avg(&|f| f.label_agreement.unwrap_or(0.0)),
        100.0 * avg(&|f| f.real_label_agreement.unwrap_or(0.0)),
        fid.iter().map(|f| f.copies).sum::<usize>(),
        fid.iter().map(|f| f.max_cos_to_real).fold(0.0, f64::max)
    );
    Ok(())
}
