//! Portable kernels: auto-vectorisable `chunks_exact` loops with independent accumulators. They are
//! the reference every SIMD variant is tested against, and the path on CPUs without a faster one.

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

/// [`dots_t16`] over a transposed block of f16 bits: each column of 16 is converted (exactly, by
/// [`super::f16_to_f32`]) and multiplied into the 16 sums.
pub(super) fn dots_t16h(query: &[f32], block: &[u16], out: &mut [f32; super::T16]) {
    let mut acc = [0.0f32; super::T16];
    // Whole columns as arrays: with the length known, the widening and the products vectorise.
    let (cols, _) = block.as_chunks::<{ super::T16 }>();
    for (&q, col) in query.iter().zip(cols) {
        let x = col.map(super::f16_to_f32);
        for (a, v) in acc.iter_mut().zip(x) {
            *a += q * v;
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
