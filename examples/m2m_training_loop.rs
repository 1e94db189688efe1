//! A small model trained in Rust on batches streamed from the data lake: a softmax classifier (nalgebra)
//! of the digit each splat was made from, fed by `export_to_dataloader` with importance sampling, the
//! loss weighted by the importance weights so that it estimates the plain average. Each batch's per-row
//! losses go back to the engine (`feedback`), which drives the SOC controller, and `tick` ends each
//! epoch: the next epoch samples the rows the model gets wrong more (the weights' range and effective
//! sample size are printed). The held-out query rows measure accuracy; the loss falls visibly epoch
//! after epoch.
//!
//! `cargo run --release --example m2m_training_loop`

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use anyhow::{Result, ensure};
use m2m::{DataLoaderConfig, DigitsConfig, M2mConfig, create_m2m, digits_on_sphere};
use nalgebra::{DMatrix, DVector};

const CLASSES: usize = 10;

/// Softmax of each column of `logits`, in place.
fn softmax_columns(logits: &mut DMatrix<f32>) {
    for mut col in logits.column_iter_mut() {
        let m = col.max();
        col.iter_mut().for_each(|v| *v = (*v - m).exp());
        let z = col.sum();
        col /= z;
    }
}

fn main() -> Result<()> {
    let digits = digits_on_sphere(&DigitsConfig { rows: 10_000, queries: 1_000, dim: 640, ..Default::default() })?;
    let dim = digits.dim;
    let mut engine = create_m2m(M2mConfig::default().dim(dim))?;
    let ids = engine.add_splats(&digits.base)?;
    ensure!(ids[0] == 0 && ids[ids.len() - 1] == 9_999, "ids are row numbers, so labels index by id");
    engine.build_index()?;

    // Weights W (classes x dim) and bias b; plain SGD with momentum-free steps.
    let mut w = DMatrix::<f32>::zeros(CLASSES, dim);
    let mut b = DVector::<f32>::zeros(CLASSES);
    let lr = 4.0f32;
    let queries = DMatrix::from_column_slice(dim, digits.queries.len() / dim, &digits.queries);
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for epoch in 0..8u64 {
        let cfg =
            DataLoaderConfig { batch_size: 256, importance_sampling: true, start_epoch: epoch, ..Default::default() };
        let (mut loss_sum, mut weight_sum) = (0.0f64, 0.0f64);
        for batch in engine.export_to_dataloader(&cfg)? {
            let batch = batch?;
            let n = batch.len();
            let x = DMatrix::from_column_slice(dim, n, &batch.mu);
            let mut p = &w * &x;
            for mut col in p.column_iter_mut() {
                col += &b;
            }
            softmax_columns(&mut p);
            // Gradient of the importance-weighted cross-entropy: (p - onehot) * weight, averaged.
            let mut g = p.clone();
            let mut losses = Vec::with_capacity(n);
            for (j, (&id, &iw)) in batch.ids.iter().zip(&batch.weights).enumerate() {
                let label = usize::from(digits.base_labels[id as usize]);
                let loss = -p[(label, j)].max(1e-12).ln();
                losses.push(loss);
                loss_sum += f64::from(loss * iw);
                weight_sum += f64::from(iw);
                g[(label, j)] -= 1.0;
                g.column_mut(j).scale_mut(iw / n as f32);
            }
            w -= (&g * x.transpose()) * lr;
            b -= g.column_sum() * lr;
            engine.feedback(&batch.ids, &losses)?;
        }
        engine.tick()?;
        let loss = loss_sum / weight_sum;
        let weights = engine.weight_report()?;
        // Accuracy on the held-out queries.
        let mut p = &w * &queries;
        for mut col in p.column_iter_mut() {
            col += &b;
        }
        let correct = p
            .column_iter()
            .zip(&digits.query_labels)
            .filter(|(col, label)| col.argmax().0 == usize::from(**label))
            .count();
        println!(
            "epoch {epoch}: weighted training loss {loss:.4}, held-out accuracy {:.3}; next epoch's weights {:.2}..{:.2}, effective sample size {:.1}%",
            correct as f64 / digits.query_labels.len() as f64,
            weights.min,
            weights.max,
            100.0 * weights.ess_share
        );
        first_loss.get_or_insert(loss);
        last_loss = loss;
    }
    let first = first_loss.unwrap_or(last_loss);
    ensure!(last_loss < 0.5 * first, "the loss should fall: {first:.4} -> {last_loss:.4}");
    println!("loss fell from {first:.4} to {last_loss:.4}");
    Ok(())
}
