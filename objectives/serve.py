"""Serve replay: a seeded request trace through an LRU response cache and a dynamic
batcher, with real forward passes of the compressed model.

Load model: **closed loop**. `concurrency` clients each keep one request in flight and
send the next as soon as the previous is answered. The replay runs in rounds: each client
issues requests until one misses the cache (hits are answered at once, after a real,
timed cache lookup); the round's misses are cut into batches of at most `max_batch`
(what fits in S_mem, capped by `serve.batch_size`) and run back to back. Which requests
hit and how batches form depend only on the seed and the config, never on timing, so a
replay is reproducible; every duration in it is measured, none is modelled.

Memory: S_cache = round(S_total * cache_ratio) bytes of cached (request, response) pairs,
S_mem = round(S_total * memory_ratio) bytes of activation workspace. Feasible when packed
weights + S_cache + S_mem <= S_total and one sample's activations fit in S_mem.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces import ServeConfig

from ._device import to_device
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> ServeResult:
    keys = _request_keys(workload)
    s_cache = round(budget_bytes * cfg.cache_ratio)
    s_mem = round(budget_bytes * cfg.memory_ratio)
    if act_bytes is None:
        act_bytes = activation_bytes_per_sample(model, workload.example_inputs(), device)
    fits = max_batch_for(s_mem, act_bytes, cfg.batch_size)
    mb = max(fits, 1)  # an infeasible split is still replayed, so all metrics exist
    memory = weight_bytes + s_cache + s_mem
    margin = max(memory - budget_bytes, act_bytes - s_mem if fits < 1 else -np.inf)

    trace = zipf_trace(len(keys), workload.n_requests, workload.zipf_skew, seed)
    cache = LRUCache(s_cache)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():
            model.eval()
            warm = workload.batch([workload.request(int(i)) for i in trace[:mb]])
            for _ in range(2):
                model(to_device(warm, device))
            _sync(device)
            result = _run(model, workload, trace, keys, cache, mb, device)
    finally:
        torch.set_num_threads(old_threads)
    latencies, hits, batches, makespan = result
    lat_ms = np.asarray(latencies) * 1e3
    metrics = {
        "latency_ms": float(np.median(lat_ms)),
        "latency_p99_ms": float(np.percentile(lat_ms, 99)),
        "throughput_rps": float(len(trace) / makespan) if makespan > 0 else 0.0,
        "cache_hit_rate": float(np.mean(hits)),
        "memory_mb": memory / 1e6,
        "max_batch": float(fits),
    }
    return ServeResult(metrics, tuple(hits), tuple(batches), fits, float(margin) / 1e6)


def _run(
    model: nn.Module,
    workload: Workload,
    trace: np.ndarray,
    keys: list[bytes],
    cache: LRUCache,
    max_batch: int,
    device: torch.device,
) -> tuple[list[float], list[bool], list[tuple[int, ...]], float]:
    n = len(trace)
    clients = min(workload.concurrency, n)
    ready = [0.0] * clients  # when each client sends its next request
    latencies = [0.0] * n
    hits = [False] * n
    batches: list[tuple[int, ...]] = []
    server_free = 0.0
    pos = 0
    while pos < n:
        misses: list[tuple[float, int, int]] = []  # (arrival, trace position, client)
        for c in range(clients):
            t = ready[c]
            while pos < n:
                key = keys[trace[pos]]
                t0 = time.perf_counter()
                out = cache.get(key)
                dt = time.perf_counter() - t0
                if out is None:
                    misses.append((t, pos, c))
                    pos += 1
                    break
                latencies[pos] = dt
                hits[pos] = True
                t += dt
                pos += 1
            ready[c] = t
        for start in range(0, len(misses), max_batch):
            chunk = misses[start : start + max_batch]
            items = [workload.request(int(trace[p])) for _, p, _ in chunk]
            x = to_device(workload.batch(items), device)
            t0 = time.perf_counter()
            out = _tensor_out(model(x))
            _sync(device)
            dur = time.perf_counter() - t0
            out = out.detach().cpu()
            begin = max(server_free, max(a for a, _, _ in chunk))
            end = begin + dur
            server_free = end
            for row, (arrival, p, c) in enumerate(chunk):
                latencies[p] = end - arrival
                ready[c] = end
                resp = out[row].clone()
                cache.put(keys[trace[p]], resp, _nbytes(items[row]) + _nbytes(resp))
            batches.append(tuple(p for _, p, _ in chunk))
    makespan = max(max(ready), server_free)
    return latencies, hits, batches, makespan
