//! The fast-scan layout of 4-bit product-quantisation codes (PQ4) and the look-up kernel that scores it:
//! one 16-entry u8 table per sub-space, looked up 32 rows at a time with an in-register byte shuffle
//! (`vpshufb` on AVX2 and AVX-512, the scalar twin elsewhere). The integer sums are exact on every
//! instruction set, so every variant returns the same integers as the scalar one.
//!
//! Layout. Rows are grouped in blocks of [`FS_BLOCK`] = 32; a row's `m` sub-codes are padded with one
//! code 0 to an even count (`pairs = ceil(m / 2)`). A block is `pairs * 32` bytes: for each pair `p`,
//! 16 bytes of sub-space `2p` then 16 bytes of sub-space `2p + 1`; byte `j` (0..16) of a sub-space holds
//! row `j`'s code in its low nibble and row `16 + j`'s in its high nibble. So one 32-byte load brings two
//! sub-spaces of 32 rows, and one shuffle per nibble half scores them against the two sub-spaces' tables
//! (the 128-bit lanes of `vpshufb` are the two sub-spaces). A cluster of `n` rows takes
//! `ceil(n / 32) * pairs * 32` bytes; rows past `n` in the last block are code 0.
//!
//! Look-up table. `pairs * 32` bytes: entry `s * 16 + c` is the u8 score of code `c` in sub-space `s`
//! (the padding sub-space's entries are whatever the caller put there, normally 0).
//!
//! Overflow. The SIMD kernels add the looked-up bytes into u16 lanes as whole 16-bit words: the low
//! word sums a row's byte plus 256 times its neighbour's, a second accumulator sums the neighbour alone,
//! and the row's sum is recovered as `low - (neighbour << 8)` modulo 2^16. That is exact while a lane's
//! sum stays below 2^16, so at most [`FS_FLUSH`] steps (255 x 256 = 65,280) are summed before the u16
//! lanes are added into u32 totals.

use super::Isa;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// Rows per fast-scan block.
pub const FS_BLOCK: usize = 32;

/// Look-up steps each u16 lane may sum before it is flushed into u32 totals (255 x 256 < 2^16).
pub const FS_FLUSH: usize = 256;

/// Sub-space pairs of `m` sub-spaces (the odd one is padded with a zero sub-space).
pub fn pq4_pairs(m: usize) -> usize {
    m.div_ceil(2)
}

/// Bytes of one block of 32 rows with `m` sub-codes each.
pub fn pq4_block_bytes(m: usize) -> usize {
    pq4_pairs(m) * FS_BLOCK
}

/// Bytes of `rows` rows with `m` sub-codes each, in whole blocks.
pub fn pq4_codes_len(rows: usize, m: usize) -> usize {
    rows.div_ceil(FS_BLOCK) * pq4_block_bytes(m)
}

/// Bytes of the look-up table of `m` sub-spaces.
pub fn pq4_lut_len(m: usize) -> usize {
    pq4_pairs(m) * 32
}

/// Byte offset and nibble shift of sub-code `s` of `row`.
fn locate(m: usize, row: usize, s: usize) -> (usize, u32) {
    let (block, r) = (row / FS_BLOCK, row % FS_BLOCK);
    let byte = block * pq4_block_bytes(m) + (s / 2) * 32 + (s % 2) * 16 + r % 16;
    (byte, 4 * (r / 16) as u32)
}

/// Sub-code `s` of `row` in fast-scan codes of `m` sub-spaces. The caller keeps `row` and `s` in range.
pub fn pq4_get(codes: &[u8], m: usize, row: usize, s: usize) -> u8 {
    let (byte, shift) = locate(m, row, s);
    (codes[byte] >> shift) & 0x0F
}

fn pq4_set(codes: &mut [u8], m: usize, row: usize, s: usize, c: u8) {
    let (byte, shift) = locate(m, row, s);
    codes[byte] = (codes[byte] & !(0x0F << shift)) | ((c & 0x0F) << shift);
}

/// Appends one row's sub-codes (`row.len() == m`, each at most 15) to fast-scan codes holding `len` rows,
/// adding a zeroed block when the last one is full.
pub fn pq4_push(codes: &mut Vec<u8>, m: usize, len: usize, row: &[u8]) {
    if len.is_multiple_of(FS_BLOCK) {
        codes.resize(pq4_codes_len(len + 1, m), 0);
    }
    for (s, &c) in row.iter().enumerate().take(m) {
        pq4_set(codes, m, len, s, c);
    }
}

/// Copies row `from`'s sub-codes over row `to`'s.
pub fn pq4_copy_row(codes: &mut [u8], m: usize, from: usize, to: usize) {
    for s in 0..m {
        let c = pq4_get(codes, m, from, s);
        pq4_set(codes, m, to, s, c);
    }
}

/// Shortens fast-scan codes of `len + 1` or more rows to `len` rows: whole blocks past them are dropped and
/// the rows past `len` in the last block are set to code 0 (so the layout stays the function of its rows).
pub fn pq4_truncate(codes: &mut Vec<u8>, m: usize, len: usize) {
    codes.truncate(pq4_codes_len(len, m));
    let end = len.div_ceil(FS_BLOCK) * FS_BLOCK;
    for row in len..end {
        for s in 0..m {
            pq4_set(codes, m, row, s, 0);
        }
    }
}

/// `out[i] = sum_s lut[s * 16 + code_is]` for the first `out.len()` rows of fast-scan codes of `m`
/// sub-spaces (the padding sub-space included). Shapes that do not fit (`lut.len() != pq4_lut_len(m)`,
/// or fewer code bytes than `pq4_codes_len(out.len(), m)`) leave `out` untouched.
pub fn pq4_scan_with(isa: Isa, lut: &[u8], codes: &[u8], m: usize, out: &mut [i32]) {
    if m == 0 || lut.len() != pq4_lut_len(m) || codes.len() < pq4_codes_len(out.len(), m) {
        return;
    }
    let pairs = pq4_pairs(m);
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx512 only on a CPU with AVX-512 F and BW (and AVX2); shapes checked
        // above.
        Isa::Avx512 => unsafe { avx512::pq4_scan_avx512(lut, codes, pairs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `checked` returned Avx2 only on a CPU with AVX2; shapes checked above.
        Isa::Avx2 => unsafe { avx2::pq4_scan_avx2(lut, codes, pairs, out) },
        _ => pq4_scan_scalar(lut, codes, pairs, out),
    }
}

/// The scalar twin (and reference) of the fast-scan kernel.
pub(super) fn pq4_scan_scalar(lut: &[u8], codes: &[u8], pairs: usize, out: &mut [i32]) {
    let bb = pairs * FS_BLOCK;
    for (chunk, block) in out.chunks_mut(FS_BLOCK).zip(codes.chunks_exact(bb)) {
        let mut acc = [0i32; FS_BLOCK];
        for (t, bytes) in lut.chunks_exact(16).zip(block.chunks_exact(16)) {
            for (j, &b) in bytes.iter().enumerate() {
                acc[j] += i32::from(t[usize::from(b & 0x0F)]);
                acc[16 + j] += i32::from(t[usize::from(b >> 4)]);
            }
        }
        chunk.copy_from_slice(&acc[..chunk.len()]);
    }
}
