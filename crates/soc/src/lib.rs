//! m2m-soc: the science of the training data lake: the splat energy, concentrations learned from data,
//! a self-organised-criticality controller that turns use and energy into importance weights, an
//! importance sampler with unbiased weights, and Langevin dynamics on the sphere that generate new
//! samples from the splats' energy.
//!
//! * [`energy`]: E(x) = -log sum_i alpha_i exp(-kappa_i |x - mu_i|^2), the original project's formula
//!   (on the unit sphere, a von Mises-Fisher mixture), exact with log-sum-exp, and its gradient.
//! * [`langevin`]: overdamped and underdamped Langevin steps on the sphere against the splats each chain
//!   is routed to. Routing is the speed-up: the sum runs over the members of the few clusters the index
//!   sends a point to (a "mixture of experts"), not over every splat. Terms of far splats are smaller than
//!   those of the routed ones by factors of e^{-2 kappa (s_near - s_far)}, so the truncation changes E and
//!   its gradient little where routing finds the nearest clusters; the exact sum ([`energy::energy`])
//!   stays for tests and for small sets.
//! * [`router`]: which splats a point is routed to (its nearest fine clusters of an m2m-index index,
//!   and of their members those with the largest terms), and the clusters' graph for the controller.
//! * [`kappa`]: kappa per splat from the mean resultant length of its nearest neighbours (the vMF
//!   estimate of Banerjee et al.), on a sphere of the data's intrinsic dimension, clipped to [1, 50].
//!   Alpha from local mass: a splat's in-degree in the same neighbour graph, normalised to mean 1; use
//!   steers sampling through the controller below, not through alpha.
//! * [`soc`]: the sandpile over the index's cluster graph, its avalanches, and the importance weights it
//!   sets (high load and high kappa sampled more, with a floor).
//! * [`sampler`]: alias-table draws, epochs with weights 1 / (N p_i), and an every-row-once option.
//!
//! Everything random takes a seed and is deterministic for it, whatever the number of threads.
//!
//! # Example
//!
//! The energy is low near the splats and high away from them; an importance sampler draws rows in
//! proportion to their weights and gives each draw the weight 1 / (N p) that keeps estimates unbiased.
//!
//! ```
//! use m2m_soc::{ImportanceSampler, SamplerConfig, Splats, energy::energy};
//!
//! // Two splats on the circle S^1: at (1, 0) and at (0, 1).
//! let mu = [1.0, 0.0, 0.0, 1.0];
//! let (kappa, alpha) = ([10.0, 10.0], [1.0, 1.0]);
//! let splats = Splats::new(2, &mu, &kappa, &alpha)?;
//! let near = energy(&[1.0, 0.0], &splats)?;
//! let far = energy(&[-1.0, 0.0], &splats)?;
//! assert!(near < far);
//!
//! // Row 1 is three times as likely as row 0: it is drawn more and weighted less.
//! let sampler = ImportanceSampler::new(&[1.0, 3.0], SamplerConfig { seed: 7, ..Default::default() })?;
//! let plan = sampler.epoch(0);
//! assert_eq!(plan.rows.len(), 2);
//! for (&row, &w) in plan.rows.iter().zip(&plan.weights) {
//!     let expected = if row == 0 { 2.0 } else { 2.0 / 3.0 }; // 1 / (N p): p = 1/4 and 3/4
//!     assert!((w - expected).abs() < 1e-6);
//! }
//! # Ok::<(), m2m_soc::Error>(())
//! ```

pub mod energy;
mod error;
mod isa;
pub mod kappa;
pub mod langevin;
pub mod normal;
mod prefetch;
pub mod router;
pub mod sampler;
pub mod soc;

pub use energy::Splats;
pub use error::{Error, Result};
pub use isa::kernel_isa;
pub use kappa::{KappaConfig, KappaDimension, KappaEstimate, estimate_kappa};
pub use langevin::{Dynamics, Group, LangevinConfig, Method, Noise};
pub use router::{Routed, Router, SEEDED_PILOTS, SeededRunLength};
pub use sampler::{AliasTable, EpochPlan, ImportanceSampler, SamplerConfig};
pub use soc::{Sandpile, SiteGraph, SocConfig};
