//! Routing through an index: the routed energy is an upper bound of the exact one and close to it,
//! equal when every splat is routed, and routed groups drive Langevin chains.

use m2m_index::{Index, IndexConfig};
use m2m_soc::energy::energy;
use m2m_soc::langevin::{Group, run};
use m2m_soc::{LangevinConfig, Router, Splats};

#[test]
fn the_routed_energy_bounds_the_exact_one_and_stays_close() {
    let config = m2m_splat::DigitsConfig { rows: 3000, queries: 20, dim: 64, ..Default::default() };
    let d = m2m_splat::digits_on_sphere(&config).unwrap();
    let ids: Vec<u64> = (0..3000).collect();
    let index = Index::build(&IndexConfig::default().seed(2), 64, &d.base, &ids).unwrap();
    // Sharp kernels (kappa 30 to 50, the top of the default range): far splats carry little mass.
    let kappa: Vec<f32> = (0..3000).map(|i| 30.0 + (i % 21) as f32).collect();
    let alpha = vec![1.0f32; 3000];
    let router = Router::new(&index, |id| Some((kappa[id as usize], alpha[id as usize]))).unwrap();
    assert_eq!(router.cluster_of().len(), 3000);
    let all = Splats::new(64, &d.base, &kappa, &alpha).unwrap();
    for q in d.queries.chunks_exact(64) {
        let exact = energy(q, &all).unwrap();
        // Truncation drops positive terms: never below, and closer with more clusters. Tolerance 0.1
        // nats at 32 of the 218 clusters (measured: at most 0.075 over these 20 queries).
        let gaps: Vec<f64> = [4usize, 8, 16, 32].iter().map(|&p| router.energy(q, p, 4096).unwrap() - exact).collect();
        assert!(gaps.iter().all(|&g| g >= -1e-9), "{gaps:?}");
        assert!(gaps.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{gaps:?}");
        assert!(gaps[3] < 0.1, "{gaps:?}");
        let everything = router.energy(q, router.clusters(), 3000).unwrap();
        assert!((everything - exact).abs() < 1e-6, "{everything} vs {exact}");
    }

    // Langevin on routed groups: chains start at queries and move to lower energy at T = 0.
    let mut x = d.queries[..64 * 4].to_vec();
    let routed: Vec<_> = x.chunks_exact(64).map(|q| router.route(q, 8, 64).unwrap()).collect();
    let before: Vec<f64> = x.chunks_exact(64).map(|q| energy(q, &all).unwrap()).collect();
    let cold = LangevinConfig { temperature: 0.0, steps: 50, dt: 0.01, ..LangevinConfig::default() };
    let mut groups: Vec<Group<'_>> =
        x.chunks_mut(64).zip(&routed).map(|(x, r)| Group { x, splats: r.splats().unwrap() }).collect();
    run(&cold, &mut groups, 1).unwrap();
    for (q, b) in x.chunks_exact(64).zip(before) {
        assert!(energy(q, &all).unwrap() < b, "gradient descent lowers the energy");
    }
}
