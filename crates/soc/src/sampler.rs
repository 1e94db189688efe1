//! The importance sampler: epochs of splat rows drawn in proportion to given probabilities, each with
//! its importance weight, so that a training loss weighted by them is an unbiased estimate of the plain
//! average over all splats.
//!
//! Draws come from a Walker/Vose alias table (built in O(N), one 64-bit random number per draw: the high
//! half picks a column by multiply-shift, the low half compares with the column's threshold), which the
//! benchmark measures against the 10M draws/s target.
//!
//! An epoch of M draws with replacement gives row i an expected count M p_i and the weight
//! M / (N E(count)) = 1 / (N p_i). With `cover`, every row is first taken once and the other M - N
//! draws follow p, so E(count) = 1 + (M - N) p_i and the weight is M / (N (1 + (M - N) p_i)). Either way
//! sum over the epoch of weight * f(row) / M has expectation mean_i f(i). The epoch's order is shuffled;
//! everything is deterministic for (seed, epoch).

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// A Walker/Vose alias table.
#[derive(Clone, Debug)]
pub struct AliasTable {
    /// Per column: (threshold in 2^-32 units, alias).
    cells: Vec<(u32, u32)>,
    /// The normalised probabilities.
    p: Vec<f64>,
}

impl AliasTable {
    /// A table for `weights` (finite, >= 0, not all 0; at most 2^32 - 1 of them).
    pub fn new(weights: &[f64]) -> Result<AliasTable> {
        let n = weights.len();
        if n == 0 {
            return Err(Error::Empty { what: "weights" });
        }
        if n >= u32::MAX as usize {
            return Err(Error::Invalid { what: "weights", index: 0, value: n as f64, reason: "too many" });
        }
        if let Some(index) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::Invalid {
                what: "weight",
                index,
                value: weights[index],
                reason: "must be finite and >= 0",
            });
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(Error::Invalid { what: "weights", index: 0, value: total, reason: "sum to 0" });
        }
        let p: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut scaled: Vec<f64> = p.iter().map(|q| q * n as f64).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..n as u32).partition(|&i| scaled[i as usize] < 1.0);
        let mut cells = vec![(u32::MAX, 0u32); n];
        for (i, c) in cells.iter_mut().enumerate() {
            c.1 = i as u32;
        }
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            let (s_i, l_i) = (s as usize, l as usize);
            cells[s_i] = (threshold(scaled[s_i]), l);
            scaled[l_i] -= 1.0 - scaled[s_i];
            if scaled[l_i] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left has probability 1 (up to rounding): its threshold stays at the maximum.
        Ok(AliasTable { cells, p })
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Always false: a table has at least one outcome.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The normalised probability of outcome `i`.
    pub fn probability(&self, i: usize) -> f64 {
        self.p[i]
    }

    /// The normalised probabilities.
    pub fn probabilities(&self) -> &[f64] {
        &self.p
    }

    /// One draw.
    #[inline]
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let r = rng.next_u64();
        let column = (((r >> 32) * self.cells.len() as u64) >> 32) as usize;
        let (t, alias) = self.cells[column];
        if (r as u32) < t || t == u32::MAX { column } else { alias as usize }
    }
}

fn threshold(q: f64) -> u32 {
    (q.clamp(0.0, 1.0) * 4_294_967_296.0).min(4_294_967_295.0) as u32
}

/// Settings of an [`ImportanceSampler`] (default: one draw per row, no cover, seed 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Draws per epoch; `None` means one per row (N), or 2N with `cover`.
    pub epoch_size: Option<usize>,
    /// Take every row at least once per epoch (the epoch size must then be at least N).
    pub cover: bool,
    /// Seed of every epoch's draws and order.
    pub seed: u64,
}

/// One epoch: rows to visit, in order, with their importance weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochPlan {
    /// Row indices.
    pub rows: Vec<u32>,
    /// Importance weight of each entry of `rows`.
    pub weights: Vec<f32>,
}

/// Epochs drawn by importance.
#[derive(Clone, Debug)]
pub struct ImportanceSampler {
    table: AliasTable,
    config: SamplerConfig,
    size: usize,
}

impl ImportanceSampler {
    /// A sampler over rows with these (unnormalised) weights.
    pub fn new(weights: &[f64], config: SamplerConfig) -> Result<ImportanceSampler> {
        let table = AliasTable::new(weights)?;
        let n = table.len();
        let size = config.epoch_size.unwrap_or(if config.cover { 2 * n } else { n });
        if size == 0 || (config.cover && size < n) {
            return Err(Error::Invalid {
                what: "epoch_size",
                index: 0,
                value: size as f64,
                reason: "must be > 0, and at least the number of rows with cover",
            });
        }
        Ok(ImportanceSampler { table, config, size })
    }

    /// Draws per epoch.
    pub fn epoch_size(&self) -> usize {
        self.size
    }

    /// The alias table.
    pub fn table(&self) -> &AliasTable {
        &self.table
    }

    /// The plan of epoch `epoch` (deterministic for the seed and the epoch number).
    pub fn epoch(&self, epoch: u64) -> EpochPlan {
        let n = self.table.len();
        let m = self.size;
        let seed = self.config.seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut rows: Vec<u32> = Vec::with_capacity(m);
        let extra = if self.config.cover {
            rows.extend(0..n as u32);
            m - n
        } else {
            m
        };
        rows.extend((0..extra).map(|_| self.table.sample(&mut rng) as u32));
        rows.shuffle(&mut rng);
        let p = self.table.probabilities();
        let weights = rows
            .iter()
            .map(|&r| {
                let expected =
                    if self.config.cover { 1.0 + extra as f64 * p[r as usize] } else { m as f64 * p[r as usize] };
                (m as f64 / (n as f64 * expected)) as f32
            })
            .collect();
        EpochPlan { rows, weights }
    }
}
