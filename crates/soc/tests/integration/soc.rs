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

#[test]
fn losses_drive_their_sites_whatever_their_draw_rate() {
    // Two groups of 50 sites (the graph is sparse between random points, so both see avalanches from
    // the other): sites 0..50 are drawn 9 times as often as sites 50..100 but with a tenth of the loss.
    // With the draws' importance weights (1 / (N p), here 9 times smaller for the frequent group) the
    // rare, high-loss sites end heavier; without them (weights 1) the frequent sites' activity wins on
    // volume, which is the rich-get-richer loop the weights are there to break. The loss memory is a
    // loss per draw, which the draw rate does not inflate: it ranks the rare sites first either way.
    let run = |weighted: bool| {
        // Dissipation 0.3: grains travel a few sites before they are lost, so a site's activity says
        // more about its own drive than about the graph's (at 0.02 they cross the whole graph).
        let mut pile = Sandpile::new(graph(100, 5), SocConfig { dissipation: 0.3, ..SocConfig::default() }).unwrap();
        let mut r = rng(6);
        for _ in 0..200 {
            let (mut sites, mut losses, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..100 {
                let frequent = uniform(&mut r) < 0.9;
                let s = if frequent { (uniform(&mut r) * 50.0) as u32 } else { 50 + (uniform(&mut r) * 50.0) as u32 };
                sites.push(s);
                losses.push(if frequent { 0.1f32 } else { 1.0 });
                weights.push(if weighted { if frequent { 1.0 / 1.8 } else { 1.0 / 0.2 } } else { 1.0 });
            }
            pile.record_losses(&sites, &losses, &weights).unwrap();
            pile.tick();
        }
        let halves = |v: &[f64]| (v[..50].iter().sum::<f64>() / 50.0, v[50..].iter().sum::<f64>() / 50.0);
        (halves(&pile.site_weights()), halves(pile.activity()))
    };
    let ((frequent, rare), (frequent_a, rare_a)) = run(true);
    assert!(rare > 1.5 * frequent, "weighted: rare high-loss sites {rare} vs frequent {frequent}");
    assert!(rare_a > frequent_a, "weighted activity: rare {rare_a} vs frequent {frequent_a}");
    let ((frequent, rare), (frequent_a, rare_a)) = run(false);
    assert!(frequent_a > rare_a, "unweighted activity: frequent sites {frequent_a} vs rare {rare_a}");
    assert!(rare > frequent, "unweighted, with the loss memory: rare {rare} vs frequent {frequent}");
}

#[test]
fn losses_reach_their_own_sites_at_the_default_dissipation() {
    // At the default dissipation (0.02, near critical) a grain survives ~50 topplings and an avalanche
    // crosses the graph, so the activity that losses cause is spread over every site; the loss memory
    // keeps where they were. 100 sites; sites 0..10 hold rows of 10 times the others' loss and are
    // drawn at a fifth of the others' rate, with that rate's importance weights (the rare digits of
    // `bench-train`: few rows, low prior, high loss).
    let mut pile = Sandpile::new(graph(100, 5), SocConfig::default()).unwrap();
    let (p_hot, p_cold) = (0.2 / 92.0, 1.0 / 92.0);
    let mut r = rng(9);
    for _ in 0..100 {
        let (mut sites, mut losses, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..100 {
            let hot = uniform(&mut r) < 10.0 * p_hot;
            let s = if hot { (uniform(&mut r) * 10.0) as u32 } else { 10 + (uniform(&mut r) * 90.0) as u32 };
            sites.push(s.min(99));
            losses.push(if hot { 1.0f32 } else { 0.1 });
            weights.push(1.0 / (100.0 * if hot { p_hot } else { p_cold }));
        }
        pile.record_losses(&sites, &losses, &weights).unwrap();
        pile.tick();
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let w = pile.site_weights();
    let (hot, cold) = (mean(&w[..10]), mean(&w[10..]));
    assert!(hot > 4.0 * cold, "loss-driven weights: hot sites {hot} vs cold {cold}");
    // What the memory is for: the activity alone barely tells the hot sites from the cold ones.
    let a = pile.activity();
    let (hot_a, cold_a) = (mean(&a[..10]), mean(&a[10..]));
    assert!(hot_a < 2.0 * cold_a, "activity: hot sites {hot_a} vs cold {cold_a}");
    // The memory is saved and set back exactly.
    let (drawn, lossy) = pile.loss_memory();
    let mut back = Sandpile::restored(graph(100, 5), SocConfig::default(), pile.loads(), pile.activity()).unwrap();
    back.set_loss_memory(drawn, lossy).unwrap();
    assert_eq!(back.site_weights(), w);
    assert!(matches!(back.set_loss_memory(&drawn[1..], lossy), Err(Error::Length { .. })));
    let mut bad = drawn.to_vec();
    bad[3] = -1.0;
    assert!(matches!(back.set_loss_memory(&bad, lossy), Err(Error::Invalid { what: "drawn", index: 3, .. })));
}

#[test]
fn a_pile_is_restored_exactly_and_carried_over_onto_new_sites() {
    let mut pile = Sandpile::new(graph(60, 7), SocConfig::default()).unwrap();
    pile.record_use(&(0..600).map(|i| (i * 7 % 13) as u32).collect::<Vec<_>>()).unwrap();
    let back = Sandpile::restored(graph(60, 7), SocConfig::default(), pile.loads(), pile.activity()).unwrap();
    assert_eq!(back.site_weights(), pile.site_weights());
    // Carried over onto 30 sites, new site i taking old sites 2i and 2i + 1: the mean of their weights
    // (load relative to the threshold, and activity) is kept.
    let pairs: Vec<(u32, u32)> = (0..60).map(|o| (o, o / 2)).collect();
    let moved = Sandpile::carried_over(graph(30, 8), &pile, &pairs).unwrap();
    let (old, new) = (pile.site_weights(), moved.site_weights());
    for i in 0..30 {
        let want = (old[2 * i] + old[2 * i + 1]) / 2.0;
        assert!((new[i] - want).abs() < 1e-9, "site {i}: {} vs {want}", new[i]);
    }
    assert!(matches!(Sandpile::carried_over(graph(30, 8), &pile, &[(60, 0)]), Err(Error::Invalid { .. })));
    // The loss memory is carried over the same way: each new site takes the mean of its old sites'.
    pile.record_losses(&[0, 1, 1, 5], &[2.0, 1.0, 3.0, 0.5], &[1.0, 2.0, 2.0, 0.5]).unwrap();
    let moved = Sandpile::carried_over(graph(30, 8), &pile, &pairs).unwrap();
    let ((d_old, l_old), (d_new, l_new)) = (pile.loss_memory(), moved.loss_memory());
    for i in 0..30 {
        assert!((d_new[i] - (d_old[2 * i] + d_old[2 * i + 1]) / 2.0).abs() < 1e-12, "drawn, site {i}");
        assert!((l_new[i] - (l_old[2 * i] + l_old[2 * i + 1]) / 2.0).abs() < 1e-12, "lossy, site {i}");
    }
    assert!(d_new[0] > 0.0 && l_new[2] > 0.0, "the fed-back sites carry their memory: {d_new:?}");
    assert!(matches!(pile.record_losses(&[0], &[-1.0], &[1.0]), Err(Error::Invalid { what: "loss", .. })));
    assert!(matches!(pile.record_losses(&[0], &[1.0], &[0.0]), Err(Error::Invalid { what: "weight", .. })));
}

#[test]
fn the_site_mass_power_sets_how_much_a_site_s_size_draws() {
    // 20 sites: site 0 holds 1 splat of kappa 1 (a rare, sparse cluster), the others 10 splats of
    // kappa 10 each. At `site_mass_power` 1 a site's mass is its summed kappa (site 0: 1 / 1,901 of
    // it); at 0 every site has the same mass (1 / 20), shared within it by kappa. `probabilities_of`
    // (from per-site sums, what feedback uses) agrees with `splat_probabilities` at both. Catches the
    // exponent ignored (0 would equal 1) or applied to the splat instead of its site.
    let mut site_of = vec![0u32];
    let mut kappa = vec![1.0f32];
    for s in 1..20u32 {
        site_of.extend([s; 10]);
        kappa.extend((0..10).map(|i| if i == 0 { 19.0 } else { 9.0 }));
    }
    let sums: Vec<f64> = (0..20)
        .map(|s| site_of.iter().zip(&kappa).filter(|(t, _)| **t == s).map(|(_, &k)| f64::from(k)).sum())
        .collect();
    let site_mass =
        |p: &[f64], s: u32| -> f64 { site_of.iter().zip(p).filter(|(t, _)| **t == s).map(|(_, q)| q).sum() };
    for (power, rare) in [(1.0, 1.0 / 1_901.0), (0.0, 1.0 / 20.0)] {
        let config = SocConfig { site_mass_power: power, floor: 0.0, ..SocConfig::default() };
        let pile = Sandpile::new(graph(20, 4), config).unwrap();
        let p = pile.splat_probabilities(&site_of, &kappa).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "power {power}");
        assert!((site_mass(&p, 0) - rare).abs() < 1e-9, "power {power}: site 0 has {}", site_mass(&p, 0));
        // Within a site, kappa still shares the mass: 19 against 9.
        assert!((p[1] / p[2] - 19.0 / 9.0).abs() < 1e-9, "power {power}");
        let q = pile.probabilities_of(&site_of, &kappa, &sums, site_of.len()).unwrap();
        assert!(p.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-12), "power {power}");
    }
    let bad = SocConfig { site_mass_power: 1.5, ..SocConfig::default() };
    assert!(Sandpile::new(graph(20, 4), bad).is_err());
}

/// The k-nearest graph links each point to its k best by inner product (an f64 reference), across the
/// blocks the kernel scores at once (50 points: blocks of 16 and a partial one). Catches: a block's
/// points numbered from 0 instead of their offset, a point linked to itself, the worst taken for the
/// best.
#[test]
fn the_site_graph_links_each_point_to_its_nearest() {
    let mut r = rng(9);
    let n = 50;
    let points: Vec<f32> = (0..n).flat_map(|_| unit(&mut r, 16)).collect();
    let g = SiteGraph::knn(&points, 16, 3).unwrap();
    let dot = |i: usize, j: usize| -> f64 {
        points[i * 16..][..16].iter().zip(&points[j * 16..][..16]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()
    };
    for i in 0..n {
        let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        others.sort_by(|&a, &b| dot(i, b).total_cmp(&dot(i, a)));
        let linked: Vec<usize> = g.neighbours(i).iter().map(|&j| j as usize).collect();
        // Undirected: i's own 3 nearest are among its links, and every link is i's or names i.
        assert!(others[..3].iter().all(|j| linked.contains(j)), "point {i}: {linked:?}, nearest {:?}", &others[..3]);
        for &j in &linked {
            assert_ne!(j, i);
        }
    }
}
