//! The self-organised-criticality controller: a sandpile over a graph of sites (the index's fine
//! clusters, linked to their nearest clusters) whose loads set importance weights.
//!
//! Each site i holds a load z_i and a threshold theta_i = deg(i) (as in the Bak-Tang-Wiesenfeld model).
//! Load arrives with use (a retrieval hit or a drawn sample adds one grain to its site) and with energy
//! (a site of high energy, which the model explains badly, is driven harder). A site whose load reaches
//! its threshold topples: it loses theta_i and each neighbour receives (1 - dissipation) grains; the
//! neighbours may topple in turn, and so on: an avalanche, whose size (the number of topplings) is
//! recorded. With slow driving and a small dissipation the pile organises itself to the critical state,
//! where avalanche sizes follow a power law (tested: the log-log slope of their distribution); a large
//! dissipation makes them short and exponentially rare (also tested).
//!
//! Importance: a site's weight is (1 + z_i / theta_i + activity_i) l_i, where activity counts recent
//! topplings (decayed by [`Sandpile::tick`]) and l_i is the site's loss factor (below); a splat's weight
//! is its site's weight times kappa^power (high kappa and high load are sampled more), and
//! [`Sandpile::splat_probabilities`] mixes in a uniform floor so that nothing starves.
//!
//! Training losses ([`Sandpile::record_losses`]) drive the pile like any use, but near the critical
//! state an avalanche crosses the whole graph (a grain survives about 1 / dissipation topplings), so
//! the activity they cause is spread over every site and says almost nothing about where the losses
//! were (measured: `cargo xtask bench train --diagnose` drew the rare, high-loss digits at 0.7 of
//! their uniform rate all through training, their loss 10 to 30 times the others'). So each site
//! also keeps its own memory of the losses fed back there, without avalanches: importance-weighted
//! sums of draws D_i and of relative losses R_i (both decayed by `tick`), and the loss factor
//! l_i = (1 + g R_i / D_i) / (1 + g) (g = `loss_gain`; 1 before any feedback), which is about 1 at
//! a site of average loss, up to g / (1 + g) times its relative loss above, and at least 1 / (1 + g).

use m2m_index::kernels;
use rayon::prelude::*;

use crate::error::{check_len, check_setting, check_values};
use crate::{Error, Result};

/// An undirected graph of sites in compressed rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteGraph {
    offsets: Vec<u32>,
    neighbours: Vec<u32>,
}

impl SiteGraph {
    /// The graph of `n` sites with these undirected edges (self-loops and repeats dropped).
    pub fn from_edges(n: usize, edges: &[(u32, u32)]) -> Result<SiteGraph> {
        if n == 0 {
            return Err(Error::Empty { what: "sites" });
        }
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (index, &(a, b)) in edges.iter().enumerate() {
            if a as usize >= n || b as usize >= n {
                return Err(Error::Invalid { what: "edge", index, value: f64::from(a.max(b)), reason: "not a site" });
            }
            if a != b {
                adj[a as usize].push(b);
                adj[b as usize].push(a);
            }
        }
        let mut offsets = Vec::with_capacity(n + 1);
        let mut neighbours = Vec::new();
        offsets.push(0);
        for mut list in adj {
            list.sort_unstable();
            list.dedup();
            neighbours.extend(list);
            offsets.push(neighbours.len() as u32);
        }
        Ok(SiteGraph { offsets, neighbours })
    }

    /// Each of the `points` (row-major, `dim` wide, e.g. the index's fine centroids) linked to its `k`
    /// most similar others by inner product, made undirected.
    pub fn knn(points: &[f32], dim: usize, k: usize) -> Result<SiteGraph> {
        if dim == 0 || points.is_empty() {
            return Err(Error::Empty { what: "points" });
        }
        let n = points.len() / dim;
        check_len("points", points.len(), n * dim)?;
        check_values("points", points, false)?;
        // The cost is n^2 d: with n = 4 sqrt(N) fine centroids of an index over N rows, 16 N d, which
        // made this most of a 5M-row engine's open (25 s of 40, one thread, one point at a time). Blocks of
        // points are scored against all of them by the many-against-many kernel, blocks in parallel; the
        // edges come out in point order whatever the threads.
        let edges: Vec<Vec<(u32, u32)>> = points
            .par_chunks(KNN_BLOCK * dim)
            .enumerate()
            .map(|(b, block)| {
                let m = block.len() / dim;
                let mut scores = vec![0f32; m * n];
                kernels::dots_many(block, points, dim, &mut scores);
                let mut order: Vec<u32> = Vec::with_capacity(n);
                let mut out = Vec::with_capacity(m * k);
                for (r, scores) in scores.chunks_exact(n).enumerate() {
                    let i = b * KNN_BLOCK + r;
                    order.clear();
                    order.extend((0..n as u32).filter(|&j| j as usize != i));
                    let k = k.min(order.len());
                    if k > 0 {
                        order.select_nth_unstable_by(k - 1, |&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
                        out.extend(order[..k].iter().map(|&j| (i as u32, j)));
                    }
                }
                out
            })
            .collect();
        SiteGraph::from_edges(n, &edges.concat())
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Always false: a graph has at least one site.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The neighbours of site `i`.
    pub fn neighbours(&self, i: usize) -> &[u32] {
        &self.neighbours[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// Points scored at once by [`SiteGraph::knn`].
const KNN_BLOCK: usize = 16;

/// Settings of the controller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SocConfig {
    /// Fraction of each toppled grain lost instead of passed on, in (0, 1) (default 0.02: near critical).
    pub dissipation: f64,
    /// Grains added per unit of (normalised) energy by [`Sandpile::drive_energy`] (default 1).
    pub energy_gain: f64,
    /// Factor applied to the activity counters by [`Sandpile::tick`] (default 0.9).
    pub activity_decay: f64,
    /// Exponent of kappa in a splat's weight (default 1).
    pub kappa_power: f64,
    /// Exponent, in [0, 1], of a site's summed splat weights (sum of kappa^`kappa_power`) in its
    /// prior mass (default 1). At 1 each splat's prior is its own weight, so a site's mass grows with
    /// its number of splats and their kappa: a rare cluster (few rows, sparse, so low kappa) is drawn
    /// less than its share of the rows. At 0 every site has the same prior mass (times its site
    /// weight from the pile), shared among its splats by weight: rare clusters are drawn more. The
    /// importance weights 1 / (N p) keep estimates unbiased either way.
    pub site_mass_power: f64,
    /// Share of the probability spread uniformly over all splats, in [0, 1] (default 0.1).
    pub floor: f64,
    /// Grains per unit of relative loss in [`Sandpile::record_losses`] (default 4).
    pub loss_gain: f64,
}

impl Default for SocConfig {
    fn default() -> Self {
        SocConfig {
            dissipation: 0.02,
            energy_gain: 1.0,
            activity_decay: 0.9,
            kappa_power: 1.0,
            site_mass_power: 1.0,
            floor: 0.1,
            loss_gain: 4.0,
        }
    }
}

impl SocConfig {
    /// Refuses values outside their ranges.
    pub fn validate(&self) -> Result<()> {
        check_setting("dissipation", self.dissipation, 1e-9, 1.0 - 1e-9)?;
        check_setting("energy_gain", self.energy_gain, 0.0, 1e9)?;
        check_setting("activity_decay", self.activity_decay, 0.0, 1.0)?;
        check_setting("kappa_power", self.kappa_power, 0.0, 16.0)?;
        check_setting("site_mass_power", self.site_mass_power, 0.0, 1.0)?;
        check_setting("floor", self.floor, 0.0, 1.0)?;
        check_setting("loss_gain", self.loss_gain, 0.0, 1e9)
    }
}

/// The sandpile and its statistics.
#[derive(Clone, Debug)]
pub struct Sandpile {
    graph: SiteGraph,
    config: SocConfig,
    load: Vec<f64>,
    threshold: Vec<f64>,
    activity: Vec<f64>,
    /// Importance-weighted draws fed back at each site ([`Sandpile::record_losses`]), decayed by `tick`.
    drawn: Vec<f64>,
    /// Importance-weighted relative losses fed back at each site, decayed by `tick`.
    lossy: Vec<f64>,
    avalanches: Vec<u32>,
    stack: Vec<u32>,
    grains_in: f64,
}

impl Sandpile {
    /// An empty pile over `graph`.
    pub fn new(graph: SiteGraph, config: SocConfig) -> Result<Sandpile> {
        config.validate()?;
        let n = graph.len();
        // An isolated site keeps a threshold of 1 and loses its grains when it topples.
        let threshold = (0..n).map(|i| graph.neighbours(i).len().max(1) as f64).collect();
        Ok(Sandpile {
            graph,
            config,
            load: vec![0.0; n],
            threshold,
            activity: vec![0.0; n],
            drawn: vec![0.0; n],
            lossy: vec![0.0; n],
            avalanches: Vec::new(),
            stack: Vec::new(),
            grains_in: 0.0,
        })
    }

    /// The graph.
    pub fn graph(&self) -> &SiteGraph {
        &self.graph
    }

    /// Adds `grains` to `site` and relaxes the pile; returns the avalanche's size (topplings), which is
    /// also recorded. Sizes of 0 (no toppling) are not recorded.
    pub fn drive(&mut self, site: usize, grains: f64) -> Result<u32> {
        if site >= self.load.len() {
            return Err(Error::Invalid { what: "site", index: site, value: site as f64, reason: "not a site" });
        }
        if !(grains.is_finite() && grains >= 0.0) {
            return Err(Error::Invalid {
                what: "grains",
                index: site,
                value: grains,
                reason: "must be finite and >= 0",
            });
        }
        self.grains_in += grains;
        self.load[site] += grains;
        let size = self.relax(site);
        if size > 0 {
            self.avalanches.push(size);
        }
        Ok(size)
    }

    /// One grain per use of a site (retrieval hits, samples drawn); returns the topplings caused.
    pub fn record_use(&mut self, sites: &[u32]) -> Result<u64> {
        sites.iter().try_fold(0u64, |acc, &s| Ok(acc + u64::from(self.drive(s as usize, 1.0)?)))
    }

    /// Training feedback: row `r` (at site `sites[r]`, drawn with importance weight `weights[r]`)
    /// adds `weights[r]` (1 + `loss_gain` `losses[r]` / mean loss) grains at its site: one for the draw and
    /// more the worse the model does on it, relative to the call's mean loss (so the scale of the loss
    /// does not matter). The importance weight makes each site's drive an unbiased estimate of its
    /// total relative loss whatever its sampling probability; without it rows drawn often would drive
    /// their sites more and be drawn more still. The same weighted draw and relative loss go into the
    /// site's loss memory (the loss factor of [`site_weights`](Self::site_weights)), where no
    /// avalanche spreads them. Losses must be finite and >= 0, weights finite and > 0. Returns the
    /// topplings.
    pub fn record_losses(&mut self, sites: &[u32], losses: &[f32], weights: &[f64]) -> Result<u64> {
        check_len("losses", losses.len(), sites.len())?;
        check_len("weights", weights.len(), sites.len())?;
        if let Some(index) = losses.iter().position(|l| !(l.is_finite() && *l >= 0.0)) {
            return Err(Error::Invalid {
                what: "loss",
                index,
                value: f64::from(losses[index]),
                reason: "must be finite and >= 0",
            });
        }
        if let Some(index) = weights.iter().position(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(Error::Invalid {
                what: "weight",
                index,
                value: weights[index],
                reason: "must be finite and > 0",
            });
        }
        if let Some(index) = sites.iter().position(|&s| s as usize >= self.load.len()) {
            return Err(Error::Invalid { what: "site", index, value: f64::from(sites[index]), reason: "not a site" });
        }
        let mean = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len().max(1) as f64;
        let mut total = 0u64;
        for ((&s, &l), &w) in sites.iter().zip(losses).zip(weights) {
            let relative = if mean > 0.0 { f64::from(l) / mean } else { 0.0 };
            self.drawn[s as usize] += w;
            self.lossy[s as usize] += w * relative;
            total += u64::from(self.drive(s as usize, w * (1.0 + self.config.loss_gain * relative))?);
        }
        Ok(total)
    }

    /// The probabilities [`splat_probabilities`](Self::splat_probabilities) gives splats of
    /// concentrations `kappa` at `sites`, from the sum of kappa^`kappa_power` over each site's splats
    /// (`kappa_sums`) and their number `n`, without visiting every splat.
    pub fn probabilities_of(&self, sites: &[u32], kappa: &[f32], kappa_sums: &[f64], n: usize) -> Result<Vec<f64>> {
        check_len("kappa_sums", kappa_sums.len(), self.load.len())?;
        check_len("kappa", kappa.len(), sites.len())?;
        if let Some(index) = sites.iter().position(|&s| s as usize >= self.load.len()) {
            return Err(Error::Invalid { what: "site", index, value: f64::from(sites[index]), reason: "not a site" });
        }
        let weights = self.site_weights();
        let e = self.config.site_mass_power;
        // Site s holds mass w_s K_s^e, shared among its splats in proportion to kappa^power.
        let total: f64 = weights.iter().zip(kappa_sums).map(|(w, &k)| if k > 0.0 { w * k.powf(e) } else { 0.0 }).sum();
        let floor = self.config.floor;
        Ok(sites
            .iter()
            .zip(kappa)
            .map(|(&s, &k)| {
                let ks = kappa_sums[s as usize].max(f64::MIN_POSITIVE);
                let raw = weights[s as usize] * f64::from(k).powf(self.config.kappa_power) * ks.powf(e - 1.0);
                (1.0 - floor) * raw / total.max(f64::MIN_POSITIVE) + floor / n.max(1) as f64
            })
            .collect())
    }

    /// The pile over `graph` carried over from `old` through `pairs` (old site, new site): each new
    /// site takes the mean relative load (load / threshold), the mean activity and the mean loss
    /// memory of the old sites paired with it (rows that moved between them), so that a rebuilt index
    /// keeps what training taught the controller. New sites without a pair start empty.
    pub fn carried_over(graph: SiteGraph, old: &Sandpile, pairs: &[(u32, u32)]) -> Result<Sandpile> {
        let mut pile = Sandpile::new(graph, old.config)?;
        let n = pile.load.len();
        let (mut rel, mut act, mut count) = (vec![0f64; n], vec![0f64; n], vec![0u64; n]);
        let (mut drawn, mut lossy) = (vec![0f64; n], vec![0f64; n]);
        for (index, &(o, s)) in pairs.iter().enumerate() {
            let (o, s) = (o as usize, s as usize);
            if o >= old.load.len() || s >= n {
                return Err(Error::Invalid { what: "site pair", index, value: o.max(s) as f64, reason: "not a site" });
            }
            rel[s] += old.load[o] / old.threshold[o];
            act[s] += old.activity[o];
            drawn[s] += old.drawn[o];
            lossy[s] += old.lossy[o];
            count[s] += 1;
        }
        for s in 0..n {
            if count[s] > 0 {
                let c = count[s] as f64;
                // Below the threshold, as a relaxed pile is.
                pile.load[s] = (rel[s] / c).min(1.0 - 1e-9) * pile.threshold[s];
                pile.activity[s] = act[s] / c;
                pile.drawn[s] = drawn[s] / c;
                pile.lossy[s] = lossy[s] / c;
            }
        }
        pile.grains_in = old.grains_in;
        Ok(pile)
    }

    /// The pile over `graph` with these loads and activities (a saved state, see [`Sandpile::loads`]
    /// and [`Sandpile::activity`]); loads at or above their threshold are relaxed.
    pub fn restored(graph: SiteGraph, config: SocConfig, loads: &[f64], activity: &[f64]) -> Result<Sandpile> {
        let mut pile = Sandpile::new(graph, config)?;
        check_len("loads", loads.len(), pile.load.len())?;
        check_len("activity", activity.len(), pile.load.len())?;
        for (what, v) in [("load", loads), ("activity", activity)] {
            if let Some(index) = v.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(Error::Invalid { what, index, value: v[index], reason: "must be finite and >= 0" });
            }
        }
        pile.load.copy_from_slice(loads);
        pile.activity.copy_from_slice(activity);
        for s in 0..pile.load.len() {
            pile.relax(s);
        }
        pile.avalanches.clear();
        Ok(pile)
    }

    /// The activity counters (recent topplings, decayed by [`tick`](Self::tick)).
    pub fn activity(&self) -> &[f64] {
        &self.activity
    }

    /// The loss memory: each site's importance-weighted draws and relative losses fed back there
    /// (decayed by [`tick`](Self::tick)), what its loss factor is made of (see the module docs).
    pub fn loss_memory(&self) -> (&[f64], &[f64]) {
        (&self.drawn, &self.lossy)
    }

    /// Sets the loss memory (a saved state, see [`loss_memory`](Self::loss_memory)); both finite and
    /// >= 0, one value per site.
    pub fn set_loss_memory(&mut self, drawn: &[f64], lossy: &[f64]) -> Result<()> {
        check_len("drawn", drawn.len(), self.load.len())?;
        check_len("lossy", lossy.len(), self.load.len())?;
        for (what, v) in [("drawn", drawn), ("lossy", lossy)] {
            if let Some(index) = v.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(Error::Invalid { what, index, value: v[index], reason: "must be finite and >= 0" });
            }
        }
        self.drawn.copy_from_slice(drawn);
        self.lossy.copy_from_slice(lossy);
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &SocConfig {
        &self.config
    }

    /// Drives every site with `energy_gain` grains per unit of its energy above the mean, in units of
    /// the energies' standard deviation (so the scale of E does not matter); returns the topplings.
    pub fn drive_energy(&mut self, energies: &[f64]) -> Result<u64> {
        check_len("energies", energies.len(), self.load.len())?;
        if let Some(index) = energies.iter().position(|e| !e.is_finite()) {
            return Err(Error::Invalid { what: "energy", index, value: energies[index], reason: "must be finite" });
        }
        let n = energies.len() as f64;
        let mean = energies.iter().sum::<f64>() / n;
        let sd = (energies.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
        let mut total = 0u64;
        for (i, e) in energies.iter().enumerate() {
            let grains = self.config.energy_gain * ((e - mean) / sd).max(0.0);
            total += u64::from(self.drive(i, grains)?);
        }
        Ok(total)
    }

    fn relax(&mut self, start: usize) -> u32 {
        let mut size = 0u32;
        self.stack.clear();
        if self.load[start] >= self.threshold[start] {
            self.stack.push(start as u32);
        }
        let pass = 1.0 - self.config.dissipation;
        while let Some(i) = self.stack.pop() {
            let i = i as usize;
            while self.load[i] >= self.threshold[i] {
                self.load[i] -= self.threshold[i];
                self.activity[i] += 1.0;
                size = size.saturating_add(1);
                for &j in self.graph.neighbours(i) {
                    let j = j as usize;
                    let was_below = self.load[j] < self.threshold[j];
                    self.load[j] += pass;
                    if was_below && self.load[j] >= self.threshold[j] {
                        self.stack.push(j as u32);
                    }
                }
            }
        }
        size
    }

    /// Ages the activity counters and the loss memory (call once per epoch or batch of queries).
    pub fn tick(&mut self) {
        let decay = self.config.activity_decay;
        for v in [&mut self.activity, &mut self.drawn, &mut self.lossy] {
            v.iter_mut().for_each(|a| *a *= decay);
        }
    }

    /// The sizes of every avalanche so far, in order.
    pub fn avalanches(&self) -> &[u32] {
        &self.avalanches
    }

    /// The loads.
    pub fn loads(&self) -> &[f64] {
        &self.load
    }

    /// Grains added so far.
    pub fn grains_in(&self) -> f64 {
        self.grains_in
    }

    /// Each site's weight: (1 + load / threshold + activity) times its loss factor (1 + g R / D) / (1 +
    /// g), 1 where no draw was fed back (see the module docs).
    pub fn site_weights(&self) -> Vec<f64> {
        let g = self.config.loss_gain;
        (0..self.load.len())
            .map(|i| {
                let loss =
                    if self.drawn[i] > 0.0 { (1.0 + g * self.lossy[i] / self.drawn[i]) / (1.0 + g) } else { 1.0 };
                (1.0 + self.load[i] / self.threshold[i] + self.activity[i]) * loss
            })
            .collect()
    }

    /// Sampling probabilities of splats: splat r (at site `site_of[r]`, concentration `kappa[r]`) gets
    /// (1 - floor) site_weight * kappa^power * K^(e - 1) / sum + floor / N, where K is the sum of
    /// kappa^power over the splats of its site and e the `site_mass_power`.
    pub fn splat_probabilities(&self, site_of: &[u32], kappa: &[f32]) -> Result<Vec<f64>> {
        check_len("kappa", kappa.len(), site_of.len())?;
        if site_of.is_empty() {
            return Err(Error::Empty { what: "splats" });
        }
        check_values("kappa", kappa, true)?;
        if let Some(index) = site_of.iter().position(|&s| s as usize >= self.load.len()) {
            return Err(Error::Invalid {
                what: "site_of",
                index,
                value: f64::from(site_of[index]),
                reason: "not a site",
            });
        }
        let sites = self.site_weights();
        let own: Vec<f64> = kappa.iter().map(|&k| f64::from(k).powf(self.config.kappa_power)).collect();
        let mut sums = vec![0f64; sites.len()];
        for (&s, &o) in site_of.iter().zip(&own) {
            sums[s as usize] += o;
        }
        let e = self.config.site_mass_power;
        let raw: Vec<f64> = site_of
            .iter()
            .zip(&own)
            .map(|(&s, &o)| sites[s as usize] * o * sums[s as usize].max(f64::MIN_POSITIVE).powf(e - 1.0))
            .collect();
        let total: f64 = raw.iter().sum();
        let n = raw.len() as f64;
        let floor = self.config.floor;
        Ok(raw.iter().map(|w| (1.0 - floor) * w / total + floor / n).collect())
    }
}

/// Least-squares slope of log(frequency) against log(size) over logarithmic bins of `sizes` between
/// `lo` and `hi` (frequencies per unit size, so bins of different widths compare). `None` with fewer
/// than three non-empty bins.
pub fn power_law_slope(sizes: &[u32], lo: u32, hi: u32) -> Option<f64> {
    let edges: Vec<f64> = {
        let mut e = vec![f64::from(lo.max(1))];
        while *e.last()? < f64::from(hi) {
            let next = (e.last()? * 1.5).ceil().max(e.last()? + 1.0);
            e.push(next);
        }
        e
    };
    let mut counts = vec![0u64; edges.len() - 1];
    for &s in sizes {
        let s = f64::from(s);
        if let Some(b) = edges.windows(2).position(|w| s >= w[0] && s < w[1]) {
            counts[b] += 1;
        }
    }
    let points: Vec<(f64, f64)> = edges
        .windows(2)
        .zip(&counts)
        .filter(|(_, c)| **c > 0)
        .map(|(w, &c)| (((w[0] * (w[1] - 1.0)).sqrt()).ln(), (c as f64 / (w[1] - w[0])).ln()))
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    Some(sxy / sxx)
}
