"""The per-study sensitivity pass and what the search does with it.

Run once, when a study whose space has per-group quantizers is created; stored in the
study's user attr `sensitivity`, so every worker and the report read the same result:
  * groups that break the accuracy guard even at dynamic int8 are pinned to fp32
    (`quant.method[g]` can only be "none");
  * seed trials choose each group's quantizer from its probes (`sensitivity_seeds`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna

from spaces import Space

__all__ = ["SENSITIVITY_ATTR", "probes_for", "measure", "pinned_groups", "narrow",
           "sensitivity_seeds", "store"]

SENSITIVITY_ATTR = "sensitivity"
DEFAULT_GUARD = 0.01


def _per_group_methods(space: Space) -> dict[str, tuple[Any, ...]]:
    return {p.name[len("quant.method["):-1]: p.choices for p in space.params
            if p.name.startswith("quant.method[") and p.type == "categorical"}


def probes_for(space: Space) -> dict[str, dict[str, object]]:
    """Probes the space can express: dynamic int8, 4-bit weights, 50% sparsity."""
    choices = set().union(*_per_group_methods(space).values()) if _per_group_methods(space) else set()
    probes: dict[str, dict[str, object]] = {}
    if "int8_dynamic" in choices:
        probes["int8_dynamic"] = {"quant.method": "int8_dynamic"}
    if "lowbit" in choices:
        probes["lowbit4"] = {"quant.method": "lowbit", "quant.bits": 4}
    if any(p.name.startswith("prune.amount[") for p in space.params):
        probes["prune50"] = {"prune.amount": 0.5}
    return probes


def measure(ctx: Any) -> dict[str, Any] | None:
    """The sensitivity table for a context whose space has per-group quantizers."""
    from objectives.sensitivity import group_sensitivity

    probes = probes_for(ctx.space)
    if not probes:
        return None
    guard = ctx.spec.accuracy_guard()
    table = group_sensitivity(ctx.workload, probes, ctx.device)
    return {"guard": guard if guard is not None else DEFAULT_GUARD, "probes": probes,
            "drops": table}


def pinned_groups(sens: dict[str, Any] | None) -> list[str]:
    """Groups whose mildest quantizer probe alone breaks the guard."""
    if not sens:
        return []
    guard = sens["guard"]
    out = []
    for group, drops in sens["drops"].items():
        quant = [v for k, v in drops.items() if not k.startswith("prune")]
        if quant and min(quant) > guard:
            out.append(group)
    return out


def narrow(space: Space, sens: dict[str, Any] | None) -> Space:
    """Pin the groups that break the guard to fp32."""
    pins = set(pinned_groups(sens))
    if not pins:
        return space
    params = []
    for p in space.params:
        if p.name.startswith("quant.method[") and p.name[len("quant.method["):-1] in pins:
            p = replace(p, choices=("none",))
        params.append(p)
    return replace(space, params=tuple(params))


def _group_choice(group: str, drops: dict[str, float], methods: tuple[Any, ...], share: float,
                  low_bits: int) -> dict[str, Any]:
    """The most compressive quantizer for one group that its probes say stays within
    `share` of the guard: low-bit weights at `low_bits`, else dynamic int8, else fp32."""
    ok = {k for k, v in drops.items() if not k.startswith("prune") and v <= share}
    if "lowbit4" in ok and "lowbit" in methods:
        return {f"quant.method[{group}]": "lowbit", f"quant.bits[{group}]": low_bits}
    if "int8_dynamic" in ok and "int8_dynamic" in methods:
        return {f"quant.method[{group}]": "int8_dynamic"}
    if "none" in methods:
        return {f"quant.method[{group}]": "none"}
    return {}


def sensitivity_seeds(space: Space, sens: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Starting trials chosen per group from the probes (HAQ-style mixed precision):
      1. no pruning, no training: each group's cheapest quantizer within its share of
         the guard (4-bit weights, else dynamic int8, else fp32);
      2. Deep Compression's 90% sparsity with recovery training, where the space allows
         it: robust groups at 3 bits, fragile ones at 8."""
    from .seeds import SEED_LADDER, fit_value, follow_global

    if not sens:
        return []
    methods = _per_group_methods(space)
    share = sens["guard"] / max(1, len(sens["drops"]))
    names = set(space.names())
    plain: dict[str, Any] = {}
    for group, drops in sens["drops"].items():
        if group in methods:
            plain.update(_group_choice(group, drops, methods[group], share, 4))
    for name, value in (("quant.method", "none"), ("prune.method", "none"),
                        ("train.epochs", 0)):
        if name in names:
            plain[name] = value
    seeds = [plain]

    by_name = {p.name: p for p in space.params}
    recipe = {k: fit_value(by_name[k], v) for k, v in SEED_LADDER[1].items() if k in by_name}
    if recipe and None not in recipe.values():
        mixed = follow_global(space, recipe)
        for group, drops in sens["drops"].items():
            if group not in methods:
                continue
            robust = any(v <= share for k, v in drops.items() if k == "lowbit4")
            if "lowbit" in methods[group]:
                mixed[f"quant.method[{group}]"] = "lowbit"
                mixed[f"quant.bits[{group}]"] = 3 if robust else 8
        seeds.append(mixed)
    return seeds


def store(study: optuna.Study, sens: dict[str, Any] | None) -> None:
    if sens is not None:
        study.set_user_attr(SENSITIVITY_ATTR, sens)
