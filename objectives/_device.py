"""Moving a model input (a tensor, or a dict/list/tuple of them) to a device."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["to_device"]


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x
