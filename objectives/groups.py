"""Layer groups: named sets of layers that per-group parameters (`quant.bits[qkv]`) act on.

A workload names its groups as fnmatch patterns over module names; a layer belongs to
the first group whose pattern matches it. Without names, the groups are one per module
type (`linear`, `conv`, `embedding`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from spaces import Config, PruneConfig, QuantConfig

from .prune import prunable_layers
from .quantize import embedding_layers
from .workload import Workload

__all__ = ["default_groups", "group_patterns", "group_names", "layer_groups", "layer_plans",
           "group_weights", "prunable_groups"]


def default_groups(model: nn.Module) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for name, m in {**prunable_layers(model), **embedding_layers(model)}.items():
        kind = ("embedding" if isinstance(m, nn.Embedding)
                else "linear" if isinstance(m, nn.Linear) else "conv")
        kinds.setdefault(kind, []).append(name)
    return kinds


def group_patterns(workload: Workload) -> dict[str, list[str]]:
    return dict(workload.groups) if workload.groups else default_groups(workload.model)


def group_names(workload: Workload) -> list[str]:
    return list(group_patterns(workload))


def layer_groups(workload: Workload, model: nn.Module | None = None) -> dict[str, str]:
    """Layer name -> group, for every prunable layer and embedding table."""
    model = model if model is not None else workload.model
    patterns = group_patterns(workload)
    out: dict[str, str] = {}
    for name in {**prunable_layers(model), **embedding_layers(model)}:
        for group, pats in patterns.items():
            if any(fnmatchcase(name, p) for p in pats):
                out[name] = group
                break
    return out


def group_weights(workload: Workload) -> dict[str, int]:
    """Weights per group (what a group's bit width multiplies)."""
    layers = {**prunable_layers(workload.model), **embedding_layers(workload.model)}
    out = {g: 0 for g in group_names(workload)}
    for name, group in layer_groups(workload).items():
        out[group] += layers[name].weight.numel()
    return out


def prunable_groups(workload: Workload) -> list[str]:
    """Groups with a prunable layer (a group of embedding tables has none)."""
    prunable = prunable_layers(workload.model)
    found = {g for name, g in layer_groups(workload).items() if name in prunable}
    return [g for g in group_names(workload) if g in found]


def layer_plans(
    workload: Workload, model: nn.Module, config: Config
) -> tuple[dict[str, PruneConfig], dict[str, QuantConfig]]:
    """Per-layer prune and quant configs for the layers whose group has overrides.

    Layers of groups without overrides are absent: they follow the global config.
    """
    prune: dict[str, PruneConfig] = {}
    quant: dict[str, QuantConfig] = {}
    if not config.groups:
        return prune, quant
    for name, group in layer_groups(workload, model).items():
        if config.overrides(group):
            eff = config.for_group(group)
            prune[name], quant[name] = eff.prune, eff.quant
    return prune, quant
