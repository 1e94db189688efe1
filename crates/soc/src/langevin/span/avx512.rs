//! AVX-512 F kernel of [`super::rows_sum`]: 16 lanes per register, up to two registers of accumulators
//! held across all rows, and a last block of 8 lanes in an AVX2 register (widths are multiples of 8).

use std::arch::x86_64::{
    __m512, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// `out = s^T m` (see [`super::rows_sum`]).
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA; `width` is a multiple of 8, `m` holds at least
/// `s.len() * width` values and `out` exactly `width`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn rows_sum(m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    let mut c = 0;
    while width - c >= 16 {
        let regs = ((width - c) / 16).min(2);
        let mut acc: [__m512; 2] = [_mm512_setzero_ps(); 2];
        for (i, &si) in s.iter().enumerate() {
            let b = _mm512_set1_ps(si);
            let row = i * width + c;
            for (r, a) in acc.iter_mut().enumerate().take(regs) {
                // SAFETY: row + 16 r + 16 <= i * width + width <= s.len() * width <= m.len().
                *a = _mm512_fmadd_ps(b, unsafe { _mm512_loadu_ps(m.as_ptr().add(row + 16 * r)) }, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(regs) {
            // SAFETY: c + 16 r + 16 <= width = out.len().
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * r), *a) };
        }
        c += 16 * regs;
    }
    if c < width {
        // The last 8 lanes.
        let mut a = _mm256_setzero_ps();
        for (i, &si) in s.iter().enumerate() {
            // SAFETY: i * width + c + 8 = i * width + width <= m.len().
            a = _mm256_fmadd_ps(_mm256_set1_ps(si), unsafe { _mm256_loadu_ps(m.as_ptr().add(i * width + c)) }, a);
        }
        // SAFETY: c + 8 = width = out.len().
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), a) };
    }
}
