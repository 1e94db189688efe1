//! AVX2 + FMA kernel of [`super::rows_sum`]: 8 lanes per register, blocks of up to four registers
//! (32 lanes: a neighbourhood of up to 31 splats in one pass) whose accumulators stay in registers
//! across all rows, two sets of them (even and odd rows) so that consecutive FMAs do not wait on each
//! other's latency.

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
};

/// `out = s^T m` (see [`super::rows_sum`]).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `width` is a multiple of 8, `m` holds at least `s.len() *
/// width` values and `out` exactly `width`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows_sum(m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    let mut c = 0;
    while c < width {
        // A block's register count is a constant of its body (a count known only at run time kept
        // the accumulators on the stack and stored them with a call to memcpy).
        let regs = ((width - c) / 8).min(4);
        // SAFETY: the caller's contract; c + 8 regs <= width.
        unsafe {
            match regs {
                4 => block::<4>(m, width, c, s, out),
                3 => block::<3>(m, width, c, s, out),
                2 => block::<2>(m, width, c, s, out),
                _ => block::<1>(m, width, c, s, out),
            }
        }
        c += 8 * regs;
    }
}

/// Lanes `c..c + 8 R` of `out = s^T m`.
///
/// # Safety
/// As [`rows_sum`], and `c + 8 R <= width`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const R: usize>(m: &[f32], width: usize, c: usize, s: &[f32], out: &mut [f32]) {
    let mut even: [__m256; R] = [_mm256_setzero_ps(); R];
    let mut odd: [__m256; R] = [_mm256_setzero_ps(); R];
    let base = m.as_ptr();
    let mut pairs = s.chunks_exact(2);
    let mut i = 0;
    for p in &mut pairs {
        let (b0, b1) = (_mm256_set1_ps(p[0]), _mm256_set1_ps(p[1]));
        for r in 0..R {
            // SAFETY: (i + 1) * width + c + 8 r + 8 <= (i + 2) * width <= s.len() * width <= m.len().
            unsafe {
                even[r] = _mm256_fmadd_ps(b0, _mm256_loadu_ps(base.add(i * width + c + 8 * r)), even[r]);
                odd[r] = _mm256_fmadd_ps(b1, _mm256_loadu_ps(base.add((i + 1) * width + c + 8 * r)), odd[r]);
            }
        }
        i += 2;
    }
    if let [last] = pairs.remainder() {
        let b = _mm256_set1_ps(*last);
        for (r, e) in even.iter_mut().enumerate() {
            // SAFETY: i is the last row: i * width + c + 8 r + 8 <= s.len() * width <= m.len().
            *e = _mm256_fmadd_ps(b, unsafe { _mm256_loadu_ps(base.add(i * width + c + 8 * r)) }, *e);
        }
    }
    for r in 0..R {
        // SAFETY: c + 8 r + 8 <= width = out.len().
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * r), _mm256_add_ps(even[r], odd[r])) };
    }
}
