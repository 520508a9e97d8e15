"""A language model version as the server holds it: the trial's engine on its own thread.

`LMHandle(loaded)` sizes the engine exactly as the trial's replay did
(`objectives.lm.size_engine`: S_cache bytes of KV blocks, S_mem of workspace, the batch
cap, `quant.kv_bits`, threads) and runs `objectives.lm.Engine` on one thread. Requests
come in from the event loop (`submit`, `cancel`: thread-safe), join the running batch at
the next token boundary and send their tokens back through a callback. A cancelled
request (a client that went away) leaves the batch, and its blocks go back to the pool,
at the next boundary.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from objectives.lm import CharTokenizer
from objectives.lm.engine import (
    Engine,
    GenRequest,
    SamplingParams,
    blocks_for,
    build_engine,
    size_engine,
)
from spaces import Config, ServeConfig

from ._sources import Loaded

__all__ = ["Codec", "EngineRunner", "Event", "LMHandle", "LoopSink"]

log = logging.getLogger(__name__)

# (kind, payload): ("token", id) for each generated token, then ("done", finish_reason).
Event = tuple[str, Any]


@dataclass(frozen=True)
class LoopSink:
    """A request's events for an asyncio queue: all the events of one step reach their
    loop in one wake-up (one `call_soon_threadsafe`), not one per token."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


# Where a request's events go: a LoopSink, or any callable (called on the engine thread).
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


@dataclass
class _Stats:
    """What /metrics reads (written by the engine thread, read anywhere: plain ints)."""

    blocks_total: int = 0
    blocks_in_use: int = 0
    running: int = 0
    waiting: int = 0
    prefix_hits: int = 0


class EngineRunner:
    """One thread that owns an `Engine`: everything the engine does happens there."""

    def __init__(self, engine: Engine, threads: int,
                 on_step: Callable[[EngineRunner], None] | None = None):
        self.engine, self.threads, self.on_step = engine, max(1, int(threads)), on_step
        self.stats = _Stats(blocks_total=engine.pool.n_blocks)
        self._inbox: queue.SimpleQueue[tuple[str, GenRequest, Sink | None]] = \
            queue.SimpleQueue()
        self._sinks: dict[int, Sink] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="csearch-engine", daemon=True)
        self._thread.start()

    def submit(self, req: GenRequest, sink: Sink) -> None:
        self._inbox.put(("add", req, sink))

    def cancel(self, req: GenRequest) -> None:
        self._inbox.put(("abort", req, None))

    def close(self, timeout: float = 0.0) -> None:
        """Stop the thread at its next token boundary. Without a `timeout` it does not
        wait: a version is closed on the event loop when its last stream ends."""
        self._stop.set()
        self._inbox.put(("stop", None, None))  # type: ignore[arg-type]
        if timeout:
            self._thread.join(timeout)

    def _take(self, block: bool, out: list[tuple[Sink, Event]]) -> None:
        """Apply what the event loop sent: new requests, cancellations."""
        while True:
            try:
                op, req, sink = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if op == "add":
                req.arrival = time.perf_counter()
                self._sinks[id(req)] = sink  # type: ignore[assignment]
                self.engine.add(req)
            elif op == "abort" and id(req) in self._sinks:
                self.engine.abort(req)
                out.append((self._sinks.pop(id(req)), ("done", "abort")))

    def _publish(self) -> None:
        e, s = self.engine, self.stats
        s.blocks_in_use, s.running, s.waiting = e.pool.in_use, len(e.running), len(e.waiting)
        s.prefix_hits = e.prefix_hits

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            out: list[tuple[Sink, Event]] = []
            try:
                self._take(self.engine.idle, out)
                if self.engine.idle:
                    self._publish()
                    continue
                step = self.engine.step()
                self._publish()
                if self.on_step is not None:
                    self.on_step(self)
                if step is None:  # cannot happen for a request that `fits`; never spin
                    time.sleep(0.001)
                    continue
                for seq, tok in step.emitted:
                    sink = self._sinks.get(id(seq))
                    if sink is not None:
                        out.append((sink, ("token", tok)))
                for seq in step.finished:
                    sink = self._sinks.pop(id(seq), None)
                    if sink is not None:
                        out.append((sink, ("done", seq.finish_reason)))
            except Exception as e:  # a broken step fails its requests, not the server
                log.exception("engine step failed")
                for seq in list(self.engine.running) + list(self.engine.waiting):
                    self.engine.abort(seq)
                    sink = self._sinks.pop(id(seq), None)
                    if sink is not None:
                        out.append((sink, ("error", f"{type(e).__name__}: {e}")))
                self._publish()
            finally:
                _deliver(out)


class LMHandle:
    """A served LM version: its codec, its limits and its engine thread (`close()` stops
    the thread once no stream is pinned to this version)."""

    def __init__(self, loaded: Loaded, device: torch.device | str = "cpu",
                 on_step: Callable[[EngineRunner], None] | None = None):
        w = loaded.workload
        self.version = loaded.version
        self.model = loaded.model
        config = loaded.config or Config()
        serve = ServeConfig(**{k: v for k, v in loaded.serve.items()
                               if k in ServeConfig.__dataclass_fields__})
        if loaded.config is not None:
            serve = config.serve
        self.kv_bits = int(config.quant.kv_bits)
        settings = w.extras["generation"]
        data = w.extras["lm_data"]
        self.settings = settings
        self._warm_prompt = list(data.prompts[0])
        budget = int(float(loaded.serve.get("memory_budget_mb") or w.memory_budget_mb or 0) * 1e6)
        sizing = size_engine(self.model, serve, kv_bits=self.kv_bits, budget_bytes=budget,
                             block_size=settings.block_size, sample_prompt=data.prompts[0],
                             device=device)
        longest = max(len(p) for p in data.prompts)
        engine = build_engine(self.model, sizing, serve, kv_bits=self.kv_bits,
                              block_size=settings.block_size,
                              min_blocks=blocks_for(longest, settings.new_tokens,
                                                    settings.block_size),
                              device=device)
        vocab = int(self.model.lm.get_input_embeddings().weight.shape[0])
        self.codec = Codec(w.extras["tokenizer"], vocab)
        cfg = self.model.lm.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None)
                                 or getattr(cfg, "n_positions", 1024))
        self._warm(device)
        self.runner = EngineRunner(engine, serve.threads, on_step)

    @torch.inference_mode()
    def _warm(self, device: torch.device | str) -> None:
        """One forward pass before the first request (lazy kernel setup)."""
        from objectives.lm.model import decoder_forward, full_attention

        x = torch.tensor(self._warm_prompt, device=device)
        decoder_forward(self.model, x, torch.arange(len(x), device=device),
                        full_attention(self.kv_bits))

    @property
    def engine(self) -> Engine:
        return self.runner.engine

    def check(self, prompt: list[int], max_tokens: int) -> str | None:
        """Why this version can never serve such a request, or None."""
        if len(prompt) + max_tokens > self.max_positions:
            return (f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
                    f"model's context of {self.max_positions} tokens")
        if not self.engine.fits(len(prompt), max_tokens):
            pool = self.engine.pool
            most = pool.n_blocks * pool.block_size - len(prompt) + 1
            return (f"max_tokens {max_tokens} with a {len(prompt)}-token prompt needs "
                    f"{blocks_for(len(prompt), max_tokens, pool.block_size)} KV blocks; this "
                    f"version's KV pool holds {pool.n_blocks} blocks of {pool.block_size} "
                    f"tokens, so max_tokens must be at most {max(most, 0)} for this prompt")
        return None

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> GenRequest:
        req = GenRequest(prompt, params)
        self.runner.submit(req, sink)
        return req

    def cancel(self, req: GenRequest) -> None:
        self.runner.cancel(req)

    def close(self) -> None:
        self.runner.close()
