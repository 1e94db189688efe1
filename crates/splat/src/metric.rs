//! The distance metric a collection is searched with, and how it relates to the stored splats.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How two vectors are compared.
///
/// Splats always store a unit direction `mu` plus the original length `norm` of the vector they were built
/// from, so every metric can be answered from the same columns:
///
/// * [`Metric::Cosine`] compares directions only: score = `mu_a · mu_b`, higher is better.
/// * [`Metric::InnerProduct`] compares the original vectors: score = `norm_b * (q · mu_b)`, higher is better.
/// * [`Metric::L2`] is the squared Euclidean distance between the original vectors, lower is better.
///
/// On unit-norm data (such as sentence embeddings) all three rank neighbours identically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// Cosine similarity: the geometry of the unit sphere. The default.
    #[default]
    Cosine,
    /// Inner product of the original vectors.
    InnerProduct,
    /// Squared Euclidean distance of the original vectors.
    L2,
}

impl Metric {
    /// The short name used on command lines and in files: `cosine`, `ip` or `l2`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::InnerProduct => "ip",
            Metric::L2 => "l2",
        }
    }

    /// Whether a larger score means a closer vector (true for similarities, false for distances).
    pub fn higher_is_closer(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" | "cos" => Ok(Metric::Cosine),
            "ip" | "inner_product" | "innerproduct" | "dot" => Ok(Metric::InnerProduct),
            "l2" | "euclidean" => Ok(Metric::L2),
            _ => Err(Error::UnknownMetric { name: s.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
        }
        assert_eq!(Metric::default(), Metric::Cosine);
    }

    #[test]
    fn unknown_name_is_rejected_with_the_name() {
        let err = "hamming".parse::<Metric>().unwrap_err();
        assert!(matches!(err, Error::UnknownMetric { ref name } if name == "hamming"));
    }
}
