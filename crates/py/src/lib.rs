//! The native module `m2m._m2m`: the engine (`Engine`) and its data loader (`Loader`) for Python.
//! The Python package `m2m` (python/m2m) wraps them with conversions, the PyTorch `IterableDataset` and
//! documentation.
//!
//! - Inputs are borrowed: float32 C-contiguous arrays are read in place (`PyReadonlyArray`), never copied.
//! - Outputs are Rust buffers handed to numpy: `Vec::into_pyarray` moves the buffer into the array (its
//!   `base` is the Rust allocation), so a batch of the data lake crosses without a copy.
//! - Every call that computes or does IO releases the GIL and runs on a rayon pool owned by this process:
//!   a process forked from one that used the pool (a DataLoader worker) gets a fresh pool instead of one
//!   whose threads did not survive the fork.
//! - Errors: each Rust error becomes the Python exception of its kind (`m2m::ErrorKind`): the classes
//!   of `m2m.errors` (`InvalidInputError`, a `ValueError`; `CorruptError` and `LockedError`, storage
//!   errors and `OSError`s; `NoIndexError`, ...; all under `M2MError`), which the package registers at
//!   import. Each carries the Rust message.

use std::sync::{Arc, Mutex};

mod attributes;

use m2m::{
    DataLoader, DataLoaderConfig, Error, LakeReader, LangevinDynamics, Lod, M2m, M2mConfig, SearchParams, Source,
};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// The exception classes by kind name (`invalid_input`, `corrupt`, ..., and `closed`), registered by
/// the Python package at import (`_register_errors`).
static ERRORS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// An exception of `kind` with `msg`: the registered class, or the built-in one it derives from when
/// the module is used without its package.
fn err_of(py: Python<'_>, kind: &str, msg: String) -> PyErr {
    if let Some(classes) = ERRORS.get(py)
        && let Ok(Some(cls)) = classes.bind(py).get_item(kind)
        && let Ok(cls) = cls.cast_into::<PyType>()
    {
        return PyErr::from_type(cls, msg);
    }
    match kind {
        "invalid_input" => PyValueError::new_err(msg),
        "corrupt" | "locked" | "io" | "poisoned" => PyOSError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Bad input found here, before the engine saw it.
fn invalid(msg: String) -> PyErr {
    Python::attach(|py| err_of(py, "invalid_input", msg))
}

/// The Rust error as the Python exception of its kind.
fn py_err(e: Error) -> PyErr {
    Python::attach(|py| err_of(py, e.kind().name(), e.to_string()))
}

/// Registers the exception classes (a dict from kind name to class); called once by `m2m/__init__.py`.
#[pyfunction]
fn _register_errors(py: Python<'_>, classes: Bound<'_, PyDict>) -> PyResult<()> {
    let _ = ERRORS.set(py, classes.unbind());
    Ok(())
}

/// The default settings as JSON (every field of `M2mConfig`).
#[pyfunction]
fn default_config_json() -> PyResult<String> {
    serde_json::to_string(&M2mConfig::default()).map_err(|e| invalid(e.to_string()))
}

/// Batches a DataLoader yields in total from a lake of `rows` splats with these options (see
/// `DataLoaderConfig::batch_count`).
#[pyfunction]
#[pyo3(signature = (rows, **options))]
fn batch_count(rows: usize, options: Option<&Bound<'_, PyDict>>) -> PyResult<u64> {
    Ok(loader_config(options)?.batch_count(rows))
}

/// This process's pool: rebuilt when the process id changes (after a fork).
fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((p, pool)) = slot.as_ref()
        && *p == pid
    {
        return Ok(Arc::clone(pool));
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("m2m-py-{i}"))
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the thread pool: {e}")))?,
    );
    *slot = Some((pid, Arc::clone(&pool)));
    Ok(pool)
}

/// Runs `f` without the GIL on this process's pool.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    let pool = pool()?;
    py.detach(|| pool.install(f)).map_err(py_err)
}

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| invalid(format!("{what} must be a C-contiguous 1-d array")))
}

fn rows<'a>(a: &'a PyReadonlyArray2<'_, f32>, what: &str, dim: usize) -> PyResult<(&'a [f32], usize)> {
    let shape = a.shape();
    if shape[1] != dim {
        return Err(invalid(format!("{what} has {} columns; the engine's dimension is {dim}", shape[1])));
    }
    let data = a.as_slice().map_err(|_| invalid(format!("{what} must be a C-contiguous float32 array")))?;
    Ok((data, shape[0]))
}

/// A level of detail from a number (0-3) or a name (`centroids`, `codes`, `rerank`, `exact`; any case).
fn lod(level: &Bound<'_, PyAny>) -> PyResult<Lod> {
    let text = if let Ok(n) = level.extract::<i64>() {
        n.to_string()
    } else if let Ok(s) = level.extract::<String>() {
        s
    } else {
        return Err(invalid(format!("lod {level}: a number 0-3 or a name (centroids, codes, rerank, exact)")));
    };
    text.parse::<Lod>().map_err(|e| invalid(e.to_string()))
}

/// A `rows` x `cols` array over a Rust buffer (no copy): the buffer becomes a 1-d array, reshaped as a
/// view.
fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    v.into_pyarray(py).reshape([rows, cols])
}

/// An engine (see the Python class `m2m.M2M`).
#[pyclass(module = "m2m._m2m")]
struct Engine {
    /// `None` once closed.
    inner: Option<M2m>,
}

impl Engine {
    fn get(&self) -> PyResult<&M2m> {
        self.inner.as_ref().ok_or_else(closed)
    }

    fn get_mut(&mut self) -> PyResult<&mut M2m> {
        self.inner.as_mut().ok_or_else(closed)
    }
}

fn closed() -> PyErr {
    Python::attach(|py| err_of(py, "closed", "the engine is closed".into()))
}

#[pymethods]
impl Engine {
    /// A new engine from settings as JSON (fields of `M2mConfig`; missing ones take their defaults).
    #[staticmethod]
    fn create(py: Python<'_>, config_json: &str) -> PyResult<Engine> {
        let config: M2mConfig = serde_json::from_str(config_json).map_err(|e| invalid(format!("config: {e}")))?;
        Ok(Engine { inner: Some(run(py, || M2m::create(config))?) })
    }

    /// Opens a stored engine; `read_only` takes no lock and changes nothing (readers beside a writer).
    #[staticmethod]
    #[pyo3(signature = (path, read_only = false))]
    fn open(py: Python<'_>, path: std::path::PathBuf, read_only: bool) -> PyResult<Engine> {
        let inner = run(py, || if read_only { M2m::open_read_only(&path) } else { M2m::open(&path) })?;
        Ok(Engine { inner: Some(inner) })
    }

    /// Releases the engine now: its writer lock, its memory. Later calls raise the `closed` error.
    /// Every add was acknowledged by the log already, so nothing is lost; closing twice is a no-op.
    fn close(&mut self, py: Python<'_>) {
        let taken = self.inner.take();
        py.detach(move || drop(taken));
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    /// The settings as JSON.
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(self.get()?.config()).map_err(|e| invalid(e.to_string()))
    }

    #[getter]
    fn dim(&self) -> PyResult<usize> {
        Ok(self.get()?.config().dim)
    }

    #[getter]
    fn read_only(&self) -> PyResult<bool> {
        Ok(self.get()?.is_read_only())
    }

    #[getter]
    fn has_index(&self) -> PyResult<bool> {
        Ok(self.get()?.index().is_some())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.get()?.len())
    }

    /// What this writer's open cut from the end of the log (a torn write, or a damaged acknowledged
    /// record), as text; `None` when nothing was cut.
    fn cut_tail(&self) -> PyResult<Option<String>> {
        Ok(self.get()?.cut_tail().map(|c| c.to_string()))
    }

    fn contains(&self, id: u64) -> PyResult<bool> {
        Ok(self.get()?.contains(id))
    }

    /// Adds rows (float32, C-contiguous, n x dim), with optional ids, kappa, alpha and attributes (a
    /// dict of columns); returns the ids.
    #[pyo3(signature = (vectors, ids = None, kappa = None, alpha = None, attributes = None))]
    fn add_splats<'py>(
        &mut self,
        py: Python<'py>,
        vectors: PyReadonlyArray2<'py, f32>,
        ids: Option<PyReadonlyArray1<'py, u64>>,
        kappa: Option<PyReadonlyArray1<'py, f32>>,
        alpha: Option<PyReadonlyArray1<'py, f32>>,
        attributes: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let (data, n) = rows(&vectors, "vectors", self.get()?.config().dim)?;
        let ids = ids.as_ref().map(|a| slice(a, "ids")).transpose()?;
        let kappa = kappa.as_ref().map(|a| slice(a, "kappa")).transpose()?;
        let alpha = alpha.as_ref().map(|a| slice(a, "alpha")).transpose()?;
        let attrs = attributes.as_ref().map(|d| attributes::batch(d, n)).transpose()?;
        let inner = self.get_mut()?;
        let out = run(py, || match (ids, &attrs) {
            (Some(ids), Some(a)) => {
                inner.add_splats_attributed(data, ids, kappa, alpha, Some(a)).map(|()| ids.to_vec())
            }
            (None, Some(a)) => {
                let ids = inner.next_ids(n)?;
                inner.add_splats_attributed(data, &ids, kappa, alpha, Some(a)).map(|()| ids)
            }
            (Some(ids), None) => inner.add_splats_with(data, ids, kappa, alpha).map(|()| ids.to_vec()),
            (None, None) if kappa.is_some() || alpha.is_some() => {
                let ids = inner.next_ids(data.len() / inner.config().dim.max(1))?;
                inner.add_splats_with(data, &ids, kappa, alpha).map(|()| ids)
            }
            (None, None) => inner.add_splats(data),
        })?;
        Ok(out.into_pyarray(py))
    }

    /// Adds rows with these ids, each replacing the live row of its id (vector, kappa, alpha and
    /// attributes) when there is one; one logged change.
    #[pyo3(signature = (vectors, ids, kappa = None, alpha = None, attributes = None))]
    fn upsert<'py>(
        &mut self,
        py: Python<'py>,
        vectors: PyReadonlyArray2<'py, f32>,
        ids: PyReadonlyArray1<'py, u64>,
        kappa: Option<PyReadonlyArray1<'py, f32>>,
        alpha: Option<PyReadonlyArray1<'py, f32>>,
        attributes: Option<Bound<'py, PyDict>>,
    ) -> PyResult<()> {
        let (data, n) = rows(&vectors, "vectors", self.get()?.config().dim)?;
        let ids = slice(&ids, "ids")?;
        let kappa = kappa.as_ref().map(|a| slice(a, "kappa")).transpose()?;
        let alpha = alpha.as_ref().map(|a| slice(a, "alpha")).transpose()?;
        let attrs = attributes.as_ref().map(|d| attributes::batch(d, n)).transpose()?;
        let inner = self.get_mut()?;
        run(py, || inner.upsert(data, ids, kappa, alpha, attrs.as_ref()))
    }

    /// The attributes of `ids`: a dict from field name to a list aligned with `ids` (None: no value, or
    /// an id that is not live).
    fn attributes_of<'py>(&self, py: Python<'py>, ids: PyReadonlyArray1<'py, u64>) -> PyResult<Bound<'py, PyDict>> {
        attributes::of_ids(py, self.get()?, slice(&ids, "ids")?)
    }

    /// The attribute schema as JSON (`{"fields": [{"name", "type"}]}`), or None without one.
    fn schema_json(&self) -> PyResult<Option<String>> {
        self.get()?
            .schema()
            .map(|s| serde_json::to_string(&s).map_err(|e| PyRuntimeError::new_err(e.to_string())))
            .transpose()
    }

    /// Builds the index (and learns kappa and alpha).
    #[pyo3(signature = (n_fine = None, n_coarse = None))]
    fn build_index(&mut self, py: Python<'_>, n_fine: Option<usize>, n_coarse: Option<usize>) -> PyResult<()> {
        let inner = self.get_mut()?;
        run(py, || inner.build_index_with(n_fine, n_coarse))
    }

    /// Top-k of each query row: (ids, scores, kappa, alpha), each q x k' with k' = min(k, splats).
    /// `lod` is 0-3 or a name; `nprobe` and `rerank` override the calibrated defaults for this call.
    /// With `filter` (the JSON form of an `m2m::Filter`), only matching splats; a query with fewer than
    /// k' matches is padded with id 2^64 - 1, score -inf, kappa and alpha NaN.
    #[pyo3(signature = (queries, k = 10, lod = None, nprobe = None, rerank = None, filter = None))]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn retrieve_batch<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        lod: Option<Bound<'py, PyAny>>,
        nprobe: Option<usize>,
        rerank: Option<usize>,
        filter: Option<&str>,
    ) -> PyResult<(
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
    )> {
        let level = lod.as_ref().map(self::lod).transpose()?.unwrap_or_default();
        if nprobe == Some(0) || rerank == Some(0) {
            return Err(invalid("nprobe and rerank must be at least 1 (None: the calibrated default)".into()));
        }
        let params = SearchParams { nprobe: nprobe.unwrap_or(0), rerank: rerank.unwrap_or(0), coarse_probe: 0 };
        let inner = self.get()?;
        let (data, nq) = rows(&queries, "queries", inner.config().dim)?;
        let filter = filter
            .map(|f| serde_json::from_str::<m2m::Filter>(f).map_err(|e| invalid(format!("filter: {e}"))))
            .transpose()?;
        let hits = match &filter {
            Some(f) => run(py, || inner.retrieve_batch_filtered_with(data, k, level, &params, f))?,
            None => run(py, || inner.retrieve_batch_with(data, k, level, &params))?,
        };
        let width = match &filter {
            // Every row as wide as k' = min(k, splats), padded.
            Some(_) => k.min(inner.len()),
            None => hits.iter().map(Vec::len).max().unwrap_or(0),
        };
        if filter.is_none() && hits.iter().any(|h| h.len() != width) {
            return Err(PyRuntimeError::new_err("queries got different numbers of hits"));
        }
        let mut ids = Vec::with_capacity(nq * width);
        let (mut scores, mut kappa, mut alpha) = (Vec::new(), Vec::new(), Vec::new());
        for row in &hits {
            for h in row.iter().take(width) {
                ids.push(h.id);
                scores.push(h.score);
                kappa.push(h.kappa);
                alpha.push(h.alpha);
            }
            for _ in row.len().min(width)..width {
                ids.push(u64::MAX);
                scores.push(f32::NEG_INFINITY);
                kappa.push(f32::NAN);
                alpha.push(f32::NAN);
            }
        }
        Ok((
            matrix(py, ids, nq, width)?,
            matrix(py, scores, nq, width)?,
            matrix(py, kappa, nq, width)?,
            matrix(py, alpha, nq, width)?,
        ))
    }

    /// The energy of one point (routed once the index exists, exact before).
    fn energy(&self, py: Python<'_>, x: PyReadonlyArray1<'_, f32>) -> PyResult<f64> {
        let x = slice(&x, "x")?;
        let inner = self.get()?;
        run(py, || inner.energy(x))
    }

    /// Langevin samples from seed rows (n x dim); `steps` defaults to the engine's setting.
    #[pyo3(signature = (seeds, steps = None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        seeds: PyReadonlyArray2<'py, f32>,
        steps: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inner = self.get()?;
        let dim = inner.config().dim;
        let (data, n) = rows(&seeds, "seeds", dim)?;
        let steps = steps.unwrap_or(inner.config().langevin_steps);
        let out = run(py, || inner.generate(data, steps))?;
        matrix(py, out, n, dim)
    }

    /// `n` Langevin samples started from splats of the engine.
    #[pyo3(signature = (n, steps = None))]
    fn generate_n<'py>(&self, py: Python<'py>, n: usize, steps: Option<usize>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inner = self.get()?;
        let dim = inner.config().dim;
        let steps = steps.unwrap_or(inner.config().langevin_steps);
        let out = run(py, || inner.generate_n(n, steps))?;
        matrix(py, out, n, dim)
    }

    /// Deletes ids; returns how many were live.
    fn delete(&mut self, py: Python<'_>, ids: PyReadonlyArray1<'_, u64>) -> PyResult<usize> {
        let ids = slice(&ids, "ids")?;
        let inner = self.get_mut()?;
        run(py, || inner.delete(ids))
    }

    /// Writes the rows added since the last flush into a segment.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self.get_mut()?;
        run(py, || inner.flush())
    }

    /// Compacts the engine: the index stored again with the rows added and deleted since its build, the
    /// segments merged without the deleted rows; afterwards a deleted id may be added again.
    fn compact(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self.get_mut()?;
        run(py, || inner.compact())
    }

    /// What the engine holds: `m2m::Stats` as JSON (Python's `m2m.Stats` has the same fields).
    fn stats_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.get()?.stats()).map_err(|e| invalid(e.to_string()))
    }

    /// Training feedback: per-row losses drive the SOC controller (see `m2m::M2m::feedback`).
    fn feedback(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u64>,
        losses: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<u64> {
        let (ids, losses) = (slice(&ids, "ids")?, slice(&losses, "losses")?);
        let inner = self.get()?;
        run(py, || inner.feedback(ids, losses))
    }

    /// Ends an epoch: the controller's activity decays and its state is saved in the data directory.
    fn tick(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.get()?;
        run(py, || inner.tick())
    }

    /// Fidelity of generated rows to their seeds (ids), as a dict; `labels[id]` gives a row's label.
    #[pyo3(signature = (seeds, generated, labels = None))]
    fn fidelity<'py>(
        &self,
        py: Python<'py>,
        seeds: PyReadonlyArray1<'_, u64>,
        generated: PyReadonlyArray2<'_, f32>,
        labels: Option<PyReadonlyArray1<'_, i64>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dim = self.get()?.config().dim;
        let seeds = slice(&seeds, "seeds")?;
        let (generated, _) = rows(&generated, "generated", dim)?;
        let labels = match &labels {
            Some(l) => Some(slice(l, "labels")?),
            None => None,
        };
        let inner = self.get()?;
        let f = run(py, || {
            let lookup = labels.map(|l| {
                move |id: u64| usize::try_from(id).ok().and_then(|i| l.get(i)).and_then(|&v| u32::try_from(v).ok())
            });
            let lookup_ref = lookup.as_ref().map(|f| f as &dyn Fn(u64) -> Option<u32>);
            inner.fidelity(seeds, generated, lookup_ref)
        })?;
        let d = PyDict::new(py);
        d.set_item("rows", f.rows)?;
        d.set_item("mean_cos_to_seed", f.mean_cos_to_seed)?;
        d.set_item("in_band", f.in_band)?;
        d.set_item("within_16th", f.within_16th)?;
        d.set_item("label_agreement", f.label_agreement)?;
        d.set_item("real_label_agreement", f.real_label_agreement)?;
        d.set_item("copies", f.copies)?;
        d.set_item("max_cos_to_real", f.max_cos_to_real)?;
        Ok(d)
    }

    /// How many live splats `filter` (its JSON text) matches.
    fn count_matching(&self, py: Python<'_>, filter: &str) -> PyResult<usize> {
        let filter = serde_json::from_str::<m2m::Filter>(filter).map_err(|e| invalid(format!("filter: {e}")))?;
        let inner = self.get()?;
        Ok(run(py, || inner.matching_ids(&filter))?.len())
    }

    /// Starts streaming batches (see `m2m.M2M.export_to_dataloader` for the fields).
    #[pyo3(signature = (**options))]
    fn loader(&self, py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Loader> {
        let inner = self.get()?;
        start_loader(py, options, |config| inner.export_to_dataloader(config))
    }
}

/// The lake of a stored engine without the engine (see `m2m::LakeReader`): what DataLoader workers open.
#[pyclass(module = "m2m._m2m")]
struct Reader {
    inner: LakeReader,
}

#[pymethods]
impl Reader {
    /// Opens the lake of the engine stored in `path` (no lock, no vector read).
    #[staticmethod]
    fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Reader> {
        Ok(Reader { inner: run(py, || LakeReader::open(&path))? })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Starts streaming batches from the tiers (no importance sampling or generated rows).
    #[pyo3(signature = (**options))]
    fn loader(&self, py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Loader> {
        let inner = &self.inner;
        start_loader(py, options, |config| inner.export_to_dataloader(config))
    }
}

/// Starts `export` (an engine's or a reader's) with the keyword options, without the GIL.
fn start_loader(
    py: Python<'_>,
    options: Option<&Bound<'_, PyDict>>,
    export: impl FnOnce(&DataLoaderConfig) -> Result<DataLoader, Error> + Send,
) -> PyResult<Loader> {
    let config = loader_config(options)?;
    let loader = run(py, || export(&config))?;
    Ok(Loader { inner: Mutex::new(Some(loader)) })
}

/// A `DataLoaderConfig` from keyword options; an unknown one is a `ValueError`.
fn loader_config(options: Option<&Bound<'_, PyDict>>) -> PyResult<DataLoaderConfig> {
    let mut c = DataLoaderConfig::default();
    let Some(options) = options else { return Ok(c) };
    for (key, value) in options.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "batch_size" => c.batch_size = value.extract()?,
            "generate_samples" => c.generate_samples = value.extract()?,
            "generate_steps" => c.generate_steps = value.extract()?,
            "importance_sampling" => c.importance_sampling = value.extract()?,
            "shuffle" => c.shuffle = value.extract()?,
            "seed" => c.seed = value.extract()?,
            "epochs" => c.epochs = value.extract()?,
            "prefetch_batches" => c.prefetch_batches = value.extract()?,
            "drop_last" => c.drop_last = value.extract()?,
            "rank" => c.rank = value.extract()?,
            "world_size" => c.world_size = value.extract()?,
            "skip_batches" => c.skip_batches = value.extract()?,
            "batch_stride" => c.batch_stride = value.extract()?,
            "batch_offset" => c.batch_offset = value.extract()?,
            "threads" => c.threads = value.extract()?,
            "start_epoch" => c.start_epoch = value.extract()?,
            "temperature" => c.temperature = value.extract()?,
            "step_size" => c.step_size = value.extract()?,
            "dynamics" => {
                c.dynamics = match value.extract::<String>()?.as_str() {
                    "overdamped" => Some(LangevinDynamics::Overdamped),
                    "underdamped" => Some(LangevinDynamics::Underdamped),
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "dynamics {other:?}: \"overdamped\" or \"underdamped\""
                        )));
                    }
                }
            }
            "filter" => {
                let text: String = value.extract().map_err(|_| invalid("filter: its JSON text".into()))?;
                c.filter =
                    Some(serde_json::from_str::<m2m::Filter>(&text).map_err(|e| invalid(format!("filter: {e}")))?);
            }
            "source" => {
                c.source = match value.extract::<String>()?.to_ascii_lowercase().as_str() {
                    "auto" => Source::Auto,
                    "memory" => Source::Memory,
                    "tiers" => Source::Tiers,
                    other => {
                        return Err(invalid(format!("source {other:?}: \"auto\", \"memory\" or \"tiers\"")));
                    }
                }
            }
            other => return Err(invalid(format!("unknown loader option {other:?}"))),
        }
    }
    Ok(c)
}

/// A running export: an iterator of dicts of numpy arrays over Rust buffers.
#[pyclass(module = "m2m._m2m")]
struct Loader {
    inner: Mutex<Option<DataLoader>>,
}

#[pymethods]
impl Loader {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let next = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.as_mut().and_then(Iterator::next)
        });
        let batch = match next {
            None => return Err(PyStopIteration::new_err(())),
            Some(b) => b.map_err(py_err)?,
        };
        let n = batch.ids.len();
        let dim = batch.mu.len().checked_div(n).unwrap_or(0);
        let d = PyDict::new(py);
        d.set_item("epoch", batch.epoch)?;
        d.set_item("ids", batch.ids.into_pyarray(py))?;
        d.set_item("mu", matrix(py, batch.mu, n, dim)?)?;
        d.set_item("kappa", batch.kappa.into_pyarray(py))?;
        d.set_item("alpha", batch.alpha.into_pyarray(py))?;
        d.set_item("weights", batch.weights.into_pyarray(py))?;
        d.set_item("generated", batch.generated.into_pyarray(py))?;
        // With a label field: the labels as int64 (0 where a row has none) and which rows have one.
        if !batch.labels.is_empty() {
            let mask: Vec<bool> = batch.labels.iter().map(Option::is_some).collect();
            let labels: Vec<i64> = batch.labels.iter().map(|l| l.unwrap_or(0)).collect();
            d.set_item("labels", labels.into_pyarray(py))?;
            d.set_item("label_mask", mask.into_pyarray(py))?;
        }
        Ok(d)
    }

    /// Training feedback through the exporting engine's controller (see `m2m::DataLoader::feedback`).
    fn feedback(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u64>,
        losses: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<u64> {
        let (ids, losses) = (slice(&ids, "ids")?, slice(&losses, "losses")?);
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let loader = guard.as_ref().ok_or_else(|| PyValueError::new_err("the loader is closed"))?;
        run(py, || loader.feedback(ids, losses))
    }

    /// Stops the loader's thread now (also done when the object is collected).
    fn close(&self, py: Python<'_>) {
        let taken = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        py.detach(move || drop(taken));
    }
}

#[pymodule]
fn _m2m(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Loader>()?;
    m.add_class::<Reader>()?;
    m.add_function(wrap_pyfunction!(_register_errors, m)?)?;
    m.add_function(wrap_pyfunction!(default_config_json, m)?)?;
    m.add_function(wrap_pyfunction!(batch_count, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
