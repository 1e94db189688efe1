//! The portable kernel of [`super::rows_sum`] (the reference the others are tested against): lanes in
//! whole blocks of 8, which the compiler vectorises for the build target.

/// `out = s^T m` (see [`super::rows_sum`]); lengths checked by the caller.
#[inline(always)]
pub(super) fn rows_sum(m: &[f32], width: usize, s: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (&si, row) in s.iter().zip(m.chunks_exact(width)) {
        for (o, r) in out.chunks_exact_mut(super::LANES).zip(row.chunks_exact(super::LANES)) {
            o.iter_mut().zip(r).for_each(|(o, &v)| *o += si * v);
        }
    }
}
