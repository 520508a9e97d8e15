"""Server metrics in Prometheus text format, from one in-process registry.

The registry lives at `app.state.registry`; `/metrics` renders it, so every route kind
registers its own gauges and histograms there. `Metrics` holds the common ones: requests
and their latency per timed route (`TimingMiddleware`; a route kind adds its paths to
`Metrics.timed`), the served version and swaps, and the classifier's cache and batches.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "TimingMiddleware", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.timed: set[str] = set()
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.requests = Counter("csearch_serve_requests", "Requests by route and status",
                                ["path", "code"], registry=r)
        self.latency = Histogram("csearch_serve_request_latency_seconds",
                                 "Request latency in the server, by route", ["path"],
                                 registry=r, buckets=LATENCY_BUCKETS)
        self.in_flight = Gauge("csearch_serve_requests_in_flight",
                               "Requests to timed routes being answered now", registry=r)
        self.version = Gauge("csearch_serve_model_version", "Model version now serving",
                             registry=r)
        self.version.set(-1)
        self.swaps = Counter("csearch_serve_model_swaps", "Hot swaps to another version",
                             registry=r)
        self.cache_hits = Counter("csearch_serve_cache_hits",
                                  "Request items answered from the response cache", registry=r)
        self.cache_misses = Counter("csearch_serve_cache_misses",
                                    "Request items that ran the model", registry=r)
        self.batch_size = Histogram("csearch_serve_batch_size", "Items per forward pass",
                                    registry=r, buckets=BATCH_BUCKETS)

    def observe(self, path: str, status: int, seconds: float) -> None:
        """One answered request (the labelled children are looked up once)."""
        key = (path, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(path, str(status)),
                                           self.latency.labels(path))
        child[0].inc()
        child[1].observe(seconds)

    def swapped(self, old: Any, new: Any) -> None:
        """`Versions.on_swap`: the version gauge, and a swap unless it is the first load."""
        self.version.set(new.version)
        if old is not None:
            self.swaps.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimingMiddleware:
    """ASGI middleware: count and time every request to a path in `metrics.timed`."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.metrics.timed:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]
        self.metrics.in_flight.inc()

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(path, status[0], time.perf_counter() - t0)
