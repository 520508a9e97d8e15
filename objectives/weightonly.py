"""Weight-only int4 (group scales and zeros) and int8 (per channel) on real kernels.

The codes are chosen here, by pure functions: round-to-nearest (`int4_rtn`) or HQQ's
half-quadratic solver (`int4_hqq`, torchao's `_choose_qparams_and_quantize_affine_hqq`),
which moves each group's scale and zero to where the rounding error is smallest, with no
data. Scales and zeros are bfloat16 values: the CPU int4 and int8 kernels
(`aten._weight_int4pack_mm_for_cpu`, `aten._weight_int8pack_mm`) are vectorised only for
bfloat16 activations (fp32 runs a scalar loop 20-30x slower), and CUDA's tinygemm
(`aten._weight_int4pack_mm`) takes bfloat16 only; a bfloat16 scale converts exactly to
fp32, so `dequantize` of the stored codes is what the kernel computes with.

Int4 codes follow tinygemm's convention, held signed as `q - 8` in [-8, 7]:
`w = (q - 8) * scale + zero` per group of `group_size` input columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from spaces import INT4_GROUP_SIZES

from .errors import QuantizationError

if TYPE_CHECKING:
    from .quantize import QuantizedWeight

__all__ = ["DEFAULT_INT4_GROUP_SIZE", "int4_group_size", "int4_misfit",
           "int4_rtn", "int4_hqq", "int8_per_channel", "Int4WeightOnlyLinear",
           "Int8WeightOnlyLinear", "swap_in_kernels"]

DEFAULT_INT4_GROUP_SIZE = 64
_EPS = 1e-6


def int4_group_size(group_size: int) -> int:
    """The int4 group size for `quant.group_size` (0: the default, 64)."""
    g = group_size or DEFAULT_INT4_GROUP_SIZE
    if g not in INT4_GROUP_SIZES:
        raise QuantizationError(
            f"quant.group_size {group_size} cannot run on the int4 kernels; they take "
            f"{', '.join(map(str, INT4_GROUP_SIZES))} (or 0 for {DEFAULT_INT4_GROUP_SIZE})")
    return g


def int4_misfit(layer: nn.Module, group_size: int) -> str | None:
    """Why `layer` cannot run on the int4 kernel (None: it can). Such a layer falls back
    to int8 weight-only (`quantize_weights`)."""
    if type(layer) is not nn.Linear:
        return f"{type(layer).__name__} is not a Linear"
    if layer.in_features % group_size:
        return f"in_features {layer.in_features} is not a multiple of group size {group_size}"
    if layer.out_features % 16:
        return f"out_features {layer.out_features} is not a multiple of 16"
    return None


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16)


def _int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """Nearest code per weight for given bf16 scales/zeros: q - 8 = round((w - z) / s)."""
    out, k = w.shape
    g = w.float().reshape(out, k // group_size, group_size)
    q = torch.round((g - zero.float().unsqueeze(2)) / scale.float().unsqueeze(2))
    return q.clamp(-8, 7).to(torch.int8).reshape(out, k)


def int4_rtn(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric int4 per group (tinygemm's min/max choice): scale =
    (max - min) / 15, zero = min + 8 scale. Returns (codes q - 8, scales, zeros)."""
    out, k = w.shape
    g = w.detach().float().reshape(out, k // group_size, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = _bf16(((hi - lo) / 15).clamp(min=_EPS))
    zero = _bf16(lo + 8 * scale.float())
    return _int4_codes(w, scale, zero, group_size), scale, zero


def int4_hqq(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HQQ int4 (half-quadratic optimisation of each group's scale and zero, no data),
    via torchao; codes are then re-rounded to the nearest for the bf16 scales and zeros,
    which can only lower each weight's error. Returns (codes q - 8, scales, zeros)."""
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq

    out, k = w.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
            w.detach().float(), nbits=4, group_size=group_size, axis=1,
            compute_dtype=torch.float32, device=w.device)
    scale = _bf16(scale.reshape(out, -1).abs().clamp(min=_EPS))
    zero = _bf16(zero.reshape(out, -1))
    return _int4_codes(w, scale, zero, group_size), scale, zero


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel with a bf16 scale (max|w| / 127, rounded to
    bf16; the largest weight may clip by under half a step). Returns (codes, scales
    [out, 1])."""
    w2 = w.detach().float().reshape(w.shape[0], -1)
    scale = _bf16((w2.abs().amax(dim=1, keepdim=True) / 127).clamp(min=2.0**-14))
    q = torch.round(w2 / scale.float()).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


class Int4WeightOnlyLinear(nn.Module):
    """A Linear on the int4 kernel: packed 4-bit codes, bf16 scales and zeros per group.
    Activations go to the kernel in bfloat16; the output returns in the input's dtype."""

    def __init__(self, packed: torch.Tensor, scale_and_zero: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int, out_features: int,
                 group_size: int, padded_in: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.padded_in = group_size, padded_in
        self.register_buffer("packed", packed)
        self.register_buffer("scale_and_zero", scale_and_zero)
        self.register_buffer("bias", bias)
        self._cuda = packed.device.type == "cuda"

    @classmethod
    def from_codes(cls, layer: nn.Linear, q: torch.Tensor, scales: torch.Tensor,
                   zeros: torch.Tensor, group_size: int) -> Int4WeightOnlyLinear:
        """From stored codes (`q - 8`, int8 [out, in]) and bf16 scales/zeros [out, groups]."""
        from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

        device = layer.weight.device
        n, k = q.shape
        codes = (q.to(torch.int32) + 8).to(device)
        scales, zeros = _bf16(scales).to(device), _bf16(zeros).to(device)
        kp = k
        if device.type == "cuda":  # tinygemm: in multiple of 8 x 16 (inner k tiles), out of 8
            step = max(128, group_size)
            kp, np_ = -(-k // step) * step, -(-n // 8) * 8
            codes = F.pad(codes, (0, kp - k, 0, np_ - n), value=8)
            scales = F.pad(scales, (0, (kp - k) // group_size, 0, np_ - n), value=1.0)
            zeros = F.pad(zeros, (0, (kp - k) // group_size, 0, np_ - n))
            u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(u8.contiguous(), 8)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        sz = pack_tinygemm_scales_and_zeros(scales, zeros, torch.bfloat16)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(packed, sz, bias, layer.in_features, layer.out_features, group_size, kp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self._cuda:
            if self.padded_in != self.in_features:
                a = F.pad(a, (0, self.padded_in - self.in_features))
            y = torch.ops.aten._weight_int4pack_mm(a.contiguous(), self.packed,
                                                   self.group_size, self.scale_and_zero)
            y = y[:, : self.out_features]
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                a.contiguous(), self.packed, self.group_size, self.scale_and_zero)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}")


class Int8WeightOnlyLinear(nn.Module):
    """A Linear with int8 weights and a bf16 scale per output channel: on the CPU,
    `aten._weight_int8pack_mm` (bf16 activations); on CUDA, and for an `in_features` not
    a multiple of 16 (where that kernel crashes), the int8 weights cast inside the matmul
    and scaled after it (torchao's `Int8Tensor` weight-only path)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", _bf16(scales).reshape(-1).contiguous())
        self.register_buffer("bias", bias)
        self._kernel = q.device.type == "cpu" and self.in_features % 16 == 0

    @classmethod
    def from_codes(cls, layer: nn.Linear, q: torch.Tensor,
                   scales: torch.Tensor) -> Int8WeightOnlyLinear:
        device = layer.weight.device
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(q.to(device), scales.to(device), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        if self._kernel:
            y = torch.ops.aten._weight_int8pack_mm(a.to(torch.bfloat16).contiguous(),
                                                   self.qweight, self.scales)
        else:
            y = (a @ self.qweight.to(a.dtype).t()) * self.scales.to(a.dtype)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def swap_in_kernels(model: nn.Module, names: list[str] | None,
                    quantized: Mapping[str, QuantizedWeight]) -> nn.Module:
    """Swap each Linear (of `names`, or all) for the int4 or int8 weight-only kernel
    holding its stored codes; other layers (convolutions) keep their dequantized weights."""
    targets = [n for n, m in model.named_modules()
               if type(m) is nn.Linear and (names is None or n in names)]
    for name in targets:
        qw = quantized.get(name)
        if qw is None:
            raise QuantizationError(f"no stored codes for layer {name!r}")
        layer = model.get_submodule(name)
        if qw.zeros is not None:
            new: nn.Module = Int4WeightOnlyLinear.from_codes(layer, qw.q, qw.scales, qw.zeros,
                                                             qw.group_size)
        else:
            new = Int8WeightOnlyLinear.from_codes(layer, qw.q, qw.scales)
        if not name:
            return new
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
