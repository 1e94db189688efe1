//! 4-bit product quantisation of residuals ([`CodeKind::Pq4`](crate::CodeKind::Pq4)): training of the
//! codebooks, encoding (nearest sub-centroid, optionally refined by ScaNN's anisotropic loss) and the
//! per-query look-up table the fast-scan kernel reads (`kernels::pq4_scan_with`).
//!
//! A vector's residual `r = x - c` to its fine centroid is cut into `m = ceil(dim / dims_per_code)`
//! sub-vectors of `dims_per_code` dimensions (the last one padded with zeros); each sub-space has 16
//! sub-centroids, trained by k-means on a deterministic sample of residuals, and each sub-vector is
//! stored as the 4-bit number of a sub-centroid. The codebook is one f32 array, sub-space after
//! sub-space, 16 sub-centroids of `dims_per_code` values each: `m * 16 * dims_per_code` values.
//!
//! Scores. `q . x ~ q . c + sum_s q_s . C_s[code_s]`. Per query, the table `T[s][c] = q_s . C_s[c]` is
//! quantised to u8 with one scale for all sub-spaces and an offset per sub-space:
//! `T ~ min_s + u8 / a` with `a = 255 / max_s (max_c T[s][c] - min_s)`, so the sum of a row's bytes,
//! divided by `a`, plus `sum_s min_s`, estimates `q . r`. The integers are summed exactly by the kernel.
//!
//! Anisotropic encoding (ScaNN, "Accelerating Large-Scale Inference with Anisotropic Vector
//! Quantization", Guo et al. 2020): the error `e = r - r^` of a code matters most along the vector's own
//! direction `u = x / |x|`, since a query near `x` sees mostly `u . e`. The loss
//! `|e|^2 + (eta - 1) (u . e)^2`, with `eta = (d - 1) T^2 / (1 - T^2)` for ScaNN's threshold `T = 0.2`,
//! is lowered from the nearest-sub-centroid code by coordinate descent over the sub-spaces (each step
//! tries the 16 sub-centroids of one sub-space with the others fixed; a few sweeps).

use rayon::prelude::*;

use crate::kmeans::KMeans;

/// Sub-centroids per sub-space (4-bit codes).
pub(crate) const KSUB: usize = 16;

/// Lloyd iterations of each sub-space's k-means.
const ITERS: usize = 20;

/// Residuals sampled to train the codebooks (every n-th member).
pub(crate) const TRAIN_SAMPLE: usize = 32_768;

/// ScaNN's default anisotropic threshold `T` (the score, relative to a unit query, that matters).
const ANISO_T: f64 = 0.2;

/// Coordinate-descent sweeps of the anisotropic encoding.
const ANISO_SWEEPS: usize = 3;

/// The shape of a PQ4 code: sub-spaces and dimensions per sub-space.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) dim: usize,
    pub(crate) dpc: usize,
    pub(crate) m: usize,
}

impl Shape {
    pub(crate) fn new(dim: usize, dims_per_code: u8) -> Shape {
        let dpc = usize::from(dims_per_code).max(1);
        Shape { dim, dpc, m: dim.div_ceil(dpc) }
    }

    /// Length of the codebook.
    pub(crate) fn codebook_len(self) -> usize {
        self.m * KSUB * self.dpc
    }

    /// Sub-vector `s` of `v` (zero-padded to `dpc`).
    fn sub(self, v: &[f32], s: usize, out: &mut [f32]) {
        out.fill(0.0);
        let lo = s * self.dpc;
        let hi = (lo + self.dpc).min(self.dim);
        out[..hi - lo].copy_from_slice(&v[lo..hi]);
    }
}

/// Trains the codebook on `residuals` (rows of `dim`), deterministically from `seed`.
pub(crate) fn train(shape: Shape, residuals: &[f32], seed: u64) -> Vec<f32> {
    let n = residuals.len() / shape.dim.max(1);
    let books: Vec<Vec<f32>> = (0..shape.m)
        .into_par_iter()
        .map(|s| {
            let mut sub = vec![0.0f32; n * shape.dpc];
            for (row, out) in residuals.chunks_exact(shape.dim).zip(sub.chunks_exact_mut(shape.dpc)) {
                shape.sub(row, s, out);
            }
            let km = KMeans {
                k: KSUB,
                iters: ITERS,
                spherical: false,
                max_train: usize::MAX,
                seed: seed ^ (s as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            };
            let mut c = if n == 0 { Vec::new() } else { km.run(&sub, shape.dpc).centroids };
            // Fewer distinct rows than 16: repeat the first sub-centroid (never a better choice than it).
            let first: Vec<f32> = c.get(..shape.dpc).map_or_else(|| vec![0.0; shape.dpc], <[f32]>::to_vec);
            while c.len() < KSUB * shape.dpc {
                c.extend_from_slice(&first);
            }
            c
        })
        .collect();
    books.concat()
}

/// The codebook of `kind` (empty for scalar codes), trained on the residuals of a deterministic sample
/// of at most about [`TRAIN_SAMPLE`] of the `total` members (every n-th, given as (fine cluster, vector)).
pub(crate) fn train_on_members<'a>(
    kind: crate::CodeKind,
    dim: usize,
    fine: &[f32],
    total: usize,
    members: impl Iterator<Item = (usize, &'a [f32])>,
    seed: u64,
) -> Vec<f32> {
    let Some(shape) = kind.pq_shape(dim) else { return Vec::new() };
    let every = total.div_ceil(TRAIN_SAMPLE).max(1);
    let mut residuals: Vec<f32> = Vec::with_capacity((total / every + 1) * dim);
    for (f, x) in members.step_by(every) {
        residuals.extend(x.iter().zip(&fine[f * dim..][..dim]).map(|(x, c)| x - c));
    }
    train(shape, &residuals, seed ^ 0x5051_3450_4134)
}

/// `eta` of the anisotropic loss for dimension `dim` (1 means plain nearest-centroid encoding).
pub(crate) fn eta(dim: usize) -> f32 {
    let t2 = ANISO_T * ANISO_T;
    (((dim as f64 - 1.0) * t2 / (1.0 - t2)) as f32).max(1.0)
}

/// Encodes residual `r` of vector `x` into `out` (`m` codes). With `eta > 1` the codes are refined to
/// lower the anisotropic loss along `x`'s direction.
pub(crate) fn encode(shape: Shape, book: &[f32], r: &[f32], x: &[f32], eta: f32, out: &mut [u8]) {
    let dpc = shape.dpc;
    let mut rs = vec![0.0f32; dpc];
    // err[s] = r_s - C_s[code_s]; its squared norm per sub-space and u . err per sub-space.
    let mut err = vec![0.0f32; shape.m * dpc];
    for (s, o) in out.iter_mut().enumerate().take(shape.m) {
        shape.sub(r, s, &mut rs);
        let cb = &book[s * KSUB * dpc..][..KSUB * dpc];
        let mut best = (f32::INFINITY, 0u8);
        for (c, cent) in cb.chunks_exact(dpc).enumerate() {
            let d: f32 = rs.iter().zip(cent).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < best.0 {
                best = (d, c as u8);
            }
        }
        *o = best.1;
        let cent = &cb[usize::from(best.1) * dpc..][..dpc];
        err[s * dpc..][..dpc].iter_mut().zip(rs.iter().zip(cent)).for_each(|(e, (a, b))| *e = a - b);
    }
    if eta <= 1.0 {
        return;
    }
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm <= 0.0 {
        return;
    }
    let mut us = vec![0.0f32; dpc];
    // u . e over all sub-spaces, kept up to date as codes change.
    let mut par: f32 = 0.0;
    for s in 0..shape.m {
        shape.sub(x, s, &mut us);
        par += us.iter().zip(&err[s * dpc..][..dpc]).map(|(u, e)| u * e).sum::<f32>() / norm;
    }
    let w = eta - 1.0;
    for _ in 0..ANISO_SWEEPS {
        let mut changed = false;
        for s in 0..shape.m {
            shape.sub(r, s, &mut rs);
            shape.sub(x, s, &mut us);
            us.iter_mut().for_each(|u| *u /= norm);
            let e_old = &err[s * dpc..][..dpc];
            let par_rest = par - us.iter().zip(e_old).map(|(u, e)| u * e).sum::<f32>();
            let cb = &book[s * KSUB * dpc..][..KSUB * dpc];
            let mut best = (f32::INFINITY, out[s], 0.0f32);
            for (c, cent) in cb.chunks_exact(dpc).enumerate() {
                let (mut sq, mut ue) = (0.0f32, 0.0f32);
                for ((a, b), u) in rs.iter().zip(cent).zip(&us) {
                    let e = a - b;
                    sq += e * e;
                    ue += u * e;
                }
                let p = par_rest + ue;
                // The other sub-spaces' |e|^2 is the same for every choice here.
                let loss = sq + w * p * p;
                if loss < best.0 || (loss == best.0 && c as u8 == out[s]) {
                    best = (loss, c as u8, ue);
                }
            }
            if best.1 != out[s] {
                changed = true;
                out[s] = best.1;
                let cent = &cb[usize::from(best.1) * dpc..][..dpc];
                err[s * dpc..][..dpc].iter_mut().zip(rs.iter().zip(cent)).for_each(|(e, (a, b))| *e = a - b);
            }
            par = par_rest + best.2;
        }
        if !changed {
            break;
        }
    }
}

/// Fills `lut` (`kernels::pq4_lut_len(m)` bytes) with the quantised table of the prepared query `q`;
/// returns `(sum_s min_s, 1 / a)`, so that a row's estimate of `q . r` is `bias + sum / a`.
pub(crate) fn lut(shape: Shape, book: &[f32], q: &[f32], table: &mut Vec<f32>, lut: &mut Vec<u8>) -> (f32, f32) {
    let dpc = shape.dpc;
    table.clear();
    table.resize(shape.m * KSUB, 0.0);
    // dpc <= MAX_DIMS_PER_CODE (checked at build and on load): no allocation per query.
    let mut qs_buf = [0.0f32; crate::index::MAX_DIMS_PER_CODE as usize];
    let qs = &mut qs_buf[..dpc];
    let mut bias = 0.0f32;
    let mut range = 0.0f32;
    for (s, t) in table.chunks_exact_mut(KSUB).enumerate() {
        shape.sub(q, s, qs);
        for (v, cent) in t.iter_mut().zip(book[s * KSUB * dpc..][..KSUB * dpc].chunks_exact(dpc)) {
            *v = qs.iter().zip(cent).map(|(a, b)| a * b).sum();
        }
        let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        t.iter_mut().for_each(|v| *v -= lo);
        bias += lo;
        range = range.max(hi - lo);
    }
    let a = if range > 0.0 { 255.0 / range } else { 1.0 };
    lut.clear();
    lut.resize(crate::kernels::pq4_lut_len(shape.m), 0);
    // v >= 0 (its sub-space's minimum was subtracted), so `+ 0.5` then the saturating cast rounds to
    // nearest in a loop that vectorises (`f32::round` is a libm call per entry on x86).
    for (o, &v) in lut.iter_mut().zip(table.iter()) {
        *o = (v * a + 0.5) as u8;
    }
    (bias, 1.0 / a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Encoding picks the nearest sub-centroid, so reconstruction error is far below the data's spread;
    /// the same seed gives the same codebook. Catches a wrong sub-vector offset (codes of the wrong
    /// dimensions), a codebook trained per sub-space on the wrong slice, or a non-deterministic seed.
    #[test]
    fn codebooks_reconstruct_and_are_deterministic() {
        for (dim, dpc) in [(10usize, 2u8), (7, 2), (12, 3), (5, 1)] {
            let shape = Shape::new(dim, dpc);
            let x = data(2000, dim, 1);
            let book = train(shape, &x, 7);
            assert_eq!(book.len(), shape.codebook_len());
            assert_eq!(book, train(shape, &x, 7));
            let mut codes = vec![0u8; shape.m];
            let (mut err, mut var) = (0.0f64, 0.0f64);
            let mut sub = vec![0.0f32; shape.dpc];
            for row in x.chunks_exact(dim) {
                encode(shape, &book, row, row, 1.0, &mut codes);
                for (s, &c) in codes.iter().enumerate() {
                    shape.sub(row, s, &mut sub);
                    let cent = &book[(s * KSUB + usize::from(c)) * shape.dpc..][..shape.dpc];
                    err += sub.iter().zip(cent).map(|(a, b)| f64::from((a - b) * (a - b))).sum::<f64>();
                    var += sub.iter().map(|a| f64::from(a * a)).sum::<f64>();
                }
            }
            // Uniform data in [-1, 1]: 16 centroids per dimension leave ~1/256 of the variance; per 2 or 3
            // dimensions well under a quarter.
            assert!(err < 0.25 * var, "dim {dim} dpc {dpc}: error {err} of variance {var}");
        }
    }

    /// The anisotropic refinement never raises the anisotropic loss above the nearest-centroid code's,
    /// and on average lowers the parallel error. Catches a sign error in the parallel term or an update
    /// of `par` that drifts from the codes.
    #[test]
    fn anisotropic_codes_lower_the_parallel_error() {
        let dim = 32;
        let shape = Shape::new(dim, 2);
        let x = data(1000, dim, 3);
        let book = train(shape, &x, 5);
        // ScaNN's eta at d = 384 (at d = 32 it is 1.3, too weak to show).
        let eta = eta(384);
        let (mut par_plain, mut par_aniso) = (0.0f64, 0.0f64);
        let mut a = vec![0u8; shape.m];
        let mut b = vec![0u8; shape.m];
        for row in x.chunks_exact(dim) {
            encode(shape, &book, row, row, 1.0, &mut a);
            encode(shape, &book, row, row, eta, &mut b);
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            let loss = |codes: &[u8]| -> (f64, f64) {
                let mut sub = vec![0.0f32; shape.dpc];
                let (mut sq, mut par) = (0.0f64, 0.0f64);
                for (s, &c) in codes.iter().enumerate() {
                    shape.sub(row, s, &mut sub);
                    let cent = &book[(s * KSUB + usize::from(c)) * shape.dpc..][..shape.dpc];
                    for (v, cv) in sub.iter().zip(cent) {
                        let e = f64::from(v - cv);
                        sq += e * e;
                        par += e * f64::from(*v / norm);
                    }
                }
                (sq + f64::from(eta - 1.0) * par * par, par * par)
            };
            let (la, pa) = loss(&a);
            let (lb, pb) = loss(&b);
            assert!(lb <= la * (1.0 + 1e-4) + 1e-6, "anisotropic loss rose: {lb} > {la}");
            par_plain += pa;
            par_aniso += pb;
        }
        assert!(par_aniso < 0.5 * par_plain, "parallel error {par_aniso} vs plain {par_plain}");
    }

    /// The quantised table reproduces the float scores within its rounding: for random codes the estimate
    /// `bias + sum / a` is within `m / (2a)` of the float sum. Catches a wrong offset per sub-space or a
    /// table entry placed under the wrong code.
    #[test]
    fn quantised_table_matches_float_scores() {
        let (dim, dpc) = (30, 2);
        let shape = Shape::new(dim, dpc);
        let x = data(1000, dim, 9);
        let book = train(shape, &x, 1);
        let q = data(1, dim, 2);
        let (mut table, mut l) = (Vec::new(), Vec::new());
        let (bias, inv) = lut(shape, &book, &q, &mut table, &mut l);
        let mut rng = StdRng::seed_from_u64(4);
        let mut sub = vec![0.0f32; shape.dpc];
        for _ in 0..100 {
            let codes: Vec<u8> = (0..shape.m).map(|_| rng.random_range(0..16u8)).collect();
            let mut exact = 0.0f32;
            let mut sum = 0i32;
            for (s, &c) in codes.iter().enumerate() {
                shape.sub(&q, s, &mut sub);
                let cent = &book[(s * KSUB + usize::from(c)) * shape.dpc..][..shape.dpc];
                exact += sub.iter().zip(cent).map(|(a, b)| a * b).sum::<f32>();
                sum += i32::from(l[s * KSUB + usize::from(c)]);
            }
            let est = bias + sum as f32 * inv;
            assert!((est - exact).abs() <= 0.5 * inv * shape.m as f32 + 1e-4, "{est} vs {exact}");
        }
    }
}
