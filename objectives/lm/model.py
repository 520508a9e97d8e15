"""Causal-LM models as csearch sees them: a logits-only wrapper around a Hugging Face
decoder, and a decoder forward pass whose attention is pluggable, so that the held-out
evaluation and the serve replay's paged KV cache run the same layers.

Two families: Llama-style (Llama, Mistral, Qwen2: `q_proj`/`k_proj`/`v_proj`, rotary
positions, grouped KV heads) and GPT-2 (fused `c_attn`, learned positions; its `Conv1D`
layers become `nn.Linear` at load, see `conv1d_to_linear`). The layers are the model's
own modules, so a pruned or quantized layer (e.g. `DynamicInt8Linear`) computes exactly
as it is served.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LM_FAMILIES",
    "CausalLM",
    "conv1d_to_linear",
    "LMShape",
    "decoder_forward",
    "full_attention",
    "lm_head",
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


# Hugging Face `model_type`s whose decoder `decoder_forward` runs, by family.
LM_FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}


def _decoder(model: nn.Module) -> nn.Module:
    lm = model.lm if isinstance(model, CausalLM) else model
    return lm


def _family(lm: nn.Module) -> str:
    if hasattr(lm, "transformer") and hasattr(lm.transformer, "h"):
        return "gpt2"
    return "llama"


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every transformers `Conv1D` (GPT-2's `x @ W + b`, W `[in, out]`) by the
    equal `nn.Linear` (weight `W.T`), so the Linear pruning and quantization paths apply.
    Returns `model`, changed in place; the outputs are unchanged."""
    from transformers.pytorch_utils import Conv1D

    for name, child in list(model.named_children()):
        if isinstance(child, Conv1D):
            nx, nf = child.weight.shape
            lin = nn.Linear(nx, nf, bias=child.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(child.weight.detach().t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias.detach())
            setattr(model, name, lin.to(child.weight.device, child.weight.dtype))
        else:
            conv1d_to_linear(child)
    return model


def _width(m: nn.Module) -> int:
    return int(getattr(m, "out_features", None) or m.weight.shape[0])


def lm_shape(model: nn.Module) -> LMShape:
    lm = _decoder(model)
    cfg = lm.config
    if _family(lm) == "gpt2":
        head_dim = cfg.n_embd // cfg.n_head
        heads = _width(lm.transformer.h[0].attn.c_attn) // 3 // head_dim
        return LMShape(len(lm.transformer.h), heads, heads, head_dim)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    attn = lm.model.layers[0].self_attn
    return LMShape(len(lm.model.layers), _width(attn.q_proj) // head_dim,
                   _width(attn.k_proj) // head_dim, head_dim)


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
    lm = _decoder(model)
    if _family(lm) == "gpt2":
        return _gpt2_forward(lm, tokens, positions, attend, batch)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hd = lm_shape(model).head_dim
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
        out = _attend(attend, i, q, k, v, batch)
        h = h + att.o_proj(out.transpose(1, 2).reshape(batch, n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return lm.model.norm(h).reshape(batch * n, -1)


def _attend(attend: Attend, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            batch: int) -> torch.Tensor:
    return attend(i, q[0], k[0], v[0]).unsqueeze(0) if batch == 1 else attend(i, q, k, v)


def _gpt2_forward(lm: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                  attend: Attend, batch: int) -> torch.Tensor:
    """GPT-2: learned positions, pre-LayerNorm blocks, fused q/k/v (`c_attn`)."""
    hd = lm.config.n_embd // lm.config.n_head
    tr = lm.transformer
    h = (tr.wte(tokens) + tr.wpe(positions)).view(batch, -1, lm.config.n_embd)
    n = h.shape[1]
    for i, layer in enumerate(tr.h):
        q, k, v = (t.view(batch, n, -1, hd).transpose(1, 2)
                   for t in layer.attn.c_attn(layer.ln_1(h)).chunk(3, dim=-1))
        out = _attend(attend, i, q, k, v, batch)
        h = h + layer.attn.c_proj(out.transpose(1, 2).reshape(batch, n, -1))
        h = h + layer.mlp(layer.ln_2(h))
    return tr.ln_f(h).reshape(batch * n, -1)


def lm_head(model: nn.Module) -> nn.Module:
    """The output layer `lm_logits` applies."""
    return _decoder(model).lm_head


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return lm_head(model)(hidden)
