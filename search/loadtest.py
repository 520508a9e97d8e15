"""A real load test: closed-loop clients replay a workload's Zipf trace against a server.

The trace is the serve replay's (`objectives.serve.zipf_trace` with the workload's
`n_requests` and `zipf_skew`), so what a trial predicted and what a server does can be
compared. With a trial its replay seed is used (the trial's `eval_seed`), so the server
sees exactly the requests the trial's replay did; without one, the study's seed.
Each of `concurrency` clients keeps one request in flight on its own keep-alive
connection and sends the next when it is answered; the clients are coroutines on one
event loop over `search.httpclient` (asyncio + httptools), so the client costs far less
CPU per request than the server it measures (`client_cpu_ms` reports it). Protocol:
`POST /predict` with `{"inputs": [item]}` answers `{"outputs": [...], "version": V}` and may carry
`"cached": [bool]`; `GET /healthz` answers before the test starts.

Language models are driven as an OpenAI client would: each request streams
`POST /v1/completions` with the trace's prompt (token ids), the replay's `max_tokens`,
temperature 0 and `ignore_eos`, and the result adds time to first token (first chunk),
time per output token, generated tokens/s and the versions that answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from . import attrs
from .errors import UsageError
from .httpclient import Connection, SSELines, split_url

if TYPE_CHECKING:
    import optuna

__all__ = ["LoadPlan", "LoadResult", "SERVED_ATTR", "check_url", "plan_for", "run_loadtest"]

SERVED_ATTR = attrs.SERVED
_KEYS = ("mean_ms", "p50_ms", "p99_ms", "throughput_rps", "errors", "requests")
_LM_KEYS = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "throughput_tps", "tokens")


@dataclass(frozen=True)
class LoadPlan:
    """What to send: one JSON body per distinct request, and the trace of indices."""

    bodies: tuple[bytes, ...]
    trace: tuple[int, ...]
    concurrency: int
    # Language models: the prompts (token ids) and tokens per request; the bodies are
    # made once the server has said its model name (GET /v1/models).
    prompts: tuple[tuple[int, ...], ...] | None = None
    max_tokens: int = 0

    @property
    def streams(self) -> bool:
        return self.prompts is not None


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
    client_cpu_ms: float | None = None  # this client's CPU per request (process time)
    lm: dict[str, float] | None = None  # streamed completions: the _LM_KEYS

    def to_dict(self) -> dict[str, Any]:
        """The keys `--format json` prints (`hit_rate` only when known)."""
        d = {k: getattr(self, k) for k in _KEYS}
        if self.lm is not None:
            d.update(self.lm)
        if self.hit_rate is not None:
            d["hit_rate"] = self.hit_rate
        if self.client_cpu_ms is not None:
            d["client_cpu_ms"] = self.client_cpu_ms
        if self.versions:
            d["versions"] = list(self.versions)
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
    settings = w.extras.get("generation")
    if settings is not None:  # a language model: streamed completions of the replay's prompts
        prompts = tuple(tuple(int(t) for t in p) for p in w.extras["lm_data"].prompts)
        return LoadPlan((), tuple(int(i) for i in trace), concurrency or w.concurrency,
                        prompts, settings.new_tokens)
    used = sorted(set(int(i) for i in trace))
    body = {i: json.dumps({"inputs": [_jsonable(w.request(i))]}).encode() for i in used}
    bodies = tuple(body.get(i, b"") for i in range(n))
    return LoadPlan(bodies, tuple(int(i) for i in trace), concurrency or w.concurrency)


def run_loadtest(url: str, plan: LoadPlan, *, timeout_s: float = 30.0) -> LoadResult:
    """Replay `plan` against the server at `url`; every latency is timed on the wire."""
    base = check_url(url)
    try:
        host, port, prefix = split_url(base)
    except ValueError as e:
        raise UsageError(f"--url: {e}") from None
    try:
        model = asyncio.run(_probe(host, port, prefix, plan.streams))
    except (OSError, TimeoutError, ValueError) as e:
        raise UsageError(f"server at {base} does not answer GET /healthz"
                         f"{' and GET /v1/models' if plan.streams else ''}: "
                         f"{e or type(e).__name__}") from None
    if plan.streams:
        plan = _with_bodies(plan, model)
    path = prefix + ("/v1/completions" if plan.streams else "/predict")
    cpu0 = time.process_time()
    rec = asyncio.run(_replay(host, port, path, plan, timeout_s))
    cpu = time.process_time() - cpu0
    ok = rec.latency[~np.isnan(rec.latency)] * 1e3
    n = len(plan.trace)
    flags = [f for f in rec.cached if f is not None]
    seen = list(dict.fromkeys(v for v in rec.version if v is not None))
    return LoadResult(
        mean_ms=float(ok.mean()) if ok.size else None,
        p50_ms=float(np.median(ok)) if ok.size else None,
        p99_ms=float(np.percentile(ok, 99)) if ok.size else None,
        throughput_rps=float(ok.size / rec.wall) if rec.wall > 0 else 0.0,
        errors=n - int(ok.size),
        requests=n,
        hit_rate=float(np.mean(flags)) if flags else None,
        versions=tuple(seen),
        first_error=rec.failures[0][:300] if rec.failures else None,
        client_cpu_ms=cpu * 1e3 / n,
        lm=_lm_figures(rec) if plan.streams else None,
    )


def _with_bodies(plan: LoadPlan, model: str) -> LoadPlan:
    """One streamed completion body per distinct prompt: the replay's request."""
    assert plan.prompts is not None
    used = set(plan.trace)
    bodies = tuple(json.dumps({
        "model": model, "prompt": list(p), "max_tokens": plan.max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
    }).encode() if i in used else b"" for i, p in enumerate(plan.prompts))
    return replace(plan, bodies=bodies)


def _lm_figures(rec: _Record) -> dict[str, float]:
    done = ~np.isnan(rec.latency)
    ttft = rec.ttft[done] * 1e3
    tokens = rec.tokens[done]
    tpot = (rec.latency[done] - rec.ttft[done]) / np.maximum(tokens - 1, 1) * 1e3
    nan = float("nan")
    return {
        "ttft_p50_ms": float(np.median(ttft)) if ttft.size else nan,
        "ttft_p99_ms": float(np.percentile(ttft, 99)) if ttft.size else nan,
        "tpot_p50_ms": float(np.median(tpot)) if tpot.size else nan,
        "throughput_tps": float(tokens.sum() / rec.wall) if rec.wall > 0 else 0.0,
        "tokens": float(tokens.sum()),
    }


async def _probe(host: str, port: int, prefix: str, lm: bool) -> str | None:
    """GET /healthz; for a language model also the model name GET /v1/models gives."""
    conn = await Connection.open(host, port)
    try:
        reply = await conn.request("GET", prefix + "/healthz", timeout=10)
        if reply.status != 200:
            raise OSError(f"HTTP {reply.status}")
        if not lm:
            return None
        reply = await conn.request("GET", prefix + "/v1/models", timeout=10)
        if reply.status != 200:
            raise OSError(f"GET /v1/models: HTTP {reply.status}")
        return str(json.loads(reply.body)["data"][0]["id"])
    finally:
        conn.close()


@dataclass
class _Record:
    latency: np.ndarray
    cached: list[bool | None]
    version: list[Any]
    failures: list[str]
    wall: float = 0.0
    ttft: np.ndarray = field(default_factory=lambda: np.zeros(0))  # streams: first chunk
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))  # streams: generated


async def _replay(host: str, port: int, path: str, plan: LoadPlan, timeout_s: float
                  ) -> _Record:
    """`concurrency` closed-loop clients, each on its own keep-alive connection."""
    n = len(plan.trace)
    rec = _Record(np.full(n, np.nan), [None] * n, [None] * n, [], 0.0, np.full(n, np.nan),
                  np.zeros(n))
    nxt = iter(range(n))

    async def client() -> None:
        conn = Connection(host, port)
        try:
            for pos in nxt:  # shared: each index goes to one client
                if plan.streams:
                    await _stream_one(conn, path, plan, pos, rec, timeout_s)
                    continue
                try:
                    reply = await conn.request("POST", path, plan.bodies[plan.trace[pos]],
                                               timeout=timeout_s)
                    out = _answer(reply.status, reply.body)
                except (OSError, TimeoutError, ValueError) as e:
                    rec.failures.append(f"{type(e).__name__}: {e}")
                    continue
                rec.latency[pos] = reply.t_done - reply.t_sent
                rec.version[pos] = out.get("version")
                flags = out.get("cached")
                if isinstance(flags, list) and len(flags) == 1:
                    rec.cached[pos] = bool(flags[0])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(plan.concurrency, n))))
    rec.wall = time.perf_counter() - t0
    return rec


async def _stream_one(conn: Connection, path: str, plan: LoadPlan, pos: int, rec: _Record,
                      timeout_s: float) -> None:
    """One streamed completion: TTFT at the first chunk, the end at `[DONE]`, the tokens
    from the usage chunk; a stream that is cut short or generates fewer tokens than asked
    is an error."""
    lines = SSELines()
    first = [0.0]
    last: list[str] = []

    def on_chunk(data: bytes, t: float) -> None:
        got = lines.feed(data)
        if got:
            if not first[0]:
                first[0] = t
            last.extend(got)
            del last[:-2]  # the usage chunk and [DONE] may come in separate pieces

    try:
        reply = await conn.request("POST", path, plan.bodies[plan.trace[pos]],
                                   on_chunk=on_chunk, timeout=timeout_s)
        if reply.status != 200:
            raise ValueError(f"HTTP {reply.status}")
        if len(last) < 2 or last[-1] != "[DONE]":
            raise ValueError(f"stream did not end with [DONE]: {last[-1:]}")
        tail = json.loads(last[0])
        tokens = int(tail["usage"]["completion_tokens"])
        if tokens != plan.max_tokens:
            raise ValueError(f"{tokens} tokens generated, {plan.max_tokens} asked")
    except (OSError, TimeoutError, ValueError, KeyError) as e:
        rec.failures.append(f"{type(e).__name__}: {e}")
        return
    rec.latency[pos] = reply.t_done - reply.t_sent
    rec.ttft[pos] = first[0] - reply.t_sent
    rec.tokens[pos] = tokens
    fp = tail.get("system_fingerprint", "")
    rec.version[pos] = int(fp.rsplit("-v", 1)[-1]) if "-v" in fp else fp or None


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; refused unless http(s)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url {url!r} is not a server URL; use http://HOST:PORT")
    return url.rstrip("/")


def _answer(status: int, body: bytes) -> dict[str, Any]:
    """The JSON answer to one item, or ValueError saying what is wrong with it."""
    text = body[:200].decode(errors="replace")
    if status != 200:
        raise ValueError(f"HTTP {status}: {text}")
    out = json.loads(body)
    if not isinstance(out, dict) or not isinstance(out.get("outputs"), list) \
            or len(out["outputs"]) != 1:
        raise ValueError(f"answer is not {{'outputs': [one output], ...}}: {text}")
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
