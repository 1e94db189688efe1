//! Distance kernels with runtime SIMD dispatch: f32 dot product and squared L2, one query against many
//! rows, a register-blocked many-against-many kernel for exhaustive search, and the u8 x i8 products
//! that score SQ8 and SQ4 codes.
//!
//! One module per instruction set: `scalar` (auto-vectorisable `chunks_exact` loops, the reference),
//! `avx2` (AVX2 + FMA), `avx512` (F, BW and VNNI; BF16 where present) and `neon` (aarch64; the
//! dot-product extension `sdot` for the code kernels where present), behind the dispatch in this
//! file. [`Isa::best`] is chosen once: the detected best, or what `M2M_ISA` ([`ISA_ENV`]) forces. The
//! `*_with` functions take an explicit [`Isa`] so tests and benchmarks can compare every variant against
//! the scalar one and an f64 reference. Forcing an instruction set the CPU lacks is refused with a typed
//! error by [`Isa::parse`] / [`Isa::require`] (and by `Index::set_isa`); as a last guard, an [`Isa`] the
//! CPU lacks that reaches a `*_with` kernel runs the scalar code, so no input can reach an instruction the
//! machine does not have.

use std::sync::OnceLock;

/// An instruction set a kernel can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code; the compiler vectorises it for the build target.
    Scalar,
    /// AVX2 with FMA and F16C (x86-64 since Haswell / Zen; every such CPU has all three).
    Avx2,
    /// AVX-512 F + BW + VNNI (x86-64 since Ice Lake / Zen 4).
    Avx512,
    /// aarch64 NEON (every aarch64 CPU); the SQ8 and SQ4 code kernels use the dot-product extension
    /// (`sdot`) where the CPU has it and a NEON-only form where it does not.
    Neon,
}

/// The environment variable that forces an instruction set: `scalar`, `avx2`, `avx512` or `neon`.
pub const ISA_ENV: &str = "M2M_ISA";

impl Isa {
    /// The name used by [`ISA_ENV`] and [`Isa::parse`].
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses an instruction-set name (`scalar`, `avx2`, `avx512`, `neon`, any case) and checks that this CPU can
    /// run it: naming one it lacks is an error, never a silent fallback.
    pub fn parse(name: &str) -> crate::Result<Isa> {
        let isa = match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            "neon" => Isa::Neon,
            other => {
                return Err(crate::Error::UnknownIsa { name: other.to_string() });
            }
        };
        isa.require()
    }

    /// `Ok(self)` if this CPU can run it, otherwise [`crate::Error::IsaUnavailable`].
    pub fn require(self) -> crate::Result<Isa> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(crate::Error::IsaUnavailable { isa: self.name(), available: Isa::available_names() })
        }
    }

    fn available_names() -> String {
        Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    }

    /// Whether this CPU can run kernels of this instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            // The instruction sets of other architectures.
            _ => false,
        }
    }

    /// The fastest instruction set this CPU has, ignoring [`ISA_ENV`]; detected once.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Isa::Avx512, Isa::Avx2, Isa::Neon].into_iter().find(|isa| isa.is_available()).unwrap_or(Isa::Scalar)
        })
    }

    /// What [`ISA_ENV`] asks for, read once: `Ok(None)` when it is unset or empty, an error when it names an
    /// unknown instruction set or one this CPU lacks.
    pub fn forced() -> crate::Result<Option<Isa>> {
        match forced_env() {
            Ok(isa) => Ok(*isa),
            // The error is rebuilt from the stored name (errors are not Clone); this path is cold.
            Err(name) => Isa::parse(name).map(Some),
        }
    }

    /// The instruction set kernels run on by default, chosen once: the one [`ISA_ENV`] forces if it is
    /// valid, otherwise the [`detected`](Isa::detected) best. An invalid [`ISA_ENV`] is reported by
    /// [`Isa::forced`] (and refused by `Index::build` / `Index::from_parts`); here it can only fall back to
    /// the detected best, never reach an instruction the CPU lacks.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| match forced_env() {
            Ok(Some(isa)) => *isa,
            _ => Isa::detected(),
        })
    }

    /// Every instruction set this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|i| i.is_available()).collect()
    }

    /// `self` if the CPU has it, otherwise scalar. The `*_with` kernels go through this so that no input
    /// can reach an instruction the machine lacks; callers that must not fall back check with
    /// [`Isa::require`] first.
    fn checked(self) -> Isa {
        if self == Isa::Scalar || self.is_available() { self } else { Isa::Scalar }
    }
}

/// [`ISA_ENV`] parsed once: the instruction set, or the offending value.
fn forced_env() -> &'static Result<Option<Isa>, String> {
    static FORCED: OnceLock<Result<Option<Isa>, String>> = OnceLock::new();
    FORCED.get_or_init(|| match std::env::var(ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some).map_err(|_| v),
        _ => Ok(None),
    })
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub use fastscan::{
    FS_BLOCK, FS_FLUSH, pq4_block_bytes, pq4_codes_len, pq4_copy_row, pq4_get, pq4_lut_len, pq4_pairs, pq4_push,
    pq4_scan_with, pq4_truncate,
};

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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { avx2::dot_avx2(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { avx512::dot_avx512(a, b) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only because the CPU has NEON.
        Isa::Neon => unsafe { neon::dot_neon(a, b) },
        // Scalar, and the instruction sets of other architectures (which `checked` never returns).
        _ => scalar::dot(a, b),
    }
}

/// [`l2_sq`] on a chosen instruction set.
pub fn l2_sq_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { avx2::l2_sq_avx2(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { avx512::l2_sq_avx512(a, b) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only because the CPU has NEON.
        Isa::Neon => unsafe { neon::l2_sq_neon(a, b) },
        // Scalar, and the instruction sets of other architectures (which `checked` never returns).
        _ => scalar::l2_sq(a, b),
    }
}

/// `out[i] = dot(query, rows[i*dim..(i+1)*dim])` for `dim = query.len()`; rows beyond `out.len()` are
/// ignored, and missing rows leave their `out` entries untouched. The AVX-512 version scores four rows per
/// step with one combined reduction, the AVX2 and NEON ones eight.
pub fn dots_with(isa: Isa, query: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = query.len();
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { avx512::dots_avx512(query, rows, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let n = out.len().min(rows.len() / dim);
            // SAFETY: `checked` returned Avx2 only on a CPU with AVX2 and FMA; `rows[..n * dim]` is whole
            // rows of `dim` and `out[..n]` holds one score per row.
            unsafe { avx2::dots_many_avx2(query, &rows[..n * dim], dim, &mut out[..n]) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            let n = out.len().min(rows.len() / dim);
            // SAFETY: `checked` returned Neon only on a CPU with NEON; `rows[..n * dim]` is whole rows of
            // `dim` and `out[..n]` holds one score per row.
            unsafe { neon::dots_many_neon(query, &rows[..n * dim], dim, &mut out[..n]) }
        }
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
/// `n_rows = rows.len() / dim`. The AVX-512 version computes 4 x 4 blocks in registers, the AVX2 one 2 x 4
/// and the NEON one 4 x 4 (of 4 lanes), loading each row chunk once for several queries: the inner loop
/// of exhaustive search and of k-means assignment.
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
        Isa::Avx512 => unsafe { avx512::dots_many_avx512(queries, rows, dim, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2 and FMA; lengths checked above.
        Isa::Avx2 => unsafe { avx2::dots_many_avx2(queries, rows, dim, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only on a CPU with NEON; lengths checked above.
        Isa::Neon => unsafe { neon::dots_many_neon(queries, rows, dim, out) },
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
/// Sums are exact in i32 for lengths up to 65,000 (255 * 128 * 65,000 < 2^31).
pub fn sq8_dot_with(isa: Isa, codes: &[u8], query: &[i8]) -> i32 {
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only because the CPU has AVX2.
        Isa::Avx2 => unsafe { avx2::sq8_dot_avx2(codes, query) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only because the CPU has AVX-512 F, BW and VNNI.
        Isa::Avx512 => unsafe { avx512::sq8_dot_avx512(codes, query) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only because the CPU has NEON, and `sdot` is used only where
        // `has_dotprod` detected it.
        Isa::Neon => unsafe { neon::sq8_dot(codes, query, neon::has_dotprod()) },
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
        Isa::Avx512 => unsafe { avx512::sq8_dots_avx512(query, codes, stride, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only on a CPU with NEON; `sdot` only where `has_dotprod`
        // detected it; `stride >= query.len()` checked above.
        Isa::Neon => unsafe { neon::sq8_dots(query, codes, stride, out, neon::has_dotprod()) },
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
        Isa::Avx512 => unsafe { avx512::dots_t16_avx512(query, block, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2 and FMA; length checked above.
        Isa::Avx2 => unsafe { avx2::dots_t16_avx2(query, block, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only on a CPU with NEON; length checked above.
        Isa::Neon => unsafe { neon::dots_t16_neon(query, block, out) },
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

/// [`dots_t16_with`] over a block of f16 values (IEEE binary16 bits, the layout of [`transpose_t16h`]):
/// `out[l] = sum_j query[j] * f16_to_f32(block[j * 16 + l])`, each half widened exactly and the sums
/// kept in f32. Half the bytes of the f32 block: m2m-index ranks its fine centroids with it. F16C
/// (`vcvtph2ps`) on AVX2 and AVX-512, a bit-move widening on NEON and in the scalar twin. A block of the
/// wrong length leaves `out` untouched.
pub fn dots_t16h_with(isa: Isa, query: &[f32], block: &[u16], out: &mut [f32; T16]) {
    if block.len() != T16 * query.len() {
        return;
    }
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F; length checked above.
        Isa::Avx512 => unsafe { avx512::dots_t16h_avx512(query, block, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2, FMA and F16C; length checked above.
        Isa::Avx2 => unsafe { avx2::dots_t16h_avx2(query, block, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only on a CPU with NEON; length checked above.
        Isa::Neon => unsafe { neon::dots_t16h_neon(query, block, out) },
        _ => scalar::dots_t16h(query, block, out),
    }
}

/// [`transpose_t16`] into f16: row values are multiplied by `scale` (a power of two, so exactly) and
/// rounded to the nearest f16 (ties to even). Choose `scale` with [`f16_scale`] so that nothing
/// overflows; the scores of [`dots_t16h_with`] are then `scale` times the dot products.
pub fn transpose_t16h(rows: &[f32], dim: usize, scale: f32) -> Vec<u16> {
    transpose_t16(rows, dim).iter().map(|&v| to_f16(v * scale)).collect()
}

/// The f16 (IEEE binary16) nearest to `v`, ties to even, as bits; beyond the f16 range, infinity.
#[inline]
pub fn to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// 2^112: an f16's exponent bias (15) is 112 below an f32's (127).
const F16_TO_F32_SCALE: f32 = f32::from_bits((127 + 112) << 23);

/// The f32 value of a finite f16 (bits), exactly; normal and subnormal halves alike. Infinities and NaNs
/// (exponent 31) come out as finite values of 2^16 and above: [`transpose_t16h`] with an [`f16_scale`]
/// never stores one.
///
/// Branch free, so the loops that call it vectorise: the sign-extended half shifted left by 13 lays its
/// exponent and mantissa under the f32 ones, and the multiplication by 2^112 moves the exponent bias from
/// 15 to 127 (a subnormal half becomes a subnormal f32 first, which the multiplication makes normal).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let bits = ((i32::from(h as i16) << 13) as u32) & 0x8FFF_E000;
    f32::from_bits(bits) * F16_TO_F32_SCALE
}

/// A power of two `s` such that `max_abs * s` lies in `[2^14, 2^15)`: every value of magnitude at most
/// `max_abs`, times `s`, is then a finite f16 well below the f16 maximum (65,504), and the values near
/// `max_abs` keep f16's full 11 bits. `None` when `max_abs` is not finite, is below 2^-86 (but not 0) or
/// above 2^114 (the scale or its inverse would leave the range where f32 products stay normal); `Some(1.0)`
/// for 0.
pub fn f16_scale(max_abs: f32) -> Option<f32> {
    if max_abs == 0.0 {
        return Some(1.0);
    }
    if !max_abs.is_finite() || max_abs < 0.0 {
        return None;
    }
    let exp = ((max_abs.to_bits() >> 23) & 0xFF) as i32 - 127; // floor(log2(max_abs)) for normal values
    let e = 14 - exp;
    if !(-100..=100).contains(&e) {
        return None;
    }
    Some(f32::from_bits(((e + 127) as u32) << 23))
}

/// Bound of the difference between an f16 score and the f32 one: for a query `q` (f32) and a row `c`
/// whose values, times an [`f16_scale`] `s` of its table, were rounded to f16 `h`,
/// `|dots_t16h(q, h) / s - dot_with(q, c)| <= f16_error_bound(dim) * |q| * C`, where `C` bounds `|c|` and
/// every row of the table.
///
/// The terms: rounding to f16 moves each value by at most 2^-11 of itself (11 bits of precision), so the
/// exact products move by at most `2^-11 sum |q_j c_j| <= 2^-11 |q| |c|` (Cauchy-Schwarz); halves below
/// the normal range (2^-14 scaled, i.e. under 2^-28 of the table's largest value) move by at most 2^-25
/// scaled, at most `2^-39 sqrt(dim) |q| C` in all; each of the two f32 sums (the f16 kernel's and the
/// reference's) is within `dim * 2^-24` of its exact value, relative to the sum of magnitudes. A 1% margin
/// covers the second-order terms.
pub fn f16_error_bound(dim: usize) -> f32 {
    let d = dim as f64;
    let rounding = 2f64.powi(-11);
    let subnormal = d.sqrt() * 2f64.powi(-39);
    let accumulation = 2.0 * d * 2f64.powi(-24) * (1.0 + rounding);
    (1.01 * (rounding + subnormal + accumulation)) as f32
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
        Isa::Avx512 => unsafe { avx512::sq4_dots_avx512(query, codes, stride, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2 and FMA; shapes checked above.
        Isa::Avx2 => unsafe { avx2::sq4_dots_avx2(query, codes, stride, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `checked` returned Neon only on a CPU with NEON; `sdot` only where `has_dotprod`
        // detected it; shapes checked above.
        Isa::Neon => unsafe { neon::sq4_dots(query, codes, stride, out, neon::has_dotprod()) },
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
        Isa::Avx512 if has_bf16_dot() => unsafe { avx512::bf16_dots_many_avx512(queries, rows, stride, out) },
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
        Isa::Avx512 => unsafe { avx512::weighted_sums_avx512(coef, rows, dim, out) },
        _ => scalar::weighted_sums(coef, rows, dim, out),
    }
}

/// [`weighted_sums_with`] on the best instruction set.
#[inline]
pub fn weighted_sums(coef: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    weighted_sums_with(Isa::best(), coef, rows, dim, out)
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod fastscan;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;

#[cfg(test)]
mod tests;
