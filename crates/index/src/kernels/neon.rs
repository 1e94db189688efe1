//! aarch64 NEON kernels (NEON is part of every aarch64 CPU), with the dot-product extension (`sdot`,
//! FEAT_DotProd: optional from Armv8.2, present on Neoverse N1 / Cortex-A76 and Apple cores) for the SQ8
//! and SQ4 code kernels where the CPU has it, and a NEON-only twin where it does not. Only reached through
//! the dispatch in `kernels`.
//!
//! `sdot` is emitted with inline assembly: its Rust intrinsic (`vdotq_s32`) is still unstable
//! (`stdarch_neon_dotprod`). Every function here that uses it takes `dotprod: bool`, so tests can force
//! the NEON-only path on a CPU that has the extension.

use std::arch::aarch64::*;
use std::sync::OnceLock;

/// Whether this CPU has the `sdot` / `udot` instructions; detected once.
pub(super) fn has_dotprod() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_aarch64_feature_detected!("dotprod"))
}

/// `acc[i] += sum_{t<4} a[4i + t] * b[4i + t]` over signed bytes (`sdot`).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction of the dot-product extension, which this function requires;
    // it reads and writes no memory and touches no flags.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// # Safety
/// The CPU must support NEON (every aarch64 CPU does).
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY: each load reads 4 floats starting at i with i + 4 <= n, inside both slices.
    unsafe {
        while i + 16 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 4 * k;
                *a = vfmaq_f32(*a, vld1q_f32(pa.add(o)), vld1q_f32(pb.add(o)));
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
    }
    let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn l2_sq_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY: each load reads 4 floats starting at i with i + 4 <= n, inside both slices.
    unsafe {
        while i + 16 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 4 * k;
                let d = vsubq_f32(vld1q_f32(pa.add(o)), vld1q_f32(pb.add(o)));
                *a = vfmaq_f32(*a, d, d);
            }
            i += 16;
        }
        while i + 4 <= n {
            let d = vsubq_f32(vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            acc[0] = vfmaq_f32(acc[0], d, d);
            i += 4;
        }
    }
    let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    for j in i..n {
        s += (a[j] - b[j]) * (a[j] - b[j]);
    }
    s
}

/// # Safety
/// The CPU must support NEON; `block.len() == 16 * query.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dots_t16_neon(query: &[f32], block: &[f32], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr();
    // Two sets of four accumulators (16 lanes each): eight independent FMA chains.
    let mut acc = [[vdupq_n_f32(0.0); 4]; 2];
    let mut j = 0;
    // SAFETY: column j is block[16 j .. 16 j + 16]; its four 4-lane quarters lie inside it for j < dim.
    unsafe {
        while j + 2 <= dim {
            for (u, a) in acc.iter_mut().enumerate() {
                let q = vdupq_n_f32(query[j + u]);
                for (h, v) in a.iter_mut().enumerate() {
                    *v = vfmaq_f32(*v, q, vld1q_f32(pb.add((j + u) * 16 + 4 * h)));
                }
            }
            j += 2;
        }
        if j < dim {
            let q = vdupq_n_f32(query[j]);
            for (h, v) in acc[0].iter_mut().enumerate() {
                *v = vfmaq_f32(*v, q, vld1q_f32(pb.add(j * 16 + 4 * h)));
            }
        }
        for (h, (a, b)) in acc[0].iter().zip(&acc[1]).enumerate() {
            vst1q_f32(out.as_mut_ptr().add(4 * h), vaddq_f32(*a, *b));
        }
    }
}

/// Four f16 values (bits) widened to f32 exactly, by the same bit move as [`super::f16_to_f32`]: the
/// sign-extended half shifted left by 13 puts its exponent and mantissa under the f32 ones (exponent
/// bias 15 instead of 127, hence the multiplication by 2^112, exact also for subnormal halves). `fcvtl`
/// would do it in one instruction, but its intrinsic needs the unstable `fp16` target feature.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: int16x4_t) -> float32x4_t {
    let bits = vandq_s32(vshlq_n_s32::<13>(vmovl_s16(h)), vdupq_n_s32(0x8FFF_E000u32 as i32));
    vmulq_f32(vreinterpretq_f32_s32(bits), vdupq_n_f32(super::F16_TO_F32_SCALE))
}

/// [`dots_t16_neon`] over a transposed block of f16 bits.
///
/// # Safety
/// The CPU must support NEON; `block.len() == 16 * query.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dots_t16h_neon(query: &[f32], block: &[u16], out: &mut [f32; 16]) {
    let dim = query.len();
    let pb = block.as_ptr().cast::<i16>();
    let mut acc = [[vdupq_n_f32(0.0); 4]; 2];
    let mut j = 0;
    // SAFETY: column j is block[16 j .. 16 j + 16]; its four 4-value quarters lie inside it for j < dim.
    unsafe {
        while j + 2 <= dim {
            for (u, a) in acc.iter_mut().enumerate() {
                let q = vdupq_n_f32(query[j + u]);
                for (h, v) in a.iter_mut().enumerate() {
                    *v = vfmaq_f32(*v, q, f16x4_to_f32(vld1_s16(pb.add((j + u) * 16 + 4 * h))));
                }
            }
            j += 2;
        }
        if j < dim {
            let q = vdupq_n_f32(query[j]);
            for (h, v) in acc[0].iter_mut().enumerate() {
                *v = vfmaq_f32(*v, q, f16x4_to_f32(vld1_s16(pb.add(j * 16 + 4 * h))));
            }
        }
        for (h, (a, b)) in acc[0].iter().zip(&acc[1]).enumerate() {
            vst1q_f32(out.as_mut_ptr().add(4 * h), vaddq_f32(*a, *b));
        }
    }
}

/// Scores queries `q..q+QN` against rows `r..r+RN` in registers (QN x RN accumulators of 4 lanes) and
/// writes the QN x RN scores at `out[(q + k) * nr + r + j]`. Every score is reduced the same way
/// (lane sum, then the `dim % 4` tail products in order), whatever the block shape, so a score does not
/// depend on the block its row fell in: single-query and batched exact search agree to the bit.
///
/// # Safety
/// The CPU must support NEON; those queries and rows exist in `queries` and `rows` (whole rows of `dim`),
/// and `out` holds `(q + QN) * nr` scores with `r + RN <= nr`.
#[inline]
#[target_feature(enable = "neon")]
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
    let full = dim / 4 * 4;
    let (pq, pr) = (queries.as_ptr(), rows.as_ptr());
    let mut acc = [[vdupq_n_f32(0.0); QN]; RN];
    // SAFETY: the caller guarantees queries q..q+QN and rows r..r+RN; loads read 4 floats at offsets
    // i + 4 <= full <= dim of one row.
    unsafe {
        let mut i = 0;
        while i < full {
            let rv: [float32x4_t; RN] = std::array::from_fn(|j| vld1q_f32(pr.add((r + j) * dim + i)));
            for k in 0..QN {
                let qv = vld1q_f32(pq.add((q + k) * dim + i));
                for j in 0..RN {
                    acc[j][k] = vfmaq_f32(acc[j][k], qv, rv[j]);
                }
            }
            i += 4;
        }
    }
    for k in 0..QN {
        let qrow = &queries[(q + k) * dim..][..dim];
        for j in 0..RN {
            let row = &rows[(r + j) * dim..][..dim];
            let mut s = vaddvq_f32(acc[j][k]);
            for t in full..dim {
                s += qrow[t] * row[t];
            }
            out[(q + k) * nr + r + j] = s;
        }
    }
}

/// Queries per register block of [`dots_many_neon`]: 4 queries x 4 rows = 16 accumulators, 4 row vectors
/// and one query vector, 21 of the 32 vector registers; each step loads 8 vectors for 16 fused
/// multiply-adds.
const Q_BLOCK: usize = 4;
/// Rows per register block of [`dots_many_neon`].
const R_BLOCK: usize = 4;

/// Bytes of rows scored against every query before moving on (see the AVX2 twin): a tile that stays in
/// L2 beside the queries (aarch64 server cores have 1 MiB or more).
const ROW_TILE_BYTES: usize = 128 * 1024;

/// # Safety
/// The CPU must support NEON; `queries` and `rows` are whole rows of `dim > 0` and
/// `out.len() >= n_queries * n_rows`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dots_many_neon(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
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
            // The last queries (and the one-query path): eight rows per step keep eight chains of fused
            // multiply-adds in flight.
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

/// `sum codes[j] * query[j]` over the first `n` values, NEON only: bytes widened to i16, products
/// accumulated into i32 with `smlal`.
///
/// # Safety
/// The CPU must support NEON; `n <= codes.len()` and `n <= query.len()`.
#[target_feature(enable = "neon")]
unsafe fn sq8_dot_plain(codes: &[u8], query: &[i8], n: usize) -> i32 {
    let (pc, pq) = (codes.as_ptr(), query.as_ptr());
    let mut acc = [vdupq_n_s32(0); 4];
    let mut i = 0;
    // SAFETY: each load reads 16 bytes at i with i + 16 <= n, inside both slices (caller).
    unsafe {
        while i + 16 <= n {
            let c = vld1q_u8(pc.add(i));
            let q = vld1q_s8(pq.add(i));
            // Codes are at most 255, so their u16 widening reinterpreted as i16 keeps the value.
            let clo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(c)));
            let chi = vreinterpretq_s16_u16(vmovl_high_u8(c));
            let (qlo, qhi) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
            acc[0] = vmlal_s16(acc[0], vget_low_s16(clo), vget_low_s16(qlo));
            acc[1] = vmlal_high_s16(acc[1], clo, qlo);
            acc[2] = vmlal_s16(acc[2], vget_low_s16(chi), vget_low_s16(qhi));
            acc[3] = vmlal_high_s16(acc[3], chi, qhi);
            i += 16;
        }
    }
    let v = vaddq_s32(vaddq_s32(acc[0], acc[1]), vaddq_s32(acc[2], acc[3]));
    let mut total = vaddvq_s32(v);
    for j in i..n {
        total = total.wrapping_add(i32::from(codes[j]) * i32::from(query[j]));
    }
    total
}

/// `sum (codes[j] - 128) * query[j]` over the first `n / 16 * 16` values with `sdot` (`codes ^ 0x80`
/// is `codes - 128` as a signed byte; the extension has no unsigned x signed form), plus the plain
/// products of the tail. The caller adds `128 * sum(query[..n / 16 * 16])`.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; `n <= codes.len()` and `n <= query.len()`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn sq8_dot_biased(codes: &[u8], query: &[i8], n: usize) -> i32 {
    let (pc, pq) = (codes.as_ptr(), query.as_ptr());
    let flip = vdupq_n_u8(0x80);
    let mut acc = [vdupq_n_s32(0); 2];
    let mut i = 0;
    // SAFETY: each load reads 16 bytes at i with i + 16 <= n, inside both slices (caller).
    unsafe {
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let c = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(pc.add(i + 16 * k)), flip));
                *a = sdot(*a, c, vld1q_s8(pq.add(i + 16 * k)));
            }
            i += 32;
        }
        if i + 16 <= n {
            let c = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(pc.add(i)), flip));
            acc[0] = sdot(acc[0], c, vld1q_s8(pq.add(i)));
            i += 16;
        }
    }
    let mut total = vaddvq_s32(vaddq_s32(acc[0], acc[1]));
    for j in i..n {
        total = total.wrapping_add(i32::from(codes[j]) * i32::from(query[j]));
    }
    total
}

/// `128 * sum(query[..n / 16 * 16])`, the correction [`sq8_dot_biased`] leaves to its caller.
fn sq8_bias(query: &[i8], n: usize) -> i32 {
    let m = n / 16 * 16;
    128 * query[..m].iter().map(|&q| i32::from(q)).sum::<i32>()
}

/// Integer dot product of u8 codes and an i8 query over their common prefix; `sdot` when `dotprod`.
///
/// # Safety
/// The CPU must support NEON, and the dot-product extension when `dotprod` is true.
#[target_feature(enable = "neon")]
pub(super) unsafe fn sq8_dot(codes: &[u8], query: &[i8], dotprod: bool) -> i32 {
    let n = codes.len().min(query.len());
    // SAFETY: n is within both slices; the caller guarantees the extension when `dotprod`.
    unsafe {
        if dotprod {
            sq8_dot_biased(codes, query, n).wrapping_add(sq8_bias(query, n))
        } else {
            sq8_dot_plain(codes, query, n)
        }
    }
}

/// `out[i] = sq8_dot(codes[i*stride..][..query.len()], query)`; the query's bias term of the `sdot`
/// form is computed once for all rows.
///
/// # Safety
/// The CPU must support NEON, and the dot-product extension when `dotprod` is true;
/// `stride >= query.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn sq8_dots(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32], dotprod: bool) {
    let n = query.len();
    let bias = if dotprod { sq8_bias(query, n) } else { 0 };
    for (o, row) in out.iter_mut().zip(codes.chunks_exact(stride)) {
        // SAFETY: n = query.len() <= stride = row.len(); the caller guarantees the extension when `dotprod`.
        *o = unsafe {
            if dotprod { sq8_dot_biased(row, query, n).wrapping_add(bias) } else { sq8_dot_plain(row, query, n) }
        };
    }
}

/// SQ4 rows `r..r+RN` against the query, NEON only. Per group of 128 dimensions (64 bytes: low nibbles
/// dimensions 0..64, high nibbles 64..128), `smull`/`smlal` multiply nibbles by query bytes into two
/// i16 accumulators of eight products each (at most 8 * 15 * 128 = 15,360 in magnitude, no overflow),
/// widened into i32 with `sadalp` once per group.
///
/// # Safety
/// The CPU must support NEON; rows r..r+RN exist (`(r + RN) * stride <= codes.len()`), `stride` is a
/// multiple of 64, `query.len() == 2 * stride` and `out.len() >= r + RN`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn sq4_rows_plain<const RN: usize>(query: &[i8], codes: &[u8], stride: usize, r: usize, out: &mut [i32]) {
    let (pq, pc) = (query.as_ptr(), codes.as_ptr());
    let nibble = vdupq_n_u8(0x0F);
    let mut acc = [vdupq_n_s32(0); RN];
    // SAFETY: group g of a row is bytes [64 g, 64 g + 64) < stride, and of the query values
    // [128 g, 128 g + 128) <= 2 stride = query.len(); rows r..r+RN exist (caller).
    unsafe {
        for g in 0..stride / 64 {
            // q[t] for t < 4: dimensions 16 t.. of the group (low nibbles); t >= 4: 64 + 16 (t - 4)..
            let q: [int8x16_t; 8] =
                std::array::from_fn(|t| vld1q_s8(pq.add(128 * g + if t < 4 { 16 * t } else { 64 + 16 * (t - 4) })));
            for (k, a) in acc.iter_mut().enumerate() {
                let row = pc.add((r + k) * stride + 64 * g);
                let mut s0 = vdupq_n_s16(0);
                let mut s1 = vdupq_n_s16(0);
                for t in 0..4 {
                    let v = vld1q_u8(row.add(16 * t));
                    let lo = vreinterpretq_s8_u8(vandq_u8(v, nibble));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                    s0 = vmlal_s8(s0, vget_low_s8(lo), vget_low_s8(q[t]));
                    s1 = vmlal_high_s8(s1, lo, q[t]);
                    s0 = vmlal_s8(s0, vget_low_s8(hi), vget_low_s8(q[4 + t]));
                    s1 = vmlal_high_s8(s1, hi, q[4 + t]);
                }
                *a = vpadalq_s16(vpadalq_s16(*a, s0), s1);
            }
        }
    }
    for (k, a) in acc.iter().enumerate() {
        out[r + k] = vaddvq_s32(*a);
    }
}

/// [`sq4_rows_plain`] with `sdot`: nibbles (0..15) are already valid signed bytes, so each 16 bytes of a
/// row take one `and`, one shift and two `sdot`, accumulating straight into i32.
///
/// # Safety
/// As [`sq4_rows_plain`], and the CPU must support the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sq4_rows_dotprod<const RN: usize>(query: &[i8], codes: &[u8], stride: usize, r: usize, out: &mut [i32]) {
    let (pq, pc) = (query.as_ptr(), codes.as_ptr());
    let nibble = vdupq_n_u8(0x0F);
    let mut acc = [vdupq_n_s32(0); RN];
    // SAFETY: as in `sq4_rows_plain`.
    unsafe {
        for g in 0..stride / 64 {
            let q: [int8x16_t; 8] =
                std::array::from_fn(|t| vld1q_s8(pq.add(128 * g + if t < 4 { 16 * t } else { 64 + 16 * (t - 4) })));
            for (k, a) in acc.iter_mut().enumerate() {
                let row = pc.add((r + k) * stride + 64 * g);
                for t in 0..4 {
                    let v = vld1q_u8(row.add(16 * t));
                    *a = sdot(*a, vreinterpretq_s8_u8(vandq_u8(v, nibble)), q[t]);
                    *a = sdot(*a, vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), q[4 + t]);
                }
            }
        }
    }
    for (k, a) in acc.iter().enumerate() {
        out[r + k] = vaddvq_s32(*a);
    }
}

/// SQ4 code scores, four rows per step so each query vector is loaded once for four rows.
///
/// # Safety
/// The CPU must support NEON, and the dot-product extension when `dotprod` is true; `stride` is a
/// multiple of 64 and `query.len() == 2 * stride`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn sq4_dots(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32], dotprod: bool) {
    let rows = out.len().min(codes.len() / stride);
    let r4 = rows / 4 * 4;
    // SAFETY: r + 4 <= r4 <= rows (and r < rows below): those rows exist and out has room; shapes and the
    // extension are the caller's.
    unsafe {
        if dotprod {
            for r in (0..r4).step_by(4) {
                sq4_rows_dotprod::<4>(query, codes, stride, r, out);
            }
            for r in r4..rows {
                sq4_rows_dotprod::<1>(query, codes, stride, r, out);
            }
        } else {
            for r in (0..r4).step_by(4) {
                sq4_rows_plain::<4>(query, codes, stride, r, out);
            }
            for r in r4..rows {
                sq4_rows_plain::<1>(query, codes, stride, r, out);
            }
        }
    }
}
