"""Classifier routes: `POST /predict {"inputs": [item, ...]}` ->
`{"outputs": [...], "version": V, "cached": [bool, ...]}`.

A request's items are checked and converted (a bad item is a 400 for its own request
only), on the event loop for a small body and in a worker thread for a large one, and
looked up in the version's response cache. Only misses go
to the version's inference thread (`Batcher`), deduplicated, in batches of at most the
version's max batch; the answer is cached. Every request pins the version it started on,
so a swap never splits a request across versions.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import torch
from fastapi import FastAPI, Request, Response

from objectives.serve import request_key

from ._batcher import Batcher
from ._errors import ApiError
from ._model import BadRequest, prepare, to_items
from ._model import forward as _forward
from ._sources import Loaded
from ._versions import Versions

__all__ = ["ClassifierHandle", "mount_classifier"]

# A body up to this size is parsed on the event loop (~0.1 ms); a larger one in a worker
# thread, where the GIL's switching lets the loop answer small requests meanwhile.
_INLINE_BYTES = 64 * 1024


class ClassifierHandle:
    """One classifier version: model, cache, max batch, threads and inference thread."""

    def __init__(self, loaded: Loaded, app: FastAPI) -> None:
        self.device = torch.device(app.state.device)
        self.served = prepare(loaded, self.device)
        self.version = loaded.version
        self.metrics = app.state.metrics
        self._lock = threading.Lock()  # the cache: read on the loop, filled by the thread
        self._batcher = Batcher(self._run, self.served.max_batch,
                                name=f"csearch-infer-v{loaded.version}",
                                on_batch=self.metrics.batch_size.observe)

    def close(self) -> None:
        self._batcher.close()

    async def predict(self, items: list[torch.Tensor]) -> tuple[list[Any], list[bool]]:
        """Outputs (as lists) and hit flags per item."""
        keys = [request_key(x) for x in items]
        cache = self.served.cache
        with self._lock:
            outs = [cache.get(k) for k in keys]
        cached = [o is not None for o in outs]
        todo: dict[bytes, list[int]] = {}
        for i, o in enumerate(outs):
            if o is None:
                todo.setdefault(keys[i], []).append(i)
        hits = sum(cached)
        if hits:
            self.metrics.cache_hits.inc(hits)
        if todo:
            self.metrics.cache_misses.inc(len(items) - hits)
            future = self._batcher.submit([(k, items[pos[0]]) for k, pos in todo.items()])
            try:
                results = await future
            except asyncio.CancelledError:
                self._batcher.cancel(future)
                raise
            for positions, y in zip(todo.values(), results):
                for i in positions:
                    outs[i] = y
        return [o.tolist() for o in outs], cached

    def _run(self, units: list[tuple[bytes, torch.Tensor]]) -> list[torch.Tensor]:
        """On the inference thread: one forward pass of the distinct units not yet cached
        (a batch often holds the same popular item from several requests)."""
        cache = self.served.cache
        with self._lock:
            known = {k: y for k, _ in units if (y := cache.get(k)) is not None}
        first: dict[bytes, torch.Tensor] = {}
        for k, x in units:
            if k not in known:
                first.setdefault(k, x)
        if first:
            ys = _forward(self.served, list(first.values()), self.device)
            with self._lock:
                for (k, x), y in zip(first.items(), ys):
                    known[k] = y
                    cache.put(k, y, x.numel() * x.element_size() + y.numel() * y.element_size())
        return [known[k] for k, _ in units]


def _inputs(body: bytes, max_items: int) -> list[Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, 'the body must be {"inputs": [item, ...]} with at least one item',
                       param="inputs")
    if len(inputs) > max_items:
        raise ApiError(413, f"{len(inputs)} items is over the limit of {max_items} items per "
                            "request (max_items)", param="max_items")
    return inputs


def _parse(served: Any, body: bytes, max_items: int) -> list[torch.Tensor]:
    try:
        return to_items(served, _inputs(body, max_items))
    except BadRequest as e:
        raise ApiError(400, str(e), param="inputs") from None


def mount_classifier(app: FastAPI, versions: Versions) -> None:
    limits = app.state.limits
    app.state.metrics.timed.add("/predict")

    async def predict(request: Request) -> Response:
        try:
            async with asyncio.timeout(limits.timeout_s):
                body = await request.body()
                with versions.pin() as h:
                    if len(body) <= _INLINE_BYTES:
                        items = _parse(h.served, body, limits.max_items)
                    else:  # off the loop, so small requests go on meanwhile
                        items = await asyncio.to_thread(_parse, h.served, body,
                                                        limits.max_items)
                    outs, cached = await h.predict(items)
        except TimeoutError:
            raise limits.timed_out() from None
        answer = json.dumps({"outputs": outs, "version": h.version, "cached": cached})
        return Response(answer, media_type="application/json")

    # A plain Starlette route: the body is parsed here, so FastAPI's dependency solving
    # (a measurable share of a request's CPU) has nothing to do.
    app.add_route("/predict", predict, methods=["POST"])
