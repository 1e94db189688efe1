//! Concentrations from data: the vMF helpers against closed forms, the estimator on samples of known
//! concentration, the intrinsic dimension of known manifolds, and the whole path through an index.

use m2m_index::{Index, IndexConfig};
use m2m_soc::kappa::{
    KappaConfig, KappaDimension, intrinsic_dimension, kappa_from_neighbours, vmf_kappa, vmf_mean_resultant,
};
use m2m_soc::{Error, estimate_kappa};

use crate::{rng, uniform, unit};

#[test]
fn the_mean_resultant_length_matches_its_closed_form_and_inverts() {
    // On S^2, A_3(k) = coth(k) - 1/k. Tolerance 1e-10.
    for k in [0.3f64, 1.0, 5.0, 50.0, 400.0] {
        let want = 1.0 / k.tanh() - 1.0 / k;
        assert!((vmf_mean_resultant(3.0, k) - want).abs() < 1e-10, "k {k}");
    }
    // Banerjee's estimate inverts A_p to within 5% (its approximation error is largest for small p).
    for (p, k) in [(3.0f64, 10.0f64), (16.0, 20.0), (64.0, 100.0)] {
        let back = vmf_kappa(vmf_mean_resultant(p, k), p);
        assert!((back / k - 1.0).abs() < 0.05, "p {p} k {k}: {back}");
    }
}

/// `n` samples of a vMF on S^2 around `mu` with concentration `k` (Wood's method, exact for p = 3).
fn vmf_samples(r: &mut rand::rngs::Xoshiro256PlusPlus, mu: [f64; 3], k: f64, n: usize) -> Vec<f32> {
    let a = if mu[0].abs() < 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
    let dot = a[0] * mu[0] + a[1] * mu[1] + a[2] * mu[2];
    let mut e1 = [a[0] - dot * mu[0], a[1] - dot * mu[1], a[2] - dot * mu[2]];
    let l = (e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]).sqrt();
    e1.iter_mut().for_each(|v| *v /= l);
    let e2 = [mu[1] * e1[2] - mu[2] * e1[1], mu[2] * e1[0] - mu[0] * e1[2], mu[0] * e1[1] - mu[1] * e1[0]];
    let mut out = Vec::with_capacity(3 * n);
    for _ in 0..n {
        let u = uniform(r);
        let w = 1.0 + (u + (1.0 - u) * (-2.0 * k).exp()).ln() / k;
        let phi = 2.0 * std::f64::consts::PI * uniform(r);
        let s = (1.0 - w * w).max(0.0).sqrt();
        for j in 0..3 {
            out.push((w * mu[j] + s * (phi.cos() * e1[j] + phi.sin() * e2[j])) as f32);
        }
    }
    out
}

#[test]
fn the_estimator_recovers_a_known_concentration() {
    // Clusters of 1,000 vMF samples with kappa_vMF 6, 15 and 40; each row's neighbours are the other members
    // of its cluster, so r is the cluster's mean resultant length and the estimate, halved for the
    // energy's kernel, should be kappa_vMF / 2. Tolerance 10% (5% approximation error at p = 3, 3% sampling).
    let mut r = rng(21);
    let (n, k) = (1000usize, 999usize);
    let kappas = [6.0f64, 15.0, 40.0];
    let mut mu = Vec::new();
    for (c, &kv) in kappas.iter().enumerate() {
        let axis = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]][c];
        mu.extend(vmf_samples(&mut r, axis, kv, n));
    }
    let neighbours: Vec<u32> = (0..3 * n)
        .flat_map(|i| {
            let c = i / n;
            (c * n..(c + 1) * n).filter(move |&j| j != i).map(|j| j as u32)
        })
        .collect();
    let config =
        KappaConfig { dimension: KappaDimension::Ambient, max_kappa: 1e6, min_kappa: 1e-3, ..KappaConfig::default() };
    let est = kappa_from_neighbours(&mu, 3, &neighbours, k, &config).unwrap();
    assert_eq!(est.sphere_dimension, 3.0);
    for (c, &kv) in kappas.iter().enumerate() {
        let mean: f64 = est.kappa[c * n..(c + 1) * n].iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean / (kv / 2.0) - 1.0).abs() < 0.1, "kappa_vMF {kv}: estimated {mean}, want {}", kv / 2.0);
    }
    // Clipping to the default range, with counts.
    let clipped = kappa_from_neighbours(
        &mu,
        3,
        &neighbours,
        k,
        &KappaConfig { dimension: KappaDimension::Ambient, ..KappaConfig::default() },
    )
    .unwrap();
    assert!(clipped.kappa.iter().all(|&v| (1.0..=100.0).contains(&v)));
    assert_eq!(clipped.clipped_low + clipped.clipped_high, 0);
    // The bounds are per dimension of the sphere: 2.5 on S^2 (p - 1 = 2) clips at 5.
    let tight = KappaConfig { dimension: KappaDimension::Ambient, max_kappa: 2.5, ..KappaConfig::default() };
    let clipped = kappa_from_neighbours(&mu, 3, &neighbours, k, &tight).unwrap();
    assert_eq!(clipped.clipped_high, 2 * n, "the kappa 15 and 40 clusters exceed 5");
    assert!(clipped.kappa.iter().all(|&v| v <= 5.0 + 1e-4), "clipped at 2.5 x (p - 1) = 5");
}

/// Brute-force first and second nearest-neighbour chord distances.
fn two_nn(points: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = points.len() / dim;
    let mut r1 = Vec::new();
    let mut r2 = Vec::new();
    for i in 0..n {
        let mut best = [f64::INFINITY; 2];
        for j in (0..n).filter(|&j| j != i) {
            let d: f64 =
                (0..dim).map(|t| f64::from(points[i * dim + t] - points[j * dim + t]).powi(2)).sum::<f64>().sqrt();
            if d < best[0] {
                best = [d, best[0]];
            } else if d < best[1] {
                best[1] = d;
            }
        }
        r1.push(best[0]);
        r2.push(best[1]);
    }
    (r1, r2)
}

#[test]
fn the_intrinsic_dimension_of_known_spheres_is_found() {
    // Points uniform on S^m embedded in R^12 by a random orthonormal frame: TwoNN gives m (the sphere is
    // m-dimensional). Tolerance 15%.
    let ambient = 12;
    for m in [2usize, 5] {
        let mut r = rng(m as u64);
        // A random orthonormal frame of m + 1 vectors (Gram-Schmidt).
        let mut frame: Vec<Vec<f64>> = Vec::new();
        while frame.len() < m + 1 {
            let mut v: Vec<f64> = unit(&mut r, ambient).iter().map(|&a| f64::from(a)).collect();
            for f in &frame {
                let d: f64 = v.iter().zip(f).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(f).for_each(|(a, b)| *a -= d * b);
            }
            let l = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if l > 1e-3 {
                frame.push(v.iter().map(|a| a / l).collect());
            }
        }
        let points: Vec<f32> = (0..2000)
            .flat_map(|_| {
                let c = unit(&mut r, m + 1);
                (0..ambient)
                    .map(|t| c.iter().zip(&frame).map(|(a, f)| f64::from(*a) * f[t]).sum::<f64>() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (r1, r2) = two_nn(&points, ambient);
        let d = intrinsic_dimension(&r1, &r2).unwrap();
        assert!((d / m as f64 - 1.0).abs() < 0.15, "S^{m}: {d}");
    }
    assert_eq!(intrinsic_dimension(&[0.0, 1.0], &[1.0, 1.0]), None, "duplicates and ties give no estimate");
}

#[test]
fn kappa_through_an_index_on_the_digits_is_spread_over_the_range() {
    let config = m2m_splat::DigitsConfig { rows: 3000, queries: 0, dim: 64, ..Default::default() };
    let digits = m2m_splat::digits_on_sphere(&config).unwrap();
    let (mu, ids): (Vec<f32>, Vec<u64>) = (digits.base, (0..3000).collect());
    let index = Index::build(&IndexConfig::default().seed(1), 64, &mu, &ids).unwrap();
    let est = estimate_kappa(&index, &mu, &ids, &KappaConfig::default()).unwrap();
    assert_eq!(est.kappa.len(), ids.len());
    assert!(est.sphere_dimension >= 2.0 && est.sphere_dimension < 64.0, "p = {}", est.sphere_dimension);
    assert!(est.kappa.iter().all(|&k| (1.0..=50.0).contains(&k)));
    let mean = est.kappa.iter().map(|&k| f64::from(k)).sum::<f64>() / est.kappa.len() as f64;
    let sd = (est.kappa.iter().map(|&k| (f64::from(k) - mean).powi(2)).sum::<f64>() / est.kappa.len() as f64).sqrt();
    assert!(sd > 1.0, "kappa carries information: mean {mean}, sd {sd}");
    assert!(est.clipped_high < ids.len() / 2, "{} of {} at the top of the range", est.clipped_high, ids.len());
    // Alpha from local mass: mean 1 before clipping, within the clip range, and not uniform.
    assert_eq!(est.alpha.len(), ids.len());
    assert!(est.alpha.iter().all(|&a| (0.1..=10.0).contains(&a)));
    let mean_alpha = est.alpha.iter().map(|&a| f64::from(a)).sum::<f64>() / ids.len() as f64;
    assert!((mean_alpha - 1.0).abs() < 0.05, "mean alpha {mean_alpha}");
    assert!(est.alpha.iter().any(|&a| a > 1.5) && est.alpha.iter().any(|&a| a < 0.5));
}

#[test]
fn alpha_weighs_hubs_over_outliers() {
    // In-degrees 4, 4, 2, 0, 0: masses 5, 5, 3, 1, 1 over their mean 3.
    let mu = [1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8, 0.8, 0.6, -1.0, 0.0];
    let neighbours = [1u32, 2, 0, 2, 0, 1, 0, 1, 0, 1];
    let c = KappaConfig { dimension: KappaDimension::Ambient, ..KappaConfig::default() };
    let est = kappa_from_neighbours(&mu, 2, &neighbours, 2, &c).unwrap();
    assert!(est.alpha[0] > est.alpha[2] && est.alpha[2] > est.alpha[4], "{:?}", est.alpha);
    assert!((est.alpha[4] - 1.0 / 3.0).abs() < 1e-6, "mass 1 over mean 3: {:?}", est.alpha);
}

#[test]
fn bad_input_is_refused() {
    let mu = [1.0f32, 0.0, 0.0, 1.0];
    let c = KappaConfig::default();
    assert!(matches!(
        kappa_from_neighbours(&mu, 2, &[1, 5], 1, &c),
        Err(Error::Invalid { what: "neighbour", index: 1, .. })
    ));
    assert!(matches!(kappa_from_neighbours(&mu, 2, &[1], 1, &c), Err(Error::Length { .. })));
    let bad = KappaConfig { min_kappa: 60.0, ..KappaConfig::default() };
    assert!(matches!(kappa_from_neighbours(&mu, 2, &[1, 0], 1, &bad), Err(Error::Invalid { .. })));
    assert!(matches!(kappa_from_neighbours(&[], 2, &[], 1, &c), Err(Error::Empty { .. })));
}
