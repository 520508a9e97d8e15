"""Structured pruning of causal-LM decoders (Llama with grouped KV heads, and GPT-2):
it finishes at once, removes whole heads per KV group and MLP neurons, keeps the
model's own forward pass and csearch's decoder forward in agreement, and repeats
exactly from the same weights (what `export.load` relies on)."""

from __future__ import annotations

import copy

import pytest
import torch

from objectives.lm.model import CausalLM, conv1d_to_linear, decoder_forward, full_attention
from objectives.lm.model import lm_logits, lm_shape
from objectives.prune import structured_prune
from objectives.workloads.tiny_lm import build_tiny_lm


def _llama() -> CausalLM:
    torch.manual_seed(0)
    return build_tiny_lm(40, (48, 2, 6, 2, 96)).eval()


def _gpt2() -> CausalLM:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=64, n_embd=48, n_layer=2,
                                    n_head=4, n_inner=96, bos_token_id=1, eos_token_id=1))
    return CausalLM(conv1d_to_linear(lm)).eval()


def _agree(model: CausalLM) -> None:
    x = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        hf = model(x)
        ours = lm_logits(model, decoder_forward(model, x.reshape(-1), torch.arange(10).repeat(2),
                                                full_attention(None), batch=2))
    torch.testing.assert_close(ours.view(2, 10, -1), hf, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio, heads", [(0.1, 6), (0.4, 4), (0.7, 2)])
def test_llama_loses_query_heads_per_kv_group_and_mlp_neurons(ratio: float, heads: int) -> None:
    base = _llama()
    model = structured_prune(copy.deepcopy(base), ratio, None)
    shape = lm_shape(model)
    assert (shape.n_heads, shape.n_kv_heads, shape.head_dim) == (heads, 2, 8)
    for layer in model.lm.model.layers:
        assert layer.mlp.up_proj.out_features == 96 - round(ratio * 96)
        assert layer.self_attn.k_proj.out_features == 16  # KV heads stay
        assert layer.self_attn.num_key_value_groups == heads // 2
    assert model.lm.config.num_attention_heads == heads
    _agree(model)
    again = structured_prune(copy.deepcopy(base), ratio, None)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_llama_keeps_the_strongest_heads() -> None:
    model = _llama()
    q = model.lm.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q.view(2, 3, 8, -1)[:, 1] *= 10  # the middle head of each group dominates
    pruned = structured_prune(copy.deepcopy(model), 0.7, None)  # keep 1 of 3 per group
    kept = pruned.lm.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(kept, torch.cat([q[8:16], q[32:40]]))


def test_gpt2_loses_whole_heads_and_mlp_neurons() -> None:
    model = structured_prune(_gpt2(), 0.5, None)
    shape = lm_shape(model)
    assert (shape.n_heads, shape.n_kv_heads, shape.head_dim) == (2, 2, 12)
    for layer in model.lm.transformer.h:
        assert layer.attn.c_attn.out_features == 3 * 24
        assert layer.mlp.c_fc.out_features == 48
    _agree(model)
