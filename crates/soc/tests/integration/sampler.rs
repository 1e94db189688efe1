//! The importance sampler: alias-table frequencies pass a chi-square test, epochs cover every row when
//! asked, weighted averages are unbiased, and everything is deterministic for a seed.

use m2m_soc::{AliasTable, Error, ImportanceSampler, SamplerConfig};

use crate::{rng, uniform};

/// The chi-square quantile for `k` degrees of freedom at the normal quantile `z` (Wilson-Hilferty).
fn chi2_quantile(k: f64, z: f64) -> f64 {
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + z * a.sqrt()).powi(3)
}

#[test]
fn alias_draws_follow_the_target_probabilities() {
    // 50 outcomes with weights from 0.1 to 10 (one of them 0), 1,000,000 draws: the chi-square statistic
    // stays below the 99.99% quantile (z = 3.719), and the zero-weight outcome is never drawn.
    let mut r = rng(5);
    let mut weights: Vec<f64> = (0..50).map(|_| 0.1 + 9.9 * uniform(&mut r)).collect();
    weights[17] = 0.0;
    let table = AliasTable::new(&weights).unwrap();
    let mut counts = vec![0u64; 50];
    let draws = 1_000_000;
    let mut g = rng(6);
    for _ in 0..draws {
        counts[table.sample(&mut g)] += 1;
    }
    assert_eq!(counts[17], 0);
    let total: f64 = weights.iter().sum();
    let chi2: f64 = (0..50)
        .filter(|&i| weights[i] > 0.0)
        .map(|i| {
            let e = draws as f64 * weights[i] / total;
            (counts[i] as f64 - e).powi(2) / e
        })
        .sum();
    let limit = chi2_quantile(48.0, 3.719);
    assert!(chi2 < limit, "chi-square {chi2} over {limit}");
    // And a biased table fails the same test: the test can fail.
    let wrong: f64 = (0..50)
        .filter(|&i| weights[i] > 0.0)
        .map(|i| {
            let e = draws as f64 / 49.0;
            (counts[i] as f64 - e).powi(2) / e
        })
        .sum();
    assert!(wrong > limit, "the uniform hypothesis should be rejected: {wrong}");
    let one = AliasTable::new(&[3.0]).unwrap();
    assert!((0..100).all(|_| one.sample(&mut g) == 0));
}

#[test]
fn epochs_cover_every_row_and_weights_are_unbiased() {
    // f is correlated with the probabilities (heavy rows have large f), so the plain average of the
    // draws is biased upwards (to about 7.7 against the true 3.25) and only the importance weights bring
    // it back: weights of 1 fail this test.
    let n = 500;
    let mut r = rng(8);
    let weights: Vec<f64> = (0..n).map(|i| if i % 10 == 0 { 20.0 } else { 0.5 + uniform(&mut r) }).collect();
    let f: Vec<f64> = (0..n).map(|i| if i % 10 == 0 { 10.0 } else { 2.5 + (i as f64 * 0.37).sin() }).collect();
    let truth = f.iter().sum::<f64>() / n as f64;
    for cover in [false, true] {
        let sampler = ImportanceSampler::new(&weights, SamplerConfig { cover, seed: 3, ..Default::default() }).unwrap();
        let m = sampler.epoch_size();
        assert_eq!(m, if cover { 2 * n } else { n });
        let (mut weighted, mut plain) = (0.0, 0.0);
        let epochs = 400;
        for e in 0..epochs {
            let plan = sampler.epoch(e);
            assert_eq!(plan.rows.len(), m);
            if cover {
                let mut seen = vec![false; n];
                plan.rows.iter().for_each(|&r| seen[r as usize] = true);
                assert!(seen.iter().all(|&s| s), "epoch {e} missed a row");
            }
            let est: f64 =
                plan.rows.iter().zip(&plan.weights).map(|(&r, &w)| f64::from(w) * f[r as usize]).sum::<f64>()
                    / m as f64;
            weighted += est / epochs as f64;
            plain += plan.rows.iter().map(|&r| f[r as usize]).sum::<f64>() / m as f64 / epochs as f64;
        }
        // Unbiased: the average of 400 epoch estimates is within 1% of the true mean; the unweighted
        // average is off by more than 30% (with cover less: half the epoch is the one-of-each pass).
        assert!((weighted / truth - 1.0).abs() < 0.01, "cover {cover}: {weighted} vs {truth}");
        assert!(plain / truth - 1.0 > 0.3, "cover {cover}: unweighted {plain} vs {truth} should be biased");
        // Heavy rows are drawn more often.
        let plan = sampler.epoch(0);
        let heavy = plan.rows.iter().filter(|&&r| r % 10 == 0).count() as f64 / m as f64;
        // The heavy tenth of the rows carries 69% of the probability: about that share of the draws (and
        // with cover, half the epoch is the one-of-each pass: (50 + 0.69 * 500) / 1000).
        let want = if cover { 0.395 } else { 0.69 };
        assert!((heavy - want).abs() < 0.05, "cover {cover}: heavy share {heavy}, want {want}");
    }
}

#[test]
fn epochs_are_deterministic_for_a_seed() {
    let weights: Vec<f64> = (1..=100).map(f64::from).collect();
    let a = ImportanceSampler::new(&weights, SamplerConfig { seed: 1, ..Default::default() }).unwrap();
    let b = ImportanceSampler::new(&weights, SamplerConfig { seed: 1, ..Default::default() }).unwrap();
    let c = ImportanceSampler::new(&weights, SamplerConfig { seed: 2, ..Default::default() }).unwrap();
    assert_eq!(a.epoch(4), b.epoch(4));
    assert_ne!(a.epoch(4), a.epoch(5));
    assert_ne!(a.epoch(4), c.epoch(4));
}

#[test]
fn bad_weights_and_settings_are_refused() {
    assert!(matches!(AliasTable::new(&[]), Err(Error::Empty { .. })));
    assert!(matches!(AliasTable::new(&[1.0, -1.0]), Err(Error::Invalid { what: "weight", index: 1, .. })));
    assert!(matches!(AliasTable::new(&[1.0, f64::NAN]), Err(Error::Invalid { index: 1, .. })));
    assert!(matches!(AliasTable::new(&[0.0, 0.0]), Err(Error::Invalid { what: "weights", .. })));
    let small = SamplerConfig { cover: true, epoch_size: Some(3), seed: 0 };
    assert!(matches!(ImportanceSampler::new(&[1.0; 5], small), Err(Error::Invalid { what: "epoch_size", .. })));
}
