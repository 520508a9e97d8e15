"""Quantization: pure fake-quant maths and runtime kernels, dispatched by method.

Every method first rounds the weights of prunable layers to a grid (`fake_quantize`), so
the packed artifact stores exactly what the model computes with. Then `apply_runtime`
swaps in a real low-precision kernel where one exists on the device (dynamic int8 on
CPU, torchao's int8 tensor subclasses). `int8_weight_only`, `int4_weight_only`
(round-to-nearest, group scales and zeros) and `int4_hqq` (HQQ's scales and zeros) build
their kernels (`weightonly`) from the stored codes themselves, so `apply_runtime` takes
the codes `quantize_weights` returned (or `pack.unpack_quantized` read back). `lowbit`
(2..8 bits) has no kernel here and runs with the dequantized weights: it buys size, not
speed.

Embedding tables (`nn.Embedding`, e.g. a transformer's vocabulary, often half of its
bytes) are quantized too whenever `quant.method` is not `none`: int8 codes with one fp16
scale per row (per token), whatever `quant.bits` is; they are never pruned. The runtime
keeps them as dequantized fp32 tables, so the model computes with what is stored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from spaces import INT4_METHODS, QuantConfig

from .errors import QuantizationError
from .prune import prunable_layers
from .weightonly import (
    int4_group_size,
    int4_hqq,
    int4_misfit,
    int4_rtn,
    int8_per_channel,
    swap_in_kernels,
)

__all__ = [
    "INT4_METHODS",
    "CODE_KERNEL_METHODS",
    "QuantizedWeight",
    "weight_bits",
    "group_scales",
    "fake_quantize",
    "dequantize",
    "quantize_weights",
    "embedding_layers",
    "tied_heads",
    "apply_runtime",
    "int8_weight_bits",
    "layer_plan",
    "layer_codes",
    "DynamicInt8Linear",
]

EMBEDDING_BITS = 8
# Methods whose kernels are built from the stored codes (`apply_runtime(quantized=...)`).
CODE_KERNEL_METHODS = INT4_METHODS + ("int8_weight_only",)

# Smallest scale stored: fp16's smallest normal number, so scales round-trip exactly.
_MIN_SCALE = 2.0**-14


@dataclass(frozen=True)
class QuantizedWeight:
    """Signed integer codes `q` (int8 holding `bits`-bit values) and `scales` (fp16, or
    bf16 for the weight-only kernels) of shape `[out, n_groups]`; the weight is
    `q * scale (+ zero)` of its group. `zeros` (bf16, int4 only) are the groups' float
    offsets, tinygemm's convention."""

    q: torch.Tensor
    scales: torch.Tensor
    bits: int
    group_size: int  # 0: one group per output channel
    zeros: torch.Tensor | None = None


def weight_bits(cfg: QuantConfig) -> int | None:
    """Bits per stored weight, or None for fp32."""
    if cfg.method == "none":
        return None
    if cfg.method == "lowbit":
        return int(cfg.bits)
    if cfg.method == "int8_dynamic":
        return int8_weight_bits()
    if cfg.method in INT4_METHODS:
        return 4
    return 8


def layer_plan(layer: nn.Module, cfg: QuantConfig) -> tuple[str, int, int]:
    """(codes kind, bits, group size) of a prunable layer under `cfg`: kind `sym`
    (symmetric, `fake_quantize`), `int8_wo` (int8 per channel, bf16 scale), `int4_rtn` or
    `int4_hqq`. An int4 layer the kernel cannot run (`int4_misfit`: not a Linear, or
    shapes off the kernel's grid) falls back to `int8_wo`. Raises QuantizationError for an
    int4 group size no kernel has."""
    bits = weight_bits(cfg)
    if cfg.method == "lowbit":
        return "sym", int(bits or 8), cfg.group_size
    if cfg.method in INT4_METHODS:
        group = int4_group_size(cfg.group_size)
        if int4_misfit(layer, group) is None:
            return ("int4_hqq" if cfg.method == "int4_hqq" else "int4_rtn"), 4, group
        return "int8_wo", 8, 0
    if cfg.method == "int8_weight_only":
        return "int8_wo", 8, 0
    return "sym", int(bits or 8), 0


def layer_codes(w: torch.Tensor, kind: str, bits: int, group_size: int) -> QuantizedWeight:
    """The stored codes of weight `w` for a `layer_plan`."""
    if kind == "int8_wo":
        q, scales = int8_per_channel(w)
        return QuantizedWeight(q, scales, 8, 0)
    if kind in ("int4_rtn", "int4_hqq"):
        fn = int4_hqq if kind == "int4_hqq" else int4_rtn
        q, scales, zeros = fn(w, group_size)
        return QuantizedWeight(q, scales, 4, group_size, zeros)
    return fake_quantize(w, bits, group_size)


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """View `w` as `[out, n_groups, g]`, zero-padding the last group."""
    w2 = w.detach().reshape(w.shape[0], -1).float()
    k = w2.shape[1]
    g = k if group_size <= 0 or group_size >= k else group_size
    pad = (-k) % g
    if pad:
        w2 = torch.nn.functional.pad(w2, (0, pad))
    return w2.reshape(w2.shape[0], -1, g), pad


def group_scales(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric scale per group: alpha = max|w| / (2^(bits-1) - 1), stored as fp16."""
    qmax = 2 ** (bits - 1) - 1
    grouped, _ = _grouped(w, group_size)
    alpha = grouped.abs().amax(dim=2) / qmax
    return alpha.clamp(min=_MIN_SCALE).half()


def fake_quantize(w: torch.Tensor, bits: int, group_size: int) -> QuantizedWeight:
    """Q(w) = round(w / alpha) per group; |w - Q(w) * alpha| <= alpha / 2."""
    qmax = 2 ** (bits - 1) - 1
    scales = group_scales(w, bits, group_size)
    grouped, pad = _grouped(w, group_size)
    q = torch.round(grouped / scales.float().unsqueeze(2)).clamp(-qmax, qmax)
    q = q.reshape(q.shape[0], -1)
    if pad:
        q = q[:, :-pad]
    return QuantizedWeight(q.to(torch.int8).reshape(w.shape), scales, bits, group_size)


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    shape = qw.q.shape
    grouped, pad = _grouped(qw.q.float(), qw.group_size)
    w = grouped * qw.scales.float().unsqueeze(2)
    if qw.zeros is not None:
        w = w + qw.zeros.float().unsqueeze(2)
    w = w.reshape(w.shape[0], -1)
    if pad:
        w = w[:, :-pad]
    return w.reshape(shape)


def embedding_layers(model: nn.Module) -> dict[str, nn.Embedding]:
    """Embedding tables: quantized per row, never pruned."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}


def tied_heads(model: nn.Module) -> dict[str, str]:
    """{output layer: embedding table} for Linears whose weight is a table's (tied)."""
    tables = {id(m.weight): n for n, m in embedding_layers(model).items()}
    return {n: tables[id(m.weight)] for n, m in model.named_modules()
            if type(m) is nn.Linear and id(m.weight) in tables}


@torch.no_grad()
def quantize_weights(
    model: nn.Module, cfg: QuantConfig, per_layer: Mapping[str, QuantConfig] | None = None
) -> dict[str, QuantizedWeight]:
    """Round every prunable layer's weight (and every embedding table, per row) to its
    grid in place; return the codes. `per_layer` overrides `cfg` for named layers (layer
    groups); an embedding table is int8 unless its group says otherwise."""
    per_layer = per_layer or {}
    out: dict[str, QuantizedWeight] = {}
    targets = []
    for name, layer in prunable_layers(model).items():
        c = per_layer.get(name, cfg)
        if weight_bits(c) is not None:
            targets.append((name, layer, *layer_plan(layer, c)))
    tied = set(tied_heads(model).values())
    for name, emb in embedding_layers(model).items():
        c = per_layer.get(name, cfg)
        bits = weight_bits(c)
        if bits is not None:
            explicit = name in per_layer and c.method == "lowbit"
            # A table tied to an output layer served by a weight-only kernel gets the int8
            # kernel's codes (bf16 row scales), so that head runs on them (`apply_runtime`).
            kind = "int8_wo" if name in tied and c.method in CODE_KERNEL_METHODS else "sym"
            targets.append((name, emb, kind, bits if explicit else EMBEDDING_BITS, 0))
    for name, layer, kind, b, g in targets:
        qw = layer_codes(layer.weight, kind, b, g)
        layer.weight.copy_(dequantize(qw).to(layer.weight.device, layer.weight.dtype))
        out[name] = qw
    return out


def int8_weight_bits() -> int:
    """Bits of the weight codes `int8_dynamic` stores and computes with on this CPU.

    fbgemm multiplies uint8 activations by int8 weights. Without VNNI it sums the products
    in pairs into int16, which can saturate; PyTorch avoids that by keeping activations at
    7 bits (`reduce_range`). csearch keeps activations at the full 8 bits everywhere and,
    without VNNI, weights at 7 (2 x 255 x 63 < 2**15 cannot saturate): the activations'
    per-tensor rounding costs far more than the weights' per-channel one (all-int8
    MiniLM on an AVX2 CPU: fidelity 0.976 with 7-bit activations, 0.992 with 7-bit
    weights). With VNNI both are 8 bits (0.993)."""
    return 8 if torch.cpu._is_vnni_supported() else 7


class DynamicInt8Linear(nnqd.Linear):
    """fbgemm's dynamic int8 Linear computing with exactly the stored weight codes (one
    symmetric scale per output channel) and 8-bit activations (see `int8_weight_bits`)."""

    def __init__(self, in_features: int, out_features: int, bias_: bool = True,
                 reduce_range: bool = False) -> None:
        super().__init__(in_features, out_features, bias_, dtype=torch.qint8)
        self.reduce_range = reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                               self.reduce_range)
        return y.to(x.dtype)

    @classmethod
    def from_grid(cls, layer: nn.Linear, bits: int) -> DynamicInt8Linear:
        """From a Linear whose weights `quantize_weights` already put on the `bits`-bit
        grid: max|w| / (2**(bits-1) - 1) recovers each row's stored scale, so the codes are
        the stored ones (PyTorch's own observer would re-round them with max / 127.5). A
        finer grid (an artifact made on a VNNI CPU, loaded without) is rounded to `bits`."""
        qmax = 2 ** (bits - 1) - 1
        w = layer.weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / qmax).clamp(min=_MIN_SCALE).double()
        q = torch.round(w / scale.float().unsqueeze(1)).clamp(-qmax, qmax).to(torch.int8)
        qw = torch._make_per_channel_quantized_tensor(
            q, scale, torch.zeros(w.shape[0], dtype=torch.long), 0)
        m = cls(layer.in_features, layer.out_features, layer.bias is not None)
        bias = None if layer.bias is None else layer.bias.detach().float().cpu()
        m.set_weight_bias(qw, bias)
        return m


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _int8_dynamic(model: nn.Module, device: torch.device, names: list[str] | None) -> nn.Module:
    if device.type != "cpu":  # fbgemm/qnnpack kernels are CPU-only
        return model
    bits = int8_weight_bits()
    targets = [n for n, m in model.named_modules()
               if type(m) is nn.Linear and (names is None or n in names)]
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        for name in targets:
            model = _replace(model, name, DynamicInt8Linear.from_grid(
                model.get_submodule(name), bits))
    return model


def _torchao(config_name: str) -> Callable[[nn.Module, torch.device, list[str] | None], nn.Module]:
    def apply(model: nn.Module, device: torch.device, names: list[str] | None) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as tq

            def pick(m: nn.Module, fqn: str) -> bool:
                return isinstance(m, nn.Linear) and (names is None or fqn in names)

            tq.quantize_(model, getattr(tq, config_name)(), filter_fn=pick)
        return model

    return apply


_RUNTIME: dict[str, Callable[[nn.Module, torch.device, list[str] | None], nn.Module]] = {
    "none": lambda m, d, n: m,
    "lowbit": lambda m, d, n: m,
    "int8_dynamic": _int8_dynamic,
    "int8_dynamic_activation": _torchao("Int8DynamicActivationInt8WeightConfig"),
}


def apply_runtime(
    model: nn.Module,
    cfg: QuantConfig,
    device: torch.device,
    per_layer: Mapping[str, QuantConfig] | None = None,
    quantized: Mapping[str, QuantizedWeight] | None = None,
) -> nn.Module:
    """Swap in each layer's low-precision kernels (after `quantize_weights`, whose codes
    `quantized` the weight-only methods need)."""
    methods: dict[str, list[str] | None] = {}
    if not per_layer:
        methods[cfg.method] = list(prunable_layers(model))  # a tied head stays with its table
    else:
        for name in prunable_layers(model):
            methods.setdefault(per_layer.get(name, cfg).method, []).append(name)  # type: ignore[union-attr]
    for method, names in methods.items():
        if method in CODE_KERNEL_METHODS:
            if quantized is None:
                raise QuantizationError(
                    "weight-only kernels are built from the stored codes: pass apply_runtime "
                    "the codes quantize_weights returned (or pack.unpack_quantized read)")
            model = swap_in_kernels(model, names, quantized)
        else:
            model = _RUNTIME[method](model, device, names)
    for head, table in tied_heads(model).items():  # the int8 table's codes, on the kernel
        c = (per_layer or {}).get(table, cfg)
        if c.method in CODE_KERNEL_METHODS and quantized and table in quantized:
            model = swap_in_kernels(model, [head], {head: quantized[table]})
    return model
