//! The CPU twins: each computes what its shader computes, so that tests can hold the GPU to a relative
//! error of 1e-5. They are also what `Backend::Auto` runs without a GPU, so the scores use m2m-index's
//! SIMD kernels (sums associated differently from the shader's, well inside the tolerance).

use m2m_index::kernels;

use crate::{Direction, SqCodes};

/// Scores of every query against every candidate (row-major, `n_queries x n_cand`): `q . x`, or
/// `|q - x|^2` when `l2`.
pub fn scores(queries: &[f32], cand: &[f32], dim: usize, l2: bool) -> Vec<f32> {
    let n = cand.len() / dim;
    let mut out = vec![0f32; queries.len() / dim * n];
    if l2 {
        for (q, o) in queries.chunks_exact(dim).zip(out.chunks_exact_mut(n.max(1))) {
            for (x, s) in cand.chunks_exact(dim).zip(o.iter_mut()) {
                *s = kernels::l2_sq(q, x);
            }
        }
    } else {
        kernels::dots_many(queries, cand, dim, &mut out);
    }
    out
}

/// Whether (a, ia) ranks before (b, ib): the better score, ties to the lower index.
pub fn better(dir: Direction, a: f32, ia: u32, b: f32, ib: u32) -> bool {
    if a == b {
        return ia < ib;
    }
    match dir {
        Direction::Higher => a > b,
        Direction::Lower => a < b,
    }
}

/// The best `k` (index, score) of each row of `scores` (rows of `n`), best first.
pub fn top_k(scores: &[f32], n: usize, k: usize, dir: Direction) -> Vec<Vec<(u32, f32)>> {
    scores
        .chunks_exact(n.max(1))
        .map(|row| {
            let mut idx: Vec<u32> = (0..row.len() as u32).collect();
            idx.sort_by(|&a, &b| {
                if better(dir, row[a as usize], a, row[b as usize], b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
            idx.truncate(k);
            idx.iter().map(|&i| (i, row[i as usize])).collect()
        })
        .collect()
}

/// The per-dimension weights `q_j step_j` and the offset `sum_j q_j lo_j` of a code scan.
pub fn code_weights(query: &[f32], codes: &SqCodes<'_>) -> (Vec<f32>, f32) {
    let qstep = query.iter().zip(codes.step).map(|(q, s)| q * s).collect();
    let offset = query.iter().zip(codes.lo).fold(0.0f32, |acc, (q, l)| acc + q * l);
    (qstep, offset)
}

/// Estimated inner products of `query` with every coded row.
pub fn code_scores(query: &[f32], codes: &SqCodes<'_>) -> Vec<f32> {
    let (qstep, offset) = code_weights(query, codes);
    (0..codes.rows)
        .map(|r| {
            let row = &codes.codes[r * codes.stride..r * codes.stride + codes.dim];
            offset + row.iter().zip(&qstep).fold(0.0f32, |acc, (&c, w)| acc + w * f32::from(c))
        })
        .collect()
}

/// One overdamped Langevin step of every chain (rows of `x`) against shared splats, with increments
/// `xi`; `noise_scale` is `sqrt(2 dt T)`.
#[allow(clippy::too_many_arguments, reason = "mirrors the shader's bindings and push constants")]
pub fn langevin_step(
    x: &mut [f32],
    mu: &[f32],
    kappa: &[f32],
    alpha: &[f32],
    xi: &[f32],
    dim: usize,
    dt: f32,
    noise_scale: f32,
) {
    let n = kappa.len();
    let mut c = vec![0f32; n];
    let mut next = vec![0f32; dim];
    for (row, noise) in x.chunks_exact_mut(dim).zip(xi.chunks_exact(dim)) {
        for j in 0..n {
            let s = kernels::dot(row, &mu[j * dim..(j + 1) * dim]);
            c[j] = alpha[j].ln() - 2.0 * kappa[j] * (1.0 - s);
        }
        let m = c.iter().copied().fold(-3.0e38f32, f32::max);
        c.iter_mut().for_each(|v| *v = (*v - m).exp());
        let z: f32 = c.iter().sum();
        c.iter_mut().zip(kappa).for_each(|(v, k)| *v *= 2.0 * k / z);
        let mut u = vec![0f32; dim];
        kernels::weighted_sums(&c, mu, dim, &mut u);
        let ux: f32 = u.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
        let xix: f32 = noise.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
        for k in 0..dim {
            let xv = row[k];
            next[k] = xv + dt * (u[k] - ux * xv) + noise_scale * (noise[k] - xix * xv);
        }
        let inv = 1.0 / next.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().zip(&next).for_each(|(r, v)| *r = v * inv);
    }
}

/// The IVF-Flat search of [`crate::Compute::ivf_search`]: for each query, the `nprobe` lists whose
/// centroids score best (ties to the lower list), then the best `k` (row, score) among their members'
/// exact scores, best first (ties to the lower row). `offsets` has one entry per list plus one; the
/// members of list `l` are rows `offsets[l]..offsets[l + 1]` of `vectors` (row-major).
#[allow(clippy::too_many_arguments, reason = "the search's inputs, each a plain slice or number")]
pub fn ivf_search(
    queries: &[f32],
    centroids: &[f32],
    offsets: &[u32],
    vectors: &[f32],
    dim: usize,
    l2: bool,
    nprobe: usize,
    k: usize,
) -> Vec<Vec<(u32, f32)>> {
    let n_lists = centroids.len() / dim;
    let dir = if l2 { Direction::Lower } else { Direction::Higher };
    let probe_scores = scores(queries, centroids, dim, l2);
    let probes = top_k(&probe_scores, n_lists, nprobe, dir);
    queries
        .chunks_exact(dim)
        .zip(&probes)
        .map(|(q, lists)| {
            let mut found: Vec<(u32, f32)> = Vec::new();
            for &(l, _) in lists {
                for r in offsets[l as usize]..offsets[l as usize + 1] {
                    let x = &vectors[r as usize * dim..(r as usize + 1) * dim];
                    found.push((r, if l2 { kernels::l2_sq(q, x) } else { kernels::dot(q, x) }));
                }
            }
            found.sort_by(|a, b| {
                if better(dir, a.1, a.0, b.1, b.0) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater }
            });
            found.truncate(k);
            found
        })
        .collect()
}
