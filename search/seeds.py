"""Warm start: a few strong, well-known configurations are queued before the sampler
takes over, so a small budget does not spend itself rediscovering them.

The ladder follows Deep Compression (Han et al., 2016): high global magnitude sparsity
with low-bit weights and masked, quantization-aware fine-tuning, plus a structured +
dynamic-int8 point for speed. Only values the study's space allows are queued; the
remaining parameters are sampled as usual. Queued trials carry `seeded=True`.
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import Param, Space

__all__ = ["SEED_LADDER", "seed_params", "enqueue_seeds"]

# Each entry: dotted params; "max"/"mid" mean the space's upper bound / geometric middle.
SEED_LADDER: tuple[dict[str, Any], ...] = (
    # The safest compression first: 8-bit weights, nothing pruned, no fine-tuning. It keeps
    # a pretrained transformer intact, where aggressive recipes need careful training.
    {"prune.method": "none", "quant.method": "lowbit", "quant.bits": 8, "quant.group_size": 0,
     "train.epochs": 0},
    {"prune.method": "global", "prune.amount": 0.9, "quant.method": "lowbit", "quant.bits": 3,
     "quant.group_size": 0, "train.epochs": "max", "train.lr": 1e-3},
    {"prune.method": "global", "prune.amount": 0.8, "quant.method": "lowbit", "quant.bits": 4,
     "quant.group_size": 0, "train.epochs": "max", "train.lr": 1e-3},
    {"prune.method": "global", "prune.amount": 0.7, "quant.method": "int8_dynamic",
     "train.epochs": "max", "train.lr": 1e-3},
    {"prune.method": "structured", "prune.structured_ratio": 0.3,
     "quant.method": "int8_dynamic", "train.epochs": "max", "train.lr": 1e-3},
)


def _fit(p: Param, value: Any) -> Any | None:
    """The value if the parameter's distribution allows it (bounds clip numbers)."""
    if p.type == "categorical":
        return value if value in p.choices else None
    if value == "max":
        value = p.high
    elif value == "mid":
        value = (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2
    value = min(max(value, p.low), p.high)
    return int(round(value)) if p.type == "int" else float(value)


def seed_params(space: Space) -> list[dict[str, Any]]:
    by_name = {p.name: p for p in space.params}
    out: list[dict[str, Any]] = []
    for entry in SEED_LADDER:
        params: dict[str, Any] = {}
        ok = True
        for name, value in entry.items():
            p = by_name.get(name)
            if p is None:
                continue
            fitted = _fit(p, value)
            if fitted is None:
                ok = False
                break
            params[name] = fitted
        # Per-group quantizers follow the global recipe in a seed.
        for p in space.params:
            if p.name.startswith("quant.method[") and "inherit" in p.choices:
                params[p.name] = "inherit"
        # Only useful if it pins a pruning or quantization choice of this space.
        if ok and any(k.startswith(("prune.", "quant.")) for k in params) and params not in out:
            out.append(params)
    return out


def enqueue_seeds(study: optuna.Study, space: Space, limit: int) -> int:
    """Queue up to `limit` seed configurations; return how many."""
    params = seed_params(space)[: max(0, limit)]
    for p in params:
        study.enqueue_trial(p, user_attrs={"seeded": True})
    return len(params)
