//! AVX2 + FMA kernels (x86-64 since Haswell / Zen). Only reached through the dispatch in `kernels`,
//! which checks the CPU first.

use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: each load reads 8 floats starting at i with i + 8 <= n, inside both slices.
    unsafe {
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum256(v);
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn l2_sq_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: each load reads 8 floats starting at i with i + 8 <= n, inside both slices.
    unsafe {
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)));
                *a = _mm256_fmadd_ps(d, d, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum256(v);
    for j in i..n {
        s += (a[j] - b[j]) * (a[j] - b[j]);
    }
    s
}

/// # Safety
/// The CPU must support AVX2 and FMA; `block.len() == 16 * query.len()`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots_t16_avx2(query: &[f32], block: &[f32], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr();
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    // SAFETY: column j is block[16 j .. 16 j + 16]; both 8-lane halves lie inside it for j < dim.
    unsafe {
        while j + 4 <= dim {
            for u in 0..4 {
                let q = _mm256_set1_ps(query[j + u]);
                lo[u] = _mm256_fmadd_ps(q, _mm256_loadu_ps(pb.add((j + u) * 16)), lo[u]);
                hi[u] = _mm256_fmadd_ps(q, _mm256_loadu_ps(pb.add((j + u) * 16 + 8)), hi[u]);
            }
            j += 4;
        }
        while j < dim {
            let q = _mm256_set1_ps(query[j]);
            lo[0] = _mm256_fmadd_ps(q, _mm256_loadu_ps(pb.add(j * 16)), lo[0]);
            hi[0] = _mm256_fmadd_ps(q, _mm256_loadu_ps(pb.add(j * 16 + 8)), hi[0]);
            j += 1;
        }
        let l = _mm256_add_ps(_mm256_add_ps(lo[0], lo[1]), _mm256_add_ps(lo[2], lo[3]));
        let h = _mm256_add_ps(_mm256_add_ps(hi[0], hi[1]), _mm256_add_ps(hi[2], hi[3]));
        _mm256_storeu_ps(out.as_mut_ptr(), l);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), h);
    }
}

/// [`dots_t16_avx2`] over a transposed block of f16 bits: `vcvtph2ps` widens each half column of eight
/// values (exactly) before the fused multiply-add, so the block is read at half the bytes.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `block.len() == 16 * query.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dots_t16h_avx2(query: &[f32], block: &[u16], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr();
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    // SAFETY: column j is block[16 j .. 16 j + 16] (32 bytes); both 16-byte halves lie inside it for
    // j < dim.
    unsafe {
        let col = |j: usize| {
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(j * 16).cast()));
            let hi = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(j * 16 + 8).cast()));
            (lo, hi)
        };
        while j + 4 <= dim {
            for u in 0..4 {
                let q = _mm256_set1_ps(query[j + u]);
                let (l, h) = col(j + u);
                lo[u] = _mm256_fmadd_ps(q, l, lo[u]);
                hi[u] = _mm256_fmadd_ps(q, h, hi[u]);
            }
            j += 4;
        }
        while j < dim {
            let q = _mm256_set1_ps(query[j]);
            let (l, h) = col(j);
            lo[0] = _mm256_fmadd_ps(q, l, lo[0]);
            hi[0] = _mm256_fmadd_ps(q, h, hi[0]);
            j += 1;
        }
        let l = _mm256_add_ps(_mm256_add_ps(lo[0], lo[1]), _mm256_add_ps(lo[2], lo[3]));
        let h = _mm256_add_ps(_mm256_add_ps(hi[0], hi[1]), _mm256_add_ps(hi[2], hi[3]));
        _mm256_storeu_ps(out.as_mut_ptr(), l);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), h);
    }
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sq8_dot_avx2(codes: &[u8], query: &[i8]) -> i32 {
    let n = codes.len().min(query.len());
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY: each load reads 16 bytes at i with i + 16 <= n, inside both slices.
    unsafe {
        while i + 16 <= n {
            let c = _mm256_cvtepu8_epi16(_mm_loadu_si128(codes.as_ptr().add(i).cast()));
            let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(query.as_ptr().add(i).cast()));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, q));
            i += 16;
        }
    }
    let lo = _mm256_castsi256_si128(acc);
    let hi = _mm256_extracti128_si256(acc, 1);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    let mut total = _mm_cvtsi128_si32(s);
    for j in i..n {
        total += i32::from(codes[j]) * i32::from(query[j]);
    }
    total
}

/// Sums of four f32 vectors, lane-reduced: `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce4_ps(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    // hadd pairs neighbours within each 128-bit lane; two rounds leave [a, b, c, d] partial sums per lane.
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// Mask for `_mm256_maskload_ps` selecting the first `n` (< 8) lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn tail_mask(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
}

/// Scores queries `q..q+QN` against rows `r..r+RN` in registers (QN x RN accumulators of 8 lanes) and
/// writes the QN x RN scores at `out[(q + k) * nr + r + j]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; those queries and rows exist in `queries` and `rows` (whole rows of
/// `dim`), and `out` holds `(q + QN) * nr` scores with `r + RN <= nr`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop, reason = "register blocking indexes parallel arrays; iterators obscure it")]
unsafe fn block<const QN: usize, const RN: usize>(
    queries: &[f32],
    rows: &[f32],
    dim: usize,
    q: usize,
    r: usize,
    nr: usize,
    out: &mut [f32],
) {
    let full = dim / 8 * 8;
    let (pq, pr) = (queries.as_ptr(), rows.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); QN]; RN];
    // SAFETY: the caller guarantees queries q..q+QN and rows r..r+RN; full loads read 8 floats at offsets
    // i + 8 <= full <= dim of one row, the masked loads only the remaining dim - full lanes of it.
    unsafe {
        let mut i = 0;
        while i < full {
            let rv: [__m256; RN] = std::array::from_fn(|j| _mm256_loadu_ps(pr.add((r + j) * dim + i)));
            for k in 0..QN {
                let qv = _mm256_loadu_ps(pq.add((q + k) * dim + i));
                for j in 0..RN {
                    acc[j][k] = _mm256_fmadd_ps(qv, rv[j], acc[j][k]);
                }
            }
            i += 8;
        }
        if full < dim {
            let m = tail_mask(dim - full);
            let rv: [__m256; RN] = std::array::from_fn(|j| _mm256_maskload_ps(pr.add((r + j) * dim + full), m));
            for k in 0..QN {
                let qv = _mm256_maskload_ps(pq.add((q + k) * dim + full), m);
                for j in 0..RN {
                    acc[j][k] = _mm256_fmadd_ps(qv, rv[j], acc[j][k]);
                }
            }
        }
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
        // The same reduction order as the blocks of four, so that a score does not depend on the block
        // its row fell in (single and batched exact search agree to the bit).
        while j < RN {
            let z = _mm256_setzero_ps();
            out[base + j] = _mm_cvtss_f32(reduce4_ps(acc[j][k], z, z, z));
            j += 1;
        }
    }
}

/// Queries per register block of [`dots_many_avx2`]: 2 queries x 4 rows = 8 accumulators (enough chains
/// to keep both FMA pipes busy), 4 row vectors and one query vector: 13 of the 16 registers. Each step
/// loads 6 vectors for 8 fused multiply-adds. A 3 x 4 block (12 accumulators) spilled one accumulator to
/// the stack in every step (seen in the disassembly) and ran slower.
const Q_BLOCK: usize = 2;
/// Rows per register block of [`dots_many_avx2`].
const R_BLOCK: usize = 4;

/// Bytes of rows scored against every query before moving on: a tile that stays in a 512 KiB L2 cache
/// beside the queries, so that large row sets are read from memory once per call, not once per three
/// queries.
const ROW_TILE_BYTES: usize = 128 * 1024;

/// # Safety
/// The CPU must support AVX2 and FMA; `queries` and `rows` are whole rows of `dim > 0` and
/// `out.len() >= n_queries * n_rows`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots_many_avx2(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (nq, nr) = (queries.len() / dim, rows.len() / dim);
    let tile = (ROW_TILE_BYTES / (4 * dim)).max(1).div_ceil(8) * 8;
    let qb = nq / Q_BLOCK * Q_BLOCK;
    for t0 in (0..nr).step_by(tile) {
        let t1 = (t0 + tile).min(nr);
        let rb = t0 + (t1 - t0) / R_BLOCK * R_BLOCK;
        let r8 = t0 + (t1 - t0) / 8 * 8;
        // SAFETY: every call keeps q + QN <= nq and r + RN <= t1 <= nr, and out is large enough (caller).
        unsafe {
            for q in (0..qb).step_by(Q_BLOCK) {
                for r in (t0..rb).step_by(R_BLOCK) {
                    block::<Q_BLOCK, R_BLOCK>(queries, rows, dim, q, r, nr, out);
                }
                for r in rb..t1 {
                    block::<Q_BLOCK, 1>(queries, rows, dim, q, r, nr, out);
                }
            }
            // The last one or two queries (and the one-query path): eight rows per step keep eight chains
            // of fused multiply-adds in flight.
            for q in qb..nq {
                for r in (t0..r8).step_by(8) {
                    block::<1, 8>(queries, rows, dim, q, r, nr, out);
                }
                for r in r8..t1 {
                    block::<1, 1>(queries, rows, dim, q, r, nr, out);
                }
            }
        }
    }
}

/// Sums of four i32 vectors, lane-reduced: `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline]
#[target_feature(enable = "avx2")]
fn reduce4_epi32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    let ab = _mm256_hadd_epi32(a, b);
    let cd = _mm256_hadd_epi32(c, d);
    let abcd = _mm256_hadd_epi32(ab, cd);
    _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1))
}

/// SQ4 rows `r..r+RN` against the query: one group of 128 dimensions is 64 bytes, low nibbles holding
/// dimensions 0..64 and high nibbles 64..128. `vpmaddubsw` multiplies the unsigned nibbles by the signed
/// query bytes and adds pairs into i16 (at most 2 * 15 * 128 = 3,840 in magnitude, so four of them sum
/// to at most 15,360 without saturating); `vpmaddwd` with ones then widens into i32 once per group.
///
/// # Safety
/// The CPU must support AVX2; rows r..r+RN exist (`(r + RN) * stride <= codes.len()`), `stride` is
/// a multiple of 64 and `query.len() == 2 * stride`; `out.len() >= r + RN`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sq4_rows<const RN: usize>(query: &[i8], codes: &[u8], stride: usize, r: usize, out: &mut [i32]) {
    let (pq, pc) = (query.as_ptr(), codes.as_ptr());
    let nibble = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); RN];
    // SAFETY: group g of a row is bytes [64 g, 64 g + 64) < stride, and of the query values
    // [128 g, 128 g + 128) <= 2 stride = query.len(); rows r..r+RN exist (caller).
    unsafe {
        for g in 0..stride / 64 {
            let q: [__m256i; 4] = std::array::from_fn(|t| _mm256_loadu_si256(pq.add(128 * g + 32 * t).cast()));
            for (k, a) in acc.iter_mut().enumerate() {
                let row = pc.add((r + k) * stride + 64 * g);
                let v0 = _mm256_loadu_si256(row.cast());
                let v1 = _mm256_loadu_si256(row.add(32).cast());
                let lo0 = _mm256_and_si256(v0, nibble);
                let lo1 = _mm256_and_si256(v1, nibble);
                let hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nibble);
                let hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nibble);
                let s = _mm256_add_epi16(
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo0, q[0]), _mm256_maddubs_epi16(lo1, q[1])),
                    _mm256_add_epi16(_mm256_maddubs_epi16(hi0, q[2]), _mm256_maddubs_epi16(hi1, q[3])),
                );
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(s, ones));
            }
        }
    }
    let mut k = 0;
    while k + 4 <= RN {
        let sums = reduce4_epi32(acc[k], acc[k + 1], acc[k + 2], acc[k + 3]);
        // SAFETY: out.len() >= r + RN (caller) and k + 4 <= RN.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(r + k).cast(), sums) };
        k += 4;
    }
    while k < RN {
        let z = _mm256_setzero_si256();
        out[r + k] = _mm_cvtsi128_si32(reduce4_epi32(acc[k], z, z, z));
        k += 1;
    }
}

/// # Safety
/// The CPU must support AVX2; `stride` is a multiple of 64 and `query.len() == 2 * stride`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sq4_dots_avx2(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    let rows = out.len().min(codes.len() / stride);
    let r4 = rows / 4 * 4;
    // SAFETY: r + 4 <= r4 <= rows (and r < rows below): those rows exist and out has room; shapes are the
    // caller's.
    unsafe {
        for r in (0..r4).step_by(4) {
            sq4_rows::<4>(query, codes, stride, r, out);
        }
        for r in r4..rows {
            sq4_rows::<1>(query, codes, stride, r, out);
        }
    }
}

/// The fast-scan PQ4 kernel (layout and overflow rule in `fastscan.rs`): per block of 32 rows and pair of
/// sub-spaces, one 32-byte load, two `vpshufb` against the pair's two tables (one per 128-bit lane), and
/// four u16 adds, flushed into u32 totals every [`FS_FLUSH`](super::fastscan::FS_FLUSH) pairs. The flush
/// stays in registers ([`fold_avx2`]): the scalar fold it replaced cost about as much as 30 pair steps.
///
/// # Safety
/// The CPU must support AVX2; `lut.len() == pairs * 32` and `codes` holds at least
/// `ceil(out.len() / 32)` blocks of `pairs * 32` bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pq4_scan_avx2(lut: &[u8], codes: &[u8], pairs: usize, out: &mut [i32]) {
    use super::fastscan::{FS_BLOCK, FS_FLUSH};
    let bb = pairs * FS_BLOCK;
    let mask = _mm256_set1_epi8(0x0F);
    for (b, chunk) in out.chunks_mut(FS_BLOCK).enumerate() {
        let mut tot = [_mm256_setzero_si256(); 4];
        let mut p0 = 0;
        while p0 < pairs {
            let p1 = (p0 + FS_FLUSH).min(pairs);
            let z = _mm256_setzero_si256();
            let (mut a_lo, mut b_lo, mut a_hi, mut b_hi) = (z, z, z, z);
            for p in p0..p1 {
                // SAFETY: block b exists (the caller's shape) and p < pairs, so bytes b * bb + p * 32 + 0..32
                // are in `codes`; p * 32 + 0..32 are in `lut`.
                let (x, t) = unsafe {
                    (
                        _mm256_loadu_si256(codes.as_ptr().add(b * bb + p * 32).cast()),
                        _mm256_loadu_si256(lut.as_ptr().add(p * 32).cast()),
                    )
                };
                let lo = _mm256_and_si256(x, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask);
                let rl = _mm256_shuffle_epi8(t, lo);
                let rh = _mm256_shuffle_epi8(t, hi);
                a_lo = _mm256_add_epi16(a_lo, rl);
                b_lo = _mm256_add_epi16(b_lo, _mm256_srli_epi16(rl, 8));
                a_hi = _mm256_add_epi16(a_hi, rh);
                b_hi = _mm256_add_epi16(b_hi, _mm256_srli_epi16(rh, 8));
            }
            let (t0, t1) = fold_avx2(a_lo, b_lo);
            let (t2, t3) = fold_avx2(a_hi, b_hi);
            tot[0] = _mm256_add_epi32(tot[0], t0);
            tot[1] = _mm256_add_epi32(tot[1], t1);
            tot[2] = _mm256_add_epi32(tot[2], t2);
            tot[3] = _mm256_add_epi32(tot[3], t3);
            p0 = p1;
        }
        let mut all = [0i32; FS_BLOCK];
        for (dst, v) in all.chunks_exact_mut(8).zip(tot) {
            // SAFETY: each destination is 8 i32 = 32 bytes.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
        }
        chunk.copy_from_slice(&all[..chunk.len()]);
    }
}

/// One flush of a half block (16 rows): `a` holds, per u16 word `i` of each 128-bit lane, row `2i`'s sum
/// plus 256 times row `2i + 1`'s, `b` row `2i + 1`'s alone (fastscan.rs). Returns the u32 sums of rows
/// 0..8 and 8..16, the two lanes (two sub-spaces of the same rows) added.
#[inline]
#[target_feature(enable = "avx2")]
fn fold_avx2(a: __m256i, b: __m256i) -> (__m256i, __m256i) {
    let even = _mm256_sub_epi16(a, _mm256_slli_epi16(b, 8));
    // Per lane: words 0..4 of even/odd interleaved = rows 0..8 in order; words 4..8 = rows 8..16.
    let r0 = _mm256_unpacklo_epi16(even, b);
    let r1 = _mm256_unpackhi_epi16(even, b);
    (widen_add_lanes(r0), widen_add_lanes(r1))
}

/// The 8 u16 words of `r`'s low lane plus those of its high lane, as u32.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_add_lanes(r: __m256i) -> __m256i {
    _mm256_add_epi32(
        _mm256_cvtepu16_epi32(_mm256_castsi256_si128(r)),
        _mm256_cvtepu16_epi32(_mm256_extracti128_si256(r, 1)),
    )
}
