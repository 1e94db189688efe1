//! Spilled secondary assignment (SOAR, Sun et al., NeurIPS 2023): every member is coded a second time in
//! another fine cluster, so that a query whose neighbour sits near a cluster boundary finds it among
//! fewer probed clusters.
//!
//! The second cluster of a member `x` with primary residual `r = x - c` is the `c'` (among the children
//! of `x`'s nearest coarse centroids, `c' != c`) that minimises `|x - c'|^2 + lambda (r^ . (x - c'))^2`,
//! `r^ = r / |r|`: near `x`, and with a residual as orthogonal as possible to the primary one. A query
//! misses a neighbour through its primary cluster when `q . r` is large (the neighbour scores far better
//! than its centroid); the penalty picks a second residual on which that same query does not lose as
//! much, which plain "second nearest centroid" does not (lambda 0).
//!
//! The spill lists hold ids and codes only: a spilled candidate is scored by its code in the spill
//! cluster, then mapped by id to its primary location for the exact re-rank, and duplicates are merged.
//! What this does not do: persist. The lists live in RAM beside the index and are not part of
//! [`IndexParts`](crate::IndexParts) (no file format carries them); [`Index::from_parts`], a rebalance and
//! a re-encode start without them, and inserted rows are not spilled (they are found through their
//! primary cluster, as without spilling). [`Index::delete`] removes the deleted rows' spill entries.

use rayon::prelude::*;

use crate::index::{Index, push_code};
use crate::topk::Entry;
use crate::{Error, Metric, Result};

/// Marks an [`Entry`] whose `cluster` (with this bit cleared) and `pos` index a spill list, not a cluster.
pub(crate) const SPILL_BIT: u32 = 1 << 31;

/// Fine centroids a member's second cluster is chosen among: the children of its nearest coarse
/// centroids, taken until at least this many.
const SPILL_CANDIDATES: usize = 64;

/// The spilled members of one fine cluster: ids and codes of their residuals to this cluster's centroid.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpillList {
    pub(crate) ids: Vec<u64>,
    /// Codes in the cluster's layout ([`crate::CodeKind::stride`] bytes per row, or PQ4 blocks of 32 rows).
    pub(crate) codes: Vec<u8>,
    /// `|x|^2 / 2` per row for L2, empty otherwise.
    pub(crate) half_sq_norms: Vec<f32>,
}

impl Index {
    /// Adds a spilled secondary assignment (SOAR) of every member with penalty `lambda` (1 is the usual
    /// choice; 0 spills to the nearest other centroid), replacing any earlier one, then re-runs the
    /// build's calibration ([`Index::calibrate`] at the build's `target_recall`, when it is above 0) so
    /// that the default nprobe and re-rank depth fit the spilled index. Returns how many members were
    /// spilled (all of them when the index has more than one fine cluster).
    ///
    /// LOD 1 and LOD 2 then scan each probed cluster's spill list after its members: about twice the code
    /// bytes per probed cluster (and twice the codes in RAM, see [`Index::hot_bytes`]), for fewer probed
    /// clusters at the same recall. Filtered search and LOD 0 do not use the lists. The lists are kept in
    /// RAM only; see the module documentation for what drops them.
    ///
    /// Errors: [`Error::InvalidConfig`] for a negative or non-finite `lambda`; whatever
    /// [`Index::calibrate`] returns.
    pub fn spill(&mut self, lambda: f32) -> Result<usize> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(Error::InvalidConfig {
                what: "spill lambda",
                reason: format!("{lambda}: must be finite and at least 0"),
            });
        }
        self.spill = Vec::new();
        // The 1-bit stage does not cover spill lists.
        self.bitq = None;
        let n_fine = self.n_fine();
        if n_fine < 2 {
            return Ok(0);
        }
        let dim = self.p.dim;
        let fine_sq: Vec<f32> =
            self.p.fine.chunks_exact(dim).map(|c| crate::kernels::dot_with(self.isa(), c, c)).collect();
        // (second cluster, id, primary cluster, position), for every member.
        let mut moves: Vec<(u32, u64, u32, u32)> = (0..self.p.clusters.len())
            .into_par_iter()
            .flat_map_iter(|f| {
                let rows = self.cluster_vectors(f);
                let ids = &self.p.clusters[f].ids;
                let mut out = Vec::with_capacity(ids.len());
                let mut coarse_scores = Vec::new();
                let mut candidates = Vec::new();
                for (pos, (x, &id)) in rows.chunks_exact(dim).zip(ids).enumerate() {
                    if let Some(g) = self.second_cluster(x, f, lambda, &fine_sq, &mut coarse_scores, &mut candidates) {
                        out.push((g, id, f as u32, pos as u32));
                    }
                }
                out
            })
            .collect();
        moves.sort_unstable_by_key(|m| (m.0, m.2, m.3));
        let mut lists = vec![SpillList::default(); n_fine];
        let groups: Vec<&[(u32, u64, u32, u32)]> = moves.chunk_by(|a, b| a.0 == b.0).collect();
        let built: Vec<(usize, SpillList)> = groups
            .par_iter()
            .map(|group| {
                let g = group[0].0 as usize;
                let mut list = SpillList::default();
                for &(_, id, f, pos) in *group {
                    let x = &self.cluster_vectors(f as usize)[pos as usize * dim..][..dim];
                    push_code(&self.p, g, &mut list.codes, list.ids.len(), x);
                    list.ids.push(id);
                    if self.p.config.metric == Metric::L2 {
                        list.half_sq_norms.push(0.5 * crate::kernels::dot_with(self.isa(), x, x));
                    }
                }
                (g, list)
            })
            .collect();
        for (g, list) in built {
            lists[g] = list;
        }
        self.spill = lists;
        if self.p.config.target_recall > 0.0 {
            self.calibrate(self.p.config.target_recall, 10)?;
        }
        Ok(moves.len())
    }

    /// Members held in spill lists (see [`Index::spill`]); 0 for an index without them.
    pub fn spilled(&self) -> usize {
        self.spill.iter().map(|l| l.ids.len()).sum()
    }

    /// The second cluster of member `x` of fine cluster `f` (see the module documentation), or `None`
    /// when no other candidate exists.
    fn second_cluster(
        &self,
        x: &[f32],
        f: usize,
        lambda: f32,
        fine_sq: &[f32],
        coarse_scores: &mut Vec<(f32, u32)>,
        candidates: &mut Vec<u32>,
    ) -> Option<u32> {
        let dim = self.p.dim;
        let isa = self.isa();
        let c = &self.p.fine[f * dim..][..dim];
        let r: Vec<f32> = x.iter().zip(c).map(|(a, b)| a - b).collect();
        let r_norm = crate::kernels::dot_with(isa, &r, &r).sqrt();
        let r_hat: Vec<f32> = if r_norm > 0.0 { r.iter().map(|v| v / r_norm).collect() } else { vec![0.0; dim] };
        coarse_scores.clear();
        coarse_scores.extend(
            self.p
                .coarse
                .chunks_exact(dim)
                .zip(&self.coarse_bias)
                .enumerate()
                .map(|(i, (cc, b))| (crate::kernels::dot_with(isa, x, cc) + b, i as u32)),
        );
        coarse_scores.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        candidates.clear();
        for &(_, cc) in coarse_scores.iter() {
            candidates.extend(self.p.children[cc as usize].iter().copied().filter(|&g| g as usize != f));
            if candidates.len() >= SPILL_CANDIDATES {
                break;
            }
        }
        let x_sq = crate::kernels::dot_with(isa, x, x);
        let r_x = crate::kernels::dot_with(isa, &r_hat, x);
        let mut best: Option<(f32, u32)> = None;
        for &g in candidates.iter() {
            let cg = &self.p.fine[g as usize * dim..][..dim];
            let resid_sq = x_sq - 2.0 * crate::kernels::dot_with(isa, x, cg) + fine_sq[g as usize];
            let along = r_x - crate::kernels::dot_with(isa, &r_hat, cg);
            let loss = resid_sq + lambda * along * along;
            if best.is_none_or(|(l, b)| loss < l || (loss == l && g < b)) {
                best = Some((loss, g));
            }
        }
        best.map(|(_, g)| g)
    }

    /// Maps spill entries of `entries` to their members' primary locations, merges duplicates (a member found both ways keeps its better estimate), and returns them
    /// best first, as [`TopK::drain_sorted`](crate::topk::TopK::drain_sorted) orders.
    pub(crate) fn resolve_spill(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut out: Vec<Entry> = entries
            .into_iter()
            .filter_map(|e| {
                if e.cluster & SPILL_BIT == 0 {
                    return Some(e);
                }
                let id = self.spill[(e.cluster & !SPILL_BIT) as usize].ids[e.pos as usize];
                // Deleted ids have no spill entries (`unspill`); the lookup cannot fail, but a miss
                // drops the entry rather than panic.
                let &(cluster, pos) = self.locations.get(&id)?;
                Some(Entry { score: e.score, cluster, pos })
            })
            .collect();
        out.sort_unstable_by(|a, b| (a.cluster, a.pos).cmp(&(b.cluster, b.pos)).then(b.score.total_cmp(&a.score)));
        out.dedup_by_key(|e| (e.cluster, e.pos));
        out.sort_unstable();
        out
    }

    /// Removes the spill entries of `ids` (one pass over every list: for [`Index::delete`]), moving each
    /// list's last entry into the hole as `delete` does for members.
    pub(crate) fn unspill(&mut self, ids: &[u64]) {
        let gone: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let dim = self.p.dim;
        let stride = self.p.config.codes.stride(dim);
        let pq = self.p.config.codes.pq_shape(dim);
        for list in &mut self.spill {
            let mut pos = 0;
            while pos < list.ids.len() {
                if !gone.contains(&list.ids[pos]) {
                    pos += 1;
                    continue;
                }
                let last = list.ids.len() - 1;
                list.ids.swap_remove(pos);
                if !list.half_sq_norms.is_empty() {
                    list.half_sq_norms.swap_remove(pos);
                }
                if pos != last {
                    match pq {
                        Some(shape) => crate::kernels::pq4_copy_row(&mut list.codes, shape.m, last, pos),
                        None => list.codes.copy_within(last * stride..(last + 1) * stride, pos * stride),
                    }
                }
                match pq {
                    Some(shape) => crate::kernels::pq4_truncate(&mut list.codes, shape.m, last),
                    None => list.codes.truncate(last * stride),
                }
            }
        }
    }

    /// The code bytes of the spill lists.
    pub(crate) fn spill_bytes(&self) -> usize {
        self.spill.iter().map(|l| l.codes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Index, IndexConfig};

    /// Each spilled member sits in the cluster of least SOAR loss among the others, computed here in f64
    /// over every fine cluster (one coarse centroid, so every fine cluster is a candidate). Catches: the
    /// penalty on the residual's component along `r` dropped or of the wrong sign, the unit `r^` taken
    /// as `r`, and the primary cluster allowed as its own spill target.
    #[test]
    fn each_member_is_spilled_where_the_soar_loss_is_least() {
        let dim = 12;
        let n = 600;
        // Seeded, clustered-ish rows: a few directions plus spread.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let vectors: Vec<f32> = (0..n).flat_map(|i| (0..dim).map(move |j| (((i % 5) * 3 + j) % 7) as f32)).collect();
        let vectors: Vec<f32> = vectors.into_iter().map(|v| v + 3.0 * next()).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| 100 + i).collect();
        let config = IndexConfig { n_coarse: Some(1), n_fine: Some(24), target_recall: 0.0, ..IndexConfig::default() };
        for lambda in [0.0f32, 1.0, 4.0] {
            let mut index = Index::build(&config, dim, &vectors, &ids).unwrap();
            assert_eq!(index.n_coarse(), 1);
            assert_eq!(index.spill(lambda).unwrap(), n);
            let fine = &index.p.fine;
            let mut checked = 0;
            for (g, list) in index.spill.iter().enumerate() {
                for &id in &list.ids {
                    let &(f, pos) = index.locations.get(&id).unwrap();
                    assert_ne!(f as usize, g, "spilled into its own cluster");
                    let x = &index.cluster_vectors(f as usize)[pos as usize * dim..][..dim];
                    let c = &fine[f as usize * dim..][..dim];
                    let r: Vec<f64> = x.iter().zip(c).map(|(&a, &b)| f64::from(a) - f64::from(b)).collect();
                    let rn = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let loss = |h: usize| {
                        let ch = &fine[h * dim..][..dim];
                        let rp: Vec<f64> = x.iter().zip(ch).map(|(&a, &b)| f64::from(a) - f64::from(b)).collect();
                        let along = rp.iter().zip(&r).map(|(a, b)| a * b / rn).sum::<f64>();
                        rp.iter().map(|v| v * v).sum::<f64>() + f64::from(lambda) * along * along
                    };
                    let best = (0..index.n_fine()).filter(|&h| h != f as usize).map(loss).fold(f64::INFINITY, f64::min);
                    assert!(loss(g) <= best + 1e-3 * (1.0 + best), "lambda {lambda}: {} against {best}", loss(g));
                    checked += 1;
                }
            }
            assert_eq!(checked, n);
        }
    }
}
