"""Causal-LM models as csearch sees them: a logits-only wrapper around a Hugging Face
Llama-family decoder, and a decoder forward pass whose attention is pluggable, so that
the held-out evaluation and the serve replay's paged KV cache run the same layers.

The layers are the model's own modules (`q_proj`, `mlp`, norms, rotary embedding), so a
pruned or quantized layer (e.g. `DynamicInt8Linear`) computes exactly as it is served.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CausalLM",
    "LMShape",
    "decoder_forward",
    "full_attention",
    "lm_logits",
    "lm_shape",
]

# attend(layer, q[nh, T, hd], k[nkv, T, hd], v[nkv, T, hd]) -> out[nh, T, hd]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalLM(nn.Module):
    """`input_ids [B, T] -> logits [B, T, V]`: what recovery training, distillation and
    activation measurement call; `lm` is the Hugging Face model (`LlamaForCausalLM`)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


class LMShape:
    """Attention geometry read from the (possibly pruned) modules, not the config."""

    def __init__(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim


def _decoder(model: nn.Module) -> nn.Module:
    lm = model.lm if isinstance(model, CausalLM) else model
    return lm


def lm_shape(model: nn.Module) -> LMShape:
    lm = _decoder(model)
    head_dim = int(getattr(lm.config, "head_dim", None)
                   or lm.config.hidden_size // lm.config.num_attention_heads)
    attn = lm.model.layers[0].self_attn

    def width(m: nn.Module) -> int:
        return int(getattr(m, "out_features", None) or m.weight.shape[0])

    return LMShape(len(lm.model.layers), width(attn.q_proj) // head_dim,
                   width(attn.k_proj) // head_dim, head_dim)


def full_attention(kv_bits: int | None) -> Attend:
    """Causal attention over one whole sequence, K/V read back through the cache format."""
    from .kv import fake_quant_kv

    def attend(_layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = fake_quant_kv(k, kv_bits), fake_quant_kv(v, kv_bits)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=q.shape[-3] != k.shape[-3])
    return attend


def decoder_forward(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                    attend: Attend, *, batch: int = 1) -> torch.Tensor:
    """Hidden states after the final norm, `[batch * T, hidden]`.

    `tokens`/`positions` are flat `[batch * T]`; with `batch > 1` they are `batch` equal-
    length sequences and `attend` gets `[batch, heads, T, hd]` tensors."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = _decoder(model)
    shape = lm_shape(model)
    hd = shape.head_dim
    h = lm.model.embed_tokens(tokens).view(batch, -1, lm.config.hidden_size)
    cos, sin = lm.model.rotary_emb(h, positions.view(batch, -1))
    n = h.shape[1]
    for i, layer in enumerate(lm.model.layers):
        att = layer.self_attn
        x = layer.input_layernorm(h)
        q = att.q_proj(x).view(batch, n, -1, hd).transpose(1, 2)
        k = att.k_proj(x).view(batch, n, -1, hd).transpose(1, 2)
        v = att.v_proj(x).view(batch, n, -1, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if batch == 1:
            out = attend(i, q[0], k[0], v[0]).unsqueeze(0)
        else:
            out = attend(i, q, k, v)
        h = h + att.o_proj(out.transpose(1, 2).reshape(batch, n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return lm.model.norm(h).reshape(batch * n, -1)


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return _decoder(model).lm_head(hidden)
