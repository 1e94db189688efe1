//! Integration tests of m2m-soc, seeded, with their tolerances stated where they are asserted.

mod energy;
mod kappa;
mod langevin;
mod router;
mod sampler;
mod soc;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// A seeded generator.
pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// A uniform random unit vector.
pub fn unit(rng: &mut Xoshiro256PlusPlus, dim: usize) -> Vec<f32> {
    let v: Vec<f64> = (0..dim).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
    let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    v.iter().map(|a| (a / n) as f32).collect()
}

/// A uniform draw in [0, 1).
pub fn uniform(rng: &mut Xoshiro256PlusPlus) -> f64 {
    rng.random::<f64>()
}
