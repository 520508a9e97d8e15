"""One served classifier version: its cache, its max batch and its threads, as the serve
replay (`objectives.serve`) sizes them; request items checked and converted to tensors;
the forward pass of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from objectives.serve import LRUCache, activation_bytes_per_sample, max_batch_for

from ._sources import Loaded

__all__ = ["Served", "BadRequest", "prepare", "to_items", "forward"]


class BadRequest(ValueError):
    """A request item that is not a valid input of the served model (a 4xx answer)."""


@dataclass(frozen=True)
class Served:
    """Everything a batch needs, swapped as one reference so a batch sees one version."""

    loaded: Loaded
    cache: LRUCache
    max_batch: int
    threads: int
    item_shape: tuple[int, ...] | None  # None: variable first dimension (token ids)
    item_ndim: int
    item_dtype: torch.dtype

    @property
    def version(self) -> int:
        return self.loaded.version


def prepare(loaded: Loaded, device: torch.device) -> Served:
    """Size the cache and the batch from the version's serve config, as the replay does:
    S_cache = round(budget x cache_ratio) bytes, max batch = what fits in
    S_mem = budget x memory_ratio, capped by batch_size, at least 1."""
    w, s = loaded.workload, loaded.serve
    first = w.request(0)
    if not isinstance(first, torch.Tensor):
        raise BadRequest(f"workload {w.name!r} has non-tensor requests; only tensor requests "
                         "can be served over JSON")
    budget = float(s.get("memory_budget_mb") or w.memory_budget_mb or 0) * 1e6
    act = activation_bytes_per_sample(loaded.model, w.example_inputs(), device)
    cap = int(s.get("batch_size", 1))
    max_batch = max(1, max_batch_for(round(budget * float(s.get("memory_ratio", 0))), act, cap))
    fixed = isinstance(w.request_inputs, torch.Tensor)
    return Served(
        loaded=loaded,
        cache=LRUCache(round(budget * float(s.get("cache_ratio", 0)))),
        max_batch=max_batch,
        threads=int(s.get("threads", 1)),
        item_shape=tuple(first.shape) if fixed else None,
        item_ndim=first.dim(),
        item_dtype=first.dtype,
    )


def to_items(served: Served, inputs: list[Any]) -> list[torch.Tensor]:
    """Nested lists -> request tensors of the model's dtype and shape, or BadRequest."""
    items = []
    for i, raw in enumerate(inputs):
        try:
            arr = np.asarray(raw)
        except ValueError as e:  # ragged nesting
            raise BadRequest(f"inputs[{i}] is not a rectangular array: {e}") from None
        integral = not served.item_dtype.is_floating_point
        if arr.dtype.kind not in ("biu" if integral else "biuf"):
            raise BadRequest(f"inputs[{i}] must hold {'integers' if integral else 'numbers'}"
                             f", got {arr.dtype} data")
        want = served.item_shape
        if (want is not None and arr.shape != want) or arr.ndim != served.item_ndim or (
                want is None and 0 in arr.shape):
            shape = list(want) if want is not None else f"{served.item_ndim} dimensions"
            raise BadRequest(f"inputs[{i}] has shape {list(arr.shape)}; expected {shape}")
        np_dtype = _NUMPY.get(served.item_dtype)
        if np_dtype is None:  # no numpy twin (bfloat16): torch converts
            item = torch.as_tensor(arr).to(served.item_dtype)
            finite = not item.is_floating_point() or bool(torch.isfinite(item).all())
        else:  # numpy converts: half the cost of a torch conversion here
            arr = arr.astype(np_dtype, copy=False)
            finite = arr.dtype.kind != "f" or bool(np.isfinite(arr).all())
            item = torch.from_numpy(arr)
        if not finite:  # after the conversion: 1e300 is no float32
            raise BadRequest(f"inputs[{i}] holds NaN or infinity (or a number too large for "
                             f"{str(served.item_dtype).removeprefix('torch.')}); inputs must "
                             "be finite numbers")
        items.append(item)
    return items


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
          torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_}


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.inference_mode()
def forward(served: Served, items: list[torch.Tensor], device: torch.device
            ) -> list[torch.Tensor]:
    """One forward pass over `items` (at most `served.max_batch`), one output row each."""
    if torch.get_num_threads() != served.threads:
        torch.set_num_threads(served.threads)
    w = served.loaded.workload
    x = w.batch(items)
    x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
    y = _first_tensor(served.loaded.model(x)).detach().cpu()
    return [y[row].clone() for row in range(len(items))]
