//! [`Method::Reduced`](super::Method::Reduced): overdamped Langevin with Gaussian noise, simulated
//! exactly in law in the span of the splats instead of in all `dim` coordinates.
//!
//! A chain started at x0 against splats M = (mu_1 .. mu_n) is x = Q a + p, where the columns of Q are an
//! orthonormal basis of V = span(mu_1 .. mu_n, x0) (r' <= n + 1 of them) and p is orthogonal to V.
//!
//! - The scores are x . mu_j = a . (Q^T mu_j): they depend on `a` only.
//! - The drift U = sum_j C_j mu_j lies in V, and U . x = U . (Q a).
//! - The noise is xi = Q z + xi_perp with z ~ N(0, I_r') and xi_perp isotropic in V^perp. Given
//!   rho = |p|, xi_perp . p is rho g with g ~ N(0, 1), and |xi_perp|^2 = g^2 + chi2 with d - r' - 1
//!   degrees of freedom.
//!
//! So one step of the full scheme, x <- normalise(x + eta (U - (U.x) x) + s (xi - (xi.x) x)), is, with
//! beta = 1 - eta U.x - s xi.x,
//!
//!   a <- a + eta (u - (U.x) a) + s (z - (xi.x) a),   rho^2 <- (beta rho + s g)^2 + s^2 chi2,
//!
//! both divided by sqrt(|a|^2 + rho^2). Nothing depends on the direction of p, and every increment of p
//! is isotropic in V^perp, so at the end that direction is uniform in V^perp and independent of the
//! path: it is drawn once, from one Gaussian vector projected off V. The reduced chain therefore has
//! exactly the law of the full one; a step costs O(n r') instead of O(n d), and a run pays O(n d) three
//! times (scores at the start, the projection of the last Gaussian, the lift back) plus the basis.
//!
//! The basis comes from a pivoted Cholesky factorisation of the Gram matrix M M^T (f32 products, f64
//! factorisation): a splat within `PIVOT_TOL` (squared distance) of the span of the chosen ones is
//! treated as in it. x0 adds its own direction when its squared distance from the span exceeds the same
//! tolerance.

use m2m_index::kernels;
use rand::Rng;
use rand_distr::{ChiSquared, Distribution};

use super::{Kernel, LangevinConfig, softmax_coefficients, span};
use crate::isa::kernel_isa;
use crate::normal::fill_normal_generic;
use crate::prefetch::LineQueue;

/// Squared distance below which a splat, or a chain's start, is taken as in the span of the basis.
const PIVOT_TOL: f64 = 1e-5;

/// The orthonormal basis Q = L^-1 M_B of the splats' span and every splat's coordinates in it.
struct Basis {
    /// Splats chosen as the basis, in pivot order.
    pivots: Vec<usize>,
    /// L^-1, `r` x `r` row-major lower triangular, where M_B M_B^T = L L^T (computed in f64).
    l_inv: Vec<f32>,
    /// L^-1 transposed (row `m` holds column `m`).
    l_inv_t: Vec<f32>,
    /// Coordinates of each splat: `n` rows of `r + 1` (the last, the chain's own direction, is 0).
    w: Vec<f32>,
    /// `w` transposed: `r + 1` rows of `n`.
    w_t: Vec<f32>,
}

impl Basis {
    /// Inlined into the per-instruction-set bodies of `run_block`, so that its loops use their vectors.
    #[inline(always)]
    fn new(mu: &[f32], n: usize) -> Basis {
        let (mut g32, mut tmp) = (Vec::new(), Vec::new());
        gram(mu, n, &mut tmp, &mut g32);
        Basis::from_gram(&g32, n)
    }

    /// The basis from the splats' Gram matrix `g32` (`n` x `n`, row-major; symmetrised here).
    #[inline(always)]
    fn from_gram(g32: &[f32], n: usize) -> Basis {
        let g = |i: usize, j: usize| 0.5 * (f64::from(g32[i * n + j]) + f64::from(g32[j * n + i]));
        let mut diag: Vec<f64> = (0..n).map(|j| g(j, j)).collect();
        let mut used = vec![false; n];
        // Column k of the factor (`n` values from k * n): coordinate k of every splat's projection on
        // the span. Each column is G's pivot column less the earlier columns (axpys, which vectorise).
        let mut f = vec![0f64; n * n];
        let mut col = vec![0f64; n];
        let mut pivots = Vec::new();
        for k in 0..n {
            let Some(p) = (0..n).filter(|&j| !used[j]).max_by(|&i, &j| diag[i].total_cmp(&diag[j])) else {
                break;
            };
            if diag[p] <= PIVOT_TOL {
                break;
            }
            let piv = diag[p].sqrt();
            used[p] = true;
            pivots.push(p);
            col.iter_mut().enumerate().for_each(|(j, c)| *c = g(j, p));
            for m in 0..k {
                let fp = f[m * n + p];
                col.iter_mut().zip(&f[m * n..(m + 1) * n]).for_each(|(c, fm)| *c -= fp * fm);
            }
            for j in 0..n {
                // An earlier pivot lies in the span already: its coordinate k is 0.
                let v = if used[j] && j != p { 0.0 } else { col[j] / piv };
                f[k * n + j] = v;
                if !used[j] {
                    diag[j] -= v * v;
                }
            }
        }
        let r = pivots.len();
        let rr = r + 1;
        let mut l = vec![0f64; r * r];
        for (i, &p) in pivots.iter().enumerate() {
            for k in 0..=i {
                l[i * r + k] = f[k * n + p];
            }
        }
        // L^-1 once per block (r^3 / 6), so that the per-chain solves are products that vectorise.
        // Row k of L^-1 is (e_k - sum_{m<k} L_km row_m) / L_kk: axpys over rows.
        let mut l_inv = vec![0f64; r * r];
        let mut row = vec![0f64; r];
        for k in 0..r {
            row.fill(0.0);
            row[k] = 1.0;
            for m in 0..k {
                let lkm = l[k * r + m];
                row[..=m].iter_mut().zip(&l_inv[m * r..m * r + m + 1]).for_each(|(a, b)| *a -= lkm * b);
            }
            let inv = 1.0 / l[k * r + k];
            l_inv[k * r..(k + 1) * r].iter_mut().zip(&row).for_each(|(a, b)| *a = b * inv);
        }
        let mut w = vec![0f32; n * rr];
        let mut w_t = vec![0f32; rr * n];
        for j in 0..n {
            for k in 0..r {
                w[j * rr + k] = f[k * n + j] as f32;
                w_t[k * n + j] = f[k * n + j] as f32;
            }
        }
        let mut l_inv_t = vec![0f32; r * r];
        for k in 0..r {
            for m in 0..=k {
                l_inv_t[m * r + k] = l_inv[k * r + m] as f32;
            }
        }
        let l_inv = l_inv.iter().map(|&v| v as f32).collect();
        Basis { pivots, l_inv, l_inv_t, w, w_t }
    }

    fn rank(&self) -> usize {
        self.pivots.len()
    }

    /// Q^T v for every chain from its scores M v (`n` per chain): y = L^-1 (scores of the pivots), as
    /// one product over the chains.
    #[inline(always)]
    fn forward(&self, scores: &[f32], n: usize, gathered: &mut Vec<f32>, y: &mut [f32]) {
        let r = self.rank();
        gathered.clear();
        for row in scores.chunks_exact(n) {
            gathered.extend(self.pivots.iter().map(|&p| row[p]));
        }
        if r > 0 {
            kernels::weighted_sums_with(kernel_isa(), gathered, &self.l_inv_t, r, y);
        }
    }

    /// Coefficients over M_B of Q v for every chain: y = L^-T v, as one product over the chains.
    #[inline(always)]
    fn backward(&self, v: &[f32], y: &mut [f32]) {
        let r = self.rank();
        if r > 0 {
            kernels::weighted_sums_with(kernel_isa(), v, &self.l_inv, r, y);
        }
    }
}

/// The Gram matrix M M^T of `n` rows `mu` into `out` (`n` x `n`): its upper triangle in blocks of 4
/// rows (the register-blocked product), mirrored. One function for blocks and single chains, so that
/// both factor the same bits and pick the same pivots (unit rows tie on the diagonal).
#[inline(always)]
fn gram(mu: &[f32], n: usize, tmp: &mut Vec<f32>, out: &mut Vec<f32>) {
    let dim = mu.len() / n.max(1);
    out.resize(n * n, 0.0);
    tmp.resize(4 * n, 0.0);
    for i0 in (0..n).step_by(4) {
        let q = (n - i0).min(4);
        let cols = n - i0;
        kernels::dots_many_with(
            kernel_isa(),
            &mu[i0 * dim..(i0 + q) * dim],
            &mu[i0 * dim..],
            dim,
            &mut tmp[..q * cols],
        );
        for a in 0..q {
            for b in a..cols {
                let v = tmp[a * cols + b];
                out[(i0 + a) * n + i0 + b] = v;
                out[(i0 + b) * n + i0 + a] = v;
            }
        }
    }
}

/// Whether the reduced run costs less than the full one for a block of `chains` against `n` splats.
pub(super) fn pays(config: &LangevinConfig, n: usize, dim: usize, chains: usize) -> bool {
    let (n, d, c, steps) = (n as f64, dim as f64, chains.max(1) as f64, config.steps as f64);
    let full = steps * (2.0 * n * d + 4.0 * d);
    let reduced = n * n * d / c + 3.0 * n * d + 4.0 * d + steps * (2.0 * n * (n + 1.0) + 4.0 * (n + 1.0));
    reduced < full
}

/// Runs `config.steps` overdamped steps on the block `x` (unit rows) with Gaussian noise. Needs
/// `splats + 1 < dim`, so that every chain keeps at least one dimension off its span.
pub(super) fn run_block(k: &mut Kernel<'_>, config: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
    #[cfg(target_arch = "x86_64")]
    match kernel_isa() {
        // SAFETY: `kernel_isa` returns Avx512 only when AVX-512 F/BW (and AVX2, FMA) are present.
        kernels::Isa::Avx512 => return unsafe { run_block_avx512(k, config, x, rng) },
        // SAFETY: `kernel_isa` returns Avx2 only when AVX2 and FMA are present.
        kernels::Isa::Avx2 => return unsafe { run_block_avx2(k, config, x, rng) },
        // Scalar runs the portable body below. Neon is never returned on x86-64; on aarch64 this
        // match is compiled out and the portable body is built with NEON, baseline there.
        kernels::Isa::Scalar | kernels::Isa::Neon => {}
    }
    run_block_body(k, config, x, rng)
}

/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn run_block_avx512(k: &mut Kernel<'_>, config: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
    run_block_body(k, config, x, rng)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_block_avx2(k: &mut Kernel<'_>, config: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
    run_block_body(k, config, x, rng)
}

#[inline(always)]
fn run_block_body(k: &mut Kernel<'_>, config: &LangevinConfig, x: &mut [f32], rng: &mut impl Rng) {
    let (n, dim) = (k.splats.len(), k.splats.dim());
    let chains = x.len() / dim;
    let basis = Basis::new(k.splats.mu(), n);
    let r = basis.rank();
    let rr = r + 1;

    // Start: a = (Q^T x0, rho_x), where rho_x is x0's distance from the splats' span (0 when inside).
    kernels::weighted_sums_with(kernel_isa(), x, &k.mu_t, n, &mut k.scores);
    let mut a = vec![0f32; chains * rr];
    let mut start = vec![0f32; chains * r];
    let mut gathered = Vec::with_capacity(chains * r);
    basis.forward(&k.scores, n, &mut gathered, &mut start);
    let mut rho_x = vec![0f32; chains];
    for i in 0..chains {
        let l0 = &start[i * r..(i + 1) * r];
        let row = &x[i * dim..(i + 1) * dim];
        let norm2 = kernels::dot_with(kernel_isa(), row, row);
        let res = f64::from(norm2) - f64::from(kernels::dot_with(kernel_isa(), l0, l0));
        rho_x[i] = if res > PIVOT_TOL * f64::from(norm2) { res.sqrt() as f32 } else { 0.0 };
        a[i * rr..i * rr + r].copy_from_slice(l0);
        a[i * rr + r] = rho_x[i];
    }
    // Dimension of V^perp for each chain.
    let perp: Vec<usize> = rho_x.iter().map(|&rx| dim - r - usize::from(rx > 0.0)).collect();
    let chi = |df: usize| (df >= 1).then(|| ChiSquared::new(df as f32).expect("df >= 1 is valid"));
    let chi_with_x = chi(dim.saturating_sub(rr + 1));
    let chi_without = chi(dim.saturating_sub(r + 1));

    let eta = config.dt;
    let s = (2.0 * eta * config.temperature).sqrt();
    let mut rho = vec![0f32; chains];
    let mut u = vec![0f32; chains * rr];
    let mut dots = vec![0f32; chains];
    let mut z = vec![0f32; chains * (rr + 1)];
    let kappa = k.splats.kappa();
    for step in 0..config.steps {
        // The first step's scores are the start's (X M^T, still in `k.scores`).
        if step > 0 {
            kernels::weighted_sums_with(kernel_isa(), &a, &basis.w_t, n, &mut k.scores);
        }
        softmax_coefficients(&k.scores, &k.ln_alpha, kappa, n, &mut k.coef, &mut dots);
        kernels::weighted_sums_with(kernel_isa(), &k.coef, &basis.w, rr, &mut u);
        if s > 0.0 {
            fill_normal_generic(rng, &mut z);
        }
        for i in 0..chains {
            let zi = &mut z[i * (rr + 1)..(i + 1) * (rr + 1)];
            let has_x = rho_x[i] > 0.0;
            if !has_x {
                zi[r] = 0.0;
            }
            let (g, q) = if s > 0.0 {
                let g = if perp[i] >= 1 { zi[rr] } else { 0.0 };
                let dist = if has_x { &chi_with_x } else { &chi_without };
                (g, dist.as_ref().map_or(0.0, |d| d.sample(rng)))
            } else {
                (0.0, 0.0)
            };
            let ai = &mut a[i * rr..(i + 1) * rr];
            let ui = &u[i * rr..(i + 1) * rr];
            let xi_dot = kernels::dot_with(kernel_isa(), &zi[..rr], ai) + g * rho[i];
            let ux = dots[i];
            for ((av, &uv), &zv) in ai.iter_mut().zip(ui).zip(&zi[..rr]) {
                let a0 = *av;
                *av = a0 + eta * (uv - ux * a0) + s * (zv - xi_dot * a0);
            }
            let beta = 1.0 - eta * ux - s * xi_dot;
            let rp = beta * rho[i] + s * g;
            let rho2 = rp * rp + s * s * q;
            let inv = 1.0 / (kernels::dot_with(kernel_isa(), ai, ai) + rho2).sqrt();
            ai.iter_mut().for_each(|v| *v *= inv);
            rho[i] = rho2.sqrt() * inv;
        }
    }

    // Lift: x = Q a_Q + a_x q_x + rho p_hat, with q_x = (x0 - Q l0) / rho_x and p_hat the unit part of a
    // Gaussian vector off V, as coefficients over the pivots' mu, x0 and that Gaussian vector.
    let mut gauss = vec![0f32; chains * dim];
    let lift_noise = rho.iter().zip(&perp).any(|(&rh, &pp)| rh > 0.0 && pp > 0);
    if lift_noise {
        fill_normal_generic(rng, &mut gauss);
        kernels::weighted_sums_with(kernel_isa(), &gauss, &k.mu_t, n, &mut k.scores);
    }
    let mut h = vec![0f32; chains * r];
    if lift_noise {
        basis.forward(&k.scores, n, &mut gathered, &mut h);
    }
    let mut extra = vec![(0f32, 0f32); chains];
    let mut v = vec![0f32; chains * r];
    for i in 0..chains {
        let ai = &a[i * rr..(i + 1) * rr];
        let l0 = &start[i * r..(i + 1) * r];
        let vi = &mut v[i * r..(i + 1) * r];
        vi.copy_from_slice(&ai[..r]);
        let mut vx = ai[r];
        let mut t = 0.0;
        if lift_noise && rho[i] > 0.0 && perp[i] > 0 {
            let gi = &gauss[i * dim..(i + 1) * dim];
            let hi = &h[i * r..(i + 1) * r];
            let hx = if rho_x[i] > 0.0 {
                (kernels::dot_with(kernel_isa(), &x[i * dim..(i + 1) * dim], gi)
                    - kernels::dot_with(kernel_isa(), l0, hi))
                    / rho_x[i]
            } else {
                0.0
            };
            let g2 = kernels::dot_with(kernel_isa(), gi, gi);
            let off = (g2 - kernels::dot_with(kernel_isa(), hi, hi) - hx * hx).max(1e-6 * g2);
            t = rho[i] / off.sqrt();
            vi.iter_mut().zip(hi).for_each(|(vv, hv)| *vv -= t * hv);
            vx -= t * hx;
        }
        let cx = if rho_x[i] > 0.0 { vx / rho_x[i] } else { 0.0 };
        vi.iter_mut().zip(l0).for_each(|(vv, lv)| *vv -= cx * lv);
        extra[i] = (cx, t);
    }
    let mut y = vec![0f32; chains * r];
    basis.backward(&v, &mut y);
    k.coef.fill(0.0);
    for (i, yi) in y.chunks_exact(r.max(1)).enumerate().take(chains) {
        for (&p, &yv) in basis.pivots.iter().zip(yi) {
            k.coef[i * n + p] = yv;
        }
    }
    kernels::weighted_sums_with(kernel_isa(), &k.coef, k.splats.mu(), dim, &mut k.u);
    for (i, &(cx, t)) in extra.iter().enumerate() {
        let out = &mut k.u[i * dim..(i + 1) * dim];
        let x0 = &x[i * dim..(i + 1) * dim];
        if t != 0.0 {
            let gi = &gauss[i * dim..(i + 1) * dim];
            out.iter_mut().zip(x0).zip(gi).for_each(|((o, &xv), &gv)| *o += cx * xv + t * gv);
        } else {
            out.iter_mut().zip(x0).for_each(|(o, &xv)| *o += cx * xv);
        }
        let inv = 1.0 / kernels::dot_with(kernel_isa(), out, out).sqrt();
        out.iter_mut().for_each(|v| *v *= inv);
    }
    x.copy_from_slice(&k.u[..x.len()]);
}

/// Reused buffers of [`run_one`] and [`run_prepared`]: a chain allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct OneScratch {
    gram: Vec<f32>,
    tmp: Vec<f32>,
    scores: Vec<f32>,
    coef: Vec<f32>,
    a: Vec<f32>,
    u: Vec<f32>,
    z: Vec<f32>,
    gathered: Vec<f32>,
    h: Vec<f32>,
    v: Vec<f32>,
    y: Vec<f32>,
    gauss: Vec<f32>,
    out: Vec<f32>,
}

/// What a single chain needs that depends only on its splats and its start, not on its random draws:
/// the basis of their span (pivots, L^-1 and every splat's coordinates), the start's scores and
/// coordinates, and the splats' ln alpha and kappa. For the data lake's chains the splats are a seed's
/// neighbourhood and the start is the seed itself, so this is computed once per seed
/// ([`crate::Router::run_seeded`] keeps it) and every chain started there runs only its steps and its
/// lift. It holds no rows: the lift reads the pivots' rows where they are.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    /// Splats chosen as the basis, in pivot order (indices into the splats).
    pivots: Vec<u32>,
    /// L^-1, `r` x `r` row-major lower triangular (M_B M_B^T = L L^T).
    l_inv: Vec<f32>,
    /// Coordinates of each splat: `n` rows of [`Prepared::stride`] (`r + 1` used: the last, the start's
    /// own direction, is 0; zeros after), so that a step's products run in whole vectors of 8.
    w: Vec<f32>,
    /// `w` transposed: `r + 1` rows of the `n` splats padded to [`Prepared::npad`] (zeros after), so
    /// that a step's scores are a weighted sum of its rows ([`span::rows_sum`]).
    w_t: Vec<f32>,
    /// The start's scores x0 . mu_j (`n`).
    scores: Vec<f32>,
    /// The start's coordinates Q^T x0 (`r`).
    start: Vec<f32>,
    /// The start's distance from the span (0 when inside it).
    rho_x: f32,
    ln_alpha: Vec<f32>,
    kappa: Vec<f32>,
}

impl Prepared {
    /// The basis of `splats`' span and the start `x` (a unit row) in it. Needs `splats + 1 < dim`.
    pub(crate) fn new(splats: &crate::Splats<'_>, x: &[f32], scr: &mut OneScratch) -> Prepared {
        let (n, dim, mu) = (splats.len(), splats.dim(), splats.mu());
        gram(mu, n, &mut scr.tmp, &mut scr.gram);
        let basis = Basis::from_gram(&scr.gram, n);
        let r = basis.rank();
        // A chain started at its seed (the first splat, as the lake starts them) has the Gram's first
        // row as its scores.
        let scores = if x == &mu[..dim] {
            scr.gram[..n].to_vec()
        } else {
            let mut s = vec![0f32; n];
            kernels::dots_with(kernel_isa(), x, mu, &mut s);
            s
        };
        let mut prep = Prepared {
            pivots: basis.pivots.iter().map(|&p| p as u32).collect(),
            l_inv: basis.l_inv,
            w: Vec::new(),
            w_t: Vec::new(),
            scores,
            start: vec![0f32; r],
            rho_x: 0.0,
            ln_alpha: splats.alpha().iter().map(|a| a.ln()).collect(),
            kappa: splats.kappa().to_vec(),
        };
        let (rr, stride) = (r + 1, Prepared::stride(r));
        prep.w = vec![0f32; n * stride];
        for (row, b) in prep.w.chunks_exact_mut(stride).zip(basis.w.chunks_exact(rr)) {
            row[..rr].copy_from_slice(b);
        }
        let npad = Prepared::npad(n);
        prep.w_t = vec![0f32; rr * npad];
        for (j, b) in basis.w.chunks_exact(rr).enumerate() {
            for (k, &v) in b.iter().enumerate() {
                prep.w_t[k * npad + j] = v;
            }
        }
        let mut start = vec![0f32; r];
        prep.forward(|k| prep.scores[prep.pivots[k] as usize], &mut start);
        let norm2 = kernels::dot_with(kernel_isa(), x, x);
        let res = f64::from(norm2) - f64::from(kernels::dot_with(kernel_isa(), &start, &start));
        prep.rho_x = if res > PIVOT_TOL * f64::from(norm2) { res.sqrt() as f32 } else { 0.0 };
        prep.start = start;
        prep
    }

    /// Row length of `w`: `r + 1` rounded up to a multiple of 8.
    fn stride(r: usize) -> usize {
        (r + 1).next_multiple_of(span::LANES)
    }

    /// Row length of `w_t`: the `n` splats rounded up to a multiple of 8.
    fn npad(n: usize) -> usize {
        n.max(1).next_multiple_of(span::LANES)
    }

    /// The middle of the start's band of splats: the mean of its largest and smallest cosine to the
    /// other splats (for the lake's chains, to the seed's 1st and last real neighbour); `None` with
    /// one splat.
    pub(crate) fn band_middle(&self) -> Option<f32> {
        let others = self.scores.get(1..).filter(|o| !o.is_empty())?;
        let (lo, hi) = others.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        Some(0.5 * (lo + hi))
    }

    /// Rank of the basis.
    pub(crate) fn rank(&self) -> usize {
        self.pivots.len()
    }

    /// The splats chosen as the basis (indices into the splats), in pivot order.
    pub(crate) fn pivots(&self) -> &[u32] {
        &self.pivots
    }

    /// The start's concentration: kappa of the first splat (the seed, for the lake's chains).
    pub(crate) fn first_kappa(&self) -> f32 {
        self.kappa[0]
    }

    /// Number of splats.
    pub(crate) fn len(&self) -> usize {
        self.kappa.len()
    }

    /// Bytes held (the struct and its buffers).
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Prepared>()
            + 4 * (self.pivots.len()
                + self.l_inv.len()
                + self.w.len()
                + self.w_t.len()
                + self.scores.len()
                + self.start.len()
                + self.ln_alpha.len()
                + self.kappa.len())
    }

    /// Q^T v from v's scores on the pivots (`s(k)` for pivot `k`): y = L^-1 s.
    #[inline(always)]
    fn forward(&self, s: impl Fn(usize) -> f32, y: &mut [f32]) {
        let r = self.rank();
        for (k, yk) in y.iter_mut().enumerate().take(r) {
            *yk = self.l_inv[k * r..k * r + k + 1].iter().enumerate().fold(0.0, |acc, (m, &l)| acc + l * s(m));
        }
    }

    /// Coefficients over the pivots of Q v: y = L^-T v, as axpys over the rows of L^-1.
    #[inline(always)]
    fn backward(&self, v: &[f32], y: &mut [f32]) {
        let r = self.rank();
        y.fill(0.0);
        for (k, &vk) in v.iter().enumerate().take(r) {
            y.iter_mut().zip(&self.l_inv[k * r..(k + 1) * r]).for_each(|(a, &l)| *a += vk * l);
        }
    }
}

/// One chain `x` (a unit row, updated in place) against its own `splats`: the reduced method of
/// [`run_block`] for a block of one chain, without the block's transposed copy of the splats. Its
/// random draws are the block's, in the same order, so with the same generator it gives the block's
/// result (up to float rounding). Needs `splats + 1 < dim`.
pub(crate) fn run_one(
    splats: &crate::Splats<'_>,
    config: &LangevinConfig,
    x: &mut [f32],
    rng: &mut impl Rng,
    scr: &mut OneScratch,
) {
    let prep = Prepared::new(splats, x, scr);
    let (dim, mu) = (splats.dim(), splats.mu());
    run_prepared(
        &prep,
        &|k| &mu[prep.pivots[k] as usize * dim..(prep.pivots[k] as usize + 1) * dim],
        config,
        x,
        rng,
        scr,
        &mut LineQueue::default(),
    );
}

/// One chain `x` from the start `prep` was made for (a unit row, updated in place; it must be that
/// start), reading pivot `k`'s row (a unit `mu` of `x.len()` values) as `pivot_row(k)`: [`run_one`]
/// without the per-start work.
pub(crate) fn run_prepared<'r>(
    prep: &Prepared,
    pivot_row: &dyn Fn(usize) -> &'r [f32],
    config: &LangevinConfig,
    x: &mut [f32],
    rng: &mut impl Rng,
    scr: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    match kernel_isa() {
        // SAFETY: `kernel_isa` returns Avx512 only when AVX-512 F/BW (and AVX2, FMA) are present.
        kernels::Isa::Avx512 => return unsafe { run_prepared_avx512(prep, pivot_row, config, x, rng, scr, ahead) },
        // SAFETY: `kernel_isa` returns Avx2 only when AVX2 and FMA are present.
        kernels::Isa::Avx2 => return unsafe { run_prepared_avx2(prep, pivot_row, config, x, rng, scr, ahead) },
        kernels::Isa::Scalar | kernels::Isa::Neon => {}
    }
    run_prepared_body(prep, pivot_row, config, x, rng, scr, ahead)
}

/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn run_prepared_avx512<'r>(
    prep: &Prepared,
    pivot_row: &dyn Fn(usize) -> &'r [f32],
    config: &LangevinConfig,
    x: &mut [f32],
    rng: &mut impl Rng,
    scr: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) {
    run_prepared_body(prep, pivot_row, config, x, rng, scr, ahead)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_prepared_avx2<'r>(
    prep: &Prepared,
    pivot_row: &dyn Fn(usize) -> &'r [f32],
    config: &LangevinConfig,
    x: &mut [f32],
    rng: &mut impl Rng,
    scr: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) {
    run_prepared_body(prep, pivot_row, config, x, rng, scr, ahead)
}

/// `run_block_body` for one chain; the comments there apply. `ahead` (the next chain's rows) is
/// issued a share after each step and after the lift's deviates, the rest before the lift's sums.
#[inline(always)]
fn run_prepared_body<'r>(
    prep: &Prepared,
    pivot_row: &dyn Fn(usize) -> &'r [f32],
    config: &LangevinConfig,
    x: &mut [f32],
    rng: &mut impl Rng,
    scr: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) {
    let dim = x.len();
    let r = prep.rank();
    let rho_x = prep.rho_x;
    let has_x = rho_x > 0.0;
    let perp = dim - r - usize::from(has_x);
    let mut parts = config.steps + 2;
    let rho = walk(prep, config, config.steps, dim, scr, rng, |_| {
        ahead.pump_share(parts);
        parts -= 1;
    });

    // The lift, as in `run_block_body`; only the pivots' rows are read (the other splats lie in their
    // span), each twice: the Gaussian's scores, then the sum.
    let lift_noise = rho > 0.0 && perp > 0;
    scr.h.resize(r, 0.0);
    scr.gauss.resize(dim, 0.0);
    if lift_noise {
        fill_normal_generic(rng, &mut scr.gauss);
        ahead.pump_share(2);
        scr.gathered.clear();
        scr.gathered.extend((0..r).map(|k| kernels::dot_with(kernel_isa(), &scr.gauss, pivot_row(k))));
        let gathered = &scr.gathered;
        prep.forward(|k| gathered[k], &mut scr.h);
    }
    scr.v.clear();
    scr.v.extend_from_slice(&scr.a[..r]);
    let mut vx = scr.a[r];
    let mut t = 0.0;
    if lift_noise {
        let hx = if has_x {
            (kernels::dot_with(kernel_isa(), x, &scr.gauss) - kernels::dot_with(kernel_isa(), &prep.start, &scr.h))
                / rho_x
        } else {
            0.0
        };
        let g2 = kernels::dot_with(kernel_isa(), &scr.gauss, &scr.gauss);
        let off = (g2 - kernels::dot_with(kernel_isa(), &scr.h, &scr.h) - hx * hx).max(1e-6 * g2);
        t = rho / off.sqrt();
        scr.v.iter_mut().zip(&scr.h).for_each(|(vv, hv)| *vv -= t * hv);
        vx -= t * hx;
    }
    let cx = if has_x { vx / rho_x } else { 0.0 };
    scr.v.iter_mut().zip(&prep.start).for_each(|(vv, lv)| *vv -= cx * lv);
    scr.y.resize(r, 0.0);
    prep.backward(&scr.v, &mut scr.y);
    ahead.drain();
    // Sum of the pivots' rows as axpys here, where they vectorise with this body's instruction set.
    scr.out.clear();
    scr.out.resize(dim, 0.0);
    for (k, &yv) in scr.y.iter().enumerate() {
        scr.out.iter_mut().zip(pivot_row(k)).for_each(|(o, &m)| *o += yv * m);
    }
    if t != 0.0 {
        scr.out.iter_mut().zip(x.iter()).zip(&scr.gauss).for_each(|((o, &xv), &gv)| *o += cx * xv + t * gv);
    } else if cx != 0.0 {
        scr.out.iter_mut().zip(x.iter()).for_each(|(o, &xv)| *o += cx * xv);
    }
    let inv = 1.0 / kernels::dot_with(kernel_isa(), &scr.out, &scr.out).sqrt();
    x.iter_mut().zip(&scr.out).for_each(|(xv, o)| *xv = o * inv);
}

/// Runs `steps` steps of a chain from `prep`'s start in the span (`scr.a`, padded to `w`'s rows, holds
/// its coordinates after; `after_step` sees them after each step) and returns its distance `rho` from
/// the span. `dim` is the ambient dimension.
#[inline(always)]
fn walk(
    prep: &Prepared,
    config: &LangevinConfig,
    steps: usize,
    dim: usize,
    scr: &mut OneScratch,
    rng: &mut impl Rng,
    mut after_step: impl FnMut(&[f32]),
) -> f32 {
    let (n, kappa) = (prep.len(), &prep.kappa[..]);
    let r = prep.rank();
    let rr = r + 1;
    let rho_x = prep.rho_x;
    let has_x = rho_x > 0.0;
    // Scores padded to whole lanes (the padding lanes stay 0: `w_t`'s padding is 0).
    let npad = Prepared::npad(n);
    scr.scores.clear();
    scr.scores.extend_from_slice(&prep.scores);
    scr.scores.resize(npad, 0.0);
    scr.coef.resize(n, 0.0);
    // `a` and `u` padded with zeros to the rows of `w` (the step below leaves the padding at 0).
    let stride = Prepared::stride(r);
    scr.a.clear();
    scr.a.extend_from_slice(&prep.start);
    scr.a.push(rho_x);
    scr.a.resize(stride, 0.0);
    let perp = dim - r - usize::from(has_x);
    let chi = (perp >= 2).then(|| ChiSquared::new((perp - 1) as f32).expect("df >= 1 is valid"));

    let eta = config.dt;
    let s = (2.0 * eta * config.temperature).sqrt();
    let mut rho = 0f32;
    let mut dots = [0f32; 1];
    scr.u.resize(stride, 0.0);
    scr.z.resize(rr + 1, 0.0);
    for step in 0..steps {
        // The two small products of a step: weighted sums of the rows of the coordinates (transposed
        // for the scores), lane by lane on the best instruction set (module `span`).
        if step > 0 {
            span::rows_sum(&prep.w_t, npad, &scr.a[..rr], &mut scr.scores);
        }
        softmax_coefficients(&scr.scores[..n], &prep.ln_alpha, kappa, n, &mut scr.coef, &mut dots);
        span::rows_sum(&prep.w, stride, &scr.coef, &mut scr.u);
        if s > 0.0 {
            fill_normal_generic(rng, &mut scr.z);
        }
        let zi = &mut scr.z;
        if !has_x {
            zi[r] = 0.0;
        }
        let (g, q) = if s > 0.0 {
            let g = if perp >= 1 { zi[rr] } else { 0.0 };
            (g, chi.as_ref().map_or(0.0, |d| d.sample(rng)))
        } else {
            (0.0, 0.0)
        };
        let ai = &mut scr.a[..rr];
        let xi_dot = kernels::dot_with(kernel_isa(), &zi[..rr], ai) + g * rho;
        let ux = dots[0];
        for ((av, &uv), &zv) in ai.iter_mut().zip(&scr.u).zip(&zi[..rr]) {
            let a0 = *av;
            *av = a0 + eta * (uv - ux * a0) + s * (zv - xi_dot * a0);
        }
        let beta = 1.0 - eta * ux - s * xi_dot;
        let rp = beta * rho + s * g;
        let rho2 = rp * rp + s * s * q;
        let inv = 1.0 / (kernels::dot_with(kernel_isa(), ai, ai) + rho2).sqrt();
        ai.iter_mut().for_each(|v| *v *= inv);
        rho = rho2.sqrt() * inv;
        after_step(&scr.a);
    }
    rho
}

/// The number of steps (1 to `max_steps`) after which the mean cosine to the first splat of `pilots`
/// chains from `prep`'s start first falls to `target`; `max_steps` when it does not. The pilots run in
/// the span only (the cosine to a splat is a score there): no lift. `dim` is the ambient dimension.
pub(crate) fn steps_to_reach(
    prep: &Prepared,
    config: &LangevinConfig,
    (target, max_steps): (f32, usize),
    pilots: usize,
    dim: usize,
    rng: &mut impl Rng,
    scr: &mut OneScratch,
) -> usize {
    let stride = Prepared::stride(prep.rank());
    let mut mean = vec![0f32; max_steps];
    for _ in 0..pilots {
        let mut k = 0;
        walk(prep, config, max_steps, dim, scr, rng, |a| {
            mean[k] += prep.w[..stride].iter().zip(a).map(|(w, a)| w * a).sum::<f32>();
            k += 1;
        });
    }
    let limit = target * pilots as f32;
    mean.iter().position(|&m| m <= limit).map_or(max_steps, |k| k + 1)
}

/// Lines of `ahead` a pilot's step issues: a calibration runs 3 trials of 4 pilots of 8 steps at the
/// defaults (96 steps), which issue a neighbourhood of 17 rows of 640 (680 lines) at 8 a step.
const AHEAD_LINES_PER_PILOT_STEP: usize = 8;

/// The mean cosine to the first splat of `pilots` chains from `prep`'s start after `config.steps`
/// steps, run in the span only (no lift), issuing [`AHEAD_LINES_PER_PILOT_STEP`] lines of `ahead` a
/// step. `dim` is the ambient dimension.
pub(crate) fn mean_cos_after(
    prep: &Prepared,
    config: &LangevinConfig,
    pilots: usize,
    dim: usize,
    rng: &mut impl Rng,
    scr: &mut OneScratch,
    ahead: &mut LineQueue<'_>,
) -> f32 {
    let stride = Prepared::stride(prep.rank());
    let mut sum = 0f32;
    for _ in 0..pilots {
        walk(prep, config, config.steps, dim, scr, rng, |_| ahead.pump(AHEAD_LINES_PER_PILOT_STEP));
        sum += prep.w[..stride].iter().zip(&scr.a).map(|(w, a)| w * a).sum::<f32>();
    }
    sum / pilots.max(1) as f32
}
