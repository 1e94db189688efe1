//! Routing: the splats a point's energy is summed over, taken from the clusters of an m2m-index index
//! (the "mixture of experts" of the original project).
//!
//! A point is routed to its `probes` nearest fine clusters (by centroid), and of their members the
//! `max_splats` with the largest terms l_i = ln alpha_i - 2 kappa_i (1 - x . mu_i) are kept. Dropping
//! terms only removes positive parts of the sum, so the routed energy is never below the exact one, and
//! exceeds it by -ln(1 - dropped share): small when the dropped splats are far compared with the
//! kernels' width (tested with kappa 30 to 50 against [`crate::energy::energy`]). With broad kernels
//! (small kappa, many dimensions) far splats carry real mass and the routed energy overestimates E;
//! probing more clusters tightens the bound monotonically. The fine clusters are also the sites of the
//! SOC controller.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use m2m_index::{ColdRows, IdMap, Index, Metric, kernels};
use rayon::prelude::*;

use crate::energy::Splats;
use crate::error::{check_len, check_values};
use crate::isa::kernel_isa;
use crate::langevin::{
    LangevinConfig, OneScratch, Prepared, one_applies, run_prepared_chain, seeded_steps, seeded_temperature,
};
use crate::prefetch::LineQueue;
use crate::{Error, Result, SiteGraph};

/// The members of one fine cluster with their parameters. Member `i`'s `mu` is row `slot[i]` of the
/// index's cold rows when `slot[i]` has the [`COLD`] bit (without it), else row `slot[i]` of `mu`.
#[derive(Clone, Debug, Default)]
struct Members {
    ids: Vec<u64>,
    slot: Vec<u32>,
    /// The rows kept in RAM: members of clusters the index holds in RAM, and members inserted since.
    mu: Vec<f32>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
}

/// Marks a slot of the cold rows (see [`Members`]).
const COLD: u32 = 1 << 31;

/// How long [`Router::run_seeded`] runs a chain started at its seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeededRunLength {
    /// `config.steps` for every chain.
    #[default]
    Fixed,
    /// Per seed, from its own band of real neighbours: the number of steps after which the mean
    /// cosine to the seed of [`SEEDED_PILOTS`] pilot chains (started at the seed, with the chain's own
    /// step) first falls to the middle of the seed's band (the mean of its cosines to the nearest and
    /// the farthest splat of its neighbourhood), at most `max_factor` x `config.steps`. Computed once
    /// per seed and configuration and kept with the seed's basis. Chains that do not start at their
    /// seed run `config.steps`.
    ToBandMiddle {
        /// Bound on the steps, in multiples of `config.steps`.
        max_factor: u32,
    },
    /// Per seed, from its own band of real neighbours: `config.steps` at the temperature
    /// `config.temperature` x f, f in [1 / `max_factor`, `max_factor`], at which the mean cosine to
    /// the seed of [`SEEDED_PILOTS`] pilot chains after the run is the middle of the seed's band (as
    /// above). Where the run reaches the model's equilibrium before the band (a run length cannot move
    /// it), the temperature sets that equilibrium's width. Kept with the seed's basis.
    TemperatureToBandMiddle {
        /// Bound on the factor of the temperature (and of its inverse).
        max_factor: u32,
    },
}

/// Squared distance within which a chain's start is taken as its seed's row by
/// [`Router::run_seeded`] (two copies of one unit row, normalised apart, differ by ~1e-12).
const AT_SEED: f32 = 1e-10;

/// Pilot chains per seed of a calibrated [`SeededRunLength`].
pub const SEEDED_PILOTS: usize = 4;

/// The splats' own neighbourhoods, compact: the seeds' ids sorted, and `k` neighbours per seed as
/// positions in that array (4 bytes a neighbour, where ids would take 8 and a map per seed about 40 more).
#[derive(Clone, Debug, Default)]
struct Neighbourhoods {
    ids: Vec<u64>,
    k: usize,
    /// `k` per seed, in the seeds' sorted order: position `p` is `ids[p]`, or `outside[p - ids.len()]`
    /// for a neighbour that is not itself a seed.
    nb: Vec<u32>,
    outside: Vec<u64>,
    /// Seeds removed since (their neighbourhood is no longer theirs if the id comes back).
    dropped: HashSet<u64>,
}

impl Neighbourhoods {
    /// The neighbour ids of `id`, nearest first, when it has a neighbourhood.
    fn of(&self, id: u64) -> Option<impl Iterator<Item = u64> + '_> {
        if self.dropped.contains(&id) {
            return None;
        }
        let at = self.ids.binary_search(&id).ok()?;
        let nb = self.nb.get(at * self.k..(at + 1) * self.k)?;
        let seeds = self.ids.len();
        Some(nb.iter().map(move |&p| {
            let p = p as usize;
            if p < seeds { self.ids[p] } else { self.outside[p - seeds] }
        }))
    }

    /// Whether `id` has a neighbourhood.
    fn contains(&self, id: u64) -> bool {
        !self.dropped.contains(&id) && self.ids.binary_search(&id).is_ok()
    }

    fn heap_bytes(&self) -> usize {
        (self.ids.capacity() + self.outside.capacity()) * 8 + self.nb.capacity() * 4 + self.dropped.capacity() * 9
    }
}

/// Routes points to splats through an index's fine clusters.
#[derive(Clone, Debug)]
pub struct Router {
    dim: usize,
    centroids: Vec<f32>,
    members: Vec<Members>,
    /// The index's cold rows (a mapped file), read in place: a cold index's vectors are not copied.
    cold: Option<ColdRows>,
    /// Where each id lies: (cluster, position among its members).
    locate: IdMap<(u32, u32)>,
    /// Each splat's own neighbourhood (ids of its nearest splats, nearest first), when known: the
    /// splats a chain seeded at it is routed to.
    neighbours: Neighbourhoods,
    /// Sum of the members' kappa per cluster (the mass [`crate::Sandpile::splat_probabilities`] gives a
    /// site with `kappa_power` 1), kept current by inserts and removals.
    kappa_sum: Vec<f64>,
    /// Prepared bases of seeded chains, per seed ([`Router::run_seeded`]).
    seeded: SharedSeedCache,
    /// Run length of seeded chains.
    run_length: SeededRunLength,
}

/// Owned routed splats (see [`Router::route`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routed {
    /// Dimension.
    pub dim: usize,
    /// Ids of the routed splats.
    pub ids: Vec<u64>,
    /// Their directions, row-major.
    pub mu: Vec<f32>,
    /// Their concentrations.
    pub kappa: Vec<f32>,
    /// Their weights.
    pub alpha: Vec<f32>,
}

impl Routed {
    /// The routed splats as [`Splats`] (an error when nothing was routed).
    pub fn splats(&self) -> Result<Splats<'_>> {
        Splats::new(self.dim, &self.mu, &self.kappa, &self.alpha)
    }
}

impl Router {
    /// A router over `index` (cosine metric: its vectors are the splats' unit `mu`), with each member's
    /// (kappa, alpha) from `params`; a member `params` does not know is left out.
    pub fn new(index: &Index, params: impl Fn(u64) -> Option<(f32, f32)>) -> Result<Router> {
        if index.metric() != Metric::Cosine {
            return Err(Error::Invalid {
                what: "index metric",
                index: 0,
                value: 0.0,
                reason: "routing on the sphere needs a cosine index",
            });
        }
        let dim = index.dim();
        let parts = index.parts();
        let mut members = Vec::with_capacity(parts.clusters.len());
        let mut cold = None;
        for (f, cl) in parts.clusters.iter().enumerate() {
            let mut m = Members::default();
            // A cluster read from the index's cold rows is read there by the router too; rows past what
            // a slot can name (2^31) are copied.
            let shared = index
                .cold_cluster(f)
                .filter(|(_, start)| start.checked_add(cl.ids.len()).is_some_and(|end| end < COLD as usize));
            // Through the accessor: a cold index's vectors are not in its parts.
            let vectors = index.cluster_vectors(f);
            for (i, &id) in cl.ids.iter().enumerate() {
                if let Some((k, a)) = params(id) {
                    m.ids.push(id);
                    match &shared {
                        Some((_, start)) => m.slot.push(COLD | (start + i) as u32),
                        None => {
                            m.slot.push((m.mu.len() / dim) as u32);
                            m.mu.extend_from_slice(&vectors[i * dim..(i + 1) * dim]);
                        }
                    }
                    m.kappa.push(k);
                    m.alpha.push(a);
                }
            }
            if let Some((rows, _)) = shared {
                cold = Some(rows);
            }
            check_values("kappa", &m.kappa, true)?;
            check_values("alpha", &m.alpha, true)?;
            members.push(m);
        }
        let mut pairs = Vec::with_capacity(members.iter().map(|m| m.ids.len()).sum());
        for (c, m) in members.iter().enumerate() {
            pairs.extend(m.ids.iter().enumerate().map(|(i, &id)| (id, (c as u32, i as u32))));
        }
        // An index holds each id once (checked when it was built or read), so this cannot repeat one.
        let locate = IdMap::from_pairs(pairs).map_err(|id| Error::Invalid {
            what: "id",
            index: 0,
            value: id as f64,
            reason: "twice in the index",
        })?;
        let kappa_sum = members.iter().map(|m| m.kappa.iter().map(|&k| f64::from(k)).sum()).collect();
        Ok(Router {
            dim,
            centroids: parts.fine.clone(),
            members,
            cold,
            locate,
            neighbours: Neighbourhoods::default(),
            kappa_sum,
            seeded: SeedCache { budget: DEFAULT_SEED_CACHE_BYTES, ..SeedCache::default() }.into(),
            run_length: SeededRunLength::Fixed,
        })
    }

    /// Member `i` of cluster `c`'s unit `mu`, in place.
    fn mu_of(&self, c: usize, i: usize) -> &[f32] {
        let (m, dim) = (&self.members[c], self.dim);
        let s = m.slot[i];
        let (rows, at) = if s & COLD != 0 {
            (self.cold.as_ref().map_or(&[][..], ColdRows::as_slice), (s & !COLD) as usize)
        } else {
            (&m.mu[..], s as usize)
        };
        rows.get(at * dim..(at + 1) * dim).unwrap_or(&[])
    }

    /// Bytes of vectors the router holds in RAM (its own rows; the cold rows it reads in place are not
    /// counted).
    pub fn ram_vector_bytes(&self) -> usize {
        self.members.iter().map(|m| m.mu.len() * std::mem::size_of::<f32>()).sum()
    }

    /// Records each splat's own neighbourhood: `k` neighbour ids per id of `ids`, nearest first (for
    /// example from [`crate::kappa::neighbours_from_index`], the neighbours kappa was fitted on).
    /// Chains seeded at these splats are then routed to the seed and its neighbours
    /// ([`Router::route_seed`]). An id given twice keeps its first neighbourhood.
    pub fn set_neighbourhoods(&mut self, ids: &[u64], neighbours: &[u64], k: usize) -> Result<()> {
        check_len("neighbours", neighbours.len(), ids.len() * k)?;
        self.clear_seed_cache();
        let too_many = || Error::Invalid {
            what: "ids",
            index: 0,
            value: ids.len() as f64,
            reason: "more than 2^32 - 1 ids in neighbourhoods",
        };
        let n = u32::try_from(ids.len()).map_err(|_| too_many())?;
        let mut order: Vec<u32> = (0..n).collect();
        // A build's ids usually come sorted (and dense): then no sort, and positions without a search.
        if !ids.is_sorted() {
            order.sort_by_key(|&i| ids[i as usize]);
        }
        order.dedup_by_key(|i| ids[*i as usize]);
        let sorted: Vec<u64> = order.iter().map(|&i| ids[i as usize]).collect();
        // Checked: ids span all of u64 (a forged file found `b - a + 1` overflowing).
        let dense =
            sorted.first().zip(sorted.last()).is_some_and(|(a, b)| (b - a).checked_add(1) == Some(sorted.len() as u64));
        let find = |id: u64| -> std::result::Result<usize, usize> {
            match sorted.first() {
                Some(&first) if dense => {
                    id.checked_sub(first).map(|p| p as usize).filter(|&p| p < sorted.len()).ok_or(0)
                }
                _ => sorted.binary_search(&id),
            }
        };
        let mut nb = Vec::with_capacity(order.len() * k);
        let mut outside: Vec<u64> = Vec::new();
        let mut outside_at: HashMap<u64, u32> = HashMap::new();
        for &i in &order {
            for &id in &neighbours[i as usize * k..(i as usize + 1) * k] {
                let p = match find(id) {
                    Ok(p) => p,
                    Err(_) => match outside_at.get(&id) {
                        Some(&o) => o as usize,
                        None => {
                            outside.push(id);
                            let p = sorted.len() + outside.len() - 1;
                            outside_at.insert(id, u32::try_from(p).map_err(|_| too_many())?);
                            p
                        }
                    },
                };
                nb.push(u32::try_from(p).map_err(|_| too_many())?);
            }
        }
        self.neighbours = Neighbourhoods { ids: sorted, k, nb, outside, dropped: HashSet::new() };
        Ok(())
    }

    /// Bytes the router holds on the heap per structure, as (name, bytes): its id map, neighbourhoods,
    /// the members' ids, slots, kappa and alpha, the rows it holds in RAM, and the centroids.
    pub fn heap_bytes(&self) -> Vec<(&'static str, usize)> {
        let sum = |f: &dyn Fn(&Members) -> usize| self.members.iter().map(f).sum::<usize>();
        vec![
            ("router id map", self.locate.heap_bytes()),
            ("router neighbourhoods", self.neighbours.heap_bytes()),
            ("router member ids", sum(&|m| m.ids.capacity() * 8)),
            ("router slots, kappa, alpha", sum(&|m| (m.slot.capacity() + m.kappa.capacity() + m.alpha.capacity()) * 4)),
            ("router RAM rows", sum(&|m| m.mu.capacity() * 4)),
            ("router centroids", self.centroids.capacity() * 4 + self.kappa_sum.capacity() * 8),
        ]
    }

    /// Number of routed splats.
    pub fn len(&self) -> usize {
        self.locate.len()
    }

    /// Whether no splat is routed.
    pub fn is_empty(&self) -> bool {
        self.locate.is_empty()
    }

    /// Sum of the members' kappa per cluster.
    pub fn kappa_sums(&self) -> &[f64] {
        &self.kappa_sum
    }

    /// The site and kappa of `id`, if routed.
    pub fn site_and_kappa(&self, id: u64) -> Option<(u32, f32)> {
        self.locate.get(&id).map(|&(c, i)| (c, self.members[c as usize].kappa[i as usize]))
    }

    /// Whether `id` is routed.
    pub fn contains(&self, id: u64) -> bool {
        self.locate.contains_key(&id)
    }

    /// The cluster (SOC site) of `id`, if routed.
    pub fn site(&self, id: u64) -> Option<u32> {
        self.locate.get(&id).map(|&(c, _)| c)
    }

    /// Adds splats (unit `mu`, `dim` per row) to their nearest clusters by centroid, as the index
    /// inserts them; returns their clusters. Ids already routed are refused.
    pub fn insert(&mut self, ids: &[u64], mu: &[f32], kappa: &[f32], alpha: &[f32]) -> Result<Vec<u32>> {
        check_len("mu", mu.len(), ids.len() * self.dim)?;
        check_len("kappa", kappa.len(), ids.len())?;
        check_len("alpha", alpha.len(), ids.len())?;
        check_values("kappa", kappa, true)?;
        check_values("alpha", alpha, true)?;
        if let Some(index) = ids.iter().position(|id| self.locate.contains_key(id)) {
            return Err(Error::Invalid { what: "id", index, value: ids[index] as f64, reason: "already routed" });
        }
        // Inserts only append members: the kept bases' rows stay where they are.
        let clusters = self.nearest_cluster_of_rows(mu)?;
        for (r, (&id, &c)) in ids.iter().zip(&clusters).enumerate() {
            let m = &mut self.members[c as usize];
            self.locate.insert(id, (c, m.ids.len() as u32));
            m.ids.push(id);
            m.slot.push((m.mu.len() / self.dim) as u32);
            m.mu.extend_from_slice(&mu[r * self.dim..(r + 1) * self.dim]);
            m.kappa.push(kappa[r]);
            m.alpha.push(alpha[r]);
            self.kappa_sum[c as usize] += f64::from(kappa[r]);
        }
        Ok(clusters)
    }

    /// Removes splats (ids not routed are ignored); neighbourhoods that name them skip them.
    pub fn remove(&mut self, ids: &[u64]) {
        let dim = self.dim;
        self.clear_seed_cache();
        for id in ids {
            let Some((c, i)) = self.locate.remove(id) else { continue };
            let m = &mut self.members[c as usize];
            let (i, last) = (i as usize, m.ids.len() - 1);
            self.kappa_sum[c as usize] = (self.kappa_sum[c as usize] - f64::from(m.kappa[i])).max(0.0);
            let gone = m.slot.swap_remove(i);
            m.ids.swap_remove(i);
            m.kappa.swap_remove(i);
            m.alpha.swap_remove(i);
            if i != last {
                self.locate.insert(m.ids[i], (c, i as u32));
            }
            // A RAM row freed: the cluster's last RAM row moves into it, and the member naming it follows.
            if gone & COLD == 0 {
                let top = (m.mu.len() / dim - 1) as u32;
                if gone != top {
                    let (g, t) = (gone as usize, top as usize);
                    m.mu.copy_within(t * dim..(t + 1) * dim, g * dim);
                    if let Some(s) = m.slot.iter_mut().find(|s| **s == top) {
                        *s = gone;
                    }
                }
                m.mu.truncate(top as usize * dim);
            }
            if self.neighbours.ids.binary_search(id).is_ok() {
                self.neighbours.dropped.insert(*id);
            }
        }
    }

    /// The routed splats of these ids (those routed), in order.
    pub fn gather(&self, ids: &[u64]) -> Routed {
        let mut out = Routed { dim: self.dim, ..Routed::default() };
        for id in ids {
            if let Some(&(c, i)) = self.locate.get(id) {
                let (m, i) = (&self.members[c as usize], i as usize);
                out.ids.push(*id);
                out.mu.extend_from_slice(self.mu_of(c as usize, i));
                out.kappa.push(m.kappa[i]);
                out.alpha.push(m.alpha[i]);
            }
        }
        out
    }

    /// The splats a chain seeded at splat `seed` (at `x`) is routed to: the seed and its own
    /// neighbourhood when known (the neighbours its kappa was fitted on, still routed), otherwise the
    /// `max_splats` largest terms of the `probes` clusters nearest `x` ([`Router::route`]).
    pub fn route_seed(&self, seed: Option<u64>, x: &[f32], probes: usize, max_splats: usize) -> Result<Routed> {
        if let Some(id) = seed
            && self.locate.contains_key(&id)
            && let Some(nb) = self.neighbours.of(id)
        {
            let mut ids = Vec::with_capacity(self.neighbours.k + 1);
            ids.push(id);
            ids.extend(nb.filter(|&n| n != id));
            ids.dedup();
            return Ok(self.gather(&ids));
        }
        self.route(x, probes, max_splats)
    }

    /// Langevin for chains seeded at splats (the data lake's generated rows): chain `c` (row `c` of
    /// `x`, a unit vector, updated in place) runs against `seeds[c]` and its own neighbourhood (as
    /// [`Router::route_seed`] routes it), by itself: [`crate::langevin::run_one`] with the generator
    /// [`crate::langevin::run`] gives group `c`, so the result is that of `run` with one group per
    /// chain, whatever the number of threads and the order chains run in.
    ///
    /// What depends only on the seed (its neighbourhood's Gram matrix, the basis of its span, the
    /// seed's coordinates in it) is computed once per seed and kept, within the budget
    /// [`Router::set_seed_cache_budget`] sets, for the next chains started there: a chain that starts
    /// at its seed's row then runs only its steps (in the span) and its lift (which reads the basis'
    /// rows in place). A chain started elsewhere computes its own. Chains run in parallel, ordered by
    /// their seed's cluster so that chains of nearby seeds read the same rows from cache.
    ///
    /// With `step_kappa`, chain `c`'s step is `config.dt` x `step_kappa` / (kappa of `seeds[c]`): the
    /// step is given for a kernel of concentration `step_kappa`, and every chain moves the same share of
    /// its own seed kernel's relaxation time (1 / (2 kappa)), so its distance from the seed is measured
    /// against its own neighbourhood's spread (1 - r ~ (p - 1) / (4 kappa)) whatever that spread is.
    ///
    /// Returns which chains ran. A chain whose seed is not routed or has no recorded neighbourhood,
    /// and every chain when `config` asks for what the single-chain method does not simulate
    /// (underdamped, Rademacher, `Method::Full`), is left as it was, for the caller to route otherwise.
    ///
    /// Errors: a bad setting, `x` not `seeds.len()` rows of `dim`, a row not finite or not unit.
    pub fn run_seeded(
        &self,
        config: &LangevinConfig,
        x: &mut [f32],
        seeds: &[u64],
        seed: u64,
        step_kappa: Option<f32>,
    ) -> Result<Vec<bool>> {
        let dim = self.dim;
        check_len("chains", x.len(), seeds.len() * dim)?;
        let mut rows: Vec<&mut [f32]> = x.chunks_exact_mut(dim).collect();
        let streams: Vec<(u64, u64)> = (0..seeds.len() as u64).map(|c| (seed, c)).collect();
        self.run_seeded_rows(config, &mut rows, seeds, &streams, step_kappa)
    }

    /// [`Router::run_seeded`] for chains that need not lie in one slice: chain `c` is `rows[c]`, runs
    /// against `seeds[c]`, and draws from the generator of `streams[c]` = (seed, index), the one
    /// `run_seeded` with that seed gives its chain of that index. So chains of several calls (the
    /// lake's batches) run in one, in one cluster order, with the results each call would give: the
    /// more chains share a call, the more of them find their neighbourhood's rows in cache.
    ///
    /// Errors: those of [`Router::run_seeded`]; `seeds` or `streams` not one per row.
    pub fn run_seeded_rows(
        &self,
        config: &LangevinConfig,
        rows: &mut [&mut [f32]],
        seeds: &[u64],
        streams: &[(u64, u64)],
        step_kappa: Option<f32>,
    ) -> Result<Vec<bool>> {
        config.validate()?;
        if let Some(k) = step_kappa.filter(|k| !(k.is_finite() && *k > 0.0)) {
            return Err(Error::Invalid { what: "step_kappa", index: 0, value: f64::from(k), reason: "must be > 0" });
        }
        let dim = self.dim;
        check_len("seeds", seeds.len(), rows.len())?;
        check_len("streams", streams.len(), rows.len())?;
        for (i, row) in rows.iter().enumerate() {
            check_len("chain", row.len(), dim)?;
            check_values("chains", row, false)?;
            let n = kernels::dot_with(kernel_isa(), row, row);
            if (n - 1.0).abs() > 1e-3 {
                return Err(Error::Invalid {
                    what: "chain norm^2",
                    index: i,
                    value: f64::from(n),
                    reason: "chains must be unit vectors",
                });
            }
        }
        let mut ran = vec![false; seeds.len()];
        if !one_applies(config, 1, dim) {
            return Ok(ran);
        }
        // Seeds are prepared, and chains run, in blocks of this many one after the other on a thread,
        // each prefetching the next one's rows while it computes: they lie anywhere in memory, and
        // fetching them is what a chain waits on.
        const BLOCK: usize = 16;
        // The chains that can run, in their seed's cluster order.
        let mut order: Vec<(u32, u64, u32)> = seeds
            .iter()
            .enumerate()
            .filter(|(_, s)| self.neighbours.contains(**s))
            .filter_map(|(c, &s)| Some((self.locate.get(&s)?.0, s, c as u32)))
            .collect();
        order.sort_unstable();
        // Seeds not prepared yet, each once, prepared in parallel.
        let missing: Vec<u64> = {
            let cache = self.seeded.read();
            let mut m: Vec<u64> = order.iter().map(|o| o.1).filter(|s| !cache.map.contains_key(s)).collect();
            m.dedup();
            m
        };
        // In blocks, each seed's preparation prefetching the next one's rows (see `LineQueue`).
        let fresh: Vec<Option<SeedEntry>> = missing
            .par_chunks(BLOCK)
            .map_init(SeededScratch::default, |scr, seeds| {
                let mut ahead = LineQueue::default();
                self.queue_neighbourhood(seeds[0], &mut ahead);
                ahead.drain();
                seeds
                    .iter()
                    .enumerate()
                    .map(|(k, &s)| {
                        ahead.clear();
                        if let Some(&next) = seeds.get(k + 1) {
                            self.queue_neighbourhood(next, &mut ahead);
                        }
                        self.prepare_seed(config, step_kappa, s, scr, &mut ahead)
                    })
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect();
        let fresh_of: HashMap<u64, &SeedEntry> =
            missing.iter().zip(&fresh).filter_map(|(&s, e)| Some((s, e.as_ref()?))).collect();

        // The chains' rows in that order, in place: no copy of the rows in and out.
        let mut slots: Vec<Option<&mut [f32]>> = rows.iter_mut().map(|r| Some(&mut **r)).collect();
        let mut rows: Vec<&mut [f32]> = order.iter().filter_map(|o| slots[o.2 as usize].take()).collect();
        let done: Vec<Vec<bool>> = {
            let cache = self.seeded.read();
            let entry = |s: u64| cache.map.get(&s).or_else(|| fresh_of.get(&s).copied());
            rows.par_chunks_mut(BLOCK)
                .zip(order.par_chunks(BLOCK))
                .map_init(SeededScratch::default, |scr, (rows, chains)| {
                    let mut ahead = LineQueue::default();
                    if let Some(e) = entry(chains[0].1) {
                        self.queue_rows(e, &mut ahead);
                        ahead.drain();
                    }
                    rows.iter_mut()
                        .zip(chains)
                        .enumerate()
                        .map(|(k, (row, &(_, s, c)))| {
                            let row: &mut [f32] = row;
                            ahead.clear();
                            if let Some(e) = chains.get(k + 1).and_then(|n| entry(n.1)) {
                                self.queue_rows(e, &mut ahead);
                            }
                            let Some(e) = entry(s) else { return false };
                            let cfg = seed_config(config, step_kappa, e.prep.first_kappa());
                            // The caller's copy of the seed may differ from the index's in the last
                            // bits (normalised again): within AT_SEED of it, the chain starts there.
                            let at_seed = self.locate.get(&s).is_some_and(|&(cl, i)| {
                                let m = self.mu_of(cl as usize, i as usize);
                                m.len() == row.len() && kernels::l2_sq_with(kernel_isa(), m, row) <= AT_SEED
                            });
                            if at_seed {
                                let (steps, temperature) = match (self.run_length, e.steps) {
                                    (SeededRunLength::Fixed, _) => (cfg.steps, cfg.temperature),
                                    (_, Some((key, run))) if key == run_key(&cfg, self.run_length) => run,
                                    (rl, _) => self.seeded_run(&cfg, rl, &e.prep, s, &mut scr.one, &mut ahead),
                                };
                                let cfg = LangevinConfig { steps, temperature, ..cfg };
                                let pivot_row = |k: usize| self.mu_of(e.rows[k].0 as usize, e.rows[k].1 as usize);
                                run_prepared_chain(
                                    &cfg,
                                    &e.prep,
                                    &pivot_row,
                                    row,
                                    streams[c as usize].0,
                                    streams[c as usize].1,
                                    &mut scr.one,
                                    &mut ahead,
                                );
                            } else {
                                // A chain started off its seed: a basis of its own, not kept.
                                self.gather_neighbourhood(s, scr);
                                let splats = Splats::trusted(dim, &scr.mu, &scr.kappa, &scr.alpha);
                                let prep = Prepared::new(&splats, row, &mut scr.one);
                                let mu = &scr.mu;
                                let pivot_row = |k: usize| {
                                    let p = prep.pivots()[k] as usize;
                                    &mu[p * dim..(p + 1) * dim]
                                };
                                run_prepared_chain(
                                    &cfg,
                                    &prep,
                                    &pivot_row,
                                    row,
                                    streams[c as usize].0,
                                    streams[c as usize].1,
                                    &mut scr.one,
                                    &mut ahead,
                                );
                            }
                            true
                        })
                        .collect()
                })
                .collect()
        };
        drop(rows);
        for (&(_, _, c), d) in order.iter().zip(done.concat()) {
            ran[c as usize] = d;
        }
        // Keep what fits in the budget, in cluster order.
        let mut cache = self.seeded.write();
        for (s, e) in missing.into_iter().zip(fresh) {
            let Some(e) = e else { continue };
            let bytes = e.bytes();
            if cache.bytes + bytes > cache.budget {
                break;
            }
            cache.bytes += bytes;
            cache.map.insert(s, e);
        }
        Ok(ran)
    }

    /// Sets the bytes [`Router::run_seeded`] may keep for its seeds' prepared bases (about 2 KB a seed
    /// of 17 splats; 0 keeps none) and drops what it kept.
    pub fn set_seed_cache_budget(&mut self, bytes: usize) {
        self.seeded = SeedCache { budget: bytes, ..SeedCache::default() }.into();
    }

    /// Bytes held by [`Router::run_seeded`]'s prepared bases, and how many seeds they serve.
    pub fn seed_cache_usage(&self) -> (usize, usize) {
        let c = self.seeded.read();
        (c.bytes, c.map.len())
    }

    /// Drops the prepared bases (their splats or neighbourhoods changed), keeping the budget.
    fn clear_seed_cache(&mut self) {
        let budget = self.seeded.read().budget;
        self.set_seed_cache_budget(budget);
    }

    /// The prepared basis of a chain started at splat `s` (`None` when the single-chain method does
    /// not apply to its neighbourhood).
    fn prepare_seed(
        &self,
        config: &LangevinConfig,
        step_kappa: Option<f32>,
        s: u64,
        scr: &mut SeededScratch,
        ahead: &mut LineQueue<'_>,
    ) -> Option<SeedEntry> {
        let dim = self.dim;
        if !self.gather_neighbourhood(s, scr) || !one_applies(config, scr.kappa.len(), dim) {
            return None;
        }
        let splats = Splats::trusted(dim, &scr.mu, &scr.kappa, &scr.alpha);
        let prep = Prepared::new(&splats, &scr.mu[..dim], &mut scr.one);
        let rows = prep.pivots().iter().map(|&p| scr.locs[p as usize]).collect();
        let steps = (self.run_length != SeededRunLength::Fixed).then(|| {
            let cfg = seed_config(config, step_kappa, prep.first_kappa());
            (run_key(&cfg, self.run_length), self.seeded_run(&cfg, self.run_length, &prep, s, &mut scr.one, ahead))
        });
        Some(SeedEntry { prep, rows, steps })
    }

    /// The steps and temperature of a chain started at seed `id` under `rl` (see [`SeededRunLength`]).
    fn seeded_run(
        &self,
        cfg: &LangevinConfig,
        rl: SeededRunLength,
        prep: &Prepared,
        id: u64,
        scr: &mut OneScratch,
        ahead: &mut LineQueue<'_>,
    ) -> (usize, f32) {
        match rl {
            SeededRunLength::Fixed => (cfg.steps, cfg.temperature),
            SeededRunLength::ToBandMiddle { max_factor } => {
                let max = cfg.steps.saturating_mul(max_factor.max(1) as usize);
                (seeded_steps(cfg, prep, id, max, SEEDED_PILOTS, self.dim, scr).unwrap_or(cfg.steps), cfg.temperature)
            }
            SeededRunLength::TemperatureToBandMiddle { max_factor } => {
                let t = seeded_temperature(cfg, prep, id, max_factor as f32, SEEDED_PILOTS, self.dim, scr, ahead);
                (cfg.steps, t.unwrap_or(cfg.temperature))
            }
        }
    }

    /// Sets how long [`Router::run_seeded`] runs chains started at their seed, dropping kept run
    /// lengths.
    pub fn set_seeded_run_length(&mut self, run_length: SeededRunLength) {
        self.run_length = run_length;
        self.clear_seed_cache();
    }

    /// How long [`Router::run_seeded`] runs chains started at their seed.
    pub fn seeded_run_length(&self) -> SeededRunLength {
        self.run_length
    }

    /// The steps and temperature a chain started at seed `id` runs with under `config` and
    /// `step_kappa` (as in [`Router::run_seeded`]); `None` when `id` has no neighbourhood or the
    /// single-chain method does not apply.
    pub fn seeded_run_of(&self, config: &LangevinConfig, step_kappa: Option<f32>, id: u64) -> Option<(usize, f32)> {
        let mut scr = SeededScratch::default();
        let e = self.prepare_seed(config, step_kappa, id, &mut scr, &mut LineQueue::default())?;
        Some(e.steps.map_or((config.steps, config.temperature), |(_, run)| run))
    }

    /// Queues a prepared seed's basis rows for prefetching.
    fn queue_rows<'a>(&'a self, e: &SeedEntry, ahead: &mut LineQueue<'a>) {
        for &(c, i) in &e.rows {
            ahead.push(self.mu_of(c as usize, i as usize));
        }
    }

    /// Queues the rows of seed `id`'s neighbourhood (what [`Router::gather_neighbourhood`] copies)
    /// for prefetching.
    fn queue_neighbourhood<'a>(&'a self, id: u64, ahead: &mut LineQueue<'a>) {
        let Some(nb) = self.neighbours.of(id) else { return };
        for id in std::iter::once(id).chain(nb) {
            if let Some(&(c, i)) = self.locate.get(&id) {
                ahead.push(self.mu_of(c as usize, i as usize));
            }
        }
    }

    /// The seed `id` and its neighbourhood (the splats [`Router::route_seed`] routes a chain seeded at
    /// it to) into `scr`; false when `id` is not routed or has no neighbourhood.
    fn gather_neighbourhood(&self, id: u64, scr: &mut SeededScratch) -> bool {
        let (Some(_), Some(nb)) = (self.locate.get(&id), self.neighbours.of(id)) else { return false };
        scr.ids.clear();
        scr.ids.push(id);
        scr.ids.extend(nb.filter(|&n| n != id));
        scr.ids.dedup();
        scr.mu.clear();
        scr.kappa.clear();
        scr.alpha.clear();
        scr.locs.clear();
        for id in &scr.ids {
            if let Some(&(c, i)) = self.locate.get(id) {
                let (m, i) = (&self.members[c as usize], i as usize);
                scr.mu.extend_from_slice(self.mu_of(c as usize, i));
                scr.kappa.push(m.kappa[i]);
                scr.alpha.push(m.alpha[i]);
                scr.locs.push((c, i as u32));
            }
        }
        true
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of fine clusters (the SOC sites).
    pub fn clusters(&self) -> usize {
        self.members.len()
    }

    /// The cluster of every routed id.
    pub fn cluster_of(&self) -> HashMap<u64, u32> {
        let mut out = HashMap::new();
        for (c, m) in self.members.iter().enumerate() {
            out.extend(m.ids.iter().map(|&id| (id, c as u32)));
        }
        out
    }

    /// The clusters' graph: each linked to its `k` nearest clusters by centroid.
    pub fn site_graph(&self, k: usize) -> Result<SiteGraph> {
        SiteGraph::knn(&self.centroids, self.dim, k)
    }

    /// The `probes` clusters whose centroids are most similar to `x`, best first.
    pub fn nearest_clusters(&self, x: &[f32], probes: usize) -> Result<Vec<u32>> {
        check_len("x", x.len(), self.dim)?;
        check_values("x", x, false)?;
        let mut scores = vec![0f32; self.members.len()];
        kernels::dots_with(kernel_isa(), x, &self.centroids, &mut scores);
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        let p = probes.clamp(1, order.len().max(1));
        if p < order.len() {
            order.select_nth_unstable_by(p - 1, |&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
            order.truncate(p);
        }
        order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        Ok(order)
    }

    /// The nearest cluster of each row of `x` (row-major), scored as one matrix product.
    pub fn nearest_cluster_of_rows(&self, x: &[f32]) -> Result<Vec<u32>> {
        let rows = x.len() / self.dim;
        check_len("x", x.len(), rows * self.dim)?;
        check_values("x", x, false)?;
        let n = self.members.len();
        let mut scores = vec![0f32; rows * n];
        kernels::dots_many_with(kernel_isa(), x, &self.centroids, self.dim, &mut scores);
        Ok(scores
            .chunks_exact(n)
            .map(|s| {
                s.iter()
                    .enumerate()
                    .fold((0u32, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i as u32, v) } else { b })
                    .0
            })
            .collect())
    }

    /// The splats `x` is routed to: of the members of its `probes` nearest clusters, the `max_splats`
    /// (at least 1) with the largest terms. `x` should be a unit vector.
    pub fn route(&self, x: &[f32], probes: usize, max_splats: usize) -> Result<Routed> {
        let clusters = self.nearest_clusters(x, probes)?;
        let mut cand: Vec<(f32, u32, u32)> = Vec::new();
        let mut s = Vec::new();
        for &c in &clusters {
            let m = &self.members[c as usize];
            s.resize(m.ids.len(), 0.0);
            for (i, si) in s.iter_mut().enumerate() {
                *si = kernels::dot_with(kernel_isa(), x, self.mu_of(c as usize, i));
            }
            for (i, &si) in s.iter().enumerate() {
                cand.push((m.alpha[i].ln() - 2.0 * m.kappa[i] * (1.0 - si), c, i as u32));
            }
        }
        let keep = max_splats.max(1);
        if cand.len() > keep {
            cand.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            cand.truncate(keep);
        }
        let mut out = Routed { dim: self.dim, ..Routed::default() };
        for &(_, c, i) in &cand {
            let (m, i) = (&self.members[c as usize], i as usize);
            out.ids.push(m.ids[i]);
            out.mu.extend_from_slice(self.mu_of(c as usize, i));
            out.kappa.push(m.kappa[i]);
            out.alpha.push(m.alpha[i]);
        }
        Ok(out)
    }

    /// The routed (truncated) energy of `x`: E over its [`route`](Self::route)d splats, in f64.
    pub fn energy(&self, x: &[f32], probes: usize, max_splats: usize) -> Result<f64> {
        let r = self.route(x, probes, max_splats)?;
        crate::energy::energy(x, &r.splats()?)
    }
}

/// One thread's buffers for [`Router::run_seeded`].
#[derive(Debug, Default)]
struct SeededScratch {
    ids: Vec<u64>,
    mu: Vec<f32>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
    /// (cluster, position) of each gathered row.
    locs: Vec<(u32, u32)>,
    one: OneScratch,
}

/// A seed's prepared basis (see [`Router::run_seeded`]) and where its pivots' rows lie: (cluster,
/// position among its members), valid until the router's members change (the cache is then dropped).
#[derive(Debug)]
struct SeedEntry {
    prep: Prepared,
    rows: Vec<(u32, u32)>,
    /// The steps and temperature of a calibrated [`SeededRunLength`] and the settings they were found
    /// for.
    steps: Option<(RunKey, (usize, f32))>,
}

/// The settings a seed's run length depends on: dt and temperature bits, base steps, the bound.
type RunKey = (u32, u32, usize, SeededRunLength);

fn run_key(cfg: &LangevinConfig, rl: SeededRunLength) -> RunKey {
    (cfg.dt.to_bits(), cfg.temperature.to_bits(), cfg.steps, rl)
}

/// `config` with the step of a chain whose seed has concentration `kappa` (see
/// [`Router::run_seeded`]); the step stays in (0, 1].
fn seed_config(config: &LangevinConfig, step_kappa: Option<f32>, kappa: f32) -> LangevinConfig {
    match step_kappa {
        Some(sk) => LangevinConfig { dt: (config.dt * sk / kappa).clamp(1e-9, 1.0), ..*config },
        None => *config,
    }
}

impl SeedEntry {
    /// Bytes held, with the map's key and slot.
    fn bytes(&self) -> usize {
        self.prep.bytes() + self.rows.len() * 8 + std::mem::size_of::<(u64, SeedEntry)>()
    }
}

/// The seeds' prepared bases within a budget of bytes.
#[derive(Debug, Default)]
struct SeedCache {
    map: HashMap<u64, SeedEntry>,
    bytes: usize,
    budget: usize,
}

/// [`SeedCache`] behind a lock: [`Router::run_seeded`] takes `&self`. A clone starts empty with the
/// same budget (its entries are recomputed on use).
#[derive(Debug, Default)]
struct SharedSeedCache(RwLock<SeedCache>);

impl SharedSeedCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, SeedCache> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SeedCache> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl From<SeedCache> for SharedSeedCache {
    fn from(c: SeedCache) -> Self {
        SharedSeedCache(RwLock::new(c))
    }
}

impl Clone for SharedSeedCache {
    fn clone(&self) -> Self {
        SeedCache { budget: self.read().budget, ..SeedCache::default() }.into()
    }
}

/// Default budget of [`Router::run_seeded`]'s prepared bases: 64 MiB, ~30,000 seeds of 17 splats.
const DEFAULT_SEED_CACHE_BYTES: usize = 64 << 20;
