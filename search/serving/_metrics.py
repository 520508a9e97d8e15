"""Server metrics in Prometheus text format.

LitServe answers HTTP in one process and runs the model in a spawned worker, so what the
worker knows (served version, cache hits, batch sizes) lives in shared memory it writes
and the HTTP process reads; what the HTTP process knows (requests, latency) is kept in an
ordinary prometheus_client registry there. `/metrics` renders both.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = ["SharedStats", "HttpMetrics", "TimingMiddleware"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_HITS, _MISSES, _SWAPS, _BATCHES, _BATCH_SUM = range(5)
_BUCKET0 = 5


class SharedStats:
    """Worker-side counters in shared memory (spawn context: LitServe spawns its worker)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._version = ctx.Value("q", -1)  # -1 until the worker has loaded a model
        self._counts = ctx.Array("d", _BUCKET0 + len(BATCH_BUCKETS))

    @property
    def version(self) -> int:
        return int(self._version.value)

    def set_version(self, version: int, *, swap: bool) -> None:
        with self._counts.get_lock():
            self._version.value = version
            self._counts[_SWAPS] += swap

    def record(self, hits: int, misses: int, batch_sizes: list[int]) -> None:
        with self._counts.get_lock():
            c = self._counts
            c[_HITS] += hits
            c[_MISSES] += misses
            for size in batch_sizes:
                c[_BATCHES] += 1
                c[_BATCH_SUM] += size
                for i, bound in enumerate(BATCH_BUCKETS):
                    if size <= bound:
                        c[_BUCKET0 + i] += 1
                        break

    def collect(self) -> Iterator[Any]:
        """prometheus_client's custom-collector protocol."""
        with self._counts.get_lock():
            c = list(self._counts)
            version = self.version
        yield GaugeMetricFamily("csearch_serve_model_version", "Model version now serving",
                                value=version)
        yield CounterMetricFamily("csearch_serve_cache_hits", "Request items answered from the "
                                  "response cache", value=c[_HITS])
        yield CounterMetricFamily("csearch_serve_cache_misses", "Request items that ran the model",
                                  value=c[_MISSES])
        yield CounterMetricFamily("csearch_serve_model_swaps", "Hot swaps to another version",
                                  value=c[_SWAPS])
        running, buckets = 0.0, []
        for bound, n in zip(BATCH_BUCKETS, c[_BUCKET0:]):
            running += n
            buckets.append((str(float(bound)), running))
        buckets.append(("+Inf", c[_BATCHES]))
        yield HistogramMetricFamily("csearch_serve_batch_size", "Items per forward pass",
                                    buckets=buckets, sum_value=c[_BATCH_SUM])


class HttpMetrics:
    """Requests and their latency, counted where HTTP is answered."""

    def __init__(self, stats: SharedStats) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("csearch_serve_requests", "POST /predict requests by status",
                                ["code"], registry=self.registry)
        self.latency = Histogram("csearch_serve_request_latency_seconds",
                                 "POST /predict latency in the server", registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5,
                                          1, 2, 5))
        self.registry.register(stats)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimingMiddleware:
    """ASGI middleware: count and time every POST /predict, whatever its status."""

    def __init__(self, app: Any, metrics: HttpMetrics, path: str = "/predict") -> None:
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(code=str(status[0])).inc()
            self.metrics.latency.observe(time.perf_counter() - t0)
