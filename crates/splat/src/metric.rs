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
///
/// In human-readable formats (JSON, TOML) it deserialises from any name [`FromStr`] accepts, in any
/// case (`"cosine"`, `"Cosine"`, `"IP"`, `"l2"`); it serialises as the variant name (`"Cosine"`), which
/// every older reader accepts. Binary formats (postcard) keep the variant index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
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

/// The derived binary representation of [`Metric`] (variant index), kept for stored indexes.
#[derive(Deserialize)]
enum MetricRepr {
    Cosine,
    InnerProduct,
    L2,
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let name = String::deserialize(d)?;
            name.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown metric {name:?}: cosine, ip (inner product) or l2, in any case"
                ))
            })
        } else {
            Ok(match MetricRepr::deserialize(d)? {
                MetricRepr::Cosine => Metric::Cosine,
                MetricRepr::InnerProduct => Metric::InnerProduct,
                MetricRepr::L2 => Metric::L2,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_case_insensitive_and_binary_keeps_the_index() {
        for (json, m) in [
            ("\"cosine\"", Metric::Cosine),
            ("\"Cosine\"", Metric::Cosine),
            ("\"IP\"", Metric::InnerProduct),
            ("\"InnerProduct\"", Metric::InnerProduct),
            ("\"l2\"", Metric::L2),
        ] {
            assert_eq!(serde_json::from_str::<Metric>(json).unwrap(), m, "{json}");
        }
        assert!(serde_json::from_str::<Metric>("\"hamming\"").unwrap_err().to_string().contains("hamming"));
        for m in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m);
            let bytes = postcard::to_allocvec(&m).unwrap();
            assert_eq!(postcard::from_bytes::<Metric>(&bytes).unwrap(), m);
        }
        // The binary form is the variant index, as the derived impl wrote it.
        assert_eq!(postcard::to_allocvec(&Metric::L2).unwrap(), vec![2]);
    }

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
