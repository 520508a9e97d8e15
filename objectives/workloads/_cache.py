"""On-disk cache of trained base models and prepared data, so training (and importing
what prepares the data) happens once per machine, not once per process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["cache_dir", "cached_tensors", "cached_state_dict"]


def cache_dir() -> Path:
    root = os.environ.get("CSEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "csearch"
    )
    return Path(root)


def cached_tensors(key: str, build: Callable[[], dict[str, torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
    """Named tensors from the cache, or from `build()` (then stored; no pickle)."""
    path = cache_dir() / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(path)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in build().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write atomically: parallel workers may build the same entry at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, path)
    return tensors


def cached_state_dict(key: str, build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    return cached_tensors(key, lambda: build().state_dict())
