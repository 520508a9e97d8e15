"""Shared by the registry and load-test tests: a small real digits study whose trials stored
their packed models, and a tiny test-only HTTP server speaking csearch's serving protocol
(`POST /predict`, `GET /healthz`, `GET /version`), so that `csearch loadtest` is tested
without the real `csearch serve`. The server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from dashboard_fixtures import SPACE  # no fine-tuning: trials take a second

STUDY = "reg"
TRIALS = 2
_SOURCE: dict[str, tuple[str, str]] = {}


def source_study(tmp_path_factory: Any) -> tuple[str, str]:
    """(SQLite URL, study name) of a 2-trial digits study with stored artifacts, run once
    per test session."""
    if "src" not in _SOURCE:
        from search.runner import run_trials
        from search.spec import DEFAULT_OBJECTIVES
        from search.storage import open_storage
        from search.study import build_spec, create_or_resume, load_context

        tmp = tmp_path_factory.mktemp("registry-src")
        (tmp / "space.toml").write_text(SPACE)
        spec = build_spec(
            workload="digits-cnn", space=str(tmp / "space.toml"), objectives=DEFAULT_OBJECTIVES,
            constraints=(), sampler="random", seed=0, device="cpu", trials=TRIALS,
            timeout=None, memory_budget_mb=None, artifacts=str(tmp / "artifacts"),
        )
        url = f"sqlite:///{tmp / 'src.db'}"
        ctx = load_context(spec)
        study, _ = create_or_resume(open_storage(url, create=True), STUDY, spec, ctx)
        assert run_trials(study, ctx) == TRIALS
        _SOURCE["src"] = (url, STUDY)
    return _SOURCE["src"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a pooled client expects
    server: _ModelServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path == "/version":
            self._send(200, {"name": self.server.name, "version": self.server.version})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/predict":
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            items = json.loads(raw)["inputs"]
            if not isinstance(items, list) or not items:
                raise ValueError("inputs must be a non-empty list")
            self._send(200, self.server.predict(items))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            self._send(400, {"error": str(e)})


class _ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the replay's 64 clients connect at once

    def __init__(self, model: torch.nn.Module, workload: Any, name: str, version: int,
                 report_cached: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model, self.workload, self.name, self.version = model, workload, name, version
        self.report_cached = report_cached
        self.dtype = workload.request(0).dtype
        self.cache: dict[bytes, list[Any]] = {}
        self.lock = threading.Lock()

    def predict(self, items: list[Any]) -> dict[str, Any]:
        outputs, cached = [], []
        for item in items:
            key = hashlib.sha256(json.dumps(item).encode()).digest()
            with self.lock:
                out = self.cache.get(key)
                cached.append(out is not None)
                if out is None:
                    x = self.workload.batch([torch.tensor(item, dtype=self.dtype)])
                    with torch.inference_mode():
                        out = self.model(x)[0].tolist()
                    self.cache[key] = out
            outputs.append(out)
        body: dict[str, Any] = {"outputs": outputs, "version": self.version}
        if self.report_cached:
            body["cached"] = cached
        return body


@contextmanager
def model_server(model: torch.nn.Module, workload: Any, name: str = "m", version: int = 1,
                 report_cached: bool = True) -> Iterator[str]:
    """Serve `model` on 127.0.0.1 at a free port; yield its URL; stop it afterwards."""
    server = _ModelServer(model, workload, name, version, report_cached)
    thread = threading.Thread(target=server.serve_forever, name="test-model-server",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
