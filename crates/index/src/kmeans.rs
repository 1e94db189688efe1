//! k-means with k-means++ seeding and parallel Lloyd iterations, spherical or Euclidean.
//!
//! Determinism: the sample, the seeding and the re-seeding of empty clusters draw from one seeded RNG, and
//! the parallel sums are taken over fixed chunks of [`CHUNK`] rows and added in chunk order, so the result
//! does not depend on the number of threads or on scheduling.

use rand::seq::index::sample as sample_indices;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

use crate::kernels::{dots_many, l2_sq};

/// Rows per parallel work item; fixed so that results do not depend on the thread count.
const CHUNK: usize = 1024;

/// Settings of one k-means run.
#[derive(Clone, Debug)]
pub(crate) struct KMeans {
    pub(crate) k: usize,
    pub(crate) iters: usize,
    /// Normalise centroids after each update (spherical k-means, for cosine).
    pub(crate) spherical: bool,
    /// Train on at most this many rows (a seeded uniform sample); all rows are assigned at the end.
    pub(crate) max_train: usize,
    pub(crate) seed: u64,
}

/// Centroids (k x dim, row-major) and the centroid of every input row.
pub(crate) struct Clustering {
    pub(crate) centroids: Vec<f32>,
    pub(crate) assign: Vec<u32>,
}

/// Best centroid of each row of `data` by the k-means criterion: the largest `x . c` (spherical) or the
/// largest `x . c - |c|^2 / 2` (Euclidean). Ties go to the lower centroid index.
pub(crate) fn assign(data: &[f32], dim: usize, centroids: &[f32], spherical: bool) -> Vec<u32> {
    let k = centroids.len() / dim;
    let bias: Vec<f32> = if spherical {
        vec![0.0; k]
    } else {
        centroids.chunks_exact(dim).map(|c| -0.5 * crate::kernels::dot(c, c)).collect()
    };
    let mut out = vec![0u32; data.len() / dim];
    out.par_chunks_mut(CHUNK).zip(data.par_chunks(CHUNK * dim)).for_each(|(out, rows)| {
        // Score blocks of 64 rows against every centroid, then take each row's best.
        let mut scores = vec![0.0f32; 64 * k];
        for (out, rows) in out.chunks_mut(64).zip(rows.chunks(64 * dim)) {
            let n = rows.len() / dim;
            dots_many(rows, centroids, dim, &mut scores[..n * k]);
            for (o, s) in out.iter_mut().zip(scores.chunks_exact(k)) {
                let mut best = (f32::NEG_INFINITY, 0u32);
                for (j, (&v, &b)) in s.iter().zip(&bias).enumerate() {
                    let v = v + b;
                    if v > best.0 {
                        best = (v, j as u32);
                    }
                }
                *o = best.1;
            }
        }
    });
    out
}

impl KMeans {
    /// Clusters `data` (rows of `dim`). With fewer rows than `k`, k becomes the row count.
    pub(crate) fn run(&self, data: &[f32], dim: usize) -> Clustering {
        self.run_held_out(data, dim, |_| false)
    }

    /// Like [`run`](Self::run), but rows for which `held_out` is true take no part in training (they are
    /// still assigned), so that they can measure the clustering as unseen queries would.
    pub(crate) fn run_held_out(&self, data: &[f32], dim: usize, held_out: impl Fn(usize) -> bool) -> Clustering {
        let n = data.len() / dim;
        let trainable: Vec<usize> = (0..n).filter(|&i| !held_out(i)).collect();
        let trainable = if trainable.is_empty() { (0..n).collect() } else { trainable };
        let k = self.k.clamp(1, trainable.len().max(1));
        let mut rng = StdRng::seed_from_u64(self.seed);
        let rows: Vec<usize> = if trainable.len() > self.max_train {
            let mut idx = sample_indices(&mut rng, trainable.len(), self.max_train).into_vec();
            idx.sort_unstable();
            idx.into_iter().map(|i| trainable[i]).collect()
        } else {
            trainable
        };
        let train: Vec<f32> = rows.iter().flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied()).collect();
        let mut centroids = self.seed_plus_plus(&train, dim, k, &mut rng);
        for _ in 0..self.iters {
            let a = assign(&train, dim, &centroids, self.spherical);
            let moved = self.update(&train, dim, &a, &mut centroids, &mut rng);
            if !moved {
                break;
            }
        }
        let assign = assign(data, dim, &centroids, self.spherical);
        Clustering { centroids, assign }
    }

    /// k-means++: each next centre drawn with probability proportional to the squared distance to the
    /// nearest centre chosen so far.
    fn seed_plus_plus(&self, data: &[f32], dim: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
        let n = data.len() / dim;
        let mut centroids = Vec::with_capacity(k * dim);
        let first = rng.random_range(0..n);
        centroids.extend_from_slice(&data[first * dim..(first + 1) * dim]);
        let mut d2: Vec<f32> = data.par_chunks(dim).map(|x| l2_sq(x, &centroids[..dim])).collect();
        for _ in 1..k {
            let total: f64 = d2.iter().map(|&d| f64::from(d)).sum();
            let pick = if total > 0.0 {
                let mut target = rng.random_range(0.0..total);
                let mut chosen = n - 1;
                for (i, &d) in d2.iter().enumerate() {
                    target -= f64::from(d);
                    if target < 0.0 {
                        chosen = i;
                        break;
                    }
                }
                chosen
            } else {
                // Every row coincides with a centre: duplicates are all that is left.
                rng.random_range(0..n)
            };
            let c = data[pick * dim..(pick + 1) * dim].to_vec();
            d2.par_iter_mut().zip(data.par_chunks(dim)).for_each(|(d, x)| *d = d.min(l2_sq(x, &c)));
            centroids.extend_from_slice(&c);
        }
        centroids
    }

    /// Recomputes centroids from an assignment; empty clusters take half of the largest cluster.
    /// Returns whether any assignment-relevant centroid changed.
    fn update(&self, data: &[f32], dim: usize, assign: &[u32], centroids: &mut [f32], rng: &mut StdRng) -> bool {
        let k = centroids.len() / dim;
        let (sums, mut counts) = cluster_sums(data, dim, assign, k, |_| false);
        let old = centroids.to_vec();
        for j in 0..k {
            if counts[j] == 0 {
                continue;
            }
            let inv = 1.0 / f64::from(counts[j]);
            let c = &mut centroids[j * dim..(j + 1) * dim];
            for (c, &s) in c.iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
                *c = (s * inv) as f32;
            }
            if self.spherical {
                normalise_or_keep(c);
            }
        }
        // Empty clusters: split the largest cluster by placing a perturbed copy of its centroid.
        for j in 0..k {
            if counts[j] != 0 {
                continue;
            }
            let big = (0..k).max_by_key(|&i| counts[i]).unwrap_or(0);
            let src = centroids[big * dim..(big + 1) * dim].to_vec();
            for (i, &v) in src.iter().enumerate() {
                let eps = 1e-3 * (rng.random::<f32>() - 0.5);
                centroids[j * dim + i] = v * (1.0 + eps);
                centroids[big * dim + i] = v * (1.0 - eps);
            }
            if self.spherical {
                normalise_or_keep(&mut centroids[j * dim..(j + 1) * dim]);
                normalise_or_keep(&mut centroids[big * dim..(big + 1) * dim]);
            }
            counts[j] = counts[big] / 2;
            counts[big] -= counts[j];
        }
        centroids.iter().zip(&old).any(|(a, b)| (a - b).abs() > 1e-7)
    }
}

/// Per-cluster sums (f64) and counts of the rows of `data` under `assign`, leaving out rows for which
/// `skip(row)` is true. Partial sums are taken over fixed chunks of [`CHUNK`] rows in parallel and added in
/// chunk order, so the result does not depend on the thread count.
pub(crate) fn cluster_sums(
    data: &[f32],
    dim: usize,
    assign: &[u32],
    k: usize,
    skip: impl Fn(usize) -> bool + Sync,
) -> (Vec<f64>, Vec<u32>) {
    let partial: Vec<(Vec<f64>, Vec<u32>)> = data
        .par_chunks(CHUNK * dim)
        .zip(assign.par_chunks(CHUNK))
        .enumerate()
        .map(|(chunk, (rows, a))| {
            let mut sums = vec![0.0f64; k * dim];
            let mut counts = vec![0u32; k];
            for (i, (x, &c)) in rows.chunks_exact(dim).zip(a).enumerate() {
                if skip(chunk * CHUNK + i) {
                    continue;
                }
                counts[c as usize] += 1;
                sums[c as usize * dim..][..dim].iter_mut().zip(x).for_each(|(s, &v)| *s += f64::from(v));
            }
            (sums, counts)
        })
        .collect();
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0u32; k];
    for (s, c) in &partial {
        sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    (sums, counts)
}

fn normalise_or_keep(v: &mut [f32]) {
    let n = crate::kernels::dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        let inv = 1.0 / n;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well separated blobs: k-means must find one centroid per blob.
    fn blobs(per: usize, centers: &[Vec<f32>], seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for c in centers {
            for _ in 0..per {
                out.extend(c.iter().map(|&v| v + rng.random_range(-0.05f32..0.05)));
            }
        }
        out
    }

    #[test]
    fn finds_separated_blobs_and_is_deterministic() {
        let dim = 8;
        let centers: Vec<Vec<f32>> =
            (0..5).map(|i| (0..dim).map(|j| if j == i { 10.0 } else { 0.0 }).collect()).collect();
        let data = blobs(200, &centers, 1);
        let km = KMeans { k: 5, iters: 20, spherical: false, max_train: 10_000, seed: 3 };
        let a = km.run(&data, dim);
        let b = km.run(&data, dim);
        assert_eq!(a.assign, b.assign);
        assert_eq!(a.centroids, b.centroids);
        // Every blob maps to a single cluster, and the five clusters are distinct.
        let mut labels = Vec::new();
        for blob in a.assign.chunks(200) {
            assert!(blob.iter().all(|&c| c == blob[0]), "a blob was split");
            labels.push(blob[0]);
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), 5);
    }

    #[test]
    fn spherical_centroids_are_unit_and_sampling_still_assigns_all() {
        let dim = 16;
        let centers: Vec<Vec<f32>> =
            (0..4).map(|i| (0..dim).map(|j| if j % 4 == i { 1.0 } else { 0.0 }).collect()).collect();
        let data = blobs(500, &centers, 2);
        let km = KMeans { k: 4, iters: 10, spherical: true, max_train: 300, seed: 9 };
        let r = km.run(&data, dim);
        assert_eq!(r.assign.len(), 2_000);
        for c in r.centroids.chunks_exact(dim) {
            assert!((crate::kernels::dot(c, c) - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn more_clusters_than_rows_and_duplicates_do_not_panic() {
        let data = vec![1.0f32; 3 * 4];
        let r = KMeans { k: 10, iters: 5, spherical: false, max_train: 100, seed: 0 }.run(&data, 4);
        assert_eq!(r.centroids.len(), 3 * 4);
        assert_eq!(r.assign.len(), 3);
    }
}
