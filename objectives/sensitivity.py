"""Sensitivity of each layer group: the accuracy drop when only that group is quantized
or pruned, without fine-tuning (in the spirit of HAWQ's and INC's per-layer fallback).

Measured once per study, before the search; `search.sensitivity` uses it to narrow the
space and to seed the search.
"""

from __future__ import annotations

import torch

from spaces import Config

from .groups import group_names, layer_groups, layer_plans
from .pipeline import base_accuracy, build_structure
from .prune import apply_masks, masks_for
from .quantize import apply_runtime, quantize_weights
from .workload import Workload

__all__ = ["probe_configs", "group_sensitivity"]


def probe_configs(group: str, probes: dict[str, dict[str, object]]) -> dict[str, Config]:
    """Configs that compress only `group`, one per probe (`{"int8": {"quant.method":
    "int8_dynamic"}}`); everything else stays fp32 and dense, with no fine-tuning."""
    out = {}
    for label, probe in probes.items():
        flat: dict[str, object] = {"train.epochs": 0}
        for name, value in probe.items():
            if name == "prune.amount":
                flat["prune.method"] = "global"
                flat["prune.amount"] = 0.0
            flat[f"{name}[{group}]"] = value
        out[label] = Config.from_flat(flat)
    return out


@torch.no_grad()
def group_sensitivity(
    workload: Workload, probes: dict[str, dict[str, object]], device: torch.device | str = "cpu",
    guard: float | None = None,
) -> dict[str, dict[str, float]]:
    """{group: {probe label: accuracy drop}} with each group compressed alone.

    A language model's probes reuse the fp32 model's results: each probe's drop is paired
    window by window with the fp32 per-window accuracies and stops at the chunk where its
    standard error is below `guard / 2` (`HeldoutSubset.probe_drop`), and a probe of a
    group that is only the output head reuses the fp32 decoder's final hidden states
    instead of running the whole model again."""
    device = torch.device(device)
    base = base_accuracy(workload)
    subset = workload.extras.get("heldout_subset")
    head = subset.head_name(workload.model) if subset is not None else None
    layers = layer_groups(workload)
    out: dict[str, dict[str, float]] = {}
    for group in group_names(workload):
        out[group] = {}
        mine = [n for n, g in layers.items() if g == group]
        head_only = head is not None and mine == [head]
        for label, config in probe_configs(group, probes).items():
            model = build_structure(workload, config, device)
            prune_plan, quant_plan = layer_plans(workload, model, config)
            masks = masks_for(model, config.prune, prune_plan)
            apply_masks(model, masks)
            codes = quantize_weights(model, config.quant, quant_plan)
            model = apply_runtime(model, config.quant, device, quant_plan, codes)
            if subset is not None and guard is not None:
                drop = subset.probe_drop(workload.model, model, guard, head_only)["drop"]
            else:
                drop = base - (subset.head_metrics(workload.model, model)["accuracy"]
                               if head_only else workload.evaluate(model))
            out[group][label] = float(drop)
    return out
