//! The adaptive probe rule of LOD 2 (early termination): how many fine clusters a search that leaves
//! `nprobe` to the index scans, decided per query while it probes; and its calibration.
//!
//! # The rule
//! Clusters are probed best centroid first, as with a fixed nprobe, up to [`ProbeRule::max_probe`] of
//! them. Before each one the search compares the cluster's key (`q . c`, plus `-|c|^2 / 2` for L2) with
//! the k-th best code estimate held so far; when the key trails it by more than [`ProbeRule::margin`],
//! probing stops (every later cluster has a lower key). A member scores its centroid's key plus `q . r`
//! (`r` its residual, and for L2 a norm term), so the margin stands for the largest `q . r` a member of
//! the true top k is expected to have. Queries whose neighbours sit in one or two clusters stop early;
//! queries between clusters, whose k-th estimate stays low, probe on up to the cap. The exact bound
//! (`|q|` times the largest residual norm) is useless at high dimension (residuals are nearly orthogonal
//! to the query, yet their norms are large), so the margin is learned on held-out queries instead, as in
//! learned adaptive early termination (Li et al., SIGMOD 2020) with one parameter.
//!
//! # Calibration
//! [`Index::calibrate`] first sets the fixed nprobe as before; say it reaches recall `r` on the
//! calibration queries. Then, for caps of 1.25 and 1.5 times that nprobe, it finds by bisection the
//! smallest margin that still reaches `r` on the same queries, and models each candidate's cost per query
//! in bytes read (codes scanned times their stride, centroids ranked times their row in the f16 or f32
//! table, re-ranked rows). The cheapest rule is kept only if it costs less than the fixed nprobe at the
//! same recall by at least [`MIN_GAIN`]; otherwise the index keeps probing a fixed number of clusters.
//! So the rule is on where it pays on this index's data, and off where it does not (clusters that
//! overlap so much that the k-th estimate never pulls ahead of the centroids).

use rayon::prelude::*;

use crate::index::{Query, Scratch};
use crate::kernels::Isa;
use crate::{Error, Index, Result, SearchParams};

/// The adaptive probe rule (chosen by [`Index::calibrate`]): probe up to `max_probe` clusters, best first,
/// and stop before the first whose key trails the k-th best code estimate by more than `margin`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeRule {
    /// The most clusters a search probes (at least 1).
    pub max_probe: usize,
    /// How far, in the index's similarity, a cluster's key may trail the k-th best estimate and still be
    /// probed (finite, at least 0).
    pub margin: f32,
}

impl ProbeRule {
    /// Checks the values against an index of `n_fine` clusters: `max_probe` in `1..=max(n_fine, 1)`,
    /// `margin` finite and `>= 0`.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the value.
    pub fn check(&self, n_fine: usize) -> Result<()> {
        if self.max_probe == 0 || self.max_probe > n_fine.max(1) {
            return Err(Error::InvalidConfig {
                what: "probe rule",
                reason: format!("max_probe {} is not in 1..={}", self.max_probe, n_fine.max(1)),
            });
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(Error::InvalidConfig {
                what: "probe rule",
                reason: format!("margin {} is not finite and >= 0", self.margin),
            });
        }
        Ok(())
    }
}

/// The least share of the fixed nprobe's modelled cost the rule must save to be chosen: below it the
/// difference is within what the model does not see (the per-cluster overhead of the stop test, the
/// calibration queries' sampling).
pub const MIN_GAIN: f64 = 0.05;

/// Caps tried, as multiples of the calibrated fixed nprobe.
const CAP_FACTORS: [f64; 2] = [1.25, 1.5];

/// Bisection steps on the margin, after the doubling that brackets it.
const BISECT_STEPS: usize = 8;

/// What one calibration pass measured: recall@k over the queries, and the mean modelled cost per query
/// in bytes read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    pub(crate) recall: f32,
    pub(crate) cost: f64,
}

/// The calibration queries (indexed vectors held out of training) with their exact neighbours, each
/// query's own id left out.
pub(crate) struct Calibration {
    pub(crate) queries: Vec<f32>,
    pub(crate) own: Vec<u64>,
    pub(crate) truth: Vec<Vec<u64>>,
    pub(crate) k: usize,
}

impl Calibration {
    /// LOD 2 over every calibration query with `nprobe` (the cap, with `stop`) and re-rank depth
    /// `rerank`: recall@k against the truth and the mean modelled cost.
    pub(crate) fn measure(&self, index: &Index, nprobe: usize, rerank: usize, stop: Option<f32>) -> Result<Measured> {
        let dim = index.dim();
        let k = self.k;
        let params = SearchParams { nprobe, rerank, ..SearchParams::default() };
        let code_bytes = index.parts().config.codes.stride(dim) as f64;
        let centroid_bytes = if index.ranks_on_f16() { 2 * dim } else { 4 * dim } as f64;
        let results: Vec<Result<(usize, f64)>> = self
            .queries
            .par_chunks(dim)
            .zip(&self.own)
            .zip(&self.truth)
            .map_init(Scratch::default, |s, ((q, &me), t)| {
                let prepared: Query = index.prepare(q, s)?;
                let entries = index.lod2(k + 1, &params, stop, s);
                let found = entries
                    .iter()
                    .map(|e| index.hit(&prepared, e).id)
                    .filter(|&id| id != me)
                    .take(k)
                    .filter(|id| t.contains(id))
                    .count();
                let cost = s.scanned as f64 * code_bytes
                    + s.ranked as f64 * centroid_bytes
                    + entries.len().max(rerank.min(index.len())) as f64 * (4 * dim) as f64;
                Ok((found, cost))
            })
            .collect();
        let (mut found, mut cost) = (0usize, 0.0f64);
        for r in results {
            let (f, c) = r?;
            found += f;
            cost += c;
        }
        let total: usize = self.truth.iter().map(Vec::len).sum();
        let n = self.own.len().max(1) as f64;
        Ok(Measured { recall: if total == 0 { 1.0 } else { found as f32 / total as f32 }, cost: cost / n })
    }
}

impl Index {
    /// The adaptive probe rule LOD 2 follows when a search leaves `nprobe` at 0; `None` when it probes
    /// [`default_nprobe`](Self::default_nprobe) clusters.
    pub fn probe_rule(&self) -> Option<ProbeRule> {
        self.p.probe_rule
    }

    /// Sets (or, with `None`, removes) the adaptive probe rule of searches that leave `nprobe` at 0:
    /// for comparisons with the fixed nprobe, or a rule chosen by hand. [`calibrate`](Self::calibrate)
    /// sets it again.
    ///
    /// Errors: [`Error::InvalidConfig`] for a rule [`ProbeRule::check`] refuses; nothing changes.
    pub fn set_probe_rule(&mut self, rule: Option<ProbeRule>) -> Result<()> {
        if let Some(r) = rule {
            r.check(self.n_fine())?;
        }
        self.p.probe_rule = rule;
        Ok(())
    }

    /// Whether this index's rankings read the f16 centroid table (for the cost model).
    fn ranks_on_f16(&self) -> bool {
        !self.fine_h.is_empty() && self.isa() != Isa::Scalar
    }

    /// The rule the calibration chooses ([module docs](self)) for a fixed nprobe `fixed` that measured
    /// `at` with re-rank depth `deep`, or `None` when none saves [`MIN_GAIN`] of its cost at its recall.
    pub(crate) fn calibrate_probe_rule(
        &self,
        calib: &Calibration,
        fixed: usize,
        deep: usize,
        at: Measured,
    ) -> Result<Option<(ProbeRule, Measured)>> {
        let n_fine = self.n_fine();
        if fixed >= n_fine {
            return Ok(None);
        }
        // The scale of the keys: |q| times the largest centroid norm (1 for cosine). The margin is
        // bracketed by doubling from a small fraction of it.
        let dim = self.dim();
        let mut q_norm = 0.0f64;
        for q in calib.queries.chunks_exact(dim) {
            q_norm += f64::from(crate::kernels::dot(q, q)).sqrt();
        }
        q_norm /= calib.own.len().max(1) as f64;
        let scale = (q_norm * f64::from(self.fine_norm_max)) as f32;
        if !(scale.is_finite() && scale > 0.0) {
            return Ok(None);
        }
        let mut best: Option<(ProbeRule, Measured)> = None;
        for factor in CAP_FACTORS {
            let max_probe = ((fixed as f64 * factor).ceil() as usize).clamp(fixed, n_fine);
            let mut lo = 0.0f32;
            let mut hi = scale / 64.0;
            let mut reached = None;
            // 2^12 times the start: past the largest possible trail (2 * scale), where the rule is the
            // fixed probe of `max_probe` clusters.
            for _ in 0..13 {
                let m = calib.measure(self, max_probe, deep, Some(hi))?;
                if m.recall >= at.recall {
                    reached = Some(m);
                    break;
                }
                lo = hi;
                hi *= 2.0;
            }
            let Some(mut m_hi) = reached else { continue };
            for _ in 0..BISECT_STEPS {
                let mid = 0.5 * (lo + hi);
                let m = calib.measure(self, max_probe, deep, Some(mid))?;
                if m.recall >= at.recall {
                    (hi, m_hi) = (mid, m);
                } else {
                    lo = mid;
                }
            }
            if best.as_ref().is_none_or(|(_, b)| m_hi.cost < b.cost) {
                best = Some((ProbeRule { max_probe, margin: hi }, m_hi));
            }
        }
        Ok(best.filter(|(_, m)| m.cost < at.cost * (1.0 - MIN_GAIN)))
    }
}
