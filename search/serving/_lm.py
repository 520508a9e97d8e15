"""A language model version as the server holds it: the trial's engine in its own process.

`LMHandle(loaded, device, source)` keeps the codec and the limits in the server and runs
`objectives.lm.Engine` in an engine process (`_engine_proc`), sized exactly as the
trial's replay sized it (`build_served_engine`: S_cache bytes of KV blocks, S_mem of
workspace, the batch cap, `quant.kv_bits`, threads). Requests come in from the event
loop (`submit`, `cancel`: thread-safe), join the running batch at the next token
boundary, and each step's tokens reach their requests' asyncio queues in one wake-up per
loop. A cancelled request (a client that went away) leaves the batch, and its blocks go
back to the pool, at the next boundary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from objectives.lm import CharTokenizer
from objectives.lm.engine import Engine, SamplingParams, blocks_for, build_engine, size_engine
from spaces import Config, ServeConfig

from ._engine_proc import EngineProcess
from ._sources import Loaded

__all__ = ["Codec", "Event", "LMHandle", "LoopSink", "build_served_engine"]

log = logging.getLogger(__name__)

# (kind, payload): ("token", id) for each generated token, then ("done", finish_reason).
Event = tuple[str, Any]


@dataclass(frozen=True)
class LoopSink:
    """A request's events for an asyncio queue: all the events of one step reach their
    loop in one wake-up (one `call_soon_threadsafe`), not one per token."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


# Where a request's events go: a LoopSink, or any callable (called on the thread that
# reads the engine process's messages).
Sink = LoopSink | Callable[[Event], None]


def _put_all(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for q, ev in items:
        q.put_nowait(ev)


def _deliver(out: list[tuple[Sink, Event]]) -> None:
    loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
    for sink, ev in out:
        if isinstance(sink, LoopSink):
            loops.setdefault(sink.loop, []).append((sink.queue, ev))
        else:
            sink(ev)
    for loop, items in loops.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the loop has closed (server shutting down): nobody listens
            pass


class Codec:
    """Text <-> token ids with the workload's own tokenizer (csearch's character tokenizer
    or a Hugging Face one), and what the OpenAI routes need to know about it."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tok = tokenizer
        self.hf = not isinstance(tokenizer, CharTokenizer)
        self.vocab_size = vocab_size
        eos = getattr(tokenizer, "eos_token_id", None) if self.hf else None
        self.eos_ids = frozenset([int(eos)]) if eos is not None else frozenset()
        self.chat_template = getattr(tokenizer, "chat_template", None) if self.hf else None

    def encode(self, text: str) -> list[int]:
        if self.hf:
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        return self.tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        if self.hf:
            return self.tok.decode(ids, skip_special_tokens=True)
        return self.tok.decode(ids)

    def decoder(self) -> TextDecoder:
        """A decoder of one growing sequence, for streaming."""
        return TextDecoder(self)

    def chat(self, messages: list[dict[str, Any]]) -> list[int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer releases
            ids = ids["input_ids"]
        return [int(i) for i in ids]


class TextDecoder:
    """The text of a growing token sequence, decoded incrementally: each new token costs
    a decode of the last few tokens, not of the whole output (a BPE token's text depends
    on its neighbours, and a multi-byte character may span tokens), as vLLM's
    incremental detokenizer does. `text` is always `codec.decode(ids)`."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.ids: list[int] = []
        self._stable = ""  # text of ids[:_read], final
        self._prefix = 0  # context tokens decoded before ids[_read:]
        self._read = 0

    def push(self, new_ids: list[int]) -> str:
        """Append tokens; return the whole text so far."""
        self.ids.extend(new_ids)
        if not self.codec.hf:  # one character per token: nothing to reconcile
            return self.codec.decode(self.ids)
        before = self.codec.decode(self.ids[self._prefix:self._read])
        after = self.codec.decode(self.ids[self._prefix:])
        if not after.startswith(before):  # decoding is not prefix-stable here: start over
            self._stable, self._prefix, self._read = "", 0, 0
            return self.push([])
        tail = after[len(before):]
        if tail.endswith("\ufffd"):  # an unfinished character: keep its tokens pending
            return self._stable + tail
        self._stable += tail
        self._prefix, self._read = max(0, len(self.ids) - 4), len(self.ids)
        return self._stable


def build_served_engine(loaded: Loaded, device: str) -> tuple[Engine, int]:
    """The engine of a version sized exactly as the trial's replay sized it (and its
    intra-op threads), warmed by one forward pass. Runs in the engine process."""
    w = loaded.workload
    model = loaded.model
    config = loaded.config or Config()
    serve = ServeConfig(**{k: v for k, v in loaded.serve.items()
                           if k in ServeConfig.__dataclass_fields__})
    if loaded.config is not None:
        serve = config.serve
    kv_bits = int(config.quant.kv_bits)
    settings = w.extras["generation"]
    data = w.extras["lm_data"]
    budget = int(float(loaded.serve.get("memory_budget_mb") or w.memory_budget_mb or 0) * 1e6)
    sizing = size_engine(model, serve, kv_bits=kv_bits, budget_bytes=budget,
                         block_size=settings.block_size, sample_prompt=data.prompts[0],
                         device=device)
    longest = max(len(p) for p in data.prompts)
    engine = build_engine(model, sizing, serve, kv_bits=kv_bits,
                          block_size=settings.block_size,
                          min_blocks=blocks_for(longest, settings.new_tokens,
                                                settings.block_size),
                          device=device)
    _warm(model, list(data.prompts[0]), kv_bits, device)
    return engine, serve.threads


@torch.inference_mode()
def _warm(model: torch.nn.Module, prompt: list[int], kv_bits: int, device: str) -> None:
    """One forward pass before the first request (lazy kernel setup)."""
    from objectives.lm.model import decoder_forward, full_attention

    x = torch.tensor(prompt, device=device)
    decoder_forward(model, x, torch.arange(len(x), device=device), full_attention(kv_bits))


class LMHandle:
    """A served LM version: its codec and limits here, its engine in a process of its
    own (`EngineProcess`); `close()` stops that process once no stream is pinned to
    this version."""

    def __init__(self, loaded: Loaded, device: torch.device | str, source: Any):
        self.version = loaded.version
        cfg = loaded.model.lm.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None)
                                 or getattr(cfg, "n_positions", 1024))
        vocab = int(loaded.model.lm.get_input_embeddings().weight.shape[0])
        self.codec = Codec(loaded.workload.extras["tokenizer"], vocab)
        # The model itself is loaded again, and only kept, in the engine process.
        self.runner = EngineProcess(loaded, source, str(device),
                                    build_served_engine, _deliver)

    def fits(self, prompt_len: int, max_tokens: int) -> bool:
        """Whether this version's whole KV pool could ever hold such a sequence."""
        r = self.runner
        return blocks_for(prompt_len, max_tokens, r.block_size) <= r.n_blocks

    def check(self, prompt: list[int], max_tokens: int) -> str | None:
        """Why this version can never serve such a request, or None."""
        if len(prompt) + max_tokens > self.max_positions:
            return (f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
                    f"model's context of {self.max_positions} tokens")
        if not self.fits(len(prompt), max_tokens):
            r = self.runner
            most = r.n_blocks * r.block_size - len(prompt) + 1
            return (f"max_tokens {max_tokens} with a {len(prompt)}-token prompt needs "
                    f"{blocks_for(len(prompt), max_tokens, r.block_size)} KV blocks; this "
                    f"version's KV pool holds {r.n_blocks} blocks of {r.block_size} "
                    f"tokens, so max_tokens must be at most {max(most, 0)} for this prompt")
        return None

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a request; the returned id cancels it."""
        return self.runner.submit(prompt, params, sink)

    def cancel(self, rid: int) -> None:
        self.runner.cancel(rid)

    def close(self) -> None:
        self.runner.close()
