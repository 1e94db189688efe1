//! The one error type of m2m-soc.

/// What can be wrong with the inputs of the energy, the estimators, the controller or the sampler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vector or column whose length does not fit the dimension or the other columns.
    #[error("{what}: length {got}, expected {expected}")]
    Length {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length it needs.
        expected: usize,
    },
    /// An input with nothing in it (no splats, no weights, no sites).
    #[error("{what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// A value out of its domain: a kappa or alpha that is not finite and positive, a NaN coordinate, a
    /// negative weight, a step size of 0.
    #[error("{what} = {value} at index {index}: {reason}")]
    Invalid {
        /// Which input or setting.
        what: &'static str,
        /// Index of the value (0 for a setting).
        index: usize,
        /// The value.
        value: f64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An error of the index used for routing or neighbours.
    #[error(transparent)]
    Index(#[from] m2m_index::Error),
}

/// Result alias for m2m-soc.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected { Ok(()) } else { Err(Error::Length { what, got, expected }) }
}

/// Refuses the first value of `values` that is not finite, or (with `positive`) not > 0.
pub(crate) fn check_values(what: &'static str, values: &[f32], positive: bool) -> Result<()> {
    // A branch-free pass over blocks of 64 (it vectorises) finds whether any value is bad; only then is
    // its index looked for.
    let bad = |v: f32| !v.is_finite() || (positive && v <= 0.0);
    if !values.chunks(64).any(|c| c.iter().fold(false, |acc, &v| acc | bad(v))) {
        return Ok(());
    }
    match values.iter().position(|&v| bad(v)) {
        None => Ok(()),
        Some(index) => Err(Error::Invalid {
            what,
            index,
            value: f64::from(values[index]),
            reason: if positive { "must be finite and > 0" } else { "must be finite" },
        }),
    }
}

/// Refuses a setting outside `[lo, hi]` (or not finite).
pub(crate) fn check_setting(what: &'static str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(Error::Invalid { what, index: 0, value, reason: "out of range" })
    }
}
