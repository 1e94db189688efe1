//! Concentrations from data, instead of the original project's constant 10.
//!
//! For each splat we take its `k` nearest neighbours (from the index) and the mean resultant length r of
//! the unit vectors of the splat and its neighbours, |sum mu| / (k + 1). For a von Mises-Fisher sample on
//! S^(p-1), Banerjee et al. (2005) estimate the concentration as r (p - r^2) / (1 - r^2).
//!
//! Which p? Embeddings fill a thin manifold of the ambient sphere: with p = 384 a neighbourhood whose
//! members have cosine 0.8 gets kappa ~ 800, every splat would sit at the clip, and kappa would say
//! nothing. We use the data's intrinsic dimension instead (the TwoNN estimate of Facco et al. (2017) from
//! the two nearest neighbour distances, D = N / sum ln(r2 / r1)) and p = D + 1, as if each neighbourhood
//! were a vMF on a sphere of the manifold's dimension. The ambient dimension, or a fixed one, can be
//! asked for instead ([`KappaDimension`]).
//!
//! The energy's kernel alpha exp(-kappa |x - mu|^2) is a vMF of concentration 2 kappa, so the fitted vMF
//! concentration is halved before it is clipped to [min_kappa, max_kappa x (p - 1)] (defaults 1 and 50,
//! the original project's range; the upper bound as on the circle p = 2). Why the upper bound scales:
//! at a fixed spread of the neighbourhood, 1 - r ~ (p - 1) / (4 kappa), kappa grows with p, so a fixed
//! bound means a different spread for every dimension. A constant clip at 50 cut every kappa of the
//! 10,000 digits (p ~ 60, fitted kappa 240 to 1,900) and made each kernel some 16 times broader than
//! its neighbourhood; scaled, it bounds the spread itself, 1 - r >= ~1 / (4 max_kappa) (r <= ~0.995),
//! beyond which the neighbourhood is near-duplicates. The lower bound stays absolute: scaled, it would
//! say r >= ~0.75, and clipped 93% of minilm70k's sentence embeddings, whose neighbourhoods are that
//! wide (measured: p ~ 11.5).
//!
//! Alpha from local mass: each splat's in-degree in the neighbour graph (how many splats count it among
//! their nearest), plus one, over the mean, clipped to [0.1, 10]. Splats that stand for a dense region
//! weigh more, outliers that no one counts weigh less, so the energy is not pocked by isolated points.
//! Usage is the controller's business ([`crate::soc`]): it steers sampling without rewriting the model.

use m2m_index::{Index, Lod, SearchParams};
use std::collections::HashMap;

use crate::error::{check_len, check_setting};
use crate::{Error, Result};

/// Which sphere dimension the vMF estimate assumes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum KappaDimension {
    /// The data's intrinsic dimension (TwoNN) + 1. The default.
    #[default]
    Intrinsic,
    /// The ambient dimension of the vectors.
    Ambient,
    /// This dimension (>= 2).
    Fixed(f64),
}

/// Settings of [`estimate_kappa`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KappaConfig {
    /// Neighbours per splat (default 16).
    pub neighbours: usize,
    /// Smallest kappa (default 1). Not scaled with the sphere's dimension: a neighbourhood spread
    /// wide for its dimension (sentence embeddings, r ~ 0.75 at p ~ 12) is a real fit, not a
    /// degenerate one, and a scaled bound clipped 93% of minilm70k's splats.
    pub min_kappa: f32,
    /// Largest kappa per dimension of the fit's sphere (default 50): kappa is clipped above at
    /// `max_kappa` x (p - 1).
    pub max_kappa: f32,
    /// The sphere dimension of the vMF estimate.
    pub dimension: KappaDimension,
}

impl Default for KappaConfig {
    fn default() -> Self {
        KappaConfig { neighbours: 16, min_kappa: 1.0, max_kappa: 50.0, dimension: KappaDimension::Intrinsic }
    }
}

impl KappaConfig {
    /// Refuses 0 neighbours, a range that is not 0 < min <= max, or a fixed dimension below 2.
    pub fn validate(&self) -> Result<()> {
        check_setting("neighbours", self.neighbours as f64, 1.0, 10_000.0)?;
        check_setting("min_kappa", f64::from(self.min_kappa), f64::MIN_POSITIVE, f64::from(self.max_kappa))?;
        check_setting("max_kappa", f64::from(self.max_kappa), f64::from(self.min_kappa), 1e9)?;
        if let KappaDimension::Fixed(p) = self.dimension {
            check_setting("dimension", p, 2.0, 1e9)?;
        }
        Ok(())
    }
}

/// The outcome of [`estimate_kappa`].
#[derive(Clone, Debug, PartialEq)]
pub struct KappaEstimate {
    /// One kappa per row, clipped to [min_kappa, max_kappa x (p - 1)].
    pub kappa: Vec<f32>,
    /// The sphere dimension p used.
    pub sphere_dimension: f64,
    /// Rows clipped at `min_kappa`.
    pub clipped_low: usize,
    /// Rows clipped at `max_kappa` x (p - 1).
    pub clipped_high: usize,
    /// One alpha per row from local mass: (1 + the number of rows that count this one among their
    /// neighbours), divided by the mean, clipped to [0.1, 10].
    pub alpha: Vec<f32>,
}

/// The temperature factor that makes Langevin in `dim` ambient dimensions agree with kappa fitted on
/// S^(p-1), p = `sphere_dimension`: (p - 1) / (dim - 1), at most 1.
///
/// Why: at high concentration a vMF of concentration K on S^(q-1) has 1 - r ~ (q - 1) / (2 K). The fit
/// chose kappa so that a kernel of concentration 2 kappa on S^(p-1) has the neighbourhood's mean
/// resultant r, but exp(-E / T) lives in all `dim` dimensions, where concentration 2 kappa / T has
/// 1 - r ~ T (dim - 1) / (4 kappa). Equal spreads need T = (p - 1) / (dim - 1). Without it (T = 1,
/// p ~ 12, dim = 640) every kernel is about 50 times too broad and chains wander across the sphere.
pub fn ambient_temperature(sphere_dimension: f64, dim: usize) -> f64 {
    if dim < 2 || !sphere_dimension.is_finite() {
        return 1.0;
    }
    ((sphere_dimension - 1.0) / (dim as f64 - 1.0)).clamp(1e-6, 1.0)
}

/// Banerjee's vMF concentration estimate from a mean resultant length `r` on S^(p-1).
pub fn vmf_kappa(r: f64, p: f64) -> f64 {
    let r = r.clamp(0.0, 1.0 - 1e-12);
    r * (p - r * r) / (1.0 - r * r)
}

/// The mean resultant length of a vMF of concentration `kappa` on S^(p-1): A_p(kappa) =
/// I_{p/2}(kappa) / I_{p/2-1}(kappa), by its continued fraction (modified Lentz), accurate to 1e-12.
pub fn vmf_mean_resultant(p: f64, kappa: f64) -> f64 {
    if kappa <= 0.0 {
        return 0.0;
    }
    // I_{nu+1}/I_nu = 1 / (b_1 + 1 / (b_2 + ...)) with b_m = 2 (nu + m) / kappa and nu = p/2 - 1: Lentz's
    // method for f = b_0 + 1 / (b_1 + 1 / (b_2 + ...)) with b_0 = 0, so f is the ratio itself.
    let nu = p / 2.0 - 1.0;
    let tiny = 1e-300;
    let (mut f, mut c, mut d) = (tiny, tiny, 0.0f64);
    for m in 1..100_000 {
        let b = 2.0 * (nu + m as f64) / kappa;
        d += b;
        d = if d.abs() < tiny { tiny } else { 1.0 / d };
        c = b + 1.0 / c;
        c = if c.abs() < tiny { tiny } else { c };
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    f
}

/// TwoNN intrinsic dimension from each point's first and second nearest-neighbour distances (pairs with
/// r1 = 0 or r2 <= r1, duplicates, are skipped): the maximum-likelihood N / sum ln(r2 / r1).
pub fn intrinsic_dimension(r1: &[f64], r2: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = r1.iter().zip(r2).filter(|(a, b)| **a > 0.0 && **b > **a).map(|(a, b)| (b / a).ln()).collect();
    let s: f64 = logs.iter().sum();
    (logs.len() >= 2 && s > 0.0).then(|| logs.len() as f64 / s)
}

/// Kappa per row of `mu` (unit rows, `dim` wide) from `neighbours`: `k` row indices per row (itself
/// excluded), nearest first.
pub fn kappa_from_neighbours(
    mu: &[f32],
    dim: usize,
    neighbours: &[u32],
    k: usize,
    config: &KappaConfig,
) -> Result<KappaEstimate> {
    config.validate()?;
    if dim == 0 || mu.is_empty() {
        return Err(Error::Empty { what: "mu" });
    }
    let n = mu.len() / dim;
    check_len("mu", mu.len(), n * dim)?;
    check_len("neighbours", neighbours.len(), n * k)?;
    if k == 0 {
        return Err(Error::Empty { what: "neighbours" });
    }
    if let Some(index) = neighbours.iter().position(|&j| j as usize >= n) {
        return Err(Error::Invalid {
            what: "neighbour",
            index,
            value: f64::from(neighbours[index]),
            reason: "not a row",
        });
    }
    let row = |i: usize| &mu[i * dim..(i + 1) * dim];
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    let chord = |c: f64| (2.0 - 2.0 * c).max(0.0).sqrt();
    let p = match config.dimension {
        KappaDimension::Ambient => dim as f64,
        KappaDimension::Fixed(p) => p,
        KappaDimension::Intrinsic => {
            if k < 2 {
                return Err(Error::Invalid { what: "neighbours", index: 0, value: k as f64, reason: "TwoNN needs 2" });
            }
            let (r1, r2): (Vec<f64>, Vec<f64>) = (0..n)
                .map(|i| {
                    let nb = &neighbours[i * k..i * k + 2];
                    (chord(dot(row(i), row(nb[0] as usize))), chord(dot(row(i), row(nb[1] as usize))))
                })
                .unzip();
            intrinsic_dimension(&r1, &r2).map_or(dim as f64, |d| (d + 1.0).min(dim as f64))
        }
    };
    let mut out = KappaEstimate {
        kappa: Vec::with_capacity(n),
        sphere_dimension: p,
        clipped_low: 0,
        clipped_high: 0,
        alpha: Vec::new(),
    };
    // The bounds scale with the sphere's dimension, so that they bound the spread (module docs).
    let per_dim = (p - 1.0).max(1e-6);
    let (lo, hi) = (config.min_kappa, (f64::from(config.max_kappa) * per_dim).max(f64::from(config.min_kappa)) as f32);
    let mut sum = vec![0f64; dim];
    for i in 0..n {
        sum.iter_mut().zip(row(i)).for_each(|(s, &v)| *s = f64::from(v));
        for &j in &neighbours[i * k..(i + 1) * k] {
            sum.iter_mut().zip(row(j as usize)).for_each(|(s, &v)| *s += f64::from(v));
        }
        let r = sum.iter().map(|v| v * v).sum::<f64>().sqrt() / (k + 1) as f64;
        let kappa = (vmf_kappa(r, p) / 2.0) as f32;
        let clipped = kappa.clamp(lo, hi);
        out.clipped_low += usize::from(kappa < lo);
        out.clipped_high += usize::from(kappa > hi);
        out.kappa.push(clipped);
    }
    // Local mass: the in-degree of the neighbour graph. Rows many others count among their nearest sit
    // where the data is dense and stand for more of it; outliers nobody counts get a small weight.
    let mut mass = vec![1f64; n];
    neighbours.iter().for_each(|&j| mass[j as usize] += 1.0);
    let mean = mass.iter().sum::<f64>() / n as f64;
    out.alpha = mass.iter().map(|m| (m / mean).clamp(0.1, 10.0) as f32).collect();
    Ok(out)
}

/// The most fine clusters the kappa pass probes per row (see [`neighbours_from_index`]).
pub const KAPPA_MAX_NPROBE: usize = 32;

/// The `k` nearest neighbours of every row of `mu` (whose ids are `ids`) through `index` at LOD 2, as
/// row indices (itself excluded), nearest first; a row with fewer than `k` found repeats its last one.
///
/// The probe is the index's calibrated nprobe, at most [`KAPPA_MAX_NPROBE`]: kappa needs a row's near
/// neighbours, not recall 0.95, and on data without cluster structure calibration climbs to a quarter
/// of the clusters, which made this pass a quarter of an all-pairs scan.
pub fn neighbours_from_index(index: &Index, mu: &[f32], ids: &[u64], k: usize) -> Result<Vec<u32>> {
    let dim = index.dim();
    check_len("mu", mu.len(), ids.len() * dim)?;
    if ids.is_empty() || k == 0 {
        return Err(Error::Empty { what: "rows" });
    }
    let row_of: HashMap<u64, u32> = ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
    let params = SearchParams { nprobe: index.default_nprobe().clamp(1, KAPPA_MAX_NPROBE), ..Default::default() };
    let hits = index.search_batch(mu, k + 1, Lod::Rerank, &params)?;
    let mut out = Vec::with_capacity(ids.len() * k);
    for (i, h) in hits.iter().enumerate() {
        let mut found: Vec<u32> =
            h.iter().filter_map(|hit| row_of.get(&hit.id).copied()).filter(|&j| j as usize != i).take(k).collect();
        let last = found.last().copied().unwrap_or(i as u32);
        found.resize(k, last);
        out.extend(found);
    }
    Ok(out)
}

/// [`neighbours_from_index`] then [`kappa_from_neighbours`].
pub fn estimate_kappa(index: &Index, mu: &[f32], ids: &[u64], config: &KappaConfig) -> Result<KappaEstimate> {
    config.validate()?;
    let nb = neighbours_from_index(index, mu, ids, config.neighbours)?;
    kappa_from_neighbours(mu, index.dim(), &nb, config.neighbours, config)
}
