//! AVX-512 F kernel of [`super::rows_sum`]: 16 lanes per register, blocks of up to two registers whose
//! accumulators stay in registers across all rows (two sets, even and odd rows, so that consecutive
//! FMAs do not wait on each other's latency), and a last block of 8 lanes in an AVX2 register (widths
//! are multiples of 8). Run only where `M2M_ISA` forces AVX-512 (see `crate::isa`).

use std::arch::x86_64::{
    __m256, __m512, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_storeu_ps, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
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
        // SAFETY: the caller's contract; c + 16 regs <= width.
        unsafe { if regs == 2 { block::<2>(m, width, c, s, out) } else { block::<1>(m, width, c, s, out) } }
        c += 16 * regs;
    }
    if c < width {
        // The last 8 lanes.
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let base = m.as_ptr();
        let mut pairs = s.chunks_exact(2);
        let mut i = 0;
        for p in &mut pairs {
            // SAFETY: (i + 1) * width + c + 8 = (i + 2) * width <= m.len().
            unsafe {
                even = _mm256_fmadd_ps(_mm256_set1_ps(p[0]), _mm256_loadu_ps(base.add(i * width + c)), even);
                odd = _mm256_fmadd_ps(_mm256_set1_ps(p[1]), _mm256_loadu_ps(base.add((i + 1) * width + c)), odd);
            }
            i += 2;
        }
        if let [last] = pairs.remainder() {
            // SAFETY: i * width + c + 8 = (i + 1) * width <= m.len().
            even = _mm256_fmadd_ps(_mm256_set1_ps(*last), unsafe { _mm256_loadu_ps(base.add(i * width + c)) }, even);
        }
        let a: __m256 = _mm256_add_ps(even, odd);
        // SAFETY: c + 8 = width = out.len().
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), a) };
    }
}

/// Lanes `c..c + 16 R` of `out = s^T m`.
///
/// # Safety
/// As [`rows_sum`], and `c + 16 R <= width`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block<const R: usize>(m: &[f32], width: usize, c: usize, s: &[f32], out: &mut [f32]) {
    let mut even: [__m512; R] = [_mm512_setzero_ps(); R];
    let mut odd: [__m512; R] = [_mm512_setzero_ps(); R];
    let base = m.as_ptr();
    let mut pairs = s.chunks_exact(2);
    let mut i = 0;
    for p in &mut pairs {
        let (b0, b1) = (_mm512_set1_ps(p[0]), _mm512_set1_ps(p[1]));
        for r in 0..R {
            // SAFETY: (i + 1) * width + c + 16 r + 16 <= (i + 2) * width <= m.len().
            unsafe {
                even[r] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(base.add(i * width + c + 16 * r)), even[r]);
                odd[r] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(base.add((i + 1) * width + c + 16 * r)), odd[r]);
            }
        }
        i += 2;
    }
    if let [last] = pairs.remainder() {
        let b = _mm512_set1_ps(*last);
        for (r, e) in even.iter_mut().enumerate() {
            // SAFETY: i * width + c + 16 r + 16 <= (i + 1) * width <= m.len().
            *e = _mm512_fmadd_ps(b, unsafe { _mm512_loadu_ps(base.add(i * width + c + 16 * r)) }, *e);
        }
    }
    for r in 0..R {
        // SAFETY: c + 16 r + 16 <= width = out.len().
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * r), _mm512_add_ps(even[r], odd[r])) };
    }
}
