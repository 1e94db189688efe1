//! The engine's training science wiring: the SOC controller (router, sandpile, retrieval hits), the
//! training feedback that drives it, its saved state, Langevin augmentation routed per chain, and the
//! honest reports (importance weights, fidelity of generated rows).
//!
//! What it does not do: the maths (m2m-soc) and the batches (`loader.rs`).
//!
//! Retrieval records its hits without a lock: one atomic counter per site, absorbed into the pile in
//! site order whenever the pile is read or fed (feedback, probabilities, tick, save), so queries never
//! wait on training and the pile's state does not depend on thread timing, only on the counts.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use m2m_index::{Index, Lod, SearchParams};
use m2m_soc::langevin::{Group, run};
use m2m_soc::{LangevinConfig, Router, Sandpile, SocConfig};

use crate::{Error, M2m, Result};

/// Name of the build's neighbourhoods and kappa fit inside a data directory.
pub const NEIGHBOURS_BLOB: &str = "m2m-neighbours.blob";
/// Name of the SOC controller's saved state (the sandpile) inside a data directory.
pub const SOC_BLOB: &str = "m2m-soc.blob";

/// Neighbours per splat kept from the kappa fit: a chain seeded at a splat is routed to it and these.
pub(crate) const NEIGHBOURS: usize = 16;

/// Per-export changes to the engine's Langevin settings (the data loader's knobs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LangevinOverrides {
    pub(crate) temperature: Option<f32>,
    pub(crate) step_size: Option<f32>,
    pub(crate) dynamics: Option<crate::LangevinDynamics>,
}

/// How the last build fitted kappa.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KappaFit {
    /// The sphere dimension p of the vMF fit (the data's intrinsic dimension + 1 by default).
    pub sphere_dimension: f64,
    /// Splats clipped at `min_kappa`.
    pub clipped_low: u64,
    /// Splats clipped at `max_kappa`.
    pub clipped_high: u64,
    /// Splats fitted.
    pub rows: u64,
}

impl KappaFit {
    /// Share of the fitted splats whose kappa was clipped (either end).
    pub fn clipped_share(&self) -> f64 {
        (self.clipped_low + self.clipped_high) as f64 / self.rows.max(1) as f64
    }
}

/// The build's neighbourhoods (as ids) and kappa fit, stored in [`NEIGHBOURS_BLOB`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredNeighbours {
    pub(crate) fit: KappaFit,
    pub(crate) ids: Vec<u64>,
    pub(crate) k: u32,
    pub(crate) neighbours: Vec<u64>,
}

/// The sandpile's saved state, stored in [`SOC_BLOB`]: each site's load and activity, the site of
/// every id then, so that a pile saved on other clusters is carried over rather than dropped, and each
/// site's loss memory (`Sandpile::loss_memory`; absent from blobs written before it existed, which
/// are read as [`StoredPileV1`], with an empty memory).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPile {
    loads: Vec<f64>,
    activity: Vec<f64>,
    ids: Vec<u64>,
    sites: Vec<u32>,
    drawn: Vec<f64>,
    lossy: Vec<f64>,
}

/// [`StoredPile`] as written before the loss memory: the same fields, without the last two.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPileV1 {
    loads: Vec<f64>,
    activity: Vec<f64>,
    ids: Vec<u64>,
    sites: Vec<u32>,
}

/// The sandpile and the retrieval hits not yet absorbed into it; shared with running data loaders,
/// whose feedback lands here.
///
/// An open does not make the pile: its site graph is the k nearest fine centroids of each fine
/// centroid (n_fine^2 d multiply-adds: seconds at 5M rows), and queries only count hits. It is made
/// at its first read ([`Controller::pile`]: feedback, tick, probabilities, a loader's sink, a save
/// with hits to absorb), from the index as it is then and the saved state found in the directory
/// then (a damaged saved state is reported there, typed, instead of at the open).
#[derive(Debug)]
pub(crate) struct Pile {
    state: Mutex<PileState>,
    hits: Vec<AtomicU32>,
}

#[derive(Debug)]
enum PileState {
    Made(Box<Sandpile>),
    /// Not made yet: a fresh pile over the index's clusters, restored from the saved state of this
    /// directory when it holds one.
    Pending {
        saved_in: Option<PathBuf>,
    },
}

impl Pile {
    fn new(pile: Sandpile) -> Pile {
        let hits = (0..pile.graph().len()).map(|_| AtomicU32::new(0)).collect();
        Pile { state: Mutex::new(PileState::Made(Box::new(pile))), hits }
    }

    /// A pile made at its first read (see the type's docs) over `sites` sites.
    fn pending(sites: usize, saved_in: Option<PathBuf>) -> Pile {
        let hits = (0..sites).map(|_| AtomicU32::new(0)).collect();
        Pile { state: Mutex::new(PileState::Pending { saved_in }), hits }
    }

    /// Whether the pile is still to be made and no hit waits to be absorbed: its saved state (if any)
    /// is still what a save would write.
    fn untouched(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        matches!(*state, PileState::Pending { .. }) && self.hits.iter().all(|h| h.load(Ordering::Relaxed) == 0)
    }

    /// Where the saved state of a pile not made yet is.
    fn saved_in(&self) -> Option<PathBuf> {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*state {
            PileState::Pending { saved_in } => saved_in.clone(),
            PileState::Made(_) => None,
        }
    }

    /// One retrieval hit at `site` (lock-free).
    fn hit(&self, site: u32) {
        if let Some(h) = self.hits.get(site as usize) {
            h.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes a pending pile with `make` (given where its saved state is); a made pile is left as it is.
    fn make(&self, make: impl FnOnce(Option<&Path>) -> Result<Sandpile>) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let PileState::Pending { saved_in } = &*state {
            let pile = make(saved_in.as_deref())?;
            if pile.graph().len() != self.hits.len() {
                let reason = format!("{} sites, but the pile counts hits of {}", pile.graph().len(), self.hits.len());
                return Err(Error::Config { field: "soc", reason });
            }
            *state = PileState::Made(Box::new(pile));
        }
        Ok(())
    }

    /// The pile with every pending hit absorbed (one grain each, in site order). A pile not made yet
    /// is `NoIndex`: the engine makes it first ([`Controller::pile`]), and a loader's sink is handed
    /// a made one.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Sandpile) -> T) -> Result<T> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let PileState::Made(pile) = &mut *state else {
            return Err(Error::NoIndex { what: "the SOC pile (not made yet)" });
        };
        for (site, h) in self.hits.iter().enumerate() {
            let n = h.swap(0, Ordering::Relaxed);
            if n > 0 {
                pile.drive(site, f64::from(n))?;
            }
        }
        Ok(f(pile))
    }
}

/// Training feedback for the pile of a running loader: the site and kappa of each fed-back row, and
/// each site's kappa sum, as the router says them when it was built before the export, and otherwise
/// as the index's clusters were at the export (what a router built then would say: its sites are the
/// index's clusters, its members the live ones with the engine's kappa), so that an export builds no
/// router (about 140 bytes a row) only to take feedback.
#[derive(Clone, Debug)]
pub(crate) struct FeedbackSink {
    sites: Sites,
    pile: Arc<Pile>,
}

#[derive(Clone, Debug)]
enum Sites {
    Router(Arc<Router>),
    /// The engine's rows (their ids), each row's site (`u32::MAX`: in no cluster), kappa, each site's
    /// kappa sum (summed as the router sums them) and the number of members.
    Clusters {
        set: Arc<crate::rows::RowStore>,
        site: Vec<u32>,
        kappa: Arc<Vec<f32>>,
        sums: Vec<f64>,
        n: usize,
    },
}

impl Sites {
    fn site_and_kappa(&self, id: u64) -> Option<(u32, f32)> {
        match self {
            Sites::Router(r) => r.site_and_kappa(id),
            Sites::Clusters { set, site, kappa, .. } => {
                let r = set.row_of(id)?;
                let s = *site.get(r)?;
                (s != u32::MAX).then(|| (s, kappa[r]))
            }
        }
    }

    fn sums(&self) -> (&[f64], usize) {
        match self {
            Sites::Router(r) => (r.kappa_sums(), r.len()),
            Sites::Clusters { sums, n, .. } => (sums, *n),
        }
    }
}

impl FeedbackSink {
    /// Drives the pile with `losses` of rows `ids` (see [`M2m::feedback`]); returns the topplings.
    pub(crate) fn feedback(&self, ids: &[u64], losses: &[f32]) -> Result<u64> {
        if ids.len() != losses.len() {
            let reason = format!("{} ids but {} losses", ids.len(), losses.len());
            return Err(Error::Config { field: "losses", reason });
        }
        // Rows the router does not know (deleted since the export) drive nothing.
        let (mut sites, mut kappa, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for (&id, &l) in ids.iter().zip(losses) {
            if let Some((s, k)) = self.sites.site_and_kappa(id) {
                sites.push(s);
                kappa.push(k);
                kept.push(l);
            }
        }
        let (sums, n) = self.sites.sums();
        self.pile.with(|p| -> Result<u64> {
            // Each row's importance weight under the pile as it stands: 1 / (N p).
            let probs = p.probabilities_of(&sites, &kappa, sums, n)?;
            let weights: Vec<f64> = probs.iter().map(|q| 1.0 / (n as f64 * q)).collect();
            Ok(p.record_losses(&sites, &kept, &weights)?)
        })?
    }
}

/// Where the router, built at its first use, finds the build's neighbourhoods.
#[derive(Debug)]
pub(crate) enum NeighbourSource {
    /// None: no kappa fit, or the stored one is of other rows.
    Unknown,
    /// Held in RAM: a build without a data directory to store them in (in memory, or read-only).
    Held(Arc<StoredNeighbours>),
    /// Stored in `dir`'s [`NEIGHBOURS_BLOB`], of the rows whose ids hash to `ids` ([`ids_hash`]) when the
    /// controller started: read when the router is built, and left out if they changed since (a writer
    /// rebuilt beside a read-only engine).
    Stored { dir: PathBuf, ids: u64 },
}

/// A hash of `ids` in order, to recognise a stored neighbourhood blob as the one checked at start.
pub(crate) fn ids_hash(ids: &[u64]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

/// The controller: the router over the index's clusters (the SOC sites), and the pile.
///
/// The router (a map of every routed id, the members' kappa and alpha, the build's neighbourhoods:
/// about 140 bytes a row) is built at its first use, by generation, energy, an export or feedback,
/// never by a query: until then the sites of ids are the index's fine clusters, which is what a router
/// built then would say. Inserts and deletes keep it current once it is built.
#[derive(Debug)]
pub(crate) struct Controller {
    router: OnceLock<Arc<Router>>,
    /// Serialises builders of the router (two first uses at once build it once).
    building: Mutex<()>,
    neighbours: NeighbourSource,
    /// Ids removed since the controller started while the router was not built: their stored
    /// neighbourhoods are no longer theirs (as [`Router::remove`] drops them from a built router).
    dropped: HashSet<u64>,
    pub(crate) pile: Arc<Pile>,
    /// Whether the engine writes (see [`Controller::pile`]: a writer replaces a damaged saved pile).
    writer: bool,
}

impl Controller {
    /// Records retrieval hits (lock-free; absorbed at the next read of the pile).
    pub(crate) fn record_hits(&self, index: Option<&Index>, ids: impl Iterator<Item = u64>) {
        for id in ids {
            if let Some(s) = self.site(index, id) {
                self.pile.hit(s);
            }
        }
    }

    /// The site of `id`: the router's when built, else its cluster in `index`.
    pub(crate) fn site(&self, index: Option<&Index>, id: u64) -> Option<u32> {
        match self.router.get() {
            Some(r) => r.site(id),
            None => index?.cluster_of(id),
        }
    }

    /// The pile, made first when it is still pending (see [`Pile`]) from `index`'s fine centroids and
    /// the saved state, carried over onto `index`'s clusters when it was saved on others.
    ///
    /// A damaged saved state is `Corrupt` naming the blob for a reader (and so for `m2m verify`, which
    /// opens read-only). A writer starts a fresh pile instead, with a warning, and its next save
    /// replaces the blob: the pile is state learned from feedback, not data, and a writer's first read
    /// of it can come after a flush, a compaction or a build has committed (a save absorbing hits),
    /// where an error would report a failure of what was done (as a writer's open dropped a damaged
    /// stored index before the pile was made lazily).
    pub(crate) fn pile(&self, index: Option<&Index>) -> Result<&Arc<Pile>> {
        self.pile.make(|saved_in| {
            let index = index.ok_or(Error::NoIndex { what: "the SOC controller" })?;
            let graph = site_graph(index)?;
            match saved_in {
                Some(dir) if dir.join(SOC_BLOB).exists() => match self.restored(index, dir, graph.clone()) {
                    Err(e @ Error::Tier(m2m_tier::Error::Corrupt { .. })) if self.writer => {
                        tracing::warn!("m2m: {e}; the SOC pile starts afresh (the next save replaces it)");
                        Ok(Sandpile::new(graph, SocConfig::default())?)
                    }
                    made => made,
                },
                _ => Ok(Sandpile::new(graph, SocConfig::default())?),
            }
        })?;
        Ok(&self.pile)
    }

    /// The pile saved in `dir` over `graph` (`index`'s sites), carried over when saved on other clusters.
    fn restored(&self, index: &Index, dir: &Path, graph: m2m_soc::SiteGraph) -> Result<Sandpile> {
        let bytes = m2m_tier::load_blob(dir, SOC_BLOB)?;
        let corrupt =
            |reason: String| Error::Tier(m2m_tier::Error::Corrupt { path: dir.join(SOC_BLOB), offset: 20, reason });
        // postcard is not self-describing: a blob of the older layout ends where the loss memory
        // would begin, so the current layout fails on it and the older one is tried.
        let saved: StoredPile = match postcard::from_bytes::<StoredPile>(&bytes) {
            Ok(saved) => saved,
            Err(e) => match postcard::from_bytes::<StoredPileV1>(&bytes) {
                Ok(v1) => StoredPile {
                    drawn: vec![0.0; v1.loads.len()],
                    lossy: vec![0.0; v1.loads.len()],
                    loads: v1.loads,
                    activity: v1.activity,
                    ids: v1.ids,
                    sites: v1.sites,
                },
                Err(_) => return Err(corrupt(e.to_string())),
            },
        };
        if saved.ids.len() != saved.sites.len()
            || saved.loads.len() != saved.activity.len()
            || saved.drawn.len() != saved.loads.len()
            || saved.lossy.len() != saved.loads.len()
        {
            return Err(corrupt("columns of different lengths".into()));
        }
        let index = Some(index);
        let same = saved.loads.len() == graph.len()
            && saved.ids.iter().zip(&saved.sites).all(|(&id, &s)| self.site(index, id).is_none_or(|now| now == s));
        let with_memory = |mut p: Sandpile| -> m2m_soc::Result<Sandpile> {
            p.set_loss_memory(&saved.drawn, &saved.lossy)?;
            Ok(p)
        };
        let pile = if same {
            Sandpile::restored(graph, SocConfig::default(), &saved.loads, &saved.activity).and_then(with_memory)
        } else {
            let old = Sandpile::restored(
                m2m_soc::SiteGraph::from_edges(saved.loads.len().max(1), &[])?,
                SocConfig::default(),
                &saved.loads,
                &saved.activity,
            )
            .and_then(with_memory);
            let old = old.map_err(|e| corrupt(e.to_string()))?;
            let pairs: Vec<(u32, u32)> = saved
                .ids
                .iter()
                .zip(&saved.sites)
                .filter_map(|(&id, &s)| self.site(index, id).map(|now| (s, now)))
                .collect();
            Sandpile::carried_over(graph, &old, &pairs)
        };
        pile.map_err(|e| corrupt(e.to_string()))
    }

    /// The router, when it has been built.
    pub(crate) fn built_router(&self) -> Option<&Arc<Router>> {
        self.router.get()
    }

    /// The router to change (an insert, a delete), when it has been built; `None` records nothing:
    /// the router built later reads the index as it is then.
    pub(crate) fn router_mut(&mut self) -> Option<&mut Router> {
        self.router.get_mut().map(Arc::make_mut)
    }

    /// Ids leaving the router (deleted, or upserted: removed and routed again): removed from a built
    /// router, remembered for one built later (their stored neighbourhoods are dropped then).
    pub(crate) fn remove(&mut self, ids: &[u64]) {
        match self.router.get_mut() {
            Some(r) => Arc::make_mut(r).remove(ids),
            None => self.dropped.extend(ids.iter().copied()),
        }
    }
}

/// The importance weights a sampling distribution gives: what every lake report shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightReport {
    /// Smallest weight 1 / (N p_i) over the rows.
    pub min: f64,
    /// Largest weight.
    pub max: f64,
    /// Effective sample size of an epoch of draws over its number of draws, N^2 / sum_i (1 / p_i): 1
    /// for uniform sampling, smaller the more the weights vary.
    pub ess_share: f64,
}

impl WeightReport {
    /// The report of probabilities `p` (summing to 1).
    pub fn of(p: &[f64]) -> WeightReport {
        let n = p.len().max(1) as f64;
        let (mut min, mut max, mut inv) = (f64::INFINITY, 0f64, 0f64);
        for &q in p {
            let w = 1.0 / (n * q);
            min = min.min(w);
            max = max.max(w);
            inv += 1.0 / q;
        }
        WeightReport { min, max, ess_share: n * n / inv }
    }
}

/// How close generated rows stay to their seeds: see [`M2m::fidelity`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// Generated rows measured.
    pub rows: usize,
    /// Mean cosine of a generated row to its seed.
    pub mean_cos_to_seed: f64,
    /// Share of generated rows whose cosine to the seed lies in the seed's own band of real neighbours:
    /// at least its 16th nearest neighbour's cosine and at most its nearest's.
    pub in_band: f64,
    /// Share of generated rows closer to the seed than the seed's 16th neighbour (the band's lower
    /// edge only: rows nearer than the nearest neighbour count too).
    pub within_16th: f64,
    /// Share of generated rows whose nearest real row has the seed's label (labels given only).
    pub label_agreement: Option<f64>,
    /// Share of seeds whose nearest other real row has their own label (the real rows' 1-NN agreement,
    /// what `label_agreement` compares with).
    pub real_label_agreement: Option<f64>,
    /// Generated rows that are a copy of a real row (cosine >= 0.9999 to their nearest).
    pub copies: usize,
    /// Largest cosine of a generated row to its nearest real row.
    pub max_cos_to_real: f64,
}

impl M2m {
    /// Starts the controller over the current index, with the pile carried over from `old` (the
    /// controller and the index it ran on), or fresh. The router is not built here: see [`Controller`]
    /// and [`router`](Self::router); `neighbours` says where it will find the build's neighbourhoods.
    pub(crate) fn start_controller(
        &mut self,
        neighbours: NeighbourSource,
        old: Option<(Controller, Option<Index>)>,
    ) -> Result<()> {
        // Routing lives on the sphere: no controller over an inner-product or L2 index.
        let Some(index) = self.index.as_ref().filter(|i| i.metric() == crate::Metric::Cosine) else {
            self.soc = None;
            return Ok(());
        };
        let pile = match old {
            // A pile never read and never hit is a fresh one (or the saved one, still to be read).
            Some((old, _)) if old.pile.untouched() => Pile::pending(index.n_fine(), old.pile.saved_in()),
            Some((old, old_index)) => {
                // (old site, new site) of every id both know; the new sites are the new index's clusters,
                // as a router built on it would say.
                let pairs: Vec<(u32, u32)> = self
                    .set
                    .ids()
                    .filter_map(|id| Some((old.site(old_index.as_ref(), id)?, index.cluster_of(id)?)))
                    .collect();
                let graph = site_graph(index)?;
                // The new index is committed by now: a pile that cannot be carried over is never an error
                // that would leave the engine without a controller. A damaged saved pile starts afresh (a
                // warning; the next save replaces it, as `Controller::pile` does for a writer); a saved
                // pile that could not be read for another reason (IO, a newer version) stays pending on
                // its blob, which nothing overwrites until it is read (carried over onto these clusters
                // then), so that a transient error or a downgrade does not destroy it.
                let carried = old
                    .pile(old_index.as_ref())
                    .and_then(|p| p.with(|p| Sandpile::carried_over(graph.clone(), p, &pairs))?.map_err(Error::from));
                match carried {
                    Ok(pile) => Pile::new(pile),
                    Err(e @ Error::Tier(m2m_tier::Error::Corrupt { .. })) | Err(e @ Error::Soc(_)) => {
                        tracing::warn!("m2m: the SOC pile could not be carried over ({e}); it starts afresh");
                        Pile::new(Sandpile::new(graph, SocConfig::default())?)
                    }
                    Err(e) => {
                        tracing::warn!("m2m: the saved SOC pile could not be read ({e}); left as it is");
                        Pile::pending(index.n_fine(), old.pile.saved_in())
                    }
                }
            }
            None => Pile::pending(index.n_fine(), None),
        };
        self.soc = Some(Controller {
            router: OnceLock::new(),
            building: Mutex::new(()),
            neighbours,
            dropped: HashSet::new(),
            pile: Arc::new(pile),
            writer: !self.is_read_only(),
        });
        Ok(())
    }

    /// The SOC router, built at its first use over the index as it is then (see [`Controller`]);
    /// `NoIndex` naming `what` without a cosine index. Queries never call it.
    pub(crate) fn router(&self, what: &'static str) -> Result<&Arc<Router>> {
        let ctl = self.soc.as_ref().ok_or(Error::NoIndex { what })?;
        if let Some(r) = ctl.router.get() {
            return Ok(r);
        }
        let _one = ctl.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = ctl.router.get() {
            return Ok(r);
        }
        let index = self.index.as_ref().ok_or(Error::NoIndex { what })?;
        let router = self.build_router(ctl, index)?;
        Ok(ctl.router.get_or_init(|| Arc::new(router)))
    }

    /// The router over `index`: every live member with its kappa and alpha, the build's neighbourhoods
    /// (read from the data directory when stored there) less those of ids removed since the start.
    fn build_router(&self, ctl: &Controller, index: &Index) -> Result<Router> {
        let set = &self.set;
        let (kappa, alpha, deleted) = (&self.kappa, &self.alpha, &self.deleted);
        let mut router = Router::new(index, |id| {
            let r = set.row_of(id)?;
            (!deleted.contains(&id)).then(|| (kappa[r], alpha[r]))
        })?;
        // The lake's seeded chains keep their seeds' prepared bases within a sixteenth of the warm budget.
        router.set_seed_cache_budget(usize::try_from(self.config.warm_budget_bytes / 16).unwrap_or(usize::MAX));
        // Each seed's temperature from its own band of real neighbours (within 16x of the one asked).
        router.set_seeded_run_length(m2m_soc::SeededRunLength::TemperatureToBandMiddle { max_factor: 16 });
        let loaded;
        let nb = match &ctl.neighbours {
            NeighbourSource::Unknown => None,
            NeighbourSource::Held(nb) => Some(&**nb),
            NeighbourSource::Stored { dir, ids } => {
                loaded = crate::engine::load_neighbours(dir)?.filter(|nb| ids_hash(&nb.ids) == *ids);
                if loaded.is_none() {
                    tracing::warn!("m2m: {} changed since the open; routing without it", NEIGHBOURS_BLOB);
                }
                loaded.as_ref()
            }
        };
        if let Some(nb) = nb {
            let k = nb.k as usize;
            if ctl.dropped.is_empty() {
                router.set_neighbourhoods(&nb.ids, &nb.neighbours, k)?;
            } else {
                let (mut ids, mut lists) = (Vec::new(), Vec::new());
                for (i, &id) in nb.ids.iter().enumerate().filter(|(_, id)| !ctl.dropped.contains(id)) {
                    ids.push(id);
                    lists.extend_from_slice(&nb.neighbours[i * k..(i + 1) * k]);
                }
                router.set_neighbourhoods(&ids, &lists, k)?;
            }
        }
        Ok(router)
    }

    /// Restores the saved pile of `dir`, if any, onto the current controller (carried over when it was
    /// saved on other clusters), called right after [`start_controller`](Self::start_controller) at an
    /// open: the pile is made at its first read ([`Pile`]), and reads the saved state then.
    pub(crate) fn restore_pile(&mut self, dir: &Path) -> Result<()> {
        let (Some(ctl), Some(index)) = (self.soc.as_mut(), self.index.as_ref()) else { return Ok(()) };
        if dir.join(SOC_BLOB).exists() {
            ctl.pile = Arc::new(Pile::pending(index.n_fine(), Some(dir.to_path_buf())));
        }
        Ok(())
    }

    /// Reads and checks what an open leaves to its first use: the saved SOC pile, decoded, checked and
    /// restored onto the index's clusters (an open no longer reads it). `Corrupt` naming
    /// the blob when it is damaged. `m2m verify` calls it after a read-only open; a no-op without a
    /// controller (no cosine index).
    pub fn check_deferred(&self) -> Result<()> {
        match &self.soc {
            Some(ctl) => ctl.pile(self.index.as_ref()).map(drop),
            None => Ok(()),
        }
    }

    /// Saves the pile in the data directory (a no-op in memory, read-only or without an index).
    pub(crate) fn save_pile(&self) -> Result<()> {
        let (Some(dir), Some(ctl)) = (self.config.data_dir.as_ref(), self.soc.as_ref()) else { return Ok(()) };
        // A pile not made and not hit since the open is what is saved already (or a fresh one).
        if self.is_read_only() || ctl.pile.untouched() {
            return Ok(());
        }
        // Called after a flush, compaction or build committed: a pile that cannot be made (its saved
        // state unreadable for a reason other than damage, which a writer replaces) is not saved, with a
        // warning, rather than reported as a failure of what was committed. `tick` reads it first and
        // returns the error.
        let pile = match ctl.pile(self.index.as_ref()) {
            Ok(pile) => pile,
            Err(e) => {
                tracing::warn!("m2m: the SOC pile is not saved: {e}");
                return Ok(());
            }
        };
        let (loads, activity, drawn, lossy) = pile.with(|p| {
            let (d, l) = p.loss_memory();
            (p.loads().to_vec(), p.activity().to_vec(), d.to_vec(), l.to_vec())
        })?;
        let live = self.live_rows();
        let ids: Vec<u64> = live.iter().map(|&r| self.set.id(r)).collect();
        let sites: Vec<u32> = ids.iter().map(|&id| ctl.site(self.index.as_ref(), id).unwrap_or(u32::MAX)).collect();
        let (ids, sites): (Vec<u64>, Vec<u32>) = ids.into_iter().zip(sites).filter(|&(_, s)| s != u32::MAX).unzip();
        let stored = StoredPile { loads, activity, ids, sites, drawn, lossy };
        let bytes = postcard::to_allocvec(&stored)
            .map_err(|e| Error::Config { field: "soc", reason: format!("does not serialise: {e}") })?;
        m2m_tier::store_blob(dir, SOC_BLOB, &bytes)?;
        Ok(())
    }

    /// Training feedback: the losses of rows `ids` (as the training loop computed them on a batch)
    /// drive the SOC controller: each row adds one grain at its site (the draw) and grains in
    /// proportion to its loss over the batch's mean loss, so sites the model gets wrong are sampled
    /// more in the next export. Ids no longer live are ignored. Returns the topplings caused.
    /// The state is saved with [`tick`](Self::tick) and [`flush`](Self::flush).
    pub fn feedback(&self, ids: &[u64], losses: &[f32]) -> Result<u64> {
        // Called per batch: the router (built once) answers, not the index's clusters gathered per call.
        let router = Arc::clone(self.router("feedback")?);
        let ctl = self.soc.as_ref().ok_or(Error::NoIndex { what: "feedback" })?;
        let pile = Arc::clone(ctl.pile(self.index.as_ref())?);
        FeedbackSink { sites: Sites::Router(router), pile }.feedback(ids, losses)
    }

    /// Ends a round of training (an epoch): the controller's activity decays, and the pile is saved in
    /// the data directory, where DataLoader workers and resumed runs read it.
    pub fn tick(&self) -> Result<()> {
        let ctl = self.soc.as_ref().ok_or(Error::NoIndex { what: "tick" })?;
        ctl.pile(self.index.as_ref())?.with(Sandpile::tick)?;
        self.save_pile()
    }

    /// The sampling probability of every live row (in the order of the live rows) under the
    /// controller's current state.
    pub(crate) fn row_probabilities(&self, live: &[usize]) -> Result<(Vec<u32>, Vec<f64>)> {
        let ctl = self.soc.as_ref().ok_or(Error::NoIndex { what: "importance sampling" })?;
        let index = self.index.as_ref();
        let site_of: Vec<u32> = live.iter().map(|&r| ctl.site(index, self.set.id(r)).unwrap_or(0)).collect();
        let kappa: Vec<f32> = live.iter().map(|&r| self.kappa[r]).collect();
        let probs = ctl.pile(index)?.with(|p| p.splat_probabilities(&site_of, &kappa))??;
        Ok((site_of, probs))
    }

    /// The importance weights an export with importance sampling would give now.
    pub fn weight_report(&self) -> Result<WeightReport> {
        let (_, p) = self.row_probabilities(&self.live_rows())?;
        Ok(WeightReport::of(&p))
    }

    /// How the last build fitted kappa (none without a build that learned kappa).
    pub fn kappa_fit(&self) -> Option<KappaFit> {
        self.kappa_fit
    }

    /// The Langevin settings of the engine, relative to the fitted model when kappa was learned: the
    /// temperature scaled to the ambient dimension ([`m2m_soc::kappa::ambient_temperature`]), and the
    /// step scaled by `init_kappa` / (mean learned kappa).
    ///
    /// Why the step: a kernel of concentration kappa pulls a chain back at rate 2 kappa, so a step dt
    /// moves it 2 kappa dt of the kernel's relaxation time, and the explicit scheme is unstable beyond
    /// about 1. The step sizes are given for kernels of `init_kappa` (the kappa every splat has until
    /// kappa is learned); learned kappa grows with the fit's sphere dimension, kappa ~ (p - 1) / (4 (1 -
    /// r)): a mean of 14 for 3,000 digits (p ~ 2.7) but ~800 for 10,000 (p ~ 60), where an unscaled
    /// step of 0.004 is 6 relaxation times and chains leave their neighbourhood. Scaled, a step moves a
    /// chain the same share of its kernel's relaxation time whatever the dimension and the data.
    pub(crate) fn langevin_config(&self, steps: usize, overrides: &LangevinOverrides) -> Result<LangevinConfig> {
        let t = overrides.temperature.unwrap_or(self.config.temperature);
        let scale =
            self.kappa_fit.map_or(1.0, |f| m2m_soc::kappa::ambient_temperature(f.sphere_dimension, self.config.dim));
        let dt_scale = self.step_kappa()?.map_or(1.0, |k| f64::from(self.config.init_kappa) / f64::from(k));
        let dt = f64::from(overrides.step_size.unwrap_or(self.config.langevin_dt)) * dt_scale;
        Ok(LangevinConfig {
            steps,
            dt: (dt as f32).clamp(f32::MIN_POSITIVE, 1.0),
            gamma: self.config.langevin_gamma,
            temperature: (f64::from(t) * scale) as f32,
            dynamics: overrides.dynamics.unwrap_or(self.config.langevin_dynamics).into(),
            ..LangevinConfig::default()
        })
    }

    /// The mean learned kappa (none without learned kappa): the step of [`langevin_config`] is scaled
    /// by `init_kappa` / this, and a seeded chain's by this / its seed's kappa ([`run_routed`]), so
    /// that each chain moves the same share of its own seed kernel's relaxation time. Builds the
    /// router (its kappa sums) when there is learned kappa.
    ///
    /// [`langevin_config`]: Self::langevin_config
    pub(crate) fn step_kappa(&self) -> Result<Option<f32>> {
        if self.soc.is_none() || self.kappa_fit.is_none() {
            return Ok(None);
        }
        let router = self.router("the SOC controller")?;
        let mean = router.kappa_sums().iter().sum::<f64>() / router.len().max(1) as f64;
        Ok((mean > 0.0 && mean.is_finite()).then_some(mean as f32))
    }

    /// Training feedback for running loaders: the router's sites and kappa when it is built, else the
    /// index's clusters now (see [`FeedbackSink`]; no router is built).
    pub(crate) fn feedback_sink(&self, what: &'static str) -> Result<FeedbackSink> {
        let ctl = self.soc.as_ref().ok_or(Error::NoIndex { what })?;
        // The sink feeds the pile without the index: it gets a made one.
        let pile = Arc::clone(ctl.pile(self.index.as_ref())?);
        if let Some(router) = ctl.built_router() {
            return Ok(FeedbackSink { sites: Sites::Router(Arc::clone(router)), pile });
        }
        let index = self.index.as_ref().ok_or(Error::NoIndex { what })?;
        let mut site = vec![u32::MAX; self.set.len()];
        let (mut sums, mut n) = (Vec::with_capacity(index.n_fine()), 0);
        for (f, cl) in index.parts().clusters.iter().enumerate() {
            // The router's members: the cluster's live ids, their kappa summed in member order.
            let mut sum = 0f64;
            for &id in &cl.ids {
                if let Some(r) = self.set.row_of(id).filter(|_| !self.deleted.contains(&id)) {
                    site[r] = f as u32;
                    sum += f64::from(self.kappa[r]);
                    n += 1;
                }
            }
            sums.push(sum);
        }
        let sites = Sites::Clusters { set: Arc::clone(&self.set), site, kappa: Arc::clone(&self.kappa), sums, n };
        Ok(FeedbackSink { sites, pile })
    }

    /// Fidelity of generated rows `generated` (unit rows, `dim` each) to their seeds `seeds` (ids of
    /// live splats, one per row): cosine to the seed, the seed's band of real neighbours (1st to
    /// 16th, by exact search), the label of the nearest real row against the seed's (when `label`
    /// knows them), and copies. Searches the index directly: measuring does not drive the controller.
    pub fn fidelity(
        &self,
        seeds: &[u64],
        generated: &[f32],
        label: Option<&dyn Fn(u64) -> Option<u32>>,
    ) -> Result<Fidelity> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "fidelity" })?;
        let dim = self.config.dim;
        if generated.len() != seeds.len() * dim || seeds.is_empty() {
            let reason = format!("{} values are not {} rows of {dim}", generated.len(), seeds.len());
            return Err(Error::Config { field: "generated", reason });
        }
        let mut seed_rows = Vec::with_capacity(generated.len());
        for (i, &id) in seeds.iter().enumerate() {
            let r = self
                .set
                .row_of(id)
                .filter(|_| !self.deleted.contains(&id))
                .ok_or_else(|| Error::Config { field: "seeds", reason: format!("seed {i} (id {id}) is not live") })?;
            seed_rows.extend_from_slice(self.set.mu_row(r));
        }
        let params = SearchParams::default();
        let around = index.search_batch(&seed_rows, NEIGHBOURS + 1, Lod::Exact, &params)?;
        let nearest = index.search_batch(generated, 1, Lod::Exact, &params)?;
        let mut out = Fidelity { rows: seeds.len(), ..Fidelity::default() };
        let (mut agree, mut real_agree, mut labelled) = (0usize, 0usize, 0usize);
        for (i, &seed) in seeds.iter().enumerate() {
            let g = &generated[i * dim..(i + 1) * dim];
            let cos = f64::from(m2m_index::kernels::dot(g, &seed_rows[i * dim..(i + 1) * dim]));
            out.mean_cos_to_seed += cos / seeds.len() as f64;
            let others: Vec<f64> =
                around[i].iter().filter(|h| h.id != seed).map(|h| f64::from(h.score)).take(NEIGHBOURS).collect();
            if let (Some(&first), Some(&last)) = (others.first(), others.last()) {
                out.in_band += f64::from(u8::from(cos >= last && cos <= first));
                out.within_16th += f64::from(u8::from(cos >= last));
            }
            let near = nearest[i].first();
            let near_cos = near.map_or(0.0, |h| f64::from(h.score));
            out.max_cos_to_real = out.max_cos_to_real.max(near_cos);
            out.copies += usize::from(near_cos >= 0.9999);
            if let (Some(label), Some(want)) = (label, label.and_then(|l| l(seed))) {
                labelled += 1;
                agree += usize::from(near.and_then(|h| label(h.id)) == Some(want));
                let first_other = around[i].iter().find(|h| h.id != seed);
                real_agree += usize::from(first_other.and_then(|h| label(h.id)) == Some(want));
            }
        }
        out.in_band /= seeds.len() as f64;
        out.within_16th /= seeds.len() as f64;
        if labelled > 0 {
            out.label_agreement = Some(agree as f64 / labelled as f64);
            out.real_label_agreement = Some(real_agree as f64 / labelled as f64);
        }
        Ok(out)
    }
}

impl M2m {
    /// The routed energy's truncation at `points` (unit rows): for each, the share of the exact mixture
    /// sum_i alpha_i exp(-kappa_i |x - mu_i|^2) over every live splat that the splats Langevin routes a
    /// chain there to leave out (1 - exp(E_exact - E_routed), in [0, 1]). With `seeds` (one live id per
    /// point) chains are routed as the data lake routes them (the seed and its neighbours), otherwise
    /// as [`generate`](Self::generate) routes them. Exact sums visit every splat: for reports and tests.
    pub fn routing_truncation(&self, points: &[f32], seeds: Option<&[u64]>) -> Result<Vec<f64>> {
        let router = self.router("routing_truncation")?;
        let dim = self.config.dim;
        let n = points.len() / dim;
        if points.len() != n * dim || n == 0 || seeds.is_some_and(|s| s.len() != n) {
            let reason = format!("{} values are not rows of {dim} (one seed each)", points.len());
            return Err(Error::Config { field: "points", reason });
        }
        let live = self.live_rows();
        let mut mu = Vec::with_capacity(live.len() * dim);
        live.iter().for_each(|&r| mu.extend_from_slice(self.set.mu_row(r)));
        let kappa: Vec<f32> = live.iter().map(|&r| self.kappa[r]).collect();
        let alpha: Vec<f32> = live.iter().map(|&r| self.alpha[r]).collect();
        let all = m2m_soc::Splats::new(dim, &mu, &kappa, &alpha)?;
        points
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, x)| {
                let routed = router.route_seed(seeds.map(|s| s[i]), x, 4, NEIGHBOURS + 1)?;
                let exact = m2m_soc::energy::energy(x, &all)?;
                let kept = m2m_soc::energy::energy(x, &routed.splats()?)?;
                Ok((1.0 - (exact - kept).exp()).clamp(0.0, 1.0))
            })
            .collect()
    }
}

/// The SOC sites' graph: the index's fine clusters, each joined to its 6 nearest by centroid (what
/// [`Router::site_graph`] gives a router built on it).
fn site_graph(index: &Index) -> Result<m2m_soc::SiteGraph> {
    Ok(m2m_soc::SiteGraph::knn(&index.parts().fine, index.dim(), 6)?)
}

/// Langevin on unit rows `x`, each chain routed by its own neighbourhood: a chain seeded at a splat
/// (`seeds[c]`) runs against that splat and its neighbours from the kappa fit; any other chain
/// against the largest terms of its 4 nearest clusters.
///
/// Seeded chains run one by one in parallel ([`Router::run_seeded`]: one basis per chain, no group to
/// stage, buffers reused per thread), with `step_kappa` (the mean kappa [`M2m::step_kappa`], against
/// which `config.dt` was scaled) making each chain's step relative to its own seed's kappa; the rest (no neighbourhood, or dynamics the single-chain method does not simulate)
/// are grouped by seed, each group sharing its routed splats, and the groups run in parallel.
pub(crate) fn run_routed(
    router: &Router,
    config: &LangevinConfig,
    x: &mut [f32],
    dim: usize,
    seed: u64,
    seeds: Option<&[u64]>,
    step_kappa: Option<f32>,
) -> Result<()> {
    let chains = x.len() / dim;
    let seeds = seeds.filter(|s| s.len() == chains);
    let done = match seeds {
        Some(s) => router.run_seeded(config, x, s, seed, step_kappa)?,
        None => vec![false; chains],
    };
    run_rest(router, config, x, dim, seed, seeds, &done)
}

/// The part of [`run_routed`] after [`Router::run_seeded`]: the chains `done` does not mark, routed
/// from where they are (grouped by seed) and run as groups with `seed`.
pub(crate) fn run_rest(
    router: &Router,
    config: &LangevinConfig,
    x: &mut [f32],
    dim: usize,
    seed: u64,
    seeds: Option<&[u64]>,
    done: &[bool],
) -> Result<()> {
    let chains = x.len() / dim;
    let seeds = seeds.filter(|s| s.len() == chains);
    // The other chains grouped by seed (deterministic order: first appearance).
    let mut group_of: HashMap<u64, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for c in (0..chains).filter(|&c| !done[c]) {
        match seeds {
            Some(s) => {
                let g = *group_of.entry(s[c]).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[g].push(c);
            }
            None => members.push(vec![c]),
        }
    }
    if members.is_empty() {
        return Ok(());
    }
    let mut staged: Vec<(Vec<f32>, m2m_soc::Routed)> = Vec::with_capacity(members.len());
    for m in &members {
        let first = &x[m[0] * dim..(m[0] + 1) * dim];
        let routed = router.route_seed(seeds.map(|s| s[m[0]]), first, 4, NEIGHBOURS + 1)?;
        let mut rows = Vec::with_capacity(m.len() * dim);
        for &c in m {
            rows.extend_from_slice(&x[c * dim..(c + 1) * dim]);
        }
        staged.push((rows, routed));
    }
    {
        let mut groups: Vec<Group<'_>> = Vec::with_capacity(staged.len());
        for (rows, routed) in &mut staged {
            groups.push(Group { x: rows.as_mut_slice(), splats: routed.splats()? });
        }
        run(config, &mut groups, seed)?;
    }
    for (m, (rows, _)) in members.iter().zip(&staged) {
        for (i, &c) in m.iter().enumerate() {
            x[c * dim..(c + 1) * dim].copy_from_slice(&rows[i * dim..(i + 1) * dim]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{DataLoaderConfig, M2m, M2mConfig};

    /// The pile's loss memory is saved by `tick` and read back on open; a blob of the layout before
    /// the memory opens with an empty one; a damaged blob is a typed error. Mutations caught: the
    /// memory left out of the save (the reopened memory is empty), the older layout refused (open
    /// fails), or read as the new one with garbage.
    #[test]
    fn the_loss_memory_is_saved_and_older_blobs_open_without_it() {
        let dim = 16;
        let data: Vec<f32> = (0..600 * dim).map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut e = M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(dim).data_dir(&path) }).unwrap();
        let ids = e.add_splats(&data).unwrap();
        e.build_index().unwrap();
        let losses: Vec<f32> = (0..ids.len()).map(|i| 0.1 + (i % 13) as f32).collect();
        e.feedback(&ids, &losses).unwrap();
        e.tick().unwrap();
        let memory = |e: &M2m| {
            let pile = e.soc.as_ref().unwrap().pile(e.index.as_ref()).unwrap();
            pile.with(|p| (p.loss_memory().0.to_vec(), p.loss_memory().1.to_vec())).unwrap()
        };
        let saved = memory(&e);
        assert!(saved.0.iter().any(|&d| d > 0.0) && saved.1.iter().any(|&l| l > 0.0), "feedback reached the memory");
        drop(e);
        let e = M2m::open(&path).unwrap();
        assert_eq!(memory(&e), saved, "the reopened memory");
        drop(e);

        // The same state in the older layout: it opens, with an empty memory.
        let bytes = m2m_tier::load_blob(&path, super::SOC_BLOB).unwrap();
        let new: super::StoredPile = postcard::from_bytes(&bytes).unwrap();
        let old = super::StoredPileV1 { loads: new.loads, activity: new.activity, ids: new.ids, sites: new.sites };
        m2m_tier::store_blob(&path, super::SOC_BLOB, &postcard::to_allocvec(&old).unwrap()).unwrap();
        let e = M2m::open(&path).unwrap();
        let (drawn, lossy) = memory(&e);
        assert_eq!((drawn.len(), lossy.len()), (saved.0.len(), saved.1.len()));
        assert!(drawn.iter().chain(&lossy).all(|&v| v == 0.0), "an older blob's memory is empty");
        drop(e);

        // A blob cut short is neither layout: a reader gets a typed error naming the blob at the pile's
        // first read (a writer warns and starts a fresh pile there).
        m2m_tier::store_blob(&path, super::SOC_BLOB, &bytes[..bytes.len() / 2]).unwrap();
        let err = M2m::open_read_only(&path).unwrap().tick().unwrap_err();
        assert!(err.to_string().contains(super::SOC_BLOB), "{err}");
    }

    /// An export without generation or importance sampling builds no router, and the feedback its
    /// loader takes drives the pile exactly as the feedback of a loader exported after the router was
    /// built (same topplings, same loads bit for bit), with deleted and unknown ids ignored alike.
    /// Mutations caught: the export building the router (`built_router` is some), a site other than
    /// the row's cluster (tried: the neighbouring cluster; the topplings differ). The deleted-id guard
    /// of the sink cannot be told apart here: a delete removes the id from the index too.
    #[test]
    fn an_export_builds_no_router_and_its_feedback_drives_the_pile_as_a_routers_would() {
        let dim = 16;
        let data: Vec<f32> =
            (0..900 * dim).map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0 + ((i % dim) == 0) as u8 as f32).collect();
        let engine = || {
            let mut e = M2m::create(M2mConfig::default().dim(dim)).unwrap();
            let ids = e.add_splats(&data).unwrap();
            e.build_index().unwrap();
            e.delete(&ids[10..15]).unwrap();
            (e, ids)
        };
        let (routed, ids) = engine();
        let (lazy, _) = engine();
        routed.router("test").unwrap();
        let config = DataLoaderConfig { batch_size: 64, epochs: 1, ..DataLoaderConfig::default() };
        let (a, b) = (routed.export_to_dataloader(&config).unwrap(), lazy.export_to_dataloader(&config).unwrap());
        assert!(lazy.soc.as_ref().unwrap().built_router().is_none(), "the export built the router");
        let fed: Vec<u64> = ids.iter().copied().step_by(3).chain([ids[11], 1 << 40]).collect();
        let losses: Vec<f32> = (0..fed.len()).map(|i| 0.1 + (i % 17) as f32 * 0.7).collect();
        for round in 0..3 {
            assert_eq!(a.feedback(&fed, &losses).unwrap(), b.feedback(&fed, &losses).unwrap(), "round {round}");
        }
        let loads =
            |e: &M2m| e.soc.as_ref().unwrap().pile(e.index.as_ref()).unwrap().with(|p| p.loads().to_vec()).unwrap();
        assert_ne!(loads(&lazy), vec![0.0; loads(&lazy).len()], "the feedback reached the pile");
        assert_eq!(loads(&routed), loads(&lazy));
        assert!(lazy.soc.as_ref().unwrap().built_router().is_none(), "feedback built the router");
    }

    /// An open does not make the pile (its site graph is n_fine^2 d), yet the first read gives the pile
    /// that was saved, loads and activity bit for bit, for a writer and a reader; a flush after an
    /// open that never read nor hit the pile leaves the saved state as it was; a damaged saved state
    /// is reported, typed and naming the blob, at the first read instead of failing the open.
    /// Mutations caught: restoring a fresh pile instead of the saved one (the loads differ), making
    /// the pile at the open (`untouched` is false), a flush that makes an untouched pile to save it
    /// (n_fine^2 d for nothing: `untouched` is false after it), the corrupt blob ignored.
    #[test]
    fn the_pile_is_made_at_its_first_read_as_it_was_saved() {
        let dim = 16;
        let data: Vec<f32> =
            (0..900 * dim).map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0 + ((i % dim) == 0) as u8 as f32).collect();
        let dir = tempfile::tempdir().unwrap();
        let state = |e: &M2m| {
            e.soc
                .as_ref()
                .unwrap()
                .pile(e.index.as_ref())
                .unwrap()
                .with(|p| (p.loads().to_vec(), p.activity().to_vec()))
        };
        let saved = {
            let mut e = M2m::create(M2mConfig::default().dim(dim).data_dir(dir.path())).unwrap();
            let ids = e.add_splats(&data).unwrap();
            e.build_index().unwrap();
            let losses: Vec<f32> = (0..ids.len()).map(|i| 0.1 + (i % 13) as f32 * 0.9).collect();
            e.feedback(&ids, &losses).unwrap();
            e.tick().unwrap();
            e.flush().unwrap();
            state(&e).unwrap()
        };
        assert!(saved.0.iter().any(|&l| l != 0.0), "the feedback left loads to save");
        let blob = std::fs::read(dir.path().join(super::SOC_BLOB)).unwrap();
        {
            let mut writer = M2m::open(dir.path()).unwrap();
            assert!(writer.soc.as_ref().unwrap().pile.untouched(), "the open made the pile");
            writer.flush().unwrap();
            assert!(writer.soc.as_ref().unwrap().pile.untouched(), "the flush made the pile to save it");
            assert_eq!(std::fs::read(dir.path().join(super::SOC_BLOB)).unwrap(), blob, "the saved pile changed");
            assert_eq!(state(&writer).unwrap(), saved, "the writer's pile");
        }
        let reader = M2m::open_read_only(dir.path()).unwrap();
        assert!(reader.soc.as_ref().unwrap().pile.untouched());
        assert_eq!(state(&reader).unwrap(), saved, "the reader's pile");

        // A damaged pile: the reader's first read is `Corrupt` naming the blob; the writer's starts a
        // fresh pile (its first read may follow a committed flush or build) and saves it.
        m2m_tier::store_blob(dir.path(), super::SOC_BLOB, b"forged, with a valid checksum").unwrap();
        let reader = M2m::open_read_only(dir.path()).unwrap();
        assert!(reader.index().is_some(), "a damaged pile took the index");
        match reader.tick() {
            Err(crate::Error::Tier(m2m_tier::Error::Corrupt { path, .. })) => {
                assert_eq!(path, dir.path().join(super::SOC_BLOB));
            }
            other => panic!("{other:?}"),
        }
        let writer = M2m::open(dir.path()).unwrap();
        assert!(writer.index().is_some(), "a damaged pile took the index");
        writer.tick().expect("the writer starts a fresh pile");
        drop(writer);
        M2m::open_read_only(dir.path()).unwrap().tick().expect("the writer's tick replaced the damaged blob");
    }
}
