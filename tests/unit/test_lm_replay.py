"""The generation replay: paged KV cache, prefix reuse, continuous batching limits."""

from __future__ import annotations

import pytest
import torch

from objectives.lm.model import CausalLM, decoder_forward, full_attention, lm_logits
from objectives.lm.replay import GenerationSettings, generation_replay
from spaces import ServeConfig

K = 5


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=False)
    return CausalLM(LlamaForCausalLM(cfg)).eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 48, (n,), generator=g).tolist() for n in (21, 34, 40, 27, 50)]


def _replay(lm, prompts, trace, *, batch=8, cache_ratio=0.5, memory_ratio=0.25,
            budget=400_000, kv_bits=16, concurrency=4):
    return generation_replay(
        lm, prompts, trace,
        ServeConfig(batch_size=batch, cache_ratio=cache_ratio, memory_ratio=memory_ratio),
        kv_bits=kv_bits, budget_bytes=budget, weight_bytes=0,
        settings=GenerationSettings(new_tokens=K, block_size=8, n_requests=len(trace),
                                    concurrency=concurrency))


def _greedy(lm, prompt, kv_bits):
    t = list(prompt)
    with torch.inference_mode():
        for _ in range(K):
            h = decoder_forward(lm, torch.tensor(t), torch.arange(len(t)),
                                full_attention(kv_bits))
            t.append(int(lm_logits(lm, h[-1:]).argmax()))
    return tuple(t[len(prompt):])


def test_full_forward_matches_hugging_face(lm, prompts):
    x = torch.tensor([prompts[2]])
    with torch.inference_mode():
        h = decoder_forward(lm, x[0], torch.arange(x.shape[1]), full_attention(None))
        assert torch.allclose(lm_logits(lm, h), lm(x)[0], atol=1e-5)


@pytest.mark.parametrize("kv_bits", [16, 8])
def test_paged_generation_equals_recomputing_greedy(lm, prompts, kv_bits):
    # a tiny workspace forces chunked prefill; repeats reuse cached prefixes
    trace = [0, 1, 0, 2, 3, 0, 4, 1]
    r = _replay(lm, prompts, trace, memory_ratio=0.02, kv_bits=kv_bits)
    assert sum(r.reused_tokens) > 0
    for pos, out in enumerate(r.outputs):
        assert out == _greedy(lm, prompts[trace[pos]], kv_bits)


def test_no_block_is_leaked_or_double_freed_over_a_replay(lm, prompts):
    trace = [i % 5 for i in range(30)]
    r = _replay(lm, prompts, trace, cache_ratio=0.12, concurrency=6)
    pool = r.pool
    assert pool.in_use == 0 and all(ref == 0 for ref in pool.refs)
    assert pool.available == pool.n_blocks  # every block is free or parked for reuse
    assert pool.parked > 0
    assert len(r.outputs) == len(trace) and all(len(o) == K for o in r.outputs)


def test_a_repeated_prompt_hits_the_cache_and_skips_its_compute(lm, prompts):
    once = _replay(lm, prompts, [2], concurrency=1)
    twice = _replay(lm, prompts, [2, 2], concurrency=1)
    reused = (len(prompts[2]) - 1) // 8 * 8
    assert twice.reused_tokens == (0, reused)
    assert twice.computed_tokens == 2 * once.computed_tokens - reused
    assert twice.outputs[0] == twice.outputs[1] == once.outputs[0]
    assert twice.metrics["prefix_hit_rate"] == pytest.approx(reused / (2 * len(prompts[2])))


def test_repeats_raise_prefix_hit_rate_and_distinct_prompts_do_not(lm, prompts):
    distinct = _replay(lm, prompts, [0, 1, 2, 3, 4], concurrency=2)
    repeated = _replay(lm, prompts, [0, 1, 0, 1, 0], concurrency=2)
    assert distinct.metrics["prefix_hit_rate"] == 0
    assert repeated.metrics["prefix_hit_rate"] > 0.3


def test_running_sequences_are_capped_by_batch_size_and_by_the_pool(lm, prompts):
    trace = [1] * 12
    capped = _replay(lm, prompts, trace, batch=2, concurrency=8)
    assert capped.max_running == 2 and capped.capacity == 2
    # distinct 34-token prompts (+ 4 fed tokens = 38 -> 5 blocks of 8, nothing shared):
    # a pool of 15 blocks holds exactly 3 sequences
    g = torch.Generator().manual_seed(2)
    distinct = [torch.randint(0, 48, (34,), generator=g).tolist() for _ in range(12)]
    block_bytes = 8 * 2 * 2 * 2 * 16 * 2
    small = _replay(lm, distinct, list(range(12)), batch=8, concurrency=8, budget=100_000,
                    cache_ratio=15 * block_bytes / 100_000)
    assert small.capacity == 3 and small.max_running == 3
    roomy = _replay(lm, distinct, list(range(12)), batch=8, concurrency=8)
    assert roomy.max_running == 8
    assert roomy.steps < small.steps


def test_a_pool_without_room_for_one_sequence_is_infeasible(lm, prompts):
    r = _replay(lm, prompts, [0, 1], cache_ratio=0.001)
    assert r.feasible_margin_mb > 0
    ok = _replay(lm, prompts, [0, 1])
    assert ok.feasible_margin_mb <= 0
    assert ok.metrics["memory_mb"] == pytest.approx(0.4 * 0.75)
