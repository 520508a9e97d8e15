"""Generation serve replay: greedy decoding of a Zipf-skewed prompt trace with continuous
batching over a paged, prefix-caching KV cache, with real forward passes.

Load model: closed loop, `concurrency` clients each with one request in flight. A
client's next request arrives when its previous one ends, but joins no earlier than the
step after next: a real client receives the last token and sends again over the network
while the server has already started the following step (so the predicted TTFT is
what a served client measures, not one step shorter). The
server runs in steps (token boundaries). Before each step, waiting requests join in
arrival order while the running batch is below its cap (`serve.batch_size`) and the
block pool can hold the request's whole sequence (prompt + K - 1 tokens; its cached
prefix blocks are taken back instead of allocated). A step feeds every running sequence
its next token(s): one for a decoding sequence, a chunk of its prompt for a prefilling
one, all sequences' tokens in one pass through the linear layers, at most the token
budget that fits the activation workspace S_mem. A sequence leaves at the step that
produces its K-th token, freeing its blocks (its prompt blocks stay cached, LRU).
Which requests run in which step depends only on the seed and the config; each step's
duration is measured, none is modelled.

Memory: S_cache = round(S_total * cache_ratio) bytes of KV blocks, S_mem =
round(S_total * memory_ratio) of activation workspace. Feasible when packed weights +
S_cache + S_mem <= S_total, the pool holds one longest sequence and S_mem one token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from spaces import ServeConfig

from ..split import SplitNeed, fit_split
from .blocks import BlockPool
from .engine import Engine, GenRequest, SamplingParams, blocks_for, build_engine, size_engine
from .model import decoder_forward, full_attention

__all__ = ["GenerationResult", "GenerationSettings", "generation_replay"]


@dataclass(frozen=True)
class GenerationSettings:
    """Workload-side settings of the replay (not searched)."""

    new_tokens: int = 16  # K, generated greedily per request
    block_size: int = 16  # tokens per KV block
    n_requests: int = 64
    concurrency: int = 16


@dataclass(frozen=True)
class GenerationResult:
    metrics: dict[str, float]
    outputs: tuple[tuple[int, ...], ...]  # generated tokens, per request in trace order
    reused_tokens: tuple[int, ...]  # prompt tokens read from cached blocks, per request
    max_running: int  # peak running sequences
    capacity: int  # sequences the pool and the batch cap allow
    steps: int
    computed_tokens: int  # tokens fed through the model (cached prefixes are not)
    feasible_margin_mb: float  # <= 0 when the memory split fits the budget
    pool: BlockPool  # the block pool as the replay left it
    trace: tuple[int, ...] = ()  # prompt index of each request
    prompts: tuple[tuple[int, ...], ...] = ()  # the replay's distinct prompts
    # (cache_ratio, memory_ratio) served with, when re-split from the sampled one
    serve_split: tuple[float, float] | None = None
    split_need: SplitNeed | None = None  # what any split had to give (budget, weights, least)

    def samples(self, n: int = 8) -> list[dict[str, list[int] | int]]:
        """The tokens generated for the first `n` distinct prompts of the trace: stored on
        the trial, so a server of its model can be checked against what was measured."""
        out: dict[int, list[int]] = {}
        for idx, tokens in zip(self.trace, self.outputs):
            if len(out) < n:
                out.setdefault(int(idx), list(tokens))
        return [{"prompt": k, "prompt_ids": list(self.prompts[k]), "tokens": v}
                for k, v in out.items()]


def generation_replay(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    trace: Sequence[int],
    cfg: ServeConfig,
    *,
    kv_bits: int,
    budget_bytes: int,
    weight_bytes: int,
    device: torch.device | str = "cpu",
    settings: GenerationSettings | None = None,
    resplit: bool = False,
) -> GenerationResult:
    """Replay `trace` (indices into `prompts`) through the KV-cache server.

    `resplit`: a sampled split that breaks the budget while another split fits is replaced
    by the fitting split nearest it (`objectives.split`), reported as `serve_split`; with
    no split fitting, the margin is how far the smallest split that serves is over."""
    device = torch.device(device)
    settings = settings or GenerationSettings()
    bs, k_new = settings.block_size, settings.new_tokens
    sizing = size_engine(model, cfg, kv_bits=kv_bits, budget_bytes=budget_bytes, block_size=bs,
                         sample_prompt=prompts[int(trace[0])], device=device)
    longest = max(len(prompts[int(i)]) for i in trace)
    per_seq = blocks_for(longest, k_new, bs)
    need = SplitNeed(budget_bytes, weight_bytes, per_seq * sizing.block_bytes,
                     sizing.act_per_token)
    split = None
    if resplit:
        cfg, split = fit_split(cfg, need)
        if split is not None:
            s_cache, s_mem = round(budget_bytes * split[0]), round(budget_bytes * split[1])
            sizing = replace(sizing, s_cache=s_cache, s_mem=s_mem,
                             n_blocks=s_cache // sizing.block_bytes,
                             token_budget=s_mem // sizing.act_per_token)
    memory = weight_bytes + sizing.s_cache + sizing.s_mem
    margin = max(memory - budget_bytes,
                 (per_seq - sizing.n_blocks) * sizing.block_bytes
                 if sizing.n_blocks < per_seq else -math.inf,
                 sizing.act_per_token - sizing.s_mem if sizing.token_budget < 1 else -math.inf)
    if resplit and split is None and need.overage_bytes > 0:
        margin = need.overage_bytes  # no split fits: by how much the least that serves is over
    # An infeasible split is still replayed (with the least that runs) so all metrics exist.
    engine = build_engine(model, sizing, cfg, kv_bits=kv_bits, block_size=bs,
                          min_blocks=per_seq, device=device)
    pool = engine.pool
    capacity = min(engine.cap, pool.n_blocks // per_seq)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():
            model.eval()
            warm = torch.tensor(list(prompts[int(trace[0])]), device=device)
            for _ in range(2):
                decoder_forward(model, warm, torch.arange(len(warm), device=device),
                                full_attention(kv_bits))
            run = _Run(engine, prompts, trace, k_new, min(settings.concurrency, len(trace)))
            run.loop()
    finally:
        torch.set_num_threads(old_threads)
    if pool.in_use:
        raise RuntimeError(f"{pool.in_use} KV blocks still in use after the replay")
    out = _result(run, trace, prompts, memory, capacity, margin,
                  (sizing.s_cache, sizing.s_mem))
    return replace(out, serve_split=split, split_need=need)


def _result(run: _Run, trace: Sequence[int], prompts: Sequence[Sequence[int]],
            memory: int, capacity: int, margin: float, split: tuple[int, int]
            ) -> GenerationResult:
    done = sorted(run.done, key=lambda s: s.tag[0])
    ttft = np.array([s.first - s.arrival for s in done]) * 1e3
    latency = np.array([s.end - s.arrival for s in done]) * 1e3
    tpot = np.array([(s.end - s.first) / max(s.generated - 1, 1) for s in done]) * 1e3
    prompt_tokens = sum(len(prompts[int(i)]) for i in trace)
    generated = sum(s.generated for s in done)
    metrics = {
        "ttft_ms": float(np.median(ttft)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "tpot_ms": float(np.median(tpot)),
        "latency_ms": float(np.median(latency)),
        "latency_mean_ms": float(np.mean(latency)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
        # Forward time per token the model computed: what compression changes, whatever
        # the prefix cache spares.
        "model_latency_ms": run.clock / max(run.computed_tokens, 1) * 1e3,
        "throughput_tps": generated / run.clock if run.clock > 0 else 0.0,
        "throughput_rps": len(done) / run.clock if run.clock > 0 else 0.0,
        "prefix_hit_rate": sum(s.reused for s in done) / max(prompt_tokens, 1),
        "cache_hit_rate": float(np.mean([s.reused > 0 for s in done])),
        "max_running": float(run.max_running),
        "max_batch": float(capacity),
        "memory_mb": memory / 1e6,
        "kv_cache_mb": split[0] / 1e6,  # S_cache: the KV block pool's bytes
        "workspace_mb": split[1] / 1e6,  # S_mem: the activation workspace
    }
    return GenerationResult(metrics, tuple(tuple(s.output) for s in done),
                            tuple(s.reused for s in done), run.max_running, capacity,
                            run.steps, run.computed_tokens, float(margin) / 1e6, run.pool,
                            tuple(int(i) for i in trace), tuple(tuple(p) for p in prompts))


class _Run:
    """The replay's driver: closed-loop clients over the engine, on a clock that advances
    by each step's measured forward time."""

    def __init__(self, engine: Engine, prompts: Sequence[Sequence[int]],
                 trace: Sequence[int], k_new: int, clients: int):
        self.engine, self.prompts, self.trace = engine, prompts, trace
        self.pool = engine.pool
        self.params = SamplingParams(max_tokens=k_new)
        self.clock = 0.0
        self.next_pos = 0
        self.done: list[GenRequest] = []
        self.steps = 0
        self.computed_tokens = 0
        for c in range(clients):
            self._issue(c)

    @property
    def max_running(self) -> int:
        return self.engine.max_running

    def _issue(self, client: int, arrival: float | None = None) -> None:
        if self.next_pos < len(self.trace):
            prompt = list(self.prompts[int(self.trace[self.next_pos])])
            self.engine.add(GenRequest(prompt, self.params, tag=(self.next_pos, client),
                                       arrival=self.clock if arrival is None else arrival))
            self.next_pos += 1

    def loop(self) -> None:
        sent: list[tuple[int, float]] = []  # (client, sent at) during the running step
        while not self.engine.idle or sent:
            if self.engine.idle:  # nothing runs: a request sent now starts at once
                for client, at in sent:
                    self._issue(client, at)
                sent = []
                if self.engine.idle:  # the trace is exhausted
                    break
            step = self.engine.step()
            if step is None:
                raise RuntimeError("the KV block pool cannot hold the next request")
            self.clock += step.seconds
            self.steps += 1
            self.computed_tokens += step.tokens
            for client, at in sent:  # arrived while this step ran: join the next one
                self._issue(client, at)
            sent = []
            for seq, _ in step.emitted:
                if seq.generated == 1:
                    seq.first = self.clock
            for seq in step.finished:
                seq.end = self.clock
                self.done.append(seq)
                sent.append((seq.tag[1], self.clock))
