"""``M2MConfig``: the engine's settings (the fields of the Rust ``M2mConfig``), and the translation of
the original project's settings (``latent_dim``, ``enable_vulkan``, ``device='cuda'``, ...), each with a
``DeprecationWarning`` that says what it became."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Optional, Union

from . import _m2m
from .errors import InvalidInputError

#: The Rust defaults (one source of truth: ``M2mConfig::default()``).
_DEFAULTS: Dict[str, Any] = json.loads(_m2m.default_config_json())

#: The original project's fields that have a counterpart here.
_RENAMED = {"latent_dim": "dim", "langevin_T": "temperature"}

#: The original project's fields that have no effect here (accepted with a warning, then ignored).
_IGNORED = frozenset(
    {
        "dtype",
        "n_splats_init",
        "max_splats",
        "splat_temperature",
        "weight_decay",
        "weight_decay_start",
        "energy_splat_weight",
        "energy_geom_weight",
        "energy_comp_weight",
        "soc_threshold",
        "soc_buffer_capacity",
        "soc_update_interval",
        "phi_convergence_threshold",
        "enable_3_tier_memory",
        "vocab_size",
        "hidden_dim",
        "moe_experts",
        "moe_active",
        "vulkan_device_index",
        "rest_port",
        "grpc_port",
    }
)

#: Devices by lower-case name; the original's "cuda" runs as "auto" (there is no CUDA backend).
_DEVICES = {"cpu": "cpu", "vulkan": "vulkan", "gpu": "vulkan", "auto": "auto"}


class M2MConfig:
    """Settings of an engine. Every field left out takes the Rust default: dim 640, metric "cosine",
    init_kappa 10, init_alpha 1, kappa 1..50 x (p - 1) (p: the fit's sphere dimension),
    learn_kappa True, Langevin 200 steps of dt 0.001 (scaled by init_kappa / mean learned kappa),
    gamma 0.1, temperature 1, device "cpu", warm budget 1 GiB, hot budget 256 MiB, data_dir None (in
    memory), durable True, seed 42. Metric and device names are case-insensitive ("cosine", "Cosine",
    "IP"; "cpu", "CPU", "vulkan", "auto").

    The original project's settings are accepted for its scripts, each with a ``DeprecationWarning``:
    ``latent_dim`` is ``dim``, ``langevin_T`` is ``temperature``, ``enable_vulkan=True`` makes the device
    "auto" (Vulkan when a device works, else the CPU), ``device="cuda"`` is "auto" too, ``knn_k`` is the
    default ``k`` of ``retrieve``; the rest (``max_splats``, ``rest_port``, ...) have no effect. An engine
    made from such settings also behaves as the original did where ours differs (see
    :attr:`legacy`)."""

    def __init__(
        self,
        *,
        dim: Optional[int] = None,
        metric: Optional[str] = None,
        init_kappa: Optional[float] = None,
        init_alpha: Optional[float] = None,
        min_kappa: Optional[float] = None,
        max_kappa: Optional[float] = None,
        learn_kappa: Optional[bool] = None,
        langevin_steps: Optional[int] = None,
        langevin_dt: Optional[float] = None,
        langevin_gamma: Optional[float] = None,
        temperature: Optional[float] = None,
        langevin_dynamics: Optional[str] = None,
        device: Optional[str] = None,
        warm_budget_bytes: Optional[int] = None,
        hot_budget_bytes: Optional[int] = None,
        data_dir: Union[str, "os.PathLike[str]", None] = None,
        durable: Optional[bool] = None,
        seed: Optional[int] = None,
        **original: Any,
    ) -> None:
        given: Dict[str, Any] = {
            "dim": dim,
            "metric": metric,
            "init_kappa": init_kappa,
            "init_alpha": init_alpha,
            "min_kappa": min_kappa,
            "max_kappa": max_kappa,
            "learn_kappa": learn_kappa,
            "langevin_steps": langevin_steps,
            "langevin_dt": langevin_dt,
            "langevin_gamma": langevin_gamma,
            "temperature": temperature,
            "langevin_dynamics": None if langevin_dynamics is None else langevin_dynamics.lower().capitalize(),
            "device": device,
            "warm_budget_bytes": warm_budget_bytes,
            "hot_budget_bytes": hot_budget_bytes,
            "data_dir": None if data_dir is None else os.fspath(data_dir),
            "durable": durable,
            "seed": seed,
        }
        fields = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(original) - set(_RENAMED) - _IGNORED - {"enable_vulkan", "knn_k", "device"})
        if unknown:
            raise InvalidInputError(f"unknown M2MConfig fields: {unknown}")
        #: The device name as the caller gave it (the original's scripts pass it to ``tensor.to``).
        self._device_given: Optional[str] = device
        notes = []
        for old, new in _RENAMED.items():
            if old in original:
                notes.append(f"{old} is {new}")
                fields.setdefault(new, original[old])
        ignored = sorted(_IGNORED & set(original))
        if ignored:
            notes.append(f"{', '.join(ignored)} have no effect")
        if device is not None:
            name = device.lower()
            if name == "cuda":
                notes.append('device "cuda" runs as "auto" (no CUDA backend: Vulkan when one works, else the CPU)')
                name = "auto"
            elif name not in _DEVICES:
                raise InvalidInputError(f"device {device!r}: cpu, vulkan (or gpu) or auto, in any case")
            fields["device"] = _DEVICES[name]
        if original.get("enable_vulkan"):
            if fields.get("device", "cpu") == "cpu":
                notes.append('enable_vulkan=True makes the device "auto" (Vulkan when one works, else the CPU)')
                fields["device"] = "auto"
        elif "enable_vulkan" in original:
            notes.append("enable_vulkan=False is the default device cpu")
        self._knn_k: Optional[int] = original.get("knn_k")
        if self._knn_k is not None:
            notes.append(f"knn_k={self._knn_k} is the default k of retrieve")
        self._fields = fields
        self._legacy = bool(original)
        if notes:
            warnings.warn(
                "M2MConfig: the original project's settings: " + "; ".join(notes),
                DeprecationWarning,
                stacklevel=2,
            )

    @property
    def legacy(self) -> bool:
        """Whether the original project's settings were given. Its engine then behaves as the original
        did where ours differs, each time with a ``DeprecationWarning``: retrieval and the data lake
        build the index first when it is missing, and the data lake yields the batches' vectors alone."""
        return self._legacy

    @property
    def default_k(self) -> int:
        """The ``k`` of ``retrieve`` when none is given: the original's ``knn_k`` if set, else 10."""
        return 10 if self._knn_k is None else int(self._knn_k)

    @property
    def latent_dim(self) -> int:
        """The original project's name of :attr:`dim`."""
        return int(self.dim)

    @property
    def device(self) -> str:
        """The device as given ("cpu" when none was), so that the original's ``tensor.to(config.device)``
        keeps working; the engine runs on :attr:`engine_device`."""
        return self._device_given if self._device_given is not None else "cpu"

    @property
    def engine_device(self) -> str:
        """The device the engine runs on: "cpu", "vulkan" or "auto"."""
        return str(self._fields.get("device", _DEFAULTS["device"])).lower()

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        if name in _DEFAULTS:
            value = _DEFAULTS[name]
            return value.lower() if name in ("metric", "device") and isinstance(value, str) else value
        raise AttributeError(name)

    def to_json(self) -> str:
        """The settings given (not the defaults) as the JSON the Rust engine reads."""
        return json.dumps(self._fields)

    def __repr__(self) -> str:
        return f"M2MConfig({', '.join(f'{k}={v!r}' for k, v in sorted(self._fields.items()))})"
