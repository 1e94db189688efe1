//! Distance kernels with runtime SIMD dispatch: f32 dot product and squared L2, one query against many
//! rows, a register-blocked many-against-many kernel for exhaustive search, and the u8 x i8 dot product
//! that scores SQ8 codes.
//!
//! Every kernel has an auto-vectorisable scalar version (`chunks_exact` with independent accumulators) and
//! intrinsics versions for AVX2+FMA and AVX-512 (F, BW and VNNI together). [`Isa::best`] is detected once;
//! the `*_with` functions take an explicit [`Isa`] so tests and benchmarks can compare every variant
//! against the scalar one and an f64 reference. An [`Isa`] that the CPU lacks falls back to the scalar code,
//! so no input can reach an instruction the machine does not have.

use std::sync::OnceLock;

/// An instruction set a kernel can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code; the compiler vectorises it for the build target.
    Scalar,
    /// AVX2 with FMA (x86-64 since Haswell / Zen).
    Avx2,
    /// AVX-512 F + BW + VNNI (x86-64 since Ice Lake / Zen 4).
    Avx512,
}

impl Isa {
    /// Whether this CPU can run kernels of this instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest instruction set this CPU has, detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| [Isa::Avx512, Isa::Avx2].into_iter().find(|isa| isa.is_available()).unwrap_or(Isa::Scalar))
    }

    /// Every instruction set this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_available()).collect()
    }

    /// `self` if the CPU has it, otherwise scalar.
    fn checked(self) -> Isa {
        if self == Isa::Scalar || self.is_available() { self } else { Isa::Scalar }
    }
}

const LANES: usize = 16;

/// Dot product of the common prefix of `a` and `b`, with the best instruction set.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(Isa::best(), a, b)
}

/// Squared Euclidean distance of the common prefix of `a` and `b`, with the best instruction set.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    l2_sq_with(Isa::best(), a, b)
}

/// [`dot`] on a chosen instruction set.
pub fn dot_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa.checked() {
        Isa::Scalar => scalar::dot(a, b),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::dot_avx2(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { x86::dot_avx512(a, b) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::dot(a, b),
    }
}

/// [`l2_sq`] on a chosen instruction set.
pub fn l2_sq_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa.checked() {
        Isa::Scalar => scalar::l2_sq(a, b),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::l2_sq_avx2(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { x86::l2_sq_avx512(a, b) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::l2_sq(a, b),
    }
}

/// `out[i] = dot(query, rows[i*dim..(i+1)*dim])` for `dim = query.len()`; rows beyond `out.len()` are
/// ignored, and missing rows leave their `out` entries untouched. The AVX-512 version scores four rows per
/// step with one combined reduction.
pub fn dots_with(isa: Isa, query: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = query.len();
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { x86::dots_avx512(query, rows, out) },
        isa => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
                *o = dot_with(isa, query, row);
            }
        }
    }
}

/// [`dots_with`] on the best instruction set.
#[inline]
pub fn dots(query: &[f32], rows: &[f32], out: &mut [f32]) {
    dots_with(Isa::best(), query, rows, out)
}

/// Scores of many queries against many rows: `out[q * n_rows + r] = dot(queries[q], rows[r])`, where
/// `n_rows = rows.len() / dim`. The AVX-512 version computes 4 x 4 blocks in registers, loading each row
/// chunk once for four queries: the inner loop of exhaustive search and of k-means assignment.
///
/// `queries.len()` and `rows.len()` must be multiples of `dim`, and `out.len() >= n_queries * n_rows`;
/// otherwise nothing is written.
pub fn dots_many_with(isa: Isa, queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 || !queries.len().is_multiple_of(dim) || !rows.len().is_multiple_of(dim) {
        return;
    }
    let (nq, nr) = (queries.len() / dim, rows.len() / dim);
    if nq == 0 || nr == 0 || out.len() < nq * nr {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI; lengths checked above.
        Isa::Avx512 => unsafe { x86::dots_many_avx512(queries, rows, dim, out) },
        isa => {
            for (q, o) in queries.chunks_exact(dim).zip(out.chunks_exact_mut(nr)) {
                dots_with(isa, q, rows, o);
            }
        }
    }
}

/// [`dots_many_with`] on the best instruction set.
#[inline]
pub fn dots_many(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    dots_many_with(Isa::best(), queries, rows, dim, out)
}

/// Integer dot product of unsigned 8-bit codes and a signed 8-bit query over their common prefix.
///
/// Sums are exact in i32 for lengths up to 66,000 (255 * 128 * 66,000 < 2^31).
pub fn sq8_dot_with(isa: Isa, codes: &[u8], query: &[i8]) -> i32 {
    match isa.checked() {
        Isa::Scalar => scalar::sq8_dot(codes, query),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2.
        Isa::Avx2 => unsafe { x86::sq8_dot_avx2(codes, query) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { x86::sq8_dot_avx512(codes, query) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::sq8_dot(codes, query),
    }
}

/// `out[i] = sq8_dot(codes[i*stride..][..query.len()], query)` for each of `out.len()` rows of `stride`
/// bytes (`stride >= query.len()`); missing rows leave their entries untouched.
pub fn sq8_dots_with(isa: Isa, query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    if stride < query.len() || stride == 0 {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { x86::sq8_dots_avx512(query, codes, stride, out) },
        isa => {
            for (o, row) in out.iter_mut().zip(codes.chunks_exact(stride)) {
                *o = sq8_dot_with(isa, row, query);
            }
        }
    }
}

/// [`sq8_dots_with`] on the best instruction set.
#[inline]
pub fn sq8_dots(query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    sq8_dots_with(Isa::best(), query, codes, stride, out)
}

/// Width of a transposed block: [`dots_t16_with`] scores this many rows at once.
pub const T16: usize = 16;

/// Scores one query against a block of 16 rows stored transposed (`block[j * 16 + l]` is dimension `j`
/// of row `l`, so `block.len() == 16 * query.len()`): `out[l] = dot(query, row l)`.
///
/// The transposed layout needs no horizontal sums: each step broadcasts one query value and multiplies
/// it into 16 rows at once. m2m-index stores centroids this way, so ranking thousands of them per query is
/// a stream of fused multiply-adds. A block of the wrong length leaves `out` untouched.
pub fn dots_t16_with(isa: Isa, query: &[f32], block: &[f32], out: &mut [f32; T16]) {
    if block.len() != T16 * query.len() {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI; length checked above.
        Isa::Avx512 => unsafe { x86::dots_t16_avx512(query, block, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2 and FMA; length checked above.
        Isa::Avx2 => unsafe { x86::dots_t16_avx2(query, block, out) },
        _ => scalar::dots_t16(query, block, out),
    }
}

/// Transposes rows (row-major, `dim` each) into blocks of [`T16`] for [`dots_t16_with`]; the last block
/// is padded with zero rows.
pub fn transpose_t16(rows: &[f32], dim: usize) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let n = rows.len() / dim;
    let blocks = n.div_ceil(T16);
    let mut out = vec![0.0f32; blocks * T16 * dim];
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let (b, l) = (i / T16, i % T16);
        let block = &mut out[b * T16 * dim..][..T16 * dim];
        for (j, &v) in row.iter().enumerate() {
            block[j * T16 + l] = v;
        }
    }
    out
}

/// Dimensions per SQ4 group: a group is 64 bytes holding 128 four-bit codes (see [`sq4_pack`]).
pub const SQ4_GROUP: usize = 128;

/// Bytes of one SQ4-coded row of `dim` dimensions.
pub fn sq4_stride(dim: usize) -> usize {
    dim.div_ceil(SQ4_GROUP) * (SQ4_GROUP / 2)
}

/// Packs 4-bit codes (`codes[j] <= 15`, one per dimension) into the SQ4 row layout: for each group of 128
/// dimensions, byte `b` holds dimension `b` of the group in its low nibble and dimension `64 + b` in its
/// high nibble. Missing dimensions (past `codes.len()`) are code 0. `out.len()` must be
/// `sq4_stride(codes.len())`; otherwise nothing is written.
pub fn sq4_pack(codes: &[u8], out: &mut [u8]) {
    if out.len() != sq4_stride(codes.len()) {
        return;
    }
    out.fill(0);
    for (j, &c) in codes.iter().enumerate() {
        let (g, r) = (j / SQ4_GROUP, j % SQ4_GROUP);
        let byte = g * (SQ4_GROUP / 2) + r % 64;
        out[byte] |= (c & 0x0F) << (4 * (r / 64));
    }
}

/// The 4-bit code of dimension `j` in a packed SQ4 row.
pub fn sq4_code(row: &[u8], j: usize) -> u8 {
    let (g, r) = (j / SQ4_GROUP, j % SQ4_GROUP);
    (row[g * (SQ4_GROUP / 2) + r % 64] >> (4 * (r / 64))) & 0x0F
}

/// `out[i] = sum_j code_ij * query[j]` over SQ4 rows of `stride` bytes; `query` holds one i8 per
/// dimension, padded with zeros to `2 * stride` values. Rows beyond `out.len()` are ignored; a query of
/// another length leaves `out` untouched.
pub fn sq4_dots_with(isa: Isa, query: &[i8], codes: &[u8], stride: usize, out: &mut [i32]) {
    if stride == 0 || !stride.is_multiple_of(SQ4_GROUP / 2) || query.len() != 2 * stride {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI; shapes checked above.
        Isa::Avx512 => unsafe { x86::sq4_dots_avx512(query, codes, stride, out) },
        _ => {
            for (o, row) in out.iter_mut().zip(codes.chunks_exact(stride)) {
                *o = scalar::sq4_dot(row, query);
            }
        }
    }
}

/// bf16 values per padded group: rows of a bf16 matrix are padded with zeros to a multiple of this.
pub const BF16_GROUP: usize = 32;

/// Padded length of a bf16 row of `dim` values.
pub fn bf16_stride(dim: usize) -> usize {
    dim.div_ceil(BF16_GROUP) * BF16_GROUP
}

/// Rounds f32 values to bf16 (round to nearest, ties to even) into `out`, padding the rest of `out` with
/// zeros. Finite inputs give finite outputs unless they exceed the bf16 range.
pub fn to_bf16(v: &[f32], out: &mut [u16]) {
    out.fill(0);
    for (o, &x) in out.iter_mut().zip(v) {
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
        *o = (rounded >> 16) as u16;
    }
}

/// The f32 value of a bf16.
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Relative error bound of [`bf16_dots_many_with`] for rows of `dim` values: with both operands rounded to
/// bf16 (8 bits of precision: relative error at most 2^-8 each, so at most 2^-7 + 2^-16 per product) and
/// products summed in f32,
/// `|q . x - score| <= bf16_error_bound(dim) * |q| * |x|` (Cauchy-Schwarz on `sum |q_j| |x_j|`), with a 1%
/// margin. Values small enough to be flushed as denormals (below 2^-126) are not covered.
pub fn bf16_error_bound(dim: usize) -> f32 {
    let per_product = 2f64.powi(-7) + 2f64.powi(-16);
    let accumulation = dim as f64 * 2f64.powi(-23);
    (1.01 * (per_product + accumulation + 2f64.powi(-17))) as f32
}

/// Whether this CPU has the AVX-512 BF16 dot-product instruction.
pub fn has_bf16_dot() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            Isa::Avx512.is_available() && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Scores of bf16 queries against bf16 rows, both padded to `stride` ([`bf16_stride`]):
/// `out[q * n_rows + r] = sum_j q_j x_j` accumulated in f32. Uses `vdpbf16ps` where [`has_bf16_dot`],
/// otherwise a scalar twin (exact products, f32 sums). Shapes that do not fit leave `out` untouched.
pub fn bf16_dots_many_with(isa: Isa, queries: &[u16], rows: &[u16], stride: usize, out: &mut [f32]) {
    if stride == 0 || !stride.is_multiple_of(BF16_GROUP) {
        return;
    }
    if !queries.len().is_multiple_of(stride) || !rows.len().is_multiple_of(stride) {
        return;
    }
    let (nq, nr) = (queries.len() / stride, rows.len() / stride);
    if nq == 0 || nr == 0 || out.len() < nq * nr {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 plus the bf16 feature were both detected; shapes checked above.
        Isa::Avx512 if has_bf16_dot() => unsafe { x86::bf16_dots_many_avx512(queries, rows, stride, out) },
        _ => {
            for (qrow, o) in queries.chunks_exact(stride).zip(out.chunks_exact_mut(nr)) {
                for (x, row) in o.iter_mut().zip(rows.chunks_exact(stride)) {
                    *x = qrow.iter().zip(row).map(|(&a, &b)| bf16_to_f32(a) * bf16_to_f32(b)).sum();
                }
            }
        }
    }
}

/// Weighted sums of rows: `out[b] = sum_j coef[b * n + j] * rows[j]` for `n = rows.len() / dim` rows
/// of `dim` values and `coef.len() / n` outputs (the product C R of a coefficient matrix and a row
/// matrix). The AVX-512 version keeps 4 outputs x 64 values in registers and loads each row chunk once
/// for the four; no horizontal sums. Langevin dynamics (m2m-soc) and centroid updates use it.
///
/// `rows.len()` must be a multiple of `dim`, `coef.len()` a multiple of `n` and `out.len()` at least
/// `coef.len() / n * dim`; otherwise nothing is written.
pub fn weighted_sums_with(isa: Isa, coef: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 || rows.is_empty() || !rows.len().is_multiple_of(dim) {
        return;
    }
    let n = rows.len() / dim;
    if !coef.len().is_multiple_of(n) || out.len() < coef.len() / n * dim {
        return;
    }
    let out = &mut out[..coef.len() / n * dim];
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI; shapes checked above.
        Isa::Avx512 => unsafe { x86::weighted_sums_avx512(coef, rows, dim, out) },
        _ => scalar::weighted_sums(coef, rows, dim, out),
    }
}

/// [`weighted_sums_with`] on the best instruction set.
#[inline]
pub fn weighted_sums(coef: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    weighted_sums_with(Isa::best(), coef, rows, dim, out)
}

mod scalar {
    use super::LANES;

    /// Shapes checked by the caller (`weighted_sums_with`).
    pub(super) fn weighted_sums(coef: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
        let n = rows.len() / dim;
        for (c, o) in coef.chunks_exact(n).zip(out.chunks_exact_mut(dim)) {
            o.fill(0.0);
            for (&w, row) in c.iter().zip(rows.chunks_exact(dim)) {
                o.iter_mut().zip(row).for_each(|(a, &r)| *a += w * r);
            }
        }
    }

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ta.iter().zip(tb) {
            s += x * y;
        }
        s
    }

    pub(super) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                let d = x[i] - y[i];
                acc[i] += d * d;
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ta.iter().zip(tb) {
            s += (x - y) * (x - y);
        }
        s
    }

    pub(super) fn dots_t16(query: &[f32], block: &[f32], out: &mut [f32; super::T16]) {
        let mut acc = [0.0f32; super::T16];
        for (&q, col) in query.iter().zip(block.chunks_exact(super::T16)) {
            for (a, &c) in acc.iter_mut().zip(col) {
                *a += q * c;
            }
        }
        *out = acc;
    }

    /// One packed SQ4 row against a query of `2 * row.len()` i8 values: each byte feeds two dimensions.
    pub(super) fn sq4_dot(row: &[u8], query: &[i8]) -> i32 {
        let mut s = 0i32;
        for (bytes, q) in row.chunks_exact(64).zip(query.chunks_exact(128)) {
            let (qlo, qhi) = q.split_at(64);
            for ((&b, &l), &h) in bytes.iter().zip(qlo).zip(qhi) {
                s += i32::from(b & 0x0F) * i32::from(l) + i32::from(b >> 4) * i32::from(h);
            }
        }
        s
    }

    pub(super) fn sq8_dot(codes: &[u8], query: &[i8]) -> i32 {
        let n = codes.len().min(query.len());
        let mut acc = [0i32; LANES];
        let (cc, cq) = (codes[..n].chunks_exact(LANES), query[..n].chunks_exact(LANES));
        let (tc, tq) = (cc.remainder(), cq.remainder());
        for (c, q) in cc.zip(cq) {
            for i in 0..LANES {
                acc[i] += i32::from(c[i]) * i32::from(q[i]);
            }
        }
        let mut s: i32 = acc.iter().sum();
        for (c, q) in tc.iter().zip(tq) {
            s += i32::from(*c) * i32::from(*q);
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
                acc[1] =
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[1]);
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
        let v = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)),
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dot_ref(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
    }

    fn l2_ref(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
    }

    /// f32 accumulation error bound: a few ulps of the sum of magnitudes.
    fn tol(a: &[f32], b: &[f32]) -> f64 {
        let mag: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs()).sum();
        1e-5 * mag + 1e-6
    }

    fn vecs(max: usize) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0..max).prop_flat_map(|n| {
            (proptest::collection::vec(-10.0f32..10.0, n), proptest::collection::vec(-10.0f32..10.0, n))
        })
    }

    proptest! {
        #[test]
        fn dot_and_l2_match_f64_on_every_isa((a, b) in vecs(300)) {
            for isa in Isa::available() {
                let d = f64::from(dot_with(isa, &a, &b));
                prop_assert!((d - dot_ref(&a, &b)).abs() <= tol(&a, &b), "{:?} dot {} vs {}", isa, d, dot_ref(&a, &b));
                let l = f64::from(l2_sq_with(isa, &a, &b));
                let lr = l2_ref(&a, &b);
                prop_assert!((l - lr).abs() <= 1e-5 * lr + 1e-6, "{:?} l2 {} vs {}", isa, l, lr);
            }
        }

        #[test]
        fn dots_many_matches_single_dots(dim in 1usize..70, nq in 0usize..11, nr in 0usize..11, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let qs: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let rs: Vec<f32> = (0..nr * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; nq * nr];
                dots_many_with(isa, &qs, &rs, dim, &mut out);
                for q in 0..nq {
                    for r in 0..nr {
                        let (a, b) = (&qs[q * dim..][..dim], &rs[r * dim..][..dim]);
                        prop_assert!((f64::from(out[q * nr + r]) - dot_ref(a, b)).abs() <= tol(a, b), "{:?}", isa);
                    }
                }
            }
        }

        #[test]
        fn weighted_sums_match_f64_on_every_isa(dim in 1usize..150, n in 1usize..9, b in 0usize..11, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let coef: Vec<f32> = (0..b * n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; b * dim];
                weighted_sums_with(isa, &coef, &rows, dim, &mut out);
                for o in 0..b {
                    for d in 0..dim {
                        let (want, mag) = (0..n).fold((0.0f64, 0.0f64), |(w, m), j| {
                            let t = f64::from(coef[o * n + j]) * f64::from(rows[j * dim + d]);
                            (w + t, m + t.abs())
                        });
                        let got = f64::from(out[o * dim + d]);
                        prop_assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{:?} out ({}, {}): {} vs {}", isa, o, d, got, want);
                    }
                }
            }
        }

        #[test]
        fn dots_match_f64_on_every_isa(dim in 1usize..100, rows in 0usize..14, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let m: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; rows];
                dots_with(isa, &q, &m, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    let row = &m[r * dim..][..dim];
                    prop_assert!((f64::from(o) - dot_ref(&q, row)).abs() <= tol(&q, row), "{:?} row {}", isa, r);
                }
            }
        }

        #[test]
        fn sq8_dot_is_exact_on_every_isa(
            pairs in proptest::collection::vec((any::<u8>(), any::<i8>()), 0..400),
        ) {
            let (codes, query): (Vec<u8>, Vec<i8>) = pairs.into_iter().unzip();
            let exact: i64 = codes.iter().zip(&query).map(|(&c, &q)| i64::from(c) * i64::from(q)).sum();
            for isa in Isa::available() {
                prop_assert_eq!(i64::from(sq8_dot_with(isa, &codes, &query)), exact, "{:?}", isa);
            }
        }
    }

    proptest! {
        #[test]
        fn transposed_blocks_match_row_dots(dim in 1usize..50, rows in 1usize..40, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let m: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let t = transpose_t16(&m, dim);
            prop_assert_eq!(t.len(), rows.div_ceil(T16) * T16 * dim);
            for isa in Isa::available() {
                for (b, block) in t.chunks_exact(T16 * dim).enumerate() {
                    let mut out = [f32::NAN; T16];
                    dots_t16_with(isa, &q, block, &mut out);
                    for (l, &o) in out.iter().enumerate() {
                        let i = b * T16 + l;
                        let want = if i < rows { dot_ref(&q, &m[i * dim..][..dim]) } else { 0.0 };
                        let tl = if i < rows { tol(&q, &m[i * dim..][..dim]) } else { 0.0 };
                        prop_assert!((f64::from(o) - want).abs() <= tl, "{:?} row {}", isa, i);
                    }
                }
            }
        }

        #[test]
        fn sq8_dots_match_single_rows(n in 1usize..200, pad in 0usize..70, rows in 0usize..11, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let stride = n + pad;
            let q: Vec<i8> = (0..n).map(|_| rng.random()).collect();
            let codes: Vec<u8> = (0..rows * stride).map(|_| rng.random()).collect();
            for isa in Isa::available() {
                let mut out = vec![i32::MIN; rows];
                sq8_dots_with(isa, &q, &codes, stride, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    prop_assert_eq!(o, sq8_dot_with(Isa::Scalar, &codes[r * stride..][..n], &q), "{:?} row {}", isa, r);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn sq4_pack_round_trips_and_dots_match_unpacked(dim in 1usize..300, rows in 0usize..9, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let stride = sq4_stride(dim);
            let raw: Vec<Vec<u8>> = (0..rows).map(|_| (0..dim).map(|_| rng.random_range(0u8..16)).collect()).collect();
            let mut packed = vec![0u8; rows * stride];
            for (r, c) in raw.iter().enumerate() {
                sq4_pack(c, &mut packed[r * stride..][..stride]);
                for (j, &v) in c.iter().enumerate() {
                    prop_assert_eq!(sq4_code(&packed[r * stride..][..stride], j), v);
                }
            }
            let mut q = vec![0i8; 2 * stride];
            for v in q.iter_mut().take(dim) {
                *v = rng.random();
            }
            for isa in Isa::available() {
                let mut out = vec![i32::MIN; rows];
                sq4_dots_with(isa, &q, &packed, stride, &mut out);
                for (r, c) in raw.iter().enumerate() {
                    let want: i32 = c.iter().zip(&q).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                    prop_assert_eq!(out[r], want, "{:?} row {}", isa, r);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn bf16_scores_stay_within_the_stated_bound(dim in 1usize..200, nq in 1usize..7, nr in 1usize..9, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let stride = bf16_stride(dim);
            let qs: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let rs: Vec<f32> = (0..nr * dim).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let pack = |m: &[f32], n: usize| {
                let mut out = vec![0u16; n * stride];
                for (src, dst) in m.chunks_exact(dim).zip(out.chunks_exact_mut(stride)) {
                    to_bf16(src, dst);
                }
                out
            };
            let (qb, rb) = (pack(&qs, nq), pack(&rs, nr));
            let bound = f64::from(bf16_error_bound(dim));
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; nq * nr];
                bf16_dots_many_with(isa, &qb, &rb, stride, &mut out);
                for q in 0..nq {
                    for r in 0..nr {
                        let (a, b) = (&qs[q * dim..][..dim], &rs[r * dim..][..dim]);
                        let norms = dot_ref(a, a).sqrt() * dot_ref(b, b).sqrt();
                        let err = (f64::from(out[q * nr + r]) - dot_ref(a, b)).abs();
                        prop_assert!(err <= bound * norms, "{:?}: error {} > bound {}", isa, err, bound * norms);
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        let mut out = [0u16; 4];
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
        to_bf16(&[1.0, 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.5], &mut out);
        let back: Vec<f32> = out.iter().map(|&b| bf16_to_f32(b)).collect();
        assert_eq!(back, vec![1.0, 1.0, 1.0 + 2f32.powi(-6), -2.5]);
    }

    #[test]
    fn extreme_codes_do_not_saturate() {
        // The AVX2 path must not use a saturating u8 x i8 instruction: 255 * -128 in every lane.
        let codes = vec![255u8; 384];
        let query = vec![-128i8; 384];
        for isa in Isa::available() {
            assert_eq!(sq8_dot_with(isa, &codes, &query), -255 * 128 * 384, "{isa:?}");
        }
    }

    #[test]
    fn batch_helpers_agree_with_single_kernels() {
        let q: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let rows: Vec<f32> = (0..37 * 5).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut out = [0.0; 5];
        dots(&q, &rows, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert!((o - dot(&q, &rows[i * 37..(i + 1) * 37])).abs() < 1e-5);
        }
        let codes: Vec<u8> = (0..3 * 70).map(|i| (i * 7 % 256) as u8).collect();
        let qi: Vec<i8> = (0..64).map(|i| (i * 5 % 255) as i8).collect();
        let mut o = [0i32; 3];
        sq8_dots(&qi, &codes, 70, &mut o);
        for (i, v) in o.iter().enumerate() {
            assert_eq!(*v, sq8_dot_with(Isa::Scalar, &codes[i * 70..i * 70 + 64], &qi));
        }
    }

    #[test]
    fn best_isa_is_available() {
        assert!(Isa::best().is_available());
        assert!(Isa::available().contains(&Isa::best()));
    }
}
