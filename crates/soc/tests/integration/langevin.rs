//! Langevin dynamics: the stationary law of a single splat is the von Mises-Fisher law of concentration
//! 2 kappa / T; a two-splat mixture is visited in proportion to its weights; one step equals the exact
//! formula; runs are deterministic whatever the number of threads.

use m2m_soc::energy::energy_grad;
use m2m_soc::kappa::vmf_mean_resultant;
use m2m_soc::langevin::{Group, overdamped_step, run, uniform_on_sphere};
use m2m_soc::{Dynamics, Error, LangevinConfig, Method, Noise, Splats};

fn axis(dim: usize, k: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    v[k] = 1.0;
    v
}

/// Mean over chains of x . mu after the run.
fn mean_cos(x: &[f32], mu: &[f32]) -> f64 {
    let dim = mu.len();
    let n = x.len() / dim;
    x.chunks_exact(dim).map(|r| r.iter().zip(mu).map(|(a, b)| f64::from(a * b)).sum::<f64>()).sum::<f64>() / n as f64
}

fn single_splat(dim: usize, kappa: f32, config: LangevinConfig, chains: usize, seed: u64) -> f64 {
    let mu = axis(dim, 0);
    let (k, a) = ([kappa], [1.0f32]);
    let s = Splats::new(dim, &mu, &k, &a).unwrap();
    let mut x = uniform_on_sphere(chains, dim, seed);
    run(&config, &mut [Group { x: &mut x, splats: s }], seed).unwrap();
    mean_cos(&x, &mu)
}

#[test]
fn a_single_splat_is_sampled_as_its_von_mises_fisher_law() {
    // exp(-E / T) for one splat is a vMF of concentration 2 kappa / T: its mean resultant length is
    // A_p(2 kappa / T). Tolerance 0.015 (sampling error about 0.002 with these chains; O(dt) bias).
    // Both methods for Gaussian noise: the reduced one keeps 1 (d = 3) or 14 (d = 16) dimensions as a
    // radius and a chi-square.
    for (dim, kappa, t, noise, method) in [
        (3usize, 5.0f32, 1.0f32, Noise::Gaussian, Method::Full),
        (3, 5.0, 1.0, Noise::Gaussian, Method::Reduced),
        (16, 10.0, 1.0, Noise::Gaussian, Method::Full),
        (16, 10.0, 1.0, Noise::Gaussian, Method::Reduced),
        (16, 10.0, 2.0, Noise::Gaussian, Method::Full),
        (16, 10.0, 2.0, Noise::Gaussian, Method::Reduced),
        (16, 10.0, 1.0, Noise::Rademacher, Method::Full),
    ] {
        let config = LangevinConfig { steps: 3000, temperature: t, noise, method, ..LangevinConfig::default() };
        let got = single_splat(dim, kappa, config, 2000, 11);
        let want = vmf_mean_resultant(dim as f64, f64::from(2.0 * kappa / t));
        assert!((got - want).abs() < 0.015, "d {dim}, kappa {kappa}, T {t}, {noise:?}, {method:?}: {got} vs {want}");
    }
    // Underdamped, friction 2 (the default 0.1 mixes too slowly for a short test; the law is the same).
    let config = LangevinConfig {
        steps: 6000,
        dt: 2e-3,
        gamma: 2.0,
        dynamics: Dynamics::Underdamped,
        ..LangevinConfig::default()
    };
    let got = single_splat(16, 10.0, config, 2000, 12);
    let want = vmf_mean_resultant(16.0, 20.0);
    assert!((got - want).abs() < 0.02, "underdamped: {got} vs {want}");
}

#[test]
fn a_two_splat_mixture_is_visited_in_proportion_to_its_weights() {
    // mu_1 and mu_2 orthogonal in R^3, kappa 3 each, alpha 0.7 and 0.3, T = 1: exp(-E) is exactly the
    // mixture. The expected share of points nearer mu_1 comes from a Fibonacci-lattice quadrature of the
    // density over the sphere (200,000 points). Tolerance 0.03.
    let dim = 3;
    let mu = [axis(dim, 0), axis(dim, 1)].concat();
    let (kappa, alpha) = ([3.0f32, 3.0], [0.7f32, 0.3]);
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let density = |p: [f64; 3]| {
        (0..2)
            .map(|i| {
                let d2: f64 = (0..3).map(|j| (p[j] - f64::from(mu[i * 3 + j])).powi(2)).sum();
                f64::from(alpha[i]) * (-f64::from(kappa[i]) * d2).exp()
            })
            .sum::<f64>()
    };
    let n = 200_000;
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    let (mut near1, mut total) = (0.0, 0.0);
    for i in 0..n {
        let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
        let r = (1.0 - z * z).sqrt();
        let p = [r * (golden * i as f64).cos(), r * (golden * i as f64).sin(), z];
        let w = density(p);
        total += w;
        if p[0] > p[1] {
            near1 += w;
        }
    }
    let want = near1 / total;

    let mut x = uniform_on_sphere(2000, dim, 5);
    let config = LangevinConfig { steps: 2000, dt: 5e-3, ..LangevinConfig::default() };
    let mut share = 0.0;
    // Average over snapshots after a burn-in of 2,000 steps (10 time units, several crossings per chain).
    for round in 0..6 {
        run(&config, &mut [Group { x: &mut x, splats: s }], 100 + round).unwrap();
        if round >= 1 {
            share += x.chunks_exact(3).filter(|r| r[0] > r[1]).count() as f64 / 2000.0 / 5.0;
        }
    }
    assert!((share - want).abs() < 0.03, "share near mu_1: {share} vs {want}");
    assert!(want > 0.65 && want < 0.75, "quadrature {want}");
}

/// `n` random unit splats in `dim` dimensions with mixed kappa and alpha.
fn random_splats(dim: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = crate::rng(seed);
    let mu: Vec<f32> = (0..n).flat_map(|_| crate::unit(&mut r, dim)).collect();
    let kappa: Vec<f32> = (0..n).map(|i| 2.0 + (i % 5) as f32).collect();
    let alpha: Vec<f32> = (0..n).map(|i| 0.5 + (i % 3) as f32).collect();
    (mu, kappa, alpha)
}

#[test]
fn without_noise_the_reduced_method_follows_the_full_one() {
    // T = 0: both methods are the same deterministic map, one in 96 coordinates, the other in the
    // 41-dimensional span of 40 splats and the start. 30 steps of dt 0.02; tolerance 2e-4.
    let (dim, n) = (96, 40);
    let (mu, kappa, alpha) = random_splats(dim, n, 21);
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let start = uniform_on_sphere(70, dim, 4);
    let go = |method| {
        let mut x = start.clone();
        let config = LangevinConfig { steps: 30, dt: 0.02, temperature: 0.0, method, ..LangevinConfig::default() };
        run(&config, &mut [Group { x: &mut x, splats: s }], 1).unwrap();
        x
    };
    let (full, red) = (go(Method::Full), go(Method::Reduced));
    let moved = full.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 0.05, "the drift moves the chains ({moved})");
    let worst = full.iter().zip(&red).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-4, "largest difference {worst}");
    // Starts inside the span (the splats themselves) take the path without a direction of their own.
    let mut inside = mu[..8 * dim].to_vec();
    let mut inside_full = inside.clone();
    let config = LangevinConfig { steps: 30, dt: 0.02, temperature: 0.0, ..LangevinConfig::default() };
    let reduced = LangevinConfig { method: Method::Reduced, ..config };
    let full_cfg = LangevinConfig { method: Method::Full, ..config };
    run(&reduced, &mut [Group { x: &mut inside, splats: s }], 1).unwrap();
    run(&full_cfg, &mut [Group { x: &mut inside_full, splats: s }], 1).unwrap();
    let worst = inside.iter().zip(&inside_full).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-4, "inside the span: largest difference {worst}");
}

#[test]
fn with_noise_the_reduced_method_has_the_law_of_the_full_one() {
    // 4,000 chains from one start near a cluster of 6 splats in 48 dimensions, 12 steps of dt 0.01 at
    // T = 1: per splat, the mean and mean square of x . mu_j, and the mean square of the part of x off
    // the span, agree between the methods within 5 standard errors of the difference.
    let (dim, n, chains) = (48, 6, 4000);
    let mut r = crate::rng(33);
    let centre = crate::unit(&mut r, dim);
    let mu: Vec<f32> = (0..n)
        .flat_map(|_| {
            let v: Vec<f32> = crate::unit(&mut r, dim).iter().zip(&centre).map(|(a, c)| 0.4 * a + c).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(move |a| a / norm)
        })
        .collect();
    let (kappa, alpha) = (vec![8.0f32; n], vec![1.0f32; n]);
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let start: Vec<f32> = (0..chains).flat_map(|_| centre.iter().copied()).collect();
    let span = orthonormal(&mu, dim);
    let stats = |method, seed| {
        let mut x = start.clone();
        let config = LangevinConfig { steps: 12, dt: 0.01, method, ..LangevinConfig::default() };
        run(&config, &mut [Group { x: &mut x, splats: s }], seed).unwrap();
        // Per chain: x . mu_j for each j, x . centre, and the squared length of x off the splats' span.
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); 2 * n + 3];
        for row in x.chunks_exact(dim) {
            for j in 0..n {
                let c: f64 = row.iter().zip(&mu[j * dim..(j + 1) * dim]).map(|(a, b)| f64::from(a * b)).sum();
                out[j].push(c);
                out[n + j].push(c * c);
            }
            let c: f64 = row.iter().zip(&centre).map(|(a, b)| f64::from(a * b)).sum();
            out[2 * n].push(c);
            out[2 * n + 1].push(c * c);
            let mut p: Vec<f64> = row.iter().map(|&a| f64::from(a)).collect();
            for b in &span {
                let c: f64 = p.iter().zip(b).map(|(a, b)| a * b).sum();
                p.iter_mut().zip(b).for_each(|(a, b)| *a -= c * b);
            }
            out[2 * n + 2].push(p.iter().map(|a| a * a).sum());
        }
        out
    };
    let (full, red) = (stats(Method::Full, 5), stats(Method::Reduced, 6));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    for (k, (f, g)) in full.iter().zip(&red).enumerate() {
        let se = ((var(f) + var(g)) / chains as f64).sqrt();
        let (mf, mg) = (mean(f), mean(g));
        assert!((mf - mg).abs() < 5.0 * se + 1e-4, "statistic {k}: full {mf}, reduced {mg}, se {se}");
    }
    // The noise carries the chains well away from the start, so the comparison is not vacuous.
    let moved = mean(&full[2 * n]);
    assert!(moved < 0.9, "mean cos to the start {moved}");
    let off = mean(&full[2 * n + 2]);
    assert!(off > 0.05, "mean squared length off the span {off}");
}

#[test]
fn the_reduced_method_is_refused_where_it_does_not_hold() {
    let (mu, kappa, alpha) = random_splats(32, 4, 2);
    let s = Splats::new(32, &mu, &kappa, &alpha).unwrap();
    let mut x = uniform_on_sphere(3, 32, 1);
    for config in [
        LangevinConfig { method: Method::Reduced, dynamics: Dynamics::Underdamped, ..LangevinConfig::default() },
        LangevinConfig { method: Method::Reduced, noise: Noise::Rademacher, ..LangevinConfig::default() },
    ] {
        let r = run(&config, &mut [Group { x: &mut x, splats: s }], 0);
        assert!(matches!(r, Err(Error::Invalid { what: "method", .. })), "{r:?}");
    }
}

#[test]
fn one_step_equals_the_exact_formula() {
    // The batched kernel (two matrix products, f32) against x' = normalise(x - dt P grad E + sqrt(2 dt T)
    // P xi) with the exact f64 gradient. Tolerance 1e-4 per coordinate.
    let dim = 32;
    let mut r = crate::rng(3);
    let mu: Vec<f32> = (0..40).flat_map(|_| crate::unit(&mut r, dim)).collect();
    let kappa: Vec<f32> = (0..40).map(|i| 0.5 + (i % 7) as f32).collect();
    let alpha: Vec<f32> = (0..40).map(|i| 0.2 + (i % 3) as f32).collect();
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let x0: Vec<f32> = (0..9).flat_map(|_| crate::unit(&mut r, dim)).collect();
    let xi: Vec<f32> = (0..9 * dim).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let config = LangevinConfig { dt: 0.01, temperature: 0.5, ..LangevinConfig::default() };
    let mut x = x0.clone();
    overdamped_step(&config, &mut x, &s, &xi).unwrap();
    for c in 0..9 {
        let p = &x0[c * dim..(c + 1) * dim];
        let noise = &xi[c * dim..(c + 1) * dim];
        let mut g = vec![0f64; dim];
        energy_grad(p, &s, &mut g).unwrap();
        let gx: f64 = g.iter().zip(p).map(|(a, b)| a * f64::from(*b)).sum();
        let nx: f64 = noise.iter().zip(p).map(|(a, b)| f64::from(a * b)).sum();
        let (dt, t) = (f64::from(config.dt), f64::from(config.temperature));
        let mut next: Vec<f64> = (0..dim)
            .map(|j| {
                let pj = f64::from(p[j]);
                pj - dt * (g[j] - gx * pj) + (2.0 * dt * t).sqrt() * (f64::from(noise[j]) - nx * pj)
            })
            .collect();
        let norm = next.iter().map(|v| v * v).sum::<f64>().sqrt();
        next.iter_mut().for_each(|v| *v /= norm);
        for j in 0..dim {
            assert!((f64::from(x[c * dim + j]) - next[j]).abs() < 1e-4, "chain {c} coordinate {j}");
        }
    }
}

#[test]
fn runs_are_deterministic_whatever_the_thread_count() {
    let dim = 24;
    let mut r = crate::rng(9);
    let mu: Vec<f32> = (0..64).flat_map(|_| crate::unit(&mut r, dim)).collect();
    let (kappa, alpha) = (vec![4.0f32; 64], vec![1.0f32; 64]);
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let start = uniform_on_sphere(300, dim, 1);
    let config = LangevinConfig { steps: 50, ..LangevinConfig::default() };
    let go = |threads: usize, seed: u64| {
        let mut x = start.clone();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&config, &mut [Group { x: &mut x, splats: s }], seed)).unwrap();
        x
    };
    let one = go(1, 42);
    assert_eq!(one, go(2, 42));
    assert_ne!(one, go(2, 43));
    assert!(one.chunks_exact(dim).all(|r| (r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5));
}

#[test]
fn bad_chains_and_settings_are_refused() {
    let mu = axis(3, 0);
    let (k, a) = ([1.0f32], [1.0f32]);
    let s = Splats::new(3, &mu, &k, &a).unwrap();
    let mut off = vec![2.0f32, 0.0, 0.0];
    let r = run(&LangevinConfig::default(), &mut [Group { x: &mut off, splats: s }], 0);
    assert!(matches!(r, Err(Error::Invalid { what: "chain norm^2", .. })), "{r:?}");
    let mut ragged = vec![1.0f32, 0.0, 0.0, 1.0];
    assert!(matches!(
        run(&LangevinConfig::default(), &mut [Group { x: &mut ragged, splats: s }], 0),
        Err(Error::Length { .. })
    ));
    let mut x = axis(3, 1);
    let zero_dt = LangevinConfig { dt: 0.0, ..LangevinConfig::default() };
    assert!(matches!(run(&zero_dt, &mut [Group { x: &mut x, splats: s }], 0), Err(Error::Invalid { what: "dt", .. })));
    let hot = LangevinConfig { temperature: f32::NAN, ..LangevinConfig::default() };
    assert!(matches!(
        run(&hot, &mut [Group { x: &mut x, splats: s }], 0),
        Err(Error::Invalid { what: "temperature", .. })
    ));
    assert_eq!(x, axis(3, 1), "a refused run leaves the chains as they were");
}

/// An orthonormal basis (f64, Gram-Schmidt) of the span of `rows` (`dim` wide).
fn orthonormal(rows: &[f32], dim: usize) -> Vec<Vec<f64>> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for r in rows.chunks_exact(dim) {
        let mut v: Vec<f64> = r.iter().map(|&a| f64::from(a)).collect();
        for b in &basis {
            let c: f64 = v.iter().zip(b).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(b).for_each(|(a, b)| *a -= c * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            basis.push(v.iter().map(|a| a / n).collect());
        }
    }
    basis
}

#[test]
fn the_reduced_lift_is_uniform_off_the_span() {
    // Chains started at a splat stay in V = span(splats) except for the part the noise puts off it; the
    // reduced method draws that part's direction once, at the lift, and it must be uniform on the unit
    // sphere of V^perp: for 8 orthonormal directions e of V^perp, E[e . p] = 0 and E[(e . p)^2] =
    // 1 / dim(V^perp), with p the unit part of x off V, within 5 standard errors. The full method
    // passes the same test (so the test states the law, not the implementation), and a lift along a
    // fixed direction, or one that kept the part of the Gaussian inside V, would fail it.
    let (dim, n, chains) = (24, 5, 6000);
    let (mu, kappa, alpha) = random_splats(dim, n, 41);
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let v = orthonormal(&mu, dim);
    assert_eq!(v.len(), n);
    // Directions of V^perp: the standard axes with V projected out, orthonormalised after V.
    let mut all: Vec<f32> = v.iter().flat_map(|b| b.iter().map(|&a| a as f32)).collect();
    all.extend((0..8).flat_map(|k| axis(dim, k)));
    let perp: Vec<Vec<f64>> = orthonormal(&all, dim)[n..].to_vec();
    assert_eq!(perp.len(), 8);
    let want = 1.0 / (dim - n) as f64;
    for method in [Method::Reduced, Method::Full] {
        let mut x: Vec<f32> = (0..chains).flat_map(|c| mu[(c % n) * dim..(c % n + 1) * dim].to_vec()).collect();
        let config = LangevinConfig { steps: 6, dt: 0.01, method, ..LangevinConfig::default() };
        run(&config, &mut [Group { x: &mut x, splats: s }], 17).unwrap();
        let mut first = vec![Vec::with_capacity(chains); perp.len()];
        for row in x.chunks_exact(dim) {
            let mut p: Vec<f64> = row.iter().map(|&a| f64::from(a)).collect();
            for b in &v {
                let c: f64 = p.iter().zip(b).map(|(a, b)| a * b).sum();
                p.iter_mut().zip(b).for_each(|(a, b)| *a -= c * b);
            }
            let norm = p.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!(norm > 1e-4, "{method:?}: the noise leaves V");
            for (k, e) in perp.iter().enumerate() {
                first[k].push(p.iter().zip(e).map(|(a, b)| a * b).sum::<f64>() / norm);
            }
        }
        for (k, c) in first.iter().enumerate() {
            let m = c.iter().sum::<f64>() / chains as f64;
            let sq: Vec<f64> = c.iter().map(|a| a * a).collect();
            let m2 = sq.iter().sum::<f64>() / chains as f64;
            let var2 = sq.iter().map(|a| (a - m2).powi(2)).sum::<f64>() / (chains - 1) as f64;
            assert!(m.abs() < 5.0 * (want / chains as f64).sqrt(), "{method:?} direction {k}: mean {m}");
            assert!(
                (m2 - want).abs() < 5.0 * (var2 / chains as f64).sqrt(),
                "{method:?} direction {k}: {m2} vs {want}"
            );
        }
    }
}

#[test]
fn one_chain_runs_as_a_group_of_one_with_the_reduced_method() {
    // `run_one` is the reduced method without the block: for the same seed it must give `run`'s
    // result on a group of that one chain (same draws, float rounding apart), started inside the
    // splats' span (at a splat) or off it. Catches any difference between the two step or lift codes.
    let dim = 32;
    let mu = uniform_on_sphere(6, dim, 5);
    let kappa = [8.0f32, 12.0, 20.0, 9.0, 15.0, 30.0];
    let alpha = [1.0f32, 0.5, 2.0, 1.0, 1.5, 0.7];
    let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let off = uniform_on_sphere(1, dim, 9);
    for start in [mu[..dim].to_vec(), off] {
        let cfg = LangevinConfig { steps: 40, dt: 0.01, temperature: 0.3, ..LangevinConfig::default() };
        let mut a = start.clone();
        m2m_soc::langevin::run_one(&cfg, &s, &mut a, 21).unwrap();
        let mut b = start.clone();
        let reduced = LangevinConfig { method: Method::Reduced, ..cfg };
        run(&reduced, &mut [Group { x: &mut b, splats: s }], 21).unwrap();
        let gap = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(gap < 1e-4, "{gap}");
        assert!(mean_cos(&a, &start) < 0.999, "the chain moved");
    }
    // What it does not simulate is refused.
    let mut x = mu[..dim].to_vec();
    for cfg in [
        LangevinConfig { method: Method::Full, ..LangevinConfig::default() },
        LangevinConfig { dynamics: Dynamics::Underdamped, ..LangevinConfig::default() },
        LangevinConfig { noise: Noise::Rademacher, ..LangevinConfig::default() },
    ] {
        assert!(matches!(m2m_soc::langevin::run_one(&cfg, &s, &mut x, 1), Err(Error::Invalid { .. })), "{cfg:?}");
    }
    let mut short = vec![1.0f32; dim - 1];
    assert!(matches!(
        m2m_soc::langevin::run_one(&LangevinConfig::default(), &s, &mut short, 1),
        Err(Error::Length { .. })
    ));
}
