"""Warm start: a few strong, well-known configurations are queued before the sampler
takes over, so a small budget does not spend itself rediscovering them.

The ladder follows Deep Compression (Han et al., 2016): high global magnitude sparsity
with low-bit weights and masked, quantization-aware fine-tuning, plus a structured +
dynamic-int8 point for speed. Only values the study's space allows are queued; the
remaining parameters are sampled as usual; a recipe outside the space's ranges is
skipped. Layer groups follow the global recipe. Queued trials carry `seeded=True`.
"""

from __future__ import annotations

from typing import Any

from spaces import INHERIT, Param, Space, split_name

from . import attrs

__all__ = ["SEED_LADDER", "fit_value", "seed_params", "follow_global", "seed_entries"]

# Each entry: dotted params; "max"/"mid" mean the space's upper bound / geometric middle.
SEED_LADDER: tuple[dict[str, Any], ...] = (
    # The safest compression first: 8-bit weights, nothing pruned, no fine-tuning. It keeps
    # a pretrained transformer intact, where aggressive recipes need careful training.
    {"prune.method": "none", "quant.method": "lowbit", "quant.bits": 8, "quant.group_size": 0,
     "train.epochs": 0, "train.steps": 0},
    {"prune.method": "global", "prune.amount": 0.9, "quant.method": "lowbit", "quant.bits": 3,
     "quant.group_size": 0, "train.epochs": "max", "train.steps": "max",
     "train.lr": 1e-3},
    {"prune.method": "global", "prune.amount": 0.8, "quant.method": "lowbit", "quant.bits": 4,
     "quant.group_size": 0, "train.epochs": "max", "train.steps": "max",
     "train.lr": 1e-3},
    {"prune.method": "global", "prune.amount": 0.7, "quant.method": "int8_dynamic",
     "train.epochs": "max", "train.steps": "max",
     "train.lr": 1e-3},
    {"prune.method": "structured", "prune.structured_ratio": 0.3,
     "quant.method": "int8_dynamic", "train.epochs": "max", "train.steps": "max",
     "train.lr": 1e-3},
)


def fit_value(p: Param, value: Any) -> Any | None:
    """The value if the parameter's distribution allows it, else None: a recipe the
    space cannot express (90% sparsity where a workload allows 50%) is not queued in a
    distorted form."""
    if p.type == "categorical":
        return value if value in p.choices else None
    if value == "max":
        value = p.high
    elif value == "mid":
        value = (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2
    elif not p.low <= value <= p.high:
        return None
    return int(round(value)) if p.type == "int" else float(value)


def follow_global(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """Make every layer group follow the global recipe: `quant.method[g]` = inherit and
    `prune.amount[g]` = the global amount."""
    out = dict(params)
    for p in space.params:
        base, group = split_name(p.name)
        if group is None:
            continue
        if base == "quant.method" and INHERIT in p.choices:
            out[p.name] = INHERIT
        elif base == "prune.amount" and "prune.amount" in params:
            fitted = fit_value(p, params["prune.amount"])
            if fitted is not None:
                out[p.name] = fitted
    return out


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
            fitted = fit_value(p, value)
            if fitted is None:
                ok = False
                break
            params[name] = fitted
        params = follow_global(space, params)
        # Only useful if it pins a pruning or quantization choice of this space.
        if ok and any(k.startswith(("prune.", "quant.")) for k in params) and params not in out:
            out.append(params)
    return out


def seed_entries(space: Space, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` seed configurations as entries of the study's queue (`attrs.QUEUED`),
    which the runner enqueues one at a time, just before each runs."""
    return [{"params": p, "user_attrs": {attrs.SEEDED: True}}
            for p in seed_params(space)[: max(0, limit)]]
