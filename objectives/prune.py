"""Pruning: pure mask functions and structured channel removal.

Masks are plain boolean tensors (True = keep). They are applied by multiplying weights and
re-applied after every optimizer step, so pruned weights stay zero during fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spaces import PruneConfig

__all__ = [
    "prunable_layers",
    "threshold_mask",
    "global_magnitude_masks",
    "masks_for",
    "apply_masks",
    "structured_prune",
]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose `weight` is pruned and quantized: Linear and Conv layers.

    A layer whose weight is an embedding table's (an LM's tied output layer) is left out:
    it shares the table's one stored tensor, so it is compressed as the table is (per row,
    never pruned) and the artifact stores it once."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and id(m.weight) not in tied
    }


def threshold_mask(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """|w| < threshold becomes 0."""
    return w.abs() >= threshold


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor], amount: float
) -> dict[str, torch.Tensor]:
    """Zero the `amount` fraction of smallest |w| over all tensors together."""
    if amount <= 0:
        return {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    k = int(round(amount * flat.numel()))
    if k <= 0:
        return {k_: torch.ones_like(w, dtype=torch.bool) for k_, w in weights.items()}
    # The k smallest go, ties broken by position (a stable sort), so exactly k weights
    # are removed even when many are equal.
    order = torch.argsort(flat, stable=True)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:k]] = False
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, w in weights.items():
        n = w.numel()
        out[name] = keep[offset : offset + n].reshape(w.shape)
        offset += n
    return out


def masks_for(
    model: nn.Module, cfg: PruneConfig, per_layer: Mapping[str, PruneConfig] | None = None
) -> dict[str, torch.Tensor]:
    """Unstructured masks for a config (empty for `none` and `structured`).

    `per_layer` overrides the threshold or amount of named layers (layer groups): with
    `global`, layers sharing an amount are ranked together, so a group with its own
    `prune.amount[g]` reaches exactly that sparsity and the rest share the global one.
    """
    per_layer = per_layer or {}
    layers = prunable_layers(model)
    weights = {name: m.weight.detach() for name, m in layers.items()}
    if cfg.method == "magnitude":
        return {name: threshold_mask(w, per_layer.get(name, cfg).threshold)
                for name, w in weights.items()}
    if cfg.method == "global":
        pools: dict[float, dict[str, torch.Tensor]] = {}
        for name, w in weights.items():
            pools.setdefault(per_layer.get(name, cfg).amount, {})[name] = w
        masks: dict[str, torch.Tensor] = {}
        for amount, pool in pools.items():
            masks.update(global_magnitude_masks(pool, amount))
        return {name: masks[name] for name in weights}
    return {}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    layers = dict(model.named_modules())
    for name, mask in masks.items():
        w = layers[name].weight
        w.mul_(mask.to(w.device, w.dtype))


def _attention_heads(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Hugging Face BERT-style self-attention blocks: `query`/`key`/`value` Linear children
    and a `num_attention_heads` attribute. Returns {attention module: itself}."""
    out = {}
    for m in model.modules():
        if hasattr(m, "num_attention_heads") and all(
            isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value")
        ):
            out[m] = m
    return out


def _update_hf_shapes(model: nn.Module, attention: dict[nn.Module, nn.Module]) -> None:
    """After pruning, make the attention blocks' bookkeeping and the HF config match."""
    heads = set()
    for m in attention:
        head_dim = int(m.attention_head_size)
        m.num_attention_heads = m.query.out_features // head_dim
        m.all_head_size = m.num_attention_heads * head_dim
        heads.add(m.num_attention_heads)
    widths = {
        m.dense.out_features
        for name, m in model.named_modules()
        if name.endswith("intermediate") and isinstance(getattr(m, "dense", None), nn.Linear)
    }
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is None or not hasattr(cfg, "num_attention_heads"):
            continue
        if len(heads) == 1:
            cfg.num_attention_heads = next(iter(heads))
        if len(widths) == 1 and hasattr(cfg, "intermediate_size"):
            cfg.intermediate_size = next(iter(widths))


def structured_prune(model: nn.Module, ratio: float, example_inputs: Any) -> nn.Module:
    """Physically remove `ratio` of the channels of every prunable layer but the output layer.

    Uses Torch-Pruning's dependency graph, so coupled layers (conv -> linear, residuals,
    attention projections) stay consistent and the model really gets smaller and faster.
    In Hugging Face BERT-style transformers this removes whole attention heads (`ratio`
    of each layer's heads, query/key/value rows and output-projection columns together)
    and MLP neurons; the residual width stays, because the output layer is kept whole
    and it shares its channels with the residual stream. The attention blocks' head
    counts and the HF config are updated so the model still runs.
    The result depends only on the weights, so `export.load` can repeat it exactly.
    `example_inputs` is a tensor, a tuple, or a dict of keyword inputs.
    """
    if ratio <= 0:
        return model
    from .lm.model import CausalLM

    if isinstance(model, CausalLM):  # rotary, grouped-KV attention: pruned explicitly
        from .lm.structured import prune_decoder

        return prune_decoder(model, ratio)
    import torch_pruning as tp

    layers = prunable_layers(model)
    # Keep the final classifier/projection whole: its outputs are the model's outputs.
    output_layer = list(layers.values())[-1]
    attention = _attention_heads(model)
    num_heads = {}
    for m in attention:
        for proj in (m.query, m.key, m.value):
            num_heads[proj] = int(m.num_attention_heads)
    head_args: dict[str, Any] = {}
    if num_heads:
        head_args = dict(num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                         head_pruning_ratio=ratio)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[output_layer],
        global_pruning=False,
        **head_args,
    )
    pruner.step()
    if attention:
        _update_hf_shapes(model, attention)
    return model
