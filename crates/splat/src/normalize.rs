//! Projection of raw vectors onto the unit sphere, with the checks that make it safe.
//!
//! The fast path sums squares in f32 with independent lane accumulators, which the compiler turns into
//! SIMD. Two cases fall back to a scaled f64 sum: a sum that overflowed (finite values around 1e19 and
//! above) and one that underflowed to zero (values around 1e-23 and below). Only a vector whose f64 sum is
//! zero is rejected as having no direction.

use crate::{Error, Result};

const LANES: usize = 16;

/// Sum of squares in f32, vectorisable: `LANES` independent accumulators over exact chunks.
fn sum_squares_f32(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for x in tail {
        s += x * x;
    }
    s
}

/// Norm in f64 with scaling by the largest magnitude, so neither huge nor tiny finite values lose it.
fn norm_f64(v: &[f32]) -> f64 {
    let max = v.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    if max == 0.0 {
        return 0.0;
    }
    let s: f64 = v.iter().map(|&x| (f64::from(x) / max).powi(2)).sum();
    max * s.sqrt()
}

/// The norm of `src` (as f64), with its checks: [`Error::NonFinite`] for a NaN or infinite component
/// (the first one, with its column), [`Error::ZeroNorm`] when the vector is all zeros. `row` only labels
/// errors.
fn checked_norm(src: &[f32], row: usize) -> Result<f64> {
    let sum = sum_squares_f32(src);
    let norm: f64 = if sum.is_finite() && sum >= f32::MIN_POSITIVE {
        f64::from(sum).sqrt()
    } else {
        // Either a non-finite component, an overflow of finite values, or an underflow: find out which.
        if let Some((column, &value)) = src.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::NonFinite { row, column, value });
        }
        norm_f64(src)
    };
    if norm == 0.0 {
        return Err(Error::ZeroNorm { row });
    }
    Ok(norm)
}

/// `norm` as the f32 that callers keep (saturating to `f32::MAX`).
fn stored_norm(norm: f64) -> f32 {
    norm.min(f64::from(f32::MAX)) as f32
}

/// Writes `src / |src|` into `dst` and returns `|src|` (as f32, saturating to `f32::MAX`).
///
/// `row` only labels errors: [`Error::NonFinite`] for a NaN or infinite component (the first one, with its
/// column), [`Error::ZeroNorm`] when the vector is all zeros. On error `dst` may hold partial output.
/// `src` and `dst` must have the same length; a different length is reported as
/// [`Error::DimensionMismatch`].
pub fn normalize_into(src: &[f32], dst: &mut [f32], row: usize) -> Result<f32> {
    if src.len() != dst.len() {
        return Err(Error::DimensionMismatch { expected: dst.len(), got: src.len() });
    }
    let norm = checked_norm(src, row)?;
    let inv = 1.0 / norm;
    if inv.is_finite() && inv < f64::from(f32::MAX) {
        let inv = inv as f32;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s * inv;
        }
    } else {
        // The norm is so small that its inverse does not fit in f32: divide in f64.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = (f64::from(*s) * inv) as f32;
        }
    }
    Ok(stored_norm(norm))
}

/// Appends `src / |src|` to `out` and returns `|src|`, as [`normalize_into`] computes them (the same
/// values, bit for bit), without zero-filling `out` first: the ingest path's one write of each row. On
/// error `out` is unchanged. `row` only labels errors.
pub fn normalize_extend(src: &[f32], out: &mut Vec<f32>, row: usize) -> Result<f32> {
    let norm = checked_norm(src, row)?;
    let inv = 1.0 / norm;
    if inv.is_finite() && inv < f64::from(f32::MAX) {
        let inv = inv as f32;
        out.extend(src.iter().map(|s| s * inv));
    } else {
        out.extend(src.iter().map(|s| (f64::from(*s) * inv) as f32));
    }
    Ok(stored_norm(norm))
}

/// Returns a unit-norm copy of `v` and its original norm.
///
/// ```
/// let (unit, norm) = m2m_splat::normalize(&[3.0, 4.0]).unwrap();
/// assert_eq!(norm, 5.0);
/// assert!((unit[0] - 0.6).abs() < 1e-7 && (unit[1] - 0.8).abs() < 1e-7);
/// ```
pub fn normalize(v: &[f32]) -> Result<(Vec<f32>, f32)> {
    let mut out = vec![0.0; v.len()];
    let norm = normalize_into(v, &mut out, 0)?;
    Ok((out, norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm_ref(v: &[f32]) -> f64 {
        v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
    }

    proptest! {
        #[test]
        fn unit_norm_and_same_direction(v in proptest::collection::vec(-1e3f32..1e3, 1..300)) {
            prop_assume!(v.iter().any(|&x| x != 0.0));
            let (u, norm) = normalize(&v).unwrap();
            let r = norm_ref(&v);
            prop_assert!((f64::from(norm) - r).abs() <= 1e-5 * r);
            prop_assert!((norm_ref(&u) - 1.0).abs() < 1e-5);
            // Cosine between input and output, in f64: the direction is kept.
            let dot: f64 = v.iter().zip(&u).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            prop_assert!((dot / r - 1.0).abs() < 1e-5);
        }

        #[test]
        fn extreme_scales_still_normalise(
            v in proptest::collection::vec(-1.0f32..1.0, 1..64),
            exp in prop_oneof![Just(-40i32), Just(-30), Just(20), Just(30), Just(38)],
        ) {
            prop_assume!(v.iter().any(|&x| x.abs() > 1e-3));
            let scale = 10f64.powi(exp);
            let scaled: Vec<f32> = v.iter().map(|&x| (f64::from(x) * scale) as f32).collect();
            prop_assume!(scaled.iter().all(|x| x.is_finite()) && scaled.iter().any(|&x| x != 0.0));
            let (u, _) = normalize(&scaled).unwrap();
            prop_assert!((norm_ref(&u) - 1.0).abs() < 1e-4, "norm {}", norm_ref(&u));
        }

        #[test]
        fn first_non_finite_is_reported(
            v in proptest::collection::vec(-10.0f32..10.0, 2..100),
            at in any::<prop::sample::Index>(),
            bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
        ) {
            let mut v = v;
            let col = at.index(v.len());
            v[col] = bad;
            let mut out = vec![0.0; v.len()];
            match normalize_into(&v, &mut out, 7) {
                Err(Error::NonFinite { row: 7, column, .. }) => prop_assert_eq!(column, col),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    proptest! {
        /// `normalize_extend` against `normalize_into`, including the f64 paths (huge and tiny values),
        /// and a bad row leaving `out` as it was. Mutations caught: a different rounding (a division
        /// instead of the multiply by the f32 inverse), a partial row left behind on error, the norm not
        /// saturated like `normalize_into`'s.
        #[test]
        fn extend_writes_what_into_writes_and_nothing_on_error(
            v in proptest::collection::vec(-1.0f32..1.0, 1..200),
            exp in prop_oneof![Just(0i32), Just(-40), Just(30), Just(38)],
            bad in proptest::option::of((any::<prop::sample::Index>(), prop_oneof![Just(f32::NAN), Just(f32::INFINITY)])),
        ) {
            let scale = 10f64.powi(exp);
            let mut v: Vec<f32> = v.iter().map(|&x| (f64::from(x) * scale) as f32).collect();
            if let Some((at, x)) = bad {
                let i = at.index(v.len());
                v[i] = x;
            }
            let mut out = vec![7.0f32; 3];
            let mut into = vec![0.0f32; v.len()];
            match (normalize_into(&v, &mut into, 2), normalize_extend(&v, &mut out, 2)) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.to_bits(), b.to_bits());
                    prop_assert_eq!(&out[..3], &[7.0, 7.0, 7.0]);
                    let same = out[3..].iter().zip(&into).all(|(x, y)| x.to_bits() == y.to_bits());
                    prop_assert!(same && out.len() == 3 + v.len());
                }
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string());
                    prop_assert_eq!(out, vec![7.0f32; 3]);
                }
                (a, b) => prop_assert!(false, "into {:?}, extend {:?}", a, b),
            }
        }
    }

    #[test]
    fn zero_vector_is_rejected() {
        let mut out = [0.0; 3];
        assert!(matches!(normalize_into(&[0.0, -0.0, 0.0], &mut out, 4), Err(Error::ZeroNorm { row: 4 })));
    }

    #[test]
    fn smallest_subnormal_is_a_direction() {
        let (u, _) = normalize(&[f32::from_bits(1), 0.0]).unwrap();
        assert_eq!(u, vec![1.0, 0.0]);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut out = [0.0; 2];
        assert!(matches!(
            normalize_into(&[1.0, 2.0, 3.0], &mut out, 0),
            Err(Error::DimensionMismatch { expected: 2, got: 3 })
        ));
    }
}
