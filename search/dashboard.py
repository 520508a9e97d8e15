"""optuna-dashboard on a csearch storage, with the studies' artifact store attached.

The app is optuna-dashboard's own (its public `wsgi()` factory), wrapped in one WSGI
middleware: optuna-dashboard 0.21 greys infeasible trials out of its plots (it reads the
list-valued `constraints` system attr that `runner.TrialObjective` writes), but the
`best_trials` of a multi-objective study detail is the Pareto front of *all* complete
trials, infeasible ones included. The middleware makes it the feasible front, the same
trials as `csearch pareto`. Nothing in optuna_dashboard is patched.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import optuna
from optuna.storages import BaseStorage

__all__ = ["artifact_store_at", "dashboard_app", "serve"]

_DETAIL = re.compile(r"^/api/studies/(\d+)/?$")


def artifact_store_at(directory: str | Path | None) -> Any:
    """The trials' artifact store on `directory` (`artifacts.py`), or None when there is
    none (yet)."""
    from .artifacts import TrialArtifactStore

    if directory and os.path.isdir(directory):
        return TrialArtifactStore(directory)
    return None


def _feasible_front_numbers(storage: BaseStorage, study_id: int) -> set[int]:
    from .results import pareto_rows

    study = optuna.load_study(study_name=storage.get_study_name_from_id(study_id),
                              storage=storage)
    return {r["number"] for r in pareto_rows(study)}


class _FeasibleBestTrials:
    """WSGI middleware: a study detail's `best_trials` becomes the feasible Pareto front.

    The detail is fetched with `after=0` (every trial serialised, so each front trial is
    at hand) and the `after` slice is applied here, as optuna-dashboard would.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], storage: BaseStorage):
        self.app, self.storage = app, storage

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        m = _DETAIL.match(environ.get("PATH_INFO", ""))
        if m is None or environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        try:
            after = int(parse_qs(environ.get("QUERY_STRING", "")).get("after", ["0"])[0])
        except ValueError:
            after = -1
        if after < 0:  # optuna-dashboard answers the bad parameter itself
            return self.app(environ, start_response)
        got: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
            got.update(status=status, headers=headers)
            return lambda _data: None

        result = self.app({**environ, "QUERY_STRING": "after=0"}, capture)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if got["status"].startswith("200"):
            data = json.loads(body)
            if len(data.get("directions", ())) > 1:
                front = _feasible_front_numbers(self.storage, int(m.group(1)))
                data["best_trials"] = [t for t in data["trials"] if t["number"] in front]
            data["trials"] = data["trials"][after:]
            body = json.dumps(data).encode()
        headers = [(k, v) for k, v in got["headers"] if k.lower() != "content-length"]
        start_response(got["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]


def dashboard_app(storage: BaseStorage, artifact_store: Any = None) -> Any:
    """optuna-dashboard's WSGI app on `storage`, with the feasible `best_trials`."""
    import optuna_dashboard

    return _FeasibleBestTrials(optuna_dashboard.wsgi(storage, artifact_store=artifact_store),
                               storage)


def serve(storage: BaseStorage, host: str = "127.0.0.1", port: int = 8080,
          artifact_store: Any = None) -> None:
    """Run the dashboard until interrupted. Binding errors raise OSError before serving."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class _Quiet(WSGIRequestHandler):
        def log_message(self, _format: str, *_args: Any) -> None:
            """One line per request would bury the command's own output."""

    with make_server(host, port, dashboard_app(storage, artifact_store),
                     server_class=_Server, handler_class=_Quiet) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
