"""Where a server's models come from: a model version in the registry (fixed, or following
the `production` alias), or a workload's own base model (the overhead measurement).

A source crosses a process boundary as JSON (`start_server` -> `python -m search.serving`),
so it is a small dataclass; the registry connection is opened lazily, where it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from objectives import Workload
from spaces import Config

from ..errors import CsearchError

__all__ = ["ServeError", "Loaded", "RegistrySource", "WorkloadSource"]

REGISTRY = "search.registry:Registry"


class ServeError(CsearchError):
    """The model to serve cannot be found or loaded (no such version, no production alias)."""


@dataclass(frozen=True)
class Loaded:
    """One model ready to serve, with the serve config it was searched with."""

    version: int
    model: nn.Module
    workload: Workload
    serve: dict[str, Any]
    config: Config | None = None  # the trial's whole config (KV format...), when known


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class RegistrySource:
    """Model `name` from the registry at `url`: `version`, or the `production` alias."""

    url: str | None
    name: str
    version: int | None = None
    registry: str = REGISTRY  # "module:Class"; Class(url) has get/production/load_model
    _reg: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reg": None}  # a connection does not cross processes

    def _registry(self) -> Any:
        if self._reg is None:
            try:
                cls = _import(self.registry)
            except (ImportError, AttributeError) as e:
                raise ServeError(f"no model registry ({self.registry}): {e}") from None
            self._reg = cls(self.url)
        return self._reg

    @property
    def follows_alias(self) -> bool:
        return self.version is None

    def wanted(self) -> int:
        """The version that should be serving now."""
        if self.version is not None:
            return self.version
        v = self._registry().production(self.name)
        if v is None:
            raise ServeError(f"model {self.name!r} has no production version; "
                             f"promote one (csearch promote {self.name} V) or pass --version")
        return int(v)

    def check(self, version: int) -> dict[str, Any]:
        """The version's serve config; ServeError when the registry does not have it."""
        try:
            return dict(self._registry().get(self.name, version).serve)
        except CsearchError:
            raise
        except LookupError as e:
            raise ServeError(f"model {self.name!r} has no version {version}") from e

    def load(self, version: int, device: str) -> Loaded:
        from ..export import rebuild_config

        serve = self.check(version)
        reg = self._registry()
        model, workload = reg.load_model(self.name, version, device=device)
        # A stand-in registry without metadata (tests) serves with the config's defaults.
        config = (rebuild_config(reg.meta(self.name, version), workload)
                  if hasattr(reg, "meta") else None)
        return Loaded(int(version), model, workload, serve, config)


@dataclass
class WorkloadSource:
    """A workload's base model as version 0, with a given serve config (no registry)."""

    workload: str
    serve: dict[str, Any]
    follows_alias = False

    def wanted(self) -> int:
        return 0

    def load(self, version: int, device: str) -> Loaded:
        from objectives.workloads import load_workload

        w = load_workload(self.workload)
        return Loaded(version, w.model.to(device).eval(), w, dict(self.serve))
