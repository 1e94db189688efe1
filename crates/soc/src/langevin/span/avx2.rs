//! AVX2 + FMA kernel of [`super::rows_sum`]: 8 lanes per register, up to four registers of
//! accumulators held across all rows (32 lanes: a neighbourhood of up to 31 splats in one pass).

use std::arch::x86_64::{
    __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
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
        // Up to four registers of lanes at a time, each row's scalar broadcast once for them.
        let regs = ((width - c) / 8).min(4);
        let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
        for (i, &si) in s.iter().enumerate() {
            let b = _mm256_set1_ps(si);
            let row = i * width + c;
            for (r, a) in acc.iter_mut().enumerate().take(regs) {
                // SAFETY: row + 8 r + 8 <= i * width + width <= s.len() * width <= m.len().
                *a = _mm256_fmadd_ps(b, unsafe { _mm256_loadu_ps(m.as_ptr().add(row + 8 * r)) }, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(regs) {
            // SAFETY: c + 8 r + 8 <= width = out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * r), *a) };
        }
        c += 8 * regs;
    }
}
