"""The engine from Python: :class:`M2M` (alias ``M2m``, the Rust name), its result types :class:`Hits`
and :class:`Stats`, and the constructors :func:`create_m2m`, :func:`open_m2m` (also ``m2m.open``)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, List, Literal, NamedTuple, Optional, Type, Union, overload

import numpy as np
import numpy.typing as npt

from . import _m2m
from ._config import M2MConfig
from .errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from ._dataset import SplatDataset

#: A level of detail: 0-3 or a name ("centroids", "codes", "rerank", "exact"; any case).
Lod = Union[int, str]


class Hits(NamedTuple):
    """What ``retrieve`` returns: for one query (a 1-d query) 1-d arrays of k' = min(k, splats)
    entries, best first; for a batch (a 2-d query) q x k' arrays."""

    ids: npt.NDArray[np.uint64]
    scores: npt.NDArray[np.float32]
    kappa: npt.NDArray[np.float32]
    alpha: npt.NDArray[np.float32]


#: The id that pads a filtered batch's rows when fewer than k splats match (2**64 - 1, the uint64 of -1);
#: its score is -inf and its kappa and alpha NaN.
NO_ID = 2**64 - 1

#: A filter in its JSON form: a dict such as ``{"eq": {"field": "label", "value": 3}}`` (also
#: ``in``, ``range`` with gte/gt/lte/lt, ``tag``, ``is_null``, ``and``, ``or``, ``not``), or its text.
FilterSpec = Union[Dict[str, Any], str]


class AttributedHits(NamedTuple):
    """What ``retrieve(..., with_attributes=True)`` returns: the :class:`Hits` arrays and the hits'
    attributes, a dict from field name to a list shaped like ``ids`` (a list of lists for a batch): the
    value, or None (no value, or a padded hit). Payloads are ``bytes`` (JSON payloads as their text)."""

    ids: npt.NDArray[np.uint64]
    scores: npt.NDArray[np.float32]
    kappa: npt.NDArray[np.float32]
    alpha: npt.NDArray[np.float32]
    attributes: Dict[str, List[Any]]


def _filter_json(f: Optional[FilterSpec]) -> Optional[str]:
    if f is None or isinstance(f, str):
        return f
    if not isinstance(f, dict):
        raise InvalidInputError(f"a filter is a dict (its JSON form) or its text, not {type(f).__name__}")
    try:
        return json.dumps(f, allow_nan=False)
    except RecursionError:
        raise InvalidInputError("filter: nested too deep") from None
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"filter: {e}") from None


def _attribute_column(name: str, v: Any) -> Any:
    """One column as the native module takes it: int64, float64 or bool arrays, or a list of Python values
    (JSON payloads, dicts, as their text in bytes)."""
    if hasattr(v, "to_pylist"):  # a pyarrow array or chunked array
        v = v.to_pylist()
    elif hasattr(v, "to_numpy") and not isinstance(v, np.ndarray):  # a pandas series
        v = v.to_numpy()
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu().numpy()
    if isinstance(v, (str, bytes, bytearray, dict)) or (isinstance(v, np.ndarray) and v.ndim == 0):
        # A string is iterable: it would be stored as one row per character.
        raise InvalidInputError(
            f"attribute {name!r}: a column is a sequence of values (one per row), not a single {type(v).__name__}"
        )
    if isinstance(v, np.ndarray):
        if v.ndim != 1:
            raise InvalidInputError(f"attribute {name!r}: a 1-d column, got {v.ndim} dimensions")
        if v.dtype.kind == "b":
            return np.ascontiguousarray(v, dtype=np.bool_)
        if v.dtype.kind == "i":
            return np.ascontiguousarray(v, dtype=np.int64)
        if v.dtype.kind == "u":
            if v.size and int(v.max()) > np.iinfo(np.int64).max:
                raise InvalidInputError(f"attribute {name!r}: {int(v.max())} is outside the 64-bit signed integers")
            return np.ascontiguousarray(v, dtype=np.int64)
        if v.dtype.kind == "f":
            return np.ascontiguousarray(v, dtype=np.float64)
        v = v.tolist()
    if not hasattr(v, "__iter__"):
        raise InvalidInputError(f"attribute {name!r}: a column is a sequence of values, not {type(v).__name__}")
    out = []
    for x in v:
        if isinstance(x, dict):
            try:
                x = json.dumps(x, allow_nan=False).encode()
            except (TypeError, ValueError, RecursionError) as e:
                raise InvalidInputError(f"attribute {name!r}: a payload that is not JSON: {e}") from None
        elif isinstance(x, np.generic):
            x = x.item()
        out.append(x)
    return out


def _attributes(attrs: Any) -> Optional[Dict[str, Any]]:
    """A dict of columns from a dict (of numpy arrays or lists), a pandas DataFrame or a pyarrow Table."""
    if attrs is None:
        return None
    if hasattr(attrs, "to_pydict") and hasattr(attrs, "column_names"):  # pyarrow
        attrs = {n: attrs.column(n) for n in attrs.column_names}
    elif hasattr(attrs, "columns") and hasattr(attrs, "__getitem__") and not isinstance(attrs, dict):  # pandas
        attrs = {str(c): attrs[c] for c in attrs.columns}
    if not isinstance(attrs, dict):
        raise InvalidInputError(f"attributes are a dict of columns, not {type(attrs).__name__}")
    return {str(k): _attribute_column(str(k), v) for k, v in attrs.items()}


@dataclasses.dataclass(frozen=True)
class Stats:
    """What an engine holds: the fields of the Rust ``m2m::Stats`` and of ``m2m info --json``."""

    splats: int
    deleted: int
    dim: int
    metric: str
    device: str
    segments: int
    fine_clusters: Optional[int]
    coarse_clusters: Optional[int]
    nprobe: Optional[int]
    #: The adaptive probe rule's margin when the calibration chose one (LOD 2 at the default then probes up
    #: to ``nprobe`` clusters, stopping early per query); None: the fixed ``nprobe``.
    probe_margin: Optional[float]
    rerank: Optional[int]
    kappa_mean: float
    kappa_min: float
    kappa_max: float
    #: Share of the splats whose learned kappa was clipped to its range at the last build (None without).
    kappa_clipped: Optional[float]
    #: Which path answered batch retrievals in this process (device or CPU) and the cost models: a dict
    #: with gpu_queries, cpu_queries, last_on_gpu and models.
    retrieval: Dict[str, Any]

    @classmethod
    def from_json(cls, text: str) -> "Stats":
        return cls(**json.loads(text))

    def __getitem__(self, field: str) -> Any:
        """``stats()["splats"]``, the dict access of earlier versions (deprecated: use attributes)."""
        warnings.warn("Stats is an object now: use stats().splats", DeprecationWarning, stacklevel=2)
        if field not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(field)
        return getattr(self, field)


def _rows(a: Any, dim: int, what: str) -> npt.NDArray[np.float32]:
    """A float32 C-contiguous 2-d array from numpy arrays, lists or torch tensors (detached, on the CPU)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    out = np.ascontiguousarray(a, dtype=np.float32)
    if out.ndim == 1:
        out = out.reshape(1, -1)
    if out.ndim != 2:
        raise InvalidInputError(f"{what} must be 1-d or 2-d, got {out.ndim} dimensions")
    if out.shape[1] != dim:
        raise InvalidInputError(f"{what} has {out.shape[1]} columns; the engine's dimension is {dim}")
    return out


def _column(a: Any, dtype: Any) -> Optional[npt.NDArray[Any]]:
    if a is None:
        return None
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def _k(k: Any) -> int:
    """``k`` as an int of at least 1 (a negative ``k`` would otherwise reach the native module as a
    built-in ``OverflowError``)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    return int(k)


def _ids(a: Any) -> npt.NDArray[np.uint64]:
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    raw = np.asarray(a).reshape(-1)
    if raw.size and raw.dtype.kind not in "ui":
        raise InvalidInputError(f"ids must be integers, got {raw.dtype}")
    if raw.size and raw.dtype.kind == "i" and raw.min() < 0:
        raise InvalidInputError(f"ids must be >= 0, got {raw.min()}")
    return np.ascontiguousarray(raw, dtype=np.uint64)


class _Splats:
    """``engine.splats``: the original project's splat store, kept for its scripts (deprecated)."""

    def __init__(self, engine: "M2M") -> None:
        self._engine = engine

    def build_index(self) -> None:
        """The original's ``m2m.splats.build_index()``: :meth:`M2M.build_index`."""
        warnings.warn("m2m.splats.build_index() is m2m.build_index()", DeprecationWarning, stacklevel=2)
        self._engine.build_index()

    @property
    def n_active(self) -> int:
        """The original's count of live splats: ``len(engine)``."""
        return len(self._engine)


class _OneAtATime:
    """The native engine with its calls taken one at a time: a call from another thread waits for the
    running one (with the GIL released) instead of failing on the native object's borrow ("Already
    borrowed"), so an engine may be shared by threads: an add beside a query, a close during one. Each
    call still runs its own work on every core. An integer argument out of range (a negative k, an id
    above 2**64) is an :class:`InvalidInputError`, as other bad input is, not an OverflowError."""

    def __init__(self, engine: "_m2m.Engine") -> None:
        self._inner = engine
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_lock"):
            # Asked for only before __init__ set them (a copy or unpickling): no recursion.
            raise AttributeError(name)
        with self._lock:
            attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                try:
                    return attr(*args, **kwargs)
                except OverflowError as e:
                    raise InvalidInputError(f"{name}: an integer argument is out of range ({e})") from e

        return call

    def __len__(self) -> int:
        with self._lock:
            return len(self._inner)


class M2M:
    """An engine. Make one with :func:`create_m2m` or :func:`open_m2m`; close it with :meth:`close` or
    a ``with`` block, which releases the directory's writer lock at once (it is also released when the
    object is collected)."""

    def __init__(self, engine: "_m2m.Engine", config: Optional[M2MConfig] = None) -> None:
        # Typed as the native engine: every attribute goes through to it, one call at a time.
        self._engine: "_m2m.Engine" = _OneAtATime(engine)  # type: ignore[assignment]
        self._legacy = config is not None and config.legacy
        self._default_k = 10 if config is None else config.default_k

    # Lifetime.

    def close(self) -> None:
        """Releases the engine now: the writer lock and the memory. Every add was already acknowledged
        by the log, so nothing is lost. Later calls raise :class:`m2m.ClosedError`; closing twice is
        harmless."""
        self._engine.close()

    @property
    def closed(self) -> bool:
        return self._engine.closed

    def __enter__(self) -> "M2M":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "M2M(closed)"
        return f"M2M(dim={self.dim}, splats={len(self)}, read_only={self.read_only})"

    # What it holds.

    @property
    def dim(self) -> int:
        return self._engine.dim

    @property
    def read_only(self) -> bool:
        return self._engine.read_only

    @property
    def has_index(self) -> bool:
        return self._engine.has_index

    @property
    def config(self) -> Dict[str, Any]:
        """The engine's settings (the Rust ``M2mConfig`` as a dict), with the metric and the device
        named as :meth:`stats` and ``m2m info`` name them (``"ip"``, ``"cosine"``, ``"l2"``; ``"cpu"``,
        ``"auto"``, ``"vulkan"``); any spelling of those is accepted back."""
        out: Dict[str, Any] = json.loads(self._engine.config_json())
        metric = str(out.get("metric", "")).lower()
        out["metric"] = {"innerproduct": "ip", "inner_product": "ip"}.get(metric, metric)
        out["device"] = str(out.get("device", "")).lower()
        return out

    def __len__(self) -> int:
        return len(self._engine)

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, (int, np.integer)) or int(id_) < 0:
            return False
        return self._engine.contains(int(id_))

    def stats(self) -> Stats:
        """What the engine holds (the same fields as Rust's ``m2m::Stats`` and ``m2m info --json``)."""
        return Stats.from_json(self._engine.stats_json())

    # Changes.

    def add_splats(
        self, vectors: Any, ids: Any = None, attributes: Any = None, kappa: Any = None, alpha: Any = None
    ) -> npt.NDArray[np.uint64]:
        """Adds rows (n x dim: numpy, lists or torch tensors); returns their ids (uint64). ``attributes``:
        a dict from field name to a column of n values (a numpy array, a list with None for a missing
        value, or a pandas / pyarrow column), or a pandas DataFrame or pyarrow Table. A column's values
        give its type: integers, floats, bools, strings (keywords), lists of strings (tags), bytes or
        dicts (payloads; a dict is stored as its JSON text). The first add with attributes sets the
        schema (an integer column named ``label`` is the label); later adds must fit it. A batch is
        validated whole: on error (:class:`m2m.InvalidInputError`) nothing of it is kept."""
        rows = _rows(vectors, self.dim, "vectors")
        id_col = None if ids is None else _ids(ids)
        return self._engine.add_splats(
            rows, id_col, _column(kappa, np.float32), _column(alpha, np.float32), self._typed(attributes)
        )

    def upsert(self, vectors: Any, ids: Any, attributes: Any = None, kappa: Any = None, alpha: Any = None) -> None:
        """Adds rows with these ids, each replacing the live splat of its id when there is one: its
        vector, kappa, alpha and attributes (a field the batch does not give becomes null). One logged
        change: after a crash either the old rows or the new ones are there, never both. Validated whole
        first; on error nothing changes."""
        rows = _rows(vectors, self.dim, "vectors")
        self._engine.upsert(
            rows, _ids(ids), _column(kappa, np.float32), _column(alpha, np.float32), self._typed(attributes)
        )

    def _typed(self, attributes: Any) -> Optional[Dict[str, Any]]:
        """The columns of ``attributes`` (see :func:`_attributes`), refusing a column whose every value is
        None for a field the schema does not have: it has no type to infer, and the native side would
        leave it out silently (a field the schema has is simply null in those rows)."""
        cols = _attributes(attributes)
        if not cols:
            return cols
        known = {f["name"] for f in (self.schema or {}).get("fields", [])}
        for name, col in cols.items():
            if isinstance(col, list) and col and all(v is None for v in col) and name not in known:
                raise InvalidInputError(
                    f"attribute {name!r}: every value is None and the schema has no such field, so its type "
                    "cannot be inferred (give at least one value)"
                )
        return cols

    @property
    def schema(self) -> Optional[Dict[str, Any]]:
        """The attribute schema, ``{"fields": [{"name": ..., "type": ...}]}``, or None without one."""
        text = self._engine.schema_json()
        return None if text is None else dict(json.loads(text))

    def attributes(self, ids: Any) -> Dict[str, List[Any]]:
        """The attributes of ``ids``: a dict from field name to a list aligned with them (None: no value,
        or an id that is not live)."""
        return dict(self._engine.attributes_of(_ids(ids)))

    def build_index(self, n_fine: Optional[int] = None, n_coarse: Optional[int] = None) -> None:
        """Builds the index (and learns kappa and alpha); replaces an older one."""
        self._engine.build_index(n_fine, n_coarse)

    def delete(self, ids: Any) -> int:
        """Deletes ids; returns how many were live."""
        return self._engine.delete(_ids(ids))

    def flush(self) -> None:
        """Writes the rows added since the last flush into a segment."""
        self._engine.flush()

    def compact(self) -> None:
        """Compacts the engine: the index is stored again with the rows added and deleted since its build,
        the database's segments are merged without the deleted rows, and those leave RAM. Afterwards a
        deleted id may be added again (``add_splats(..., ids=...)``). In memory only the RAM part applies."""
        self._engine.compact()

    # Training feedback.

    def feedback(self, ids: Any, losses: Any) -> int:
        """Training feedback: per-row losses (ids as the batches gave them) drive the SOC controller, so
        the next export samples the rows the model gets wrong more. Call it in the process that holds
        the writable engine (the training loop's), not in DataLoader workers."""
        return self._engine.feedback(_ids(ids), np.ascontiguousarray(losses, dtype=np.float32).reshape(-1))

    def tick(self) -> None:
        """Ends an epoch: the controller's activity decays and its state is saved in the data directory,
        where the next epoch's DataLoader workers (and resumed runs) read it."""
        self._engine.tick()

    def fidelity(self, seeds: Any, generated: Any, labels: Any = None) -> Dict[str, Any]:
        """How close generated rows stay to their seeds (ids): mean cosine, share inside the seed's band
        of real neighbours (1st to 16th), copies, and with ``labels`` (indexed by id) the share whose
        nearest real row has the seed's label against the real rows' own 1-NN agreement."""
        lab = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        return self._engine.fidelity(_ids(seeds), _rows(generated, self.dim, "generated"), lab)

    # Retrieval.

    def _index_for(self, what: str) -> None:
        """The original built the index by itself; an engine made from its settings does so too."""
        if self._legacy and not self._engine.has_index and len(self._engine) > 0:
            warnings.warn(
                f"{what} built the index first, as the original project did: call build_index() after adding",
                DeprecationWarning,
                stacklevel=3,
            )
            self._engine.build_index(None, None)

    @overload
    def retrieve(
        self,
        query: Any,
        k: Optional[int] = ...,
        lod: Lod = ...,
        filter: Optional[FilterSpec] = ...,
        *,
        nprobe: Optional[int] = ...,
        rerank: Optional[int] = ...,
        with_attributes: Literal[False] = ...,
    ) -> Hits: ...

    @overload
    def retrieve(
        self,
        query: Any,
        k: Optional[int] = ...,
        lod: Lod = ...,
        filter: Optional[FilterSpec] = ...,
        *,
        nprobe: Optional[int] = ...,
        rerank: Optional[int] = ...,
        with_attributes: Literal[True],
    ) -> AttributedHits: ...

    def retrieve(
        self,
        query: Any,
        k: Optional[int] = None,
        lod: Lod = 2,
        filter: Optional[FilterSpec] = None,
        *,
        nprobe: Optional[int] = None,
        rerank: Optional[int] = None,
        with_attributes: bool = False,
    ) -> Union[Hits, AttributedHits]:
        """The k best splats (k defaults to 10) of a query at a level of detail: 0 or "centroids", 1 or
        "codes", 2 or "rerank" (the default), 3 or "exact". ``nprobe`` (fine clusters scored) and
        ``rerank`` (candidates re-ranked exactly at LOD 2) override the calibrated defaults
        (``stats().nprobe``, ``stats().rerank``) for this call. A 1-d query gives 1-d arrays; a 2-d one
        is a batch (see :meth:`retrieve_batch`).

        ``filter`` (a dict in the JSON form of ``m2m::Filter``, e.g. ``{"and": [{"eq": {"field":
        "label", "value": 3}}, {"range": {"field": "t", "gte": 10}}]}``) keeps only the matching splats;
        an unknown field or a value of the wrong type raises :class:`m2m.InvalidInputError`. With
        ``with_attributes`` the hits come with their attributes (:class:`AttributedHits`)."""
        single = np.ndim(query) == 1
        hits = self.retrieve_batch(query, k, lod, filter, nprobe=nprobe, rerank=rerank)
        if single:
            hits = Hits(hits.ids[0], hits.scores[0], hits.kappa[0], hits.alpha[0])
        if not with_attributes:
            return hits
        flat = self.attributes(hits.ids.reshape(-1))
        if not single:
            width = hits.ids.shape[1] if hits.ids.ndim == 2 else 0
            flat = {n: [col[i : i + width] for i in range(0, len(col), width)] if width else [[] for _ in hits.ids]
                    for n, col in flat.items()}
        return AttributedHits(hits.ids, hits.scores, hits.kappa, hits.alpha, flat)

    def retrieve_batch(
        self,
        queries: Any,
        k: Optional[int] = None,
        lod: Lod = 2,
        filter: Optional[FilterSpec] = None,
        *,
        nprobe: Optional[int] = None,
        rerank: Optional[int] = None,
    ) -> Hits:
        """:meth:`retrieve` for each query row: q x k' arrays, k' = min(k, splats). Under a ``filter`` a
        query with fewer than k' matching splats has its row padded at the end with id :data:`NO_ID`
        (2**64 - 1, the uint64 of -1), score -inf and kappa and alpha NaN."""
        self._index_for("retrieve")
        rows = _rows(queries, self.dim, "queries")
        k = _k(self._default_k if k is None else k)
        return Hits(*self._engine.retrieve_batch(rows, k, lod, nprobe, rerank, _filter_json(filter)))

    def search(self, query: Any, k: Optional[int] = None) -> Hits:
        """The original project's name of :meth:`retrieve` (deprecated)."""
        warnings.warn("search is the original project's name: use retrieve", DeprecationWarning, stacklevel=2)
        return self.retrieve(query, k)

    # Science.

    def energy(self, x: Any) -> float:
        """The energy of one point (routed once the index exists, exact before)."""
        return self._engine.energy(_rows(x, self.dim, "x").reshape(-1))

    def generate(self, n_or_seeds: Any, steps: Optional[int] = None) -> npt.NDArray[np.float32]:
        """Langevin samples: ``n`` from splats of the engine, or one per seed row."""
        self._index_for("generate")
        if isinstance(n_or_seeds, (int, np.integer)):
            return self._engine.generate_n(int(n_or_seeds), steps)
        return self._engine.generate(_rows(n_or_seeds, self.dim, "seeds"), steps)

    @property
    def splats(self) -> _Splats:
        """The original project's splat store (``m2m.splats.build_index()``), kept for its scripts."""
        return _Splats(self)

    # The data lake.

    def export_to_dataloader(
        self,
        batch_size: int = 256,
        generate_samples: bool = False,
        importance_sampling: bool = False,
        *,
        num_workers: Optional[int] = None,
        output: Optional[str] = None,
        **options: Any,
    ) -> Any:
        """The data lake as a :class:`m2m.SplatDataset` (a ``torch.utils.data.IterableDataset`` when
        torch is installed, a plain iterable of numpy batches otherwise); with ``num_workers`` (as the
        original project took it) a ``torch.utils.data.DataLoader`` over it.

        Options: shuffle (True), seed (0), epochs (1), prefetch_batches (2), drop_last (False), rank (0),
        world_size (1), generate_steps (8), threads (0: all cores; 1 in DataLoader workers), source
        ("auto": "tiers" for an engine with a data_dir, else "memory"; "memory": the engine's rows in
        place; "tiers": the database's segments through the warm tier, in block order, with prefetch;
        needs a data_dir), filter (a dict in the JSON form of ``m2m::Filter``, as
        :meth:`retrieve` takes it: only the matching splats are streamed, every epoch, importance sampling
        and Langevin seeds included; not with source "tiers"). ``output``: "dict" (the default: ids, mu,
        kappa, alpha, weights, generated, epoch; with a label field in the schema also ``labels``, int64,
        0 where a row has none, and ``label_mask``, which rows have one; a generated row carries its
        seed's label) or "mu" (the vectors alone, as the original yielded them; the default of an engine
        made from the original's settings).

        The order depends only on (seed, epoch) and the options, never on the number of DataLoader
        workers: worker w of W assembles batches w, w + W, ... of the one stream, which the DataLoader's
        round-robin puts back in order. Call :meth:`SplatDataset.set_epoch` for each epoch's order. With
        importance sampling, workers draw from the sampler's state saved by the last :meth:`tick`, the
        main process from its live state (queries and feedback since): call :meth:`tick` before an epoch
        for one order with and without workers. With ``generate_samples`` a batch holds ``batch_size``
        real rows and one generated row per real row (``generated`` says which)."""
        from ._dataset import SplatDataset

        if generate_samples or importance_sampling:
            self._index_for("export_to_dataloader")
        if output is None:
            output = "dict"
            if self._legacy:
                warnings.warn(
                    'the data lake yields the vectors alone, as the original did; output="dict" gives ids, '
                    "kappa, alpha and importance weights too",
                    DeprecationWarning,
                    stacklevel=2,
                )
                output = "mu"
        dataset: SplatDataset = SplatDataset(
            self, batch_size, generate_samples, importance_sampling, output=output, **options
        )
        if num_workers is None:
            return dataset
        from ._dataset import _torch

        if _torch is None:
            raise InvalidInputError("num_workers needs torch (pip install torch)")
        return _torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)


#: The Rust name of the engine type.
M2m = M2M


def create_m2m(config: Optional[M2MConfig] = None, **fields: Any) -> M2M:
    """A new engine from an :class:`M2MConfig` (or its fields as keywords)."""
    if config is None:
        config = M2MConfig(**fields)
    elif fields:
        raise InvalidInputError("give a config or keyword fields, not both")
    return M2M(_m2m.Engine.create(config.to_json()), config)


def open_m2m(path: Union[str, "os.PathLike[str]"], read_only: bool = False) -> M2M:
    """Opens a stored engine as its only writer, or with ``read_only`` beside a writer (no lock, no file
    changed). Also ``m2m.open``, which ``from m2m import *`` leaves out so as not to hide the builtin."""
    engine = M2M(_m2m.Engine.open(os.fspath(path), read_only))
    cut = None if read_only else engine._engine.cut_tail()
    if cut is not None:
        # Rows lost to a damaged log tail are said where a Python user looks, not only in a log line.
        warnings.warn(
            f"m2m: {cut}: a torn write or a damaged acknowledged record was dropped at open "
            "(`m2m verify` names such damage before a writer opens)",
            RuntimeWarning,
            stacklevel=2,
        )
    return engine
