//! The products of one reduced Langevin step, for a chain in the span of its seed's neighbourhood
//! (module `reduced`): the scores of the splats from the chain's coordinates, and the drift from the
//! softmax coefficients. Both are one shape, `out = s^T M`: a weighted sum of the rows of a small
//! row-major matrix whose rows are padded to a multiple of 8 lanes, so the sums run lane by lane (a
//! batch of dot products, one per output lane) with no horizontal reduction:
//!
//! * scores: `M` = the splats' coordinates transposed (`r + 1` rows of the splats padded to 8), `s` =
//!   the chain's coordinates; lane `j` is splat `j`'s score x . mu_j;
//! * drift: `M` = the splats' coordinates (`n` rows of `r + 1` padded to 8), `s` = the coefficients
//!   C_j; lane `k` is coordinate `k` of U = sum_j C_j mu_j.
//!
//! One module per instruction set, as m2m-index's kernels: `scalar` (the reference, auto-vectorisable),
//! `avx2` (AVX2 + FMA, 8 lanes) and `avx512` (AVX-512 F, 16 lanes and an 8-lane tail), behind
//! [`rows_sum_with`], which takes an explicit instruction set so that tests and benchmarks can run every
//! variant against the scalar one; [`rows_sum`] runs [`crate::isa::kernel_isa`] (chosen once: AVX2 where AVX-512 is detected). An
//! instruction set the CPU lacks runs the scalar code (no input reaches an instruction the machine does
//! not have). NEON runs the scalar code, which the compiler vectorises there (NEON is baseline on
//! aarch64).

use m2m_index::kernels::Isa;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

/// Lanes every row of the matrices is padded to.
pub(crate) const LANES: usize = 8;

/// `out[..width] = sum_i s[i] * m[i * width..(i + 1) * width]` for `i < s.len()`, on the kernels'
/// instruction set. `width` must be a multiple of [`LANES`], `m` at least `s.len() * width` long and
/// `out` at least `width`: a length outside these is a bug of the caller, caught by the assertion.
#[inline]
pub(crate) fn rows_sum(m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    // Chosen once (a step calls this twice, and asking the CPU each time showed in profiles), and
    // never one the CPU lacks.
    let isa = crate::isa::kernel_isa();
    check(m, width, s, out);
    // SAFETY: `isa` is available (checked once above); the lengths are checked.
    unsafe { rows_sum_unchecked(isa, m, width, s, &mut out[..width]) }
}

/// [`rows_sum`] on the instruction set `isa` (scalar where the CPU lacks it): the tests run every one.
#[cfg(test)]
pub(crate) fn rows_sum_with(isa: Isa, m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    check(m, width, s, out);
    let isa = if isa.is_available() { isa } else { Isa::Scalar };
    // SAFETY: `isa` is available (checked above); the lengths are checked.
    unsafe { rows_sum_unchecked(isa, m, width, s, &mut out[..width]) }
}

/// The lengths the kernels' unchecked loads rely on.
#[inline(always)]
fn check(m: &[f32], width: usize, s: &[f32], out: &[f32]) {
    assert!(
        width.is_multiple_of(LANES) && m.len() >= s.len() * width && out.len() >= width,
        "rows_sum: width {width}, {} values for {} rows, out {}",
        m.len(),
        s.len(),
        out.len()
    );
}

/// # Safety
/// The CPU must support `isa`; `width` is a multiple of [`LANES`], `m` holds at least `s.len() *
/// width` values and `out` exactly `width`.
#[inline(always)]
unsafe fn rows_sum_unchecked(isa: Isa, m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the caller's contract (AVX-512 F with AVX2 and FMA present, lengths).
        Isa::Avx512 => return unsafe { avx512::rows_sum(m, width, s, out) },
        // SAFETY: the caller's contract (AVX2 and FMA present, lengths).
        Isa::Avx2 => return unsafe { avx2::rows_sum(m, width, s, out) },
        _ => {}
    }
    let _ = isa;
    scalar::rows_sum(m, width, s, out)
}

#[cfg(test)]
mod tests {
    use m2m_index::kernels::Isa;
    use proptest::prelude::*;

    use super::{LANES, rows_sum_with};

    /// The f64 reference.
    fn reference(m: &[f32], width: usize, s: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; width];
        for (i, &si) in s.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&m[i * width..(i + 1) * width]) {
                *o += f64::from(si) * f64::from(v);
            }
        }
        out
    }

    proptest! {
        /// Every instruction set against the f64 reference (and so against each other), for every
        /// width a neighbourhood gives (1 to 5 blocks of 8 lanes: up to 40 splats or coordinates) and
        /// row counts 0 to 41; the bound is the f32 rounding of a sum of `rows` products.
        #[test]
        fn every_instruction_set_matches_the_reference(
            blocks in 1usize..=5,
            rows in 0usize..=41,
            seed in any::<u64>(),
        ) {
            use rand::{RngExt, SeedableRng};
            let width = blocks * LANES;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let m: Vec<f32> = (0..rows * width).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let s: Vec<f32> = (0..rows).map(|_| rng.random_range(-30.0f32..30.0)).collect();
            let want = reference(&m, width, &s);
            let bound: f64 = s.iter().map(|v| f64::from(v.abs())).sum::<f64>() * 4.0 * f64::from(f32::EPSILON) + 1e-30;
            for isa in Isa::available() {
                // Garbage in `out` first: the kernel must overwrite, not accumulate.
                let mut out = vec![7.0f32; width + 3];
                rows_sum_with(isa, &m, width, &s, &mut out);
                for (k, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    prop_assert!((f64::from(g) - w).abs() <= bound, "{isa:?} lane {k}: {g} vs {w} (bound {bound})");
                }
                prop_assert!(out[width..].iter().all(|&v| v == 7.0), "{isa:?} wrote past the width");
            }
        }
    }
}
