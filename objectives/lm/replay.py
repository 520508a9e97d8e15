"""Generation serve replay: greedy decoding of a Zipf-skewed prompt trace with continuous
batching over a paged, prefix-caching KV cache, with real forward passes.

Load model: closed loop, `concurrency` clients each with one request in flight. The
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
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaces import ServeConfig

from ..serve import activation_bytes_per_sample
from .blocks import BlockPool, prefix_hashes
from .kv import kv_bytes_per_token
from .model import decoder_forward, full_attention, lm_logits, lm_shape

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


class _Seq:
    def __init__(self, pos: int, client: int, prompt: list[int], arrival: float):
        self.pos, self.client, self.prompt, self.arrival = pos, client, prompt, arrival
        self.tokens = list(prompt)
        self.blocks: list[int] = []
        self.hashes: list[bytes] = []
        self.computed = 0  # tokens whose K/V are in the cache
        self.reused = 0
        self.first = 0.0

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt)


def _paged_attention(pool: BlockPool, spans: list[tuple[_Seq, int, int]]):
    """Attention of each span's new tokens over its sequence's cached + new K/V."""

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        for seq, a, b in spans:
            pool.write(layer, seq.blocks, seq.computed, k[:, a:b], v[:, a:b])
            length = seq.computed + (b - a)
            keys, values = pool.read(layer, seq.blocks, length)
            mask = (torch.arange(length, device=q.device)[None, :]
                    <= torch.arange(seq.computed, length, device=q.device)[:, None])
            out[:, a:b] = F.scaled_dot_product_attention(
                q[:, a:b], keys.to(q.dtype), values.to(q.dtype), attn_mask=mask,
                enable_gqa=q.shape[0] != keys.shape[0])
        return out
    return attend


def _act_bytes_per_token(model: nn.Module, prompt: Sequence[int], device: torch.device) -> int:
    x = torch.tensor([list(prompt)], device=device)
    return math.ceil(activation_bytes_per_sample(model, x, device) / len(prompt))


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
) -> GenerationResult:
    """Replay `trace` (indices into `prompts`) through the KV-cache server."""
    device = torch.device(device)
    settings = settings or GenerationSettings()
    shape = lm_shape(model)
    bs, k_new = settings.block_size, settings.new_tokens
    block_bytes = bs * kv_bytes_per_token(shape.n_layers, shape.n_kv_heads, shape.head_dim,
                                          kv_bits)
    s_cache = round(budget_bytes * cfg.cache_ratio)
    s_mem = round(budget_bytes * cfg.memory_ratio)
    longest = max(len(prompts[int(i)]) for i in trace)
    per_seq = math.ceil((longest + k_new - 1) / bs)
    n_blocks = s_cache // block_bytes
    act = _act_bytes_per_token(model, prompts[int(trace[0])], device)
    token_budget = s_mem // act
    memory = weight_bytes + s_cache + s_mem
    margin = max(memory - budget_bytes,
                 (per_seq - n_blocks) * block_bytes if n_blocks < per_seq else -math.inf,
                 act - s_mem if token_budget < 1 else -math.inf)
    # An infeasible split is still replayed (with the least that runs) so all metrics exist.
    pool = BlockPool(max(n_blocks, per_seq), bs, shape.n_layers, shape.n_kv_heads,
                     shape.head_dim, kv_bits, device)
    token_budget = max(token_budget, 1)
    cap = max(1, int(cfg.batch_size))
    capacity = min(cap, pool.n_blocks // per_seq)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():
            model.eval()
            warm = torch.tensor(list(prompts[int(trace[0])]), device=device)
            for _ in range(2):
                decoder_forward(model, warm, torch.arange(len(warm), device=device),
                                full_attention(kv_bits))
            run = _Run(model, prompts, trace, pool, cap, token_budget, k_new, device,
                       min(settings.concurrency, len(trace)))
            run.loop()
    finally:
        torch.set_num_threads(old_threads)
    if pool.in_use:
        raise RuntimeError(f"{pool.in_use} KV blocks still in use after the replay")
    return _result(run, trace, prompts, memory, capacity, margin, (s_cache, s_mem))


def _result(run: _Run, trace: Sequence[int], prompts: Sequence[Sequence[int]],
            memory: int, capacity: int, margin: float, split: tuple[int, int]
            ) -> GenerationResult:
    done = sorted(run.done, key=lambda s: s.pos)
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
    return GenerationResult(metrics, tuple(tuple(s.tokens[len(s.prompt):]) for s in done),
                            tuple(s.reused for s in done), run.max_running, capacity,
                            run.steps, run.computed_tokens, float(margin) / 1e6, run.pool)


class _Run:
    """The scheduler's state over one replay."""

    def __init__(self, model: nn.Module, prompts: Sequence[Sequence[int]],
                 trace: Sequence[int], pool: BlockPool, cap: int, token_budget: int,
                 k_new: int, device: torch.device, clients: int):
        self.model, self.prompts, self.trace, self.pool = model, prompts, trace, pool
        self.cap, self.token_budget, self.k_new, self.device = cap, token_budget, k_new, device
        self.clock = 0.0
        self.next_pos = 0
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.done: list[_Seq] = []
        self.max_running = 0
        self.steps = 0
        self.computed_tokens = 0
        for c in range(clients):
            self._issue(c)

    def _issue(self, client: int) -> None:
        if self.next_pos < len(self.trace):
            prompt = list(self.prompts[int(self.trace[self.next_pos])])
            self.waiting.append(_Seq(self.next_pos, client, prompt, self.clock))
            self.next_pos += 1

    def _admit(self) -> None:
        bs = self.pool.block_size
        while self.waiting and len(self.running) < self.cap:
            seq = self.waiting[0]
            need = math.ceil((len(seq.prompt) + self.k_new - 1) / bs)
            # The last prompt token is always computed: its logits give the first token.
            seq.hashes = prefix_hashes(seq.prompt[:-1], bs)
            hit = self.pool.lookup(seq.hashes)
            if need - len(hit) > self.pool.available:
                self.pool.release(hit)
                break
            seq.blocks = hit + self.pool.allocate(need - len(hit))
            seq.computed = seq.reused = len(hit) * bs
            self.waiting.popleft()
            self.running.append(seq)
        self.max_running = max(self.max_running, len(self.running))

    def _spans(self) -> list[tuple[_Seq, int, int]]:
        spans, used = [], 0
        decoding = [s for s in self.running if s.computed >= len(s.prompt)]
        prefilling = [s for s in self.running if s.computed < len(s.prompt)]
        for seq in decoding + prefilling:
            n = len(seq.tokens) - seq.computed if seq in decoding else min(
                len(seq.prompt) - seq.computed, self.token_budget - used)
            if n <= 0:
                continue
            spans.append((seq, used, used + n))
            used += n
            if used >= self.token_budget:
                break
        return spans

    def loop(self) -> None:
        while self.waiting or self.running:
            self._admit()
            if not self.running:
                raise RuntimeError("the KV block pool cannot hold the next request")
            self._step()

    def _step(self) -> None:
        spans = self._spans()
        tokens = torch.tensor([t for s, a, b in spans for t in s.tokens[s.computed:
                                                                        s.computed + b - a]],
                              device=self.device)
        positions = torch.cat([torch.arange(s.computed, s.computed + b - a) for s, a, b in spans])
        t0 = time.perf_counter()
        hidden = decoder_forward(self.model, tokens, positions.to(self.device),
                                 _paged_attention(self.pool, spans))
        ends = [(s, b - 1) for s, a, b in spans if s.computed + b - a == len(s.tokens)]
        next_tokens = []
        if ends:
            logits = lm_logits(self.model, hidden[[row for _, row in ends]])
            next_tokens = logits.argmax(-1).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.clock += time.perf_counter() - t0
        self.steps += 1
        self.computed_tokens += len(tokens)
        for seq, a, b in spans:
            seq.computed += b - a
            full = min(seq.computed, len(seq.prompt) - 1) // self.pool.block_size
            for j in range(min(full, len(seq.hashes))):
                self.pool.register(seq.blocks[j], seq.hashes[j])
        for (seq, _), tok in zip(ends, next_tokens):
            seq.tokens.append(int(tok))
            if seq.generated == 1:
                seq.first = self.clock
            if seq.generated == self.k_new:
                seq.end = self.clock
                self.pool.release(seq.blocks)
                seq.blocks = []
                self.running.remove(seq)
                self.done.append(seq)
                self._issue(seq.client)
