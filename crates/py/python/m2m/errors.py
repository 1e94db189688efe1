"""The exceptions of M2M: one class per kind of the Rust error (``m2m::ErrorKind``), all under
:class:`M2MError`, each also deriving from the built-in exception a Python user expects, so that
``except ValueError`` and ``except OSError`` keep working.

- :class:`InvalidInputError` (``ValueError``): bad vectors, ids, settings, a query, a parameter.
- :class:`StorageError` (``OSError``): the database directory; :class:`CorruptError` (a file that fails
  its checks), :class:`LockedError` (another writer holds the directory), :class:`PoisonedError` (an
  earlier write failed: reopen).
- :class:`StateError` (``RuntimeError``): a call in the wrong state; :class:`NoIndexError` (call
  ``build_index`` first), :class:`ReadOnlyError`, :class:`EmptyError`, :class:`ClosedError`.
- :class:`DeviceError` (``RuntimeError``): no usable Vulkan device, or a Vulkan call failed.
"""

from __future__ import annotations

from typing import Dict, Type

__all__ = [
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


class M2MError(Exception):
    """Base of every error M2M raises."""


class InvalidInputError(M2MError, ValueError):
    """Bad input: vectors, ids, a setting, a query or a parameter out of range."""


class StorageError(M2MError, OSError):
    """The database directory: an operating-system error on one of its files."""


class CorruptError(StorageError):
    """A file that fails its checks (magic, checksum, length, format version)."""


class LockedError(StorageError):
    """Another writer holds the database directory (open it with ``read_only=True`` to read beside it)."""


class PoisonedError(StorageError):
    """An earlier write failed; the engine refuses changes until the directory is reopened."""


class StateError(M2MError, RuntimeError):
    """A call in the wrong state."""


class NoIndexError(StateError):
    """The call needs an index: call ``build_index`` first."""


class ReadOnlyError(StateError):
    """A change to an engine opened read-only."""


class EmptyError(StateError):
    """The engine holds no splat."""


class ClosedError(StateError):
    """The engine was closed."""


class DeviceError(M2MError, RuntimeError):
    """The GPU backend: no usable Vulkan device, or a Vulkan call failed."""


#: The class of each kind name of the Rust side (``m2m::ErrorKind::name``, plus ``closed``).
BY_KIND: Dict[str, Type[M2MError]] = {
    "invalid_input": InvalidInputError,
    "corrupt": CorruptError,
    "locked": LockedError,
    "io": StorageError,
    "poisoned": PoisonedError,
    "read_only": ReadOnlyError,
    "no_index": NoIndexError,
    "empty": EmptyError,
    "closed": ClosedError,
    "device": DeviceError,
}
