"""The generation engine: continuous batching over a paged, prefix-caching KV block pool.

One engine, two drivers. The serve replay (`replay.py`) feeds it a seeded Zipf trace from
closed-loop clients and sums the measured step times; the server
(`search.serving`) feeds it live requests from a thread. Both run exactly this
scheduling, so what the search measured is what is served.

Scheduling, at every step (a token boundary):
- Admission: waiting requests join in arrival order while the running batch is below its
  cap (`serve.batch_size`) and the pool can hold the request's whole sequence (prompt +
  max_tokens - 1 tokens); its cached prefix blocks are taken back instead of allocated.
  A request that does not fit waits; nothing is preempted.
- One forward pass feeds every running sequence its next token(s): one for a decoding
  sequence, a chunk of its prompt for a prefilling one, at most `token_budget` tokens (what
  the activation workspace S_mem holds) through the linear layers together.
- A sequence leaves at the step that produces its last token (max_tokens, or a stop
  token), or when it is aborted; its blocks are freed at once and its full prompt blocks
  stay cached (LRU) for later prompts with the same prefix.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spaces import ServeConfig

from ..serve import activation_bytes_per_sample
from .blocks import BlockPool, prefix_hashes
from .kv import kv_bytes_per_token
from .model import decoder_forward, lm_logits, lm_shape

__all__ = ["Engine", "EngineSizing", "GenRequest", "SamplingParams", "StepResult", "blocks_for",
           "build_engine", "size_engine"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen. `temperature` 0 is greedy (argmax)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()  # e.g. the tokenizer's end-of-sequence id


@dataclass(eq=False)
class GenRequest:
    """One sequence in the engine: its tokens, its block table and where it stands."""

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    tag: object = None  # the driver's own (a replay client, a server stream)
    arrival: float = 0.0
    tokens: list[int] = field(init=False)
    blocks: list[int] = field(default_factory=list, init=False)
    hashes: list[bytes] = field(default_factory=list, init=False)
    computed: int = field(default=0, init=False)  # tokens whose K/V are in the pool
    reused: int = field(default=0, init=False)  # prompt tokens read from cached blocks
    finish_reason: str | None = field(default=None, init=False)  # length | stop | abort
    first: float = field(default=0.0, init=False)
    end: float = field(default=0.0, init=False)
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a prompt needs at least one token")
        self.tokens = list(self.prompt)
        if self.params.temperature > 0:
            self._gen = torch.Generator()
            if self.params.seed is not None:
                self._gen.manual_seed(int(self.params.seed))
            else:
                self._gen.seed()

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def output(self) -> list[int]:
        return self.tokens[len(self.prompt):]


@dataclass(frozen=True)
class StepResult:
    """What one step did: tokens emitted (in order), sequences finished, forward time."""

    emitted: list[tuple[GenRequest, int]]
    finished: list[GenRequest]
    seconds: float
    tokens: int  # tokens fed through the model


def blocks_for(prompt_len: int, max_tokens: int, block_size: int) -> int:
    """Blocks a sequence holds while it runs: its prompt and every generated token but
    the last (whose K/V are never needed)."""
    return math.ceil((prompt_len + max_tokens - 1) / block_size)


def _paged_attention(pool: BlockPool, spans: list[tuple[GenRequest, int, int]]):
    """Attention of each span's new tokens over its sequence's cached + new K/V, for all
    sequences of the step at once: one indexed write of the new K/V, one gather of every
    sequence's keys (padded to the longest), one masked attention call per layer."""
    starts = [seq.computed for seq, _, _ in spans]
    n_new = [b - a for _, a, b in spans]
    lengths = [c + n for c, n in zip(starts, n_new)]
    blocks = [seq.blocks for seq, _, _ in spans]
    read = pool.table(blocks, lengths)  # [S, L]
    write = torch.cat([read[i, c:c + n] for i, (c, n) in enumerate(zip(starts, n_new))])
    t_max, width = max(n_new), read.shape[1]
    t = torch.arange(t_max)
    n = torch.tensor(n_new)
    q_valid = t[None, :] < n[:, None]  # [S, Tq]
    # Query rows: span i's t-th new token is row a_i + t; padding repeats its last row.
    rows = torch.tensor([a for _, a, _ in spans])[:, None] + torch.minimum(t[None, :],
                                                                         n[:, None] - 1)
    pos = torch.tensor(starts)[:, None] + torch.minimum(t[None, :], n[:, None] - 1)
    mask = torch.arange(width)[None, None, :] <= pos[:, :, None]  # causal, [S, Tq, L]
    device = pool.codes.device
    write, read, rows, mask, q_valid = (x.to(device) for x in (write, read, rows, mask,
                                                                q_valid))

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pool.write_slots(layer, write, k.transpose(0, 1), v.transpose(0, 1))
        keys, values = pool.read_slots(layer, read)  # [S, L, nkv, hd]
        qs = q.transpose(0, 1)[rows].transpose(1, 2)  # [S, nh, Tq, hd]
        out = F.scaled_dot_product_attention(
            qs, keys.transpose(1, 2).to(q.dtype), values.transpose(1, 2).to(q.dtype),
            attn_mask=mask[:, None], enable_gqa=q.shape[0] != keys.shape[2])
        return out.transpose(1, 2)[q_valid].transpose(0, 1)  # [nh, T, hd]
    return attend


def _choose(logits: torch.Tensor, seqs: Sequence[GenRequest]) -> list[int]:
    """Next token per row: argmax for greedy rows, nucleus sampling for the others."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.temperature <= 0:
            out.append(int(greedy[row]))
            continue
        probs = torch.softmax(logits[row].float().cpu() / p.temperature, -1)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # the first always stays
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        out.append(int(torch.multinomial(probs, 1, generator=seq._gen)))
    return out


class Engine:
    """The scheduler over one model and one block pool (not thread-safe: one driver)."""

    def __init__(self, model: nn.Module, pool: BlockPool, *, cap: int, token_budget: int,
                 device: torch.device | str = "cpu"):
        self.model, self.pool = model, pool
        self.cap, self.token_budget = max(1, int(cap)), max(1, int(token_budget))
        self.device = torch.device(device)
        self.waiting: deque[GenRequest] = deque()
        self.running: list[GenRequest] = []
        self.max_running = 0
        self.prefix_hits = 0  # admitted requests that reused at least one cached block

    # -- the queue ----------------------------------------------------------------------
    def fits(self, prompt_len: int, max_tokens: int) -> bool:
        """Whether the whole pool could ever hold such a sequence (else it waits forever)."""
        return blocks_for(prompt_len, max_tokens, self.pool.block_size) <= self.pool.n_blocks

    def add(self, seq: GenRequest) -> None:
        self.waiting.append(seq)

    def abort(self, seq: GenRequest) -> None:
        """Drop a waiting or running sequence now; its blocks go back to the pool."""
        if seq in self.running:
            self.running.remove(seq)
            self._free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.finish_reason = seq.finish_reason or "abort"

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def _free(self, seq: GenRequest) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []

    def _admit(self) -> None:
        bs = self.pool.block_size
        while self.waiting and len(self.running) < self.cap:
            seq = self.waiting[0]
            need = blocks_for(len(seq.prompt), seq.params.max_tokens, bs)
            # The last prompt token is always computed: its logits give the first token.
            seq.hashes = prefix_hashes(seq.prompt[:-1], bs)
            hit = self.pool.lookup(seq.hashes)
            if need - len(hit) > self.pool.available:
                self.pool.release(hit)
                break
            seq.blocks = hit + self.pool.allocate(need - len(hit))
            seq.computed = seq.reused = len(hit) * bs
            self.prefix_hits += bool(hit)
            self.waiting.popleft()
            self.running.append(seq)
        self.max_running = max(self.max_running, len(self.running))

    def _spans(self) -> list[tuple[GenRequest, int, int]]:
        spans, used = [], 0
        decoding = [s for s in self.running if s.computed >= len(s.prompt)]
        prefilling = [s for s in self.running if s.computed < len(s.prompt)]
        for seq in decoding + prefilling:
            n = len(seq.tokens) - seq.computed if seq.computed >= len(seq.prompt) else min(
                len(seq.prompt) - seq.computed, self.token_budget - used)
            if n <= 0:
                continue
            spans.append((seq, used, used + n))
            used += n
            if used >= self.token_budget:
                break
        return spans

    # -- one step -----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> StepResult | None:
        """Admit what fits, then run one forward pass; None when nothing can run."""
        self._admit()
        if not self.running:
            return None
        spans = self._spans()
        tokens = torch.tensor([t for s, a, b in spans
                               for t in s.tokens[s.computed:s.computed + b - a]],
                              device=self.device)
        positions = torch.cat([torch.arange(s.computed, s.computed + b - a)
                               for s, a, b in spans]).to(self.device)
        t0 = time.perf_counter()
        hidden = decoder_forward(self.model, tokens, positions,
                                 _paged_attention(self.pool, spans))
        ends = [(s, b - 1) for s, a, b in spans if s.computed + b - a == len(s.tokens)]
        chosen: list[int] = []
        if ends:
            logits = lm_logits(self.model, hidden[[row for _, row in ends]])
            chosen = _choose(logits, [s for s, _ in ends])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        for seq, a, b in spans:
            seq.computed += b - a
            full = min(seq.computed, len(seq.prompt) - 1) // self.pool.block_size
            for j in range(min(full, len(seq.hashes))):
                self.pool.register(seq.blocks[j], seq.hashes[j])
        emitted, finished = [], []
        for (seq, _), tok in zip(ends, chosen):
            seq.tokens.append(int(tok))
            emitted.append((seq, int(tok)))
            if seq.generated >= seq.params.max_tokens or tok in seq.params.stop_ids:
                seq.finish_reason = "length" if tok not in seq.params.stop_ids else "stop"
                self.running.remove(seq)
                self._free(seq)
                finished.append(seq)
        return StepResult(emitted, finished, seconds, len(tokens))


@dataclass(frozen=True)
class EngineSizing:
    """A memory budget split as the trial's serve config says: S_cache bytes of KV blocks,
    S_mem bytes of activation workspace (the token budget of one step)."""

    s_cache: int
    s_mem: int
    block_bytes: int
    n_blocks: int  # S_cache // block_bytes (0 when not even one block fits)
    act_per_token: int  # activation bytes one token needs, measured with forward hooks
    token_budget: int  # S_mem // act_per_token (0 when not even one token fits)


def size_engine(model: nn.Module, cfg: ServeConfig, *, kv_bits: int, budget_bytes: int,
                block_size: int, sample_prompt: Sequence[int],
                device: torch.device | str = "cpu") -> EngineSizing:
    """S_cache = round(S_total x cache_ratio), S_mem = round(S_total x memory_ratio), and
    what each holds for this (possibly pruned) model and KV format."""
    device = torch.device(device)
    shape = lm_shape(model)
    block_bytes = block_size * kv_bytes_per_token(shape.n_layers, shape.n_kv_heads,
                                                  shape.head_dim, kv_bits)
    s_cache = round(budget_bytes * cfg.cache_ratio)
    s_mem = round(budget_bytes * cfg.memory_ratio)
    x = torch.tensor([list(sample_prompt)], device=device)
    act = math.ceil(activation_bytes_per_sample(model, x, device) / len(sample_prompt))
    return EngineSizing(s_cache, s_mem, block_bytes, s_cache // block_bytes, act, s_mem // act)


def build_engine(model: nn.Module, sizing: EngineSizing, cfg: ServeConfig, *, kv_bits: int,
                 block_size: int, min_blocks: int = 0,
                 device: torch.device | str = "cpu") -> Engine:
    """The engine of a sizing: a pool of its blocks (at least `min_blocks`, so an
    infeasible split still runs), its token budget (at least 1), the batch cap."""
    shape = lm_shape(model)
    pool = BlockPool(max(sizing.n_blocks, min_blocks), block_size, shape.n_layers,
                     shape.n_kv_heads, shape.head_dim, kv_bits, device)
    return Engine(model, pool, cap=cfg.batch_size, token_budget=max(sizing.token_budget, 1),
                  device=device)
