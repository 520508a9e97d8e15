"""The real server's per-request overhead, for the serve replay (issue 14, part 1).

Every request a served model answers pays for HTTP, JSON parsing, validation, hashing, the
cache lookup (and for a miss, the hop to the inference thread and back), and encoding.
This measures it on the real server: the workload's base model behind a cache big enough
that every repeated request hits, sequential requests of one real request item, the
median round trip of the hits (so no model time is in it). It costs one server start and
~200 requests, once per machine, request item size and framework version: the figure is
kept in `serve_overhead.json` in csearch's cache directory (`$CSEARCH_CACHE_DIR`, else
`$XDG_CACHE_HOME/csearch` or `~/.cache/csearch`), beside the trained base models.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from typing import Any

import httpx
import torch

from objectives import Workload
from objectives.workloads import BUILTIN_WORKLOADS, load_workload
from objectives.workloads._cache import cache_dir

from ._sources import ServeError, WorkloadSource
from .server import start_server

__all__ = ["serve_overhead_ms", "overhead_key", "measure_overhead_ms"]

_FILE = "serve_overhead.json"
WARMUP, TIMED = 30, 150
# A cache far above one request's bytes, batch 1, one thread: nothing but hits after the first.
_SERVE = {"batch_size": 1, "threads": 1, "cache_ratio": 0.5, "memory_ratio": 0.5,
          "memory_budget_mb": 64.0}


def _ref(workload: Workload | str, ref: str | None) -> tuple[str, Workload]:
    if isinstance(workload, str):
        return workload, load_workload(workload)
    if ref is not None:
        return ref, workload
    if workload.name not in BUILTIN_WORKLOADS:
        raise ServeError(f"pass the workload reference (module:factory) of {workload.name!r}, "
                         "so the server process can build it")
    return workload.name, workload


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def overhead_key(workload: Workload, device: str) -> str:
    """Machine, request item size and framework versions: what the overhead depends on."""
    item = workload.request(0)
    shape = "x".join(map(str, item.shape)) if isinstance(item, torch.Tensor) else "?"
    dtype = str(item.dtype).removeprefix("torch.") if isinstance(item, torch.Tensor) else "?"
    return "|".join([platform.node(), _cpu(), f"{os.cpu_count()}cpu",
                     f"item={shape}:{dtype}", f"fastapi={dist_version('fastapi')}",
                     f"uvicorn={dist_version('uvicorn')}",
                     f"torch={torch.__version__}", f"device={device}"])


def measure_overhead_ms(ref: str, workload: Workload, *, timed: int | None = None) -> float:
    """Start the server, send one real request item sequentially, median of the hits."""
    timed = timed or TIMED
    item = workload.request(0)
    body = {"inputs": [item.tolist() if isinstance(item, torch.Tensor) else item]}
    with start_server(WorkloadSource(ref, dict(_SERVE))) as srv, httpx.Client() as client:
        samples = []
        for i in range(WARMUP + timed):
            t0 = time.perf_counter()
            r = client.post(srv.url + "/predict", json=body)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= WARMUP and r.json()["cached"] == [True]:
                samples.append(dt * 1e3)
    if len(samples) < timed // 2:
        raise ServeError(f"only {len(samples)} of {timed} overhead requests hit the cache")
    return float(statistics.median(samples))


def _load(path: Any) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def serve_overhead_ms(workload: Workload | str, device: str = "cpu", *,
                      ref: str | None = None) -> float:
    """Per-request overhead of the real server in ms: from the cache, or measured once.

    `workload`: a Workload (a built-in one, or give its `ref`, e.g. the study spec's
    `module:factory`, so the server process can build it) or a workload reference. The
    server answers from its cache, so the model's device does not enter the figure; the
    device is part of the cache key all the same."""
    ref, w = _ref(workload, ref)
    key = overhead_key(w, str(device))
    path = cache_dir() / _FILE
    entry = _load(path).get(key)
    if entry and math.isfinite(entry.get("ms", math.nan)) and entry["ms"] > 0:
        return float(entry["ms"])
    ms = measure_overhead_ms(ref, w)
    data = _load(path)  # reread: another process may have added its own machine's figure
    data[key] = {"ms": ms, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "requests": TIMED}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return ms
