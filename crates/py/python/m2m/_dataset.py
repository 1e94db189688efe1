"""``SplatDataset``: the data lake as a PyTorch ``IterableDataset`` (a plain iterable without torch).

The order is one stream that depends only on (seed, epoch) and the options: in-process, the loader
yields it; with DataLoader workers, worker w of W assembles batches w, w + W, ... of it (the Rust
loader's ``batch_stride`` / ``batch_offset``), and the DataLoader's round-robin over its workers puts
them back in the same order."""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

import numpy as np

from . import _m2m
from .errors import InvalidInputError, StateError

if TYPE_CHECKING:  # pragma: no cover
    from ._engine import M2M

# torch is optional and imported once, here, only if installed (typed as Any: the package does not
# depend on torch's annotations).
_torch: Any
_Base: Any
try:
    _torch = importlib.import_module("torch")
    _Base = importlib.import_module("torch.utils.data").IterableDataset
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
    "temperature",
    "step_size",
    "dynamics",
    "filter",
}


def _filter_text(f: Any) -> str:
    """A filter (a dict in the JSON form of ``m2m::Filter``, or its text) as its JSON text."""
    if isinstance(f, str):
        return f
    if not isinstance(f, dict):
        raise InvalidInputError(f"a filter is a dict (its JSON form) or its text, not {type(f).__name__}")
    try:
        return json.dumps(f, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidInputError(f"filter: {e}") from None


class SplatDataset(_Base):  # type: ignore[misc]  # torch's IterableDataset, or object
    """Batches of the data lake (see :meth:`m2m.M2M.export_to_dataloader`). Use it with
    ``torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=...)``; call :meth:`set_epoch`
    before each epoch (as with a ``DistributedSampler``) to get that epoch's order."""

    def __init__(
        self,
        engine: "M2M",
        batch_size: int,
        generate_samples: bool,
        importance_sampling: bool,
        output: str = "dict",
        **options: Any,
    ) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise InvalidInputError(f"unknown export_to_dataloader options: {sorted(unknown)}")
        if batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1")
        if output not in ("dict", "mu"):
            raise InvalidInputError(f'output {output!r}: "dict" or "mu"')
        if options.get("filter") is not None:
            options["filter"] = _filter_text(options["filter"])
        else:
            options.pop("filter", None)
        self._engine: Optional["M2M"] = engine
        self._data_dir: Optional[str] = engine.config.get("data_dir")
        self._output = output
        self._options: Dict[str, Any] = dict(
            options,
            batch_size=batch_size,
            generate_samples=generate_samples,
            importance_sampling=importance_sampling,
        )
        self._rows = self._live_rows(engine)
        self._epoch = 0
        self._skip = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        """The next iteration streams from epoch ``epoch`` on (its own order, for the same seed)."""
        if epoch < 0:
            raise InvalidInputError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def feedback(self, ids: Any, losses: Any) -> int:
        """Training feedback: per-row losses of a batch's rows (``ids`` as the batch gave them, an int64
        tensor or a uint64 array) drive the SOC controller, so the next epochs' importance sampling
        follows them; returns the topplings caused. Call it in the training loop's process, where the engine
        is (DataLoader workers only read): the next epoch's workers see it once :meth:`end_epoch` has
        saved it."""
        return int(self._in_loop("feedback").feedback(ids, losses))

    def end_epoch(self) -> None:
        """Ends an epoch in the training loop's process: the controller's activity decays (``tick``,
        which saves its state to the data directory, where the next epoch's workers read it) and the
        next iteration streams the next epoch from its start."""
        self._in_loop("end_epoch").tick()
        self._epoch += 1
        self._skip = 0
        self._yielded = 0

    def _in_loop(self, what: str) -> Any:
        if self._engine is None or self._engine.closed:
            raise StateError(
                f"{what} goes to the engine in the training loop's process; this copy of the dataset "
                "(a DataLoader worker's, or after the engine was closed) has none"
            )
        return self._engine

    def __len__(self) -> int:
        """Batches one iteration yields (over all its epochs, after a resume), whatever the number of
        DataLoader workers."""
        rows = self._live_rows(self._engine) if self._engine is not None and not self._engine.closed else self._rows
        opts = {k: v for k, v in self._options.items() if k in ("batch_size", "drop_last", "epochs", "rank", "world_size")}
        return int(_m2m.batch_count(rows, skip_batches=self._skip, **opts))

    def _live_rows(self, engine: "M2M") -> int:
        """The rows an epoch streams: every live splat, or those the filter matches."""
        f = self._options.get("filter")
        return len(engine) if f is None else int(engine._engine.count_matching(f))

    def state_dict(self) -> Dict[str, int]:
        """The epoch and the batches consumed so far (those given to :meth:`load_state_dict` plus those
        this object yielded in this process). With DataLoader workers, count the batches the training
        loop received and pass that number instead: ``{"epoch": e, "batches": n}``. Resuming is exact
        whatever the number of workers."""
        return {"epoch": self._epoch, "batches": self._skip + self._yielded}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resumes after ``state["batches"]`` batches of epoch ``state.get("epoch", 0)`` on."""
        self._epoch = int(state.get("epoch", self._epoch))
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
        return (0, 1) if info is None else (int(info.id), int(info.num_workers))

    def _source(self, workers: int, opts: Dict[str, Any]) -> Any:
        """What streams: the engine in-process; in a worker, the directory opened read-only: only the
        lake (no index, no vector read at open) when ``source="tiers"`` asks for plain epochs from the
        tiers, the whole engine otherwise (so that the order is the in-process one)."""
        if workers == 1 and self._engine is not None:
            return self._engine._engine
        if self._data_dir is None:
            raise StateError(
                "DataLoader workers open the engine's directory: create the engine with data_dir "
                "(or use num_workers=0)"
            )
        plain = not (opts["importance_sampling"] or opts["generate_samples"])
        if plain and str(opts.get("source", "auto")).lower() == "tiers":
            return _m2m.Reader.open(self._data_dir)
        return _m2m.Engine.open(self._data_dir, True)

    def __iter__(self) -> Iterator[Any]:
        wid, workers = self._worker()
        opts = dict(self._options)
        source = self._source(workers, opts)
        if workers > 1:
            # The workers already run in parallel: one loader thread each unless asked otherwise.
            opts.setdefault("threads", 1)
        loader = source.loader(
            start_epoch=self._epoch,
            skip_batches=self._skip,
            batch_stride=workers,
            batch_offset=wid,
            **opts,
        )
        try:
            for batch in loader:
                if workers == 1:
                    self._yielded += 1
                if self._output == "mu":
                    mu = batch["mu"]
                    yield mu if _torch is None else _torch.from_numpy(mu)
                    continue
                if _torch is not None:
                    # torch has no uint64 tensors: ids go as an int64 view of the same buffer.
                    batch["ids"] = batch["ids"].view(np.int64)
                    batch = {k: _torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
                yield batch
        finally:
            loader.close()
