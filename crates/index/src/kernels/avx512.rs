//! AVX-512 kernels (F + BW + VNNI, and BF16 for the bf16 prefilter). Only reached through the dispatch
//! in `kernels`, which checks the CPU first.

use std::arch::x86_64::*;

/// Mask selecting the first `n` (< 16) lanes.
#[inline]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

#[inline]
#[target_feature(enable = "avx512f")]
fn dot512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: full loads read 16 floats at i with i + 16 <= n; the masked tail reads only n - i < 16
    // lanes. Everything stays inside both slices.
    unsafe {
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 16 * k;
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot512(a, b)
}

/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn l2_sq_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: as in `dot512`: full loads end at or before n, the masked tail reads n - i < 16 lanes.
    unsafe {
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 16 * k;
                let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)));
                *a = _mm512_fmadd_ps(d, d, *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)));
            acc[1] = _mm512_fmadd_ps(d, d, acc[1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop, reason = "register blocking indexes parallel arrays; iterators obscure it")]
pub(super) unsafe fn dots_avx512(query: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = query.len();
    let n = out.len().min(rows.len() / dim);
    let full = dim / 16 * 16;
    let tail = tail_mask(dim - full);
    let (pq, pr) = (query.as_ptr(), rows.as_ptr());
    let mut r = 0;
    // Four rows per step, two chains each (eight in flight), one combined reduction for the four sums.
    while r + 4 <= n {
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        // SAFETY: rows r..r+4 exist (r + 4 <= n <= rows.len() / dim); loads stay below `full`, or read
        // the masked dim - full tail lanes of the same rows.
        unsafe {
            let mut i = 0;
            while i + 32 <= full {
                let q0 = _mm512_loadu_ps(pq.add(i));
                let q1 = _mm512_loadu_ps(pq.add(i + 16));
                for j in 0..4 {
                    let row = pr.add((r + j) * dim + i);
                    acc[j][0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(row), acc[j][0]);
                    acc[j][1] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(row.add(16)), acc[j][1]);
                }
                i += 32;
            }
            if i < full {
                let q0 = _mm512_loadu_ps(pq.add(i));
                for j in 0..4 {
                    acc[j][0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(pr.add((r + j) * dim + i)), acc[j][0]);
                }
            }
            if full < dim {
                let q0 = _mm512_maskz_loadu_ps(tail, pq.add(full));
                for j in 0..4 {
                    let x = _mm512_maskz_loadu_ps(tail, pr.add((r + j) * dim + full));
                    acc[j][1] = _mm512_fmadd_ps(q0, x, acc[j][1]);
                }
            }
            let a = [0, 1, 2, 3].map(|j| _mm512_add_ps(acc[j][0], acc[j][1]));
            _mm_storeu_ps(out.as_mut_ptr().add(r), reduce4_ps(a[0], a[1], a[2], a[3]));
        }
        r += 4;
    }
    for r in r..n {
        out[r] = dot512(query, &rows[r * dim..][..dim]);
    }
}

/// Sums of four f32 vectors, lane-reduced: `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce4_ps(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // Within each 128-bit lane: interleave and add until each lane holds [a, b, c, d] partial sums.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    let abd = _mm512_castps_pd(ab);
    let cdd = _mm512_castps_pd(cd);
    let v =
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)), _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    // Then add the four 128-bit lanes.
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
}

/// Scores queries `q..q+4` against rows `r..r+R` in registers and writes the 4 x R scores.
///
/// # Safety
/// The CPU must support AVX-512 F; those queries and rows exist in `queries` and `rows` (whole rows of
/// `dim`), and `out` holds `(q + 4) * nr` scores.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop, reason = "register blocking indexes parallel arrays; iterators obscure it")]
unsafe fn block4<const R: usize>(
    queries: &[f32],
    rows: &[f32],
    dim: usize,
    q: usize,
    r: usize,
    nr: usize,
    out: &mut [f32],
) {
    let full = dim / 16 * 16;
    let tail = tail_mask(dim - full);
    let (pq, pr) = (queries.as_ptr(), rows.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // SAFETY: the caller guarantees rows q..q+4 and r..r+R; full loads read 16 floats at offsets below
    // `full <= dim`, the masked loads the remaining dim - full lanes of the same rows.
    unsafe {
        let mut i = 0;
        while i < full {
            let qv = [0, 1, 2, 3].map(|k| _mm512_loadu_ps(pq.add((q + k) * dim + i)));
            for j in 0..R {
                let rv = _mm512_loadu_ps(pr.add((r + j) * dim + i));
                for k in 0..4 {
                    acc[j][k] = _mm512_fmadd_ps(qv[k], rv, acc[j][k]);
                }
            }
            i += 16;
        }
        if full < dim {
            let qv = [0, 1, 2, 3].map(|k| _mm512_maskz_loadu_ps(tail, pq.add((q + k) * dim + full)));
            for j in 0..R {
                let rv = _mm512_maskz_loadu_ps(tail, pr.add((r + j) * dim + full));
                for k in 0..4 {
                    acc[j][k] = _mm512_fmadd_ps(qv[k], rv, acc[j][k]);
                }
            }
        }
    }
    for k in 0..4 {
        let base = (q + k) * nr + r;
        let mut j = 0;
        while j + 4 <= R {
            let sums = reduce4_ps(acc[j][k], acc[j + 1][k], acc[j + 2][k], acc[j + 3][k]);
            // SAFETY: out holds (q + 4) * nr scores and r + j + 4 <= r + R <= nr.
            unsafe { _mm_storeu_ps(out.as_mut_ptr().add(base + j), sums) };
            j += 4;
        }
        while j < R {
            out[base + j] = _mm512_reduce_add_ps(acc[j][k]);
            j += 1;
        }
    }
}

/// Rows per register block of [`dots_many_avx512`]: 4 queries x 4 rows = 16 accumulators. Measured with
/// `cargo xtask bench dots_many` on Zen 5: 4 rows 94 GMAC/s, 6 rows 57, 8 rows 76 (register pressure).
const ROW_BLOCK: usize = 4;

/// # Safety
/// The CPU must support AVX-512 F; `queries` and `rows` are whole rows of `dim` and
/// `out.len() >= n_queries * n_rows`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dots_many_avx512(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (nq, nr) = (queries.len() / dim, rows.len() / dim);
    let q4 = nq / 4 * 4;
    let rb = nr / ROW_BLOCK * ROW_BLOCK;
    for q in (0..q4).step_by(4) {
        for r in (0..rb).step_by(ROW_BLOCK) {
            // SAFETY: q + 4 <= q4 <= nq and r + ROW_BLOCK <= rb <= nr; out is large enough (caller).
            unsafe { block4::<ROW_BLOCK>(queries, rows, dim, q, r, nr, out) };
        }
        for r in rb..nr {
            // SAFETY: as above, for one row r < nr.
            unsafe { block4::<1>(queries, rows, dim, q, r, nr, out) };
        }
    }
    for q in q4..nq {
        let qrow = &queries[q * dim..][..dim];
        for r in 0..nr {
            out[q * nr + r] = dot512(qrow, &rows[r * dim..][..dim]);
        }
    }
}

/// # Safety
/// The CPU must support AVX-512 F; `rows.len() == n * dim`, `coef.len() == b * n` and
/// `out.len() == b * dim` for some b (checked by `weighted_sums_with`).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weighted_sums_avx512(coef: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let n = rows.len() / dim;
    let outputs = coef.len() / n;
    let (pc, pr, po) = (coef.as_ptr(), rows.as_ptr(), out.as_mut_ptr());
    let chunks = dim / 64 * 64;
    let mut b = 0;
    while b < outputs {
        let m = (outputs - b).min(4);
        // Four outputs (or the last one to three) x 64 values at a time.
        let mut d = 0;
        while d < chunks {
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            for j in 0..n {
                // SAFETY: row j's values d..d + 64 lie inside `rows` (d + 64 <= dim); coefficient
                // (b + t, j) lies inside `coef` for t < m (b + m <= outputs).
                unsafe {
                    let r = [
                        _mm512_loadu_ps(pr.add(j * dim + d)),
                        _mm512_loadu_ps(pr.add(j * dim + d + 16)),
                        _mm512_loadu_ps(pr.add(j * dim + d + 32)),
                        _mm512_loadu_ps(pr.add(j * dim + d + 48)),
                    ];
                    for (t, a) in acc.iter_mut().enumerate().take(m) {
                        let w = _mm512_set1_ps(*pc.add((b + t) * n + j));
                        for (k, v) in a.iter_mut().enumerate() {
                            *v = _mm512_fmadd_ps(w, r[k], *v);
                        }
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(m) {
                for (k, v) in a.iter().enumerate() {
                    // SAFETY: output (b + t) values d + 16 k .. + 16 lie inside `out`.
                    unsafe { _mm512_storeu_ps(po.add((b + t) * dim + d + 16 * k), *v) };
                }
            }
            d += 64;
        }
        // The last dim % 64 values, one lane group at a time with a mask.
        while d < dim {
            let lanes = (dim - d).min(16);
            let mask: __mmask16 = if lanes == 16 { 0xFFFF } else { (1u16 << lanes) - 1 };
            let mut acc = [_mm512_setzero_ps(); 4];
            for j in 0..n {
                // SAFETY: the mask keeps the load inside row j's values d..dim.
                unsafe {
                    let r = _mm512_maskz_loadu_ps(mask, pr.add(j * dim + d));
                    for (t, a) in acc.iter_mut().enumerate().take(m) {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*pc.add((b + t) * n + j)), r, *a);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(m) {
                // SAFETY: the mask keeps the store inside output (b + t)'s values d..dim.
                unsafe { _mm512_mask_storeu_ps(po.add((b + t) * dim + d), mask, *a) };
            }
            d += lanes;
        }
        b += m;
    }
}

/// # Safety
/// The CPU must support AVX-512 F; `block.len() == 16 * query.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dots_t16_avx512(query: &[f32], block: &[f32], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr();
    // Eight independent chains hide the latency of the fused multiply-add.
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut j = 0;
    // SAFETY: column j of the block is block[16 j .. 16 j + 16], inside the block for j < dim.
    unsafe {
        while j + 8 <= dim {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(query[j + u]), _mm512_loadu_ps(pb.add((j + u) * 16)), *a);
            }
            j += 8;
        }
        while j < dim {
            acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(query[j]), _mm512_loadu_ps(pb.add(j * 16)), acc[0]);
            j += 1;
        }
        let s01 = _mm512_add_ps(acc[0], acc[1]);
        let s23 = _mm512_add_ps(acc[2], acc[3]);
        let s45 = _mm512_add_ps(acc[4], acc[5]);
        let s67 = _mm512_add_ps(acc[6], acc[7]);
        let sum = _mm512_add_ps(_mm512_add_ps(s01, s23), _mm512_add_ps(s45, s67));
        _mm512_storeu_ps(out.as_mut_ptr(), sum);
    }
}

/// [`dots_t16_avx512`] over a transposed block of f16 bits: one `vcvtph2ps` widens a column of 16
/// (exactly) before the fused multiply-add, so the block is read at half the bytes.
///
/// # Safety
/// The CPU must support AVX-512 F; `block.len() == 16 * query.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dots_t16h_avx512(query: &[f32], block: &[u16], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut j = 0;
    // SAFETY: column j of the block is block[16 j .. 16 j + 16] (32 bytes), inside the block for j < dim.
    unsafe {
        let col = |j: usize| _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(j * 16).cast()));
        while j + 8 <= dim {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(query[j + u]), col(j + u), *a);
            }
            j += 8;
        }
        while j < dim {
            acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(query[j]), col(j), acc[0]);
            j += 1;
        }
        let s01 = _mm512_add_ps(acc[0], acc[1]);
        let s23 = _mm512_add_ps(acc[2], acc[3]);
        let s45 = _mm512_add_ps(acc[4], acc[5]);
        let s67 = _mm512_add_ps(acc[6], acc[7]);
        let sum = _mm512_add_ps(_mm512_add_ps(s01, s23), _mm512_add_ps(s45, s67));
        _mm512_storeu_ps(out.as_mut_ptr(), sum);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn sq8_dot512(codes: &[u8], query: &[i8]) -> i32 {
    let n = codes.len().min(query.len());
    let mut acc = [_mm512_setzero_si512(); 2];
    let mut i = 0;
    // SAFETY: full loads read 64 bytes at i with i + 64 <= n; the masked tail reads n - i < 64 bytes.
    unsafe {
        while i + 128 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 64 * k;
                let c = _mm512_loadu_si512(codes.as_ptr().add(o).cast());
                let q = _mm512_loadu_si512(query.as_ptr().add(o).cast());
                *a = _mm512_dpbusd_epi32(*a, c, q);
            }
            i += 128;
        }
        while i + 64 <= n {
            let c = _mm512_loadu_si512(codes.as_ptr().add(i).cast());
            let q = _mm512_loadu_si512(query.as_ptr().add(i).cast());
            acc[0] = _mm512_dpbusd_epi32(acc[0], c, q);
            i += 64;
        }
        if i < n {
            let m: __mmask64 = (1u64 << (n - i)) - 1;
            let c = _mm512_maskz_loadu_epi8(m, codes.as_ptr().add(i).cast());
            let q = _mm512_maskz_loadu_epi8(m, query.as_ptr().add(i).cast());
            acc[1] = _mm512_dpbusd_epi32(acc[1], c, q);
        }
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn sq8_dot_avx512(codes: &[u8], query: &[i8]) -> i32 {
    sq8_dot512(codes, query)
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `stride` is a multiple of 64 and
/// `query.len() == 2 * stride`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn sq4_dots_avx512(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    let rows = out.len().min(codes.len() / stride);
    let groups = stride / 64;
    let (pq, pc) = (query.as_ptr(), codes.as_ptr());
    let nibble = _mm512_set1_epi8(0x0F);
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc = [_mm512_setzero_si512(); 4];
        // SAFETY: rows r..r+4 exist; group g of a row is bytes [64 g, 64 g + 64) < stride, and of the
        // query values [128 g, 128 g + 128) < 2 stride = query.len().
        unsafe {
            for g in 0..groups {
                let qlo = _mm512_loadu_si512(pq.add(128 * g).cast());
                let qhi = _mm512_loadu_si512(pq.add(128 * g + 64).cast());
                for (k, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_loadu_si512(pc.add((r + k) * stride + 64 * g).cast());
                    let lo = _mm512_and_si512(v, nibble);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                    *a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*a, lo, qlo), hi, qhi);
                }
            }
            let sums = reduce4_epi32(acc[0], acc[1], acc[2], acc[3]);
            _mm_storeu_si128(out.as_mut_ptr().add(r).cast(), sums);
        }
        r += 4;
    }
    for (r, o) in out.iter_mut().enumerate().take(rows).skip(r) {
        let mut acc = _mm512_setzero_si512();
        // SAFETY: as above, for the single row r < rows.
        unsafe {
            for g in 0..groups {
                let qlo = _mm512_loadu_si512(pq.add(128 * g).cast());
                let qhi = _mm512_loadu_si512(pq.add(128 * g + 64).cast());
                let v = _mm512_loadu_si512(pc.add(r * stride + 64 * g).cast());
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, lo, qlo), hi, qhi);
            }
        }
        *o = _mm512_reduce_add_epi32(acc);
    }
}

/// Loads 32 bf16 values.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16, and `p` must point to 32 readable `u16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load_bh(p: *const u16) -> __m512bh {
    // SAFETY: the caller guarantees 64 readable bytes at p; both vector types are 64 bytes of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
}

/// Scores bf16 queries `q..q+QN` against rows `r..r+RN` in registers and writes the QN x RN scores.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16; those queries and rows exist (whole rows of `stride`, a
/// multiple of 32), and `out` holds `(q + QN) * nr` scores.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::needless_range_loop, reason = "register blocking indexes parallel arrays; iterators obscure it")]
unsafe fn bf16_block<const QN: usize, const RN: usize>(
    queries: &[u16],
    rows: &[u16],
    stride: usize,
    q: usize,
    r: usize,
    nr: usize,
    out: &mut [f32],
) {
    let (pq, pr) = (queries.as_ptr(), rows.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); QN]; RN];
    let mut i = 0;
    while i < stride {
        // SAFETY: rows q..q+QN and r..r+RN exist (caller) and i + 32 <= stride, so each load reads 32
        // values inside one row.
        unsafe {
            let qv: [__m512bh; QN] = std::array::from_fn(|k| load_bh(pq.add((q + k) * stride + i)));
            for j in 0..RN {
                let rv = load_bh(pr.add((r + j) * stride + i));
                for k in 0..QN {
                    acc[j][k] = _mm512_dpbf16_ps(acc[j][k], qv[k], rv);
                }
            }
        }
        i += 32;
    }
    for k in 0..QN {
        let base = (q + k) * nr + r;
        let mut j = 0;
        while j + 4 <= RN {
            let sums = reduce4_ps(acc[j][k], acc[j + 1][k], acc[j + 2][k], acc[j + 3][k]);
            // SAFETY: out holds (q + QN) * nr scores and r + j + 4 <= r + RN <= nr.
            unsafe { _mm_storeu_ps(out.as_mut_ptr().add(base + j), sums) };
            j += 4;
        }
        while j < RN {
            out[base + j] = _mm512_reduce_add_ps(acc[j][k]);
            j += 1;
        }
    }
}

/// # Safety
/// The CPU must support AVX-512 F and BF16; queries and rows are whole rows of `stride` (a multiple of
/// 32) and `out.len() >= n_queries * n_rows`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn bf16_dots_many_avx512(queries: &[u16], rows: &[u16], stride: usize, out: &mut [f32]) {
    let (nq, nr) = (queries.len() / stride, rows.len() / stride);
    let q4 = nq / 4 * 4;
    let (r4, r8) = (nr / 4 * 4, nr / 8 * 8);
    // SAFETY: every call below keeps q + QN <= nq and r + RN <= nr, and out is large enough (caller).
    unsafe {
        for q in (0..q4).step_by(4) {
            for r in (0..r4).step_by(4) {
                bf16_block::<4, 4>(queries, rows, stride, q, r, nr, out);
            }
            for r in r4..nr {
                bf16_block::<4, 1>(queries, rows, stride, q, r, nr, out);
            }
        }
        // Single queries (the one-at-a-time path): eight rows per step keep eight chains in flight.
        for q in q4..nq {
            for r in (0..r8).step_by(8) {
                bf16_block::<1, 8>(queries, rows, stride, q, r, nr, out);
            }
            for r in r8..nr {
                bf16_block::<1, 1>(queries, rows, stride, q, r, nr, out);
            }
        }
    }
}

/// Sums of four i32 vectors, lane-reduced: `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce4_epi32(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m128i {
    // Within each 128-bit lane: interleave and add until each lane holds [a, b, c, d] partial sums.
    let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    let v = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    // Then add the four 128-bit lanes.
    let h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `stride >= query.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn sq8_dots_avx512(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    let n = query.len();
    let rows = out.len().min(codes.len() / stride);
    let full = n / 64 * 64;
    let tail: __mmask64 = if n > full { (1u64 << (n - full)) - 1 } else { 0 };
    let (pq, pc) = (query.as_ptr(), codes.as_ptr());
    let mut r = 0;
    // Four rows at a time: each query chunk is loaded once for four rows, and the four sums are
    // reduced together.
    while r + 4 <= rows {
        let mut acc = [_mm512_setzero_si512(); 4];
        // SAFETY: rows r..r+4 exist (r + 4 <= rows <= codes.len() / stride); loads read bytes
        // [i, i + 64) with i + 64 <= full <= n <= stride of each row, and the masked tail n - full.
        unsafe {
            let mut i = 0;
            while i < full {
                let q = _mm512_loadu_si512(pq.add(i).cast());
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_loadu_si512(pc.add((r + k) * stride + i).cast()), q);
                }
                i += 64;
            }
            if tail != 0 {
                let q = _mm512_maskz_loadu_epi8(tail, pq.add(full).cast());
                for (k, a) in acc.iter_mut().enumerate() {
                    let c = _mm512_maskz_loadu_epi8(tail, pc.add((r + k) * stride + full).cast());
                    *a = _mm512_dpbusd_epi32(*a, c, q);
                }
            }
            let sums = reduce4_epi32(acc[0], acc[1], acc[2], acc[3]);
            _mm_storeu_si128(out.as_mut_ptr().add(r).cast(), sums);
        }
        r += 4;
    }
    for r in r..rows {
        out[r] = sq8_dot512(&codes[r * stride..][..n], query);
    }
}

/// The fast-scan PQ4 kernel on 512-bit registers (layout and overflow rule in `fastscan.rs`): one 64-byte
/// load brings two pairs (four sub-spaces, one per 128-bit lane) of 32 rows, scored by two `vpshufb`;
/// an odd last pair is scored by the scalar loop.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `lut.len() == pairs * 32` and `codes` holds at least
/// `ceil(out.len() / 32)` blocks of `pairs * 32` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pq4_scan_avx512(lut: &[u8], codes: &[u8], pairs: usize, out: &mut [i32]) {
    use super::fastscan::{FS_BLOCK, FS_FLUSH};
    let bb = pairs * FS_BLOCK;
    let quads = pairs / 2;
    let mask = _mm512_set1_epi8(0x0F);
    for (b, chunk) in out.chunks_mut(FS_BLOCK).enumerate() {
        let mut tot = [0i32; FS_BLOCK];
        let block = &codes[b * bb..][..bb];
        let mut q0 = 0;
        while q0 < quads {
            let q1 = (q0 + FS_FLUSH).min(quads);
            let z = _mm512_setzero_si512();
            let (mut a_lo, mut b_lo, mut a_hi, mut b_hi) = (z, z, z, z);
            for q in q0..q1 {
                // SAFETY: q < quads, so bytes q * 64 + 0..64 lie within the block (2 * quads <= pairs) and
                // within `lut`.
                let (x, t) = unsafe {
                    (
                        _mm512_loadu_si512(block.as_ptr().add(q * 64).cast()),
                        _mm512_loadu_si512(lut.as_ptr().add(q * 64).cast()),
                    )
                };
                let lo = _mm512_and_si512(x, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), mask);
                let rl = _mm512_shuffle_epi8(t, lo);
                let rh = _mm512_shuffle_epi8(t, hi);
                a_lo = _mm512_add_epi16(a_lo, rl);
                b_lo = _mm512_add_epi16(b_lo, _mm512_srli_epi16(rl, 8));
                a_hi = _mm512_add_epi16(a_hi, rh);
                b_hi = _mm512_add_epi16(b_hi, _mm512_srli_epi16(rh, 8));
            }
            // SAFETY: AVX-512 F and BW are enabled for this function.
            unsafe {
                fold_flush_avx512(&mut tot, 0, a_lo, b_lo);
                fold_flush_avx512(&mut tot, 16, a_hi, b_hi);
            }
            q0 = q1;
        }
        if pairs % 2 == 1 {
            let p = pairs - 1;
            let mut tail = [0i32; FS_BLOCK];
            super::fastscan::pq4_scan_scalar(&lut[p * 32..], &block[p * 32..], 1, &mut tail);
            tot.iter_mut().zip(tail).for_each(|(t, v)| *t += v);
        }
        chunk.copy_from_slice(&tot[..chunk.len()]);
    }
}

/// Adds the u16 accumulators of one flush to a block's totals, in registers (the scalar fold it replaced
/// cost about as much as the look-ups at 96 sub-spaces): `a` and `b` hold, per 128-bit lane (a
/// sub-space) and u16 word `i`, the sums `even + 256 odd` and `odd` of rows `at + 2i` and `at + 2i + 1`
/// (see `fastscan.rs`); the rows' sums over the four lanes are added to `tot[at..at + 16]`.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `at + 16 <= 32`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fold_flush_avx512(tot: &mut [i32; 32], at: usize, a: __m512i, b: __m512i) {
    let even = _mm512_sub_epi16(a, _mm512_slli_epi16(b, 8));
    // Per lane: rows at + 0..8 (words 0..4 interleaved), then rows at + 8..16.
    for (k, rows) in [_mm512_unpacklo_epi16(even, b), _mm512_unpackhi_epi16(even, b)].into_iter().enumerate() {
        let lanes01 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(rows));
        let lanes23 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(rows, 1));
        let sum = _mm512_add_epi32(lanes01, lanes23);
        let sum = _mm256_add_epi32(_mm512_castsi512_si256(sum), _mm512_extracti64x4_epi64(sum, 1));
        let dst = tot[at + 8 * k..][..8].as_mut_ptr();
        // SAFETY: `dst` points at 8 i32 of `tot` (`at + 8k + 8 <= 32`).
        unsafe { _mm256_storeu_si256(dst.cast(), _mm256_add_epi32(_mm256_loadu_si256(dst.cast()), sum)) };
    }
}
