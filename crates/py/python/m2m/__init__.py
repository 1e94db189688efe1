"""M2M from Python: the Rust engine (ingest, retrieval with levels of detail, energy, Langevin
generation) and its training data lake as a PyTorch ``IterableDataset``.

Arrays cross without copies where the layout allows: float32 C-contiguous inputs are read in place
(anything else, torch tensors included, is converted once), and every array returned is a numpy view of
a Rust buffer. Long calls release the GIL. Errors are the classes of :mod:`m2m.errors`, all under
:class:`M2MError` and each also the built-in a caller expects (``InvalidInputError`` is a
``ValueError``, ``CorruptError`` and ``LockedError`` are ``OSError``\\ s, ``NoIndexError`` a
``RuntimeError``).

``m2m.open`` opens a stored engine (like ``gzip.open``); ``from m2m import *`` leaves it out so as not
to hide the builtin, and ``m2m.open_m2m`` is the same function under a name that hides nothing.
"""

from __future__ import annotations

from . import _m2m
from ._config import M2MConfig
from ._dataset import SplatDataset
from ._engine import NO_ID, M2M, AttributedHits, FilterSpec, Hits, Lod, M2m, Stats, create_m2m, open_m2m
from .errors import (
    BY_KIND as _BY_KIND,
)
from .errors import (
    ClosedError,
    CorruptError,
    DeviceError,
    EmptyError,
    InvalidInputError,
    LockedError,
    M2MError,
    NoIndexError,
    PoisonedError,
    ReadOnlyError,
    StateError,
    StorageError,
)

__all__ = [
    "M2MConfig",
    "M2M",
    "M2m",
    "Hits",
    "AttributedHits",
    "FilterSpec",
    "NO_ID",
    "Lod",
    "Stats",
    "SplatDataset",
    "create_m2m",
    "open_m2m",
    "M2MError",
    "InvalidInputError",
    "StorageError",
    "CorruptError",
    "LockedError",
    "PoisonedError",
    "StateError",
    "NoIndexError",
    "ReadOnlyError",
    "EmptyError",
    "ClosedError",
    "DeviceError",
]
__version__: str = _m2m.__version__

_m2m._register_errors(dict(_BY_KIND))

#: ``m2m.open(path)``: :func:`open_m2m` (not in ``__all__``: it would hide the builtin ``open``).
open = open_m2m  # noqa: A001
