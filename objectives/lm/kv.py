"""KV-cache storage formats: fp16 or int8 codes with one fp16 scale per token and head.

`quant.kv_bits` picks the format. The same round trip is used by the accuracy evaluation
(`fake_quant_kv`) and by the serve replay's block pool, so the accuracy a trial reports
is the accuracy of the KV cache it is served with.
"""

from __future__ import annotations

import torch

__all__ = ["KV_BITS", "dequantize_kv", "fake_quant_kv", "kv_bytes_per_token", "quantize_kv"]

KV_BITS = (16, 8)
_QMAX = 127.0


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, kv_bits: int) -> int:
    """Bytes one token's keys and values take in the cache, scales included."""
    if kv_bits not in KV_BITS:
        raise ValueError(f"kv_bits must be one of {KV_BITS}, not {kv_bits}")
    per_head = head_dim * kv_bits // 8 + (2 if kv_bits == 8 else 0)  # + fp16 scale
    return n_layers * n_kv_heads * 2 * per_head


def quantize_kv(x: torch.Tensor, kv_bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`x[..., head_dim]` -> (codes, scales[...]) for int8, (fp16 values, None) for 16.

    int8 is symmetric per token and head: scale = max|x| / 127, so every element is
    within scale / 2 (plus fp16 rounding of the scale) of its original value."""
    if kv_bits == 16:
        return x.to(torch.float16), None
    if kv_bits != 8:
        raise ValueError(f"kv_bits must be one of {KV_BITS}, not {kv_bits}")
    scale = (x.abs().amax(dim=-1) / _QMAX).clamp_min(1e-8).to(torch.float16)
    codes = torch.round(x / scale.float().unsqueeze(-1)).clamp_(-_QMAX, _QMAX)
    return codes.to(torch.int8), scale


def dequantize_kv(codes: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    if scales is None:
        return codes.float()
    return codes.float() * scales.float().unsqueeze(-1)


def fake_quant_kv(x: torch.Tensor, kv_bits: int | None) -> torch.Tensor:
    """What `x` reads back as after a trip through the cache (`None`: untouched fp32)."""
    if kv_bits is None:
        return x
    return dequantize_kv(*quantize_kv(x, kv_bits)).to(x.dtype)
