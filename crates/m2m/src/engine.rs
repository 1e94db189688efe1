//! The engine: splats in RAM (and, with a data directory, in m2m-tier's database), the index, the SOC
//! controller and the compute backend.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use m2m_index::{Index, IndexConfig, Lod, SearchParams};
use m2m_soc::{KappaConfig, Splats};
use m2m_splat::{Batch, SplatSet};

use crate::rows::RowStore;
use m2m_tier::{Db, DbOptions, Durability};

use crate::loader::MAX_GENERATE_STEPS;
use crate::training::{
    Controller, KappaFit, LangevinOverrides, NEIGHBOURS, NEIGHBOURS_BLOB, NeighbourSource, StoredNeighbours, ids_hash,
    run_routed,
};
use crate::{Device, Error, M2mConfig, Metric, Result};

/// The most values (rows times the dimension) that one call of [`M2m::generate`] or
/// [`M2m::generate_n`] returns: 2^28, a GiB of `f32`. More is refused with a typed error rather than
/// an allocation that aborts the process; the data lake streams any number in batches.
pub const MAX_GENERATE_VALUES: usize = 1 << 28;

/// Name of the engine's settings inside a data directory.
pub const CONFIG_BLOB: &str = "m2m-config.blob";
/// Name of the stored index (with the learned kappa and alpha) inside a data directory.
pub const INDEX_BLOB: &str = "m2m-index.blob";
/// Blob of the learned kappa and alpha of the last build (with their ids), read by [`crate::LakeReader`]
/// without the index.
pub const LEARNED_BLOB: &str = "m2m-learned.blob";
/// Blob of the ids upserted since the stored index was written (their vectors in it are the old ones):
/// `open` re-inserts them into the loaded index. Written before each upsert, removed when an index is
/// stored again.
pub const REPLACED_BLOB: &str = "m2m-replaced.blob";

/// The learned kappa and alpha of a build, by id.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Learned {
    pub(crate) ids: Vec<u64>,
    pub(crate) kappa: Vec<f32>,
    pub(crate) alpha: Vec<f32>,
}

/// Whether a build's ids are exactly the live ones (in any order): the rule by which a stored index and
/// its learned kappa and alpha are current.
pub(crate) fn same_ids(now: impl ExactSizeIterator<Item = u64> + Clone, then: &[u64]) -> bool {
    // The usual case, the same ids in the same order, needs no sorted copies.
    if now.len() != then.len() {
        return false;
    }
    if now.clone().eq(then.iter().copied()) {
        return true;
    }
    let (mut now, mut then): (Vec<u64>, Vec<u64>) = (now.collect(), then.to_vec());
    now.sort_unstable();
    then.sort_unstable();
    now == then
}

/// The stored neighbourhoods and kappa fit of `dir`, if any.
pub(crate) fn load_neighbours(dir: &Path) -> Result<Option<StoredNeighbours>> {
    if !dir.join(NEIGHBOURS_BLOB).exists() {
        return Ok(None);
    }
    let bytes = m2m_tier::load_blob(dir, NEIGHBOURS_BLOB)?;
    let corrupt =
        |reason: String| Error::Tier(m2m_tier::Error::Corrupt { path: dir.join(NEIGHBOURS_BLOB), offset: 20, reason });
    let nb: StoredNeighbours = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if nb.neighbours.len() != nb.ids.len() * nb.k as usize {
        return Err(corrupt("neighbour lists of the wrong length".into()));
    }
    Ok(Some(nb))
}

/// The kappa fit and ids of the stored neighbourhoods of `dir`, if any, checked as
/// [`load_neighbours`] checks them (the blob's checksum, its decoding, the lists' length) without
/// keeping the lists: what `open` needs before the router is built.
pub(crate) fn load_neighbours_head(dir: &Path) -> Result<Option<(KappaFit, Vec<u64>)>> {
    /// The neighbour lists' length, counted as they are decoded.
    struct Counted(usize);
    impl<'de> serde::Deserialize<'de> for Counted {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Counted, D::Error> {
            struct Count;
            impl<'de> serde::de::Visitor<'de> for Count {
                type Value = Counted;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a sequence of ids")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Counted, A::Error> {
                    let mut n = 0usize;
                    while seq.next_element::<u64>()?.is_some() {
                        n += 1;
                    }
                    Ok(Counted(n))
                }
            }
            d.deserialize_seq(Count)
        }
    }
    /// [`StoredNeighbours`] with its lists counted.
    #[derive(serde::Deserialize)]
    struct Head {
        fit: KappaFit,
        ids: Vec<u64>,
        k: u32,
        neighbours: Counted,
    }
    if !dir.join(NEIGHBOURS_BLOB).exists() {
        return Ok(None);
    }
    let bytes = m2m_tier::load_blob(dir, NEIGHBOURS_BLOB)?;
    let corrupt =
        |reason: String| Error::Tier(m2m_tier::Error::Corrupt { path: dir.join(NEIGHBOURS_BLOB), offset: 20, reason });
    let head: Head = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if Some(head.neighbours.0) != head.ids.len().checked_mul(head.k as usize) {
        return Err(corrupt("neighbour lists of the wrong length".into()));
    }
    Ok(Some((head.fit, head.ids)))
}

/// The stored learned values of `dir`, if any.
pub(crate) fn load_learned(dir: &Path) -> Result<Option<Learned>> {
    if !dir.join(LEARNED_BLOB).exists() {
        return Ok(None);
    }
    let bytes = m2m_tier::load_blob(dir, LEARNED_BLOB)?;
    let path = dir.join(LEARNED_BLOB);
    let learned: Learned = postcard::from_bytes(&bytes).map_err(|e| crate::validate::corrupt(&path, e.to_string()))?;
    crate::validate::learned(&path, &learned.ids, &learned.kappa, &learned.alpha)?;
    Ok(Some(learned))
}

/// What `build_index` stores in a data directory and `open` loads back.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredIndex {
    pub(crate) parts: m2m_index::IndexParts,
    pub(crate) ids: Vec<u64>,
    pub(crate) kappa: Vec<f32>,
    pub(crate) alpha: Vec<f32>,
}

/// One retrieved splat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Its id.
    pub id: u64,
    /// Its score under the metric (similarity, or squared distance for L2).
    pub score: f32,
    /// Its concentration.
    pub kappa: f32,
    /// Its weight.
    pub alpha: f32,
}

/// What the engine holds: the one statistics object, with the same fields in Rust, in Python
/// (`m2m.Stats`) and in `m2m info --json` (its serde form).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Live splats.
    pub splats: usize,
    /// Splats deleted since the last index build (still in RAM until then).
    pub deleted: usize,
    /// Dimension.
    pub dim: usize,
    /// The metric's short name (`cosine`, `ip`, `l2`).
    pub metric: String,
    /// The compute device's name.
    pub device: String,
    /// Segments on disk (0 in memory).
    pub segments: usize,
    /// Fine clusters of the index; `None` before `build_index`.
    pub fine_clusters: Option<usize>,
    /// Coarse clusters of the index; `None` before `build_index`.
    pub coarse_clusters: Option<usize>,
    /// The calibrated default nprobe (fine clusters scored per query at LOD 1 and 2); `None` without
    /// an index. A query's own `nprobe` overrides it. With an adaptive probe rule (`probe_margin`), the
    /// most clusters LOD 2 probes at the default.
    pub nprobe: Option<usize>,
    /// The margin of the adaptive probe rule the calibration chose, if it chose one: LOD 2 at the default
    /// nprobe then stops probing, per query, before the first cluster whose centroid trails the k-th best
    /// code estimate by more than this (`m2m_index::ProbeRule`). `None`: the fixed `nprobe`.
    pub probe_margin: Option<f32>,
    /// The calibrated default re-rank depth for k = 10 at LOD 2; `None` without an index.
    pub rerank: Option<usize>,
    /// Mean kappa of the live splats (0 when there is none).
    pub kappa_mean: f32,
    /// Smallest kappa of the live splats (0 when there is none).
    pub kappa_min: f32,
    /// Largest kappa of the live splats (0 when there is none).
    pub kappa_max: f32,
    /// Share of the splats whose learned kappa was clipped to [min_kappa, max_kappa] at the last build
    /// (none without learned kappa).
    pub kappa_clipped: Option<f64>,
    /// Which path answered batch retrievals (device or CPU) and the cost models that chose it.
    pub retrieval: crate::RetrievalStats,
}

/// An M2M engine: ingest, retrieval with levels of detail, energy, generation and the data lake.
#[derive(Debug)]
pub struct M2m {
    pub(crate) config: M2mConfig,
    /// The rows: ids in RAM (nothing per row for ids in sequence), vectors and norms read in place
    /// from the database's mapped segments (see `rows.rs`). Shared with running data loaders: a change while one runs copies the small columns
    /// (the loader keeps its view).
    pub(crate) set: Arc<RowStore>,
    pub(crate) kappa: Arc<Vec<f32>>,
    pub(crate) alpha: Arc<Vec<f32>>,
    pub(crate) deleted: HashSet<u64>,
    pub(crate) db: Option<Db>,
    /// The attributes of an engine without a database (in memory, or a reader's snapshot); a writer's
    /// are the database's (`attributes.rs`).
    pub(crate) attrs: Arc<m2m_tier::AttrTable>,
    pub(crate) index: Option<Index>,
    /// The SOC controller (sandpile, and the router once first used by generation, energy, export or
    /// feedback), started with the index and kept current by inserts and deletes: retrieval only
    /// records its hits, it never builds anything.
    pub(crate) soc: Option<Controller>,
    /// How the last build fitted kappa.
    pub(crate) kappa_fit: Option<KappaFit>,
    compute: m2m_gpu::Compute,
    /// Batch retrieval on the device (`gpu_search.rs`).
    pub(crate) gpu: crate::gpu_search::GpuRetrieval,
    /// The first id of the next automatic add. Without a database it is above every id the engine
    /// holds or held, deleted ones included (the in-memory add relies on it, `ingest.rs`); an opened
    /// database's starts above its live ids (the database refuses its tombstoned ones).
    pub(crate) next_id: u64,
    /// Opened with [`M2m::open_read_only`]: changes are refused.
    read_only: bool,
    /// The view a read-only engine was opened on (the data lake's tiers read it).
    snapshot: Option<m2m_tier::Snapshot>,
    /// Filters kept resolved against the index for the next filtered retrieval (`attributes.rs`).
    pub(crate) filters: crate::attributes::FilterCache,
}

/// `create_m2m` of the original API: [`M2m::create`].
pub fn create_m2m(config: M2mConfig) -> Result<M2m> {
    M2m::create(config)
}

fn backend(device: Device) -> m2m_gpu::Backend {
    match device {
        Device::Cpu => m2m_gpu::Backend::Cpu,
        Device::Vulkan => m2m_gpu::Backend::Gpu,
        Device::Auto => m2m_gpu::Backend::Auto,
    }
}

/// The backend of a stored engine. The device is a preference of the machine that created it, not a
/// property of the data: a database created with `Vulkan` opens on a build or machine without it, on the
/// CPU, with a warning (an explicit `Vulkan` at create still fails without a device).
fn stored_compute(device: Device) -> Result<m2m_gpu::Compute> {
    match m2m_gpu::Compute::new(backend(device)) {
        Err(e) if device == Device::Vulkan => {
            tracing::warn!("m2m: the stored device Vulkan is not available ({e}); running on the CPU");
            Ok(m2m_gpu::Compute::new(m2m_gpu::Backend::Cpu)?)
        }
        other => Ok(other?),
    }
}

fn db_options(config: &M2mConfig) -> DbOptions {
    DbOptions { durability: if config.durable { Durability::Fsync } else { Durability::NoSync } }
}

impl M2m {
    /// A new engine: in memory, or in `config.data_dir` (created; it must not hold a database yet).
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{Lod, M2m, M2mConfig};
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// // In memory:
    /// let mut engine = M2m::create(M2mConfig::default().dim(64))?;
    /// engine.add_splats(&d.base)?;
    /// engine.build_index()?;
    /// assert_eq!(engine.retrieve(&d.queries[..64], 5, Lod::Rerank)?.len(), 5);
    ///
    /// // In a data directory (created; reopened with `M2m::open`):
    /// let dir = tempfile::tempdir()?;
    /// let mut stored = M2m::create(M2mConfig::default().dim(64).data_dir(dir.path().join("db")))?;
    /// let ids = stored.add_splats(&d.base[..100 * 64])?;
    /// drop(stored);
    /// let reopened = M2m::open(dir.path().join("db"))?;
    /// assert_eq!(reopened.len(), ids.len());
    /// // A second create over an existing database is refused.
    /// assert!(M2m::create(M2mConfig::default().dim(64).data_dir(dir.path().join("db"))).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(config: M2mConfig) -> Result<M2m> {
        config.check()?;
        let compute = m2m_gpu::Compute::new(backend(config.device))?;
        let db = match &config.data_dir {
            Some(dir) => {
                let db = match Db::create(dir, config.dim, db_options(&config)) {
                    // A database without settings is a create killed between the database's manifest and
                    // the settings below: it never held a splat. It is discarded and created again.
                    Err(m2m_tier::Error::AlreadyExists { .. }) if !dir.join(CONFIG_BLOB).exists() => {
                        Db::open(dir, db_options(&config))?.discard()?;
                        Db::create(dir, config.dim, db_options(&config))?
                    }
                    other => other?,
                };
                let json = serde_json::to_vec_pretty(&config)
                    .map_err(|e| Error::Config { field: "config", reason: e.to_string() })?;
                m2m_tier::store_blob(dir, CONFIG_BLOB, &json)?;
                Some(db)
            }
            None => None,
        };
        Ok(M2m {
            set: Arc::new(RowStore::new(config.dim)),
            kappa: Arc::new(Vec::new()),
            alpha: Arc::new(Vec::new()),
            deleted: HashSet::new(),
            db,
            attrs: Arc::default(),
            index: None,
            soc: None,
            kappa_fit: None,
            compute,
            gpu: Default::default(),
            next_id: 0,
            config,
            read_only: false,
            snapshot: None,
            filters: Default::default(),
        })
    }

    /// Opens the engine stored in `dir` as its only writer: its settings, every splat acknowledged before
    /// it was closed (or crashed), and the stored index (its hot part read, its full vectors mapped),
    /// with the splats added since its build routed into it and those deleted since removed from it.
    /// When those outnumber the splats of the build, the index is left out: call
    /// [`build_index`](Self::build_index) again.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{Lod, M2m, M2mConfig};
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 1, dim: 64, ..Default::default() })?;
    /// let dir = tempfile::tempdir()?;
    /// let before = {
    ///     let mut engine = M2m::create(M2mConfig::default().dim(64).data_dir(dir.path()))?;
    ///     engine.add_splats(&d.base)?;
    ///     engine.build_index()?;
    ///     engine.retrieve(&d.queries, 10, Lod::Rerank)?
    /// }; // dropped: the writer lock is released
    /// let engine = M2m::open(dir.path())?;
    /// assert_eq!(engine.len(), 2_000);
    /// // The stored index answers at once, as it did before the close.
    /// assert_eq!(engine.retrieve(&d.queries, 10, Lod::Rerank)?, before);
    /// // A second writer is refused while this one holds the directory.
    /// assert_eq!(M2m::open(dir.path()).unwrap_err().kind(), m2m::ErrorKind::Locked);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<M2m> {
        let dir = dir.as_ref();
        let config = Self::stored_config(dir)?;
        Self::open_config(dir, config)
    }

    /// [`open`](Self::open) with the durability of this session's adds set here (`durable`: fsync before
    /// each acknowledgement, or not) instead of the stored setting. Nothing is stored: the next plain
    /// `open` uses the stored setting again.
    pub fn open_with(dir: impl AsRef<Path>, durable: bool) -> Result<M2m> {
        let dir = dir.as_ref();
        let config = M2mConfig { durable, ..Self::stored_config(dir)? };
        Self::open_config(dir, config)
    }

    fn open_config(dir: &Path, config: M2mConfig) -> Result<M2m> {
        let db = Db::open(dir, db_options(&config))?;
        // A writer that cuts a damaged log tail says what it drops (as `verify` reports it before).
        if let Some(cut) = db.cut_tail() {
            tracing::warn!("m2m: {cut}: a torn write or a damaged acknowledged record, dropped");
        }
        let snap = db.snapshot();
        Self::load(dir, config, &snap, Some(db))
    }

    /// Opens the engine stored in `dir` for reading only, while another process may hold it open and
    /// write to it (data-loader workers, readers beside a writer): no lock is taken and no file changes.
    /// It shows what was acknowledged when it opened. Changes ([`add_splats`](Self::add_splats),
    /// [`delete`](Self::delete), [`flush`](Self::flush)) are refused with [`Error::ReadOnly`];
    /// [`build_index`](Self::build_index) builds in memory and stores nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{ErrorKind, M2m, M2mConfig};
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 500, queries: 0, dim: 64, ..Default::default() })?;
    /// let dir = tempfile::tempdir()?;
    /// let mut writer = M2m::create(M2mConfig::default().dim(64).data_dir(dir.path()))?;
    /// writer.add_splats(&d.base)?;
    /// // A reader beside the writer sees what was acknowledged and refuses changes.
    /// let mut reader = M2m::open_read_only(dir.path())?;
    /// assert_eq!(reader.len(), 500);
    /// assert_eq!(reader.add_splats(&d.base[..64]).unwrap_err().kind(), ErrorKind::ReadOnly);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<M2m> {
        let dir = dir.as_ref();
        let config = Self::stored_config(dir)?;
        let snap = m2m_tier::Db::read_snapshot(dir)?;
        let mut engine = Self::load(dir, config, &snap, None)?;
        engine.read_only = true;
        engine.snapshot = Some(snap);
        Ok(engine)
    }

    /// Removes the stored engine of a writer that never held a splat (a create whose first add failed),
    /// leaving its directory as it was before the create; refused when it holds or held any splat.
    /// Blobs of other layers in the directory (a CLI's) must be removed first.
    pub fn discard(mut self) -> Result<()> {
        self.refuse_if_read_only("discard")?;
        let db = self.db.take().ok_or(Error::Config { field: "data_dir", reason: "an in-memory engine".into() })?;
        if self.next_id != 0 || !self.set.is_empty() {
            return Err(Error::Tier(m2m_tier::Error::AlreadyExists { path: db.dir().to_path_buf() }));
        }
        let dir = db.dir().to_path_buf();
        for blob in [INDEX_BLOB, LEARNED_BLOB, CONFIG_BLOB, REPLACED_BLOB] {
            m2m_tier::remove_blob(&dir, blob)?;
        }
        Ok(db.discard()?)
    }

    /// What the writer's [`open`](Self::open) cut from the end of the log (a torn write or a damaged
    /// acknowledged record: its bytes and rows), until the next flush starts a new log; `None` when
    /// nothing was cut or for a reader. The open also logs it as a warning.
    pub fn cut_tail(&self) -> Option<m2m_tier::CutTail> {
        self.db.as_ref().and_then(|db| db.cut_tail().cloned())
    }

    /// Whether the engine was opened with [`open_read_only`](Self::open_read_only).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The settings stored in `dir`, checked: decodable, each in range, and of the dimension the database's
    /// manifest records. A bad one is `Corrupt` naming the settings blob (once: the reason does not repeat
    /// a field label).
    pub(crate) fn stored_config(dir: &Path) -> Result<M2mConfig> {
        let path = dir.join(CONFIG_BLOB);
        let json = m2m_tier::load_blob(dir, CONFIG_BLOB)?;
        let bad = |reason: String| crate::validate::corrupt(&path, reason);
        let mut config: M2mConfig =
            serde_json::from_slice(&json).map_err(|e| bad(format!("undecodable settings: {e}")))?;
        config.data_dir = Some(dir.to_path_buf());
        config.check().map_err(|e| bad(e.to_string()))?;
        // The manifest is the tier's own record of the dimension (its segments and log are checked
        // against it). A manifest that cannot be read is left for the open to report.
        if let Some(m) = m2m_tier::Manifest::load(dir).ok().filter(|m| m.dim != config.dim) {
            let manifest = dir.join(m2m_tier::MANIFEST_FILE);
            return Err(bad(format!("dim {}, but {} records dimension {}", config.dim, manifest.display(), m.dim)));
        }
        Ok(config)
    }

    /// The engine over a view of the database (with its writer handle, unless read-only).
    fn load(dir: &Path, config: M2mConfig, snap: &m2m_tier::Snapshot, db: Option<Db>) -> Result<M2m> {
        let mut engine = M2m {
            set: Arc::new(RowStore::new(config.dim)),
            kappa: Arc::new(Vec::new()),
            alpha: Arc::new(Vec::new()),
            deleted: HashSet::new(),
            db: None,
            attrs: Arc::clone(&snap.attrs),
            index: None,
            soc: None,
            kappa_fit: None,
            compute: stored_compute(config.device)?,
            gpu: Default::default(),
            next_id: 0,
            config,
            // Without the database's writer lock this is a reader's open (set here, not after: the
            // controller started by `load_index` asks).
            read_only: db.is_none(),
            snapshot: None,
            filters: Default::default(),
        };
        // The rows are read in place from the view (mapped segments, the database's in-memory rows): no
        // vector is copied, and opening a segment read none (`m2m verify` checks them). The small columns
        // just copied leave the process's pages again (the page cache keeps them).
        let (rows, kappa, alpha) = RowStore::from_snapshot(engine.config.dim, snap)?;
        engine.set = Arc::new(rows);
        engine.kappa = Arc::new(kappa);
        engine.alpha = Arc::new(alpha);
        for segment in &snap.segments {
            if let Err(e) = segment.unmap_pages() {
                tracing::debug!("m2m: could not release the pages of {}: {e}", segment.path().display());
            }
        }
        engine.next_id = engine.set.max_id().map_or(0, |m| m.saturating_add(1));
        let writer = db.is_some();
        engine.db = db;
        match engine.load_index(dir, snap) {
            // The writer opens to add splats or to build: a damaged index must not block the commands that
            // replace it. It is reported and left out (stale); readers get the error.
            Err(e @ Error::Tier(m2m_tier::Error::Corrupt { .. } | m2m_tier::Error::IncompatibleVersion { .. }))
                if writer =>
            {
                tracing::warn!("m2m: ignoring the stored index ({e}); build_index replaces it");
            }
            other => other?,
        }
        release_freed_memory();
        Ok(engine)
    }

    /// The database view behind the data lake's tiers: the writer's current snapshot, or the one a
    /// read-only engine opened on; none in memory.
    pub(crate) fn tier_snapshot(&self) -> Option<m2m_tier::Snapshot> {
        self.db.as_ref().map(Db::snapshot).or_else(|| self.snapshot.clone())
    }

    pub(crate) fn refuse_if_read_only(&self, what: &'static str) -> Result<()> {
        if self.read_only { Err(Error::ReadOnly { what }) } else { Ok(()) }
    }

    /// Loads the stored index, brought up to the splats now live when some were added or deleted since
    /// the build (see `catch_up`; a change larger than the build leaves it stale: then `build_index` is
    /// needed again): the one in the tier's section files
    /// that the manifest names (hot part into RAM, vectors mapped), or else a legacy `m2m-index.blob` of an
    /// older build, read whole (the next build replaces it with section files and removes it).
    fn load_index(&mut self, dir: &Path, snap: &m2m_tier::Snapshot) -> Result<()> {
        if let Some(e) = &snap.index_error {
            return Err(crate::stored::damage(dir, e));
        }
        if snap.index.is_empty() && !dir.join(INDEX_BLOB).exists() {
            return Ok(());
        }
        // The stored neighbourhoods' fit, and whether they are of the rows now live, read before the
        // index so that the blob's bytes are not held beside the index's codes (open's peak); an error
        // waits for where it has always been reported, after the index.
        let neighbours = load_neighbours_head(dir)
            .map(|head| head.filter(|(_, ids)| same_ids(self.set.ids(), ids)).map(|(fit, ids)| (fit, ids_hash(&ids))));
        let (mut index, stored) = if !snap.index.is_empty() {
            crate::stored::load(&snap.index, &self.config)?
        } else if dir.join(INDEX_BLOB).exists() {
            let bytes = m2m_tier::load_blob(dir, INDEX_BLOB)?;
            let path = dir.join(INDEX_BLOB);
            let stored: StoredIndex =
                postcard::from_bytes(&bytes).map_err(|e| crate::validate::corrupt(&path, e.to_string()))?;
            crate::validate::learned(&path, &stored.ids, &stored.kappa, &stored.alpha)?;
            crate::validate::stored_index(&path, stored, &self.config)?
        } else {
            return Ok(());
        };
        let replaced = crate::upsert::load_replaced(dir)?.landed(&self.set, &self.kappa, &self.alpha);
        let exact = same_ids(self.set.ids(), &stored.ids);
        if (!exact || !replaced.is_empty()) && !self.catch_up(&mut index, &stored.ids, &replaced)? {
            return Ok(());
        }
        // The learned values hold while the build covers exactly the live rows (the rule `LakeReader`
        // follows too); rows added or deleted since then leave every row its stored kappa and alpha.
        if exact {
            let (mut kappa, mut alpha) = (self.kappa.to_vec(), self.alpha.to_vec());
            // An upserted row keeps the kappa and alpha it was upserted with.
            for (i, id) in stored.ids.iter().enumerate().filter(|(_, id)| !replaced.contains(id)) {
                if let Some(r) = self.set.row_of(*id) {
                    kappa[r] = stored.kappa[i];
                    alpha[r] = stored.alpha[i];
                }
            }
            self.kappa = Arc::new(kappa);
            self.alpha = Arc::new(alpha);
        }
        self.index = Some(index);
        // Only the fit and the ids of the stored neighbourhoods were read (the lists counted, not kept):
        // the router that uses them is built at its first use, and reads them then.
        let neighbours = neighbours?;
        self.kappa_fit = neighbours.map(|(fit, _)| fit);
        let source = match neighbours {
            Some((_, ids)) => NeighbourSource::Stored { dir: dir.to_path_buf(), ids },
            None => NeighbourSource::Unknown,
        };
        self.start_controller(source, None)?;
        self.restore_pile(dir)
    }

    /// Brings a stored index built on `built` up to the live rows without a rebuild: ids deleted since
    /// are deleted from it, rows added since are routed to their nearest clusters and coded (what
    /// `add_splats` does to a live index). The change is recomputed at each open from the rows the
    /// database holds, not stored with the index. When the change outnumbers the build's rows the index
    /// is left stale (false) and `build_index` is needed. Ids upserted since (`replaced`) are both: their
    /// old vectors leave the index, their rows now go in.
    fn catch_up(&self, index: &mut Index, built: &[u64], replaced: &HashSet<u64>) -> Result<bool> {
        let live: HashSet<u64> = self.set.ids().collect();
        let then: HashSet<u64> = built.iter().copied().collect();
        let gone: Vec<u64> = built.iter().copied().filter(|id| !live.contains(id) || replaced.contains(id)).collect();
        let added: Vec<usize> = (0..self.set.len())
            .filter(|&r| !then.contains(&self.set.id(r)) || replaced.contains(&self.set.id(r)))
            .collect();
        // Ids changed since the build, each once (an upserted id leaves and comes back: one change).
        let changed = gone.len() + added.len() - gone.iter().filter(|id| live.contains(id)).count();
        if changed > built.len() {
            self.stale(built.len(), changed);
            return Ok(false);
        }
        index.delete(&gone);
        if !added.is_empty() {
            let mut vectors = Vec::with_capacity(added.len() * self.config.dim);
            for &r in &added {
                vectors.extend(index_vectors(&self.set, r..r + 1, self.config.metric));
            }
            let ids: Vec<u64> = added.iter().map(|&r| self.set.id(r)).collect();
            index.insert(&vectors, &ids)?;
        }
        tracing::info!(
            "m2m: the stored index takes {} rows added and {} deleted since its build",
            added.len(),
            gone.len()
        );
        Ok(true)
    }

    fn stale(&self, then: usize, changed: usize) {
        tracing::warn!(
            "m2m: the stored index is left out: {changed} splats changed since its build of {then} (more \
             than it held); build_index to rebuild"
        );
    }

    /// The settings.
    pub fn config(&self) -> &M2mConfig {
        &self.config
    }

    /// Number of live splats.
    pub fn len(&self) -> usize {
        self.set.len() - self.deleted.len()
    }

    /// Rows of the set that are not deleted, in order.
    pub(crate) fn live_rows(&self) -> Vec<usize> {
        (0..self.set.len()).filter(|&r| !self.deleted.contains(&self.set.id(r))).collect()
    }

    /// Whether `id` is a live splat.
    pub fn contains(&self, id: u64) -> bool {
        self.set.row_of(id).is_some() && !self.deleted.contains(&id)
    }

    /// The largest id the engine has ever held (deleted ones included), if any.
    pub fn stats_max_id(&self) -> Option<u64> {
        self.set.max_id().max(self.next_id.checked_sub(1))
    }

    /// The original vector of a live splat (unit `mu` times its norm).
    pub fn vector_of(&self, id: u64) -> Option<Vec<f32>> {
        if !self.contains(id) {
            return None;
        }
        Some(raw_row(&self.set, self.set.row_of(id)?).collect())
    }

    /// Whether the engine holds no live splat.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds raw vectors (row-major, `dim` wide) as splats with the default kappa and alpha, and returns
    /// their new ids. The batch is validated whole: a bad row (NaN, zero vector, wrong length) refuses it
    /// and nothing is written. After `build_index`, the splats also go into the index.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{M2m, M2mConfig};
    /// let mut engine = M2m::create(M2mConfig::default().dim(3))?;
    /// assert_eq!(engine.add_splats(&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0])?, vec![0, 1]);
    /// // A NaN in the second row refuses the whole batch: nothing is added.
    /// let err = engine.add_splats(&[0.0, 0.0, 1.0, f32::NAN, 1.0, 0.0]).unwrap_err();
    /// assert!(err.to_string().contains("row 1"), "{err}");
    /// assert_eq!(engine.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_splats(&mut self, vectors: &[f32]) -> Result<Vec<u64>> {
        let ids = self.next_ids(vectors.len() / self.config.dim.max(1))?;
        self.add_splats_with(vectors, &ids, None, None)?;
        Ok(ids)
    }

    /// Adds raw vectors with these ids and, optionally, per-row kappa and alpha.
    pub fn add_splats_with(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
    ) -> Result<()> {
        self.add_splats_attributed(vectors, ids, kappa, alpha, None)
    }

    /// [`add_splats`](Self::add_splats) with attributes (one row per vector; see
    /// [`add_splats_attributed`](Self::add_splats_attributed)); returns the new ids.
    pub fn add_splats_with_attributes(&mut self, vectors: &[f32], attrs: &m2m_tier::AttrBatch) -> Result<Vec<u64>> {
        let ids = self.next_ids(vectors.len() / self.config.dim.max(1))?;
        self.add_splats_attributed(vectors, &ids, None, None, Some(attrs))?;
        Ok(ids)
    }

    /// The ids the next add of `n` rows without ids gets: after the largest id ever used (none is
    /// reused), below the reserved `u64::MAX`. An error when fewer than `n` are left.
    pub fn next_ids(&self, n: usize) -> Result<Vec<u64>> {
        // `next_id..end` stops below `end` <= u64::MAX: never the reserved id.
        let end = self.next_id.checked_add(n as u64).ok_or_else(|| Error::Config {
            field: "ids",
            reason: format!(
                "no id is left to assign {n} rows after id {} (u64::MAX is reserved)",
                self.next_id.saturating_sub(1)
            ),
        })?;
        Ok((self.next_id..end).collect())
    }

    /// Raw rows with their ids and (or the configured initial) kappa and alpha, validated whole into a
    /// set of their own (normalised, finite, ids distinct and not the reserved one): what add and upsert
    /// check before anything is stored.
    pub(crate) fn validated_batch(
        &self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
    ) -> Result<SplatSet> {
        crate::validate::check_ids_not_reserved(ids)?;
        let dim = self.config.dim;
        let mut batch = Batch::new(vectors, dim).ids(ids).kappa(self.config.init_kappa).alpha(self.config.init_alpha);
        if let Some(k) = kappa {
            batch = batch.kappas(k);
        }
        if let Some(a) = alpha {
            batch = batch.alphas(a);
        }
        let mut fresh = SplatSet::with_capacity(dim, ids.len())?;
        fresh.append(batch)?;
        Ok(fresh)
    }

    /// [`add_splats_with`](Self::add_splats_with) with the rows' attributes: the first add with
    /// attributes sets the schema of an engine that has none (inferred from the columns); later ones
    /// must fit it. The whole batch, vectors and attributes, is validated before anything is stored: a
    /// wrong type, an unknown field or a wrong row count stores nothing.
    pub fn add_splats_attributed(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
        attrs: Option<&m2m_tier::AttrBatch>,
    ) -> Result<()> {
        self.refuse_if_read_only("add_splats")?;
        let rows = match self.db {
            None => self.add_in_memory(vectors, ids, kappa, alpha, attrs)?,
            Some(_) => self.add_to_database(vectors, ids, kappa, alpha, attrs)?,
        };
        self.next_id = self.next_id.max(ids.iter().max().map_or(0, |m| m.saturating_add(1)));
        if let Some(index) = &mut self.index {
            let vectors = index_vectors(&self.set, rows.clone(), self.config.metric);
            index.insert(&vectors, ids)?;
            // The router follows the index (its clusters are the SOC sites; the pile is unchanged).
            // A router not built yet reads the index when it is.
            if let Some(router) = self.soc.as_mut().and_then(Controller::router_mut) {
                router.insert(ids, &vectors, &self.kappa[rows.clone()], &self.alpha[rows])?;
            }
            self.gpu.invalidate();
        }
        Ok(())
    }

    /// The add of an engine with a database: validated into a batch set first (which the database's
    /// log and in-memory table take), then logged, then appended: nothing is written, to disk or RAM,
    /// unless all of it is good. Returns the rows the splats occupy.
    fn add_to_database(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
        attrs: Option<&m2m_tier::AttrBatch>,
    ) -> Result<std::ops::Range<usize>> {
        if let Some((row, id)) = ids.iter().enumerate().find(|(_, id)| self.deleted.contains(id)) {
            return Err(Error::Splat(m2m_splat::Error::DuplicateId { row, id: *id }));
        }
        let fresh = self.validated_batch(vectors, ids, kappa, alpha)?;
        if let Some((row, id)) = fresh.ids().iter().enumerate().find(|(_, id)| self.set.row_of(**id).is_some()) {
            return Err(Error::Splat(m2m_splat::Error::DuplicateId { row, id: *id }));
        }
        if let Some(db) = &mut self.db {
            db.ingest_with(&fresh, attrs)?;
        }
        let rows = Arc::make_mut(&mut self.set).append(&fresh)?;
        Arc::make_mut(&mut self.kappa).extend_from_slice(fresh.kappa());
        Arc::make_mut(&mut self.alpha).extend_from_slice(fresh.alpha());
        Ok(rows)
    }

    /// Builds the retrieval index over the live splats (replacing an older one), learns kappa and alpha
    /// from each splat's neighbours when `learn_kappa` is set, and starts the SOC controller over the
    /// index's clusters. With a data directory and more rows than [`crate::DEFAULT_BUILD_BUDGET_BYTES`]
    /// allows, the build streams instead and learns no kappa ([`build_index_within`](Self::build_index_within)).
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{Lod, M2m, M2mConfig};
    /// let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 20, dim: 64, ..Default::default() })?;
    /// let mut engine = M2m::create(M2mConfig::default().dim(64))?;
    /// engine.add_splats(&d.base)?;
    /// // No index yet: retrieval says so instead of scanning.
    /// assert_eq!(engine.retrieve(&d.queries[..64], 10, Lod::Rerank).unwrap_err().kind(), m2m::ErrorKind::NoIndex);
    /// engine.build_index()?;
    /// let stats = engine.stats();
    /// assert!(stats.fine_clusters.unwrap() > 1 && stats.nprobe.is_some());
    /// // Recall@10 of LOD 2 against Exact, measured: the calibrated default keeps it high.
    /// let (mut found, mut total) = (0, 0);
    /// for q in d.queries.chunks(64) {
    ///     let exact: Vec<u64> = engine.retrieve(q, 10, Lod::Exact)?.iter().map(|h| h.id).collect();
    ///     let lod2 = engine.retrieve(q, 10, Lod::Rerank)?;
    ///     found += lod2.iter().filter(|h| exact.contains(&h.id)).count();
    ///     total += 10;
    /// }
    /// assert!(found as f64 / total as f64 >= 0.9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_index(&mut self) -> Result<()> {
        self.build_index_within(crate::build::DEFAULT_BUILD_BUDGET_BYTES).map(|_| ())
    }

    /// [`build_index`](Self::build_index) with the numbers of fine and coarse clusters set (`None`: the
    /// index's own choice from the number of splats).
    pub fn build_index_with(&mut self, n_fine: Option<usize>, n_coarse: Option<usize>) -> Result<()> {
        if self.is_empty() {
            return Err(Error::Empty);
        }
        if !self.deleted.is_empty() {
            self.compact_rows()?;
        }
        let ids: Vec<u64> = self.set.ids().collect();
        let vectors = index_vectors(&self.set, 0..self.set.len(), self.config.metric);
        let cfg = IndexConfig {
            metric: self.config.metric,
            seed: self.config.seed,
            n_fine,
            n_coarse,
            codes: self.config.code_kind(),
            ..IndexConfig::default()
        };
        let mut index = Index::build(&cfg, self.config.dim, &vectors, &ids)?;
        let mut neighbours = None;
        if self.config.learn_kappa && self.config.metric == Metric::Cosine && ids.len() >= 64 {
            let kc = KappaConfig {
                min_kappa: self.config.min_kappa,
                max_kappa: self.config.max_kappa,
                neighbours: NEIGHBOURS,
                ..KappaConfig::default()
            };
            // For cosine the build's vectors are the unit mu of every row, in row order: the estimator
            // reads them, no other copy is made.
            let nb = m2m_soc::kappa::neighbours_from_index(&index, &vectors, &ids, NEIGHBOURS)?;
            let est = m2m_soc::kappa::kappa_from_neighbours(&vectors, self.config.dim, &nb, NEIGHBOURS, &kc)?;
            let fit = KappaFit {
                sphere_dimension: est.sphere_dimension,
                clipped_low: est.clipped_low as u64,
                clipped_high: est.clipped_high as u64,
                rows: ids.len() as u64,
            };
            self.kappa = Arc::new(est.kappa);
            self.alpha = Arc::new(est.alpha);
            let nb = nb.iter().map(|&j| ids[j as usize]).collect();
            neighbours = Some(StoredNeighbours { fit, ids: ids.clone(), k: NEIGHBOURS as u32, neighbours: nb });
        }
        self.kappa_fit = neighbours.as_ref().map(|nb| nb.fit);
        let mut source = NeighbourSource::Unknown;
        if let (Some(dir), Some(db)) = (self.config.data_dir.clone(), self.db.as_mut()) {
            let learned = Learned { ids: ids.clone(), kappa: self.kappa.to_vec(), alpha: self.alpha.to_vec() };
            let serialise =
                |e: postcard::Error| Error::Config { field: "index", reason: format!("does not serialise: {e}") };
            // The learned values first: they match any index built on the same rows.
            m2m_tier::store_blob(&dir, LEARNED_BLOB, &postcard::to_allocvec(&learned).map_err(serialise)?)?;
            // The index in the tier's section files, streamed, committed by one manifest store; then the
            // index reads its vectors from the mapped file and drops its RAM copies.
            let files = crate::stored::write(db, &index, &learned)?;
            db.commit_index(&files)?;
            m2m_tier::remove_blob(&dir, INDEX_BLOB)?;
            // The stored index now holds every upserted row's new vector.
            m2m_tier::remove_blob(&dir, REPLACED_BLOB)?;
            let files = db.snapshot().index;
            crate::stored::attach(&mut index, &files, self.config.warm_budget_bytes)?;
            if let Some(nb) = neighbours.take() {
                m2m_tier::store_blob(&dir, NEIGHBOURS_BLOB, &postcard::to_allocvec(&nb).map_err(serialise)?)?;
                // Read back by the router when it is first used: not held in RAM meanwhile.
                source = NeighbourSource::Stored { dir: dir.clone(), ids: ids_hash(&nb.ids) };
            }
        }
        if let Some(nb) = neighbours {
            source = NeighbourSource::Held(Arc::new(nb));
        }
        let old = self.soc.take().map(|ctl| (ctl, self.index.take()));
        self.index = Some(index);
        self.gpu.invalidate();
        // The pile is carried over onto the new clusters.
        self.start_controller(source, old)?;
        self.save_pile()
    }

    /// Drops deleted rows from RAM (their ids stay deleted in the database), and reads the rows the
    /// database now holds in place (after a flush or compaction, its new segments).
    pub(crate) fn compact_rows(&mut self) -> Result<()> {
        let keep: Vec<usize> = self.live_rows();
        let kappa: Vec<f32> = keep.iter().map(|&r| self.kappa[r]).collect();
        let alpha: Vec<f32> = keep.iter().map(|&r| self.alpha[r]).collect();
        let mut rows = RowStore::clone(&self.set);
        rows.retain_rows(&keep);
        if let Some(db) = &self.db {
            rows.remap(&db.snapshot())?;
        }
        self.set = Arc::new(rows);
        self.kappa = Arc::new(kappa);
        self.alpha = Arc::new(alpha);
        self.deleted.clear();
        Ok(())
    }

    /// Reads the rows the database holds now in place (after a flush or compaction), dropping this
    /// engine's RAM copies of them.
    fn remap_rows(&mut self) -> Result<()> {
        if let Some(db) = &self.db {
            let snap = db.snapshot();
            Arc::make_mut(&mut self.set).remap(&snap)?;
        }
        Ok(())
    }

    pub(crate) fn hit(&self, id: u64, score: f32) -> Hit {
        let r = self.set.row_of(id).unwrap_or(0);
        Hit {
            id,
            score,
            kappa: self.kappa.get(r).copied().unwrap_or(0.0),
            alpha: self.alpha.get(r).copied().unwrap_or(0.0),
        }
    }

    /// The `k` best splats for `query` at a level of detail (`Lod::Rerank`, LOD 2, is the default of the
    /// original API; `Lod::Centroids` answers from the centroids alone). Each retrieval adds load to the
    /// SOC controller's sites of the hits.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{ErrorKind, Lod};
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 0, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// let ids = engine.add_splats(&d.base)?;
    /// engine.build_index()?;
    /// // A stored row is its own best match at every level that re-ranks exactly.
    /// let row = &d.base[7 * 64..8 * 64];
    /// for lod in [Lod::Rerank, Lod::Exact] {
    ///     let hits = engine.retrieve(row, 5, lod)?;
    ///     assert_eq!(hits[0].id, ids[7]);
    ///     assert!(hits[0].kappa > 0.0 && hits[0].alpha > 0.0);
    /// }
    /// // A query of the wrong dimension is refused with what is wrong.
    /// assert_eq!(engine.retrieve(&row[..10], 5, Lod::Rerank).unwrap_err().kind(), ErrorKind::InvalidInput);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retrieve(&self, query: &[f32], k: usize, lod: Lod) -> Result<Vec<Hit>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve" })?;
        let k = crate::validate::bound_k(k, self.len());
        let hits = index.search(query, k, lod, &SearchParams::default())?;
        self.record_use(hits.iter().map(|h| h.id));
        Ok(hits.iter().map(|h| self.hit(h.id, h.score)).collect())
    }

    /// [`retrieve`](Self::retrieve) for many queries (row-major), in parallel. With a compute device,
    /// LOD 2 and Exact batches run on it where the cost model measured at first use says it is faster
    /// ([`Stats::retrieval`] says which path ran).
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::Lod;
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// # engine.add_splats(&d.base)?;
    /// # engine.build_index()?;
    /// let hits = engine.retrieve_batch(&d.queries, 10, Lod::Rerank)?;
    /// assert_eq!(hits.len(), 4);
    /// assert!(hits.iter().all(|h| h.len() == 10 && h.windows(2).all(|w| w[0].score >= w[1].score)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retrieve_batch(&self, queries: &[f32], k: usize, lod: Lod) -> Result<Vec<Vec<Hit>>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve_batch" })?;
        let k = crate::validate::bound_k(k, self.len());
        let all = self.gpu.retrieve_batch(&self.gpu_request(index), queries, k, lod)?;
        self.record_use(all.iter().flatten().map(|h| h.id));
        Ok(all.iter().map(|hits| hits.iter().map(|h| self.hit(h.id, h.score)).collect()).collect())
    }

    /// [`retrieve`](Self::retrieve) with search parameters set for this query: `nprobe` (fine clusters
    /// scored), `rerank` (candidates re-ranked exactly at LOD 2) and `coarse_probe`; a zero leaves the
    /// calibrated default (see [`Stats::nprobe`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::{Lod, SearchParams};
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// # engine.add_splats(&d.base)?;
    /// # engine.build_index()?;
    /// let q = &d.queries[..64];
    /// let exact = engine.retrieve(q, 10, Lod::Exact)?;
    /// // Every fine cluster probed and a deep re-rank: LOD 2 finds the exact answer.
    /// let params = SearchParams { nprobe: engine.stats().fine_clusters.unwrap(), rerank: 200, ..Default::default() };
    /// let wide = engine.retrieve_with(q, 10, Lod::Rerank, &params)?;
    /// assert_eq!(wide.iter().map(|h| h.id).collect::<Vec<_>>(), exact.iter().map(|h| h.id).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retrieve_with(&self, query: &[f32], k: usize, lod: Lod, params: &SearchParams) -> Result<Vec<Hit>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve" })?;
        let k = crate::validate::bound_k(k, self.len());
        let hits = index.search(query, k, lod, params)?;
        self.record_use(hits.iter().map(|h| h.id));
        Ok(hits.iter().map(|h| self.hit(h.id, h.score)).collect())
    }

    /// [`retrieve_batch`](Self::retrieve_batch) with search parameters (see
    /// [`retrieve_with`](Self::retrieve_with)).
    pub fn retrieve_batch_with(
        &self,
        queries: &[f32],
        k: usize,
        lod: Lod,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        let index = self.index.as_ref().ok_or(Error::NoIndex { what: "retrieve_batch" })?;
        let k = crate::validate::bound_k(k, self.len());
        let all = index.search_batch(queries, k, lod, params)?;
        self.record_use(all.iter().flatten().map(|h| h.id));
        Ok(all.iter().map(|hits| hits.iter().map(|h| self.hit(h.id, h.score)).collect()).collect())
    }

    /// Counts retrieval hits for the controller: atomic counters, no lock and nothing built.
    pub(crate) fn record_use(&self, ids: impl Iterator<Item = u64>) {
        if let Some(ctl) = &self.soc {
            ctl.record_hits(self.index.as_ref(), ids);
        }
    }

    /// The energy E(x) = -log sum alpha exp(-kappa |x - mu|^2) of a unit vector `x`: over the splats
    /// the index routes it to (16 clusters, up to 1,024 splats) when built, exactly otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// # engine.add_splats(&d.base)?;
    /// # engine.build_index()?;
    /// // The energy is lower on the data than far from it.
    /// let on_data = engine.energy(&d.base[..64])?;
    /// let away: Vec<f32> = d.base[..64].iter().map(|v| -v).collect();
    /// assert!(on_data < engine.energy(&away)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn energy(&self, x: &[f32]) -> Result<f64> {
        if self.is_empty() {
            return Err(Error::Empty);
        }
        if self.soc.is_some() {
            return Ok(self.router("energy")?.energy(x, 16, 1024)?);
        }
        // Without an index the sum is exact over every live splat (a copy of their rows, for this call).
        let live = self.live_rows();
        let mut mu = Vec::with_capacity(live.len() * self.config.dim);
        live.iter().for_each(|&r| mu.extend_from_slice(self.set.mu_row(r)));
        let kappa: Vec<f32> = live.iter().map(|&r| self.kappa[r]).collect();
        let alpha: Vec<f32> = live.iter().map(|&r| self.alpha[r]).collect();
        let splats = Splats::new(self.config.dim, &mu, &kappa, &alpha)?;
        Ok(m2m_soc::energy::energy(x, &splats)?)
    }

    /// Generates samples by Langevin dynamics on the splats' energy: `seeds` (unit rows) are moved
    /// `steps` steps (0: the config's `langevin_steps`) and returned. Each chain is routed by its own
    /// neighbourhood (the largest terms of its 4 nearest clusters). Needs the index for routing.
    ///
    /// # Examples
    ///
    /// ```
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// # engine.add_splats(&d.base)?;
    /// # engine.build_index()?;
    /// let seeds = &d.base[..2 * 64];
    /// let samples = engine.generate(seeds, 20)?;
    /// assert_eq!(samples.len(), seeds.len());
    /// // Unit rows that moved from their seeds but stayed near them.
    /// for (s, x) in seeds.chunks_exact(64).zip(samples.chunks_exact(64)) {
    ///     let cos: f32 = s.iter().zip(x).map(|(a, b)| a * b).sum();
    ///     assert!(cos < 0.9999 && cos > 0.5, "cosine to the seed {cos}");
    ///     assert!((x.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-3);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn generate(&self, seeds: &[f32], steps: usize) -> Result<Vec<f32>> {
        self.generate_from(seeds, None, steps)
    }

    /// [`generate`](Self::generate) from seeds that are splats (`ids`, one per row; chains routed to
    /// the seed and its neighbours from the kappa fit).
    fn generate_from(&self, seeds: &[f32], ids: Option<&[u64]>, steps: usize) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        if steps > MAX_GENERATE_STEPS {
            return Err(Error::Config { field: "steps", reason: format!("{steps} is more than {MAX_GENERATE_STEPS}") });
        }
        if seeds.len() > MAX_GENERATE_VALUES {
            return Err(Error::Config {
                field: "seeds",
                reason: format!("{} values are more than {MAX_GENERATE_VALUES} in one call", seeds.len()),
            });
        }
        if !seeds.len().is_multiple_of(dim) || seeds.is_empty() {
            return Err(Error::Config {
                field: "seeds",
                reason: format!("{} values are not rows of {dim}", seeds.len()),
            });
        }
        let mut x = seeds.to_vec();
        for row in x.chunks_exact_mut(dim) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::Config { field: "seeds", reason: "a seed row is zero or not finite".into() });
            }
            row.iter_mut().for_each(|v| *v /= n);
        }
        let router = self.router("generate")?;
        let steps = if steps == 0 { self.config.langevin_steps } else { steps };
        let config = self.langevin_config(steps, &LangevinOverrides::default())?;
        run_routed(router, &config, &mut x, dim, self.config.seed, ids, self.step_kappa()?)?;
        Ok(x)
    }

    /// Generates `n` samples from seeds drawn uniformly among the live splats (deterministic for the
    /// config's seed).
    pub fn generate_n(&self, n: usize, steps: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Err(Error::Config { field: "n", reason: "must be at least 1".into() });
        }
        if n.checked_mul(self.config.dim).is_none_or(|v| v > MAX_GENERATE_VALUES) {
            return Err(Error::Config {
                field: "n",
                reason: format!(
                    "{n} rows of {} values are more than {MAX_GENERATE_VALUES} values in one call: generate in \
                     batches, or stream them with export_to_dataloader",
                    self.config.dim
                ),
            });
        }
        if self.is_empty() {
            return Err(Error::Empty);
        }
        let dim = self.config.dim;
        let live: Vec<usize> = self.live_rows();
        let mut seeds = Vec::with_capacity(n * dim);
        let mut ids = Vec::with_capacity(n);
        let mut state = self.config.seed ^ 0x9E37_79B9_7F4A_7C15;
        for _ in 0..n {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = live[(state >> 33) as usize % live.len()];
            seeds.extend_from_slice(self.set.mu_row(r));
            ids.push(self.set.id(r));
        }
        self.generate_from(&seeds, Some(&ids), steps)
    }

    /// Deletes splats (ids not present are ignored) and returns how many were live. They leave the
    /// index at once and RAM at the next index build; the database logs the delete.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m::Lod;
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 4, dim: 64, ..Default::default() })?;
    /// # let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// # engine.add_splats(&d.base)?;
    /// # engine.build_index()?;
    /// let q = &d.base[..64]; // row 0's own vector
    /// assert_eq!(engine.retrieve(q, 1, Lod::Rerank)?[0].id, 0);
    /// assert_eq!(engine.delete(&[0, 0, 99_999])?, 1); // a repeated or unknown id counts once or not at all
    /// assert_ne!(engine.retrieve(q, 1, Lod::Rerank)?[0].id, 0);
    /// engine.compact()?;
    /// // After compaction the id may be added again.
    /// engine.add_splats_with(q, &[0], None, None)?;
    /// assert_eq!(engine.retrieve(q, 1, Lod::Exact)?[0].id, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete(&mut self, ids: &[u64]) -> Result<usize> {
        self.refuse_if_read_only("delete")?;
        let present: Vec<u64> = {
            let mut seen = HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| self.set.row_of(*id).is_some() && !self.deleted.contains(id) && seen.insert(*id))
                .collect()
        };
        if present.is_empty() {
            return Ok(0);
        }
        if let Some(db) = &mut self.db {
            db.delete(&present)?;
        } else {
            Arc::make_mut(&mut self.attrs).delete(&present);
        }
        if let Some(index) = &mut self.index {
            index.delete(&present);
            self.gpu.invalidate();
        }
        if let Some(ctl) = &mut self.soc {
            ctl.remove(&present);
        }
        self.deleted.extend(present.iter().copied());
        Ok(present.len())
    }

    /// Compacts the engine: the index as it is now (with the rows added and deleted since its build) is
    /// stored again and read from its new files, the database's segments are merged without the deleted
    /// rows, and those rows leave RAM. Afterwards a deleted id may be added again. With a data directory
    /// the index is stored first: a crash before the merge leaves the deleted ids refused (the
    /// database's tombstones) and absent from the stored index, so a stored index never holds a vector
    /// that an id had before it was deleted and added again. In memory only the RAM part applies.
    ///
    /// Errors: `Corrupt` naming the file when a stored index file fails its checksums (the open maps
    /// the codes and vectors unchecked; their copy into new files would give damaged bytes a fresh
    /// checksum): nothing is written then; `m2m repair` removes the damaged index, `build_index`
    /// replaces it.
    pub fn compact(&mut self) -> Result<()> {
        self.refuse_if_read_only("compact")?;
        if let (Some(dir), Some(db), Some(index)) =
            (self.config.data_dir.clone(), self.db.as_mut(), self.index.as_mut())
        {
            crate::stored::verify(&db.snapshot().index)?;
            let live: Vec<usize> = (0..self.set.len()).filter(|&r| !self.deleted.contains(&self.set.id(r))).collect();
            let learned = Learned {
                ids: live.iter().map(|&r| self.set.id(r)).collect(),
                kappa: live.iter().map(|&r| self.kappa[r]).collect(),
                alpha: live.iter().map(|&r| self.alpha[r]).collect(),
            };
            let serialise =
                |e: postcard::Error| Error::Config { field: "index", reason: format!("does not serialise: {e}") };
            m2m_tier::store_blob(&dir, LEARNED_BLOB, &postcard::to_allocvec(&learned).map_err(serialise)?)?;
            let files = crate::stored::write(db, index, &learned)?;
            db.commit_index(&files)?;
            m2m_tier::remove_blob(&dir, INDEX_BLOB)?;
            // The stored index now holds every upserted row's new vector.
            m2m_tier::remove_blob(&dir, REPLACED_BLOB)?;
            let files = db.snapshot().index;
            crate::stored::attach(index, &files, self.config.warm_budget_bytes)?;
            self.gpu.invalidate();
        }
        if let Some(db) = &mut self.db {
            db.compact()?;
        }
        // The rows now read from the merged segments (the old ones are released with them).
        if !self.deleted.is_empty() || self.db.is_some() {
            self.compact_rows()?;
        }
        self.save_pile()
    }

    /// Writes the splats added since the last flush into a segment (a no-op in memory).
    ///
    /// # Examples
    ///
    /// ```
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 300, queries: 0, dim: 64, ..Default::default() })?;
    /// let dir = tempfile::tempdir()?;
    /// let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64).data_dir(dir.path()))?;
    /// engine.add_splats(&d.base)?; // acknowledged in the log
    /// assert_eq!(engine.stats().segments, 0);
    /// engine.flush()?; // now a checksummed, memory-mapped segment
    /// assert_eq!(engine.stats().segments, 1);
    /// // Read back from the segment: the stored (unit, cosine) row, equal up to rounding.
    /// let back = engine.vector_of(0).unwrap();
    /// assert!(back.iter().zip(&d.base[..64]).all(|(a, b)| (a - b).abs() < 1e-6));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&mut self) -> Result<()> {
        self.refuse_if_read_only("flush")?;
        if let Some(db) = &mut self.db {
            db.flush()?;
        }
        // The flushed rows are read from their segment from now on; this engine's copies go.
        self.remap_rows()?;
        self.save_pile()
    }

    /// What the engine holds.
    ///
    /// # Examples
    ///
    /// ```
    /// # let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 500, queries: 0, dim: 64, ..Default::default() })?;
    /// let mut engine = m2m::M2m::create(m2m::M2mConfig::default().dim(64))?;
    /// engine.add_splats(&d.base)?;
    /// engine.delete(&[3, 4])?;
    /// let stats = engine.stats();
    /// assert_eq!((stats.splats, stats.deleted, stats.dim), (498, 2, 64));
    /// assert_eq!(stats.metric, "cosine");
    /// assert!(stats.fine_clusters.is_none()); // no index yet
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let live: Vec<f32> = self.live_rows().into_iter().map(|r| self.kappa[r]).collect();
        let (mut lo, mut hi, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64);
        for &k in &live {
            lo = lo.min(k);
            hi = hi.max(k);
            sum += f64::from(k);
        }
        let mean = if live.is_empty() { 0.0 } else { (sum / live.len() as f64) as f32 };
        let (kappa_mean, kappa_min, kappa_max) = if live.is_empty() { (0.0, 0.0, 0.0) } else { (mean, lo, hi) };
        let index = self.index.as_ref();
        Stats {
            splats: self.len(),
            deleted: self.deleted.len(),
            dim: self.config.dim,
            metric: self.config.metric.name().to_owned(),
            device: self.compute.device_name(),
            // The writer's manifest, or the snapshot a read-only engine opened on.
            segments: match (&self.db, &self.snapshot) {
                (Some(db), _) => db.manifest().segments.len(),
                (None, Some(snap)) => snap.segments.len(),
                (None, None) => 0,
            },
            fine_clusters: index.map(Index::n_fine),
            coarse_clusters: index.map(Index::n_coarse),
            nprobe: index.map(|i| i.probe_rule().map_or(i.default_nprobe(), |r| r.max_probe)),
            probe_margin: index.and_then(Index::probe_rule).map(|r| r.margin),
            rerank: index.map(Index::default_rerank),
            kappa_mean,
            kappa_min,
            kappa_max,
            kappa_clipped: self.kappa_fit.map(|f| f.clipped_share()),
            retrieval: self.gpu.stats(),
        }
    }

    fn gpu_request<'a>(&'a self, index: &'a Index) -> crate::gpu_search::Request<'a> {
        crate::gpu_search::Request {
            compute: &self.compute,
            device: self.config.device,
            hot_budget_bytes: self.config.hot_budget_bytes,
            index,
        }
    }

    /// Overrides the cost model's choice of path for batch retrieval (tests and benchmarks).
    #[doc(hidden)]
    pub fn force_retrieval_path(&self, path: crate::ForcePath) {
        self.gpu.force(path);
    }

    /// The compute backend.
    pub fn compute(&self) -> &m2m_gpu::Compute {
        &self.compute
    }

    /// The index, when built.
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Bytes the engine holds on the heap per structure, as (name, bytes), for a memory breakdown: its
    /// rows' small columns and id map, kappa and alpha, the index's codes, ids, id map and centroids,
    /// the SOC router's maps and neighbourhoods. Capacities, not the allocator's or the kernel's view
    /// (the process's resident set also holds mapped pages, the warm cache and the allocator's slack).
    pub fn heap_bytes(&self) -> Vec<(&'static str, usize)> {
        let mut out = self.set.heap_bytes();
        out.push(("engine kappa, alpha", (self.kappa.capacity() + self.alpha.capacity()) * 4));
        out.push(("engine deleted ids", self.deleted.capacity() * 9));
        if let Some(index) = &self.index {
            out.extend(index.heap_bytes());
        }
        if let Some(router) = self.soc.as_ref().and_then(Controller::built_router) {
            out.extend(router.heap_bytes());
        }
        out
    }

    /// Sets this session's warm budget ([`M2mConfig::warm_budget_bytes`]: the bytes of full vectors the
    /// index's cache may hold) and starts the cache again, empty. Not stored: the next `open` uses the
    /// stored setting. Without a stored index read from its files only the setting changes.
    pub fn set_warm_budget(&mut self, bytes: u64) -> Result<()> {
        self.config.warm_budget_bytes = bytes;
        if let (Some(index), Some(snap)) =
            (self.index.as_mut(), self.db.as_ref().map(Db::snapshot).or_else(|| self.snapshot.clone()))
            && index.is_cold()
            && !snap.index.is_empty()
        {
            crate::stored::warm(index, &snap.index, bytes)?;
        }
        Ok(())
    }
}

/// Hands the allocator's free memory back to the OS. Open's transient allocations (the small columns
/// as they grew, sorted copies of the ids, the stored neighbourhoods' bytes) are freed by its end, but
/// glibc keeps freed memory in the process; without this the resident set after open is that peak, not
/// what the engine holds. Elsewhere a no-op.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only returns glibc's own free pages under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Row `r`'s original vector: its unit `mu` times its norm.
fn raw_row(set: &RowStore, r: usize) -> impl Iterator<Item = f32> + '_ {
    let n = set.norm(r);
    set.mu_row(r).iter().map(move |v| v * n)
}

/// The vectors the index is built on: unit `mu` for cosine, the original vectors otherwise.
pub(crate) fn index_vectors(set: &RowStore, rows: std::ops::Range<usize>, metric: Metric) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * set.dim());
    for r in rows {
        if metric == Metric::Cosine {
            out.extend_from_slice(set.mu_row(r));
        } else {
            out.extend(raw_row(set, r));
        }
    }
    out
}
