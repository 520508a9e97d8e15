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


from spaces import Space

from . import attrs

__all__ = ["SENSITIVITY_ATTR", "probes_for", "measure", "pinned_groups", "narrow",
           "budgeted_choice", "sensitivity_seeds"]

SENSITIVITY_ATTR = attrs.SENSITIVITY
DEFAULT_GUARD = 0.01


def _per_group_methods(space: Space) -> dict[str, tuple[Any, ...]]:
    return {p.name[len("quant.method["):-1]: p.choices for p in space.params
            if p.name.startswith("quant.method[") and p.type == "categorical"}


def probes_for(space: Space) -> dict[str, dict[str, object]]:
    """Probes the space can express: dynamic int8, weight-only int8, int4 on its kernel
    (HQQ where the space has it, else round-to-nearest), 4-bit weights, 50% sparsity."""
    methods = _per_group_methods(space)
    choices = set().union(*methods.values()) if methods else set()
    probes: dict[str, dict[str, object]] = {}
    if "int8_dynamic" in choices:
        probes["int8_dynamic"] = {"quant.method": "int8_dynamic"}
    if "int8_weight_only" in choices:
        probes["int8_weight_only"] = {"quant.method": "int8_weight_only"}
    for int4 in ("int4_hqq", "int4_weight_only"):
        if int4 in choices:
            probes[int4] = {"quant.method": int4}
            break
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
    from objectives.groups import group_weights

    guard = ctx.spec.accuracy_guard()
    table = group_sensitivity(ctx.workload, probes, ctx.device,
                              guard if guard is not None else DEFAULT_GUARD)
    return {"guard": guard if guard is not None else DEFAULT_GUARD, "probes": probes,
            "drops": table, "weights": group_weights(ctx.workload)}


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


# Per-group quantizer options a seed can pick: (probe label, params, bits per weight).
_OPTIONS = (
    ("int8_dynamic", {"quant.method": "int8_dynamic"}, 8),
    ("int8_weight_only", {"quant.method": "int8_weight_only"}, 8),
    ("int4_hqq", {"quant.method": "int4_hqq"}, 4),
    ("int4_weight_only", {"quant.method": "int4_weight_only"}, 4),
    ("lowbit4", {"quant.method": "lowbit", "quant.bits": 4}, 4),
)
_PARAMS = {label: params for label, params, _ in _OPTIONS}
# Share of the guard a seed may spend: drops measured one group at a time add up only
# roughly, and a seed that lands just past the guard is a wasted trial.
SEED_MARGIN = 0.8


def budgeted_choice(sens: dict[str, Any], methods: dict[str, tuple[Any, ...]]
                    ) -> dict[str, str]:
    """Each group's quantizer probe (or "none") for a starting trial: greedily take the
    step that saves the most weight bits per unit of measured accuracy drop, while the
    summed drops stay within SEED_MARGIN x guard (a knapsack over the probes, as in
    HAWQ-V3's bit allocation). Groups weigh by their weight counts."""
    budget = SEED_MARGIN * sens["guard"]
    weights = sens.get("weights") or {}
    choice = {g: "none" for g in sens["drops"] if g in methods}
    bits = {"none": 32, **{label: b for label, _, b in _OPTIONS}}
    spent = 0.0
    while True:
        best: tuple[float, str, str, float] | None = None
        for group, current in choice.items():
            drops = sens["drops"][group]
            had = drops.get(current, 0.0) if current != "none" else 0.0
            for label, params, b in _OPTIONS:
                if (label not in drops or params["quant.method"] not in methods[group]
                        or b >= bits[current]):
                    continue
                extra = max(drops[label] - had, 0.0)
                if spent + extra > budget:
                    continue
                saved = weights.get(group, 1) * (bits[current] - b)
                ratio = extra / saved
                if best is None or ratio < best[0]:
                    best = (ratio, group, label, extra)
        if best is None:
            return choice
        _, group, label, extra = best
        choice[group] = label
        spent += extra


# Deep Compression's per-layer rates (Han et al. 2016: fully connected layers ~90-96%,
# convolutions ~35-65%): the bytes are in the largest groups, so they are pruned and
# narrowed hard while small groups, which weigh little in the artifact, keep accuracy.
DOMINANT_SHARE = 0.5
LARGE_GROUP = {"prune.amount": 0.95, "bits": 2}
SMALL_GROUP = {"prune.amount": 0.6, "bits": 4}


def sensitivity_seeds(space: Space, sens: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Starting trials chosen per group from the probes (HAQ-style mixed precision):
      1. no pruning, no training: the quantizer per group of `budgeted_choice`;
      2. where the space allows it, global pruning with recovery training at Deep
         Compression's per-layer rates: groups holding at least half of the weights
         at 95% sparsity and 2 bits, the others at 60% and 4 bits (8 bits for a group
         whose 4-bit probe broke its share of the guard)."""
    if not sens:
        return []
    methods = _per_group_methods(space)
    choice = budgeted_choice(sens, methods)
    names = set(space.names())
    plain: dict[str, Any] = {}
    for group, label in choice.items():
        params = _PARAMS.get(label, {"quant.method": "none"})
        if "none" in methods[group] or label != "none":
            plain.update({f"{k}[{group}]": v for k, v in params.items()})
    for name, value in (("quant.method", "none"), ("prune.method", "none"),
                        ("train.epochs", 0), ("train.steps", 0)):
        if name in names:
            plain[name] = value
    seeds = [plain]
    layered = _layered_seed(space, sens, methods)
    if layered is not None:
        seeds.append(layered)
    return seeds


def _layered_seed(space: Space, sens: dict[str, Any], methods: dict[str, tuple[Any, ...]]
                  ) -> dict[str, Any] | None:
    from .seeds import SEED_LADDER, fit_value

    by_name = {p.name: p for p in space.params}
    weights = sens.get("weights") or {}
    total = sum(weights.values()) or 1
    share = sens["guard"] / max(1, len(sens["drops"]))
    recipe = {k: v for k, v in SEED_LADDER[1].items()
              if k in by_name and not k.startswith("quant.")}
    wanted: dict[str, Any] = dict(recipe)
    for group, drops in sens["drops"].items():
        large = weights.get(group, 0) / total >= DOMINANT_SHARE
        rates = LARGE_GROUP if large else SMALL_GROUP
        robust = drops.get("lowbit4", 1.0) <= share
        if f"prune.amount[{group}]" in by_name:
            wanted[f"prune.amount[{group}]"] = rates["prune.amount"]
        if group in methods and "lowbit" in methods[group]:
            wanted[f"quant.method[{group}]"] = "lowbit"
            wanted[f"quant.bits[{group}]"] = rates["bits"] if robust else 8
    out = {k: fit_value(by_name[k], v) for k, v in wanted.items() if k in by_name}
    if not any(k.startswith("prune.amount[") for k in out) or None in out.values():
        return None  # the space has no per-group sparsity, or cannot take these rates
    return out

