//! Langevin dynamics on the unit sphere, sampling exp(-E(x) / T).
//!
//! Overdamped (the default), with P_x = I - x x^T the projection onto the tangent space at x:
//!
//!   x <- normalise(x - eta P_x grad E(x) + sqrt(2 eta T) P_x xi),    xi ~ N(0, I)
//!
//! Underdamped, with a tangent velocity v and friction gamma (mass 1):
//!
//!   v <- v - eta (gamma v + P_x grad E(x)) + sqrt(2 gamma T eta) P_x xi
//!   x <- normalise(x + eta v),   v <- P_x v   (the velocity moved to the new tangent space)
//!
//! Normalising after a projected Euler-Maruyama step is a retraction: to first order in eta its radial
//! shrinkage is exactly the drift -(d - 1) T x that Brownian motion on the sphere has in ambient
//! coordinates, so both schemes have the right stationary law up to O(eta) (tested against the von
//! Mises-Fisher mean resultant length, and against mixture weights).
//!
//! The gradient runs over the splats a chain is routed to (a [`Splats`] per group of chains), and chains
//! of a group are advanced together as two small matrix products per step: scores S = X M^T (chains x
//! splats), then U = C M (m2m-index's `weighted_sums`) with C_ij = 2 kappa_j softmax_j(ln alpha_j - 2 kappa_j (1 - S_ij)). For unit x,
//! grad E = (sum_j C_ij) x - U_i, whose first term is radial, so P_x grad E = -(U_i - (U_i . x) x) and
//! U_i . x = sum_j C_ij S_ij comes from the scores for free. Both products are register-blocked SIMD
//! kernels of m2m-index.
//!
//! [`Method::Reduced`] (chosen by [`Method::Auto`] where it costs less) simulates the overdamped
//! Gaussian chain exactly in law in the span of the routed splats and the start, plus the length of the
//! part off it: each step costs O(splats^2) instead of O(splats x dim); see the `reduced` module.
//!
//! [`Noise::Rademacher`] replaces the Gaussian xi by independent +-1 signs: the same mean and covariance,
//! so the scheme keeps weak order 1 (Kloeden and Platen's simplified weak Euler scheme) while drawing one
//! bit per coordinate instead of a Gaussian; it is faster, and named for what it is.

use m2m_index::kernels;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::error::{check_len, check_setting, check_values};
use crate::isa::kernel_isa;
use crate::prefetch::LineQueue;
use crate::{Error, Result, Splats};

mod reduced;
mod span;

pub(crate) use reduced::{OneScratch, Prepared};

/// Which dynamics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dynamics {
    /// First order: positions only.
    #[default]
    Overdamped,
    /// Second order, with a tangent velocity per chain (starting at rest) and friction `gamma`.
    Underdamped,
}

/// The random increments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Noise {
    /// Standard normal per coordinate (vectorised Box-Muller, [`crate::normal`]).
    #[default]
    Gaussian,
    /// +-1 per coordinate (same first two moments; weak order 1).
    Rademacher,
}

/// How chains are simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// [`Method::Reduced`] where it applies and costs less than [`Method::Full`] (overdamped, Gaussian,
    /// more dimensions than routed splats plus one, and enough steps to repay the basis), else `Full`.
    #[default]
    Auto,
    /// Every step in all `dim` coordinates.
    Full,
    /// Overdamped with Gaussian noise only: the exact reduction to the span of the splats and the start
    /// (module `reduced`): the same law as `Full`, each step O(splats^2) instead of O(splats x dim).
    /// Falls back to `Full` when the span is the whole space (splats + 1 >= dim).
    Reduced,
}

/// Settings of a run. Defaults follow the original project's configuration: 200 steps, dt 0.001,
/// gamma 0.1, temperature 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LangevinConfig {
    /// Steps per run.
    pub steps: usize,
    /// Step size eta (> 0).
    pub dt: f32,
    /// Friction of the underdamped dynamics (>= 0).
    pub gamma: f32,
    /// Temperature T (>= 0; 0 is gradient descent on the sphere).
    pub temperature: f32,
    /// Overdamped or underdamped.
    pub dynamics: Dynamics,
    /// Gaussian or Rademacher increments.
    pub noise: Noise,
    /// Full or reduced simulation (default `Auto`).
    pub method: Method,
}

impl Default for LangevinConfig {
    fn default() -> Self {
        LangevinConfig {
            steps: 200,
            dt: 1e-3,
            gamma: 0.1,
            temperature: 1.0,
            dynamics: Dynamics::Overdamped,
            noise: Noise::Gaussian,
            method: Method::Auto,
        }
    }
}

impl LangevinConfig {
    /// Refuses a step size outside (0, 1], a negative or non-finite friction or temperature, and
    /// [`Method::Reduced`] with underdamped dynamics or Rademacher noise.
    pub fn validate(&self) -> Result<()> {
        if self.method == Method::Reduced && (self.dynamics != Dynamics::Overdamped || self.noise != Noise::Gaussian) {
            return Err(Error::Invalid {
                what: "method",
                index: 0,
                value: 0.0,
                reason: "the reduced method needs overdamped dynamics with Gaussian noise",
            });
        }
        if !(self.dt > 0.0 && self.dt <= 1.0) {
            return Err(Error::Invalid {
                what: "dt",
                index: 0,
                value: f64::from(self.dt),
                reason: "must be in (0, 1]",
            });
        }
        check_setting("gamma", f64::from(self.gamma), 0.0, 1e6)?;
        check_setting("temperature", f64::from(self.temperature), 0.0, 1e6)
    }
}

/// Chains advanced together, at most this many per task (parallelism and seeding are per block).
pub const CHAIN_BLOCK: usize = 64;

/// One group: chains (row-major unit vectors, updated in place) and the splats they are routed to.
#[derive(Debug)]
pub struct Group<'a> {
    /// The chains' positions, `dim` per chain; each row must be a unit vector.
    pub x: &'a mut [f32],
    /// The routed splats.
    pub splats: Splats<'a>,
}

/// Runs `config.steps` steps on every chain of every group, in parallel over blocks of [`CHAIN_BLOCK`]
/// chains. Deterministic for `seed`: block `b` of group `g` draws from its own generator seeded from
/// (`seed`, `g`, `b`), whatever the number of threads.
///
/// Errors: a bad setting; chain rows of another dimension, not finite, or far from unit length.
pub fn run(config: &LangevinConfig, groups: &mut [Group<'_>], seed: u64) -> Result<()> {
    config.validate()?;
    for g in groups.iter() {
        let dim = g.splats.dim();
        if !g.x.len().is_multiple_of(dim) {
            return Err(Error::Length { what: "chains", got: g.x.len(), expected: g.x.len() / dim * dim });
        }
        check_values("chains", g.x, false)?;
        if let Some((i, n)) =
            g.x.chunks_exact(dim)
                .map(|r| kernels::dot_with(kernel_isa(), r, r))
                .enumerate()
                .find(|(_, n)| (n - 1.0).abs() > 1e-3)
        {
            return Err(Error::Invalid {
                what: "chain norm^2",
                index: i,
                value: f64::from(n),
                reason: "chains must be unit vectors",
            });
        }
    }
    let mut tasks: Vec<(u64, u64, &mut [f32], Splats<'_>)> = Vec::new();
    for (gi, g) in groups.iter_mut().enumerate() {
        let dim = g.splats.dim();
        for (bi, block) in g.x.chunks_mut(CHAIN_BLOCK * dim).enumerate() {
            tasks.push((gi as u64, bi as u64, block, g.splats));
        }
    }
    tasks.into_par_iter().for_each(|(gi, bi, x, splats)| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, gi, bi));
        let chains = x.len() / splats.dim();
        let mut kernel = Kernel::new(&splats, chains);
        if uses_reduced(config, splats.len(), splats.dim(), chains) {
            reduced::run_block(&mut kernel, config, x, &mut rng);
        } else {
            kernel.run(config, x, &mut rng);
        }
    });
    Ok(())
}

/// Runs one chain `x` (a unit row, updated in place) against its own `splats` with the reduced method:
/// the data lake's case, one chain per seed, where the basis serves a single chain. The same law and,
/// for the same `seed`, the same draws as [`run`] with [`Method::Reduced`] on one group of this one
/// chain (the results agree up to float rounding), without the group's transposed copy of the splats.
///
/// Errors: a bad setting, dynamics or noise the reduced method does not simulate, `Method::Full`, as
/// many splats as dimensions less one, or a chain row of another dimension, not finite or not unit.
pub fn run_one(config: &LangevinConfig, splats: &Splats<'_>, x: &mut [f32], seed: u64) -> Result<()> {
    config.validate()?;
    check_len("chain", x.len(), splats.dim())?;
    check_values("chain", x, false)?;
    let n2 = kernels::dot_with(kernel_isa(), x, x);
    if (n2 - 1.0).abs() > 1e-3 {
        return Err(Error::Invalid { what: "chain norm^2", index: 0, value: f64::from(n2), reason: "must be unit" });
    }
    if !one_applies(config, splats.len(), splats.dim()) {
        return Err(Error::Invalid {
            what: "method",
            index: 0,
            value: splats.len() as f64,
            reason: "one chain runs the reduced method: overdamped, Gaussian, not Full, splats + 1 < dim",
        });
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, 0, 0));
    reduced::run_one(splats, config, x, &mut rng, &mut reduced::OneScratch::default());
    Ok(())
}

/// Whether [`run_one`] applies: the reduced method is asked for or left to `Auto` (it is exact in law,
/// and for one chain its basis costs less than the full steps), with overdamped dynamics, Gaussian
/// noise, and at least one dimension off the splats' span.
pub(crate) fn one_applies(config: &LangevinConfig, n: usize, dim: usize) -> bool {
    config.method != Method::Full
        && config.dynamics == Dynamics::Overdamped
        && config.noise == Noise::Gaussian
        && n + 1 < dim
}

/// Chain `c` of [`crate::Router::run_seeded`]: [`run_one`]'s step with chain `c`'s own generator (the
/// one [`run`] gives group `c`), from its start's `prep`ared basis, reading pivot `k`'s row as
/// `pivot_row(k)`, with reused buffers.
#[allow(
    clippy::too_many_arguments,
    reason = "the chain's settings, basis, rows, start, generator stream (two) and two buffers: a struct would only rename them"
)]
pub(crate) fn run_prepared_chain<'r>(
    config: &LangevinConfig,
    prep: &Prepared,
    pivot_row: &dyn Fn(usize) -> &'r [f32],
    x: &mut [f32],
    seed: u64,
    c: u64,
    scratch: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, c, 0));
    reduced::run_prepared(prep, pivot_row, config, x, &mut rng, scratch, ahead);
}

/// The run length of a chain started at its seed with [`crate::SeededRunLength::ToBandMiddle`]: the
/// number of steps (at most `max_steps`) after which the mean cosine to the seed of `pilots` pilot
/// chains first reaches the middle of the seed's band (`prep`'s scores); `None` without a band. The
/// pilots' generator depends on the seed's id only, so the length is a function of the seed and the
/// configuration.
pub(crate) fn seeded_steps(
    config: &LangevinConfig,
    prep: &Prepared,
    id: u64,
    max_steps: usize,
    pilots: usize,
    dim: usize,
    scratch: &mut OneScratch,
) -> Option<usize> {
    let target = prep.band_middle()?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(id, 0x5EED, 0xB4D));
    Some(reduced::steps_to_reach(prep, config, (target, max_steps.max(1)), pilots.max(1), dim, &mut rng, scratch))
}

/// Pilot trials of the per-seed temperature calibration: the temperatures at which the pilot chains run.
pub const CALIBRATION_TRIALS: usize = 3;

/// The temperature of a chain started at its seed with
/// [`crate::SeededRunLength::TemperatureToBandMiddle`]: `config.temperature` x f, f in
/// [1 / `max_factor`, `max_factor`], such that the mean cosine to the seed of `pilots` pilot chains
/// after `config.steps` steps is the middle of the seed's band. `None` without a band or at
/// temperature 0.
///
/// The search is a secant on logarithms, [`CALIBRATION_TRIALS`] trials of the pilots: the chains' mean
/// distance from the seed, m(f) = 1 - mean cosine, grows with the temperature about like f (diffusion
/// before the run relaxes, the width of the equilibrium after), so ln m is close to a line in ln f.
/// The first trial runs at f = 1, the second where slope 1 puts the target, each later one (and the
/// answer) where the line through the last two trials does; a slope that is not positive (noise,
/// both trials at a bound) is taken as 1. Every trial draws the same numbers, so m moves with f alone.
/// Where m is a power of f the answer is exact after two trials; the bisection this replaces took six.
#[allow(
    clippy::too_many_arguments,
    reason = "the search's settings and its two buffers, as `mean_cos_after` takes them: a struct would only rename them"
)]
pub(crate) fn seeded_temperature(
    config: &LangevinConfig,
    prep: &Prepared,
    id: u64,
    max_factor: f32,
    pilots: usize,
    dim: usize,
    scratch: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) -> Option<f32> {
    let target = prep.band_middle()?;
    if config.temperature <= 0.0 || config.steps == 0 {
        return None;
    }
    let span = f64::from(max_factor.max(1.0)).ln();
    // Distances from the seed, floored: a chain that has not moved has m = 0, whose log is useless.
    let floor = 1e-9f64;
    let want = (1.0 - f64::from(target)).max(floor).ln();
    let mut trial = |lf: f64| {
        let cfg = LangevinConfig { temperature: (f64::from(config.temperature) * lf.exp()) as f32, ..*config };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(id, 0x5EED, 0x7E3));
        let cos = reduced::mean_cos_after(prep, &cfg, pilots.max(1), dim, &mut rng, scratch, ahead);
        (1.0 - f64::from(cos)).max(floor).ln()
    };
    let (mut lf, mut lm) = (0.0, trial(0.0));
    let mut slope = 1.0;
    for k in 1..=CALIBRATION_TRIALS {
        let next = (lf + (want - lm) / slope).clamp(-span, span);
        if k == CALIBRATION_TRIALS || (next - lf).abs() < 1e-6 {
            lf = next;
            break;
        }
        let m = trial(next);
        let s = (m - lm) / (next - lf);
        slope = if s.is_finite() && s > 0.05 { s } else { 1.0 };
        (lf, lm) = (next, m);
    }
    Some((f64::from(config.temperature) * lf.exp()) as f32)
}

/// Whether a block of `chains` against `n` splats in `dim` dimensions runs the reduced method.
fn uses_reduced(config: &LangevinConfig, n: usize, dim: usize, chains: usize) -> bool {
    let applies = config.dynamics == Dynamics::Overdamped && config.noise == Noise::Gaussian && n + 1 < dim;
    match config.method {
        Method::Full => false,
        Method::Reduced => applies,
        Method::Auto => applies && reduced::pays(config, n, dim, chains),
    }
}

/// The drift coefficients of chains from their scores (`n` per chain): C_ij = 2 kappa_j
/// softmax_j(ln alpha_j - 2 kappa_j (1 - S_ij)), and per chain sum_j C_ij S_ij in `dots`.
#[inline(always)]
fn softmax_coefficients(scores: &[f32], ln_alpha: &[f32], kappa: &[f32], n: usize, coef: &mut [f32], dots: &mut [f32]) {
    for ((s, c), ux) in scores.chunks_exact(n).zip(coef.chunks_exact_mut(n)).zip(dots.iter_mut()) {
        for j in 0..n {
            c[j] = ln_alpha[j] - 2.0 * kappa[j] * (1.0 - s[j]);
        }
        let m = lane_max(c);
        c.iter_mut().for_each(|v| *v = exp_nonpositive(*v - m));
        let inv_z = 1.0 / lane_sum(c);
        for j in 0..n {
            c[j] *= 2.0 * kappa[j] * inv_z;
        }
        *ux = kernels::dot_with(kernel_isa(), c, s);
    }
}

/// A seed for block `b` of group `g` (splitmix64 of the three).
fn mix(seed: u64, g: u64, b: u64) -> u64 {
    let mut z = seed ^ g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Working memory for one block of chains against one splat set.
struct Kernel<'s> {
    splats: &'s Splats<'s>,
    /// mu transposed: `dim` rows of `n`, so that the scores are weighted sums of its rows too.
    mu_t: Vec<f32>,
    ln_alpha: Vec<f32>,
    scores: Vec<f32>,
    coef: Vec<f32>,
    u: Vec<f32>,
    xi: Vec<f32>,
}

impl<'s> Kernel<'s> {
    fn new(splats: &'s Splats<'s>, chains: usize) -> Kernel<'s> {
        let (n, dim) = (splats.len(), splats.dim());
        // Transposed in 16 x 16 tiles, so that reads and writes both stay within a few cache lines.
        let mut mu_t = vec![0f32; dim * n];
        let mu = splats.mu();
        for j0 in (0..n).step_by(16) {
            for k0 in (0..dim).step_by(16) {
                for j in j0..(j0 + 16).min(n) {
                    let row = &mu[j * dim..(j + 1) * dim];
                    for k in k0..(k0 + 16).min(dim) {
                        mu_t[k * n + j] = row[k];
                    }
                }
            }
        }
        Kernel {
            splats,
            mu_t,
            ln_alpha: splats.alpha().iter().map(|a| a.ln()).collect(),
            scores: vec![0f32; chains * n],
            coef: vec![0f32; chains * n],
            u: vec![0f32; chains * dim],
            xi: vec![0f32; dim],
        }
    }

    /// U_i = sum_j C_ij mu_j and returns, per chain, sum_j C_ij S_ij (= U_i . x_i), in `dots`.
    fn drift(&mut self, x: &[f32], dots: &mut [f32]) {
        let (n, dim) = (self.splats.len(), self.splats.dim());
        // S = X M^T as weighted sums of the rows of M^T: no horizontal sums in the inner loop.
        kernels::weighted_sums_with(kernel_isa(), x, &self.mu_t, n, &mut self.scores);
        softmax_coefficients(&self.scores, &self.ln_alpha, self.splats.kappa(), n, &mut self.coef, dots);
        kernels::weighted_sums_with(kernel_isa(), &self.coef, self.splats.mu(), dim, &mut self.u);
    }

    #[inline(always)]
    fn fill_noise(&mut self, noise: Noise, rng: &mut impl Rng) {
        match noise {
            Noise::Gaussian => crate::normal::fill_normal_generic(rng, &mut self.xi),
            Noise::Rademacher => {
                for chunk in self.xi.chunks_mut(64) {
                    let bits = rng.next_u64();
                    for (k, v) in chunk.iter_mut().enumerate() {
                        *v = if bits >> k & 1 == 1 { 1.0 } else { -1.0 };
                    }
                }
            }
        }
    }

    /// Runs the steps with the per-chain loops compiled for the best instruction set.
    fn run(&mut self, cfg: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
        #[cfg(target_arch = "x86_64")]
        match kernel_isa() {
            // SAFETY: `kernel_isa` returns Avx512 only when AVX-512 F/BW (and AVX2, FMA) are present.
            kernels::Isa::Avx512 => return unsafe { self.run_avx512(cfg, x, rng) },
            // SAFETY: `kernel_isa` returns Avx2 only when AVX2 and FMA are present.
            kernels::Isa::Avx2 => return unsafe { self.run_avx2(cfg, x, rng) },
            // Scalar runs the portable body below. Neon is never returned on x86-64; on aarch64 this
            // match is compiled out and the portable body is built with NEON, baseline there.
            kernels::Isa::Scalar | kernels::Isa::Neon => {}
        }
        self.run_body(cfg, x, rng)
    }

    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn run_avx512(&mut self, cfg: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
        self.run_body(cfg, x, rng)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&mut self, cfg: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
        self.run_body(cfg, x, rng)
    }

    #[inline(always)]
    fn run_body(&mut self, cfg: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
        let dim = self.splats.dim();
        let chains = x.len() / dim;
        let eta = cfg.dt;
        let mut dots = vec![0f32; chains];
        let mut v = match cfg.dynamics {
            Dynamics::Underdamped => vec![0f32; x.len()],
            Dynamics::Overdamped => Vec::new(),
        };
        let scale = match cfg.dynamics {
            Dynamics::Overdamped => (2.0 * eta * cfg.temperature).sqrt(),
            Dynamics::Underdamped => (2.0 * cfg.gamma * cfg.temperature * eta).sqrt(),
        };
        for _ in 0..cfg.steps {
            self.drift(x, &mut dots);
            for i in 0..chains {
                self.fill_noise(cfg.noise, rng);
                let row = &mut x[i * dim..(i + 1) * dim];
                let u = &self.u[i * dim..(i + 1) * dim];
                let xi_dot = kernels::dot_with(kernel_isa(), &self.xi, row);
                // Tangent force f = P_x U = -P_x grad E, and tangent noise P_x xi.
                let ux = dots[i];
                match cfg.dynamics {
                    Dynamics::Overdamped => overdamped_update(row, u, ux, &self.xi, xi_dot, eta, scale),
                    Dynamics::Underdamped => {
                        let vi = &mut v[i * dim..(i + 1) * dim];
                        for (((xv, vv), &uv), &nv) in row.iter_mut().zip(vi.iter_mut()).zip(u).zip(&self.xi) {
                            let x0 = *xv;
                            *vv += eta * ((uv - ux * x0) - cfg.gamma * *vv) + scale * (nv - xi_dot * x0);
                            *xv = x0 + eta * *vv;
                        }
                    }
                }
                if cfg.dynamics == Dynamics::Underdamped {
                    retract(row);
                    let vi = &mut v[i * dim..(i + 1) * dim];
                    let radial = kernels::dot_with(kernel_isa(), vi, row);
                    vi.iter_mut().zip(row.iter()).for_each(|(a, b)| *a -= radial * b);
                }
            }
        }
    }
}

/// Advances chains by exactly one overdamped step with the given increments `xi` (`dim` per chain,
/// before projection): the drift of the production kernel (the `Kernel`'s two products) and the same
/// per-chain update function that [`run`] applies, with the noise given instead of drawn. m2m-gpu's step
/// shader must match it.
pub fn overdamped_step(config: &LangevinConfig, x: &mut [f32], splats: &Splats<'_>, xi: &[f32]) -> Result<()> {
    check_len("xi", xi.len(), x.len())?;
    let dim = splats.dim();
    let chains = x.len() / dim;
    check_len("chains", x.len(), chains * dim)?;
    let mut k = Kernel::new(splats, chains);
    let mut dots = vec![0f32; chains];
    k.drift(x, &mut dots);
    let scale = (2.0 * config.dt * config.temperature).sqrt();
    for i in 0..chains {
        let row = &mut x[i * dim..(i + 1) * dim];
        let noise = &xi[i * dim..(i + 1) * dim];
        let u = &k.u[i * dim..(i + 1) * dim];
        let xi_dot = kernels::dot_with(kernel_isa(), noise, row);
        overdamped_update(row, u, dots[i], noise, xi_dot, config.dt, scale);
    }
    Ok(())
}

/// One overdamped step of one chain, the update the production loop runs: x <- normalise(x + eta (U -
/// (U.x) x) + scale (xi - (xi.x) x)), with `ux` = U.x and `xi_dot` = xi.x computed before the update.
#[inline(always)]
fn overdamped_update(row: &mut [f32], u: &[f32], ux: f32, xi: &[f32], xi_dot: f32, eta: f32, scale: f32) {
    for ((xv, &uv), &nv) in row.iter_mut().zip(u).zip(xi) {
        let x0 = *xv;
        *xv = x0 + eta * (uv - ux * x0) + scale * (nv - xi_dot * x0);
    }
    retract(row);
}

/// Back onto the sphere (the retraction after every step).
#[inline(always)]
fn retract(row: &mut [f32]) {
    let inv = 1.0 / kernels::dot_with(kernel_isa(), row, row).sqrt();
    row.iter_mut().for_each(|a| *a *= inv);
}

/// Draws `rows` independent uniform points on the sphere S^(dim-1) (normalised Gaussians), for starting
/// chains without seeds.
pub fn uniform_on_sphere(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut out = vec![0f32; rows * dim];
    for row in out.chunks_exact_mut(dim.max(1)) {
        loop {
            row.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
            let n = row.iter().map(|a| a * a).sum::<f32>().sqrt();
            if n > 1e-6 {
                row.iter_mut().for_each(|a| *a /= n);
                break;
            }
        }
    }
    out
}

/// e^x for x <= 0 (0 below -87), to about 2 ulp: x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6
/// Taylor polynomial of e^r, and 2^n put into the exponent bits. Branch-free, so the softmax loop
/// vectorises; libm's `expf` is a call per value.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (no call to `roundf`).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    // ln 2 split in two so that n * ln 2 is exact enough.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Maximum in eight interleaved lanes (vectorises, unlike a sequential fold: a walk step's softmax
/// waited on 17 dependent maxima); `-inf` for an empty slice.
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &b)| *a = a.max(b));
    }
    let m = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    acc.iter().fold(m, |a, &b| a.max(b))
}

/// Sum in eight interleaved lanes (vectorises, unlike a sequential f32 sum).
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::exp_nonpositive;

    #[test]
    fn exp_matches_the_library_to_a_few_ulp() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let (got, want) = (f64::from(exp_nonpositive(x)), f64::from(x).exp());
            let tol = if x < -87.0 { 2e-38 } else { 4e-7 * want };
            assert!((got - want).abs() <= tol, "x {x}: {got} vs {want}");
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }
}
