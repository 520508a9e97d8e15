"""Quantization-aware fine-tuning: the layers train against what they will compute with
(masked, quantized weights through a straight-through parametrization; dynamic int8's
quantized inputs), and the parametrizations come off before the weights are packed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from spaces import QuantConfig

from .prune import prunable_layers
from .quantize import dequantize, layer_codes, layer_plan, weight_bits

__all__ = ["FakeQuant", "fake_quantize_activation", "attach_fake_quant", "detach_fake_quant"]


class FakeQuant(nn.Module):
    """Parametrization for quantization-aware fine-tuning: the forward pass sees the
    masked, quantized weight; gradients pass straight through to the fp32 weight."""

    def __init__(self, bits: int, group_size: int, mask: torch.Tensor | None = None,
                 kind: str = "sym"):
        super().__init__()
        self.bits, self.group_size, self.kind = bits, group_size, kind
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            w = w * self.mask.to(w.dtype)
        q = dequantize(layer_codes(w.detach(), self.kind, self.bits, self.group_size))
        q = q.to(w.dtype)
        return w + (q - w).detach()


def fake_quantize_activation(x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """What dynamic int8 does to a Linear's input: per-tensor asymmetric uint8 with the
    range taken from the tensor itself (7 bits with `reduce_range`); the gradient passes
    straight through."""
    levels = 127 if reduce_range else 255
    lo = x.detach().amin().clamp(max=0)
    hi = x.detach().amax().clamp(min=0)
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = (torch.clamp(torch.round(x.detach() / scale) + zero, 0, levels) - zero) * scale
    return x + (q - x).detach()


def _activation_hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Dynamic int8's 8-bit activations (see `int8_weight_bits`), for fine-tuning."""
    return (fake_quantize_activation(args[0], reduce_range=False), *args[1:])


def attach_fake_quant(
    model: nn.Module,
    cfg: QuantConfig,
    masks: dict[str, torch.Tensor],
    per_layer: Mapping[str, QuantConfig] | None = None,
) -> list[nn.Module]:
    """Make prunable layers train against what they will compute with: their masked,
    quantized weights and, for layers served by dynamic int8 on the CPU, their quantized
    inputs. Returns the layers, for `detach_fake_quant`."""
    from torch.nn.utils import parametrize

    layers = []
    for name, layer in prunable_layers(model).items():
        c = (per_layer or {}).get(name, cfg)
        if weight_bits(c) is None:
            continue
        kind, bits, group = layer_plan(layer, c)
        # HQQ's solver per step would cost more than the step: train against RTN's grid.
        kind = "int4_rtn" if kind == "int4_hqq" else kind
        mask = masks.get(name)
        fq = FakeQuant(bits, group, None if mask is None else mask.to(layer.weight.device),
                       kind)
        if (c.method == "int8_dynamic" and type(layer) is nn.Linear
                and layer.weight.device.type == "cpu"):
            fq.input_hook = layer.register_forward_pre_hook(_activation_hook)
        parametrize.register_parametrization(layer, "weight", fq)
        layers.append(layer)
    return layers


def detach_fake_quant(layers: list[nn.Module]) -> None:
    """Drop the parametrizations and input hooks, keeping the trained fp32 weights
    (quantized later)."""
    from torch.nn.utils import parametrize

    for layer in layers:
        for fq in layer.parametrizations["weight"]:
            hook = getattr(fq, "input_hook", None)
            if hook is not None:
                hook.remove()
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
