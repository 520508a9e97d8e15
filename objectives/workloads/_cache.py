"""On-disk cache of trained base models, so training happens once per machine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["cache_dir", "cached_state_dict"]


def cache_dir() -> Path:
    root = os.environ.get("CSEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "csearch"
    )
    return Path(root)


def cached_state_dict(key: str, build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    path = cache_dir() / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(path)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in build().state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write atomically: parallel workers may build the same entry at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(state, tmp)
    os.replace(tmp, path)
    return state
