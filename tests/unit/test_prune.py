"""Pruning: exact masks on hand-built tensors, global sparsity, structured removal."""

from __future__ import annotations

import torch
from torch import nn

from objectives import build_structure
from objectives.prune import (
    apply_masks,
    global_magnitude_masks,
    masks_for,
    prunable_layers,
    threshold_mask,
)
from spaces import Config, PruneConfig


def test_threshold_mask_is_exact():
    w = torch.tensor([[0.5, -0.05, 0.1], [-0.1, 0.0, 0.099999]])
    mask = threshold_mask(w, 0.1)
    # |w| < 0.1 becomes 0; |w| == 0.1 survives.
    assert mask.tolist() == [[True, False, True], [True, False, False]]
    assert mask.dtype == torch.bool and mask.shape == w.shape


def test_threshold_zero_keeps_everything_and_huge_threshold_removes_all():
    w = torch.randn(4, 5)
    assert threshold_mask(w, 0.0).all()
    assert not threshold_mask(w, 1e9).any()


def test_global_masks_remove_exactly_the_smallest_across_tensors():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(7, 3, generator=g), "b": torch.randn(5, 11, generator=g) * 3,
               "c": torch.randn(13, generator=g) * 0.1}
    n = sum(w.numel() for w in weights.values())
    for amount in (0.1, 0.33, 0.5, 0.9, 0.99):
        masks = global_magnitude_masks(weights, amount)
        removed = sum(int((~m).sum()) for m in masks.values())
        assert removed == round(amount * n)
        kept_min = min(w[m].abs().min() for w, m in
                       ((weights[k], masks[k]) for k in weights) if m.any())
        dropped_max = max(w[~m].abs().max() for w, m in
                          ((weights[k], masks[k]) for k in weights) if (~m).any())
        assert dropped_max <= kept_min  # magnitude order across all tensors
    # The tensor of small weights loses the most: global, not per layer.
    masks = global_magnitude_masks(weights, 0.3)
    assert (~masks["c"]).float().mean() > (~masks["b"]).float().mean()


def test_global_masks_with_ties_still_remove_exactly_k():
    weights = {"a": torch.full((10,), 0.5), "b": torch.full((6,), 0.5)}
    masks = global_magnitude_masks(weights, 0.25)
    assert sum(int((~m).sum()) for m in masks.values()) == 4


def test_global_amount_zero_keeps_everything():
    masks = global_magnitude_masks({"a": torch.randn(3, 3)}, 0.0)
    assert masks["a"].all()


def test_apply_masks_zeroes_exactly_the_masked_weights():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = masks_for(model, PruneConfig(method="global", amount=0.5))
    assert set(masks) == {"0", "2"}
    apply_masks(model, masks)
    for layer, mask in masks.items():
        w = model.get_submodule(layer).weight
        assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(w[mask], before[f"{layer}.weight"][mask])
        # Biases are never pruned.
        assert torch.equal(model.get_submodule(layer).bias, before[f"{layer}.bias"])


def test_masks_for_magnitude_uses_the_threshold_per_layer():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    masks = masks_for(model, PruneConfig(method="magnitude", threshold=0.2))
    for layer, mask in masks.items():
        assert torch.equal(mask, model.get_submodule(layer).weight.abs() >= 0.2)
    assert masks_for(model, PruneConfig(method="none")) == {}


def test_structured_pruning_removes_channels_and_the_model_still_runs(digits):
    config = Config(prune=PruneConfig(method="structured", structured_ratio=0.5))
    base = prunable_layers(digits.model)
    pruned_model = build_structure(digits, config, torch.device("cpu"))
    pruned = prunable_layers(pruned_model)
    assert list(pruned) == list(base)
    # Every hidden layer lost channels; the output layer keeps its 10 outputs.
    for name in list(base)[:-1]:
        assert pruned[name].weight.shape[0] < base[name].weight.shape[0], name
    last = list(base)[-1]
    assert pruned[last].weight.shape[0] == base[last].weight.shape[0]
    n_base = sum(p.numel() for p in digits.model.parameters())
    n_pruned = sum(p.numel() for p in pruned_model.parameters())
    assert n_pruned < 0.5 * n_base
    with torch.inference_mode():
        out = pruned_model(digits.batch([digits.request(i) for i in range(5)]))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    # The base model is untouched, and the structure is reproducible (export relies on it).
    assert sum(p.numel() for p in digits.model.parameters()) == n_base
    again = build_structure(digits, config, torch.device("cpu"))
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in pruned_model.state_dict().items()}
