//! The energy of a point under the splats and its gradient, exactly (every splat, f64, log-sum-exp).
//!
//! E(x) = -log sum_i alpha_i exp(-kappa_i |x - mu_i|^2). For unit x and mu, |x - mu|^2 = 2 - 2 x.mu, so
//! each term is alpha_i e^{-2 kappa_i} e^{2 kappa_i x.mu_i}: a von Mises-Fisher kernel of concentration
//! 2 kappa_i, and exp(-E) is a vMF mixture. With l_i = ln alpha_i - kappa_i |x - mu_i|^2 and m = max l_i,
//! E = -(m + ln sum_i e^{l_i - m}): no term overflows or underflows to a wrong result whatever kappa is.
//! The gradient is sum_i w_i 2 kappa_i (x - mu_i) with w = softmax(l).
//!
//! These are the reference (exact) functions: the Langevin kernel evaluates the same formulas in f32 over
//! the splats a point is routed to (see [`crate::langevin`]).

use crate::error::{check_len, check_values};
use crate::{Error, Result};

/// Borrowed splats: `n` rows of unit `mu` (row-major, `dim` wide), with `kappa` and `alpha`.
#[derive(Clone, Copy, Debug)]
pub struct Splats<'a> {
    dim: usize,
    mu: &'a [f32],
    kappa: &'a [f32],
    alpha: &'a [f32],
}

impl<'a> Splats<'a> {
    /// Checks the shapes and values (kappa and alpha finite and > 0, mu finite; at least one splat).
    /// `mu` rows are expected to be unit vectors, as m2m-splat stores them.
    pub fn new(dim: usize, mu: &'a [f32], kappa: &'a [f32], alpha: &'a [f32]) -> Result<Splats<'a>> {
        if dim == 0 || kappa.is_empty() {
            return Err(Error::Empty { what: "splats" });
        }
        check_len("mu", mu.len(), kappa.len() * dim)?;
        check_len("alpha", alpha.len(), kappa.len())?;
        check_values("kappa", kappa, true)?;
        check_values("alpha", alpha, true)?;
        check_values("mu", mu, false)?;
        Ok(Splats { dim, mu, kappa, alpha })
    }

    /// Without the checks of [`Splats::new`], for parameters checked when they were stored (the
    /// router's members). The shapes must agree: `mu` is `kappa.len()` rows of `dim`, as many alphas.
    pub(crate) fn trusted(dim: usize, mu: &'a [f32], kappa: &'a [f32], alpha: &'a [f32]) -> Splats<'a> {
        debug_assert!(mu.len() == kappa.len() * dim && alpha.len() == kappa.len() && !kappa.is_empty());
        Splats { dim, mu, kappa, alpha }
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of splats.
    pub fn len(&self) -> usize {
        self.kappa.len()
    }

    /// Always false: a `Splats` holds at least one splat.
    pub fn is_empty(&self) -> bool {
        self.kappa.is_empty()
    }

    /// The directions, row-major.
    pub fn mu(&self) -> &'a [f32] {
        self.mu
    }

    /// Row `i` of `mu`.
    pub fn mu_row(&self, i: usize) -> &'a [f32] {
        &self.mu[i * self.dim..(i + 1) * self.dim]
    }

    /// The concentrations.
    pub fn kappa(&self) -> &'a [f32] {
        self.kappa
    }

    /// The weights.
    pub fn alpha(&self) -> &'a [f32] {
        self.alpha
    }
}

fn check_point(x: &[f32], s: &Splats<'_>) -> Result<()> {
    check_len("x", x.len(), s.dim)?;
    check_values("x", x, false)
}

/// The log-terms l_i = ln alpha_i - kappa_i |x - mu_i|^2, in f64.
fn log_terms(x: &[f32], s: &Splats<'_>) -> Vec<f64> {
    (0..s.len())
        .map(|i| {
            let d2: f64 = x.iter().zip(s.mu_row(i)).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
            f64::from(s.alpha[i]).ln() - f64::from(s.kappa[i]) * d2
        })
        .collect()
}

/// `ln sum_i exp(l_i)` without overflow or underflow (the maximum is factored out).
pub fn log_sum_exp(l: &[f64]) -> f64 {
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + l.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// E(x), exactly over every splat.
///
/// Errors: a dimension mismatch or a non-finite coordinate of `x`.
pub fn energy(x: &[f32], splats: &Splats<'_>) -> Result<f64> {
    check_point(x, splats)?;
    Ok(-log_sum_exp(&log_terms(x, splats)))
}

/// E(x) and its gradient in R^d (written to `grad`), exactly over every splat.
pub fn energy_grad(x: &[f32], splats: &Splats<'_>, grad: &mut [f64]) -> Result<f64> {
    check_point(x, splats)?;
    check_len("grad", grad.len(), splats.dim)?;
    let l = log_terms(x, splats);
    let lse = log_sum_exp(&l);
    grad.fill(0.0);
    for (i, &li) in l.iter().enumerate() {
        let c = 2.0 * f64::from(splats.kappa[i]) * (li - lse).exp();
        for ((g, &xv), &m) in grad.iter_mut().zip(x).zip(splats.mu_row(i)) {
            *g += c * (f64::from(xv) - f64::from(m));
        }
    }
    Ok(-lse)
}
