//! Routing: the splats a point's energy is summed over, taken from the clusters of an m2m-index index
//! (the "mixture of experts" of the original project).
//!
//! A point is routed to its `probes` nearest fine clusters (by centroid), and of their members the
//! `max_splats` with the largest terms l_i = ln alpha_i - 2 kappa_i (1 - x . mu_i) are kept. Dropping
//! terms only removes positive parts of the sum, so the routed energy is never below the exact one, and
//! exceeds it by -ln(1 - dropped share): small when the dropped splats are far compared with the
//! kernels' width (tested with kappa 30 to 50 against [`crate::energy::energy`]). With broad kernels
//! (small kappa, many dimensions) far splats carry real mass and the routed energy overestimates E;
//! probing more clusters tightens the bound monotonically. The fine clusters are also the sites of the
//! SOC controller.

use std::collections::HashMap;

use m2m_index::{Index, Metric, kernels};

use crate::energy::Splats;
use crate::error::{check_len, check_values};
use crate::{Error, Result, SiteGraph};

/// The members of one fine cluster with their parameters.
#[derive(Clone, Debug, Default)]
struct Members {
    ids: Vec<u64>,
    mu: Vec<f32>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
}

/// Routes points to splats through an index's fine clusters.
#[derive(Clone, Debug)]
pub struct Router {
    dim: usize,
    centroids: Vec<f32>,
    members: Vec<Members>,
}

/// Owned routed splats (see [`Router::route`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routed {
    /// Dimension.
    pub dim: usize,
    /// Ids of the routed splats.
    pub ids: Vec<u64>,
    /// Their directions, row-major.
    pub mu: Vec<f32>,
    /// Their concentrations.
    pub kappa: Vec<f32>,
    /// Their weights.
    pub alpha: Vec<f32>,
}

impl Routed {
    /// The routed splats as [`Splats`] (an error when nothing was routed).
    pub fn splats(&self) -> Result<Splats<'_>> {
        Splats::new(self.dim, &self.mu, &self.kappa, &self.alpha)
    }
}

impl Router {
    /// A router over `index` (cosine metric: its vectors are the splats' unit `mu`), with each member's
    /// (kappa, alpha) from `params`; a member `params` does not know is left out.
    pub fn new(index: &Index, params: impl Fn(u64) -> Option<(f32, f32)>) -> Result<Router> {
        if index.metric() != Metric::Cosine {
            return Err(Error::Invalid {
                what: "index metric",
                index: 0,
                value: 0.0,
                reason: "routing on the sphere needs a cosine index",
            });
        }
        let dim = index.dim();
        let parts = index.parts();
        let mut members = Vec::with_capacity(parts.clusters.len());
        for cl in &parts.clusters {
            let mut m = Members::default();
            for (i, &id) in cl.ids.iter().enumerate() {
                if let Some((k, a)) = params(id) {
                    m.ids.push(id);
                    m.mu.extend_from_slice(&cl.vectors[i * dim..(i + 1) * dim]);
                    m.kappa.push(k);
                    m.alpha.push(a);
                }
            }
            check_values("kappa", &m.kappa, true)?;
            check_values("alpha", &m.alpha, true)?;
            members.push(m);
        }
        Ok(Router { dim, centroids: parts.fine.clone(), members })
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of fine clusters (the SOC sites).
    pub fn clusters(&self) -> usize {
        self.members.len()
    }

    /// The cluster of every routed id.
    pub fn cluster_of(&self) -> HashMap<u64, u32> {
        let mut out = HashMap::new();
        for (c, m) in self.members.iter().enumerate() {
            out.extend(m.ids.iter().map(|&id| (id, c as u32)));
        }
        out
    }

    /// The clusters' graph: each linked to its `k` nearest clusters by centroid.
    pub fn site_graph(&self, k: usize) -> Result<SiteGraph> {
        SiteGraph::knn(&self.centroids, self.dim, k)
    }

    /// The `probes` clusters whose centroids are most similar to `x`, best first.
    pub fn nearest_clusters(&self, x: &[f32], probes: usize) -> Result<Vec<u32>> {
        check_len("x", x.len(), self.dim)?;
        check_values("x", x, false)?;
        let mut scores = vec![0f32; self.members.len()];
        kernels::dots(x, &self.centroids, &mut scores);
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        let p = probes.clamp(1, order.len().max(1));
        if p < order.len() {
            order.select_nth_unstable_by(p - 1, |&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
            order.truncate(p);
        }
        order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        Ok(order)
    }

    /// The nearest cluster of each row of `x` (row-major), scored as one matrix product.
    pub fn nearest_cluster_of_rows(&self, x: &[f32]) -> Result<Vec<u32>> {
        let rows = x.len() / self.dim;
        check_len("x", x.len(), rows * self.dim)?;
        check_values("x", x, false)?;
        let n = self.members.len();
        let mut scores = vec![0f32; rows * n];
        kernels::dots_many(x, &self.centroids, self.dim, &mut scores);
        Ok(scores
            .chunks_exact(n)
            .map(|s| {
                s.iter()
                    .enumerate()
                    .fold((0u32, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i as u32, v) } else { b })
                    .0
            })
            .collect())
    }

    /// The splats `x` is routed to: of the members of its `probes` nearest clusters, the `max_splats`
    /// (at least 1) with the largest terms. `x` should be a unit vector.
    pub fn route(&self, x: &[f32], probes: usize, max_splats: usize) -> Result<Routed> {
        let clusters = self.nearest_clusters(x, probes)?;
        let mut cand: Vec<(f32, u32, u32)> = Vec::new();
        let mut s = Vec::new();
        for &c in &clusters {
            let m = &self.members[c as usize];
            s.resize(m.ids.len(), 0.0);
            kernels::dots(x, &m.mu, &mut s);
            for (i, &si) in s.iter().enumerate() {
                cand.push((m.alpha[i].ln() - 2.0 * m.kappa[i] * (1.0 - si), c, i as u32));
            }
        }
        let keep = max_splats.max(1);
        if cand.len() > keep {
            cand.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            cand.truncate(keep);
        }
        let mut out = Routed { dim: self.dim, ..Routed::default() };
        for &(_, c, i) in &cand {
            let (m, i) = (&self.members[c as usize], i as usize);
            out.ids.push(m.ids[i]);
            out.mu.extend_from_slice(&m.mu[i * self.dim..(i + 1) * self.dim]);
            out.kappa.push(m.kappa[i]);
            out.alpha.push(m.alpha[i]);
        }
        Ok(out)
    }

    /// The routed (truncated) energy of `x`: E over its [`route`](Self::route)d splats, in f64.
    pub fn energy(&self, x: &[f32], probes: usize, max_splats: usize) -> Result<f64> {
        let r = self.route(x, probes, max_splats)?;
        crate::energy::energy(x, &r.splats()?)
    }
}
