//! A 1-bit first stage for LOD 2 (RaBitQ, Gao and Long, SIGMOD 2024): each member also keeps the sign
//! of its randomly rotated residual (`d` bits) and three factors, and LOD 2 scores these before the
//! member's SQ4 / SQ8 code. Only a member whose 1-bit **upper bound** reaches the `depth`-th best code
//! estimate held so far (the re-rank's entry threshold) is scored by its code; the rest score below
//! every candidate the re-rank will see (with the bound's high probability). The 1-bit codes are a quarter of SQ4's bytes (48 B at d = 384).
//!
//! Estimator. For a member `x = c + r` of the cluster of centroid `c`, `o = r / |r|`, a random orthogonal
//! `P`, the code `b = sign(P r)` and `x_bar = b / sqrt(d)`, `a = <x_bar, P o>` (about 0.8 in high
//! dimension). RaBitQ's unbiased estimator of `<o, v>` is `<x_bar, P v> / a`; its error is close to a
//! centred Gaussian of standard deviation `sqrt(1 - a^2) / a / sqrt(d - 1) * |v|`, so it exceeds `eps0`
//! of them with about a Gaussian's tail probability (`eps0 = 1.9`, the paper's choice: ~6% of the
//! pairs, measured 4% on the digits; a member wrongly pruned costs recall only if it belonged in the
//! top candidates). With `v = q - c`:
//!
//! ```text
//! q . x = q . c + <r, c> + |r| <o, q - c>
//!       ~ q . c + k0 + k1 <x_bar, P q>        k1 = |r| / a,   k0 = <r, c> - k1 <x_bar, P c>
//! error <= k2 |q - c|                          k2 = |r| sqrt(1 - a^2) / a * eps0 / sqrt(d - 1)
//! ```
//!
//! `<x_bar, P q>` is scored with the PQ4 fast-scan kernel ([`crate::kernels::pq4_scan_with`], which has
//! its scalar, AVX2 and AVX-512 forms): the signs of 4 rotated dimensions are one 4-bit sub-code, and the
//! query's table holds, for each group, the 16 sums `sum_j +-(P q)_j / sqrt(d)`. The table is rounded to
//! u8; its rounding adds at most half a step per group (`m / 2` steps, times `k1`), added to the bound,
//! and so is the f16 ranking's error on `q . c` ([`crate::Scratch`]'s `fine_err`).
//!
//! What this does not do: persist. Like the spill lists the 1-bit lists live in RAM beside the index
//! and are not part of [`IndexParts`](crate::IndexParts); [`Index::from_parts`], insert, delete, a
//! rebalance and a spill drop them (LOD 2 then scans every code, as without them). PQ4 indexes (their
//! codes are already fast-scan blocks) and spilled indexes refuse them.

use rayon::prelude::*;

use crate::index::Index;
use crate::kernels::{self, Isa};
use crate::{CodeKind, Error, Result};

/// RaBitQ's confidence parameter (the paper's value): the bound is this many standard deviations of the
/// estimate's error, so it holds for about 94% of (query, member) pairs.
pub const BITQ_EPS: f32 = 1.9;

/// The 1-bit codes and factors of one fine cluster's members, in member order (a view into [`BitQ`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BitList<'a> {
    /// Fast-scan codes of `m` 4-bit sub-codes per member ([`crate::kernels::pq4_push`] layout).
    pub(crate) codes: &'a [u8],
    pub(crate) k0: &'a [f32],
    pub(crate) k1: &'a [f32],
    pub(crate) k2: &'a [f32],
}

/// The 1-bit first stage: the rotation, `|c|^2`, and every cluster's codes and factors, cluster after
/// cluster in four arrays (a few large allocations rather than four per cluster: fewer pages to walk
/// when the probed clusters are visited).
#[derive(Clone, Debug)]
pub(crate) struct BitQ {
    pub(crate) rot: Rotation,
    /// Sub-codes per member: `ceil(d / 4)`.
    pub(crate) m: usize,
    pub(crate) eps: f32,
    pub(crate) c_sq: Vec<f32>,
    codes: Vec<u8>,
    k0: Vec<f32>,
    k1: Vec<f32>,
    k2: Vec<f32>,
    /// Cluster `f`'s codes are `codes[code_at[f]..code_at[f + 1]]`, its factors `k*[row_at[f]..row_at[f + 1]]`.
    code_at: Vec<usize>,
    row_at: Vec<usize>,
}

impl BitQ {
    /// Cluster `f`'s codes and factors, if it has a list.
    #[inline]
    pub(crate) fn list(&self, f: usize) -> Option<BitList<'_>> {
        let (c0, c1) = (*self.code_at.get(f)?, *self.code_at.get(f + 1)?);
        let (r0, r1) = (self.row_at[f], self.row_at[f + 1]);
        Some(BitList { codes: &self.codes[c0..c1], k0: &self.k0[r0..r1], k1: &self.k1[r0..r1], k2: &self.k2[r0..r1] })
    }
}

/// Rounds of the structured rotation.
const ROUNDS: usize = 3;

/// A random orthogonal transform of `d` dimensions that costs `O(d log d)` to apply (a dense `d x d`
/// matrix is 590 KB of f32 at d = 384, read by every query): `ROUNDS` times, random signs and a random
/// permutation, a normalised Walsh-Hadamard transform of the first `h` coordinates, random signs again,
/// and one of the last `h` (`h` the largest power of two <= d; the two windows overlap when `d` is not a
/// power of two, and the second signs keep the second transform from undoing the first on the overlap).
/// Each step is orthogonal, so the whole is; the rounds mix the windows. Seeded.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    d: usize,
    h: usize,
    signs: Vec<f32>,
    signs2: Vec<f32>,
    perms: Vec<u32>,
}

impl Rotation {
    pub(crate) fn new(d: usize, seed: u64) -> Rotation {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed ^ 0x000B_170F_5157);
        let h = if d == 0 { 0 } else { 1usize << (usize::BITS - 1 - d.leading_zeros()) };
        let mut signs = Vec::with_capacity(ROUNDS * d);
        let mut signs2 = Vec::with_capacity(ROUNDS * d);
        let mut perms = Vec::with_capacity(ROUNDS * d);
        for _ in 0..ROUNDS {
            signs.extend((0..d).map(|_| if rng.random_range(0..2u8) == 1 { 1.0f32 } else { -1.0 }));
            signs2.extend((0..d).map(|_| if rng.random_range(0..2u8) == 1 { 1.0f32 } else { -1.0 }));
            let mut p: Vec<u32> = (0..d as u32).collect();
            // Fisher-Yates.
            for i in (1..d).rev() {
                p.swap(i, rng.random_range(0..=i));
            }
            perms.extend(p);
        }
        Rotation { d, h, signs, signs2, perms }
    }

    /// `out = P x` (`x.len() == out.len() == d`); `tmp` is scratch.
    pub(crate) fn apply(&self, x: &[f32], out: &mut [f32], tmp: &mut Vec<f32>) {
        let (d, h) = (self.d, self.h);
        out.copy_from_slice(x);
        tmp.resize(d, 0.0);
        let norm = 1.0 / (h as f32).sqrt();
        for r in 0..ROUNDS {
            let (signs, perm) = (&self.signs[r * d..][..d], &self.perms[r * d..][..d]);
            for ((t, &p), &sg) in tmp.iter_mut().zip(perm).zip(signs) {
                *t = out[p as usize] * sg;
            }
            fwht(&mut tmp[..h], norm);
            if d > h {
                tmp.iter_mut().zip(&self.signs2[r * d..][..d]).for_each(|(t, &sg)| *t *= sg);
                fwht(&mut tmp[d - h..], norm);
            }
            out.copy_from_slice(tmp);
        }
    }

    fn bytes(&self) -> usize {
        (self.signs.len() + self.signs2.len() + self.perms.len()) * 4
    }
}

/// In-place Walsh-Hadamard transform of a power-of-two length, times `norm` (`1 / sqrt(len)` makes it
/// orthogonal).
fn fwht(x: &mut [f32], norm: f32) {
    let n = x.len();
    let mut len = 1;
    while len < n {
        for block in x.chunks_exact_mut(2 * len) {
            let (a, b) = block.split_at_mut(len);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        len *= 2;
    }
    x.iter_mut().for_each(|v| *v *= norm);
}

/// The query's side: the u8 table of `<x_bar, P q>` and how to read its sums.
#[derive(Debug, Default)]
pub(crate) struct BitQuery {
    pub(crate) lut: Vec<u8>,
    pub(crate) rotated: Vec<f32>,
    tmp: Vec<f32>,
    table: Vec<f32>,
    /// `<x_bar, P q> ~ bias + sum * inv`, within `lut_err` of the f32 value.
    pub(crate) bias: f32,
    pub(crate) inv: f32,
    pub(crate) lut_err: f32,
}

impl BitQ {
    /// Fills `bq` for query `q` (as the index compares it).
    pub(crate) fn prepare(&self, q: &[f32], bq: &mut BitQuery) {
        let d = q.len();
        bq.rotated.resize(d, 0.0);
        self.rot.apply(q, &mut bq.rotated, &mut bq.tmp);
        let scale = 1.0 / (d as f32).sqrt();
        bq.lut.clear();
        bq.lut.resize(kernels::pq4_lut_len(self.m), 0);
        bq.table.clear();
        let mut bias = 0.0f32;
        let mut range = 0.0f32;
        // Each group's 16 sums `sum_j +-x_j` (bit j of the code: +), minus its minimum (kept in
        // `bias`); then one common scale to u8. Code c adds `2 x_j` to the code without its highest bit.
        for s in 0..self.m {
            let x: [f32; 4] = std::array::from_fn(|j| bq.rotated.get(4 * s + j).copied().unwrap_or(0.0) * scale);
            let mut t = [0.0f32; 16];
            t[0] = -(x[0] + x[1] + x[2] + x[3]);
            for c in 1..16usize {
                let top = usize::BITS - 1 - c.leading_zeros();
                t[c] = t[c & !(1 << top)] + 2.0 * x[top as usize];
            }
            let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            bq.table.extend(t.iter().map(|v| v - lo));
            bias += lo;
            range = range.max(hi - lo);
        }
        let a = if range > 0.0 { 255.0 / range } else { 1.0 };
        // v >= 0, so `+ 0.5` and the saturating cast round to nearest.
        for (o, &v) in bq.lut.iter_mut().zip(&bq.table) {
            *o = (v * a + 0.5) as u8;
        }
        bq.bias = bias;
        bq.inv = 1.0 / a;
        // Half a step per group, and a little for the f32 sums.
        bq.lut_err = (0.5 * self.m as f32 + 0.01) * bq.inv;
    }
}

impl BitQ {
    /// Upper bounds of the similarity (`q . x`, minus `|x|^2 / 2` for L2: `half` holds those, empty
    /// otherwise) of every member of cluster `f` into `upper`, from the query's table `bq`, the centroid
    /// score `qc` (within `slack` of `q . c`) and `qc_norm = |q - c|`; `ints` is scratch for the table
    /// sums. The estimate is the bound minus `radius` (the interval's half width).
    #[allow(clippy::too_many_arguments, reason = "internal; the state of a LOD 2 scan")]
    pub(crate) fn upper(
        &self,
        isa: Isa,
        bq: &BitQuery,
        f: usize,
        (qc, qc_norm, slack): (f32, f32, f32),
        half: &[f32],
        ints: &mut Vec<i32>,
        upper: &mut Vec<f32>,
    ) {
        let Some(list) = self.list(f) else { return };
        let m = list.k0.len();
        ints.resize(m, 0);
        kernels::pq4_scan_with(isa, &bq.lut, list.codes, self.m, ints);
        upper.resize(m, 0.0);
        // est = qc + k0 + k1 (bias + e step) - h; radius = k2 |q - c| + k1 lut_err + slack. Plain
        // indexed loops over slices of one length: they vectorise.
        let (c0, c1, step) = (qc + slack, bq.bias + bq.lut_err, bq.inv);
        let (k0, k1, k2, e, up) = (&list.k0[..m], &list.k1[..m], &list.k2[..m], &ints[..m], &mut upper[..m]);
        for i in 0..m {
            up[i] = c0 + k0[i] + k2[i] * qc_norm + k1[i] * (c1 + e[i] as f32 * step);
        }
        if !half.is_empty() {
            let half = &half[..m];
            for i in 0..m {
                up[i] -= half[i];
            }
        }
    }

    #[cfg(test)]
    /// Half the width of member `i` of cluster `f`'s interval (see [`upper`](Self::upper)).
    pub(crate) fn radius(&self, bq: &BitQuery, f: usize, i: usize, qc_norm: f32, slack: f32) -> f32 {
        let list = self.list(f).expect("cluster in range");
        list.k2[i] * qc_norm + list.k1[i] * bq.lut_err + slack
    }
}

impl Index {
    /// Adds the 1-bit first stage for LOD 2 (see the module documentation), replacing any earlier one,
    /// with confidence `eps` ([`BITQ_EPS`] is RaBitQ's choice; a larger one prunes less and misses
    /// less). Returns the number of members coded.
    ///
    /// Errors: [`Error::InvalidConfig`] for a non-finite or negative `eps`, a PQ4 index, or a spilled one;
    /// nothing changes then.
    pub fn enable_bitq(&mut self, eps: f32) -> Result<usize> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::InvalidConfig {
                what: "bitq eps",
                reason: format!("{eps}: must be finite and at least 0"),
            });
        }
        if matches!(self.p.config.codes, CodeKind::Pq4 { .. }) {
            return Err(Error::InvalidConfig {
                what: "bitq",
                reason: "a PQ4 index scans fast-scan blocks already; the 1-bit stage needs SQ4 or SQ8".into(),
            });
        }
        if !self.spill.is_empty() {
            return Err(Error::InvalidConfig { what: "bitq", reason: "the index is spilled".into() });
        }
        let d = self.p.dim;
        let m = d.div_ceil(4);
        let rot = Rotation::new(d, self.p.config.seed);
        let isa = self.isa();
        let kerr = eps / ((d.max(2) - 1) as f32).sqrt();
        // (codes, k0, k1, k2) per cluster.
        type Coded = (Vec<u8>, Vec<f32>, Vec<f32>, Vec<f32>);
        let lists: Vec<Coded> = (0..self.p.clusters.len())
            .into_par_iter()
            .map(|f| {
                let c = &self.p.fine[f * d..][..d];
                let mut pc = vec![0.0f32; d];
                let mut tmp = Vec::new();
                rot.apply(c, &mut pc, &mut tmp);
                let rows = self.cluster_vectors(f);
                let mut list: Coded = Default::default();
                let mut r = vec![0.0f32; d];
                let mut pr = vec![0.0f32; d];
                let mut sub = vec![0u8; m];
                let sqrt_d = (d as f32).sqrt();
                for (i, x) in rows.chunks_exact(d).enumerate() {
                    r.iter_mut().zip(x.iter().zip(c)).for_each(|(r, (x, c))| *r = x - c);
                    rot.apply(&r, &mut pr, &mut tmp);
                    let norm = kernels::dot_with(isa, &r, &r).sqrt();
                    sub.iter_mut().for_each(|v| *v = 0);
                    let (mut abs, mut xc) = (0.0f32, 0.0f32);
                    for (j, (&p, &pcj)) in pr.iter().zip(&pc).enumerate() {
                        abs += p.abs();
                        if p >= 0.0 {
                            sub[j / 4] |= 1 << (j % 4);
                            xc += pcj;
                        } else {
                            xc -= pcj;
                        }
                    }
                    xc /= sqrt_d;
                    let rc = kernels::dot_with(isa, &r, c);
                    let (k0, k1, k2) = if norm > 0.0 && abs > 0.0 {
                        let a = (abs / (sqrt_d * norm)).min(1.0);
                        let k1 = norm / a;
                        (rc - k1 * xc, k1, norm * (1.0 - a * a).max(0.0).sqrt() / a * kerr)
                    } else {
                        // x = c: q . x = q . c exactly.
                        (0.0, 0.0, 0.0)
                    };
                    kernels::pq4_push(&mut list.0, m, i, &sub);
                    list.1.push(k0);
                    list.2.push(k1);
                    list.3.push(k2);
                }
                list
            })
            .collect();
        let coded: usize = lists.iter().map(|l| l.1.len()).sum();
        let (mut codes, mut k0, mut k1, mut k2) = (Vec::new(), Vec::with_capacity(coded), Vec::new(), Vec::new());
        let (mut code_at, mut row_at) = (vec![0], vec![0]);
        codes.reserve_exact(lists.iter().map(|l| l.0.len()).sum());
        k1.reserve_exact(coded);
        k2.reserve_exact(coded);
        for (c, a, b, e) in lists {
            codes.extend_from_slice(&c);
            k0.extend_from_slice(&a);
            k1.extend_from_slice(&b);
            k2.extend_from_slice(&e);
            code_at.push(codes.len());
            row_at.push(k0.len());
        }
        let c_sq = self.p.fine.chunks_exact(d).map(|c| kernels::dot_with(isa, c, c)).collect();
        self.bitq = Some(Box::new(BitQ { rot, m, eps, c_sq, codes, k0, k1, k2, code_at, row_at }));
        Ok(coded)
    }

    /// Drops the 1-bit first stage (LOD 2 scans every code again).
    pub fn disable_bitq(&mut self) {
        self.bitq = None;
    }

    /// The confidence of the 1-bit first stage, if the index has one.
    pub fn bitq_eps(&self) -> Option<f32> {
        self.bitq.as_ref().map(|b| b.eps)
    }

    /// Bytes of the 1-bit stage (codes, factors, rotation).
    pub(crate) fn bitq_bytes(&self) -> usize {
        self.bitq.as_ref().map_or(0, |b| b.rot.bytes() + b.codes.len() + 12 * b.k0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IndexConfig, Metric};
    use m2m_splat::{DigitsConfig, digits_on_sphere};

    /// Catches: rows left unnormalised, a Gram-Schmidt that forgets a projection (rows not orthogonal).
    #[test]
    fn the_rotation_is_orthonormal() {
        for d in [1usize, 3, 5, 64, 130, 384] {
            let rot = Rotation::new(d, 3);
            let mut p = vec![0.0f32; d * d];
            let (mut e, mut tmp) = (vec![0.0f32; d], Vec::new());
            for i in 0..d {
                e.iter_mut().enumerate().for_each(|(j, v)| *v = f32::from(u8::from(i == j)));
                rot.apply(&e, &mut p[i * d..][..d], &mut tmp);
            }
            for i in 0..d {
                for j in 0..d {
                    let dot: f64 = (0..d).map(|t| f64::from(p[i * d + t]) * f64::from(p[j * d + t])).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "d {d} rows {i} {j}: {dot}");
                }
            }
            // Mixing: no basis vector stays concentrated on a few coordinates (d >= 64).
            if d >= 64 {
                let peak = p.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(peak < 0.5, "d {d}: an entry of {peak}");
            }
        }
    }

    /// The estimator is unbiased and its bound holds for the share of (query, member) pairs a Gaussian
    /// error predicts: at least 0.93 at the paper's confidence 1.9 (a Gaussian: 0.943) and 0.999 at 4,
    /// on cosine and L2 indexes, every cluster, every available ISA.
    /// Catches: `k0` with the wrong sign or without `<x_bar, P c>` (biased), `a` left out of `k1` (the
    /// estimate shrinks by ~0.8: biased), the table's `bias` dropped, `k2` without `1 / a` or the bound
    /// not scaled by `|q - c|` (coverage falls), bits set on the wrong sign.
    #[test]
    fn the_estimate_is_unbiased_and_the_bound_holds_for_nearly_every_member() {
        let dim = 96;
        let data = digits_on_sphere(&DigitsConfig::default().rows(3_000).queries(40).dim(dim)).unwrap();
        let ids: Vec<u64> = (0..3_000).collect();
        for (metric, eps, want) in
            [(Metric::Cosine, BITQ_EPS, 0.93), (Metric::L2, BITQ_EPS, 0.93), (Metric::Cosine, 4.0, 0.999)]
        {
            let config = IndexConfig { target_recall: 0.0, ..IndexConfig::default() }.metric(metric);
            let mut index = Index::build(&config, dim, &data.base, &ids).unwrap();
            index.enable_bitq(eps).unwrap();
            for isa in Isa::available() {
                index.set_isa(isa).unwrap();
                let b = index.bitq.as_deref().unwrap();
                let (mut bq, mut ints, mut hi) = (BitQuery::default(), vec![], vec![]);
                let (mut pairs, mut covered, mut bias, mut spread) = (0usize, 0usize, 0.0f64, 0.0f64);
                for q in data.queries.chunks_exact(dim) {
                    b.prepare(q, &mut bq);
                    let q_sq = kernels::dot(q, q);
                    for f in 0..index.n_fine() {
                        let c = &index.p.fine[f * dim..][..dim];
                        let qc = kernels::dot(q, c);
                        let qc_norm = (q_sq - 2.0 * qc + b.c_sq[f]).max(0.0).sqrt();
                        let cl = &index.p.clusters[f];
                        b.upper(isa, &bq, f, (qc, qc_norm, 0.0), &cl.half_sq_norms, &mut ints, &mut hi);
                        for (i, x) in index.cluster_vectors(f).chunks_exact(dim).enumerate() {
                            let h = cl.half_sq_norms.get(i).copied().unwrap_or(0.0);
                            let exact = f64::from(kernels::dot(q, x) - h);
                            let radius = f64::from(b.radius(&bq, f, i, qc_norm, 0.0));
                            let mid = f64::from(hi[i]) - radius;
                            pairs += 1;
                            covered += usize::from((exact - mid).abs() <= radius);
                            bias += mid - exact;
                            spread += (mid - exact).abs();
                        }
                    }
                }
                let coverage = covered as f64 / pairs as f64;
                assert!(coverage >= want, "{metric:?} {isa:?} eps {eps}: bound holds for {coverage:.4}");
                assert!(
                    bias.abs() < 0.1 * spread,
                    "{metric:?} {isa:?}: mean error {bias} against mean |error| {spread}"
                );
            }
        }
    }
}
