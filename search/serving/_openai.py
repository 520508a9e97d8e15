"""The OpenAI HTTP API for language model versions, on the trial's engine.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (when the tokenizer has a chat
template), `GET /v1/models`. Parameters: `max_tokens`, `temperature`, `top_p`, `seed`,
`stop`, `stream` (server-sent events in OpenAI's chunk format, ending `data: [DONE]`),
`stream_options.include_usage`, and vLLM's `ignore_eos`. `prompt` may be text or token
ids, as in OpenAI's API. `system_fingerprint` names the version that generated the
tokens: one request runs on one version from its first token to its last, even when
`promote` or `rollback` moves the server to another one meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from objectives.lm.engine import SamplingParams

from ._errors import error_response
from ._lm import LMHandle, LoopSink

__all__ = ["mount_openai"]

_TOKEN_BUCKETS = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI's other fields (user, ...) are fine

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever comes


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)


def _error(status: int, message: str, param: str | None = None,
           code: str | int | None = None) -> Response:
    return error_response(status, message, param=param, code=code)


class _Rejected(Exception):
    def __init__(self, response: Response):
        self.response = response


class _Metrics:
    """Engine gauges (KV blocks, sequences, prefix hits) and token-time histograms."""

    def __init__(self, app: FastAPI, versions: Any):
        self.versions = versions
        reg = app.state.registry
        self.ttft = Histogram("csearch_serve_time_to_first_token_seconds",
                              "Time from request to its first generated token",
                              buckets=_TOKEN_BUCKETS, registry=reg)
        self.tpot = Histogram("csearch_serve_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per request",
                              buckets=_TOKEN_BUCKETS, registry=reg)
        reg.register(self)

    def collect(self) -> Any:
        h: LMHandle = self.versions.current
        s = h.runner.stats
        for name, doc, value in (
                ("kv_blocks_total", "KV-cache blocks in the pool", s.blocks_total),
                ("kv_blocks_in_use", "KV-cache blocks held by sequences", s.blocks_in_use),
                ("running_sequences", "Sequences in the running batch", s.running),
                ("waiting_sequences", "Requests waiting for KV blocks or a batch slot",
                 s.waiting)):
            yield GaugeMetricFamily(f"csearch_serve_{name}", doc, value=value)
        yield CounterMetricFamily("csearch_serve_prefix_cache_hits",
                                  "Requests that reused cached prompt blocks",
                                  value=s.prefix_hits)


class _Generation:
    """One request's run on one pinned version: tokens in, text deltas out."""

    def __init__(self, handle: LMHandle, prompt: list[int], body: _Body):
        self.handle, self.prompt = handle, prompt
        self.max_tokens = body.max_completion_tokens or body.max_tokens or 16
        self.stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        self.stops = [s for s in self.stops if s]
        codec = handle.codec
        self.params = SamplingParams(
            max_tokens=self.max_tokens, temperature=body.temperature, top_p=body.top_p,
            seed=body.seed, stop_ids=frozenset() if body.ignore_eos else codec.eos_ids)
        self.decoder = handle.codec.decoder()
        self.text = ""  # decoded so far (up to a stop string)
        self.sent = 0  # characters of `text` already sent
        self.finish: str | None = None
        self.stopped_by_string = False
        self.req: Any = None
        self.t0 = time.perf_counter()
        self.first: float | None = None

    @property
    def ids(self) -> list[int]:
        """The tokens generated so far."""
        return self.decoder.ids

    def start(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.req = self.handle.submit(self.prompt, self.params,
                                      LoopSink(asyncio.get_running_loop(), q))
        return q

    def take(self, events: list[tuple[str, Any]]) -> str:
        """Fold engine events in; return the text that may be sent now."""
        new: list[int] = []
        for kind, payload in events:
            if self.finish is not None:  # e.g. the abort that follows a stop string
                break
            if kind == "token":
                if self.first is None:
                    self.first = time.perf_counter()
                new.append(int(payload))
            elif kind == "error":
                raise RuntimeError(payload)
            else:
                self.finish = "stop" if payload == "stop" else "length"
        if not self.stopped_by_string:
            self.text = self.decoder.push(new)
            for s in self.stops:
                at = self.text.find(s)
                if at >= 0:
                    self.text, self.stopped_by_string = self.text[:at], True
                    if self.finish is None:
                        self.handle.cancel(self.req)
                    self.finish = "stop"
        hold = 0
        if self.finish is None:  # text that may still become a stop string or a character
            hold = max((len(s) - 1 for s in self.stops), default=0)
            if self.text.endswith("\ufffd"):
                hold = max(hold, 1)
        end = max(self.sent, len(self.text) - hold)
        delta, self.sent = self.text[self.sent:end], end
        return delta

    async def events(self, q: asyncio.Queue) -> list[tuple[str, Any]]:
        out = [await q.get()]
        while not q.empty():
            out.append(q.get_nowait())
        return out

    def usage(self) -> dict[str, int]:
        n = len(self.ids)
        return {"prompt_tokens": len(self.prompt), "completion_tokens": n,
                "total_tokens": len(self.prompt) + n}


def mount_openai(app: FastAPI, versions: Any, name: str) -> None:
    """Add the OpenAI routes for model `name` served from `versions` (LMHandle versions)."""
    metrics = _Metrics(app, versions)
    app.state.metrics.timed.update({"/v1/completions", "/v1/chat/completions"})

    def prompt_ids(handle: LMHandle, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise _Rejected(_error(400, f"prompt holds {len(prompt)} prompts; this "
                                       "server takes one prompt per request", param="prompt"))
            prompt = prompt[0]
        ids = handle.codec.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise _Rejected(_error(400, "prompt is empty; send at least one token of text",
                                   param="prompt"))
        bad = [i for i in ids if not 0 <= int(i) < handle.codec.vocab_size]
        if bad:
            raise _Rejected(_error(400, f"prompt token id {bad[0]} is outside the vocabulary "
                                   f"(0..{handle.codec.vocab_size - 1})", param="prompt"))
        return [int(i) for i in ids]

    def check_model(body: _Body) -> None:
        if body.model != name:
            raise _Rejected(_error(404, f"The model {body.model!r} does not exist; this server "
                                   f"serves {name!r}", param="model", code="model_not_found"))

    async def run(body: _Body, chat: bool) -> Response:
        stack = contextlib.ExitStack()
        try:
            check_model(body)
            handle: LMHandle = stack.enter_context(versions.pin())
            if chat:
                if not handle.codec.chat_template:
                    raise _Rejected(_error(400, f"model {name!r} has no chat template in its "
                                           "tokenizer; use POST /v1/completions",
                                           param="messages"))
                ids = handle.codec.chat([m.model_dump() for m in body.messages])
            else:
                ids = prompt_ids(handle, body.prompt)
            gen = _Generation(handle, ids, body)
            why = handle.check(ids, gen.max_tokens)
            if why:
                raise _Rejected(_error(400, why, param="max_tokens"))
            q = gen.start()
        except _Rejected as e:
            stack.close()
            return e.response
        except BaseException:
            stack.close()
            raise
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": name,
                "system_fingerprint": f"csearch-v{handle.version}"}
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))

            async def release() -> None:
                """Also after a stream that never started (a client gone at once): the
                pin and the sequence are let go; a second call does nothing. A coroutine,
                so Starlette runs it on the loop, not through its thread pool (a thread
                hand-off per request)."""
                if gen.finish is None:
                    gen.finish = "abort"
                    handle.cancel(gen.req)
                stack.close()

            return StreamingResponse(_stream(gen, q, stack, head, chat, usage, metrics),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(release))
        with stack:
            try:
                while gen.finish is None:
                    gen.take(await gen.events(q))
            except RuntimeError as e:
                return error_response(500, f"generation failed: {e}")
            finally:
                if gen.finish is None:
                    handle.cancel(gen.req)
        _observe(metrics, gen)
        text = gen.text
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": gen.finish, "logprobs": None} if chat else
            {"index": 0, "text": text, "finish_reason": gen.finish, "logprobs": None})
        return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                             "choices": [choice], "usage": gen.usage()})

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Response:
        return await run(body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody) -> Response:
        return await run(body, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        h = versions.current
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": "csearch", "version": h.version}]}


def _observe(metrics: _Metrics, gen: _Generation) -> None:
    if gen.first is not None:
        metrics.ttft.observe(gen.first - gen.t0)
        if len(gen.ids) > 1:
            metrics.tpot.observe((time.perf_counter() - gen.first) / (len(gen.ids) - 1))


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(gen: _Generation, q: asyncio.Queue, stack: contextlib.ExitStack,
                  head: dict[str, Any], chat: bool, usage: bool, metrics: _Metrics
                  ) -> AsyncIterator[bytes]:
    """SSE chunks as tokens come; the version stays pinned until the last one. A client
    that goes away cancels its sequence, which frees its KV blocks at the next step."""
    # A text chunk is this request's constant head around the new text: only the text is
    # encoded per token.
    c0 = {"index": 0, "delta": {"content": "\x00"}, "finish_reason": None,
          "logprobs": None} if chat else {"index": 0, "text": "\x00", "finish_reason": None,
                                          "logprobs": None}
    before, after = _sse({**head, "choices": [c0]}).split(b'"\\u0000"')

    def chunk(delta: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            c = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            c = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return _sse({**head, "choices": [c]})

    try:
        with stack:
            if chat:
                yield chunk("", None, role=True)
            while True:
                try:
                    delta = gen.take(await gen.events(q))
                except RuntimeError as e:
                    yield _sse({"error": {"message": f"generation failed: {e}",
                                          "type": "server_error", "param": None, "code": None}})
                    return
                if gen.finish is not None:
                    break
                if delta:  # a client that goes away cancels this generator (Starlette)
                    yield before + json.dumps(delta).encode() + after
            yield chunk(delta, gen.finish)
            _observe(metrics, gen)
            if usage:
                yield _sse({**head, "choices": [], "usage": gen.usage()})
            yield b"data: [DONE]\n\n"
    finally:
        if gen.finish is None:
            gen.handle.cancel(gen.req)
