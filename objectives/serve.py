"""Serve replay: a seeded request trace through an LRU response cache and a dynamic
batcher, with real forward passes of the compressed model.

Load model: **closed loop**. `concurrency` clients each keep one request in flight and
send the next as soon as the previous is answered. The replay runs in rounds: each client
issues requests until one misses the cache (hits are answered after a real, timed cache
lookup); the round's misses are cut into batches of at most `max_batch` (what fits in
S_mem, capped by `serve.batch_size`) and run back to back. Which requests hit and how
batches form depend only on the seed and the config, never on timing, so the trace is
served once to fix that plan, and then every batch is timed as the median of repeated
forward passes after a warm-up (`timing.py`). Every request, hit or miss, also costs the
real server's per-request overhead (`serve_overhead_ms`), so no latency is below it. The
server spends that overhead serially, one request after another in front of the model (its
HTTP front end and request handling saturate near 1 / overhead requests per second), so
with many clients requests also queue for it. Every duration is measured; only the order
of events is simulated.

Memory: S_cache = round(S_total * cache_ratio) bytes of cached (request, response) pairs,
S_mem = round(S_total * memory_ratio) bytes of activation workspace. Feasible when packed
weights + S_cache + S_mem <= S_total and one sample's activations fit in S_mem.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces import ServeConfig

from ._device import to_device
from .split import SplitNeed, fit_split
from .timing import time_interleaved, warm_up
from .workload import Workload

__all__ = [
    "zipf_trace",
    "LRUCache",
    "activation_bytes_per_sample",
    "max_batch_for",
    "request_key",
    "ServeResult",
    "replay",
]


def zipf_trace(n_distinct: int, n_requests: int, skew: float, seed: int) -> np.ndarray:
    """Request ids with Zipf-skewed popularity: P(rank r) ~ 1 / r**skew, ranks shuffled."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_distinct + 1, dtype=np.float64)
    p = ranks ** (-float(skew))
    p /= p.sum()
    popularity = rng.permutation(n_distinct)  # which request gets which rank
    return popularity[rng.choice(n_distinct, size=n_requests, p=p)]


class LRUCache:
    """Byte-bounded LRU map from request content hash to response."""

    def __init__(self, capacity_bytes: int):
        self.capacity = int(capacity_bytes)
        self.used = 0
        self._items: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()

    def get(self, key: bytes) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: bytes, value: Any, nbytes: int) -> None:
        if nbytes > self.capacity or key in self._items:
            return
        while self.used + nbytes > self.capacity:
            _, (_, old) = self._items.popitem(last=False)
            self.used -= old
        self._items[key] = (value, nbytes)
        self.used += nbytes

    def __len__(self) -> int:
        return len(self._items)


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    return 0


def _tensor_out(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


@torch.inference_mode()
def activation_bytes_per_sample(model: nn.Module, example: Any, device: torch.device) -> int:
    """Bytes of every leaf module's output for one sample, measured with forward hooks."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        total += _nbytes(out)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model(to_device(example, device))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


def max_batch_for(s_mem: int, act_bytes: int, cap: int) -> int:
    """Largest batch whose activations fit in S_mem, capped by `serve.batch_size`."""
    return max(0, min(int(cap), int(s_mem) // max(int(act_bytes), 1)))


@dataclass(frozen=True)
class ServeResult:
    metrics: dict[str, float]
    hits: tuple[bool, ...]  # per request, in trace order
    batches: tuple[tuple[int, ...], ...]  # request positions in the trace, per batch
    max_batch: int
    feasible_margin_mb: float  # <= 0 when the memory split fits the budget
    # (cache_ratio, memory_ratio) served with, when re-split from the sampled one
    serve_split: tuple[float, float] | None = None
    split_need: SplitNeed | None = None  # what any split had to give (budget, weights, least)


def request_key(item: Any) -> bytes:
    """Content hash of one request item: the cache key of the replay and of the server."""
    data = item.numpy().tobytes() if isinstance(item, torch.Tensor) else repr(item).encode()
    return hashlib.blake2b(data, digest_size=16).digest()


def _request_keys(workload: Workload) -> list[bytes]:
    """Content hashes of the request pool, once per process."""
    keys = workload._cache.get("request_keys")
    if keys is None:
        keys = [request_key(workload.request(i)) for i in range(workload.n_distinct_requests)]
        workload._cache["request_keys"] = keys
    return keys


@dataclass
class _Plan:
    """How the trace is served, fixed by the seed and the config (never by timing): which
    requests hit, what each cache lookup took, and per round which client sent which
    requests and how the round's misses were batched."""

    hits: list[bool]
    lookup_s: list[float]  # measured cache lookup time per trace position (0 for misses)
    client: list[int]  # who sent each trace position
    rounds: list[tuple[list[list[int]], list[tuple[int, ...]]]]  # (per-client sends, batches)


def _plan(model: nn.Module, workload: Workload, trace: np.ndarray, keys: list[bytes],
          cache: LRUCache, max_batch: int, device: torch.device) -> tuple[_Plan, list[Any]]:
    """Serve the trace once through cache and batcher with real forward passes (their
    outputs fill the cache); return the plan and each batch's model input."""
    n = len(trace)
    clients = min(workload.concurrency, n)
    plan = _Plan([False] * n, [0.0] * n, [0] * n, [])
    inputs: list[Any] = []
    pos = 0
    while pos < n:
        sends: list[list[int]] = [[] for _ in range(clients)]
        misses: list[int] = []
        for c in range(clients):
            while pos < n:
                plan.client[pos] = c
                sends[c].append(pos)
                key = keys[trace[pos]]
                t0 = time.perf_counter()
                out = cache.get(key)
                dt = time.perf_counter() - t0
                pos += 1
                if out is None:
                    misses.append(pos - 1)
                    break
                plan.hits[pos - 1] = True
                plan.lookup_s[pos - 1] = dt
        # The batcher takes misses in the order they reach it: after fewer of their client's
        # requests in this round first (each request costs the server overhead).
        misses.sort(key=lambda p: len(sends[plan.client[p]]))
        batches = [tuple(misses[s : s + max_batch]) for s in range(0, len(misses), max_batch)]
        for chunk in batches:
            items = [workload.request(int(trace[p])) for p in chunk]
            x = to_device(workload.batch(items), device)
            out = _tensor_out(model(x)).detach().cpu()
            for row, p in enumerate(chunk):
                resp = out[row].clone()
                cache.put(keys[trace[p]], resp, _nbytes(items[row]) + _nbytes(resp))
            inputs.append(x)
        plan.rounds.append((sends, batches))
    return plan, inputs


def _timeline(plan: _Plan, durations: list[float], overhead_s: float,
              clients: int) -> tuple[list[float], float]:
    """Closed-loop clients over the plan, through the server's two stages: a front end that
    spends `overhead_s` on every request, hit or miss (HTTP, parsing, hashing, encoding),
    one request at a time in arrival order, as the real server does (its throughput of
    cache hits is about 1 / overhead); and the model, which runs each batch once its
    misses have passed the front end and the previous batch is done. Returns the
    per-request latencies and the makespan, in seconds."""
    n = len(plan.hits)
    ready = [0.0] * clients
    sent = [0.0] * n
    arrival = [0.0] * n
    latencies = [0.0] * n
    front_free = model_free = 0.0
    b = 0
    for sends, batches in plan.rounds:
        # The front end takes the round's requests in the order they are sent; a client
        # sends its next request when the previous one is answered.
        queue = [(ready[c], c, 0) for c, positions in enumerate(sends) if positions]
        heapq.heapify(queue)
        while queue:
            t, c, k = heapq.heappop(queue)
            p = sends[c][k]
            front_free = max(front_free, t) + overhead_s
            sent[p] = t
            if plan.hits[p]:
                done = front_free + plan.lookup_s[p]
                latencies[p] = done - t
                ready[c] = done
                if k + 1 < len(sends[c]):
                    heapq.heappush(queue, (done, c, k + 1))
            else:
                arrival[p] = front_free
        for chunk in batches:
            end = max(model_free, max(arrival[p] for p in chunk)) + durations[b]
            b += 1
            model_free = end
            for p in chunk:
                latencies[p] = end - sent[p]
                ready[plan.client[p]] = end
    return latencies, max(max(ready), model_free, front_free)


def replay(
    model: nn.Module,
    workload: Workload,
    cfg: ServeConfig,
    *,
    budget_bytes: int,
    weight_bytes: int,
    device: torch.device,
    seed: int = 0,
    act_bytes: int | None = None,
    serve_overhead_ms: float = 0.0,
    baseline: nn.Module | None = None,
    resplit: bool = False,
) -> ServeResult:
    """Replay the workload's trace through cache and batcher (see the module docstring).

    Every request costs `serve_overhead_ms`, the real server's per-request overhead. Each
    batch's forward time is the median of repeats after a warm-up; with `baseline` (the
    uncompressed model) the same batches are timed through it too, interleaved with
    `model`, giving `baseline_model_latency_ms` and `speedup` on identical work.
    `resplit`: a sampled split that breaks the budget while another fits is replaced by
    the fitting split nearest it (`objectives.split`), reported as `serve_split`.
    """
    keys = _request_keys(workload)
    if act_bytes is None:
        act_bytes = activation_bytes_per_sample(model, workload.example_inputs(), device)
    # A response cache may be empty; the workspace must hold one sample.
    need = SplitNeed(budget_bytes, weight_bytes, 0, act_bytes)
    split = None
    if resplit:
        cfg, split = fit_split(cfg, need)
    s_cache = round(budget_bytes * cfg.cache_ratio)
    s_mem = round(budget_bytes * cfg.memory_ratio)
    fits = max_batch_for(s_mem, act_bytes, cfg.batch_size)
    mb = max(fits, 1)  # an infeasible split is still replayed, so all metrics exist
    memory = weight_bytes + s_cache + s_mem
    margin = max(memory - budget_bytes, act_bytes - s_mem if fits < 1 else -np.inf)
    if resplit and split is None and need.overage_bytes > 0:
        margin = need.overage_bytes  # no split fits: by how much the least that serves is over

    trace = zipf_trace(len(keys), workload.n_requests, workload.zipf_skew, seed)
    models = [model] if baseline is None else [model, baseline]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():
            for m in models:
                m.eval()
            plan, inputs = _plan(model, workload, trace, keys, LRUCache(s_cache), mb, device)
            warm_up(models, inputs, device)
            medians = time_interleaved(models, inputs, device)
    finally:
        torch.set_num_threads(old_threads)
    clients = min(workload.concurrency, len(trace))
    latencies, makespan = _timeline(plan, medians[0], serve_overhead_ms / 1e3, clients)
    lat_ms = np.asarray(latencies) * 1e3
    n_miss = len(trace) - sum(plan.hits)
    # The two stages' busy time over the replay: the front end spends the overhead on
    # every request, the model its batches. The busier one is the bottleneck: "server-
    # bound" when it is the front end (the report reads these, not a share of the cap).
    front_busy = len(trace) * serve_overhead_ms / 1e3
    model_busy = sum(medians[0])
    model_ms = 1e3 * sum(medians[0]) / n_miss
    metrics = {
        "latency_ms": float(np.median(lat_ms)),
        "latency_mean_ms": float(np.mean(lat_ms)),
        "latency_p99_ms": float(np.percentile(lat_ms, 99)),
        "model_latency_ms": model_ms,
        "throughput_rps": float(len(trace) / makespan) if makespan > 0 else 0.0,
        "cache_hit_rate": float(np.mean(plan.hits)),
        "memory_mb": memory / 1e6,
        "max_batch": float(fits),
        "frontend_busy_share": front_busy / makespan if makespan > 0 else 0.0,
        "model_busy_share": model_busy / makespan if makespan > 0 else 0.0,
    }
    if baseline is not None:
        metrics["baseline_model_latency_ms"] = 1e3 * sum(medians[1]) / n_miss
        metrics["speedup"] = metrics["baseline_model_latency_ms"] / model_ms
    batches = tuple(chunk for _, round_batches in plan.rounds for chunk in round_batches)
    return ServeResult(metrics, tuple(plan.hits), batches, fits, float(margin) / 1e6, split,
                       need)
