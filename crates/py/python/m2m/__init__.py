"""M2M from Python: the Rust engine (ingest, retrieval with levels of detail, energy, Langevin
generation) and its training data lake as a PyTorch ``IterableDataset``.

Arrays cross without copies where the layout allows: float32 C-contiguous inputs are read in place
(anything else is converted once by ``numpy.ascontiguousarray``), and every array returned is a numpy
view of a Rust buffer. Long calls release the GIL. Bad input raises ``ValueError``, storage errors
``OSError``, a call in the wrong state (no index, a change to a read-only engine) ``RuntimeError``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from . import _m2m

__all__ = ["M2MConfig", "M2M", "SplatDataset", "create_m2m", "open"]
__version__ = _m2m.__version__

_FIELDS = {
    "dim",
    "metric",
    "init_kappa",
    "init_alpha",
    "min_kappa",
    "max_kappa",
    "learn_kappa",
    "langevin_steps",
    "langevin_dt",
    "langevin_gamma",
    "temperature",
    "langevin_dynamics",
    "device",
    "warm_budget_bytes",
    "hot_budget_bytes",
    "data_dir",
    "durable",
    "seed",
}


class M2MConfig:
    """Settings of an engine; every field left out takes the Rust default (dim 640, init_kappa 10,
    init_alpha 1, kappa 1..50, Langevin 200 steps of dt 0.001, gamma 0.1, T 1, device "Cpu",
    data_dir None = in memory, durable True, seed 42)."""

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - _FIELDS
        if unknown:
            raise ValueError(f"unknown M2MConfig fields: {sorted(unknown)}")
        if fields.get("data_dir") is not None:
            fields["data_dir"] = str(fields["data_dir"])
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def to_json(self) -> str:
        return json.dumps(self._fields)

    def __repr__(self) -> str:
        return f"M2MConfig({', '.join(f'{k}={v!r}' for k, v in sorted(self._fields.items()))})"


def _f32_rows(a: Any, dim: int, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 1-d or 2-d, got {a.ndim} dimensions")
    if a.shape[1] != dim:
        raise ValueError(f"{what} has {a.shape[1]} columns; the engine's dimension is {dim}")
    return a


def _opt(a: Any, dtype: Any) -> Optional[np.ndarray]:
    return None if a is None else np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def _ids(a: Any) -> np.ndarray:
    raw = np.asarray(a).reshape(-1)
    if raw.size and raw.dtype.kind not in "ui":
        raise ValueError(f"ids must be integers, got {raw.dtype}")
    if raw.size and raw.dtype.kind == "i" and raw.min() < 0:
        raise ValueError(f"ids must be >= 0, got {raw.min()}")
    return np.ascontiguousarray(raw, dtype=np.uint64)


class M2M:
    """An engine. Make one with :func:`create_m2m` or :func:`open`."""

    def __init__(self, engine: "_m2m.Engine") -> None:
        self._engine = engine

    @property
    def dim(self) -> int:
        return self._engine.dim

    @property
    def read_only(self) -> bool:
        return self._engine.read_only

    @property
    def config(self) -> Dict[str, Any]:
        return json.loads(self._engine.config_json())

    def __len__(self) -> int:
        return len(self._engine)

    def __contains__(self, id_: int) -> bool:
        return self._engine.contains(int(id_))

    def add_splats(self, vectors: Any, ids: Any = None, kappa: Any = None, alpha: Any = None) -> np.ndarray:
        """Adds rows (n x dim); returns their ids (uint64). A batch is validated whole: on error nothing
        of it is kept."""
        rows = _f32_rows(vectors, self.dim, "vectors")
        ids = None if ids is None else _ids(ids)
        return self._engine.add_splats(rows, ids, _opt(kappa, np.float32), _opt(alpha, np.float32))

    def build_index(self, n_fine: Optional[int] = None, n_coarse: Optional[int] = None) -> None:
        self._engine.build_index(n_fine, n_coarse)

    def retrieve(self, query: Any, k: int = 10, lod: int = 2) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k of one query: (ids, scores). lod 0 centroids, 1 codes, 2 re-ranked (default), 3 exact."""
        ids, scores = self.retrieve_batch(query, k, lod)
        return ids[0], scores[0]

    def retrieve_batch(self, queries: Any, k: int = 10, lod: int = 2) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k of each query row: (ids q x k, scores q x k)."""
        ids, scores, _, _ = self._engine.retrieve_batch(_f32_rows(queries, self.dim, "queries"), k, lod)
        return ids, scores

    def energy(self, x: Any) -> float:
        return self._engine.energy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))

    def generate(self, n_or_seeds: Union[int, Any], steps: Optional[int] = None) -> np.ndarray:
        """Langevin samples: ``n`` from splats of the engine, or one per seed row."""
        if isinstance(n_or_seeds, (int, np.integer)):
            return self._engine.generate_n(int(n_or_seeds), steps)
        return self._engine.generate(_f32_rows(n_or_seeds, self.dim, "seeds"), steps)

    def delete(self, ids: Any) -> int:
        return self._engine.delete(_ids(ids))

    def flush(self) -> None:
        self._engine.flush()

    def stats(self) -> Dict[str, Any]:
        """What the engine holds, with the honest part of the lake's report: ``kappa_clipped`` (share of
        learned kappa clipped to its range) and, with an index, ``weights_min``, ``weights_max`` and
        ``weights_ess_share`` (the importance weights an export would give now)."""
        return self._engine.stats()

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
        return self._engine.fidelity(_ids(seeds), _f32_rows(generated, self.dim, "generated"), lab)

    def export_to_dataloader(
        self,
        batch_size: int = 256,
        generate_samples: bool = False,
        importance_sampling: bool = False,
        **options: Any,
    ) -> "SplatDataset":
        """The data lake as a ``torch.utils.data.IterableDataset`` (a plain iterable of numpy batches
        without torch). Options: shuffle (True), seed (0), epochs (1), prefetch_batches (2), drop_last
        (False), rank (0), world_size (1), generate_steps (20), step_size (0.004; None: the engine's langevin_dt), temperature and dynamics
        ("overdamped" or "underdamped"; default the engine's), start_epoch (0), threads (0: all cores; 1
        in DataLoader workers), source ("auto" = "memory": the engine's RAM copy; "tiers": the database's segments
        through the warm tier with prefetch, in block order; needs a data_dir).

        Each batch is a dict: ids (uint64), mu (rows x dim), kappa, alpha, weights (importance weights)
        and generated (bool); torch tensors sharing the Rust buffers when torch is present. It shards by
        (rank, world_size) and by DataLoader worker, is deterministic for a seed, and resumes from
        :meth:`SplatDataset.state_dict`. With ``num_workers > 0`` each worker opens the engine's
        directory read-only (fork and spawn both work), so the engine needs a ``data_dir``: for plain
        epochs a worker opens only the lake (ids, kappa and alpha; vectors from the tiers, no index), with
        importance sampling, generated rows or source="memory" the whole engine.
        """
        return SplatDataset(self, batch_size, generate_samples, importance_sampling, **options)


def create_m2m(config: Optional[M2MConfig] = None, **fields: Any) -> M2M:
    """A new engine from an :class:`M2MConfig` (or its fields as keywords)."""
    if config is None:
        config = M2MConfig(**fields)
    elif fields:
        raise ValueError("give a config or keyword fields, not both")
    return M2M(_m2m.Engine.create(config.to_json()))


def open(path: Any, read_only: bool = False) -> M2M:  # noqa: A001 - the original API's name
    """Opens a stored engine; ``read_only`` takes no lock and changes nothing."""
    return M2M(_m2m.Engine.open(str(path), read_only))


try:  # torch is optional and imported once, here, only if installed
    import torch as _torch
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - exercised where torch is absent
    _torch = None
    _Base = object


_OPTIONS = {
    "shuffle",
    "seed",
    "epochs",
    "prefetch_batches",
    "drop_last",
    "rank",
    "world_size",
    "generate_steps",
    "threads",
    "source",
    "start_epoch",
    "temperature",
    "step_size",
    "dynamics",
}


class SplatDataset(_Base):  # type: ignore[misc, valid-type]
    """Batches of the data lake (see :meth:`M2M.export_to_dataloader`). Use it with
    ``torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=...)``."""

    def __init__(self, engine: M2M, batch_size: int, generate_samples: bool, importance_sampling: bool, **options: Any):
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown export_to_dataloader options: {sorted(unknown)}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._engine: Optional[M2M] = engine
        self._data_dir = engine.config.get("data_dir")
        self._options = dict(options, batch_size=batch_size, generate_samples=generate_samples,
                             importance_sampling=importance_sampling)
        self._skip = 0
        self._yielded = 0

    def state_dict(self) -> Dict[str, int]:
        """Batches consumed so far (those given to :meth:`load_state_dict` plus those this object yielded
        in this process). With DataLoader workers, count the batches the training loop received and pass
        that number instead: {"batches": n}. Worker w of W then skips the batches it had produced in the
        DataLoader's round-robin order (all its epochs form one stream), which is exact while every worker
        still had batches left, that is, except within the last round of the whole run."""
        return {"batches": self._skip + self._yielded}

    def feedback(self, ids: Any, losses: Any) -> int:
        """Per-row losses of a batch (its ``ids``, torch or numpy) back to the engine's SOC controller.
        Call it from the training loop: it runs in the main process, on the engine this dataset was
        made from; DataLoader workers only read the state that :meth:`end_epoch` saved."""
        if self._engine is None:
            raise RuntimeError("feedback goes to the engine in the training process, not in a worker")
        def to_np(t: Any) -> Any:
            if _torch is not None and isinstance(t, _torch.Tensor):
                return t.detach().cpu().numpy()
            return t

        return self._engine.feedback(to_np(ids), to_np(losses))

    def end_epoch(self) -> None:
        """After an epoch: the controller ticks and saves its state, and the next iteration plans the next
        epoch (``start_epoch`` + 1) from it, so a plan depends only on (seed, epoch, saved state)."""
        if self._engine is None:
            raise RuntimeError("end_epoch runs in the training process, not in a worker")
        self._engine.tick()
        self._options["start_epoch"] = int(self._options.get("start_epoch", 0)) + 1

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resumes after ``state["batches"]`` batches: the next iteration starts with the batch after."""
        self._skip = int(state["batches"])
        self._yielded = 0

    def __getstate__(self) -> Dict[str, Any]:
        # The engine handle stays in its process; a worker opens the directory read-only.
        state = dict(self.__dict__)
        state["_engine"] = None
        return state

    def _worker(self) -> Tuple[int, int]:
        if _torch is None:
            return 0, 1
        info = _torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        wid, workers = self._worker()
        opts = dict(self._options)
        source = self._engine._engine if (workers == 1 and self._engine is not None) else None
        if source is None:
            if self._data_dir is None:
                raise RuntimeError(
                    "DataLoader workers open the engine's directory: create the engine with data_dir "
                    "(or use num_workers=0)"
                )
            if opts["importance_sampling"] or opts["generate_samples"] or opts.get("source") == "memory":
                # The SOC controller and the router, or a RAM copy, need the engine.
                source = _m2m.Engine.open(self._data_dir, True)
            else:
                # The lake alone: ids, kappa and alpha; vectors streamed from the tiers.
                source = _m2m.Reader.open(self._data_dir)
                opts.setdefault("source", "tiers")
        if workers > 1:
            # The workers already run in parallel: one loader thread each unless asked otherwise.
            opts.setdefault("threads", 1)
        rank, world = opts.pop("rank", 0), opts.pop("world_size", 1)
        # Worker w of W takes the plan entries of shard rank * W + w of world * W; in the DataLoader's
        # round-robin order it produced batches w, w + W, ... of the batches consumed so far.
        skip = max(0, math.ceil((self._skip - wid) / workers))
        loader = source.loader(rank=rank * workers + wid, world_size=world * workers, skip_batches=skip, **opts)
        try:
            for batch in loader:
                if workers == 1:
                    self._yielded += 1
                if _torch is not None:
                    # torch has no uint64 tensors: ids go as an int64 view of the same buffer.
                    batch["ids"] = batch["ids"].view(np.int64)
                    batch = {k: _torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
                yield batch
        finally:
            loader.close()
