"""`csearch serve`: a LitServe server for one model name.

Process model (LitServe's): the calling process supervises; one spawned inference worker
holds the model (`_api.ModelAPI`); one forked process answers HTTP (FastAPI). Routes:
`POST /predict` (LitServe), `GET /healthz`, `GET /version`, `GET /metrics` (here, in the
HTTP process, reading what the worker publishes in shared memory).

`start_server` runs the same server as a subprocess on a free port and waits until it
answers: tests and the overhead measurement use it; `Running.stop()` ends it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from ._sources import RegistrySource, ServeError, WorkloadSource

__all__ = ["HOSTS", "serve", "start_server", "Running", "free_port"]

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds


def _source_check(source: Any) -> None:
    """Fail in the calling process, with one line, before any worker starts."""
    version = source.wanted()
    if isinstance(source, RegistrySource):
        source.check(version)  # metadata only: the model itself loads in the worker


def build(source: Any, poll_s: float = 1.0) -> Any:
    """The LitServer with csearch's routes; `run()` it to serve."""
    import litserve as ls
    from fastapi.responses import JSONResponse, Response

    from ._api import ModelAPI
    from ._metrics import HttpMetrics, SharedStats, TimingMiddleware

    stats = SharedStats()
    api = ModelAPI(source, stats, poll_s=poll_s)
    # fast_queue: answers come back over ZeroMQ (local IPC sockets) instead of a manager
    # queue, ~0.9 ms less per request here (benchmarks/RESULTS.md, serving frameworks).
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          healthcheck_path="/health", timeout=60, fast_queue=True)
    metrics = HttpMetrics(stats)
    name = getattr(source, "name", getattr(source, "workload", ""))

    async def healthz() -> Any:
        ok = stats.version >= 0
        return JSONResponse({"status": "ok" if ok else "loading"}, status_code=200 if ok else 503)

    async def version() -> Any:
        return {"name": name, "version": stats.version}

    async def prometheus() -> Any:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    for path, fn in (("/healthz", healthz), ("/version", version), ("/metrics", prometheus)):
        server.app.add_api_route(path, fn, methods=["GET"])
    server.app.add_middleware(TimingMiddleware, metrics=metrics)
    return server


def serve(source: Any, host: str = "127.0.0.1", port: int = 8000, *,
          poll_s: float = 1.0, announce: Callable[[], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGINT / SIGTERM); `announce` runs once the
    host, port and model have been checked."""
    if host not in HOSTS:
        raise ServeError(f"--host {host!r} is not one LitServe binds; use one of "
                         + ", ".join(HOSTS))
    if not 1024 <= port <= 65535:
        raise ServeError(f"--port {port} is out of range; use 1024-65535")
    try:  # LitServe would exit without a word on a port in use
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    _source_check(source)
    if announce is not None:
        announce()
    server = build(source, poll_s=poll_s)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # TERM ends it as Ctrl-C does
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False,
               log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A server subprocess; `stop()` ends it and everything it started."""

    url: str
    process: subprocess.Popen

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # its own session: the worker and HTTP processes go with it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def _source_json(source: Any) -> str:
    kind = "registry" if isinstance(source, RegistrySource) else "workload"
    fields = {k: v for k, v in asdict(source).items() if not k.startswith("_")}
    return json.dumps({"kind": kind, **fields})


def source_from_json(text: str) -> Any:
    d = json.loads(text)
    kind = d.pop("kind")
    return RegistrySource(**d) if kind == "registry" else WorkloadSource(**d)


def start_server(source: Any, *, port: int | None = None, poll_s: float = 1.0,
                 timeout: float = 120.0, env: dict[str, str] | None = None) -> Running:
    """Start `python -m search.serving` on 127.0.0.1 and wait for `/healthz` to say ok."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "search.serving", "--source", _source_json(source),
           "--port", str(port), "--poll-s", str(poll_s)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads while it serves
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    running = Running(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().strip().splitlines()
            raise ServeError(f"server exited ({proc.returncode}): "
                             f"{err[-1] if err else 'no output'}")
        try:
            if httpx.get(running.url + "/healthz", timeout=2).status_code == 200:
                return running
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    running.stop()
    raise ServeError(f"server did not become healthy within {timeout:.0f} s")
