"""A file-backed stand-in for `search.registry.Registry` (same methods), so the server's
tests can promote and roll back from the test process while the server process
polls. Versions are digits models saved as safetensors in the registry directory."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from search.registry import ModelVersion

SERVE = {"batch_size": 8, "threads": 1, "cache_ratio": 0.2, "memory_ratio": 0.3,
         "memory_budget_mb": 1.0}


class FakeRegistry:
    def __init__(self, url: str) -> None:
        self.root = Path(url)

    def _read(self, name: str) -> dict[str, Any]:
        return json.loads((self.root / f"{name}.json").read_text())

    def get(self, name: str, version: int) -> ModelVersion:
        serve = self._read(name)["versions"][str(version)]  # KeyError: no such version
        return ModelVersion(name, version, "s", version, "-", "digits-cnn", {}, serve, {},
                            datetime.now(UTC))

    def production(self, name: str) -> int | None:
        return self._read(name).get("production")

    def load_model(self, name: str, version: int, device: str = "cpu"
                   ) -> tuple[nn.Module, Any]:
        from objectives.workloads import load_workload
        from objectives.workloads.digits import DigitsCNN

        self.get(name, version)
        model = DigitsCNN()
        model.load_state_dict(load_file(self.root / f"{name}-v{version}.safetensors"))
        return model.to(device).eval(), load_workload("digits-cnn")


def add_version(root: Path, name: str, version: int, model: nn.Module,
                serve: dict | None = None) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              root / f"{name}-v{version}.safetensors")
    path = root / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"versions": {}}
    data["versions"][str(version)] = serve or SERVE
    _write(path, data)


def promote(root: Path, name: str, version: int) -> None:
    path = root / f"{name}.json"
    data = json.loads(path.read_text())
    data["production"] = version
    _write(path, data)


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the polling server never reads half a file


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Another version: the same model with shifted output biases (other outputs)."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.fc2.bias.add_(torch.randn(m.fc2.bias.shape, generator=g) * 3)
    return m
