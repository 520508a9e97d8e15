"""The engine the server drives is the replay's: same tokens at temperature 0, same
memory split, requests that wait for KV blocks, cancellation that frees blocks."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from objectives.lm.corpus import CharTokenizer
from objectives.lm.engine import GenRequest, SamplingParams
from objectives.lm.model import CausalLM
from objectives.lm.replay import GenerationSettings
from objectives.lm.workload import LMData, make_lm_workload
from objectives.serve import zipf_trace
from search.serving._lm import LMHandle
from search.serving._sources import Loaded
from spaces import Config, QuantConfig, ServeConfig

K = 6
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,."


@pytest.fixture(scope="module")
def workload():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(ALPHABET), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = CausalLM(LlamaForCausalLM(cfg)).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, len(ALPHABET), (n,), generator=g).tolist()
               for n in (9, 21, 30, 14, 25, 17)]
    ids = torch.randint(0, len(ALPHABET), (2000,), generator=g)
    data = LMData(train=ids[:1300].view(20, 65), heldout=ids[:1290].view(10, 129),
                  prompts=prompts)
    return make_lm_workload("t", model, data, memory_budget_mb=0.5,
                            settings=GenerationSettings(new_tokens=K, block_size=8,
                                                        n_requests=12, concurrency=4),
                            extras={"tokenizer": CharTokenizer(ALPHABET)})


def _handle(workload, serve: ServeConfig, kv_bits: int = 16) -> LMHandle:
    config = Config(serve=serve, quant=QuantConfig(kv_bits=kv_bits))
    loaded = Loaded(3, workload.model, workload,
                    {"memory_budget_mb": workload.memory_budget_mb}, config)
    return LMHandle(loaded)


def _generate(handle: LMHandle, prompts, params: SamplingParams, timeout: float = 30.0):
    """Submit every prompt at once; wait for all; tokens and finish reason per prompt."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    reqs = [handle.submit(list(p), params, lambda ev, i=i: events.put((i, ev)))
            for i, p in enumerate(prompts)]
    out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    done: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(prompts):
        i, (kind, payload) = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if kind == "token":
            out[i].append(payload)
        else:
            done[i] = payload
    return reqs, [out[i] for i in range(len(prompts))], [done[i] for i in range(len(prompts))]


@pytest.mark.parametrize("kv_bits", [16, 8])
def test_served_greedy_tokens_equal_the_replay(workload, kv_bits):
    serve = ServeConfig(batch_size=4, cache_ratio=0.3, memory_ratio=0.05)
    config = Config(serve=serve, quant=QuantConfig(kv_bits=kv_bits))
    replay = workload.serve(workload.model, config, budget_bytes=500_000, weight_bytes=0,
                            device=torch.device("cpu"), seed=0)
    handle = _handle(workload, serve, kv_bits)
    try:
        trace = zipf_trace(len(workload.extras["lm_data"].prompts), 12, 1.1, 0)
        prompts = workload.extras["lm_data"].prompts
        _, got, reasons = _generate(handle, [prompts[i] for i in trace],
                                    SamplingParams(max_tokens=K))
        assert [tuple(g) for g in got] == list(replay.outputs)
        assert set(reasons) == {"length"}
        for s in replay.samples():
            assert got[list(trace).index(s["prompt"])] == s["tokens"]
        assert handle.engine.pool.in_use == 0
    finally:
        handle.close()


def test_the_server_pool_is_the_trials_split(workload):
    serve = ServeConfig(batch_size=4, cache_ratio=0.3, memory_ratio=0.05)
    handle = _handle(workload, serve)
    try:
        config = Config(serve=serve)
        replay = workload.serve(workload.model, config, budget_bytes=500_000, weight_bytes=0,
                                device=torch.device("cpu"), seed=0)
        assert handle.engine.pool.n_blocks == replay.pool.n_blocks
        assert handle.engine.cap == 4
        # a request the pool can never hold is refused up front, with the limit named
        why = handle.check([1] * 10, 10_000)
        assert why and "max_tokens" in why
        assert handle.check([1] * 10, 8) is None
    finally:
        handle.close()


def test_requests_wait_for_blocks_and_a_cancel_frees_them_at_once(workload):
    # A pool that holds exactly one 30-token prompt + 6 tokens (5 blocks of 8).
    serve = ServeConfig(batch_size=8, cache_ratio=0.0, memory_ratio=0.05)
    handle = _handle(workload, serve)
    try:
        assert handle.engine.pool.n_blocks == 5
        prompts = workload.extras["lm_data"].prompts
        _, got, _ = _generate(handle, [prompts[2]] * 3, SamplingParams(max_tokens=K))
        assert handle.engine.max_running == 1 and all(len(g) == K for g in got)

        events: queue.SimpleQueue = queue.SimpleQueue()
        req = handle.submit(list(prompts[2]), SamplingParams(max_tokens=36 - 30 + 1 - 1),
                            events.put)
        assert events.get(timeout=10)[0] == "token"
        handle.cancel(req)
        while (ev := events.get(timeout=10))[0] == "token":
            pass
        assert ev == ("done", "abort")
        deadline = time.monotonic() + 1.0
        while handle.runner.stats.blocks_in_use and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.runner.stats.blocks_in_use == 0
    finally:
        handle.close()


def test_sampling_is_seeded_and_temperature_zero_is_greedy(workload):
    handle = _handle(workload, ServeConfig(batch_size=4, cache_ratio=0.3, memory_ratio=0.05))
    try:
        p = workload.extras["lm_data"].prompts[1]
        hot = SamplingParams(max_tokens=12, temperature=1.5, top_p=0.9, seed=7)
        _, a, _ = _generate(handle, [p, p], hot)
        assert a[0] == a[1]  # same seed, same tokens
        _, b, _ = _generate(handle, [p], SamplingParams(max_tokens=12, temperature=1.5,
                                                        seed=8))
        _, g, _ = _generate(handle, [p], SamplingParams(max_tokens=12))
        assert b[0] != a[0] and a[0] != g[0]  # seeded sampling, not argmax
        t = g[0][2]
        stop = SamplingParams(max_tokens=12, stop_ids=frozenset([t]))
        _, s, reasons = _generate(handle, [p], stop)
        assert s[0] == g[0][:g[0].index(t) + 1] and reasons == ["stop"]
    finally:
        handle.close()


def test_an_empty_prompt_is_not_a_request():
    with pytest.raises(ValueError):
        GenRequest([])
