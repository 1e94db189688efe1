//! The energy: gradient against finite differences, finite and right for huge kappa, bad input refused.

use m2m_soc::energy::{energy, energy_grad, log_sum_exp};
use m2m_soc::{Error, Splats};

use crate::{rng, uniform, unit};

fn mixture(seed: u64, n: usize, dim: usize, kappa_max: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let mu: Vec<f32> = (0..n).flat_map(|_| unit(&mut r, dim)).collect();
    let kappa = (0..n).map(|_| (0.2 + uniform(&mut r) * kappa_max) as f32).collect();
    let alpha = (0..n).map(|_| (0.1 + uniform(&mut r) * 2.0) as f32).collect();
    (mu, kappa, alpha)
}

#[test]
fn the_gradient_matches_central_differences() {
    for (seed, dim) in [(1u64, 3usize), (2, 16), (3, 64)] {
        let (mu, kappa, alpha) = mixture(seed, 12, dim, 5.0);
        let s = Splats::new(dim, &mu, &kappa, &alpha).unwrap();
        let mut r = rng(seed + 100);
        // A point off the sphere too: the gradient is the one in R^d.
        let x: Vec<f32> = unit(&mut r, dim).iter().map(|v| v * 0.9).collect();
        let mut grad = vec![0f64; dim];
        let e = energy_grad(&x, &s, &mut grad).unwrap();
        assert!((e - energy(&x, &s).unwrap()).abs() < 1e-12);
        let h = 1e-3f32;
        for j in 0..dim {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[j] += h;
            minus[j] -= h;
            let step = f64::from(plus[j]) - f64::from(minus[j]);
            let fd = (energy(&plus, &s).unwrap() - energy(&minus, &s).unwrap()) / step;
            // Tolerance: 1e-3 relative to the gradient's largest component (h^2 error and f32 rounding).
            let scale = grad.iter().fold(1.0f64, |m, g| m.max(g.abs()));
            assert!((fd - grad[j]).abs() < 1e-3 * scale, "dim {dim} coordinate {j}: {fd} vs {}", grad[j]);
        }
    }
}

#[test]
fn the_energy_stays_finite_and_right_for_kappa_up_to_ten_thousand() {
    let dim = 8;
    let mut r = rng(7);
    let mu: Vec<f32> = (0..3).flat_map(|_| unit(&mut r, dim)).collect();
    let x = unit(&mut r, dim);
    for kappa in [1.0f32, 100.0, 1e3, 1e4] {
        let k = vec![kappa; 3];
        let alpha = vec![1.0f32, 2.0, 0.5];
        let s = Splats::new(dim, &mu, &k, &alpha).unwrap();
        let e = energy(&x, &s).unwrap();
        assert!(e.is_finite(), "kappa {kappa}: {e}");
        // For large kappa the nearest splat dominates: E -> min_i (kappa |x - mu_i|^2 - ln alpha_i).
        let nearest = (0..3)
            .map(|i| {
                let d2: f64 = x.iter().zip(&mu[i * dim..(i + 1) * dim]).map(|(a, b)| f64::from(a - b).powi(2)).sum();
                f64::from(kappa) * d2 - f64::from(alpha[i]).ln()
            })
            .fold(f64::INFINITY, f64::min);
        // (Tolerance: f32 rounding of the coordinates, 1e-6 relative.)
        let tol = 1e-6 * nearest.abs().max(1.0);
        assert!(e <= nearest + tol && e >= nearest - 3f64.ln() - tol, "kappa {kappa}: {e} vs {nearest}");
        let mut grad = vec![0f64; dim];
        energy_grad(&x, &s, &mut grad).unwrap();
        assert!(grad.iter().all(|g| g.is_finite()));
    }
    // log-sum-exp of huge negative terms is finite where a naive sum would give -inf.
    assert!((log_sum_exp(&[-4e4, -4e4]) - (-4e4 + 2f64.ln())).abs() < 1e-9);
}

#[test]
fn bad_input_is_refused_with_what_is_wrong() {
    let mu = [1.0f32, 0.0, 0.0, 1.0];
    assert!(matches!(
        Splats::new(2, &mu, &[1.0, 0.0], &[1.0, 1.0]),
        Err(Error::Invalid { what: "kappa", index: 1, .. })
    ));
    assert!(matches!(Splats::new(2, &mu, &[1.0, 1.0], &[1.0, f32::NAN]), Err(Error::Invalid { what: "alpha", .. })));
    assert!(matches!(Splats::new(2, &mu, &[1.0], &[1.0]), Err(Error::Length { what: "mu", .. })));
    assert!(matches!(Splats::new(2, &[], &[], &[]), Err(Error::Empty { .. })));
    let s = Splats::new(2, &mu, &[1.0, 2.0], &[1.0, 1.0]).unwrap();
    assert!(matches!(energy(&[1.0, 0.0, 0.0], &s), Err(Error::Length { what: "x", got: 3, expected: 2 })));
    assert!(matches!(energy(&[f32::NAN, 0.0], &s), Err(Error::Invalid { what: "x", .. })));
}
