//! The sandpile: avalanches are heavy-tailed near criticality and short far from it, weights respond to
//! use, and probabilities keep their floor.

use m2m_soc::soc::power_law_slope;
use m2m_soc::{Error, Sandpile, SiteGraph, SocConfig};

use crate::{rng, uniform, unit};

/// The 6-nearest-neighbour graph of `n` random points on S^15 (like the index's clusters, whose
/// centroids live in many dimensions).
fn graph(n: usize, seed: u64) -> SiteGraph {
    let mut r = rng(seed);
    let points: Vec<f32> = (0..n).flat_map(|_| unit(&mut r, 16)).collect();
    SiteGraph::knn(&points, 16, 6).unwrap()
}

fn avalanches(dissipation: f64, grains: usize) -> Vec<u32> {
    let mut pile = Sandpile::new(graph(2000, 1), SocConfig { dissipation, ..SocConfig::default() }).unwrap();
    let mut r = rng(2);
    for _ in 0..grains {
        let site = (uniform(&mut r) * 2000.0) as usize;
        pile.drive(site, 1.0).unwrap();
    }
    // Drop the transient while the pile fills up.
    let all = pile.avalanches();
    all[all.len() / 4..].to_vec()
}

#[test]
fn near_criticality_avalanche_sizes_follow_a_power_law() {
    // Dissipation 0.005 on a graph of many dimensions: the log-log slope of the size distribution over
    // sizes 1..300 lies in [-1.8, -1.2] around the mean-field exponent -1.5 (measured: -1.42), and
    // avalanches of hundreds of sites happen.
    let near = avalanches(0.005, 150_000);
    let slope = power_law_slope(&near, 1, 300).unwrap();
    assert!((-1.8..=-1.2).contains(&slope), "slope {slope}");
    let big = near.iter().filter(|&&s| s >= 300).count();
    assert!(big >= 20, "{big} avalanches of 300 or more topplings");

    // Far from it (dissipation 0.5) avalanches are short: none reaches 300 and the tail falls steeply.
    let far = avalanches(0.5, 150_000);
    assert!(far.iter().all(|&s| s < 300), "max {}", far.iter().max().unwrap());
    let share = |v: &[u32], s: u32| v.iter().filter(|&&x| x >= s).count() as f64 / v.len() as f64;
    assert!(share(&near, 30) > 10.0 * share(&far, 30), "{} vs {}", share(&near, 30), share(&far, 30));
}

#[test]
fn weights_respond_to_use_and_keep_their_floor() {
    let g = graph(200, 3);
    let neighbours: Vec<u32> = g.neighbours(0).to_vec();
    let mut pile = Sandpile::new(g, SocConfig::default()).unwrap();
    let before = pile.site_weights();
    pile.record_use(&vec![0u32; 500]).unwrap();
    let after = pile.site_weights();
    let median = {
        let mut w = after.clone();
        w.sort_by(f64::total_cmp);
        w[w.len() / 2]
    };
    assert!(after[0] > before[0] && after[0] > median, "the used site weighs more: {} vs median {median}", after[0]);
    let nb_mean = neighbours.iter().map(|&j| after[j as usize]).sum::<f64>() / neighbours.len() as f64;
    assert!(nb_mean > median, "its neighbours received load: {nb_mean} vs {median}");
    pile.tick();
    assert!(pile.site_weights()[0] < after[0], "activity decays");

    // Splats: 400 on 200 sites; higher kappa at the same site is drawn more; nothing below the floor.
    let site_of: Vec<u32> = (0..400).map(|i| (i % 200) as u32).collect();
    let kappa: Vec<f32> = (0..400).map(|i| if i < 200 { 2.0 } else { 20.0 }).collect();
    let p = pile.splat_probabilities(&site_of, &kappa).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(p.iter().all(|&q| q >= 0.1 / 400.0 - 1e-15));
    assert!(p[250] > p[50], "kappa 20 over kappa 2 at the same site");
    assert!(p[0] > p[1], "the used site's splat over another's");
}

#[test]
fn energy_drives_high_energy_sites() {
    let mut pile = Sandpile::new(graph(100, 4), SocConfig::default()).unwrap();
    let mut energies = vec![0.0f64; 100];
    energies[7] = 50.0;
    for _ in 0..20 {
        pile.drive_energy(&energies).unwrap();
    }
    assert!(pile.grains_in() > 0.0);
    let w = pile.site_weights();
    assert!(w[7] > w.iter().sum::<f64>() / 100.0, "the high-energy site is loaded");
}

#[test]
fn bad_input_is_refused() {
    assert!(matches!(SiteGraph::from_edges(0, &[]), Err(Error::Empty { .. })));
    assert!(matches!(SiteGraph::from_edges(2, &[(0, 2)]), Err(Error::Invalid { what: "edge", .. })));
    let g = SiteGraph::from_edges(3, &[(0, 1), (1, 2), (1, 1)]).unwrap();
    assert_eq!(g.neighbours(1), &[0, 2]);
    let bad = SocConfig { dissipation: 0.0, ..SocConfig::default() };
    assert!(matches!(Sandpile::new(g.clone(), bad), Err(Error::Invalid { what: "dissipation", .. })));
    let mut pile = Sandpile::new(g, SocConfig::default()).unwrap();
    assert!(matches!(pile.drive(3, 1.0), Err(Error::Invalid { what: "site", .. })));
    assert!(matches!(pile.drive(0, f64::NAN), Err(Error::Invalid { what: "grains", .. })));
    assert!(matches!(pile.drive_energy(&[1.0]), Err(Error::Length { .. })));
    assert!(matches!(pile.splat_probabilities(&[0, 9], &[1.0, 1.0]), Err(Error::Invalid { what: "site_of", .. })));
}
