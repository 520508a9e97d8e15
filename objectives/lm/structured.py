"""Structured pruning of causal-LM decoders: whole attention heads and MLP neurons.

Torch-Pruning's dependency graph does not model rotary, grouped-KV attention (on a Llama
it stalls), so decoders are pruned here, layer by layer, with the geometry explicit:

* MLP neurons: `ratio` of each layer's hidden units go, ranked by the L2 norms of their
  weights in (gate,) up and down projections;
* attention heads: within each KV group, `round(ratio * group size)` query heads go (at
  least one stays), ranked by the L2 norms of their `q_proj` rows and `o_proj` columns,
  so every KV head keeps the same number of queries and grouped attention still applies.
  GPT-2 (one KV head per query head) loses whole heads: q, k and v rows together.

The residual width, the embeddings and the output layer stay whole. The result depends
only on the weights, so `export.load` repeats it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import CausalLM, _family, lm_shape

__all__ = ["prune_decoder"]


def _rows(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    out = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.weight[idx])
        if layer.bias is not None:
            out.bias.copy_(layer.bias[idx])
    return out.to(layer.weight.device, layer.weight.dtype)


def _cols(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.weight[:, idx])
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out.to(layer.weight.device, layer.weight.dtype)


def _keep(importance: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the `n` largest along the last dim, in their original order."""
    return importance.topk(n, dim=-1).indices.sort(dim=-1).values


def _heads_to_rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    return (heads.flatten()[:, None] * hd + torch.arange(hd, device=heads.device)).flatten()


@torch.no_grad()
def prune_decoder(model: CausalLM, ratio: float) -> CausalLM:
    """Remove `ratio` of the MLP neurons and query heads of every layer (see module doc)."""
    if ratio <= 0:
        return model
    lm = model.lm
    shape = lm_shape(model)
    hd = shape.head_dim
    gpt2 = _family(lm) == "gpt2"
    group = shape.n_heads // shape.n_kv_heads if not gpt2 else shape.n_heads
    keep_heads = max(1, group - round(ratio * group))
    for layer in (lm.transformer.h if gpt2 else lm.model.layers):
        if gpt2:
            _prune_gpt2_layer(layer, ratio, hd, shape.n_heads, keep_heads)
            continue
        att, mlp = layer.self_attn, layer.mlp
        width = mlp.up_proj.out_features
        keep = _keep(mlp.gate_proj.weight.norm(dim=1) + mlp.up_proj.weight.norm(dim=1)
                     + mlp.down_proj.weight.norm(dim=0), max(1, width - round(ratio * width)))
        mlp.gate_proj, mlp.up_proj = _rows(mlp.gate_proj, keep), _rows(mlp.up_proj, keep)
        mlp.down_proj = _cols(mlp.down_proj, keep)
        if keep_heads < group:
            q = att.q_proj.weight.view(shape.n_kv_heads, group, hd, -1)
            o = att.o_proj.weight.view(-1, shape.n_kv_heads, group, hd)
            imp = q.norm(dim=(2, 3)) + o.norm(dim=(0, 3))  # [kv heads, group]
            heads = _keep(imp, keep_heads) + group * torch.arange(
                shape.n_kv_heads, device=imp.device)[:, None]
            rows = _heads_to_rows(heads, hd)
            att.q_proj, att.o_proj = _rows(att.q_proj, rows), _cols(att.o_proj, rows)
            att.num_key_value_groups = keep_heads
    cfg = lm.config
    if not gpt2:
        cfg.head_dim = hd  # before the head count changes, so it is not re-derived
        cfg.num_attention_heads = shape.n_kv_heads * keep_heads
        cfg.intermediate_size = lm.model.layers[0].mlp.up_proj.out_features
    return model


def _prune_gpt2_layer(layer: nn.Module, ratio: float, hd: int, n_heads: int,
                      keep_heads: int) -> None:
    mlp, att = layer.mlp, layer.attn
    width = mlp.c_fc.out_features
    keep = _keep(mlp.c_fc.weight.norm(dim=1) + mlp.c_proj.weight.norm(dim=0),
                 max(1, width - round(ratio * width)))
    mlp.c_fc, mlp.c_proj = _rows(mlp.c_fc, keep), _cols(mlp.c_proj, keep)
    if keep_heads >= n_heads:
        return
    q = att.c_attn.weight.view(3, n_heads, hd, -1)
    o = att.c_proj.weight.view(-1, n_heads, hd)
    imp = q.permute(1, 0, 2, 3).flatten(1).norm(dim=1) + o.permute(1, 0, 2).flatten(1).norm(dim=1)
    rows = _heads_to_rows(_keep(imp, keep_heads), hd)
    width = n_heads * hd
    att.c_attn = _rows(att.c_attn, torch.cat([rows + i * width for i in range(3)]))
    att.c_proj = _cols(att.c_proj, rows)
    att.split_size = len(rows)
