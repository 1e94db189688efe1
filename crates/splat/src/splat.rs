//! A single Gaussian splat on the unit sphere, owned or borrowed from a [`SplatSet`](crate::SplatSet).

use crate::{Error, Result, normalize_into};

/// The id of a splat, unique within a set.
pub type SplatId = u64;

/// Concentration given to splats built from raw vectors when none is specified (the original project's).
pub const DEFAULT_KAPPA: f32 = 10.0;
/// Weight given to splats built from raw vectors when none is specified (the original project's).
pub const DEFAULT_ALPHA: f32 = 1.0;

/// Checks a concentration: finite and strictly positive.
pub(crate) fn check_kappa(row: usize, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 { Ok(()) } else { Err(Error::InvalidKappa { row, value }) }
}

/// Checks a weight: finite and strictly positive.
pub(crate) fn check_alpha(row: usize, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 { Ok(()) } else { Err(Error::InvalidAlpha { row, value }) }
}

/// A Gaussian splat: a mean direction `mu` on the unit sphere, a concentration `kappa > 0` and a weight
/// `alpha > 0`, plus the length `norm` of the raw vector it was built from (see [`Metric`](crate::Metric)).
///
/// An owned `Splat` is always valid: the only way to build one is [`Splat::new`], which validates and
/// normalises.
#[derive(Clone, Debug, PartialEq)]
pub struct Splat {
    id: SplatId,
    mu: Vec<f32>,
    kappa: f32,
    alpha: f32,
    norm: f32,
}

impl Splat {
    /// Builds a splat from a raw vector, normalising it onto the unit sphere.
    ///
    /// Errors: [`Error::ZeroDimension`] for an empty vector, [`Error::NonFinite`], [`Error::ZeroNorm`],
    /// [`Error::InvalidKappa`], [`Error::InvalidAlpha`] (all with row 0).
    pub fn new(id: SplatId, vector: &[f32], kappa: f32, alpha: f32) -> Result<Self> {
        if vector.is_empty() {
            return Err(Error::ZeroDimension);
        }
        check_kappa(0, kappa)?;
        check_alpha(0, alpha)?;
        let mut mu = vec![0.0; vector.len()];
        let norm = normalize_into(vector, &mut mu, 0)?;
        Ok(Splat { id, mu, kappa, alpha, norm })
    }

    /// Borrowed view of this splat.
    pub fn as_ref(&self) -> SplatRef<'_> {
        SplatRef { id: self.id, mu: &self.mu, kappa: self.kappa, alpha: self.alpha, norm: self.norm }
    }

    /// The id.
    pub fn id(&self) -> SplatId {
        self.id
    }

    /// The unit mean direction.
    pub fn mu(&self) -> &[f32] {
        &self.mu
    }

    /// The concentration.
    pub fn kappa(&self) -> f32 {
        self.kappa
    }

    /// The weight.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// Length of the raw vector the splat was built from.
    pub fn norm(&self) -> f32 {
        self.norm
    }

    /// Dimension of `mu`.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }
}

/// A borrowed view of one splat: a row of a [`SplatSet`](crate::SplatSet) or an owned [`Splat`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplatRef<'a> {
    /// The id.
    pub id: SplatId,
    /// The unit mean direction.
    pub mu: &'a [f32],
    /// The concentration (> 0).
    pub kappa: f32,
    /// The weight (> 0).
    pub alpha: f32,
    /// Length of the raw vector the splat was built from.
    pub norm: f32,
}

impl SplatRef<'_> {
    /// Copies the view into an owned splat.
    pub fn to_splat(&self) -> Splat {
        Splat { id: self.id, mu: self.mu.to_vec(), kappa: self.kappa, alpha: self.alpha, norm: self.norm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_normalises_and_keeps_parameters() {
        let s = Splat::new(9, &[0.0, 2.0, 0.0], 3.5, 0.25).unwrap();
        assert_eq!(s.mu(), &[0.0, 1.0, 0.0]);
        assert_eq!((s.id(), s.kappa(), s.alpha(), s.norm(), s.dim()), (9, 3.5, 0.25, 2.0, 3));
        assert_eq!(s.as_ref().to_splat(), s);
    }

    #[test]
    fn new_rejects_bad_parameters() {
        assert!(matches!(Splat::new(0, &[], 1.0, 1.0), Err(Error::ZeroDimension)));
        assert!(matches!(Splat::new(0, &[1.0], 0.0, 1.0), Err(Error::InvalidKappa { row: 0, .. })));
        assert!(matches!(Splat::new(0, &[1.0], 1.0, f32::NAN), Err(Error::InvalidAlpha { row: 0, .. })));
        assert!(matches!(Splat::new(0, &[0.0], 1.0, 1.0), Err(Error::ZeroNorm { row: 0 })));
    }
}
