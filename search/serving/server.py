"""`csearch serve`: one process, a FastAPI app (`app.build_app`) served by uvicorn.

Routes: `GET /healthz`, `GET /version`, `GET /metrics`, and the workload kind's own
(classifiers: `POST /predict`). The event loop answers HTTP; each served version runs its
model on its own inference thread. SIGTERM and SIGINT (Ctrl-C) stop it gracefully, as
uvicorn does: no new connections, in-flight requests are answered (for at most
`drain_s`), the model is released, and `serve` returns normally (exit 0, no traceback).

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

from ._limits import Limits
from ._sources import RegistrySource, ServeError, WorkloadSource

__all__ = ["HOSTS", "serve", "start_server", "Running", "free_port"]

HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def _check_address(host: str, port: int) -> None:
    if host not in HOSTS:
        raise ServeError(f"--host {host!r} is not one the server binds; use one of "
                         + ", ".join(HOSTS))
    if not 1024 <= port <= 65535:
        raise ServeError(f"--port {port} is out of range; use 1024-65535")
    try:  # before the model loads: a port in use is one line, at once
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _quiet(_signum: int, _frame: Any) -> None:
    """Installed while uvicorn runs: uvicorn re-raises the signal that stopped it once it
    has shut down gracefully, and the default handlers would turn that into a traceback
    (SIGINT) or a death by signal (SIGTERM) after a clean stop."""


def serve(source: Any, host: str = "127.0.0.1", port: int = 8000, *,
          poll_s: float = 1.0, limits: Limits | None = None, drain_s: float | None = None,
          announce: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; `announce` runs once the model has loaded."""
    import uvicorn

    from .app import build_app

    _check_address(host, port)
    limits = limits or Limits()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # during the load
    try:
        app = build_app(source, poll_s=poll_s, limits=limits)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if announce is not None:
        announce()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on", server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=drain_s or limits.timeout_s + 5)
    handled = (signal.SIGINT, signal.SIGTERM)
    saved = {s: signal.signal(s, _quiet) for s in handled}
    try:
        uvicorn.Server(config).run()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A server subprocess; `stop()` ends it (SIGINT: a graceful stop), and anything left
    of its process group after `timeout` seconds is killed."""

    url: str
    process: subprocess.Popen
    log: Any = None  # the server's stderr, a file

    def stderr(self) -> str:
        """What the server has written to stderr so far."""
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # its own session: anything it started goes with it
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
                 timeout: float = 120.0, env: dict[str, str] | None = None,
                 limits: Limits | None = None) -> Running:
    """Start `python -m search.serving` on 127.0.0.1 and wait for `/healthz` to say ok."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "search.serving", "--source", _source_json(source),
           "--port", str(port), "--poll-s", str(poll_s),
           "--limits", json.dumps(asdict(limits or Limits()))]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads while it serves
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    running = Running(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = running.stderr().strip().splitlines()
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
