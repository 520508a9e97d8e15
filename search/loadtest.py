"""A real load test: closed-loop clients replay a workload's Zipf trace against a server.

The trace is the serve replay's (`objectives.serve.zipf_trace` with the workload's
`n_requests` and `zipf_skew`), so what a trial predicted and what a server does can be
compared. With a trial its replay seed is used (the trial's `eval_seed`), so the server
sees exactly the requests the trial's replay did; without one, the study's seed.
Each of `concurrency` clients keeps one request in flight on its own pooled keep-alive
connection and sends the next when it is answered. Protocol: `POST /predict` with
`{"inputs": [item]}` answers `{"outputs": [...], "version": V}` and may carry
`"cached": [bool]`; `GET /healthz` answers before the test starts.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from . import attrs
from .errors import UsageError

if TYPE_CHECKING:
    import optuna

__all__ = ["LoadPlan", "LoadResult", "SERVED_ATTR", "check_url", "plan_for", "run_loadtest"]

SERVED_ATTR = attrs.SERVED
_KEYS = ("mean_ms", "p50_ms", "p99_ms", "throughput_rps", "errors", "requests")


@dataclass(frozen=True)
class LoadPlan:
    """What to send: one JSON body per distinct request, and the trace of indices."""

    bodies: tuple[bytes, ...]
    trace: tuple[int, ...]
    concurrency: int


@dataclass(frozen=True)
class LoadResult:
    """Latencies are over answered requests (HTTP 200 with one output); errors are the
    rest. `hit_rate` is None unless the server says which answers came from its cache."""

    mean_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float
    errors: int
    requests: int
    hit_rate: float | None = None
    versions: tuple[int, ...] = ()  # versions that answered (trace order of first answer)
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys `--format json` prints (`hit_rate` only when known)."""
        d = {k: getattr(self, k) for k in _KEYS}
        if self.hit_rate is not None:
            d["hit_rate"] = self.hit_rate
        return d

    def served_attr(self, url: str, concurrency: int) -> dict[str, Any]:
        """The trial's `served` user attr: the measurement, where and when."""
        return {**self.to_dict(), "url": url, "concurrency": concurrency,
                "at": datetime.now(UTC).isoformat()}


def plan_for(study: optuna.Study, trial: int | None = None, *, requests: int | None = None,
             concurrency: int | None = None, workload: str | None = None) -> LoadPlan:
    """The replay's trace and concurrency for the study (and trial), with overrides.

    Builds the study's workload once for its request inputs; a plugin workload is
    imported only when `workload` names it (as for `csearch export`)."""
    from objectives import load_workload
    from objectives.serve import zipf_trace
    from objectives.workloads import allow as allow_workload

    from .spec import stored_spec

    if requests is not None and requests < 1:
        raise UsageError(f"--requests must be 1 or more, got {requests}")
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be 1 or more, got {concurrency}")
    spec = stored_spec(study)
    seed = spec.seed
    if trial is not None:
        from .export import complete_trial

        seed = int(complete_trial(study, trial).user_attrs.get(attrs.EVAL_SEED, spec.seed + trial))
    if workload is not None:
        if workload != spec.workload:
            raise UsageError(f"workload {workload!r} differs from the study's workload "
                             f"{spec.workload!r}")
        allow_workload(workload)
    w = load_workload(spec.workload, stored=True)
    n = w.n_distinct_requests
    trace = zipf_trace(n, requests or w.n_requests, w.zipf_skew, seed)
    used = sorted(set(int(i) for i in trace))
    body = {i: json.dumps({"inputs": [_jsonable(w.request(i))]}).encode() for i in used}
    bodies = tuple(body.get(i, b"") for i in range(n))
    return LoadPlan(bodies, tuple(int(i) for i in trace), concurrency or w.concurrency)


def run_loadtest(url: str, plan: LoadPlan, *, timeout_s: float = 30.0) -> LoadResult:
    """Replay `plan` against the server at `url`; every latency is timed on the wire."""
    import httpx

    base = check_url(url)
    try:
        with httpx.Client(base_url=base, timeout=timeout_s) as c:
            c.get("/healthz").raise_for_status()
    except httpx.HTTPError as e:
        raise UsageError(f"server at {base} does not answer GET /healthz: {e}") from None
    n = len(plan.trace)
    latency = np.full(n, np.nan)
    cached: list[bool | None] = [None] * n
    version: list[Any] = [None] * n
    failures: list[str] = []
    lock = threading.Lock()
    nxt = iter(range(n))

    def client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=base, timeout=timeout_s, limits=limits) as c:
            while True:
                with lock:
                    pos = next(nxt, None)
                if pos is None:
                    return
                body = plan.bodies[plan.trace[pos]]
                t0 = time.perf_counter()
                try:
                    r = c.post("/predict", content=body, headers=headers)
                    dt = time.perf_counter() - t0
                    out = _answer(r)
                except (httpx.HTTPError, ValueError) as e:
                    with lock:
                        failures.append(f"{type(e).__name__}: {e}")
                    continue
                latency[pos] = dt
                version[pos] = out.get("version")
                flags = out.get("cached")
                if isinstance(flags, list) and len(flags) == 1:
                    cached[pos] = bool(flags[0])

    threads = [threading.Thread(target=client, name=f"csearch-load-{i}", daemon=True)
               for i in range(min(plan.concurrency, n))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = latency[~np.isnan(latency)] * 1e3
    flags = [f for f in cached if f is not None]
    seen = list(dict.fromkeys(v for v in version if v is not None))
    return LoadResult(
        mean_ms=float(ok.mean()) if ok.size else None,
        p50_ms=float(np.median(ok)) if ok.size else None,
        p99_ms=float(np.percentile(ok, 99)) if ok.size else None,
        throughput_rps=float(ok.size / wall) if wall > 0 else 0.0,
        errors=n - int(ok.size),
        requests=n,
        hit_rate=float(np.mean(flags)) if flags else None,
        versions=tuple(seen),
        first_error=failures[0][:300] if failures else None,
    )


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; refused unless http(s)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url {url!r} is not a server URL; use http://HOST:PORT")
    return url.rstrip("/")


def _answer(r: Any) -> dict[str, Any]:
    """The JSON answer to one item, or ValueError saying what is wrong with it."""
    if r.status_code != 200:
        raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
    out = r.json()
    if not isinstance(out, dict) or not isinstance(out.get("outputs"), list) \
            or len(out["outputs"]) != 1:
        raise ValueError(f"answer is not {{'outputs': [one output], ...}}: {r.text[:200]}")
    return out


def _jsonable(x: Any) -> Any:
    """A request item as nested lists (tensors and arrays by `tolist`)."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
