"""The per-study sensitivity pass and what the search does with it.

Run once, when a study whose space has per-group quantizers is created; stored in the
study's user attr `sensitivity`, so every worker and the report read the same result:
  * groups that break the accuracy guard even at dynamic int8 are pinned to fp32
    (`quant.method[g]` can only be "none");
  * one seed trial uses, per group, the cheapest probe that stays within its share of
    the guard.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna

from spaces import Space

__all__ = ["SENSITIVITY_ATTR", "probes_for", "measure", "pinned_groups", "narrow",
           "sensitivity_seed"]

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


def sensitivity_seed(space: Space, sens: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per group, the most compressive probe within the group's share of the guard."""
    if not sens:
        return None
    methods = _per_group_methods(space)
    share = sens["guard"] / max(1, len(sens["drops"]))
    params: dict[str, Any] = {}
    for group, drops in sens["drops"].items():
        if group not in methods:
            continue
        ok = {k: v for k, v in drops.items() if not k.startswith("prune") and v <= share}
        if "lowbit4" in ok and "lowbit" in methods[group]:
            params[f"quant.method[{group}]"] = "lowbit"
            params[f"quant.bits[{group}]"] = 4
        elif "int8_dynamic" in ok and "int8_dynamic" in methods[group]:
            params[f"quant.method[{group}]"] = "int8_dynamic"
        elif "none" in methods[group]:
            params[f"quant.method[{group}]"] = "none"
    names = set(space.names())
    if "quant.method" in names:
        params["quant.method"] = "none"
    if "prune.method" in names:
        params["prune.method"] = "none"
    if "train.epochs" in names:
        params["train.epochs"] = 0
    return params


def store(study: optuna.Study, sens: dict[str, Any] | None) -> None:
    if sens is not None:
        study.set_user_attr(SENSITIVITY_ATTR, sens)
